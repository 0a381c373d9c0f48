"""The agent benchmark (`moderation bench --agent`): the cascade's agent stage against the
configured LLM endpoint (the local llama.cpp server unless told otherwise).

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
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from moderation.classifier.cascade import FirstStage, Scorer, first_stage, second_stage
from moderation.db.engine import create_tables, make_engine
from moderation.devtools import stack
from moderation.devtools.bench.performance import (
    CounterSnapshot,
    TimedAgentStage,
    agent_performance,
)
from moderation.devtools.bench.report import machine_info, write_result
from moderation.devtools.bench.tally import (
    DECISIONS,
    gold_agreement,
    injection_report,
    tally_cascade,
)
from moderation.evaluation.cascade import AgentResult
from moderation.events import PostSubmitted
from moderation.settings import PROJECT_ROOT, Settings

INJECTION_POSTS = PROJECT_ROOT / "tests" / "data" / "injection_posts.jsonl"


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
    from moderation.llm.provider import ChatCompletionsProvider, create_client
    from moderation.precedents import SqlDecisionLog
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
    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.datasets.build import gold_split_path
    from moderation.evaluation.scores import load_jsonl_dataset

    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "run": run,
        "bench": "agent",
        "machine": machine_info(),
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
    result["results_file"] = str(write_result(result, f"bench-agent-{{stamp}}-{run}.json"))
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
