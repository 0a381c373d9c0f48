"""The Metrics page in a real browser, on the real stack: posts go through Kafka, the worker and
the recorder into PostgreSQL; the API aggregates them; the dashboard plots them.

Debian's headless chromium driven by Playwright (as `test_review_flow.py`); the screenshot is
saved to `test-artifacts/metrics-dashboard.png`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.devtools.stack.browser import ensure_chromium
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import PostSubmitted
from moderation.settings import PROJECT_ROOT, Settings
from tests import crud_helpers
from tests.integration.streams import produce, running_services, topics_of_their_own, wait_for

pytestmark = pytest.mark.integration

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "metrics-dashboard.png"
POSTS = [
    "Thanks for the tips, the recipe worked great",
    "Cheap watches, message me for the link",
    "Meeting moved to Thursday at 10",
    "Win a prize, reply with your bank details",
    "Lovely photo of the lake this morning",
    "Follow my page for free followers",
]
# Throughput, latency, decisions, categories and the share to humans always have data here.
MIN_CHARTS = 5


@pytest.fixture(scope="module")
def metrics_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "metrics") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(metrics_settings: Settings, postgres: PostgresCluster) -> Iterator[PipelineServices]:
    """The pipeline without the review service (no decision is made here) and without the agent."""
    running = PipelineServices(metrics_settings, extra_env={"MODERATION_AGENT__ENABLED": "false"})
    with running_services(running, "recorder", "worker", "api"):
        yield running


def model_verdicts(engine: Engine, post_ids: list[str]) -> bool:
    with Session(engine) as session:
        counted = crud_helpers.count_verdicts(session, post_ids=post_ids, stage="model")
        return counted == len(post_ids)


@pytest.mark.timeout(900)
async def test_metrics_page_in_a_real_browser_plots_the_pipeline(
    services: PipelineServices, metrics_settings: Settings, read_model: Engine
) -> None:
    posts = [
        PostSubmitted(post_id=uuid.uuid4().hex, text=text, author_id="metrics-author")
        for text in POSTS
    ]
    await produce(metrics_settings, posts)
    post_ids = [post.post_id for post in posts]
    await asyncio.to_thread(
        wait_for, partial(model_verdicts, read_model, post_ids), 180, "model verdicts recorded"
    )
    with Session(read_model) as session:
        key, _ = crud.create_api_key(
            session, name=f"metrics-{uuid.uuid4().hex[:6]}", scopes=["moderate"]
        )

    # The endpoint on PostgreSQL: this test's posts are in the last hour's buckets.
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{metrics_settings.api.port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    ) as api:
        response = await api.get("/v1/metrics/overview", params={"hours": 1, "bucket_minutes": 5})
    assert response.status_code == 200, response.text
    overview = response.json()
    assert sum(bucket["posts"] for bucket in overview["throughput"]) >= len(posts)
    assert any(p["stage"] == "model" for p in overview["latency_window"])

    await asyncio.to_thread(services.start, "dashboard")
    await asyncio.to_thread(drive_metrics_page, metrics_settings, ensure_chromium(), key)
    assert SCREENSHOT.stat().st_size > 0


def drive_metrics_page(settings: Settings, chromium: Path, key: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        # Tall, so every chart is drawn at once (the height is fitted before the screenshot).
        page = browser.new_page(viewport={"width": 1400, "height": 4000})
        page.set_default_timeout(60_000)
        try:
            open_metrics(settings, page, key)
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "metrics-dashboard-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def open_metrics(settings: Settings, page: Page, key: str) -> None:
    """Sign in, open Metrics from the navigation, wait for the charts to be drawn, screenshot."""
    page.goto(f"http://127.0.0.1:{settings.dashboard.port}/")
    page.locator(".st-key-hitl_sign_in_key input").fill(key)
    page.locator(".st-key-sign_in button").click()
    page.locator('[data-testid="stMetric"]', has_text="Pending").wait_for()

    page.locator('[data-testid="stSidebarNavLink"]', has_text="Metrics").click()
    page.get_by_role("heading", name="Metrics", exact=True).wait_for()
    page.get_by_role("heading", name="Throughput").wait_for()
    page.get_by_role("heading", name="Nightly runs").wait_for()
    assert page.get_by_text("Metrics unavailable").count() == 0
    # Vega-Lite draws each chart into a canvas (or an svg) once its data is in.
    drawn = page.locator(
        '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
    )
    drawn.nth(MIN_CHARTS - 1).wait_for()
    page.locator('[data-testid="stMetric"]', has_text="Share to humans").wait_for()
    # Streamlit scrolls inside its own container, which a full-page screenshot does not unroll:
    # fit the viewport to the page's content instead.
    height = page.locator('[data-testid="stMainBlockContainer"]').evaluate("e => e.scrollHeight")
    page.set_viewport_size({"width": 1400, "height": int(height) + 600})
    page.wait_for_timeout(1_000)  # let the charts repaint at the new size
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
