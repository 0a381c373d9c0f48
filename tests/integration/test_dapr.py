"""The real Dapr runtime (daprd + placement + scheduler) with the project's components."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from dapr.clients import DaprClient
from dapr.ext.workflow import (
    DaprWorkflowClient,
    DaprWorkflowContext,
    WorkflowRuntime,
    WorkflowState,
    WorkflowStatus,
)

from moderation.devtools.stack.dapr import DaprRuntime
from moderation.settings import Settings
from tests.integration.streams import kafka_admin_auth, topics_of_their_own

pytestmark = pytest.mark.integration

DECISION_EVENT = "decision"


def wait_for_decision(ctx: DaprWorkflowContext, post_id: str) -> Any:
    """Wait (durably) for a moderator's decision event and return it with the post id."""
    decision = yield ctx.wait_for_external_event(DECISION_EVENT)
    return {"post_id": post_id, "decision": decision}


def sla_expires(ctx: DaprWorkflowContext, seconds: int) -> Any:
    """A durable timer, as the review SLA uses."""
    yield ctx.create_timer(timedelta(seconds=seconds))
    return "escalated"


@pytest.fixture(scope="module")
def workflow_runtime(dapr: DaprRuntime, settings: Settings) -> Iterator[WorkflowRuntime]:
    """One worker per module: the SDK allows registering a workflow function only once."""
    runtime = WorkflowRuntime(host="127.0.0.1", port=str(settings.dapr.grpc_port))
    runtime.register_workflow(wait_for_decision)
    runtime.register_workflow(sla_expires)
    runtime.start()
    yield runtime
    runtime.shutdown()


def _workflow_client(settings: Settings) -> DaprWorkflowClient:
    return DaprWorkflowClient(host="127.0.0.1", port=str(settings.dapr.grpc_port))


def test_state_save_and_get_lands_in_postgres(
    dapr: DaprRuntime, settings: Settings, unique: str
) -> None:
    key, value = f"selftest-{unique}", json.dumps({"post_id": unique, "status": "pending"})
    with DaprClient(address=settings.dapr.grpc_endpoint) as client:
        client.save_state(settings.dapr.statestore_name, key, value)
        stored = client.get_state(settings.dapr.statestore_name, key)
    assert stored.data.decode() == value

    # The state store really is the project's PostgreSQL (not an in-memory fallback).
    with psycopg.connect(settings.db.libpq_dsn(settings.db.dapr_state_name)) as conn:
        row = conn.execute("SELECT value FROM state WHERE key LIKE %s", (f"%{key}",)).fetchone()
    assert row is not None
    # state.postgresql v2 keeps the value as the raw bytes the app saved.
    assert bytes(row[0]).decode() == value


def test_publish_through_dapr_is_received_by_a_kafka_consumer(
    dapr: DaprRuntime, settings: Settings, unique: str
) -> None:
    """daprd publishes as the review service's principal (SASL/SCRAM), to a topic it may write."""
    with topics_of_their_own(settings, f"dapr-{unique}") as isolated:
        topic = isolated.kafka.topics.review_decisions
        asyncio.run(_publish_and_consume(settings, topic, unique))


async def _publish_and_consume(settings: Settings, topic: str, unique: str) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, **kafka_admin_auth(), auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        payload = {"post_id": unique, "reason": "low confidence"}

        def publish() -> None:
            with DaprClient(address=settings.dapr.grpc_endpoint) as client:
                client.publish_event(
                    pubsub_name=settings.dapr.pubsub_name,
                    topic_name=topic,
                    data=json.dumps(payload),
                    data_content_type="application/json",
                )

        await asyncio.to_thread(publish)
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert record.value is not None
    envelope = json.loads(record.value)
    # Dapr wraps the payload in a CloudEvent naming its source app and topic.
    assert envelope["data"] == payload
    assert envelope["source"] == settings.dapr.app_id
    assert envelope["topic"] == topic
    assert envelope["pubsubname"] == settings.dapr.pubsub_name


def _poll(fetch: Callable[[], WorkflowState | None], timeout: float) -> WorkflowState:
    """Retry `fetch` until it returns a state (the sidecar may still be coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = fetch()
            if state is not None:
                return state
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("workflow state not available")
        time.sleep(0.2)


def _schedule_and_wait_running(settings: Settings, instance_id: str) -> DaprWorkflowClient:
    client = _workflow_client(settings)
    client.schedule_new_workflow(wait_for_decision, input=instance_id, instance_id=instance_id)
    state = client.wait_for_workflow_start(instance_id, timeout_in_seconds=60)
    assert state is not None
    assert state.runtime_status == WorkflowStatus.RUNNING
    return client


def test_workflow_waits_for_external_event_and_completes(
    workflow_runtime: WorkflowRuntime, settings: Settings, unique: str
) -> None:
    instance_id = f"review-selftest-{unique}"
    client = _schedule_and_wait_running(settings, instance_id)

    client.raise_workflow_event(instance_id, DECISION_EVENT, data={"label": "spam"})
    state = client.wait_for_workflow_completion(instance_id, timeout_in_seconds=60)

    assert state is not None
    assert state.runtime_status == WorkflowStatus.COMPLETED
    assert json.loads(state.serialized_output or "null") == {
        "post_id": instance_id,
        "decision": {"label": "spam"},
    }
    client.close()


def test_workflow_survives_daprd_crash_while_waiting(
    workflow_runtime: WorkflowRuntime, dapr: DaprRuntime, settings: Settings, unique: str
) -> None:
    instance_id = f"review-selftest-restart-{unique}"
    client = _schedule_and_wait_running(settings, instance_id)
    client.close()

    # Crash the sidecar mid-wait (SIGKILL: no graceful shutdown), then bring it back.
    dapr.stop_sidecar(crash=True)
    dapr.start_sidecar()

    # The worker in this process reconnects to the new sidecar by itself (with backoff);
    # until then gRPC channels to the old address fail fast, so poll observable state.
    assert workflow_runtime.wait_for_worker_ready(timeout=60)
    client = _workflow_client(settings)
    state = _poll(lambda: client.get_workflow_state(instance_id), timeout=60)
    assert state.runtime_status == WorkflowStatus.RUNNING

    client.raise_workflow_event(instance_id, DECISION_EVENT, data={"label": "safe"})
    final = client.wait_for_workflow_completion(instance_id, timeout_in_seconds=90)
    client.close()

    assert final is not None
    assert final.runtime_status == WorkflowStatus.COMPLETED
    assert json.loads(final.serialized_output or "null") == {
        "post_id": instance_id,
        "decision": {"label": "safe"},
    }
    assert final.instance_id == instance_id


def test_durable_timer_fires(
    workflow_runtime: WorkflowRuntime, settings: Settings, unique: str
) -> None:
    """The scheduler delivers durable timers (the review SLA depends on them)."""
    client = _workflow_client(settings)
    instance_id = f"sla-selftest-{unique}"
    client.schedule_new_workflow(sla_expires, input=2, instance_id=instance_id)
    state = client.wait_for_workflow_completion(instance_id, timeout_in_seconds=60)
    client.close()

    assert state is not None
    assert state.runtime_status == WorkflowStatus.COMPLETED
    assert json.loads(state.serialized_output or "null") == "escalated"


def test_a_finished_workflow_s_state_is_purged_after_the_retention(
    workflow_runtime: WorkflowRuntime, dapr: DaprRuntime, settings: Settings, unique: str
) -> None:
    """daprd purges a finished instance once the app's retention passed (its config's
    `workflow.stateRetentionPolicy`), so the state store does not grow with every run."""
    review = settings.review.model_copy(update={"workflow_retention_hours": 2 / 3600})
    short = DaprRuntime(settings.model_copy(update={"review": review}))
    dapr.stop_sidecar()
    short.start_sidecar()
    try:
        assert workflow_runtime.wait_for_worker_ready(timeout=60)
        instance_id = f"review-selftest-purge-{unique}"
        client = _workflow_client(settings)

        # gRPC's connections to the restarted sidecar back off for a moment (shared by every
        # channel of this process), so the first calls may fail fast: retry until one lands.
        scheduled: list[str] = []

        def schedule() -> WorkflowState | None:
            if not scheduled:
                scheduled.append(
                    client.schedule_new_workflow(
                        wait_for_decision, input=instance_id, instance_id=instance_id
                    )
                )
            return client.get_workflow_state(instance_id)

        _poll(schedule, timeout=60)
        client.wait_for_workflow_start(instance_id, timeout_in_seconds=60)
        client.raise_workflow_event(instance_id, DECISION_EVENT, data={"label": "spam"})
        final = client.wait_for_workflow_completion(instance_id, timeout_in_seconds=60)
        assert final is not None and final.runtime_status == WorkflowStatus.COMPLETED

        deadline = time.monotonic() + 60
        while client.get_workflow_state(instance_id) is not None:
            assert time.monotonic() < deadline, "the finished instance was never purged"
            time.sleep(0.5)
        client.close()
    finally:
        short.stop_sidecar()
        dapr.start_sidecar()
        assert workflow_runtime.wait_for_worker_ready(timeout=60)
