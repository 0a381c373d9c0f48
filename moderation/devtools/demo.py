"""Embedded mode (`make demo`): the pipeline in one process, no external service.

The same FastStream handlers as the services (the classifier worker and the recorder) are mounted
on one in-memory broker; the read model is SQLite. The fast model is trained on first use (with a
progress bar) and cached in the artifact store. At a terminal, the demo then serves the API and
the dashboard on the same broker and database (`demo_serve.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker, KafkaRouter, TestKafkaBroker
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.classifier.cascade import create_agent_stage
from moderation.db import crud
from moderation.db.engine import make_engine
from moderation.events import PostSubmitted, ReviewRequested
from moderation.services.recorder.app import Recorder, RecorderState
from moderation.services.review.activities import CollectingSink, ReviewActivities
from moderation.services.worker import registry_watch
from moderation.services.worker.app import Worker
from moderation.settings import Settings

DECISION_STYLE = {"allow": "green", "remove": "red", "review": "yellow"}


def demo_settings(settings: Settings) -> Settings:
    """The settings with a fresh SQLite read model under the state dir."""
    database = settings.stack.state_dir / "demo" / "demo.sqlite"
    shutil.rmtree(database.parent, ignore_errors=True)
    database.parent.mkdir(parents=True)
    return settings.model_copy(
        update={"db": settings.db.model_copy(update={"url_override": f"sqlite:///{database}"})}
    )


def load_samples(path: Path) -> list[dict[str, Any]]:
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        sample = json.loads(line)
        if not isinstance(sample, dict) or not str(sample.get("text", "")).strip():
            raise ValueError(f"{path}:{number}: expected an object with a non-empty 'text'")
        samples.append(sample)
    return samples


def llm_endpoint_answers(settings: Settings) -> bool:
    """Is an OpenAI-compatible endpoint serving at `settings.llm.base_url`?"""
    from moderation.devtools.stack.runtime import http_ok

    return http_ok(settings.llm.base_url.rstrip("/") + "/models", timeout=5.0)


def demo_broker(worker: Worker, engine: Engine) -> KafkaBroker:
    """One broker carrying the worker, the recorder and the review workflow's first step."""
    settings = worker.settings
    broker = KafkaBroker()
    broker.include_router(worker.router)
    broker.include_router(Recorder(settings, state=RecorderState(engine=engine)).router)
    broker.include_router(review_tasks_router(settings, engine))
    return broker


@contextlib.asynccontextmanager
async def agent_stage(worker: Worker, *, use_agent: bool) -> AsyncIterator[None]:
    """With `use_agent`, the uncertain posts go to the classifier agent on the configured
    endpoint while the context lasts."""
    close_agent = None
    if use_agent:
        worker.state.agent, close_agent = create_agent_stage(worker.settings)
    try:
        yield
    finally:
        if close_agent is not None:
            worker.state.agent = None
            await close_agent()


async def push_samples(
    worker: Worker, engine: Engine, samples: list[dict[str, Any]], *, use_agent: bool = False
) -> list[str]:
    """Publish the samples to `posts.submitted` on an in-memory broker carrying both services."""
    async with (
        agent_stage(worker, use_agent=use_agent),
        TestKafkaBroker(demo_broker(worker, engine)) as in_memory,
    ):
        return await publish_samples(in_memory, worker.settings, samples)


def review_tasks_router(settings: Settings, engine: Engine) -> KafkaRouter:
    """The review workflow's first step, without Dapr: the same activity creates each task."""
    activities = ReviewActivities(engine, CollectingSink(), settings)
    router = KafkaRouter()

    @router.subscriber(settings.kafka.topics.review_requested, group_id="demo-review-service")
    async def create_review_task(request: ReviewRequested) -> None:
        await asyncio.to_thread(activities.create_task, request)

    return router


async def publish_samples(
    in_memory: KafkaBroker, settings: Settings, samples: list[dict[str, Any]]
) -> list[str]:
    """Each sample as a `PostSubmitted` on the (started, in-memory) broker; their post ids."""
    post_ids = []
    for sample in samples:
        post = PostSubmitted(
            post_id=uuid.uuid4().hex,
            text=unicodedata.normalize("NFC", str(sample["text"])),
            author_id=str(sample.get("author_id", "demo-user")),
        )
        post_ids.append(post.post_id)
        await in_memory.publish(
            post.model_dump_json().encode(),
            topic=settings.kafka.topics.posts_submitted,
            key=post.key(),
        )
    return post_ids


def run_demo(
    settings: Settings, *, samples: Path, console: Console, serve: bool | None = None
) -> None:
    """Push the samples through the pipeline in memory and print their verdicts; then, with
    `serve` (by default: at a terminal, outside CI), serve the API and the dashboard on the same
    broker and database until Ctrl-C (`demo_serve.py`).

    Raises:
        DemoError: serving was asked for and cannot start (a port in use, the dashboard died).
    """
    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.classifier.injection.model import load_detector
    from moderation.devtools import demo_serve

    settings = demo_settings(settings)
    serving = demo_serve.should_serve() if serve is None else serve
    if serving:
        demo_serve.check_ports(settings)  # before the model is loaded, not after
    console.rule("moderation demo · embedded mode (in-memory broker, SQLite)")
    model = ensure_fast_model(settings, progress=True)
    worker = Worker(settings)
    worker.state.serve(model)
    worker.state.detector = load_detector(settings)
    engine = make_engine(settings)
    registry_watch.register_champion(engine, model, settings)

    posts = load_samples(samples)
    use_agent = settings.agent.enabled and llm_endpoint_answers(settings)
    if use_agent:
        console.print(f"classifier agent: {settings.llm.model} at {settings.llm.base_url}")
    else:
        console.print(
            f"classifier agent: off (no LLM endpoint at {settings.llm.base_url}; `make stack-up` "
            "starts one): uncertain posts go to human review"
        )

    async def run() -> None:
        async with (
            agent_stage(worker, use_agent=use_agent),
            TestKafkaBroker(demo_broker(worker, engine)) as in_memory,
        ):
            started = time.perf_counter()
            waiting = f"classifying {len(posts)} posts" + (
                " (the agent takes seconds a post on a CPU)" if use_agent else ""
            )
            with console.status(waiting):
                post_ids = await publish_samples(in_memory, settings, posts)
            elapsed = time.perf_counter() - started
            print_verdicts(console, engine, settings, model.version, post_ids, elapsed)
            if not serving:
                console.print(
                    "[dim]`review` posts wait for a moderator, each with its review task and SLA "
                    "(the same activity the Dapr workflow runs). At a terminal, `make demo` then "
                    "serves the API and the dashboard to decide them (`moderation demo --serve` "
                    "forces it). The real stack: `make stack-up`, then `moderation api`, "
                    "`moderation worker`, `moderation recorder`, `moderation review-service` "
                    "(next to its daprd) and `moderation dashboard`.[/dim]"
                )
                return
            await demo_serve.serve(
                settings,
                in_memory,
                engine,
                key=demo_serve.create_demo_key(engine),
                console=console,
                log_file=settings.stack.state_dir / "demo" / "dashboard.log",
            )

    try:
        asyncio.run(run())
    finally:
        engine.dispose()


def print_verdicts(
    console: Console,
    engine: Engine,
    settings: Settings,
    model_version: str,
    post_ids: list[str],
    elapsed: float,
) -> None:
    """The verdict table: one row per post, its most authoritative verdict and its status."""
    table = Table(
        title=f"verdicts of model {model_version} · policy {settings.models.policy_version}"
    )
    for column in ("post", "stage", "decision", "category", "confidence", "status", "why"):
        table.add_column(column, overflow="fold")
    counts: dict[str, int] = {}
    with Session(engine) as session:
        for post_id in post_ids:
            trail = crud.get_post_trail(session, post_id=post_id)
            if trail.post is None or not trail.verdicts:
                table.add_row(post_id, "", "[red]missing[/red]", "", "", "", "")
                continue
            # The most authoritative verdict: the agent's when it gave one.
            verdict = max(trail.verdicts, key=lambda v: v.stage == "agent")
            counts[verdict.decision] = counts.get(verdict.decision, 0) + 1
            style = DECISION_STYLE.get(verdict.decision, "white")
            text = trail.post.text if len(trail.post.text) <= 70 else trail.post.text[:67] + "…"
            table.add_row(
                text,
                verdict.stage,
                f"[{style}]{verdict.decision}[/{style}]",
                verdict.primary_category,
                f"{verdict.confidence:.2f}",
                trail.post.status,
                verdict.rationale or "",
            )
    console.print(table)
    summary = ", ".join(f"{count} {decision}" for decision, count in sorted(counts.items()))
    console.print(
        f"{len(post_ids)} posts through the worker and recorder handlers in {elapsed:.2f}s: "
        f"{summary}. Read model: {settings.db.url}"
    )
