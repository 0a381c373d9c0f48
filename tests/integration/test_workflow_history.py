"""`/v1/workflows` on the real stack: the agent and review workflows of one post, read back.

Kafka, PostgreSQL, daprd + placement + scheduler, and the worker, recorder, MCP server, agent
service, review service and API as processes; a scripted OpenAI-compatible server answers the
agent (`scripted_llm_server.py`: a tool call, then a verdict that allows). Stage 1 decides
nothing, so the post runs the agent's workflow (`agent-<post_id>-<policy>`); the scripted agent
allows it, so its review is then requested directly on `review.requested` (as stage 1 or the
agent would) and runs the review's workflow (`review-<post_id>`), which a moderator decides.
The API lists both, with their status, and serves their steps in order, read from each
service's own daprd.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import WorkflowApp
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewRequested,
    review_id_for,
)
from moderation.services.sidecar.history import SidecarWorkflowReader
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.integration.scripted_llm_server import ScriptedChatServer
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    kafka_admin_auth,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)
from tests.integration.test_review_flow import api, decide, review_task_created

pytestmark = pytest.mark.integration

REVIEW_ACTIVITIES = ["create_review_task", "persist_decision"]
AGENT_ACTIVITIES = [
    "agent_model_call",  # asks for the author tool
    "agent_tool_call",
    "agent_model_call",  # answers
    "agent_publish_outcome",
]


@pytest.fixture(scope="module")
def flow_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "wfhist") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    server = ScriptedChatServer(delay=0.1)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(read_model: Engine) -> dict[str, str]:
    """The agent's key for the MCP server, and a moderator's."""
    suffix = uuid.uuid4().hex[:6]
    with Session(read_model) as session:
        agent, _ = crud.create_api_key(session, name=f"agent-{suffix}", scopes=["moderate"])
        moderator, _ = crud.create_api_key(session, name=f"mod-{suffix}", scopes=["moderate"])
    return {"agent": agent, "moderator": moderator}


@pytest.fixture(scope="module")
def services(
    flow_settings: Settings,
    chat: ScriptedChatServer,
    keys: dict[str, str],
    postgres: PostgresCluster,
    dapr: DaprRuntime,
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        flow_settings,
        extra_env={
            "MODERATION_LLM__BASE_URL": chat.base_url,
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_AGENT__MCP_URL": f"http://127.0.0.1:{flow_settings.mcp.port}/mcp",
            "MODERATION_AGENT__MCP_API_KEY": keys["agent"],
        },
    )
    names = ("recorder", "worker", "mcp", "agent", "review", "api")
    with running_services(running, *names, dapr=dapr):
        yield running


async def request_review(settings: Settings, post_id: str) -> None:
    """Publish a `ReviewRequested` for the post, as stage 1 does for a post it cannot decide."""
    verdict = ModerationVerdict(
        post_id=post_id,
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.02), Category.SPAM: 0.55},
        primary_category=Category.SPAM,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="wfhist-test",
        policy_version="v1",
        latency_ms=3.0,
    )
    request = ReviewRequested(post_id=post_id, reason="wfhist: a second look", verdict=verdict)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.kafka.topics.review_requested,
            request.model_dump_json().encode(),
            key=request.key(),
        )
    finally:
        await producer.stop()


def listed(settings: Settings, key: str, app: str, match: Any) -> dict[str, Any] | None:
    """The instance `GET /v1/workflows?app=` lists that `match` accepts, if any."""
    with api(settings, key) as client:
        response = client.get("/v1/workflows", params={"app": app, "limit": 200})
    assert response.status_code == 200, response.text
    found: dict[str, Any] | None = next(
        (item for item in response.json()["items"] if match(item)), None
    )
    return found


def completed_instance(settings: Settings, key: str, app: str, match: Any) -> dict[str, Any] | None:
    item = listed(settings, key, app, match)
    return item if item is not None and item["status"] == "completed" else None


def steps_of(settings: Settings, key: str, app: str, instance_id: str) -> httpx.Response:
    with api(settings, key) as client:
        return client.get(f"/v1/workflows/{app}/{instance_id}")


def finished_activities(body: dict[str, Any]) -> list[str]:
    return [s["name"] for s in body["steps"] if s["kind"] == "activity_completed"]


@pytest.mark.timeout(420)
async def test_the_agent_and_review_workflows_of_a_post_are_listed_with_their_steps(
    services: PipelineServices,
    flow_settings: Settings,
    read_model: Engine,
    keys: dict[str, str],
    dapr: DaprRuntime,
) -> None:
    post = PostSubmitted(
        post_id=f"wfhist-{uuid.uuid4().hex[:10]}",
        text="Selling my old bike, message me for the price",
        author_id="wfhist-author",
    )
    moderator = keys["moderator"]
    await produce(flow_settings, [post])
    agent = await asyncio.to_thread(
        wait_for,
        lambda: completed_instance(
            flow_settings,
            moderator,
            "agent",
            lambda i: i["instance_id"].startswith(f"agent-{post.post_id}-"),
        ),
        240,
        "the agent workflow listed as completed",
    )
    await request_review(flow_settings, post.post_id)
    review_id = review_id_for(post.post_id)
    await asyncio.to_thread(
        wait_for, partial(review_task_created, read_model, review_id), 120, "review task"
    )
    decided = await asyncio.to_thread(decide, flow_settings, moderator, review_id)
    assert decided.status_code == 202, decided.text

    review = await asyncio.to_thread(
        wait_for,
        lambda: completed_instance(
            flow_settings, moderator, "review", lambda i: i["instance_id"] == review_id
        ),
        90,
        "the review workflow listed as completed",
    )
    assert (review["workflow"], agent["workflow"]) == ("review", "classifier_agent")
    assert agent["created_at"] < review["created_at"]

    review_steps = await asyncio.to_thread(steps_of, flow_settings, moderator, "review", review_id)
    agent_steps = await asyncio.to_thread(
        steps_of, flow_settings, moderator, "agent", agent["instance_id"]
    )
    for response in (review_steps, agent_steps):
        assert response.status_code == 200, response.text
        assert post.text not in response.text  # no payload: names, statuses, times only
    review_body, agent_body = review_steps.json(), agent_steps.json()
    print(f"\nreview {review_id}: {review_body['steps']}\nagent: {agent_body['steps']}")  # noqa: T201

    assert finished_activities(review_body) == REVIEW_ACTIVITIES
    kinds = [(s["kind"], s["name"]) for s in review_body["steps"]]
    assert kinds[0] == ("started", "review")
    assert kinds.index(("event_raised", "decision")) < kinds.index(
        ("activity_scheduled", "persist_decision")
    )
    assert review_body["steps"][-1]["kind"] == "completed"
    assert review_body["steps"][-1]["outcome"] == "completed"
    assert finished_activities(agent_body) == AGENT_ACTIVITIES
    assert agent_body["steps"][0]["name"] == "classifier_agent"
    assert agent_body["steps"][-1]["outcome"] == "completed"
    times = [s["at"] for s in (*review_body["steps"], *agent_body["steps"])]
    assert all(t is not None for t in times)

    # The sidecar module on its own reads the same thing from the review service's daprd.
    reader = SidecarWorkflowReader(
        app=WorkflowApp.REVIEW,
        address=flow_settings.dapr.grpc_endpoint,
        api_token=flow_settings.dapr.api_token,
    )
    try:
        direct = await asyncio.to_thread(reader.history, review_id)
    finally:
        reader.close()
    assert [s.name for s in direct.steps if s.kind == "activity_completed"] == REVIEW_ACTIVITIES

    unknown = await asyncio.to_thread(steps_of, flow_settings, moderator, "review", "review-nope")
    assert unknown.status_code == 404, unknown.text


@pytest.mark.timeout(180)
def test_a_stopped_agent_daprd_is_a_503_with_the_reason(
    services: PipelineServices, flow_settings: Settings, keys: dict[str, str], dapr: DaprRuntime
) -> None:
    dapr.stop_sidecar(app="agent")
    try:
        with api(flow_settings, keys["moderator"]) as client:
            response = client.get("/v1/workflows", params={"app": "agent"})
            review = client.get("/v1/workflows", params={"app": "review"})
    finally:
        dapr.start_sidecar(
            app_port=flow_settings.agent_service.service_port,
            app="agent",
            llm_base_url=services.extra_env.get("MODERATION_LLM__BASE_URL"),
        )

    assert response.status_code == 503, response.text
    assert "the agent service's workflow engine is unreachable" in response.json()["detail"]
    assert response.headers["Retry-After"] == "5"
    assert review.status_code == 200  # the other service's daprd still answers
