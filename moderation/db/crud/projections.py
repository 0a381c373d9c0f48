"""Projections of the Kafka topics into the read model: `record_events` and its row builders.

Projections are idempotent: each is an `INSERT ... ON CONFLICT DO NOTHING` on the event's natural
key (posts.id, verdicts (post_id, stage, model_version), reviews.review_id, decisions.event_id),
so a redelivered event is harmless. `record_events` writes a whole consumer batch with one round
trip per table, then recomputes the derived status of every post the batch touched in the same
transaction (the rules are in `_post_status`). A review row is an upsert on `review_id` shared by
two writers: the recorder's projection of `review.requested` and the review workflow's
`create_review_task`, which also sets the SLA (whichever comes first inserts; neither overwrites
what the other or a moderator changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from moderation.db.crud._post_status import (
    _derived_post_status,
    _lock_status_recompute,
    _refresh_derived_status,
)
from moderation.db.crud._sql import (
    DECISIONS,
    POSTS,
    REVIEWS,
    VERDICTS,
    _dialect,
    _insert_ignore,
    _utc,
)
from moderation.db.crud.report_outcomes import resolve_reports
from moderation.db.crud.strikes import apply_enforcement
from moderation.db.models import PostStatus, ReviewStatus
from moderation.events import (
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewRequested,
    review_id_for,
    utc_now,
)
from moderation.policy import EnforcementPolicy


@dataclass
class RecordResult:
    """What `record_events` did, per table: events received and rows actually inserted."""

    received: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return sum(self.received.values()) - sum(self.inserted.values())


def _post_row(event: PostSubmitted, now: datetime) -> dict[str, Any]:
    return {
        "id": event.post_id,
        "text": event.text,
        "author_id": event.author_id,
        "tenant": event.tenant,
        "external_id": event.external_id,
        "metadata": dict(event.metadata),
        "images": [image.model_dump(mode="json") for image in event.images],
        "status": PostStatus.PENDING,
        "submitted_at": _utc(event.submitted_at),
        "recorded_at": now,
    }


def _verdict_row(event: ModerationVerdict, now: datetime) -> dict[str, Any]:
    return {
        "post_id": event.post_id,
        "event_id": event.event_id,
        "stage": event.stage.value,
        "decision": event.decision.value,
        "primary_category": event.primary_category.value,
        "confidence": event.confidence,
        "scores": {category.value: score for category, score in event.scores.items()},
        "model_version": event.model_version,
        "policy_version": event.policy_version,
        "rationale": event.rationale,
        "policy_sections": [category.value for category in event.policy_sections],
        "signals": list(event.signals),
        "latency_ms": event.latency_ms,
        "config_version": event.config_version,
        "occurred_at": _utc(event.occurred_at),
        "recorded_at": now,
    }


def _review_row(event: ReviewRequested, now: datetime) -> dict[str, Any]:
    return {
        "review_id": event.review_id,
        "post_id": event.post_id,
        "appeal_of": event.appeal_of,
        "status": ReviewStatus.PENDING,
        "priority": event.priority.value,
        "reason": event.reason,
        "category": event.verdict.primary_category.value,
        "created_at": _utc(event.occurred_at),
        "updated_at": now,
    }


def _decision_review_id(event: ReviewDecided) -> str:
    # Decisions from before review ids existed decided the post's one review.
    return event.review_id or review_id_for(event.post_id)


def _decision_row(event: ReviewDecided) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "review_id": _decision_review_id(event),
        "post_id": event.post_id,
        "label": event.label.value,
        "decision": event.decision.value,
        "moderator_id": event.moderator_id,
        "note": event.note,
        "overrode": event.overrode.value if event.overrode is not None else None,
        "decided_at": _utc(event.occurred_at),
    }


def record_events(
    session: Session, *, events: Sequence[Event], enforcement: EnforcementPolicy | None = None
) -> RecordResult:
    """Record a batch of events of any topic: one insert per table, then the derived statuses.

    Idempotent: events already recorded (same natural key) are ignored.

    With `enforcement` (the recorder's call) the consequences are derived in the same
    transaction: the strikes of the posts the batch touched and the ladder's actions
    (`strikes.apply_enforcement`), and the resolution of reports on posts decided
    (`report_outcomes.resolve_reports`). Other writers (the review workflow, the API) leave
    them to the recorder, which reads the same events from Kafka.

    Raises:
        TypeError: for an event type that has no table.
    """
    now = utc_now()
    keyed: dict[str, dict[Any, dict[str, Any]]] = {
        "posts": {},
        "verdicts": {},
        "reviews": {},
        "decisions": {},
    }
    received = dict.fromkeys(keyed, 0)
    key: Any
    for event in events:
        # The first of several copies in one batch wins, as the database keeps the first row.
        if isinstance(event, PostSubmitted):
            kind, key, row = "posts", event.post_id, _post_row(event, now)
        elif isinstance(event, ModerationVerdict):
            key = (event.post_id, event.stage.value, event.model_version)
            kind, row = "verdicts", _verdict_row(event, now)
        elif isinstance(event, ReviewRequested):
            kind, key, row = "reviews", event.review_id, _review_row(event, now)
        elif isinstance(event, ReviewDecided):
            kind, key, row = "decisions", event.event_id, _decision_row(event)
        else:
            raise TypeError(f"no table records {type(event).__name__}")
        received[kind] += 1
        keyed[kind].setdefault(key, row)

    # Facts about posts first; then the posts, which take the status those facts imply.
    inserted = {
        "verdicts": _insert_ignore(
            session,
            VERDICTS,
            list(keyed["verdicts"].values()),
            ["post_id", "stage", "model_version"],
        ),
        "reviews": _insert_ignore(session, REVIEWS, list(keyed["reviews"].values()), ["review_id"]),
        "decisions": _insert_ignore(
            session, DECISIONS, list(keyed["decisions"].values()), ["event_id"]
        ),
    }
    facts = {
        row["post_id"]
        for kind in ("verdicts", "reviews", "decisions")
        for row in keyed[kind].values()
    }
    # Reviews that may have to close: the ones recorded now, and the ones decided now.
    closing = sorted(
        {row["review_id"] for kind in ("reviews", "decisions") for row in keyed[kind].values()}
    )
    posts = list(keyed["posts"].values())
    if _dialect(session) == "postgresql":
        _lock_status_recompute(session)
        # New posts get their derived status as they are inserted (no second write): only
        # posts that existed before need the recompute.
        inserted["posts"] = _insert_ignore(
            session, POSTS, posts, ["id"], derived_status=_derived_post_status
        )
        _refresh_derived_status(session, post_ids=sorted(facts), review_ids=closing)
    else:
        inserted["posts"] = _insert_ignore(session, POSTS, posts, ["id"])
        touched = sorted(facts | {row["id"] for row in posts})
        _refresh_derived_status(session, post_ids=touched, review_ids=closing)
    if enforcement is not None:
        # Strikes follow verdicts and decisions; a post recorded late carries its author.
        struck = {row["id"] for row in posts} | {
            row["post_id"] for kind in ("verdicts", "decisions") for row in keyed[kind].values()
        }
        apply_enforcement(session, post_ids=sorted(struck), policy=enforcement, now=now)
        decided = sorted({row["post_id"] for row in keyed["decisions"].values()})
        resolve_reports(session, post_ids=decided, now=now)
    session.commit()
    return RecordResult(received=received, inserted=inserted)


def _record_one(session: Session, event: Event, kind: str) -> bool:
    return record_events(session, events=[event]).inserted[kind] == 1


def record_review_requested(session: Session, *, event: ReviewRequested) -> bool:
    """Open a pending review (`event.review_id`); returns False when it already exists."""
    return _record_one(session, event, "reviews")
