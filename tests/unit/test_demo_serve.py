"""The served embedded demo's parts, in process: the real API on an in-memory broker carrying the
recorder and the review task step, decisions through the review workflow's own activity, and
when the demo serves at all (a terminal, not CI) and which ports it needs free.

The whole demo, with the worker, the dashboard and a real browser:
`tests/integration/test_demo.py`.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from rich.console import Console
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import PostStatus
from moderation.db.schemas import WorkflowApp
from moderation.devtools import demo_serve
from moderation.devtools.demo import review_tasks_router
from moderation.events import ModerationVerdict, ReviewDecided, ReviewRequested, review_id_for
from moderation.services.api import build_app
from moderation.services.recorder.app import Recorder, RecorderState
from moderation.services.review.activities import ReviewActivities
from moderation.services.sidecar.history import SidecarUnavailable
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("env", "stdin_tty", "stdout_tty", "serves"),
    [
        ({}, True, True, True),
        ({"CI": "true"}, True, True, False),
        ({"CI": "1"}, True, True, False),
        ({"CI": "false"}, True, True, True),
        ({"CI": ""}, True, True, True),
        ({}, False, True, False),  # piped input
        ({}, True, False, False),  # output to a file or a pipe
    ],
)
def test_the_demo_serves_only_at_a_terminal_outside_ci(
    env: dict[str, str], stdin_tty: bool, stdout_tty: bool, serves: bool
) -> None:
    assert demo_serve.should_serve(env, Terminal(stdin_tty), Terminal(stdout_tty)) is serves


def test_a_port_in_use_is_named_with_the_way_out() -> None:
    with socket.socket() as taken:
        taken.bind((demo_serve.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as spare:
            spare.bind((demo_serve.HOST, 0))
            free = spare.getsockname()[1]
        assert demo_serve.busy_ports({"API": port, "dashboard": free}) == [f"API port {port}"]
        settings = Settings()
        settings.api.port, settings.dashboard.port = free, port
        with pytest.raises(demo_serve.DemoError) as refused:
            demo_serve.check_ports(settings)
    message = str(refused.value)
    assert f"dashboard port {port}" in message and f"port {free}" not in message
    assert "MODERATION_DASHBOARD__PORT" in message and "--no-serve" in message


def test_the_dashboard_is_pointed_at_the_demos_api() -> None:
    settings = Settings()
    settings.api.port, settings.dashboard.port = 18001, 18002
    env = demo_serve.dashboard_env(settings)
    assert env["MODERATION_DASHBOARD__API_URL"] == "http://127.0.0.1:18001"
    assert env["MODERATION_DASHBOARD__PORT"] == "18002"
    assert demo_serve.dashboard_command()[-1] == "dashboard"


# --- the API on the in-memory broker -----------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'demo.db'}")
    create_tables(engine)
    return engine


def uncertain_verdict(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.05), Category.SPAM: 0.55},
        primary_category=Category.SPAM,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=1.0,
    )


class Demo:
    """The served demo's API (no worker: the test plays stage 1's review request itself)."""

    def __init__(self, broker: KafkaBroker, http: httpx.AsyncClient, key: str) -> None:
        self.broker = broker
        self.http = http
        self.headers = {"Authorization": f"Bearer {key}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, path, headers=self.headers, **kwargs)


@pytest.fixture
async def demo(engine: Engine) -> AsyncIterator[Demo]:
    settings = Settings()
    broker = KafkaBroker()
    broker.include_router(Recorder(settings, state=RecorderState(engine=engine)).router)
    broker.include_router(review_tasks_router(settings, engine))
    async with TestKafkaBroker(broker) as in_memory:
        sink = demo_serve.BrokerSink(in_memory, asyncio.get_running_loop())
        app = build_app(
            settings,
            publisher=demo_serve.BrokerPublisher(in_memory),
            engine=engine,
            workflows=demo_serve.InProcessReviewWorkflows(ReviewActivities(engine, sink, settings)),
            workflow_history=demo_serve.NoWorkflowHistory(),
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
                yield Demo(in_memory, http, demo_serve.create_demo_key(engine))


async def test_a_submitted_post_is_recorded_reviewed_and_decided_in_process(
    demo: Demo, engine: Engine
) -> None:
    accepted = await demo.call("POST", "/v1/posts", json={"text": "cheap pills", "author_id": "u"})
    assert accepted.status_code == 202, accepted.text
    post_id = accepted.json()["post_id"]
    # The publish returned once the recorder had handled the post.
    trail = await demo.call("GET", f"/v1/posts/{post_id}")
    assert trail.json()["status"] == "pending"

    # What stage 1 does with an uncertain post; the review task step creates the task.
    request = ReviewRequested(
        post_id=post_id, reason="uncertain", verdict=uncertain_verdict(post_id)
    )
    await demo.broker.publish(
        request.model_dump_json().encode(), topic="review.requested", key=request.key()
    )
    queue = (await demo.call("GET", "/v1/reviews")).json()
    assert [item["review_id"] for item in queue["items"]] == [review_id_for(post_id)]
    assert queue["items"][0]["sla_due_at"] is not None  # the task step ran

    claimed = await demo.call("POST", "/v1/reviews/claim-next")
    assert claimed.status_code == 200, claimed.text
    decided = await demo.call(
        "POST",
        f"/v1/reviews/{review_id_for(post_id)}/decision",
        json={"label": "spam", "decision": "remove", "note": "pills"},
    )
    assert decided.status_code == 202, decided.text

    trail = (await demo.call("GET", f"/v1/posts/{post_id}")).json()
    assert trail["status"] == "decided"
    assert [(d["label"], d["decision"], d["moderator_display"]) for d in trail["decisions"]] == [
        ("spam", "remove", f"{demo_serve.DEMO_KEY_NAME} (key:1)")
    ]
    with Session(engine) as session:
        assert crud_helpers.post_statuses(session, post_ids=[post_id]) == {
            post_id: PostStatus.DECIDED
        }
        assert crud_helpers.count_decisions(session, post_ids=[post_id]) == 1
    audit = await demo.call("GET", "/v1/audit", params={"entity_id": review_id_for(post_id)})
    assert [item["action"] for item in audit.json()["items"]] == ["review.decide", "review.claim"]


async def test_a_decision_the_workflow_refuses_reopens_the_review(
    demo: Demo, engine: Engine
) -> None:
    post_id = (
        await demo.call("POST", "/v1/posts", json={"text": "hello", "author_id": "u"})
    ).json()["post_id"]
    request = ReviewRequested(
        post_id=post_id, reason="uncertain", verdict=uncertain_verdict(post_id)
    )
    await demo.broker.publish(
        request.model_dump_json().encode(), topic="review.requested", key=request.key()
    )
    await demo.call("POST", f"/v1/reviews/{request.review_id}/claim")
    # The activity checks the review belongs to the post (the API always sends a matching one).
    wrong = ReviewDecided(
        review_id=request.review_id,
        post_id="another-post",
        label=Category.SPAM,
        decision=Decision.REMOVE,
        moderator_id="key:1",
    )
    with Session(engine) as session:
        crud.begin_decision(session, decision=wrong, is_admin=False)
    workflows = demo_serve.InProcessReviewWorkflows(
        ReviewActivities(
            engine, demo_serve.BrokerSink(demo.broker, asyncio.get_running_loop()), Settings()
        )
    )
    await workflows.raise_decision(request.review_id, wrong.model_dump(mode="json"))

    review = (await demo.call("GET", f"/v1/reviews/{request.review_id}")).json()
    assert review["status"] == "claimed"
    assert (await demo.call("GET", f"/v1/posts/{post_id}")).json()["decisions"] == []


async def test_workflow_history_says_it_is_not_available_here(demo: Demo) -> None:
    for app in ("review", "agent"):
        response = await demo.call("GET", "/v1/workflows", params={"app": app})
        assert response.status_code == 503
        assert demo_serve.NO_HISTORY in response.json()["detail"]
    with pytest.raises(SidecarUnavailable):
        await demo_serve.NoWorkflowHistory().history(WorkflowApp.REVIEW, "review-p1")


async def test_the_publisher_reports_a_failing_pipeline_as_unavailable() -> None:
    broker = KafkaBroker()

    @broker.subscriber("posts.submitted")
    async def explode(body: bytes) -> None:
        raise RuntimeError("handler bug")

    async with TestKafkaBroker(broker) as in_memory:
        publisher = demo_serve.BrokerPublisher(in_memory)
        results = await publisher.publish_many("posts.submitted", [(b"k", b"v"), (b"k2", b"v")])
    assert [r.reason if r else None for r in results] == ["the demo's pipeline failed"] * 2


async def test_an_api_that_cannot_bind_ends_the_demo_with_a_reason(
    engine: Engine, tmp_path: Path
) -> None:
    """The port was free when checked and taken before serving: a clear error, no dashboard."""
    settings = Settings()
    with socket.socket() as taken:
        taken.bind((demo_serve.HOST, 0))
        taken.listen()
        settings.api.port = taken.getsockname()[1]
        async with TestKafkaBroker(KafkaBroker()) as in_memory:
            with pytest.raises(demo_serve.DemoError) as refused:
                await demo_serve.serve(
                    settings,
                    in_memory,
                    engine,
                    key="unused",
                    console=Console(file=io.StringIO()),
                    log_file=tmp_path / "dashboard.log",
                )
    assert f"the API could not start on 127.0.0.1:{settings.api.port}" in str(refused.value)
    assert not (tmp_path / "dashboard.log").exists()
