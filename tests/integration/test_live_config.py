"""Live configuration on the real stack: a threshold changed through the API lands in
PostgreSQL (`moderation_config`), its trigger notifies Dapr's configuration store, the worker's
daprd streams it to the running worker, and the next decision follows, with no restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.devtools.stack.dapr import DaprRuntime, with_stack_tokens
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import PostSubmitted
from moderation.services.sidecar.config import LiveConfigWatch
from moderation.settings import Settings
from moderation.taxonomy import Stage
from tests import crud_helpers
from tests.integration.streams import produce, running_services, topics_of_their_own, wait_for

pytestmark = pytest.mark.integration

KEY = "thresholds.remove.spam"


@pytest.fixture(scope="module")
def live_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "live") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(
    live_settings: Settings, postgres: PostgresCluster, dapr: DaprRuntime
) -> Iterator[PipelineServices]:
    running = PipelineServices(live_settings, extra_env={"MODERATION_AGENT__ENABLED": "false"})
    with running_services(running, "recorder", "worker", "api", dapr=dapr):
        yield running


def stage1(engine: Engine, post_id: str) -> tuple[str, str | None] | None:
    with Session(engine) as session:
        rows = crud_helpers.list_verdicts(session, post_ids=[post_id], stage=Stage.MODEL)
    return (rows[0].decision, rows[0].config_version) if rows else None


async def decide_until(
    settings: Settings, engine: Engine, prefix: str, wanted: str, within: float
) -> tuple[str, str | None]:
    """Submit a harmless post every second until stage 1 decides one `wanted`."""
    deadline = time.monotonic() + within
    number = 0
    while time.monotonic() < deadline:
        post = PostSubmitted(
            post_id=f"{prefix}-{number}", text="Anyone up for chess in the park tomorrow?",
            author_id="live",
        )  # fmt: skip
        number += 1
        await produce(settings, [post])
        found: tuple[str, str | None] = await asyncio.to_thread(
            wait_for, partial(stage1, engine, post.post_id), 30, "its verdict"
        )
        if found[0] == wanted:
            return found
        await asyncio.sleep(1.0)
    raise AssertionError(f"no post decided {wanted} within {within:.0f}s")


@pytest.mark.timeout(300)
async def test_a_threshold_changed_in_the_store_changes_the_next_decision_without_restart(
    services: PipelineServices, live_settings: Settings, read_model: Engine, unique: str
) -> None:
    with Session(read_model) as session:
        admin, _ = crud.create_api_key(session, name=f"live-{unique}", scopes=["admin"])
    headers = {"Authorization": f"Bearer {admin}"}
    api = f"http://127.0.0.1:{live_settings.api.port}"
    worker_pid = services.processes["worker"].pid()

    before = await decide_until(live_settings, read_model, f"before-{unique}", "allow", 60)
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        changed = await client.put(f"/v1/config/{KEY}", json={"value": 0.0}, headers=headers)
        assert changed.status_code == 200, changed.text
        version = changed.json()["version"]
        try:
            # Spam at any probability now passes its remove threshold: the worker must apply it.
            after = await decide_until(live_settings, read_model, f"after-{unique}", "remove", 60)
        finally:
            reset = await client.put(f"/v1/config/{KEY}", json={"value": None}, headers=headers)
            assert reset.status_code == 200, reset.text
        restored = await decide_until(live_settings, read_model, f"restored-{unique}", "allow", 60)
        audit = (await client.get("/v1/config", headers=headers)).json()

    assert before[1] != version
    assert after == ("remove", version)
    assert restored == ("allow", reset.json()["version"])
    assert services.processes["worker"].pid() == worker_pid, "the worker was not restarted"
    newest, previous = audit["changes"][:2]
    assert (newest["key"], newest["before"], newest["after"]) == (KEY, "0.0", "null")
    assert (previous["key"], previous["after"], previous["version"]) == (
        KEY, "0.0", version.removeprefix("c"),
    )  # fmt: skip


def test_a_change_is_pushed_through_the_subscription_within_a_second(
    dapr: DaprRuntime, settings: Settings, read_model: Engine, unique: str
) -> None:
    """The Configuration API's stream, not the periodic re-read, carries the change."""
    tokens = with_stack_tokens(settings)
    applied: list[tuple[float, str, float]] = []
    watch = LiveConfigWatch(
        tokens,
        tokens.dapr.grpc_endpoint,
        lambda live: applied.append(
            (time.monotonic(), live.config_version, live.agent.agent_weight)
        ),
        resync_seconds=600,  # no re-read while the test runs: only the stream can deliver
    )
    watch.start()
    try:
        time.sleep(3)  # the first read is done and the stream is open
        before = len(applied)
        with Session(read_model) as session:
            entry = crud.set_config(session, key="agent.agent_weight", value="0.55",
                                    actor=f"test-{unique}")  # fmt: skip
        written = time.monotonic()
        arrived = wait_for(lambda: applied[before:], 5, "the pushed change")
    finally:
        with Session(read_model) as session:
            crud.set_config(session, key="agent.agent_weight", value="null", actor=f"test-{unique}")
        watch.stop()
    at, version, weight = arrived[-1]
    assert (version, weight) == (f"c{entry.version}", 0.55)
    assert at - written < 1.0
