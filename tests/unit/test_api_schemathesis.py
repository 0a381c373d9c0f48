"""Property-based tests of the API against its own OpenAPI document (schemathesis).

Every documented operation is called in-process (the ASGI app on SQLite, the in-memory publisher,
a fake review workflow gateway) with generated valid and invalid input, authenticated with a key
that has every scope. No answer may be a 5xx, and every answer must be one the document declares
with the shape it declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine
from sqlmodel import Session

# Imported here, before the app's lifespan imports it in a background thread: the conftest's
# autouse fixture importing the Agents SDK at the same moment would deadlock the two imports.
import moderation.classifier.agent  # noqa: F401
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.events import ModerationVerdict, PostSubmitted, ReviewRequested
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import ApiSettings, Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.unit.test_workflow_history_api import FakeWorkflowHistory

# Bounded so the whole run stays well under a minute on two cores.
MAX_EXAMPLES = 30


class FakeWorkflows:
    """Accepts every decision (the review API's Dapr gateway, out of the picture here)."""

    async def raise_decision(self, review_id: str, payload: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None


def _seed(engine: Engine) -> None:
    """One post with a verdict and an open review, so the read paths find something."""
    verdict = ModerationVerdict(
        post_id="p-1",
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.02), Category.SPAM: 0.55},
        primary_category=Category.SPAM,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=3.0,
    )
    review = ReviewRequested(post_id="p-1", reason="uncertain", verdict=verdict)
    submitted = PostSubmitted(post_id="p-1", text="buy cheap pills", author_id="u-1")
    with Session(engine) as session:
        crud.record_events(session, events=[submitted, verdict, review])


def _app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    return build_app(
        settings,
        publisher=InMemoryPublisher(),
        engine=engine,
        workflows=FakeWorkflows(),
        # The daprds are out of the picture too: `/v1/workflows` reads canned instances.
        workflow_history=FakeWorkflowHistory(),
    )


# The document depends only on the routes, so it is read from an app that never starts. (Loading
# it lazily from a fixture, `schemathesis.pytest.from_fixture`, fails on pytest 9 in 4.32.5.)
schema = schemathesis.openapi.from_dict(_app(Settings()).openapi())


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    """The app on SQLite (one seeded review) and an admin key (admin implies every scope)."""
    path: Path = tmp_path_factory.mktemp("schemathesis") / "api.db"
    # Limits far above what the run sends: it is about 5xx and conformance, not throttling.
    api = ApiSettings(
        rate_limit_per_minute=10_000_000,
        rate_limit_burst=10_000_000,
        request_rate_limit_per_minute=10_000_000,
        request_rate_limit_burst=10_000_000,
    )
    app_settings = Settings(api=api)
    engine = make_engine(app_settings, url=f"sqlite:///{path}")
    create_tables(engine)
    _seed(engine)
    with Session(engine) as session:
        key, _ = crud.create_api_key(session, name="schemathesis", scopes=["admin"])
    app = _app(app_settings, engine)
    yield app, key
    # schemathesis started the app's lifespan on the first call; end it before the engine.
    shutdown_lifespans()
    engine.dispose()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_no_operation_answers_5xx_or_off_schema(
    case: schemathesis.Case[Any], api_app: tuple[FastAPI, str]
) -> None:
    app, key = api_app
    case.call_and_validate(
        app=app,
        headers={"Authorization": f"Bearer {key}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
