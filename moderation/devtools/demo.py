"""Embedded mode (`make demo`): the pipeline in one process, no external service.

The same FastStream handlers as the services (the classifier worker and the recorder) are mounted
on one in-memory broker; the read model is SQLite. The fast model is trained on first use (with a
progress bar) and cached in the artifact store.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import unicodedata
import uuid
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


async def push_samples(
    worker: Worker, engine: Engine, samples: list[dict[str, Any]], *, use_agent: bool = False
) -> list[str]:
    """Publish the samples to `posts.submitted` on an in-memory broker carrying both services.

    With `use_agent`, the uncertain posts go to the classifier agent on the configured endpoint.
    """
    close_agent = None
    if use_agent:
        worker.state.agent, close_agent = create_agent_stage(worker.settings)
    try:
        return await _publish_samples(worker, engine, samples)
    finally:
        if close_agent is not None:
            worker.state.agent = None
            await close_agent()


def review_tasks_router(settings: Settings, engine: Engine) -> KafkaRouter:
    """The review workflow's first step, without Dapr: the same activity creates each task."""
    activities = ReviewActivities(engine, CollectingSink(), settings)
    router = KafkaRouter()

    @router.subscriber(settings.kafka.topics.review_requested, group_id="demo-review-service")
    async def create_review_task(request: ReviewRequested) -> None:
        await asyncio.to_thread(activities.create_task, request)

    return router


async def _publish_samples(
    worker: Worker, engine: Engine, samples: list[dict[str, Any]]
) -> list[str]:
    settings = worker.settings
    broker = KafkaBroker()
    broker.include_router(worker.router)
    broker.include_router(Recorder(settings, state=RecorderState(engine=engine)).router)
    broker.include_router(review_tasks_router(settings, engine))
    post_ids = []
    async with TestKafkaBroker(broker) as in_memory:
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


def run_demo(settings: Settings, *, samples: Path, console: Console) -> None:
    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.classifier.injection.model import load_detector

    settings = demo_settings(settings)
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
    started = time.perf_counter()
    waiting = f"classifying {len(posts)} posts" + (
        " (the agent takes seconds a post on a CPU)" if use_agent else ""
    )
    with console.status(waiting):
        post_ids = asyncio.run(push_samples(worker, engine, posts, use_agent=use_agent))
    elapsed = time.perf_counter() - started

    table = Table(
        title=f"verdicts of model {model.version} · policy {settings.models.policy_version}"
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
    engine.dispose()
    console.print(table)
    summary = ", ".join(f"{count} {decision}" for decision, count in sorted(counts.items()))
    console.print(
        f"{len(post_ids)} posts through the worker and recorder handlers in {elapsed:.2f}s: "
        f"{summary}. Read model: {settings.db.url}"
    )
    console.print(
        "[dim]`review` posts wait for a moderator, each with its review task and SLA (the same "
        "activity the Dapr workflow runs). Run the real stack with `make stack-up`, the services "
        "with `moderation api`, `moderation worker`, `moderation recorder`, `moderation "
        "review-service` (next to its daprd), and decide in `moderation dashboard`.[/dim]"
    )
