"""The agent stage's orchestration capacity (`moderation bench --orchestration`).

What the durable agent stage costs by itself: an OpenAI-compatible server that answers at once
with a valid verdict (`InstantChatServer`) stands in for the LLM, so what is measured is the
hand-off, Dapr's workflow (scheduling, each activity's round trip, the recorded state) and the
publication, not a model. The same posts go through:

1. the agent service (its daprd, one workflow per post): hand-offs published to
   `agent.requested` at once (saturation: posts/s until the last agent verdict is on Kafka), then
   at a fixed offered rate (added latency: from the hand-off to the agent verdict on Kafka);
2. the in-process agent stage of the worker (`second_stage`, the same server and concurrency),
   the design this replaces, for comparison in the same run.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI, Request
from rich.console import Console
from rich.table import Table

from moderation.classifier.agent import AgentVerdict, CategoryScores
from moderation.classifier.agent_steps import handoff
from moderation.classifier.cascade import AgentStage, FirstStage, first_stage, second_stage
from moderation.devtools import stack
from moderation.devtools.bench.report import latency_percentiles, machine_info, write_result
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import delete_topics, ensure_topics
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.events import ModerationVerdict, PostSubmitted
from moderation.kafka_auth import ADMIN, aiokafka_auth
from moderation.llm.provider import ChatCompletionsProvider, create_client
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

ANSWER = AgentVerdict(
    decision=Decision.ALLOW,
    primary_category=Category.SAFE,
    scores=CategoryScores(**{c.value: 99 if c is Category.SAFE else 1 for c in CATEGORIES}),
    policy_sections=[],
    rationale="instant scripted answer (orchestration benchmark)",
).model_dump_json()


class UncertainScorer:
    """Stage 1 that decides nothing: every post goes to the agent."""

    version = "bench-uncertain"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        scores = np.full((len(texts), len(CATEGORIES)), 0.05)
        scores[:, CATEGORIES.index(Category.SAFE)] = 0.5
        return scores


class InstantChatServer:
    """Chat Completions that answer at once with a valid verdict (no tool calls)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.requests = 0
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.requests += 1
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "instant"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": ANSWER}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }  # fmt: skip

        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", loop="asyncio"
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="instant-chat", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> InstantChatServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the instant chat server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def uncertain_items(settings: Settings, count: int, run: str) -> list[FirstStage]:
    posts = [
        PostSubmitted(post_id=f"{run}-{i}", text=f"an ordinary post, number {i}", author_id="b")
        for i in range(count)
    ]
    return first_stage(posts, UncertainScorer(), settings, agent_enabled=True)


async def _through_service(
    settings: Settings, items: Sequence[FirstStage], *, rate: float | None, wait_seconds: float
) -> dict[str, Any]:
    """Hand `items` to the agent service (at `rate` per second, or all at once) and wait for
    their agent verdicts on Kafka."""
    topics = settings.kafka.topics
    auth = aiokafka_auth(settings, ADMIN)
    consumer = AIOKafkaConsumer(
        topics.verdicts, bootstrap_servers=settings.kafka.bootstrap_servers, **auth,
        group_id=None, auto_offset_reset="latest",
    )  # fmt: skip
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers, **auth, enable_idempotence=True,
        linger_ms=5,
    )  # fmt: skip
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}

    async def collect() -> None:
        while len(arrived) < len(items):
            batch = await consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    verdict = ModerationVerdict.model_validate_json(record.value or b"")
                    if verdict.stage is Stage.AGENT and verdict.post_id in sent:
                        arrived.setdefault(verdict.post_id, now)

    try:
        await asyncio.sleep(1.0)  # the consumer's assignment before anything is sent
        collector = asyncio.create_task(collect())
        started = time.perf_counter()
        pending = []
        for index, item in enumerate(items):
            if rate is not None:
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            request = handoff(item)
            sent[request.post_id] = time.perf_counter()
            pending.append(
                await producer.send(
                    topics.agent_requested, request.model_dump_json().encode(), key=request.key()
                )
            )
        await asyncio.gather(*pending)
        # Missing verdicts are reported (`missing`), not raised: the figures say what arrived.
        done, _ = await asyncio.wait([collector], timeout=wait_seconds)
        if not done:
            collector.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
    latencies = [1000 * (arrived[p] - sent[p]) for p in arrived]
    last = max(arrived.values(), default=started)
    return {
        "posts": len(items),
        "agent_verdicts": len(arrived),
        "missing": len(items) - len(arrived),
        "posts_per_second": round(len(arrived) / max(last - started, 1e-9), 1),
        "offered_posts_per_second": rate,
        "latency_ms": {k: round(v, 1) for k, v in latency_percentiles(latencies).items()},
    }


async def _in_process(
    settings: Settings, items: Sequence[FirstStage], base_url: str
) -> dict[str, Any]:
    """The worker's in-process agent stage on the same posts and server."""
    llm = settings.llm.model_copy(update={"base_url": base_url})
    client = create_client(llm)
    stage = AgentStage(settings, ChatCompletionsProvider(client, llm.model), None)
    started = time.perf_counter()
    try:
        results = await second_stage(items, stage, settings)
    finally:
        await client.close()
    elapsed = time.perf_counter() - started
    return {
        "posts": len(items),
        "agent_verdicts": sum(verdict is not None for verdict, _ in results),
        "posts_per_second": round(len(items) / elapsed, 1),
    }


def run_orchestration_bench(
    settings: Settings, *, posts: int, rate: float, seconds: float, console: Console
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    run_settings = isolated_settings(settings, f"bench-{run}")
    concurrency = settings.agent.concurrency
    stack.up(settings, ["kafka", "postgres", "dapr"])
    asyncio.run(ensure_topics(run_settings))
    result: dict[str, Any] = {
        "run": run,
        "machine": machine_info(),
        "started_at": datetime.now().astimezone().isoformat(),
        "agent_concurrency": concurrency,
    }
    runtime = DaprRuntime(settings)
    port = run_settings.agent_service.service_port
    with InstantChatServer() as server:
        services = PipelineServices(
            run_settings,
            extra_env={
                "MODERATION_LLM__BASE_URL": server.base_url,
                "MODERATION_AGENT__CONCURRENCY": str(concurrency),
                # Measure the workflows, not the shedding: no post goes to review for room.
                "MODERATION_AGENT_SERVICE__MAX_IN_FLIGHT": str(10 * posts),
            },
        )
        try:
            runtime.stop_sidecar(app="agent")
            runtime.start_sidecar(app_port=port, app="agent", llm_base_url=server.base_url)
            services.start("agent", timeout=300)
            console.print("[bold]1/3 agent service, warm-up[/bold]")
            asyncio.run(_through_service(run_settings, uncertain_items(settings, 50, f"{run}-w"),
                                         rate=None, wait_seconds=120))  # fmt: skip
            console.print(f"[bold]2/3 agent service: {posts} hand-offs at once, then "
                          f"{rate:g}/s for {seconds:g}s[/bold]")  # fmt: skip
            result["service_saturation"] = asyncio.run(
                _through_service(run_settings, uncertain_items(settings, posts, f"{run}-s"),
                                 rate=None, wait_seconds=600)
            )  # fmt: skip
            fixed = uncertain_items(settings, int(rate * seconds), f"{run}-r")
            result["service_fixed_rate"] = asyncio.run(
                _through_service(run_settings, fixed, rate=rate, wait_seconds=120)
            )
        finally:
            services.stop()
            runtime.stop_sidecar(app="agent")
            asyncio.run(delete_topics(run_settings))
        console.print("[bold]3/3 in-process agent stage (the worker's, for comparison)[/bold]")
        result["in_process"] = asyncio.run(
            _in_process(settings, uncertain_items(settings, posts, f"{run}-i"), server.base_url)
        )
    result["results_file"] = str(write_result(result, f"bench-orchestration-{{stamp}}-{run}.json"))
    return result


def render_orchestration(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"agent orchestration {result['run']} ({result['machine']['cpus']} cpus, "
                        f"instant model, concurrency {result['agent_concurrency']})")  # fmt: skip
    for column in ("measure", "posts/s", "p50 ms", "p99 ms", "notes"):
        table.add_column(column)
    for name in ("service_saturation", "service_fixed_rate"):
        phase = result[name]
        latency = phase["latency_ms"]
        note = f"{phase['agent_verdicts']}/{phase['posts']} agent verdicts"
        if phase["offered_posts_per_second"]:
            note += f", offered {phase['offered_posts_per_second']:g}/s"
        table.add_row(f"agent service, {name.split('_', 1)[1].replace('_', ' ')}",
                      f"{phase['posts_per_second']:,.1f}", str(latency["p50"]),
                      str(latency["p99"]), note)  # fmt: skip
    inline = result["in_process"]
    table.add_row("in-process stage (worker)", f"{inline['posts_per_second']:,.1f}", "", "",
                  f"{inline['agent_verdicts']}/{inline['posts']} agent verdicts")  # fmt: skip
    console.print(table)
    console.print(f"results: {result['results_file']}")
