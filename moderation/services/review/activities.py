"""The review workflow's steps as plain functions: create the task, escalate, persist a decision.

The Dapr workflow (`moderation.services.review.workflow`) calls them as activities; the embedded
demo calls
them directly, without Dapr. They write through `crud` and publish through an `EventSink`: Dapr's
Kafka pub/sub in the review service, a list in the demo and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sqlmodel import Session

from moderation.db import crud
from moderation.events import (
    Event,
    ReviewDecided,
    ReviewEscalated,
    ReviewPriority,
    ReviewRequested,
    utc_now,
)
from moderation.settings import Settings
from moderation.taxonomy import Category, Decision

if TYPE_CHECKING:
    from sqlalchemy import Engine


class EventSink(Protocol):
    """Where the activities publish their events (the Kafka key is the event's post id)."""

    def publish(self, topic: str, event: Event) -> None: ...


@dataclass
class CollectingSink:
    """Keeps what was published (the embedded demo and the tests)."""

    published: list[tuple[str, Event]] = field(default_factory=list)

    def publish(self, topic: str, event: Event) -> None:
        self.published.append((topic, event))


@dataclass(frozen=True)
class TaskCreated:
    review_id: str
    sla_seconds: float


@dataclass(frozen=True)
class DecisionOutcome:
    recorded: bool
    reason: str


def invalid_decision(decision: ReviewDecided) -> str | None:
    """Why a moderator's decision is not acceptable, or None when it is."""
    if decision.decision is Decision.REVIEW:
        return "a human decision must be allow or remove"
    if decision.decision is Decision.ALLOW and decision.label is not Category.SAFE:
        return f"allow with label {decision.label.value}: an allowed post is labelled safe"
    if decision.decision is Decision.REMOVE and decision.label is Category.SAFE:
        return "remove needs the violated category as its label"
    return None


@dataclass
class ReviewActivities:
    engine: Engine
    sink: EventSink
    settings: Settings

    def sla_seconds(self, priority: ReviewPriority) -> float:
        review = self.settings.review
        return (
            review.urgent_sla_seconds if priority is ReviewPriority.URGENT else review.sla_seconds
        )

    def create_task(self, request: ReviewRequested, now: datetime | None = None) -> TaskCreated:
        """The review row (idempotent) with its SLA deadline."""
        sla = self.sla_seconds(request.priority)
        created = (now or utc_now()) + timedelta(seconds=sla)
        with Session(self.engine) as session:
            crud.create_review_task(session, event=request, sla_due_at=created)
        return TaskCreated(review_id=request.review_id, sla_seconds=sla)

    def escalate(self, review_id: str, post_id: str, now: datetime | None = None) -> str | None:
        """Priority one step up, status escalated, a `ReviewEscalated` event; None if decided."""
        with Session(self.engine) as session:
            priority = crud.escalate_review(session, review_id=review_id, now=now or utc_now())
        if priority is None:
            return None
        self.sink.publish(
            self.settings.kafka.topics.review_escalated,
            ReviewEscalated(
                post_id=post_id,
                review_id=review_id,
                priority=ReviewPriority(priority),
                reason="undecided past its SLA",
            ),
        )
        return priority

    def persist_decision(self, decision: ReviewDecided) -> DecisionOutcome:
        """Validate, record (idempotent on the event id) and publish a moderator's decision."""
        with Session(self.engine) as session:
            review = crud.get_review(session, review_id=decision.review_id, now=utc_now())
            problem = invalid_decision(decision)
            if problem is None and (review is None or review.review.post_id != decision.post_id):
                problem = "no such review for this post"
            if problem is not None:
                # The API marked the review decided before raising the event: reopen it, so a
                # moderator can decide again (the workflow keeps waiting).
                crud.revert_decision(session, decision=decision, reason=problem)
                return DecisionOutcome(recorded=False, reason=problem)
            crud.record_human_decision(session, event=decision)
        # Published after the write: a crash in between re-runs the activity, and both the
        # write and the recorder's projection of the event are idempotent on its event id.
        self.sink.publish(self.settings.kafka.topics.review_decisions, decision)
        return DecisionOutcome(recorded=True, reason="recorded")
