"""`moderation bench`: throughput and latency of the pipeline against the real local stack.

Phases, each on its own fresh topics (`bench-<run>.*`) so runs never see each other's backlog:
1. fast model: posts/s of `predict_proba` on one core;
2. end to end at a fixed offered rate: posts submitted through the API's batch endpoint at
   `rate` posts/s, latency = verdict row recorded in PostgreSQL − post submitted;
3. end to end at saturation: as fast as the API takes them; throughput = posts / (last verdict
   row − first submission);
4. ingest only (worker and recorder stopped): single-post requests and batch requests.

`moderation bench --agent` (`run_agent_bench`) measures the cascade's agent stage instead,
against the configured LLM endpoint (the local llama.cpp server unless told otherwise):
1. cascade on a sample: the first `sample` posts of the gold split through stage 1, then the
   posts it sends to the agent (the first `agent_limit` of them, if given) through stage 2 in
   chunks; decisions and fallbacks per stage, agent throughput, latency per run, model and tool
   calls per run (from the Prometheus counters, before/after);
2. the prompt-injection set (`tests/data/injection_posts.jsonl`): every post through both
   stages; none may end as allow.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import REGISTRY
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlmodel import Session

from moderation.classifier.agent import AgentVerdict
from moderation.classifier.cascade import AgentStage, FirstStage, Scorer, first_stage, second_stage
from moderation.classifier.injection.screen import InjectionScreen
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.devtools import stack
from moderation.devtools.loadgen import latency_percentiles, measure_ingest
from moderation.devtools.stack.kafka import delete_topics, ensure_topics
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.events import ModerationVerdict, PostSubmitted, ReviewRequested
from moderation.settings import PROJECT_ROOT, Settings
from moderation.taxonomy import Category, Decision

RESULTS_DIR = PROJECT_ROOT / "bench-results"
BENCH_TEXTS = (
    "Lovely weather at the lake today, anyone up for a swim?",
    "WIN a FREE gift card now!!! click http://win.example to claim",
    "Selling my old bike, barely used, message me for details.",
    "You are pathetic and nobody wants you here",
    "Great match last night, what a comeback in the second half!",
)


def measure_model(settings: Settings, posts: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from moderation.classifier.fast.model import ensure_fast_model, measure_throughput

    model = ensure_fast_model(settings, progress=True)
    texts = [f"{BENCH_TEXTS[i % len(BENCH_TEXTS)]} #{i}" for i in range(posts)]
    with threadpool_limits(limits=1):
        per_second = measure_throughput(model, texts)
    return {"model_version": model.version, "posts": posts, "posts_per_second_one_core": per_second}


async def _submit(
    client: httpx.AsyncClient, author: str, start: int, count: int
) -> tuple[list[str], int]:
    items = [
        {"text": f"{BENCH_TEXTS[i % len(BENCH_TEXTS)]} #{i}", "author_id": author}
        for i in range(start, start + count)
    ]
    response = await client.post("/v1/posts:batch", json={"posts": items})
    response.raise_for_status()
    ids = [item["post_id"] for item in response.json()["results"] if "post_id" in item]
    return ids, count - len(ids)


async def _offered_rate(
    client: httpx.AsyncClient, author: str, rate: int, seconds: float
) -> list[str]:
    """Submit `rate` posts/s in 20 ticks a second for `seconds`."""
    ticks_per_second = 20
    per_tick = max(1, rate // ticks_per_second)
    ids: list[str] = []
    started = time.perf_counter()
    tick = 0
    pending: list[asyncio.Task[tuple[list[str], int]]] = []
    while tick < seconds * ticks_per_second:
        pending.append(asyncio.create_task(_submit(client, author, tick * per_tick, per_tick)))
        tick += 1
        await asyncio.sleep(max(0.0, started + tick / ticks_per_second - time.perf_counter()))
    for done in await asyncio.gather(*pending):
        ids.extend(done[0])
    return ids


async def _saturate(
    client: httpx.AsyncClient, author: str, posts: int, concurrency: int
) -> list[str]:
    batch = 1_000
    starts = iter(range(0, posts, batch))
    ids: list[str] = []

    async def lane() -> None:
        for start in starts:
            done, _ = await _submit(client, author, start, min(batch, posts - start))
            ids.extend(done)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ids


def _wait_recorded(
    settings: Settings, author: str, post_ids: list[str], timeout: float
) -> dict[str, Any]:
    """Wait until every post has a verdict row; return latency and throughput figures.

    Progress is one indexed count per second: the measuring must not load the machine it
    measures.
    """
    engine = make_engine(settings)
    deadline = time.monotonic() + timeout
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("waiting for verdict rows", total=len(post_ids))
            while True:
                with Session(engine) as session:
                    done = crud.count_author_verdicts(session, author_id=author, stage="model")
                progress.update(task, completed=done)
                if done >= len(post_ids) or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
        with Session(engine) as session:
            timings = crud.verdict_timings(session, author_id=author, stage="model")
    finally:
        engine.dispose()
    return _latency_summary(post_ids, timings)


def _latency_summary(
    post_ids: list[str], timings: list[tuple[str, datetime, datetime]]
) -> dict[str, Any]:
    latencies = [
        (recorded - submitted).total_seconds() * 1000 for _, submitted, recorded in timings
    ]
    first = min((submitted for _, submitted, _ in timings), default=None)
    last = max((recorded for _, _, recorded in timings), default=None)
    span = (last - first).total_seconds() if first and last else 0.0
    recorded_posts = {post_id for post_id, _, _ in timings}
    return {
        "posts": len(post_ids),
        "verdict_rows": len(timings),
        "lost": len(set(post_ids) - recorded_posts),
        "seconds": round(span, 3),
        "posts_per_second": round(len(timings) / span, 1) if span else 0.0,
        "latency_ms": latency_percentiles(latencies),
    }


async def _e2e(settings: Settings, api_key: str, run: str, *, rate: int, seconds: float,
               saturation_posts: int) -> dict[str, Any]:  # fmt: skip
    base_url = f"http://127.0.0.1:{settings.api.port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        fixed_author, saturation_author = f"bench-{run}-fixed", f"bench-{run}-saturation"
        fixed_ids = await _offered_rate(client, fixed_author, rate, seconds)
        fixed = await asyncio.to_thread(_wait_recorded, settings, fixed_author, fixed_ids, 300)
        fixed["offered_posts_per_second"] = rate
        saturated_ids = await _saturate(client, saturation_author, saturation_posts, 4)
        saturated = await asyncio.to_thread(
            _wait_recorded, settings, saturation_author, saturated_ids, 600
        )
    return {"fixed_rate": fixed, "saturation": saturated}


def run_bench(
    settings: Settings,
    *,
    model_posts: int = 50_000,
    rate: int = 1_000,
    seconds: float = 10.0,
    saturation_posts: int = 50_000,
    single_requests: int = 10_000,
    batch_posts: int = 100_000,
    console: Console,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    run_settings = isolated_settings(settings, f"bench-{run}")
    # The stream figures are the pipeline's (stage 1); `bench --agent` measures the agent stage.
    run_settings = run_settings.model_copy(
        update={"agent": run_settings.agent.model_copy(update={"enabled": False})}
    )
    stack.up(settings, ["kafka", "postgres"])
    asyncio.run(ensure_topics(run_settings))
    engine = make_engine(settings)
    create_tables(engine)
    with Session(engine) as session:
        api_key, _ = crud.create_api_key(session, name=f"bench-{run}", scopes=["submit", "read"])
    engine.dispose()

    result: dict[str, Any] = {
        "run": run,
        "machine": _machine(),
        "started_at": datetime.now().astimezone().isoformat(),
    }
    console.print("[bold]1/4 fast model throughput[/bold]")
    result["model"] = measure_model(settings, model_posts)

    # One key sends everything here: the per-key rate limits would measure themselves.
    services = PipelineServices(
        run_settings,
        extra_env={
            "MODERATION_API__RATE_LIMIT_PER_MINUTE": "0",
            "MODERATION_API__REQUEST_RATE_LIMIT_PER_MINUTE": "0",
        },
    )
    try:
        services.start("recorder", "worker", "api", timeout=600)
        console.print(f"[bold]2-3/4 end to end: {rate} posts/s offered, then saturation[/bold]")
        result["end_to_end"] = asyncio.run(
            _e2e(run_settings, api_key, run, rate=rate, seconds=seconds,
                 saturation_posts=saturation_posts)
        )  # fmt: skip
        services.stop("worker", "recorder")
        console.print("[bold]4/4 ingest (api only)[/bold]")
        base_url = f"http://127.0.0.1:{settings.api.port}"
        # Many small requests need many connections in flight; batches of 1,000 need few (more
        # would only queue behind Kafka's acknowledgements and time out as 503s).
        single = asyncio.run(
            measure_ingest(base_url, api_key, single_requests=single_requests, batch_posts=0,
                           concurrency=32)
        )  # fmt: skip
        batch = asyncio.run(
            measure_ingest(base_url, api_key, single_requests=0, batch_posts=batch_posts,
                           concurrency=4)
        )  # fmt: skip
        result["ingest"] = {
            "single": {**single["single"], "concurrency": 32},
            "batch": {**batch["batch"], "concurrency": 4},
        }
    finally:
        services.stop()
        asyncio.run(delete_topics(run_settings))
    result["results_file"] = str(_write_result(result, f"bench-{{stamp}}-{run}.json"))
    return result


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _write_result(result: dict[str, Any], name: str) -> Path:
    """Write `result` into bench-results/; `{stamp}` in `name` becomes the local date and time."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")  # noqa: DTZ005 - a local file name
    path = RESULTS_DIR / name.format(stamp=stamp)
    path.write_text(json.dumps(result, indent=2))
    return path


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"moderation bench {result['run']} ({result['machine']['cpus']} cpus)")
    for column in ("measure", "posts/s", "p50 ms", "p95 ms", "p99 ms", "notes"):
        table.add_column(column)
    model = result["model"]
    table.add_row("fast model, one core", f"{model['posts_per_second_one_core']:,.0f}", "", "", "",
                  model["model_version"])  # fmt: skip
    for name in ("fixed_rate", "saturation"):
        e2e = result["end_to_end"][name]
        lat = e2e["latency_ms"]
        note = f"{e2e['posts']} posts, lost {e2e['lost']}"
        if name == "fixed_rate":
            note += f", offered {e2e['offered_posts_per_second']}/s"
        table.add_row(f"end to end, {name.replace('_', ' ')}", f"{e2e['posts_per_second']:,.0f}",
                      str(lat["p50"]), str(lat["p95"]), str(lat["p99"]), note)  # fmt: skip
    for name in ("single", "batch"):
        phase = result["ingest"].get(name)
        if phase:
            lat = phase["latency_ms"]
            table.add_row(f"ingest, {name} requests", f"{phase['posts_per_second']:,.0f}",
                          str(lat["p50"]), str(lat["p95"]), str(lat["p99"]),
                          f"statuses {phase['statuses']}")  # fmt: skip
    console.print(table)
    console.print(f"[dim]written to {result['results_file']}[/dim]")


# --- `bench --agent`: the cascade's agent stage ---------------------------------------------

INJECTION_POSTS = PROJECT_ROOT / "tests" / "data" / "injection_posts.jsonl"
DECISIONS = tuple(d.value for d in Decision)
FALLBACK_PREFIX = "agent unavailable ("

AgentResult = tuple[ModerationVerdict | None, ReviewRequested | None]
"""What `second_stage` answers per post: (agent verdict or None after a fallback, review)."""


def fallback_reason(review: ReviewRequested | None) -> str:
    """The fallback's label from its review reason (`agent unavailable (<reason>); ...`)."""
    if review is None or not review.reason.startswith(FALLBACK_PREFIX):
        return "unknown"
    return review.reason[len(FALLBACK_PREFIX) :].split(")", 1)[0] or "unknown"


REVIEW_REASON_KINDS = (
    ("agent decided", "disagreement"),  # the agent's decision against its combined scores
    ("possible prompt injection", "injection_never_allowed"),
    ("always-review", "always_review"),
    ("uncertain", "uncertain"),  # the combined scores passed no threshold
)


def review_reason_kind(reason: str) -> str:
    """Why an agent verdict still needs a human, as a short label (see `cascade.combine`)."""
    return next((kind for prefix, kind in REVIEW_REASON_KINDS if reason.startswith(prefix)),
                "other")  # fmt: skip


def final_outcomes(first: Sequence[FirstStage], second: Sequence[AgentResult]) -> list[str]:
    """The final decision of every post of `first`, in order.

    `second` holds the agent's results for the first `len(second)` posts that stage 1 sent to
    the agent (in order); a post after those was not run (`not_run`). A fallback is `review`.
    """
    sent = sum(item.to_agent for item in first)
    if len(second) > sent:
        raise ValueError(f"{len(second)} agent results for {sent} posts sent to the agent")
    agent_results = iter(second)
    outcomes: list[str] = []
    for item in first:
        if not item.to_agent:
            outcomes.append(item.verdict.decision.value)
            continue
        result = next(agent_results, None)
        if result is None:
            outcomes.append("not_run")
        else:
            verdict, _ = result
            outcomes.append(verdict.decision.value if verdict else Decision.REVIEW.value)
    return outcomes


def _by_decision(decisions: Sequence[str]) -> dict[str, int]:
    counts = Counter(decisions)
    return {decision: counts[decision] for decision in DECISIONS}


def tally_cascade(first: Sequence[FirstStage], second: Sequence[AgentResult]) -> dict[str, Any]:
    """Per stage: what it decided, what it passed on, the agent's fallbacks; and the end result.

    `second` as for `final_outcomes`. Stage 1's `review` are the posts it sent straight to a
    human; the agent's `review` are its verdicts that need one, counted by `review_reasons`
    (fallbacks are counted apart).
    """
    outcomes = final_outcomes(first, second)
    sent = [item for item in first if item.to_agent]
    verdicts = [verdict for verdict, _ in second if verdict is not None]
    fallbacks = Counter(fallback_reason(review) for verdict, review in second if verdict is None)
    review_reasons = Counter(
        review_reason_kind(review.reason)
        for verdict, review in second
        if verdict is not None and review is not None
    )
    final = _by_decision(outcomes) | {"not_run": outcomes.count("not_run")}
    return {
        "posts": len(first),
        "stage1": {
            "decided": _by_decision(
                [item.verdict.decision.value for item in first if not item.to_agent]
            ),
            "to_agent": len(sent),
        },
        "agent": {
            "sent": len(sent),
            "run": len(second),
            "not_run": len(sent) - len(second),
            "decided": _by_decision([verdict.decision.value for verdict in verdicts]),
            "review_reasons": dict(sorted(review_reasons.items())),
            "fallbacks": dict(sorted(fallbacks.items())),
            "fallbacks_total": sum(fallbacks.values()),
        },
        "final": final,
        "sent_to_humans": final[Decision.REVIEW.value],
    }


def gold_agreement(
    first: Sequence[FirstStage], second: Sequence[AgentResult], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """How often an automatic decision matches the gold label (allow ⇔ safe, remove ⇔ not).

    For the posts stage 1 decided and those the agent decided (`second` as for
    `final_outcomes`); reviews, fallbacks and posts not run are left out.
    """
    matches: dict[str, list[bool]] = {"stage1": [], "agent": []}
    outcomes = final_outcomes(first, second)
    for item, outcome, label in zip(first, outcomes, labels, strict=True):
        if outcome in (Decision.ALLOW.value, Decision.REMOVE.value):
            matches["agent" if item.to_agent else "stage1"].append(
                (outcome == Decision.ALLOW.value) == (label == Category.SAFE.value)
            )
    return {
        stage: {
            "decided": len(agreed),
            "agree": sum(agreed),
            "share": round(sum(agreed) / len(agreed), 4) if agreed else None,
        }
        for stage, agreed in matches.items()
    }


def injection_report(first: Sequence[FirstStage], second: Sequence[AgentResult]) -> dict[str, Any]:
    """The injection set's path through the cascade; `ended_as_allow` must be 0."""
    tally = tally_cascade(first, second)
    outcomes = final_outcomes(first, second)
    allowed = [
        item.post.post_id
        for item, outcome in zip(first, outcomes, strict=True)
        if outcome == Decision.ALLOW.value
    ]
    stage1 = tally["stage1"]["decided"]
    return {
        "total": len(first),
        "flagged_by_screen": sum(item.screen.flagged for item in first),
        "stage1_removed": stage1[Decision.REMOVE.value],
        "stage1_allowed": stage1[Decision.ALLOW.value],
        "stage1_to_review": stage1[Decision.REVIEW.value],
        "to_agent": tally["stage1"]["to_agent"],
        "agent": tally["agent"],
        "final": tally["final"],
        "sent_to_humans": tally["sent_to_humans"],
        "ended_as_allow": len(allowed),
        "ended_as_allow_ids": allowed,
    }


def counter_values(name: str, label: str) -> dict[str, float]:
    """The current value of every child of the counter `name` (with `_total`), by `label`."""
    values: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and label in sample.labels:
                values[sample.labels[label]] = sample.value
    return values


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    """What each child of a counter gained (children that gained nothing are left out)."""
    gained = {key: round(value - before.get(key, 0.0)) for key, value in after.items()}
    return {key: value for key, value in sorted(gained.items()) if value}


@dataclass
class CounterSnapshot:
    """The agent's and the model provider's counters at one moment."""

    llm_calls: dict[str, float]
    tool_calls: dict[str, float]
    repairs: float

    @classmethod
    def take(cls) -> CounterSnapshot:
        return cls(
            llm_calls=counter_values("moderation_llm_calls_total", "outcome"),
            tool_calls=counter_values("moderation_agent_tool_calls_total", "tool"),
            repairs=REGISTRY.get_sample_value("moderation_agent_repairs_total") or 0.0,
        )


def _mean_ms(latencies_ms: Sequence[float]) -> float:
    return round(sum(latencies_ms) / len(latencies_ms), 2) if latencies_ms else 0.0


def agent_performance(
    *,
    posts: int,
    wall_seconds: float,
    answered_seconds: Sequence[float],
    failed_seconds: Sequence[float],
    before: CounterSnapshot,
    after: CounterSnapshot,
) -> dict[str, Any]:
    """Throughput over the phase's wall time, latency per run, model and tool calls per run.

    `posts` went through the agent stage (fallbacks included); `answered_seconds` and
    `failed_seconds` are the durations of the runs that gave a verdict and of those that started
    but gave none (timeout, errors, invalid output). Circuit-open fallbacks start no run.
    Throughput and latency are the answered runs'; the Agents SDK counts tool calls only for
    answered runs, model calls for every run.
    """
    llm_calls = counter_delta(before.llm_calls, after.llm_calls)
    tool_calls = counter_delta(before.tool_calls, after.tool_calls)
    answered = len(answered_seconds)
    started = answered + len(failed_seconds)
    answered_ms = [seconds * 1000 for seconds in answered_seconds]
    failed_ms = [seconds * 1000 for seconds in failed_seconds]

    def rate(count: int, per: float) -> float:
        return round(per * count / wall_seconds, 4 if per == 1 else 2) if wall_seconds else 0.0

    def ratio(total: float, count: int) -> float | None:
        return round(total / count, 2) if count else None

    return {
        "posts": posts,
        "runs_started": started,
        "runs_answered": answered,
        "runs_failed": len(failed_seconds),
        "wall_seconds": round(wall_seconds, 3),
        "answered_per_second": rate(answered, 1),
        "answered_per_minute": rate(answered, 60),
        "posts_per_minute": rate(posts, 60),
        "latency_ms": {"mean": _mean_ms(answered_ms), **latency_percentiles(answered_ms)},
        "failed_run_ms": {
            "mean": _mean_ms(failed_ms),
            "max": round(max(failed_ms, default=0.0), 2),
        },
        "llm_calls": llm_calls,
        "llm_calls_per_started_run": ratio(sum(llm_calls.values()), started),
        "tool_calls": tool_calls,
        "tool_calls_per_answered_run": ratio(sum(tool_calls.values()), answered),
        "repairs": round(after.repairs - before.repairs),
    }


class TimedAgentStage(AgentStage):
    """The agent stage, timing each run from the moment it holds a slot until it ends.

    Waiting for a slot is left out (a chunk holds more posts than slots). Runs that fail, time
    out or are cancelled are timed apart from those that answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered_seconds: list[float] = []
        self.failed_seconds: list[float] = []

    async def _run(
        self,
        post: PostSubmitted,
        stage1_scores: Mapping[Category, float],
        screen: InjectionScreen,
        model_name: str,
    ) -> tuple[AgentVerdict, tuple[str, ...], bool]:
        started = time.perf_counter()
        try:
            answer = await super()._run(post, stage1_scores, screen, model_name)
        except BaseException:
            self.failed_seconds.append(time.perf_counter() - started)
            raise
        self.answered_seconds.append(time.perf_counter() - started)
        return answer


@dataclass
class AgentPhase:
    results: list[AgentResult] = field(default_factory=list)
    performance: dict[str, Any] = field(default_factory=dict)


async def _run_agent_phase(
    stage: TimedAgentStage,
    items: Sequence[FirstStage],
    settings: Settings,
    console: Console,
    title: str,
) -> AgentPhase:
    """`items` through `second_stage` in chunks of twice the agent's concurrency."""
    chunk = max(1, settings.agent.concurrency * 2)
    phase = AgentPhase()
    before = CounterSnapshot.take()
    started = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task(title, total=len(items))
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            phase.results.extend(await second_stage(part, stage, settings))
            progress.advance(task, len(part))
    phase.performance = agent_performance(
        posts=len(items),
        wall_seconds=time.perf_counter() - started,
        answered_seconds=stage.answered_seconds,
        failed_seconds=stage.failed_seconds,
        before=before,
        after=CounterSnapshot.take(),
    )
    return phase


async def _agent_phases(
    settings: Settings,
    cascade_items: Sequence[FirstStage],
    injection_items: Sequence[FirstStage],
    console: Console,
) -> tuple[AgentPhase, AgentPhase]:
    from moderation.classifier.precedents import SqlDecisionLog
    from moderation.llm.provider import ChatCompletionsProvider, create_client
    from moderation.tracing import configure_agent_tracing

    configure_agent_tracing(upload_to_openai=settings.llm.trace_upload)
    client = create_client(settings.llm)
    engine = make_engine(settings)
    provider = ChatCompletionsProvider(client, settings.llm.model)
    decisions = SqlDecisionLog(engine, pool_size=settings.agent.precedent_pool)
    try:
        # A stage (circuit breaker, slots) per phase: one phase's failures do not open the next's.
        console.print(f"[bold]1/2 agent on {len(cascade_items)} posts of the gold sample[/bold]")
        cascade = await _run_agent_phase(
            TimedAgentStage(settings, provider, decisions), cascade_items, settings, console,
            "agent: gold sample",
        )  # fmt: skip
        console.print(
            f"[bold]2/2 agent on {len(injection_items)} posts of the injection set[/bold]"
        )
        injection = await _run_agent_phase(
            TimedAgentStage(settings, provider, decisions), injection_items, settings, console,
            "agent: injection set",
        )  # fmt: skip
    finally:
        await client.close()
        engine.dispose()
    return cascade, injection


def _is_local_llm(settings: Settings) -> bool:
    """Whether the endpoint is the local adapter (which this command may start)."""
    url = urlsplit(settings.llm.base_url)
    return url.hostname in ("127.0.0.1", "localhost") and url.port == settings.llm.adapter_port


def agent_settings_summary(settings: Settings) -> dict[str, Any]:
    agent = settings.agent
    return {
        "llm": {
            "base_url": settings.llm.base_url,
            "model": settings.llm.model,
            "timeout_seconds": settings.llm.timeout_seconds,
        },
        "agent": {
            "concurrency": agent.concurrency,
            "tool_choice": agent.tool_choice,
            "agent_weight": agent.agent_weight,
            "timeout_seconds": agent.timeout_seconds,
            "batch_deadline_seconds": agent.batch_deadline_seconds,
            "max_turns": agent.max_turns,
            "max_attempts": agent.max_attempts,
            "max_output_tokens": agent.max_output_tokens,
            "thresholds": agent.thresholds.model_dump(mode="json"),
        },
        "thresholds": settings.thresholds.model_dump(mode="json"),
        "policy_version": settings.models.policy_version,
    }


def _first_stage_timed(
    posts: Sequence[PostSubmitted], scorer: Scorer, settings: Settings
) -> tuple[list[FirstStage], float]:
    started = time.perf_counter()
    results = first_stage(posts, scorer, settings, agent_enabled=True)
    return results, time.perf_counter() - started


def run_agent_bench(
    settings: Settings, *, sample: int, agent_limit: int | None, console: Console
) -> dict[str, Any]:
    """The agent stage against the configured LLM endpoint (see the module docstring)."""
    from moderation.classifier.fast.model import ensure_fast_model
    from moderation.datasets.build import gold_split_path
    from moderation.evaluation.scores import load_jsonl_dataset

    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "run": run,
        "bench": "agent",
        "machine": _machine(),
        "started_at": datetime.now().astimezone().isoformat(),
        "settings": agent_settings_summary(settings),
        "sample": sample,
        "agent_limit": agent_limit,
    }
    console.print(
        f"agent bench on {settings.llm.base_url} ({settings.llm.model}), "
        f"tool_choice={settings.agent.tool_choice}, concurrency={settings.agent.concurrency}"
    )
    if _is_local_llm(settings) and settings.agent.tool_choice != "required":
        console.print(
            "[yellow]the local llama.cpp server calls tools reliably only with "
            "MODERATION_AGENT__TOOL_CHOICE=required[/yellow]"
        )
    if _is_local_llm(settings) and settings.agent.concurrency > 1:
        console.print(
            "[yellow]the local llama.cpp server answers one request at a time: with "
            f"concurrency {settings.agent.concurrency} runs queue behind each other and may time "
            "out (MODERATION_AGENT__CONCURRENCY=1 measures one run at a time)[/yellow]"
        )
    # PostgreSQL for the agent's tools (the decision log); the local LLM server if it is the
    # configured endpoint.
    stack.up(settings, ["postgres", "llm"] if _is_local_llm(settings) else ["postgres"])
    engine = make_engine(settings)
    create_tables(engine)
    engine.dispose()
    model = ensure_fast_model(settings, progress=True)
    setup_seconds = time.perf_counter() - started

    gold = load_jsonl_dataset(gold_split_path(settings))[:sample]
    author = f"bench-agent-{run}"
    gold_posts = [
        PostSubmitted(post_id=f"{author}-gold-{i:05d}", text=row["text"], author_id=author)
        for i, row in enumerate(gold)
    ]
    injection_rows = [
        json.loads(line) for line in INJECTION_POSTS.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]  # fmt: skip
    injection_posts = [
        PostSubmitted(post_id=row["id"], text=row["text"], author_id=author)
        for row in injection_rows
    ]
    cascade_first, cascade_stage1_seconds = _first_stage_timed(gold_posts, model, settings)
    injection_first, injection_stage1_seconds = _first_stage_timed(injection_posts, model, settings)
    sent = [item for item in cascade_first if item.to_agent]
    to_run = sent if agent_limit is None else sent[:agent_limit]
    injection_sent = [item for item in injection_first if item.to_agent]

    cascade_phase, injection_phase = asyncio.run(
        _agent_phases(settings, to_run, injection_sent, console)
    )
    result["model_version"] = model.version
    result["cascade"] = {
        **tally_cascade(cascade_first, cascade_phase.results),
        "stage1_seconds": round(cascade_stage1_seconds, 3),
        "agent_performance": cascade_phase.performance,
        "agreement_with_gold_label": gold_agreement(
            cascade_first, cascade_phase.results, [row["label"] for row in gold]
        ),
    }
    result["injection"] = {
        **injection_report(injection_first, injection_phase.results),
        "stage1_seconds": round(injection_stage1_seconds, 3),
        "agent_performance": injection_phase.performance,
    }
    result["timings_seconds"] = {
        "setup": round(setup_seconds, 3),
        "cascade_stage1": round(cascade_stage1_seconds, 3),
        "cascade_agent": cascade_phase.performance["wall_seconds"],
        "injection_stage1": round(injection_stage1_seconds, 3),
        "injection_agent": injection_phase.performance["wall_seconds"],
        "total": round(time.perf_counter() - started, 3),
    }
    result["results_file"] = str(_write_result(result, f"bench-agent-{{stamp}}-{run}.json"))
    return result


def render_agent(result: dict[str, Any], console: Console) -> None:
    settings = result["settings"]
    console.print(
        f"[bold]moderation bench --agent {result['run']}[/bold] "
        f"({result['machine']['cpus']} cpus): {settings['llm']['model']} on "
        f"{settings['llm']['base_url']}, tool_choice={settings['agent']['tool_choice']}, "
        f"concurrency={settings['agent']['concurrency']}"
    )
    table = Table(title="decisions")
    for column in ("set", "posts", "stage 1 allow/remove/review", "to agent", "agent run",
                   "agent allow/remove/review", "fallbacks", "to humans"):  # fmt: skip
        table.add_column(column)
    for name, tally in (("gold sample", result["cascade"]), ("injection", result["injection"])):
        agent = tally["agent"]
        stage1 = (
            result["cascade"]["stage1"]["decided"]
            if name == "gold sample"
            else {"allow": tally["stage1_allowed"], "remove": tally["stage1_removed"],
                  "review": tally["stage1_to_review"]}
        )  # fmt: skip
        fallbacks = ", ".join(f"{k} {v}" for k, v in agent["fallbacks"].items()) or "0"
        table.add_row(
            name, str(tally.get("posts", tally.get("total"))),
            "/".join(str(stage1[d]) for d in DECISIONS), str(agent["sent"]), str(agent["run"]),
            "/".join(str(agent["decided"][d]) for d in DECISIONS), fallbacks,
            str(tally["sent_to_humans"]),
        )  # fmt: skip
    console.print(table)
    perf = Table(title="agent runs")
    for column in ("set", "posts", "answered", "failed", "answered/min", "mean ms", "p50 ms",
                   "p95 ms", "LLM calls/run", "tool calls/answer"):  # fmt: skip
        perf.add_column(column)
    for name, key in (("gold sample", "cascade"), ("injection", "injection")):
        p = result[key]["agent_performance"]
        lat = p["latency_ms"]
        perf.add_row(name, str(p["posts"]), str(p["runs_answered"]), str(p["runs_failed"]),
                     f"{p['answered_per_minute']:.2f}", str(lat["mean"]), str(lat["p50"]),
                     str(lat["p95"]), str(p["llm_calls_per_started_run"]),
                     str(p["tool_calls_per_answered_run"]))  # fmt: skip
    console.print(perf)
    injection = result["injection"]
    style = "green" if injection["ended_as_allow"] == 0 else "bold red"
    console.print(
        f"[{style}]injection set: {injection['ended_as_allow']} of {injection['total']} ended as "
        f"allow[/{style}] {injection['ended_as_allow_ids'] or ''}"
    )
    console.print(f"[dim]written to {result['results_file']}[/dim]")
