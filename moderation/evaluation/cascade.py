"""The whole cascade on a labelled dataset (`moderation eval --cascade`).

Stage 1 is the real `cascade.first_stage` on the fast model. The posts it sends on go to the real
agent stage: `cascade.second_stage` on the worker's own `AgentStage` (`cascade.create_agent_stage`:
the configured OpenAI-compatible endpoint, its retries, timeouts, circuit breaker and `combine`),
in chunks of `agent.concurrency` posts so no post waits for a slot. The agent runs whatever
`agent.enabled` says (this measures it); its tools read the configured database as the worker's
do (when it does not answer they say so and the agent goes on). Nothing is published or recorded.

Every post ends in one route: allowed or removed (by stage 1 or the agent's verdict), review (a
human decides: stage 1's always-review categories or an agent verdict that needs one), or
agent_unavailable (the agent gave no verdict: timeout, HTTP error, invalid output, open breaker,
batch deadline). In production that post goes to a human; here it is counted apart, by reason,
and never as an allow. The report also scores the final verdicts' scores (the agent's combined
scores where it answered, stage 1's elsewhere) with the tables of `moderation eval`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from moderation.classifier.cascade import (
    AgentStage,
    FirstStage,
    Scorer,
    create_agent_stage,
    first_stage,
    second_stage,
)
from moderation.evaluation.routing import MAX_POST_CHARS, ROUTING_BATCH
from moderation.evaluation.scores import EvalReport, render_report, score_probabilities
from moderation.events import ModerationVerdict, PostSubmitted, ReviewRequested
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision

FALLBACK_PREFIX = "agent unavailable ("

AgentResult = tuple[ModerationVerdict | None, ReviewRequested | None]
"""What `second_stage` answers per post: (agent verdict or None after a fallback, review)."""


def fallback_reason(review: ReviewRequested | None) -> str:
    """The fallback's label from its review reason (`agent unavailable (<reason>); ...`)."""
    if review is None or not review.reason.startswith(FALLBACK_PREFIX):
        return "unknown"
    return review.reason[len(FALLBACK_PREFIX) :].split(")", 1)[0] or "unknown"


class Route(StrEnum):
    ALLOWED = "allowed"
    REMOVED = "removed"
    TO_AGENT = "to_agent"  # stage 1 only: passed on to the agent
    REVIEW = "review"
    AGENT_UNAVAILABLE = "agent_unavailable"


_BY_DECISION = {
    Decision.ALLOW: Route.ALLOWED,
    Decision.REMOVE: Route.REMOVED,
    Decision.REVIEW: Route.REVIEW,
}


class RouteCounts(BaseModel):
    """Posts by route, and the two errors that matter most."""

    allowed: int
    removed: int
    to_agent: int = Field(description="passed on to the agent (stage 1 only)")
    review: int = Field(description="to human review with a verdict that asks for one")
    agent_unavailable: int = Field(
        description="the agent gave no verdict (to a human in production; never an allow)"
    )
    violating_allowed: int = Field(description="rows labelled with a violation that were allowed")
    safe_removed: int = Field(description="rows labelled safe that were removed")


class AgentTally(BaseModel):
    model: str = Field(description="the served model name the runs used")
    base_url: str
    sent: int = Field(description="posts stage 1 passed on")
    answered: int = Field(description="posts the agent gave a verdict on")
    decisions: dict[Decision, int] = Field(description="the decisions of its verdicts")
    unavailable: dict[str, int] = Field(description="posts without a verdict, by reason")
    seconds: float = Field(description="wall time of the agent stage")


class CascadeEvaluation(BaseModel):
    """The result of `evaluate_cascade`; `moderation eval --cascade --json` nests it."""

    posts: int
    violating_posts: int
    safe_posts: int
    stage1: RouteCounts = Field(description="stage 1 alone")
    final: RouteCounts = Field(description="after the agent")
    to_humans: int = Field(description="final review + agent_unavailable")
    agent: AgentTally
    final_scores: EvalReport = Field(
        description="the final verdicts' scores (the agent's combined scores where it answered)"
    )


def final_routes(
    first: Sequence[FirstStage], judged: Mapping[str, AgentResult]
) -> tuple[list[Route], list[Route]]:
    """Each post's route after stage 1 and after the agent (`judged`: by post id)."""
    stage1: list[Route] = []
    final: list[Route] = []
    for item in first:
        if not item.to_agent:
            route = _BY_DECISION[item.verdict.decision]
            stage1.append(route)
            final.append(route)
            continue
        stage1.append(Route.TO_AGENT)
        if item.post.post_id not in judged:
            raise ValueError(f"no agent result for {item.post.post_id}, which stage 1 sent on")
        verdict, _ = judged[item.post.post_id]
        # No verdict is a fallback: the post goes to a human, and is never counted as allowed.
        final.append(Route.AGENT_UNAVAILABLE if verdict is None else _BY_DECISION[verdict.decision])
    return stage1, final


def count_routes(routes: Sequence[Route], labels: Sequence[str]) -> RouteCounts:
    counts = Counter(routes)
    violating = [label != Category.SAFE.value for label in labels]
    return RouteCounts(
        allowed=counts[Route.ALLOWED],
        removed=counts[Route.REMOVED],
        to_agent=counts[Route.TO_AGENT],
        review=counts[Route.REVIEW],
        agent_unavailable=counts[Route.AGENT_UNAVAILABLE],
        violating_allowed=sum(
            r is Route.ALLOWED and v for r, v in zip(routes, violating, strict=True)
        ),
        safe_removed=sum(
            r is Route.REMOVED and not v for r, v in zip(routes, violating, strict=True)
        ),
    )


def final_scores(
    first: Sequence[FirstStage], judged: Mapping[str, AgentResult]
) -> list[list[float]]:
    """Per post, the scores of its most authoritative verdict: the agent's when it gave one."""
    rows: list[list[float]] = []
    for item in first:
        verdict = item.verdict
        if item.to_agent:
            verdict = judged[item.post.post_id][0] or verdict
        rows.append([verdict.scores[c] for c in CATEGORIES])
    return rows


def tally(
    first: Sequence[FirstStage],
    judged: Mapping[str, AgentResult],
    labels: Sequence[str],
    *,
    stage1_version: str,
    agent_model: str,
    base_url: str,
    agent_seconds: float,
) -> CascadeEvaluation:
    """The cascade's report from stage 1's results and the agent's (see the module docstring)."""
    stage1, final = final_routes(first, judged)
    final_counts = count_routes(final, labels)
    verdicts = [verdict for verdict, _ in judged.values() if verdict is not None]
    decisions = Counter(verdict.decision for verdict in verdicts)
    unavailable = Counter(
        fallback_reason(review) for verdict, review in judged.values() if verdict is None
    )
    violating = sum(label != Category.SAFE.value for label in labels)
    return CascadeEvaluation(
        posts=len(first),
        violating_posts=violating,
        safe_posts=len(first) - violating,
        stage1=count_routes(stage1, labels),
        final=final_counts,
        to_humans=final_counts.review + final_counts.agent_unavailable,
        agent=AgentTally(
            model=agent_model,
            base_url=base_url,
            sent=len(judged),
            answered=len(verdicts),
            decisions={decision: decisions[decision] for decision in Decision},
            unavailable=dict(sorted(unavailable.items())),
            seconds=round(agent_seconds, 3),
        ),
        final_scores=score_probabilities(
            final_scores(first, judged),
            [{"text": "", "label": label} for label in labels],
            model_version=f"{stage1_version} + agent {agent_model}",
        ),
    )


async def judge_all(
    items: Sequence[FirstStage],
    stage: AgentStage,
    settings: Settings,
    console: Console | None,
) -> dict[str, AgentResult]:
    """`items` through `second_stage`, `agent.concurrency` at a time, with a progress bar."""
    chunk = max(1, settings.agent.concurrency)
    judged: dict[str, AgentResult] = {}
    with Progress(console=console, disable=console is None) as progress:
        task = progress.add_task("agent", total=len(items))
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            results = await second_stage(part, stage, settings)
            judged.update(zip((item.post.post_id for item in part), results, strict=True))
            progress.advance(task, len(part))
    return judged


async def _judge_with(
    items: Sequence[FirstStage],
    settings: Settings,
    stage: AgentStage | None,
    console: Console | None,
) -> tuple[dict[str, AgentResult], str]:
    """Run the agent stage: `stage`, or the worker's on the configured endpoint (then closed)."""
    if stage is not None:
        return await judge_all(items, stage, settings, console), stage.model_name
    worker_stage, close = create_agent_stage(settings)
    try:
        return await judge_all(items, worker_stage, settings, console), worker_stage.model_name
    finally:
        await close()


def evaluate_cascade(
    scorer: Scorer,
    records: Sequence[Mapping[str, str]],
    settings: Settings,
    *,
    console: Console | None = None,
    agent: AgentStage | None = None,
) -> CascadeEvaluation:
    """Run `records` (`{"text", "label"}`) through both stages; `agent` replaces the worker's."""
    if not records:
        raise ValueError("no records to evaluate")
    first: list[FirstStage] = []
    for start in range(0, len(records), ROUTING_BATCH):
        posts = [
            PostSubmitted(
                post_id=f"eval-{start + offset}",
                author_id="eval",
                text=str(record["text"])[:MAX_POST_CHARS],
            )
            for offset, record in enumerate(records[start : start + ROUTING_BATCH])
        ]
        first.extend(first_stage(posts, scorer, settings, agent_enabled=True))
    sent = [item for item in first if item.to_agent]
    started = time.perf_counter()
    judged, model_name = asyncio.run(_judge_with(sent, settings, agent, console))
    return tally(
        first,
        judged,
        [record["label"] for record in records],
        stage1_version=scorer.version,
        agent_model=model_name,
        base_url=settings.llm.base_url,
        agent_seconds=time.perf_counter() - started,
    )


def _count(count: int | None, total: int) -> str:
    if count is None:
        return "-"
    return f"{count} ({count / total:.1%})" if total else str(count)


def render_cascade(result: CascadeEvaluation, console: Console) -> None:
    """Print the final verdicts' scores as `eval` does, the routing, then the agent's tally."""
    console.print(
        "[bold]cascade: the final verdicts' scores[/bold] (the agent's where it answered)"
    )
    render_report(result.final_scores, console)
    table = Table(title=f"routing ({result.posts} posts; first_stage, then the agent)")
    table.add_column("route")
    table.add_column("stage 1 alone", justify="right")
    table.add_column("cascade (final)", justify="right")
    stage1, final = result.stage1, result.final
    rows = (
        ("allowed", stage1.allowed, final.allowed, result.posts),
        ("removed", stage1.removed, final.removed, result.posts),
        ("to the agent", stage1.to_agent, None, result.posts),
        ("to human review", stage1.review, final.review, result.posts),
        ("agent unavailable (to a human)", None, final.agent_unavailable, result.posts),
        (f"violating allowed (of {result.violating_posts})", stage1.violating_allowed,
         final.violating_allowed, result.violating_posts),
        (f"safe removed (of {result.safe_posts})", stage1.safe_removed, final.safe_removed,
         result.safe_posts),
    )  # fmt: skip
    for name, alone, cascaded, total in rows:
        table.add_row(name, _count(alone, total), _count(cascaded, total))
    console.print(table)
    agent = result.agent
    decided = ", ".join(f"{d.value} {n}" for d, n in agent.decisions.items())
    unavailable = ", ".join(f"{reason} {n}" for reason, n in agent.unavailable.items()) or "none"
    console.print(
        f"agent {agent.model} at {agent.base_url}: {agent.answered} of {agent.sent} answered "
        f"({decided}) in {agent.seconds:.1f} s; unavailable: {unavailable}; "
        f"to humans in all: {result.to_humans}"
    )
