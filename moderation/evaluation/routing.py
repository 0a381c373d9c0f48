"""Stage-1 routing on a labelled dataset: what the real `first_stage` does with each row.

Every row becomes a `PostSubmitted` and goes through `cascade.first_stage` (the model's scores,
`decide` with the given thresholds, the injection screen, the readability rules) exactly as in
production. The report counts the decisions: allowed, removed, and sent on (to the agent or to a
human), and the two errors that matter most: violating rows allowed and safe rows removed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from moderation.classifier.cascade import Scorer, first_stage
from moderation.classifier.readability import LABEL_PREFIX, sentences
from moderation.events import PostSubmitted
from moderation.settings import Settings
from moderation.taxonomy import Category, Decision

if TYPE_CHECKING:
    from moderation.classifier.injection.model import InjectionDetector

ROUTING_BATCH = 500
# `PostSubmitted.text` is capped at 10,000 characters; longer rows are cut (the API would refuse
# them, so a cut row stands for the longest post that could arrive).
MAX_POST_CHARS = 10_000


class RoutingShares(BaseModel):
    """Shares of rows by stage-1 decision; None where no row of that kind exists."""

    posts: int
    allowed: float = Field(description="share of all rows stage 1 allowed by itself")
    removed: float = Field(description="share of all rows stage 1 removed by itself")
    sent_on: float = Field(description="share of all rows sent to the agent or to a human")
    decided: float = Field(description="allowed + removed: what stage 1 decides alone")
    violating_posts: int
    safe_posts: int
    violating_allowed: float | None = Field(
        description="share of the violating rows (any label but safe) that were allowed"
    )
    safe_removed: float | None = Field(description="share of the safe rows that were removed")
    unreadable: float = Field(
        description="share of all rows whose allow was withheld by the readability rules"
    )


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def route_records(
    scorer: Scorer,
    records: Sequence[Mapping[str, str]],
    settings: Settings,
    detector: InjectionDetector | None = None,
) -> RoutingShares:
    """Run `first_stage` on `records` (`{"text", "label"}`) and count where each row went.

    `detector`: the learned injection detector, as the worker runs it; leave-one-source-out
    routing runs without it (it was trained on every source's safe rows)."""
    if not records:
        raise ValueError("no records to route")
    decisions: list[Decision] = []
    unreadable = 0
    for start in range(0, len(records), ROUTING_BATCH):
        batch = records[start : start + ROUTING_BATCH]
        posts = [
            PostSubmitted(
                post_id=f"eval-{start + offset}",
                author_id="eval",
                text=str(record["text"])[:MAX_POST_CHARS],
            )
            for offset, record in enumerate(batch)
        ]
        # agent_enabled only decides where an uncertain post goes next; both count as sent on.
        results = first_stage(posts, scorer, settings, agent_enabled=True, detector=detector)
        decisions.extend(result.verdict.decision for result in results)
        unreadable += sum(
            any(signal.startswith(LABEL_PREFIX) for signal in result.verdict.signals)
            for result in results
        )

    violating = [record["label"] != Category.SAFE.value for record in records]
    allowed = [decision is Decision.ALLOW for decision in decisions]
    removed = [decision is Decision.REMOVE for decision in decisions]
    total = len(records)
    n_violating = sum(violating)
    n_safe = total - n_violating
    return RoutingShares(
        posts=total,
        allowed=sum(allowed) / total,
        removed=sum(removed) / total,
        sent_on=(total - sum(allowed) - sum(removed)) / total,
        decided=(sum(allowed) + sum(removed)) / total,
        violating_posts=n_violating,
        safe_posts=n_safe,
        violating_allowed=_share(
            sum(a for a, v in zip(allowed, violating, strict=True) if v), n_violating
        ),
        safe_removed=_share(
            sum(r for r, v in zip(removed, violating, strict=True) if not v), n_safe
        ),
        unreadable=unreadable / total,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_routing(routing: RoutingShares, console: Console, *, title: str) -> None:
    """Print the routing shares as one rich table."""
    table = Table(title=f"{title} ({routing.posts} posts; first_stage)")
    for column in (
        "allowed", "removed", "to agent/review", "decided alone", "unreadable",
        f"violating allowed (of {routing.violating_posts})",
        f"safe removed (of {routing.safe_posts})",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    table.add_row(
        _percent(routing.allowed),
        _percent(routing.removed),
        _percent(routing.sent_on),
        _percent(routing.decided),
        _percent(routing.unreadable),
        _percent(routing.violating_allowed),
        _percent(routing.safe_removed),
    )
    console.print(table)


def _error_rate(value: float | None) -> str:
    # Two decimals: a budget of 0.5 % must not look met at 0.52 %.
    return "-" if value is None else f"{value:.2%}"


def render_routing_comparison(
    configured: RoutingShares, chosen: RoutingShares, console: Console, *, title: str
) -> None:
    """Print stage-1 routing (`route_records`) under two sets of thresholds."""
    table = Table(title=f"{title} ({configured.posts} posts; first_stage)")
    for column in ("", "configured", "chosen"):
        table.add_column(column, justify="left" if not column else "right")
    for name, before, after in (
        ("allowed", configured.allowed, chosen.allowed),
        ("removed", configured.removed, chosen.removed),
        ("to agent/review", configured.sent_on, chosen.sent_on),
        ("decided alone (automation)", configured.decided, chosen.decided),
        ("unreadable (allow withheld)", configured.unreadable, chosen.unreadable),
    ):
        table.add_row(name, _percent(before), _percent(after))
    table.add_row(
        f"violating allowed (of {configured.violating_posts})",
        _error_rate(configured.violating_allowed),
        _error_rate(chosen.violating_allowed),
    )
    table.add_row(
        f"safe removed (of {configured.safe_posts})",
        _error_rate(configured.safe_removed),
        _error_rate(chosen.safe_removed),
    )
    console.print(table)


# --- long texts: a violating post buried in a safe one (the passage rule) -----------------------

# A buried post is at most this long, and its host text at least this long.
BURIED_POST_CHARS = 300
HOST_TEXT_CHARS = 600


class LongTextRouting(BaseModel):
    """Stage 1 on long texts, with the passage rule (`readability.passages`) and without it."""

    buried_posts: int = Field(
        description="texts made of a short violating row set between two sentences of a long "
        "safe row of the same dataset (its label: the violating row's)"
    )
    buried_allowed: float | None
    buried_allowed_without_rule: float | None
    long_safe_posts: int = Field(description=f"safe rows of at least {HOST_TEXT_CHARS} chars")
    long_safe_allowed: float | None
    long_safe_allowed_without_rule: float | None


def _long_safe(records: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    return [
        r
        for r in records
        if r["label"] == Category.SAFE.value and len(str(r["text"])) >= HOST_TEXT_CHARS
    ]


def buried_records(
    records: Sequence[Mapping[str, str]], *, count: int = 300, seed: int = 0
) -> list[dict[str, str]]:
    """`count` long texts, each a short violating row (not spam) inside a long safe row."""
    hosts = [str(r["text"]) for r in _long_safe(records)]
    posts = [
        r
        for r in records
        if r["label"] not in (Category.SAFE.value, Category.SPAM.value)
        and len(str(r["text"])) <= BURIED_POST_CHARS
    ]
    if not hosts or not posts:
        return []
    rng = random.Random(seed)
    buried: list[dict[str, str]] = []
    for _ in range(count):
        host = sentences(rng.choice(hosts))
        post = rng.choice(posts)
        at = rng.randrange(len(host) + 1)
        text = " ".join([*host[:at], str(post["text"]), *host[at:]])
        buried.append({"text": text, "label": str(post["label"])})
    return buried


def long_text_routing(
    scorer: Scorer,
    records: Sequence[Mapping[str, str]],
    settings: Settings,
    detector: InjectionDetector | None = None,
) -> LongTextRouting | None:
    """How often stage 1 allows a buried violating post, and the long safe rows' allows, with
    the passage rule and without it (None when `records` have no long safe or short
    violating rows)."""
    buried = buried_records(records)
    long_safe = _long_safe(records)
    if not buried or not long_safe:
        return None
    without = settings.model_copy(
        update={"readability": settings.readability.model_copy(update={"passage_check_chars": 0})}
    )
    on_buried = route_records(scorer, buried, settings, detector)
    off_buried = route_records(scorer, buried, without, detector)
    on_safe = route_records(scorer, long_safe, settings, detector)
    off_safe = route_records(scorer, long_safe, without, detector)
    return LongTextRouting(
        buried_posts=len(buried),
        buried_allowed=on_buried.violating_allowed,
        buried_allowed_without_rule=off_buried.violating_allowed,
        long_safe_posts=len(long_safe),
        long_safe_allowed=on_safe.allowed,
        long_safe_allowed_without_rule=off_safe.allowed,
    )
