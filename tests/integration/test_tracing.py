"""One OpenTelemetry trace follows a post: API → Kafka headers → worker → agent → review workflow.

The services write their spans as JSON lines (`MODERATION_TRACING__FILE`); in production the
same spans go over OTLP to the collector daprd's Configuration exports to.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.llm import LLMServer
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.settings import Settings
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def traced_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "trace") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def spans_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans")


@pytest.fixture(scope="module")
def services(
    traced_settings: Settings,
    spans_dir: Path,
    dapr: DaprRuntime,
    postgres: PostgresCluster,
    llm: LLMServer,
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        traced_settings,
        extra_env={
            # Stage 1 decides nothing: the post goes to the agent, then (SmolLM2 is no judge)
            # to a human, so it crosses every service.
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_AGENT__ENABLED": "true",
            "MODERATION_AGENT__RUNS_IN": "worker",
            "MODERATION_AGENT__TOOL_CHOICE": "required",
            "MODERATION_AGENT__CONCURRENCY": "1",
            "MODERATION_TRACING__FILE": str(spans_dir / "{service}.jsonl"),
            "MODERATION_TRACING__SAMPLE_RATIO": "1",
        },
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


def read_spans(directory: Path) -> list[dict[str, Any]]:
    spans = []
    for path in directory.glob("*.jsonl"):
        spans += [json.loads(line) for line in path.read_text().splitlines() if line]
    return spans


@pytest.mark.timeout(600)
async def test_one_trace_follows_a_post_through_every_service(
    services: PipelineServices, traced_settings: Settings, spans_dir: Path, read_model: Engine
) -> None:
    with Session(read_model) as session:
        key, _ = crud.create_api_key(
            session, name=f"trace-{uuid.uuid4().hex[:6]}", scopes=["submit"]
        )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{traced_settings.api.port}") as api:
        response = await api.post(
            "/v1/posts",
            json={"text": "Is this a scam? Message me for the link", "author_id": "tracer"},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 202, response.text
    post_id = response.json()["post_id"]

    def trace_of_post() -> str | None:
        for span in read_spans(spans_dir):
            if span["attributes"].get("moderation.post_id") == post_id and span["service"] == "api":
                return str(span["trace_id"])
        return None

    trace_id = await asyncio.to_thread(wait_for, trace_of_post, 30, "the API's span")

    def services_in_trace() -> set[str] | None:
        spans = [s for s in read_spans(spans_dir) if s["trace_id"] == trace_id]
        names = {s["name"] for s in spans}
        wanted = {"submit post", "moderate post", "review: create task"}
        agent_spans = [
            s for s in spans if s["service"] == "worker" and s["name"] != "moderate post"
        ]
        if wanted <= names and agent_spans:
            return {s["service"] for s in spans}
        return None

    seen = await asyncio.to_thread(wait_for, services_in_trace, 300, "the whole trace")
    assert seen >= {"api", "worker", "review-service"}
    spans = {s["span_id"]: s for s in read_spans(spans_dir) if s["trace_id"] == trace_id}
    by_name = {s["name"]: s for s in spans.values()}
    # The worker's span is the API span's child, through the Kafka record's headers.
    assert by_name["moderate post"]["parent_id"] == by_name["submit post"]["span_id"]
    # The agent's run is a child of the worker's span for the post.
    agent_roots = [
        s for s in spans.values() if s["parent_id"] == by_name["moderate post"]["span_id"]
    ]
    assert agent_roots, "no agent span under the worker's span"
    # No post text in any span.
    assert all("scam" not in json.dumps(s["attributes"]) for s in spans.values())
