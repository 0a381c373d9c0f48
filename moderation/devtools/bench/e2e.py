"""What every benchmark against the local stack shares: a run of its own, the bench's posts,
submitting them through the API, and waiting for their verdict rows in PostgreSQL.

`prepare_run` gives a run its own topics and a submit key; `bench_services` the pipeline's
services for it; `submit_at_rate` and `saturate` submit posts through the batch endpoint;
`wait_recorded` waits for their verdict rows and `latency_summary` turns the rows into
throughput, latency, lost and doubled posts. Used by `pipeline` (`moderation bench`),
`scaling` (`--scaling`), `memory` (`--soak`), `relay` (its posts) and `image_posts`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
from rich.progress import Progress
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.devtools import stack
from moderation.devtools.bench.report import latency_percentiles
from moderation.devtools.stack.kafka import ensure_topics
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.settings import Settings

BENCH_TEXTS = (
    "Lovely weather at the lake today, anyone up for a swim?",
    "WIN a FREE gift card now!!! click http://win.example to claim",
    "Selling my old bike, barely used, message me for details.",
    "You are pathetic and nobody wants you here",
    "Great match last night, what a comeback in the second half!",
)


def bench_text(index: int, length: int | None = None) -> str:
    """The text of bench post `index`: a short everyday post, or about `length` characters of
    prose made of them (the same words, so the model's work grows with the length alone)."""
    if length is None:
        return f"{BENCH_TEXTS[index % len(BENCH_TEXTS)]} #{index}"
    tail = f" #{index}"
    body = " ".join(BENCH_TEXTS[(index + i) % len(BENCH_TEXTS)] for i in range(length // 40 + 2))
    return body[: max(1, length - len(tail))] + tail


async def submit_batch(
    client: httpx.AsyncClient, author: str, start: int, count: int, length: int | None = None
) -> tuple[list[str], int]:
    """Submit posts `start`..`start+count` in one batch request; (accepted ids, refused)."""
    items = [
        {"text": bench_text(i, length), "author_id": author} for i in range(start, start + count)
    ]
    response = await client.post("/v1/posts:batch", json={"posts": items})
    response.raise_for_status()
    ids = [item["post_id"] for item in response.json()["results"] if "post_id" in item]
    return ids, count - len(ids)


async def submit_at_rate(
    client: httpx.AsyncClient, author: str, rate: int, seconds: float, length: int | None = None
) -> list[str]:
    """Submit `rate` posts/s in 20 ticks a second for `seconds`."""
    ticks_per_second = 20
    per_tick = max(1, rate // ticks_per_second)
    ids: list[str] = []
    started = time.perf_counter()
    tick = 0
    pending: list[asyncio.Task[tuple[list[str], int]]] = []
    while tick < seconds * ticks_per_second:
        pending.append(
            asyncio.create_task(submit_batch(client, author, tick * per_tick, per_tick, length))
        )
        tick += 1
        await asyncio.sleep(max(0.0, started + tick / ticks_per_second - time.perf_counter()))
    for done in await asyncio.gather(*pending):
        ids.extend(done[0])
    return ids


async def saturate(
    client: httpx.AsyncClient,
    author: str,
    posts: int,
    concurrency: int,
    length: int | None = None,
) -> list[str]:
    batch = 1_000
    starts = iter(range(0, posts, batch))
    ids: list[str] = []

    async def lane() -> None:
        for start in starts:
            done, _ = await submit_batch(client, author, start, min(batch, posts - start), length)
            ids.extend(done)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ids


def wait_recorded(
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
    return latency_summary(post_ids, timings)


def latency_summary(
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
        # A post with two stage-1 verdict rows (or accepted twice by the API) counted twice.
        "doubled": (len(timings) - len(recorded_posts)) + (len(post_ids) - len(set(post_ids))),
        "seconds": round(span, 3),
        "posts_per_second": round(len(timings) / span, 1) if span else 0.0,
        "latency_ms": latency_percentiles(latencies),
    }


class PostsLostOrDoubled(RuntimeError):
    """A phase lost or doubled a post: the bench fails (after writing its JSON)."""


def bench_services(settings: Settings, *, worker_replicas: int = 1) -> PipelineServices:
    """The pipeline's services for a bench run. One key sends everything, so the per-key rate
    limits are off (they would measure themselves)."""
    return PipelineServices(
        settings,
        extra_env={
            "MODERATION_API__RATE_LIMIT_PER_MINUTE": "0",
            "MODERATION_API__REQUEST_RATE_LIMIT_PER_MINUTE": "0",
        },
        worker_replicas=worker_replicas,
    )


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
