"""Human review through the real stack: Kafka, PostgreSQL, daprd + placement + scheduler, and the
worker, recorder, review service and API as processes.

A post the fast model is unsure of becomes a review (a Dapr workflow per review), a moderator
claims and decides it through the API, the workflow records the decision and publishes it to
`review.decisions`. The SLA is a few seconds here, so undecided reviews escalate during the test.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from dapr.ext.workflow import DaprWorkflowClient, WorkflowStatus
from playwright.sync_api import Page, sync_playwright
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.models import HumanDecision, Review
from moderation.devtools.stack.browser import ensure_chromium
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import PostSubmitted, review_id_for
from moderation.services.sidecar.instances import read_workflow_state
from moderation.settings import PROJECT_ROOT, Settings
from tests import crud_helpers
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    kafka_admin_auth,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration

SLA_SECONDS = 6
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
OPEN_REVIEWS = re.compile(r"(\d+) review\(s\) open")


@pytest.fixture(scope="module")
def review_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "hitl") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(
    review_settings: Settings, dapr: DaprRuntime, postgres: PostgresCluster
) -> Iterator[PipelineServices]:
    """The review service with its daprd delivering `review.requested` to it."""
    running = PipelineServices(
        review_settings,
        extra_env={
            # Stage 1 decides nothing and there is no agent: every post becomes a review.
            "MODERATION_AGENT__ENABLED": "false",
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_REVIEW__SLA_SECONDS": str(SLA_SECONDS),
        },
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


@pytest.fixture(scope="module")
def moderators(read_model: Engine) -> dict[str, str]:
    """API keys: two moderators, an admin and a submitter (no `moderate` scope)."""
    keys = {}
    with Session(read_model) as session:
        for name, scopes in (
            ("mod-a", ["moderate"]),
            ("mod-b", ["moderate"]),
            ("admin", ["admin"]),
            ("submitter", ["submit", "read"]),
        ):
            keys[name], _ = crud.create_api_key(
                session, name=f"{name}-{uuid.uuid4().hex[:6]}", scopes=scopes
            )
    return keys


def api(settings: Settings, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=f"http://127.0.0.1:{settings.api.port}", headers=headers, timeout=30
    )


def review_row(engine: Engine, review_id: str) -> Review | None:
    with Session(engine) as session:
        return session.exec(select(Review).where(col(Review.review_id) == review_id)).first()


def review_task_created(engine: Engine, review_id: str) -> Review | None:
    """The review row once the workflow's first activity set its SLA."""
    row = review_row(engine, review_id)
    return row if row is not None and row.sla_due_at is not None else None


async def submit_review(settings: Settings, engine: Engine, text: str) -> Review:
    """Submit a post (stage 1 sends it to review) and wait for its review task."""
    post = PostSubmitted(post_id=uuid.uuid4().hex, text=text, author_id="hitl-author")
    await produce(settings, [post])
    review_id = review_id_for(post.post_id)
    task: Review = await asyncio.to_thread(
        wait_for, partial(review_task_created, engine, review_id), 120, "review task"
    )
    return task


async def consume_until(
    settings: Settings, topic: str, match: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        **kafka_admin_auth(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(within):
            async for record in consumer:
                event = json.loads(record.value or b"{}")
                if match(event):
                    return dict(event)
    finally:
        await consumer.stop()
    raise AssertionError("unreachable")


def workflow_status(settings: Settings, instance_id: str) -> WorkflowStatus | None:
    client = DaprWorkflowClient(host="127.0.0.1", port=str(settings.dapr.grpc_port))
    try:
        state = read_workflow_state(client, instance_id)
        return state.runtime_status if state else None
    finally:
        client.close()


def decide(settings: Settings, key: str, review_id: str, **body: Any) -> httpx.Response:
    with api(settings, key) as client:
        claimed = client.post(f"/v1/reviews/{review_id}/claim")
        assert claimed.status_code == 200, claimed.text
        payload = {"label": "spam", "decision": "remove", "note": "scam wave"} | body
        return client.post(f"/v1/reviews/{review_id}/decision", json=payload)


@pytest.mark.timeout(300)
async def test_a_review_is_claimed_decided_recorded_and_published(
    services: PipelineServices,
    review_settings: Settings,
    read_model: Engine,
    moderators: dict[str, str],
) -> None:
    review = await submit_review(
        review_settings, read_model, "Cheap watches, message me for the link"
    )
    review_id = review.review_id

    response = await asyncio.to_thread(decide, review_settings, moderators["mod-a"], review_id)
    assert response.status_code == 202, response.text

    published = await consume_until(
        review_settings,
        review_settings.kafka.topics.review_decisions,
        lambda event: event.get("review_id") == review_id,
        within=120,
    )
    assert published["label"] == "spam" and published["decision"] == "remove"
    # The moderator is the deciding key's id (unique), not its name (names repeat).
    with Session(read_model) as session:
        key = crud.authenticate_api_key(session, key=moderators["mod-a"])
    assert key is not None and published["moderator_id"] == f"key:{key.id}"

    def recorded() -> HumanDecision | None:
        with Session(read_model) as session:
            return session.exec(
                select(HumanDecision).where(col(HumanDecision.review_id) == review_id)
            ).first()

    decision = await asyncio.to_thread(wait_for, recorded, 60, "decision row")
    assert decision.event_id == published["event_id"]
    status = await asyncio.to_thread(
        wait_for,
        lambda: workflow_status(review_settings, review_id) == WorkflowStatus.COMPLETED,
        60,
        "workflow completed",
    )
    assert status
    with api(review_settings, moderators["mod-b"]) as client:
        again = client.post(f"/v1/reviews/{review_id}/decision", json={
            "label": "safe", "decision": "allow", "note": None,
        })  # fmt: skip
    assert again.status_code == 409


@pytest.mark.timeout(300)
async def test_an_appeal_reopens_a_decided_post_as_a_new_high_priority_review(
    services: PipelineServices,
    review_settings: Settings,
    read_model: Engine,
    moderators: dict[str, str],
) -> None:
    review = await submit_review(review_settings, read_model, "Follow my page for free followers")
    review_id = review.review_id
    response = await asyncio.to_thread(decide, review_settings, moderators["mod-a"], review_id)
    assert response.status_code == 202, response.text
    decision_event = response.json()["event_id"]
    await asyncio.to_thread(
        wait_for,
        lambda: workflow_status(review_settings, review_id) == WorkflowStatus.COMPLETED,
        120,
        "first review completed",
    )
    post_id = review_id.removeprefix("review-")

    with api(review_settings, moderators["submitter"]) as submitter:
        appeal = submitter.post(f"/v1/posts/{post_id}/appeal", json={"reason": "it is my shop"})
    assert appeal.status_code == 202, appeal.text
    appeal_id = appeal.json()["review_id"]
    assert appeal_id == review_id_for(post_id, 1)

    reopened = await asyncio.to_thread(
        wait_for, partial(review_task_created, read_model, appeal_id), 120, "appeal review task"
    )
    assert reopened.appeal_of == decision_event
    assert reopened.priority == "high"
    assert workflow_status(review_settings, appeal_id) == WorkflowStatus.RUNNING
    with Session(read_model) as session:
        assert crud_helpers.post_statuses(session, post_ids=[post_id])[post_id] == "in_review"


@pytest.mark.timeout(300)
async def test_sla_timer_escalates_an_undecided_review(
    services: PipelineServices, review_settings: Settings, read_model: Engine
) -> None:
    created = await submit_review(review_settings, read_model, "Is this link legit? bit.example/x")
    review_id = created.review_id

    escalated = await consume_until(
        review_settings,
        review_settings.kafka.topics.review_escalated,
        lambda event: event.get("review_id") == review_id,
        within=SLA_SECONDS * 10,
    )
    row = review_row(read_model, review_id)
    assert row is not None and row.escalated_at is not None
    assert row.status == "escalated"
    assert row.priority != created.priority and escalated["priority"] == row.priority
    assert workflow_status(review_settings, review_id) == WorkflowStatus.RUNNING


@pytest.mark.timeout(600)
async def test_review_service_and_daprd_killed_mid_wait_the_same_workflow_completes(
    services: PipelineServices,
    review_settings: Settings,
    dapr: DaprRuntime,
    read_model: Engine,
    moderators: dict[str, str],
) -> None:
    review = await submit_review(
        review_settings, read_model, "Selling concert tickets cheap, DM me"
    )
    review_id = review.review_id
    assert workflow_status(review_settings, review_id) == WorkflowStatus.RUNNING

    # Both die without a graceful shutdown while the workflow waits for the decision.
    services.kill("review")
    dapr.stop_sidecar(crash=True)
    dapr.start_sidecar(app_port=review_settings.review.service_port)
    await asyncio.to_thread(services.start, "review")

    response = await asyncio.to_thread(decide, review_settings, moderators["mod-b"], review_id)
    assert response.status_code == 202, response.text
    await asyncio.to_thread(
        wait_for,
        lambda: workflow_status(review_settings, review_id) == WorkflowStatus.COMPLETED,
        120,
        "the same workflow instance completed",
    )
    with Session(read_model) as session:
        decisions = session.exec(
            select(HumanDecision).where(col(HumanDecision.review_id) == review_id)
        )
        assert len(decisions.all()) == 1


@pytest.mark.timeout(300)
async def test_two_moderators_racing_for_one_item_exactly_one_wins(
    services: PipelineServices,
    review_settings: Settings,
    read_model: Engine,
    moderators: dict[str, str],
) -> None:
    review = await submit_review(
        review_settings, read_model, "Win a prize, reply with your bank details"
    )
    review_id = review.review_id
    start = threading.Barrier(2)
    codes: dict[str, int] = {}

    def claim(moderator: str) -> None:
        with api(review_settings, moderators[moderator]) as client:
            start.wait()
            codes[moderator] = client.post(f"/v1/reviews/{review_id}/claim").status_code

    threads = [threading.Thread(target=claim, args=(m,)) for m in ("mod-a", "mod-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(codes.values()) == [200, 409]


def test_review_endpoints_refuse_missing_and_insufficient_keys(
    services: PipelineServices, review_settings: Settings, moderators: dict[str, str]
) -> None:
    calls = [
        ("GET", "/v1/reviews"),
        ("GET", "/v1/reviews/stats"),
        ("GET", "/v1/reviews/review-x"),
        ("POST", "/v1/reviews/claim-next"),
        ("POST", "/v1/reviews/review-x/claim"),
        ("POST", "/v1/reviews/review-x/decision"),
        ("GET", "/v1/decisions.csv"),
    ]
    for method, path in calls:
        with api(review_settings) as anonymous:
            assert anonymous.request(method, path).status_code == 401, path
        with api(review_settings, moderators["submitter"]) as submitter:
            assert submitter.request(method, path).status_code == 403, path


def open_reviews_on_screen(page: Page) -> int:
    """The number of undecided reviews the queue browser reports ("N review(s) open")."""
    caption = page.get_by_text(OPEN_REVIEWS).first.inner_text()
    found = OPEN_REVIEWS.search(caption)
    assert found is not None, caption
    return int(found.group(1))


@pytest.mark.timeout(600)
async def test_dashboard_in_a_real_browser_signs_in_claims_and_decides_with_the_keyboard(
    services: PipelineServices,
    review_settings: Settings,
    read_model: Engine,
) -> None:
    """Debian's chromium, headless, driven by Playwright (its own browser download cannot work
    here); the dashboard runs as `moderation dashboard` against the real API."""
    chromium = ensure_chromium()
    with Session(read_model) as session:
        key, _ = crud.create_api_key(
            session, name=f"browser-{uuid.uuid4().hex[:6]}", scopes=["moderate", "read"]
        )
    reviews = [
        await submit_review(review_settings, read_model, f"Limited offer number {i}!")
        for i in range(2)
    ]
    await asyncio.to_thread(services.start, "dashboard")
    screenshot = ARTIFACTS / "dashboard-queue.png"
    await asyncio.to_thread(
        drive_dashboard, review_settings, chromium, key, reviews[0].review_id, screenshot
    )
    assert screenshot.stat().st_size > 0


def drive_dashboard(
    settings: Settings, chromium: Path, key: str, review_id: str, screenshot: Path
) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            decide_with_the_keyboard(settings, page, key, review_id, screenshot)
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def decide_with_the_keyboard(
    settings: Settings, page: Page, key: str, review_id: str, screenshot: Path
) -> None:
    """Claim this test's review by id (the shared read model also holds reviews of other test
    modules, whose topics no review service consumes: they have no workflow to decide), decide
    it with the keyboard, and watch the queue shrink."""
    page.goto(f"http://127.0.0.1:{settings.dashboard.port}/")
    page.locator(".st-key-hitl_sign_in_key input").fill(key)
    page.locator(".st-key-sign_in button").click()
    page.locator('[data-testid="stMetric"]', has_text="Pending").wait_for()
    page.locator(".st-key-hitl_show_queue label").click()
    page.get_by_text(OPEN_REVIEWS).first.wait_for()
    before = open_reviews_on_screen(page)

    page.locator(".st-key-hitl_claim_id input").fill(review_id)
    page.locator(".st-key-claim_by_id button").click()
    page.get_by_text(f"Review {review_id}").first.wait_for()
    # Streamlit streams the page: the decision form and its `r` script come after the post.
    page.locator(".st-key-decide_remove button").first.wait_for()
    page.wait_for_function("() => window.__hitlRemoveShortcut === true")
    # Focus the page (a metric, not an input) so the keys reach the shortcuts.
    page.locator('[data-testid="stMetric"]').first.click()
    page.keyboard.press("r")  # remove (the label defaults to the suggested violation)
    # The chosen decision's button turns primary once Streamlit has rerun with it.
    page.locator('.st-key-decide_remove [data-testid="stBaseButton-primary"]').first.wait_for()
    page.keyboard.press("n")  # submit & next
    page.get_by_text("Decision recorded").first.wait_for()
    deadline = time.monotonic() + 60
    while open_reviews_on_screen(page) >= before:
        assert time.monotonic() < deadline, "the queue did not shrink"
        page.wait_for_timeout(500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
