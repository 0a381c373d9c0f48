"""Live configuration: which keys may change, how values are checked, the API that writes them
(with its audit), and what the worker and the watch do with a change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.classifier.cascade import first_stage
from moderation.db import crud
from moderation.events import PostSubmitted
from moderation.live_config import (
    LIVE_KEYS,
    STATIC_VERSION,
    LiveConfigError,
    apply_live,
    config_version,
)
from moderation.services.api.app import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.sidecar.config import LiveConfigWatch
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision


class SpamScorer:
    """P(spam) 0.7, P(safe) 0.3: uncertain under the default thresholds."""

    version = "scripted-spam"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        scores = np.full((len(texts), len(CATEGORIES)), 0.01)
        scores[:, CATEGORIES.index(Category.SPAM)] = 0.7
        scores[:, CATEGORIES.index(Category.SAFE)] = 0.3
        return scores


def test_stored_values_are_laid_over_the_settings() -> None:
    settings = Settings()
    live = apply_live(
        settings,
        {"thresholds.remove.spam": "0.6", "agent.enabled": "false", "agent.concurrency": "3"},
        "c7",
    )
    assert live.thresholds.remove[Category.SPAM] == 0.6
    assert live.thresholds.remove[Category.HATE] == settings.thresholds.remove[Category.HATE]
    assert live.agent.enabled is False and live.agent.concurrency == 3
    assert live.config_version == "c7"
    # An operator's stage-1 threshold wins over the one the model chose for its error budget.
    assert live.error_budget.apply is False
    assert settings.error_budget.apply is True  # the service's own settings are untouched
    # Secrets survive the round trip.
    assert live.db.password.get_secret_value() == settings.db.password.get_secret_value()


def test_null_restores_the_services_own_setting() -> None:
    live = apply_live(Settings(), {"thresholds.allow": "null", "agent.agent_weight": "0.5"}, "c2")
    assert live.thresholds.allow == Settings().thresholds.allow
    assert live.error_budget.apply is True  # no stage-1 threshold is really set
    assert live.agent.agent_weight == 0.5


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"kafka.port": "1"}, "cannot be changed live"),
        ({"agent.agent_weight": "1.5"}, "less than or equal to 1"),
        ({"agent.concurrency": "0"}, "greater than or equal to 1"),
        ({"thresholds.allow": "high"}, "not a JSON value"),
        ({"agent.enabled": '"maybe"'}, "agent.enabled"),
    ],
)
def test_bad_keys_and_values_are_refused_with_the_reason(
    items: dict[str, str], message: str
) -> None:
    with pytest.raises(LiveConfigError, match=message):
        apply_live(Settings(), items, "c1")


def test_the_version_is_the_newest_change() -> None:
    assert config_version({}) == STATIC_VERSION
    assert config_version({"a": "3", "b": "12", "c": "7"}) == "c12"


def test_a_threshold_changes_the_next_decision_and_the_verdict_names_the_version() -> None:
    post = PostSubmitted(post_id="p-1", text="limited offer", author_id="u")
    settings = Settings()
    [before] = first_stage([post], SpamScorer(), settings, agent_enabled=False)
    live = apply_live(settings, {"thresholds.remove.spam": "0.6"}, "c3")
    [after] = first_stage([post], SpamScorer(), live, agent_enabled=False)
    assert before.verdict.decision is Decision.REVIEW
    assert before.verdict.config_version == STATIC_VERSION
    assert after.verdict.decision is Decision.REMOVE
    assert after.verdict.config_version == "c3"


def test_the_watch_applies_a_change_once_and_keeps_serving_on_a_bad_one() -> None:
    applied: list[Settings] = []
    watch = LiveConfigWatch(Settings(), "127.0.0.1:1", applied.append)
    watch.replace({"agent.agent_weight": ("0.4", "1")})
    watch.replace({"agent.agent_weight": ("0.4", "1")})  # the resync reads the same items
    watch.replace({"agent.agent_weight": ("4", "2")})  # refused: logged, not applied
    assert [s.agent.agent_weight for s in applied] == [0.4]
    assert watch.version == "c1"


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine)


def key(engine: Engine, *scopes: str) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name="k", scopes=list(scopes))
    return {"Authorization": f"Bearer {plaintext}"}


async def test_the_api_sets_values_checked_and_audited(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    admin, moderator = key(engine, "admin"), key(engine, "moderate")

    empty = (await client.get("/v1/config", headers=moderator)).json()
    assert empty["version"] == STATIC_VERSION and empty["items"] == []
    assert empty["keys"] == list(LIVE_KEYS)

    first = await client.put("/v1/config/thresholds.remove.spam", json={"value": 0.6},
                             headers=admin)  # fmt: skip
    second = await client.put("/v1/config/thresholds.remove.spam", json={"value": 0.7},
                              headers=admin)  # fmt: skip
    assert first.status_code == second.status_code == 200
    state = second.json()
    assert state["version"] == "c2"
    assert state["items"] == [{"key": "thresholds.remove.spam", "value": "0.7", "version": "2"}]
    newest, oldest = state["changes"]
    assert (oldest["before"], oldest["after"], newest["before"], newest["after"]) == (
        None, "0.6", "0.6", "0.7",
    )  # fmt: skip
    assert newest["actor"].startswith("key:") and newest["version"] == "2"


@pytest.mark.parametrize(
    ("path", "value", "status", "message"),
    [
        ("/v1/config/kafka.port", 1, 422, "cannot be changed live"),
        ("/v1/config/agent.agent_weight", 3, 422, "less than or equal to 1"),
    ],
)
async def test_the_api_refuses_bad_keys_and_values_and_stores_nothing(
    client: httpx.AsyncClient, engine: Engine, path: str, value: Any, status: int, message: str
) -> None:
    response = await client.put(path, json={"value": value}, headers=key(engine, "admin"))
    assert response.status_code == status and message in response.text
    with Session(engine) as session:
        assert crud.list_config(session) == [] and crud.config_changes(session) == []


async def test_only_admin_keys_change_the_configuration(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    response = await client.put("/v1/config/agent.enabled", json={"value": False},
                                headers=key(engine, "moderate"))  # fmt: skip
    assert response.status_code == 403
    assert (await client.get("/v1/config", headers=key(engine, "read"))).status_code == 403
