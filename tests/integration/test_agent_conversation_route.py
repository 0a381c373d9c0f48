"""The agent service with its model calls through daprd's Conversation API
(`MODERATION_AGENT_SERVICE__LLM_ROUTE=dapr-conversation`), end to end on the real stack: Kafka,
PostgreSQL, the worker, the recorder, the agent service and its daprd, whose `agent-llm`
component (`components/conversation-llm.yaml`) points at the scripted chat server.

Every post is uncertain here (stage 1 decides nothing), so every post goes to the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import PostSubmitted
from moderation.settings import Settings
from moderation.taxonomy import Stage
from tests import crud_helpers
from tests.integration.scripted_llm_server import ScriptedChatServer
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration

CONVERSE = "/dapr.proto.runtime.v1.Dapr/ConverseAlpha2"


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    server = ScriptedChatServer(delay=0.1)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def route_settings(
    settings: Settings, kafka: KafkaBroker, chat: ScriptedChatServer
) -> Iterator[Settings]:
    with topics_of_their_own(settings, "convroute") as isolated:
        # daprd reads the component's endpoint from the settings it is started with.
        llm = isolated.llm.model_copy(update={"base_url": chat.base_url})
        yield isolated.model_copy(update={"llm": llm})


@pytest.fixture(scope="module")
def services(
    route_settings: Settings, postgres: PostgresCluster, dapr: DaprRuntime, read_model: Engine
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        route_settings,
        extra_env={
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_AGENT_SERVICE__LLM_ROUTE": "dapr-conversation",
            "MODERATION_AGENT__BACKOFF_INITIAL_SECONDS": "0.2",
        },
    )
    # The agent's daprd gets the scripted server as its conversation component's endpoint.
    sidecars = DaprRuntime(route_settings)
    with running_services(running, "recorder", "worker", "agent", dapr=sidecars):
        yield running
    dapr.start_sidecar()


def conversation_calls(settings: Settings) -> float:
    """Conversation API calls the agent service's daprd completed (its own metrics)."""
    port = settings.agent_service.dapr_metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dapr_grpc_io_server_completed_rpcs_total"
        and sample.labels.get("grpc_server_method") == CONVERSE
    )


@pytest.mark.timeout(300)
async def test_each_post_gets_one_agent_verdict_through_the_conversation_api(
    services: PipelineServices,
    route_settings: Settings,
    chat: ScriptedChatServer,
    read_model: Engine,
    unique: str,
) -> None:
    before = conversation_calls(route_settings)
    batch = [
        PostSubmitted(post_id=f"conv-{unique}-{i}", text=f"Selling my bike, offer {i}",
                      author_id="a1")
        for i in range(4)
    ]  # fmt: skip
    ids = [post.post_id for post in batch]
    await produce(route_settings, batch)

    def agent_verdicts() -> dict[str, int]:
        with Session(read_model) as session:
            rows = crud_helpers.list_verdicts(session, post_ids=ids, stage=Stage.AGENT)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.post_id] = counts.get(row.post_id, 0) + 1
        return counts

    await asyncio.to_thread(
        wait_for, lambda: set(agent_verdicts()) == set(ids), 180, "an agent verdict per post"
    )
    assert agent_verdicts() == dict.fromkeys(ids, 1)
    # Each post: the tool turn and the answer turn, both made by daprd for the agent.
    calls = [call for call in chat.snapshot() if call.post_id in ids]
    assert sorted((call.post_id, call.turn) for call in calls) == sorted(
        (post_id, turn) for post_id in ids for turn in (1, 2)
    )
    assert conversation_calls(route_settings) - before >= len(calls)
