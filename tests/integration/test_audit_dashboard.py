"""The Audit page in a real browser, on the real stack: a post goes through Kafka, the worker and
the recorder into a review (the review service's Dapr workflow), a moderator claims and decides
it through the API, and the Audit page shows who did it, filtered by the action, and exports it
as CSV.

Debian's headless chromium driven by Playwright (as `test_review_flow.py`); the screenshot is
saved to `test-artifacts/audit-dashboard.png`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
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
from moderation.settings import PROJECT_ROOT, Settings
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "audit-dashboard.png"
ACTION = "review.decide"


@pytest.fixture(scope="module")
def audit_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "audit") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(
    audit_settings: Settings, dapr: DaprRuntime, postgres: PostgresCluster
) -> Iterator[PipelineServices]:
    """Every post becomes a review; the review service's workflow records the decision."""
    running = PipelineServices(
        audit_settings,
        extra_env={"MODERATION_AGENT__ENABLED": "false", **STAGE_ONE_DECIDES_NOTHING},
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


def review_task(engine: Engine, review_id: str) -> Review | None:
    with Session(engine) as session:
        row = session.exec(select(Review).where(col(Review.review_id) == review_id)).first()
    return row if row is not None and row.sla_due_at is not None else None


def decision_recorded(engine: Engine, review_id: str) -> HumanDecision | None:
    with Session(engine) as session:
        return session.exec(
            select(HumanDecision).where(col(HumanDecision.review_id) == review_id)
        ).first()


@pytest.mark.timeout(900)
async def test_the_audit_page_shows_a_decision_filtered_by_action_and_exports_it(
    services: PipelineServices, audit_settings: Settings, read_model: Engine
) -> None:
    post = PostSubmitted(
        post_id=uuid.uuid4().hex, text="Cheap watches, message me", author_id="audit-author"
    )
    await produce(audit_settings, [post])
    review_id = review_id_for(post.post_id)
    await asyncio.to_thread(wait_for, partial(review_task, read_model, review_id), 180, "review")
    name = f"auditor-{uuid.uuid4().hex[:6]}"
    with Session(read_model) as session:
        key, row = crud.create_api_key(session, name=name, scopes=["moderate", "read"])
    actor = f"key:{row.id}"

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{audit_settings.api.port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    ) as api:
        claimed = await api.post(f"/v1/reviews/{review_id}/claim")
        assert claimed.status_code == 200, claimed.text
        decided = await api.post(
            f"/v1/reviews/{review_id}/decision",
            json={"label": "spam", "decision": "remove", "note": "watch spam"},
        )
        assert decided.status_code == 202, decided.text
        await asyncio.to_thread(
            wait_for, partial(decision_recorded, read_model, review_id), 120, "decision recorded"
        )
        # The API on PostgreSQL: this key's decision, filtered by the action.
        listed = await api.get("/v1/audit", params={"action": ACTION, "actor": actor})
    assert listed.status_code == 200, listed.text
    [entry] = listed.json()["items"]
    assert (entry["entity_id"], entry["actor_display"]) == (review_id, f"{name} ({actor})")
    assert entry["before"]["status"] == "claimed"
    assert (entry["after"]["status"], entry["after"]["label"]) == ("decided", "spam")
    assert entry["tenant"] == post.tenant

    await asyncio.to_thread(services.start, "dashboard")
    exported = await asyncio.to_thread(
        drive_audit_page, audit_settings, ensure_chromium(), key, review_id
    )
    rows = list(csv.DictReader(io.StringIO(exported)))
    ours = [r for r in rows if r["entity_id"] == review_id]
    assert [(r["action"], r["actor_display"]) for r in ours] == [(ACTION, f"{name} ({actor})")]
    assert {r["action"] for r in rows} == {ACTION}
    assert json.loads(ours[0]["after"])["note"] == "watch spam"
    assert SCREENSHOT.stat().st_size > 0


def drive_audit_page(settings: Settings, chromium: Path, key: str, review_id: str) -> str:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1200}, accept_downloads=True)
        page.set_default_timeout(60_000)
        try:
            return filter_and_export(settings, page, key, review_id)
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "audit-dashboard-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def filter_and_export(settings: Settings, page: Page, key: str, review_id: str) -> str:
    """Sign in, open Audit, filter by the action, find the decision's row, download the CSV."""
    page.goto(f"http://127.0.0.1:{settings.dashboard.port}/")
    page.locator(".st-key-hitl_sign_in_key input").fill(key)
    page.locator(".st-key-sign_in button").click()
    page.locator('[data-testid="stMetric"]', has_text="Pending").wait_for()

    page.locator('[data-testid="stSidebarNavLink"]', has_text="Audit").click()
    page.get_by_role("heading", name="Audit", exact=True).wait_for()
    page.locator(".st-key-hitl_audit_action input").fill(ACTION)
    page.locator(".st-key-audit_apply button").click()
    page.locator('[data-testid="stDataFrame"]').wait_for()
    # The table is drawn on a canvas; its cells are also in the grid's (hidden) accessible DOM.
    cell = page.locator('[role="gridcell"]', has_text=f"review {review_id}").first
    cell.wait_for(state="attached")
    # Columns: when, who, action, entity, before → after (the grid draws the visible ones).
    shown = [
        row.locator('[role="gridcell"]').nth(2).inner_text().strip()
        for row in page.locator('[role="row"]').all()
        if row.locator('[role="gridcell"]').count()
    ]
    assert shown and set(shown) == {ACTION}, shown
    change = page.locator('[role="gridcell"]', has_text="status: claimed → decided").first
    change.wait_for(state="attached")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    with page.expect_download() as download:
        page.locator(".st-key-audit_export button").click()
    assert download.value.suggested_filename.startswith("audit-")
    return Path(download.value.path()).read_text()
