"""Shapes of `/v1/workflows`: the Dapr workflow instances of the agent and review services.

Names, statuses, times and error messages only: no workflow input, output or event payload (a
post's text travels in them) is ever part of these shapes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel


class WorkflowApp(StrEnum):
    """The Dapr apps that run workflows, each with its own daprd."""

    AGENT = "agent"
    REVIEW = "review"


class WorkflowStatus(StrEnum):
    """Dapr's runtime status of an instance (durabletask's `OrchestrationStatus`)."""

    RUNNING = "running"
    COMPLETED = "completed"
    CONTINUED_AS_NEW = "continued_as_new"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    PENDING = "pending"
    SUSPENDED = "suspended"
    STALLED = "stalled"
    UNKNOWN = "unknown"


class WorkflowStepKind(StrEnum):
    """What one event of an instance's history records."""

    STARTED = "started"
    ACTIVITY_SCHEDULED = "activity_scheduled"
    ACTIVITY_COMPLETED = "activity_completed"
    ACTIVITY_FAILED = "activity_failed"
    TIMER_CREATED = "timer_created"
    TIMER_FIRED = "timer_fired"
    EVENT_RAISED = "event_raised"
    EVENT_SENT = "event_sent"
    CHILD_STARTED = "child_started"
    CHILD_COMPLETED = "child_completed"
    CHILD_FAILED = "child_failed"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STALLED = "stalled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    COMPLETED = "completed"


class WorkflowInstancePublic(SQLModel):
    """One workflow instance, as its daprd reports it."""

    app: WorkflowApp
    instance_id: str = Field(description="e.g. the review id, or `agent-<post_id>-<policy>`")
    workflow: str = Field(
        description="the workflow's registered name (`review`, `classifier_agent`)"
    )
    status: WorkflowStatus
    created_at: datetime | None
    updated_at: datetime | None = Field(description="when its state last changed")
    completed_at: datetime | None = None
    failure: str | None = Field(
        default=None, description="a failed instance's error type and message (shortened)"
    )


class WorkflowInstancesPublic(SQLModel):
    """`GET /v1/workflows`: the newest instances of one app."""

    app: WorkflowApp
    items: list[WorkflowInstancePublic] = Field(description="newest first")
    scanned: int = Field(description="instance ids the sidecar listed to find the newest")
    complete: bool = Field(
        description="false when there were more ids than the scan reads: the newest may be missing"
    )


class WorkflowStepPublic(SQLModel):
    """One event of an instance's history, without its payload."""

    event_id: int = Field(description="the event's id in the history (a task's id for its tasks)")
    at: datetime | None
    kind: WorkflowStepKind
    name: str | None = Field(
        default=None,
        description="the activity, timer, event or workflow name (`create_review_task`)",
    )
    outcome: str | None = Field(
        default=None, description="`completed` or `failed` for a task; the final status"
    )
    error: str | None = Field(default=None, description="a failure's type and message (shortened)")
    duration_seconds: float | None = Field(
        default=None, description="for a finished task or fired timer: since it was scheduled"
    )
    due_at: datetime | None = Field(
        default=None, description="when a timer fires (none for a wait without a timeout)"
    )


class WorkflowHistoryPublic(SQLModel):
    """`GET /v1/workflows/{app}/{instance_id}`: an instance and its step history."""

    instance: WorkflowInstancePublic
    steps: list[WorkflowStepPublic] = Field(description="in the order they happened")
