"""A workflow's durabletask history events as payload-free steps (`WorkflowStepPublic`).

Each event keeps its time, its kind and a name (activity, timer, event, workflow); inputs,
results and event data are dropped here, because a post's text travels in them. A task's
completion or failure is matched to its scheduling by id, for its name and its duration.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moderation.db.schemas.workflows import (
    WorkflowApp,
    WorkflowInstancePublic,
    WorkflowStatus,
    WorkflowStepKind,
    WorkflowStepPublic,
)

if TYPE_CHECKING:
    # Imported where used at run time: the Dapr SDK's import costs the API's start ~0.3 s.
    from dapr.ext.workflow._durabletask.internal import history_events_pb2 as events_pb
    from dapr.ext.workflow._durabletask.internal import orchestration_pb2 as orchestration_pb

# An error message may quote what failed; a bounded excerpt is enough to read the cause.
MAX_ERROR_CHARS = 500
_STATUS_PREFIX = "ORCHESTRATION_STATUS_"
# durabletask's "never" (an external event waited for without a timeout): 9999-12-31.
_NEVER_YEAR = 9999


def timestamp(value: Any) -> datetime | None:
    """A protobuf `Timestamp` (untyped: protobuf ships no stubs) as an aware datetime, or None
    when unset."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    converted: datetime = value.ToDatetime(tzinfo=UTC)
    return converted


def status_of(value: int) -> WorkflowStatus:
    """durabletask's `OrchestrationStatus` as the API's status (`unknown` for a newer one)."""
    from dapr.ext.workflow._durabletask.internal import orchestration_pb2 as orchestration_pb

    try:
        name = orchestration_pb.OrchestrationStatus.Name(value)
    except ValueError:
        return WorkflowStatus.UNKNOWN
    try:
        return WorkflowStatus(name.removeprefix(_STATUS_PREFIX).lower())
    except ValueError:
        return WorkflowStatus.UNKNOWN


def failure_text(details: orchestration_pb.TaskFailureDetails) -> str:
    """`ErrorType: message`, shortened to `MAX_ERROR_CHARS` (never the stack trace)."""
    text = ": ".join(part for part in (details.errorType, details.errorMessage) if part)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text or "failed (no message)"


def instance_from_state(
    app: WorkflowApp, state: orchestration_pb.WorkflowState
) -> WorkflowInstancePublic:
    """An instance's summary from daprd's `WorkflowState` (fetched without inputs/outputs)."""
    failed = state.HasField("failureDetails")
    return WorkflowInstancePublic(
        app=app,
        instance_id=state.instanceId,
        workflow=state.name,
        status=status_of(state.workflowStatus),
        created_at=timestamp(state.createdTimestamp),
        updated_at=timestamp(state.lastUpdatedTimestamp),
        completed_at=timestamp(state.completedTimestamp),
        failure=failure_text(state.failureDetails) if failed else None,
    )


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _timer_name(timer: events_pb.TimerCreatedEvent) -> str | None:
    if timer.HasField("name"):
        return timer.name
    origin = timer.WhichOneof("origin")
    if origin == "externalEvent":
        return f"wait for {timer.externalEvent.name}"
    if origin == "activityRetry":
        return "activity retry"
    if origin == "childWorkflowRetry":
        return "child workflow retry"
    return None


def _finished(
    kind: WorkflowStepKind,
    scheduled_id: int,
    at: datetime | None,
    start: WorkflowStepPublic | None,
    error: str | None = None,
) -> WorkflowStepPublic:
    """The end of a task, timer or child workflow, named and timed by its start."""
    outcome = None if kind is WorkflowStepKind.TIMER_FIRED else ("failed" if error else "completed")
    return WorkflowStepPublic(
        event_id=scheduled_id,
        at=at,
        kind=kind,
        name=start.name if start is not None else None,
        outcome=outcome,
        error=error,
        duration_seconds=_seconds_between(start.at if start is not None else None, at),
    )


def _step(
    event: events_pb.HistoryEvent, starts: dict[int, WorkflowStepPublic]
) -> WorkflowStepPublic | None:
    """One event as a step (None for an event that is no step of this workflow)."""
    at = timestamp(event.timestamp)
    kind = event.WhichOneof("eventType")

    def began(step_kind: WorkflowStepKind, name: str | None) -> WorkflowStepPublic:
        return WorkflowStepPublic(event_id=event.eventId, at=at, kind=step_kind, name=name)

    if kind == "executionStarted":
        return began(WorkflowStepKind.STARTED, event.executionStarted.name)
    if kind == "taskScheduled":
        step = starts[event.eventId] = began(
            WorkflowStepKind.ACTIVITY_SCHEDULED, event.taskScheduled.name
        )
        return step
    if kind == "taskCompleted":
        task_id = event.taskCompleted.taskScheduledId
        return _finished(WorkflowStepKind.ACTIVITY_COMPLETED, task_id, at, starts.get(task_id))
    if kind == "taskFailed":
        task_id = event.taskFailed.taskScheduledId
        error = failure_text(event.taskFailed.failureDetails)
        return _finished(WorkflowStepKind.ACTIVITY_FAILED, task_id, at, starts.get(task_id), error)
    if kind == "timerCreated":
        step = starts[event.eventId] = began(
            WorkflowStepKind.TIMER_CREATED, _timer_name(event.timerCreated)
        )
        due = timestamp(event.timerCreated.fireAt)
        step.due_at = due if due is not None and due.year < _NEVER_YEAR else None
        return step
    if kind == "timerFired":
        timer_id = event.timerFired.timerId
        return _finished(WorkflowStepKind.TIMER_FIRED, timer_id, at, starts.get(timer_id))
    if kind == "eventRaised":
        return began(WorkflowStepKind.EVENT_RAISED, event.eventRaised.name)
    if kind == "eventSent":
        return began(WorkflowStepKind.EVENT_SENT, event.eventSent.name)
    if kind == "childWorkflowInstanceCreated":
        step = starts[event.eventId] = began(
            WorkflowStepKind.CHILD_STARTED, event.childWorkflowInstanceCreated.name
        )
        return step
    if kind == "childWorkflowInstanceCompleted":
        task_id = event.childWorkflowInstanceCompleted.taskScheduledId
        return _finished(WorkflowStepKind.CHILD_COMPLETED, task_id, at, starts.get(task_id))
    if kind == "childWorkflowInstanceFailed":
        task_id = event.childWorkflowInstanceFailed.taskScheduledId
        error = failure_text(event.childWorkflowInstanceFailed.failureDetails)
        return _finished(WorkflowStepKind.CHILD_FAILED, task_id, at, starts.get(task_id), error)
    if kind == "executionCompleted":
        completed = event.executionCompleted
        step = began(WorkflowStepKind.COMPLETED, None)
        step.outcome = status_of(completed.workflowStatus).value
        if completed.HasField("failureDetails"):
            step.error = failure_text(completed.failureDetails)
        return step
    if kind == "executionStalled":
        from dapr.ext.workflow._durabletask.internal import orchestration_pb2 as orchestration_pb

        stalled = event.executionStalled
        step = began(
            WorkflowStepKind.STALLED, orchestration_pb.StalledReason.Name(stalled.reason).lower()
        )
        step.error = stalled.description[:MAX_ERROR_CHARS] or None
        return step
    simple = {
        "executionTerminated": WorkflowStepKind.TERMINATED,
        "executionSuspended": WorkflowStepKind.SUSPENDED,
        "executionResumed": WorkflowStepKind.RESUMED,
        "continueAsNew": WorkflowStepKind.CONTINUED_AS_NEW,
    }
    if kind in simple:
        return began(simple[kind], None)
    # workflowStarted / workflowCompleted mark each replay of the orchestrator, and a detached
    # instance is another workflow's business: none of them is a step of this one.
    return None


def steps_from_events(history: Iterable[events_pb.HistoryEvent]) -> list[WorkflowStepPublic]:
    """The history as steps, in order, without any payload."""
    # Starts by event id: a completion names neither its activity nor its start time.
    starts: dict[int, WorkflowStepPublic] = {}
    return [step for event in history if (step := _step(event, starts)) is not None]
