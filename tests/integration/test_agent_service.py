"""The agent service on the real stack: Kafka, PostgreSQL, daprd (placement, scheduler), the
worker, the recorder and the agent service as processes, and a scripted OpenAI-compatible
server that counts the calls (`scripted_llm_server.py`: a post's first turn asks for a tool, its
second answers; each takes `delay` seconds).

Every post is uncertain here (stage 1 decides nothing), so every post goes to the agent service.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from moderation.classifier.agent import AGENT_NAME
from moderation.cli import app
from moderation.db import crud
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import AgentRequested, ModerationVerdict, PostSubmitted, ReviewPriority
from moderation.services.agent.app import MCP_SERVER_NAME
from moderation.settings import Settings
from moderation.taxonomy import Stage
from tests import crud_helpers
from tests.integration.scripted_llm_server import Call, ScriptedChatServer
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    consume_dead_letters,
    kafka_admin_auth,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "agentsvc") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    server = ScriptedChatServer(delay=1.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def services(
    agent_settings: Settings,
    chat: ScriptedChatServer,
    postgres: PostgresCluster,
    dapr: DaprRuntime,
    read_model: Engine,
) -> Iterator[PipelineServices]:
    # The agent's lookups go through the MCP server, with a key of its own.
    with Session(read_model) as session:
        agent_key, _ = crud.create_api_key(session, name="agent-service", scopes=["moderate"])
    running = PipelineServices(
        agent_settings,
        extra_env={
            "MODERATION_LLM__BASE_URL": chat.base_url,
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_AGENT__CONCURRENCY": "6",
            "MODERATION_AGENT__BACKOFF_INITIAL_SECONDS": "0.2",
            "MODERATION_AGENT__MCP_URL": f"http://127.0.0.1:{agent_settings.mcp.port}/mcp",
            "MODERATION_AGENT__MCP_API_KEY": agent_key,
        },
    )
    with running_services(running, "recorder", "worker", "mcp", "agent", dapr=dapr):
        yield running


def mcp_calls(settings: Settings, tool: str) -> float:
    """The MCP server's count of successful calls of `tool`."""
    text = httpx.get(f"http://127.0.0.1:{settings.mcp.port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "moderation_mcp_tool_calls_total"
        and sample.labels == {"tool": tool, "outcome": "called"}
    )


def posts(prefix: str, count: int) -> list[PostSubmitted]:
    return [
        PostSubmitted(
            post_id=f"{prefix}-{i}", text=f"Selling my old bike, offer {i}", author_id="a1"
        )
        for i in range(count)
    ]


def agent_verdict_counts(engine: Engine, post_ids: list[str]) -> dict[str, int]:
    with Session(engine) as session:
        rows = crud_helpers.list_verdicts(session, post_ids=post_ids, stage=Stage.AGENT)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.post_id] = counts.get(row.post_id, 0) + 1
    return counts


def stage1_verdicts(engine: Engine, post_ids: list[str]) -> set[str]:
    with Session(engine) as session:
        rows = crud_helpers.list_verdicts(session, post_ids=post_ids, stage=Stage.MODEL)
    return {row.post_id for row in rows}


def completed(chat: ScriptedChatServer, since: int) -> int:
    """Model calls answered since the `since`-th call."""
    return sum(call.finished is not None for call in chat.snapshot()[since:])


# A result is recorded a moment after the model answers (the activity completes, daprd saves
# it); after a restart, work dispatched before the crash may still run for some seconds.
RECORDED_SECONDS = 2.0
SETTLED_SECONDS = 10.0


def stable_periods(crashes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The periods between crashes (`(kill, back)` pairs) when nothing was being recovered."""
    periods, since = [], 0.0
    for killed, back in crashes:
        periods.append((since, killed - RECORDED_SECONDS))
        since = back + SETTLED_SECONDS
    return [*periods, (since, float("inf"))]


def repeated_recorded_calls(calls: list[Call], crashes: list[tuple[float, float]]) -> list[Call]:
    """Calls made again although an earlier call for the same post and turn had completed in a
    stable period: its result was recorded, so no crash may make it again. (A call in flight at
    a crash, or whose result a crash cut off before it was recorded, is made again: Dapr runs
    activities at least once.)"""
    periods = stable_periods(crashes)
    recorded = [
        c
        for c in calls
        if c.finished is not None and any(start <= c.finished <= end for start, end in periods)
    ]
    return [
        call
        for call in calls
        if any(
            (r.post_id, r.turn) == (call.post_id, call.turn) and r.finished < call.started  # type: ignore[operator]
            for r in recorded
        )
    ]


@pytest.mark.timeout(600)
async def test_crashes_of_the_agent_service_and_its_daprd_repeat_no_recorded_call(
    services: PipelineServices,
    agent_settings: Settings,
    chat: ScriptedChatServer,
    dapr: DaprRuntime,
    read_model: Engine,
    unique: str,
) -> None:
    batch = posts(f"crash-{unique}", 24)
    post_ids = [p.post_id for p in batch]
    first_call = len(chat.snapshot())
    lookups_before = mcp_calls(agent_settings, "author_recent_verdicts")
    await produce(agent_settings, batch)
    crashes: list[tuple[float, float]] = []

    # SIGKILL the agent service with runs in flight (some calls done, some under way).
    await asyncio.to_thread(
        wait_for, lambda: completed(chat, first_call) >= 16, 120, "16 completed model calls"
    )
    killed = time.monotonic()
    services.kill("agent")
    await asyncio.to_thread(services.start, "agent")
    crashes.append((killed, time.monotonic()))

    # Then SIGKILL its daprd mid-run, and bring it back.
    done_before = completed(chat, first_call)
    await asyncio.to_thread(
        wait_for, lambda: completed(chat, first_call) >= done_before + 6, 120,
        "six more completed model calls",
    )  # fmt: skip
    killed = time.monotonic()
    dapr.stop_sidecar(crash=True, app="agent")
    await asyncio.to_thread(
        dapr.start_sidecar, app_port=agent_settings.agent_service.service_port, app="agent",
        llm_base_url=chat.base_url,
    )  # fmt: skip
    crashes.append((killed, time.monotonic()))

    counts = await asyncio.to_thread(
        wait_for,
        lambda: (found := agent_verdict_counts(read_model, post_ids)).keys() == set(post_ids)
        and found,
        300, "an agent verdict for every post",
    )  # fmt: skip
    calls = [c for c in chat.snapshot()[first_call:] if c.post_id in set(post_ids)]

    assert set(counts.values()) == {1}, "exactly one agent verdict per post"
    repeated = repeated_recorded_calls(calls, crashes)
    keys = {(c.post_id, c.turn) for c in repeated}
    detail = [
        (c.post_id, c.turn, round(c.started, 2), c.finished and round(c.finished, 2))
        for c in calls
        if (c.post_id, c.turn) in keys
    ]
    assert repeated == [], f"crashes {crashes}; calls of the repeated keys {detail}"
    # Not vacuous: results were recorded before the first crash, and a call is made again at
    # most once per crash.
    first_kill = crashes[0][0]
    assert sum(1 for c in calls if c.finished and c.finished < first_kill - RECORDED_SECONDS) >= 4
    per_turn: dict[tuple[str, int], int] = {}
    for call in calls:
        per_turn[call.post_id, call.turn] = per_turn.get((call.post_id, call.turn), 0) + 1
    assert max(per_turn.values()) <= 1 + len(crashes), per_turn
    # Each post's tool call went through the MCP server (again when a crash repeated it).
    assert mcp_calls(agent_settings, "author_recent_verdicts") - lookups_before >= len(batch)
    # Two turns per post, plus at most the calls cut short or unrecorded by the two crashes.
    assert len(calls) >= 2 * len(batch)
    print(f"\n{len(calls)} model calls for {len(batch)} posts (2 each) across two crashes")  # noqa: T201


@pytest.mark.timeout(300)
async def test_the_partition_keeps_moving_while_the_model_is_slow(
    services: PipelineServices,
    agent_settings: Settings,
    chat: ScriptedChatServer,
    read_model: Engine,
    unique: str,
) -> None:
    chat.delay = 30.0
    try:
        early, later = posts(f"slow-a-{unique}", 3), posts(f"slow-b-{unique}", 3)
        await produce(agent_settings, early)
        early_ids = {p.post_id for p in early}
        await asyncio.to_thread(
            wait_for, lambda: any(c.post_id in early_ids for c in chat.snapshot()), 60,
            "the agent's first call for the early posts",
        )  # fmt: skip
        started = time.monotonic()
        await produce(agent_settings, later)
        ids = [p.post_id for p in later]
        await asyncio.to_thread(
            wait_for, lambda: stage1_verdicts(read_model, ids) == set(ids), 25,
            "stage 1's verdicts of the later posts",
        )  # fmt: skip
        waited = time.monotonic() - started
        early_calls = [c for c in chat.snapshot() if c.post_id in early_ids]
    finally:
        chat.delay = 1.0
    # The later posts were decided by stage 1 while the early posts' model calls were pending.
    assert waited < 25
    assert early_calls and all(c.finished is None for c in early_calls)


@pytest.mark.timeout(300)
async def test_a_malformed_handoff_goes_to_the_dead_letter_topic_and_a_repeat_starts_nothing(
    services: PipelineServices,
    agent_settings: Settings,
    chat: ScriptedChatServer,
    read_model: Engine,
    unique: str,
) -> None:
    topics = agent_settings.kafka.topics
    [post] = posts(f"dup-{unique}", 1)
    await produce(agent_settings, [post])
    await asyncio.to_thread(
        wait_for, lambda: agent_verdict_counts(read_model, [post.post_id]), 120, "its verdict"
    )
    calls_before = [c for c in chat.snapshot() if c.post_id == post.post_id]
    # The same hand-off again (a redelivery), and a payload that is no AgentRequested.
    stage1 = stage1_verdict(read_model, post.post_id)
    repeat = AgentRequested(
        post_id=post.post_id,
        post=post,
        verdict=stage1,
        reason="uncertain",
        priority=ReviewPriority.NORMAL,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=agent_settings.kafka.bootstrap_servers, **kafka_admin_auth()
    )
    await producer.start()
    try:
        await producer.send_and_wait(topics.agent_requested, repeat.model_dump_json().encode(),
                                     key=post.key())  # fmt: skip
        await producer.send_and_wait(topics.agent_requested, b'{"post_id": "x", "oops": 1}')
    finally:
        await producer.stop()

    [letter] = await consume_dead_letters(
        agent_settings, topics.agent_requested + topics.dlq_suffix, 1
    )
    assert letter.error_type == "ValidationError" and '"oops"' in letter.payload
    await asyncio.sleep(3)  # time for a (wrong) second run to call the model
    calls_after = [c for c in chat.snapshot() if c.post_id == post.post_id]
    assert len(calls_after) == len(calls_before) == 2
    assert agent_verdict_counts(read_model, [post.post_id]) == {post.post_id: 1}


def stage1_verdict(engine: Engine, post_id: str) -> ModerationVerdict:
    """The post's stage-1 verdict, read back from its row."""
    with Session(engine) as session:
        [row] = crud_helpers.list_verdicts(session, post_ids=[post_id], stage=Stage.MODEL)
    return ModerationVerdict.model_validate(
        row.model_dump(include={"post_id", "decision", "scores", "primary_category",
                                "confidence", "stage", "model_version", "policy_version",
                                "latency_ms"})
    )  # fmt: skip


async def test_the_agent_and_its_mcp_server_are_in_the_agent_registry(
    services: PipelineServices, agent_settings: Settings
) -> None:
    def listed() -> list[dict[str, Any]]:
        result = CliRunner().invoke(app, ["agents", "--json"])
        assert result.exit_code == 0, result.output
        rows: list[dict[str, Any]] = json.loads(result.output)
        return rows if {row["name"] for row in rows} >= {AGENT_NAME, MCP_SERVER_NAME} else []

    rows = {row["name"]: row for row in await asyncio.to_thread(wait_for, listed, 60, "entries")}
    agent, mcp = rows[AGENT_NAME], rows[MCP_SERVER_NAME]
    assert agent["kind"] == "agent" and agent["model"] == agent_settings.llm.model
    assert agent["policy_version"] == agent_settings.models.policy_version
    assert agent["endpoints"]["handoffs"] == f"kafka:{agent_settings.kafka.topics.agent_requested}"
    assert agent["tools"] == ["author_recent_verdicts", "similar_precedents"]
    assert mcp["kind"] == "mcp-server"
    assert mcp["endpoints"]["mcp"] == f"http://127.0.0.1:{agent_settings.mcp.port}/mcp"
    assert {"moderate_text", "get_post_trail", "find_precedents", "get_policy_section"} <= set(
        mcp["tools"]
    )
