"""The pipeline benchmark (`moderation bench`): throughput and latency against the local stack.

Phases, each on its own fresh topics (`bench-<run>.*`) so runs never see each other's backlog:
1. fast model: posts/s of `predict_proba` on one core;
2. end to end at a fixed offered rate: posts submitted through the API's batch endpoint at
   `rate` posts/s, latency = verdict row recorded in PostgreSQL − post submitted;
3. end to end at saturation: as fast as the API takes them; throughput = posts / (last verdict
   row − first submission);
4. ingest only (worker and recorder stopped): single-post requests and batch requests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.devtools import stack
from moderation.devtools.bench.loadgen import measure_ingest
from moderation.devtools.bench.report import latency_percentiles, machine_info, write_result
from moderation.devtools.stack.kafka import delete_topics, ensure_topics
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.settings import Settings

BENCH_TEXTS = (
    "Lovely weather at the lake today, anyone up for a swim?",
    "WIN a FREE gift card now!!! click http://win.example to claim",
    "Selling my old bike, barely used, message me for details.",
    "You are pathetic and nobody wants you here",
    "Great match last night, what a comeback in the second half!",
)


def measure_model(settings: Settings, posts: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.evaluation.scores import measure_throughput

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


def prepare_run(settings: Settings) -> tuple[str, Settings, str]:
    """A run id, its settings (its own topics, created; the agent off: the stream figures are
    stage 1's, `bench --agent` measures the agent) and a submit key, with Kafka and PostgreSQL up.
    """
    run = uuid.uuid4().hex[:8]
    run_settings = isolated_settings(settings, f"bench-{run}")
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
    return run, run_settings, api_key


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
    run, run_settings, api_key = prepare_run(settings)

    result: dict[str, Any] = {
        "run": run,
        "machine": machine_info(),
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
    result["results_file"] = str(write_result(result, f"bench-{{stamp}}-{run}.json"))
    return result


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
