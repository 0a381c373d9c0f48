"""Reading workflow instances and their history from a daprd (`services/sidecar/history.py`).

The reader talks real gRPC to an in-process `TaskHubSidecarService` that answers like daprd 1.18
(ids in creation order, paged; NOT_FOUND for an unknown history; the API token required), so
the token, the paging, the deadline and the error mapping are exercised on the wire.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import pytest
from dapr.ext.workflow._durabletask.internal import history_events_pb2 as events_pb
from dapr.ext.workflow._durabletask.internal import orchestration_pb2 as orchestration_pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as service_pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as service_grpc
from google.protobuf import timestamp_pb2, wrappers_pb2  # type: ignore[import-untyped]
from pydantic import SecretStr

from moderation.db.schemas import WorkflowApp, WorkflowStatus, WorkflowStepKind
from moderation.services.sidecar import history as history_module
from moderation.services.sidecar.history import (
    DaprWorkflowHistory,
    InstanceNotFound,
    SidecarUnavailable,
    SidecarWorkflowReader,
)
from moderation.services.sidecar.history_steps import (
    MAX_ERROR_CHARS,
    instance_from_state,
    status_of,
    steps_from_events,
)

TOKEN = "sidecar-token"
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
# What must never leave the sidecar module: a post's text rides in inputs, results and events.
POST_TEXT = "you will regret posting this, I know where you live"


def ts(seconds: float) -> Any:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds))
    return stamp


def text(value: str) -> Any:
    return wrappers_pb2.StringValue(value=value)


def review_history(*, failed: bool = False) -> list[events_pb.HistoryEvent]:
    """A review workflow's saved history: task, a decision wait with an SLA timer that fires,
    an escalation, the decision, its recording (or its failure), the end; replay markers too."""
    E = events_pb.HistoryEvent
    end_status = (
        orchestration_pb.ORCHESTRATION_STATUS_FAILED
        if failed
        else orchestration_pb.ORCHESTRATION_STATUS_COMPLETED
    )
    persist_done = (
        E(
            eventId=-1,
            timestamp=ts(20.5),
            taskFailed=events_pb.TaskFailedEvent(
                taskScheduledId=6,
                failureDetails=orchestration_pb.TaskFailureDetails(
                    errorType="ValueError", errorMessage="x" * 2000, stackTrace=text(POST_TEXT)
                ),
            ),
        )
        if failed
        else E(
            eventId=-1,
            timestamp=ts(20.5),
            taskCompleted=events_pb.TaskCompletedEvent(
                taskScheduledId=6, result=text(f'{{"text": "{POST_TEXT}"}}')
            ),
        )
    )
    return [
        E(eventId=-1, timestamp=ts(0), workflowStarted=events_pb.WorkflowStartedEvent()),
        E(
            eventId=-1,
            timestamp=ts(0),
            executionStarted=events_pb.ExecutionStartedEvent(name="review", input=text(POST_TEXT)),
        ),
        E(
            eventId=1,
            timestamp=ts(0.1),
            taskScheduled=events_pb.TaskScheduledEvent(
                name="create_review_task", input=text(POST_TEXT)
            ),
        ),
        E(
            eventId=-1,
            timestamp=ts(0.4),
            taskCompleted=events_pb.TaskCompletedEvent(taskScheduledId=1, result=text("{}")),
        ),
        E(
            eventId=2,
            timestamp=ts(0.5),
            timerCreated=events_pb.TimerCreatedEvent(
                fireAt=timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999999),
                externalEvent=events_pb.TimerOriginExternalEvent(name="decision"),
            ),
        ),
        E(
            eventId=3,
            timestamp=ts(0.5),
            timerCreated=events_pb.TimerCreatedEvent(
                fireAt=ts(6.5), createTimer=events_pb.TimerOriginCreateTimer()
            ),
        ),
        E(eventId=-1, timestamp=ts(6.6), workflowCompleted=events_pb.WorkflowCompletedEvent()),
        E(eventId=-1, timestamp=ts(6.6), timerFired=events_pb.TimerFiredEvent(timerId=3)),
        E(
            eventId=4,
            timestamp=ts(6.7),
            taskScheduled=events_pb.TaskScheduledEvent(name="escalate_review"),
        ),
        E(
            eventId=-1,
            timestamp=ts(7.0),
            taskCompleted=events_pb.TaskCompletedEvent(taskScheduledId=4),
        ),
        E(
            eventId=-1,
            timestamp=ts(20.0),
            eventRaised=events_pb.EventRaisedEvent(name="decision", input=text(POST_TEXT)),
        ),
        E(
            eventId=6,
            timestamp=ts(20.1),
            taskScheduled=events_pb.TaskScheduledEvent(
                name="persist_decision", input=text(POST_TEXT)
            ),
        ),
        persist_done,
        E(
            eventId=7,
            timestamp=ts(20.6),
            executionCompleted=events_pb.ExecutionCompletedEvent(
                workflowStatus=end_status, result=text(POST_TEXT)
            ),
        ),
    ]


def state(
    instance_id: str,
    created: float,
    status: orchestration_pb.OrchestrationStatus.ValueType,
    name: str = "review",
) -> Any:
    return orchestration_pb.WorkflowState(
        instanceId=instance_id,
        name=name,
        workflowStatus=status,
        createdTimestamp=ts(created),
        lastUpdatedTimestamp=ts(created + 1),
        input=text(POST_TEXT),
        output=text(POST_TEXT),
        customStatus=text(POST_TEXT),
    )


# --- events as steps --------------------------------------------------------------------------


def test_a_history_becomes_ordered_named_steps_with_durations() -> None:
    steps = steps_from_events(review_history())

    assert [(s.kind, s.name) for s in steps] == [
        (WorkflowStepKind.STARTED, "review"),
        (WorkflowStepKind.ACTIVITY_SCHEDULED, "create_review_task"),
        (WorkflowStepKind.ACTIVITY_COMPLETED, "create_review_task"),
        (WorkflowStepKind.TIMER_CREATED, "wait for decision"),
        (WorkflowStepKind.TIMER_CREATED, None),
        (WorkflowStepKind.TIMER_FIRED, None),
        (WorkflowStepKind.ACTIVITY_SCHEDULED, "escalate_review"),
        (WorkflowStepKind.ACTIVITY_COMPLETED, "escalate_review"),
        (WorkflowStepKind.EVENT_RAISED, "decision"),
        (WorkflowStepKind.ACTIVITY_SCHEDULED, "persist_decision"),
        (WorkflowStepKind.ACTIVITY_COMPLETED, "persist_decision"),
        (WorkflowStepKind.COMPLETED, None),
    ]
    created, completed = steps[1], steps[2]
    assert completed.event_id == created.event_id == 1
    assert completed.outcome == "completed" and completed.duration_seconds == pytest.approx(0.3)
    wait, sla, fired = steps[3:6]
    assert wait.due_at is None  # a wait without a timeout never fires
    assert sla.due_at == T0 + timedelta(seconds=6.5)
    assert fired.duration_seconds == pytest.approx(6.1) and fired.outcome is None
    assert steps[-1].outcome == "completed" and steps[-1].at == T0 + timedelta(seconds=20.6)


def test_a_failed_activity_keeps_a_short_error_and_never_the_payload() -> None:
    steps = steps_from_events(review_history(failed=True))

    failed = steps[-2]
    assert failed.kind is WorkflowStepKind.ACTIVITY_FAILED and failed.name == "persist_decision"
    assert failed.outcome == "failed"
    assert failed.error is not None and failed.error.startswith("ValueError: xxx")
    assert len(failed.error) == MAX_ERROR_CHARS
    assert steps[-1].outcome == "failed"
    dumped = "".join(step.model_dump_json() for step in steps)
    assert POST_TEXT not in dumped


def test_an_instance_summary_carries_status_and_times_but_no_payload() -> None:
    summary = instance_from_state(
        WorkflowApp.AGENT,
        state("agent-p1-v3", 5, orchestration_pb.ORCHESTRATION_STATUS_RUNNING, "classifier_agent"),
    )

    assert summary.model_dump() == {
        "app": WorkflowApp.AGENT,
        "instance_id": "agent-p1-v3",
        "workflow": "classifier_agent",
        "status": WorkflowStatus.RUNNING,
        "created_at": T0 + timedelta(seconds=5),
        "updated_at": T0 + timedelta(seconds=6),
        "completed_at": None,
        "failure": None,
    }
    assert POST_TEXT not in summary.model_dump_json()


def test_every_durabletask_status_has_a_name_and_a_new_one_is_unknown() -> None:
    for value in orchestration_pb.OrchestrationStatus.values():
        assert status_of(value) is not WorkflowStatus.UNKNOWN
    assert status_of(orchestration_pb.OrchestrationStatus.ValueType(99)) is WorkflowStatus.UNKNOWN


# --- the reader over gRPC ---------------------------------------------------------------------


class FakeSidecar(service_grpc.TaskHubSidecarServiceServicer):
    """daprd's three read calls over an in-memory set of instances, in creation order."""

    def __init__(self) -> None:
        self.states: dict[str, Any] = {}
        self.histories: dict[str, list[events_pb.HistoryEvent]] = {}
        self.tokens: list[str | None] = []
        self.page_sizes: list[int] = []
        self.transient_failures = 0
        self.delay = 0.0
        self.release = threading.Event()

    def _check(self, context: Any) -> None:
        token = dict(context.invocation_metadata()).get("dapr-api-token")
        self.tokens.append(token)
        if token != TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong api token")
        if self.delay:
            self.release.wait(self.delay)

    def ListInstanceIDs(self, request: Any, context: Any) -> Any:
        self._check(context)
        ids = list(self.states)
        start = int(request.continuationToken) if request.HasField("continuationToken") else 0
        self.page_sizes.append(request.pageSize)
        page = ids[start : start + request.pageSize]
        more = start + request.pageSize < len(ids)
        token = str(start + request.pageSize) if more else None
        return service_pb.ListInstanceIDsResponse(instanceIds=page, continuationToken=token)

    def GetInstance(self, request: Any, context: Any) -> Any:
        self._check(context)
        if self.transient_failures:
            self.transient_failures -= 1
            context.abort(grpc.StatusCode.UNKNOWN, "inbox key missing from state store")
        found = self.states.get(request.instanceId)
        if found is None:
            return service_pb.GetInstanceResponse(exists=False)
        return service_pb.GetInstanceResponse(exists=True, workflowState=found)

    def GetInstanceHistory(self, request: Any, context: Any) -> Any:
        self._check(context)
        if request.instanceId not in self.histories:
            context.abort(grpc.StatusCode.NOT_FOUND, f"workflow instance '{request.instanceId}'")
        return service_pb.GetInstanceHistoryResponse(events=self.histories[request.instanceId])


@pytest.fixture
def sidecar() -> Iterator[tuple[FakeSidecar, str]]:
    fake = FakeSidecar()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_grpc.add_TaskHubSidecarServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    fake.release.set()
    server.stop(grace=None)


def reader(address: str, token: str | None = TOKEN, timeout: float = 5.0) -> SidecarWorkflowReader:
    secret = SecretStr(token) if token is not None else None
    return SidecarWorkflowReader(
        app=WorkflowApp.REVIEW, address=address, api_token=secret, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_newest_instances_are_listed_newest_first_across_pages(
    sidecar: tuple[FakeSidecar, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, address = sidecar
    monkeypatch.setattr(history_module, "LIST_PAGE_SIZE", 3)
    running = orchestration_pb.ORCHESTRATION_STATUS_RUNNING
    for i in range(8):
        fake.states[f"review-{i}"] = state(f"review-{i}", i * 10, running)
    fake.states["review-5"] = state("review-5", 50, orchestration_pb.ORCHESTRATION_STATUS_FAILED)
    client = reader(address)

    listed = client.list_instances(limit=3)

    assert [item.instance_id for item in listed.items] == ["review-7", "review-6", "review-5"]
    assert [item.status for item in listed.items] == ["running", "running", "failed"]
    assert (listed.scanned, listed.complete) == (8, True)
    assert fake.page_sizes == [3, 3, 3]
    assert set(fake.tokens) == {TOKEN}  # every call carried the token
    client.close()


def test_a_scan_past_its_bound_says_it_is_incomplete(
    sidecar: tuple[FakeSidecar, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, address = sidecar
    monkeypatch.setattr(history_module, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(history_module, "MAX_SCANNED", 4)
    for i in range(6):
        fake.states[f"r-{i}"] = state(f"r-{i}", i, orchestration_pb.ORCHESTRATION_STATUS_COMPLETED)

    listed = reader(address).list_instances(limit=10)

    assert (listed.scanned, listed.complete) == (4, False)
    assert len(listed.items) == 4


def test_one_instance_history_and_an_unknown_one(sidecar: tuple[FakeSidecar, str]) -> None:
    fake, address = sidecar
    fake.states["review-1"] = state("review-1", 0, orchestration_pb.ORCHESTRATION_STATUS_COMPLETED)
    fake.histories["review-1"] = review_history()
    fake.transient_failures = 1  # daprd's metadata/inbox read race: retried
    client = reader(address)

    found = client.history("review-1")

    assert found.instance.status is WorkflowStatus.COMPLETED
    assert [s.name for s in found.steps if s.kind is WorkflowStepKind.ACTIVITY_COMPLETED] == [
        "create_review_task",
        "escalate_review",
        "persist_decision",
    ]
    assert POST_TEXT not in found.model_dump_json()
    with pytest.raises(InstanceNotFound):
        client.history("review-404")
    fake.states["purged-history"] = state(
        "purged-history", 0, orchestration_pb.ORCHESTRATION_STATUS_COMPLETED
    )
    with pytest.raises(InstanceNotFound):
        client.history("purged-history")  # GetInstance knows it, the history is gone


def test_a_wrong_token_is_a_refusal_not_a_crash(sidecar: tuple[FakeSidecar, str]) -> None:
    _, address = sidecar

    with pytest.raises(SidecarUnavailable) as refused:
        reader(address, token="wrong").list_instances(limit=5)

    assert (
        refused.value.reason == "the review service's workflow engine refused the API's Dapr token"
    )


def test_an_unreachable_sidecar_is_unavailable_quickly() -> None:
    client = reader(f"127.0.0.1:{free_port()}", timeout=2.0)
    started = datetime.now(UTC)

    with pytest.raises(SidecarUnavailable) as down:
        client.list_instances(limit=5)

    assert down.value.reason == "the review service's workflow engine is unreachable"
    assert down.value.detail is not None and "UNAVAILABLE" in down.value.detail
    assert datetime.now(UTC) - started < timedelta(seconds=5)


def test_a_hanging_sidecar_hits_the_deadline(sidecar: tuple[FakeSidecar, str]) -> None:
    fake, address = sidecar
    fake.delay = 5.0

    with pytest.raises(SidecarUnavailable) as slow:
        reader(address, timeout=0.3).list_instances(limit=5)

    assert slow.value.reason == "the review service's workflow engine is unreachable"
    assert slow.value.detail is not None and "DEADLINE_EXCEEDED" in slow.value.detail


async def test_the_async_gateway_bounds_the_whole_request(sidecar: tuple[FakeSidecar, str]) -> None:
    fake, address = sidecar
    fake.delay = 5.0
    gateway = DaprWorkflowHistory({WorkflowApp.REVIEW: reader(address)}, timeout=0.3)

    with pytest.raises(SidecarUnavailable, match="did not answer within 0.3s"):
        await gateway.list_instances(WorkflowApp.REVIEW, limit=5)
    fake.release.set()
    await gateway.close()
