"""Database reads and single-event writes that only the tests use, over the same `Session`.

The application's database API is `moderation.db.crud`; these helpers let tests record one event
at a time and count or list what was recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.models import AuditLog, HumanDecision, ModelVersion, Post, PostStatus, Verdict
from moderation.events import Event, ModerationVerdict, PostSubmitted, ReviewDecided
from moderation.taxonomy import Stage

# Bounded IN lists, as in crud: far below the databases' bind-parameter limits.
_IN_CHUNK = 5_000


def _record_one(session: Session, event: Event, kind: str) -> bool:
    return crud.record_events(session, events=[event]).inserted[kind] == 1


def record_post_submitted(session: Session, *, event: PostSubmitted) -> bool:
    """Record a submitted post; returns False when it was already recorded."""
    return _record_one(session, event, "posts")


def record_verdict(session: Session, *, event: ModerationVerdict) -> bool:
    """Record a stage's verdict; returns False for a duplicate (post, stage, model version)."""
    return _record_one(session, event, "verdicts")


def record_review_decided(session: Session, *, event: ReviewDecided) -> bool:
    """Append a human decision; returns False when this decision event was already recorded."""
    return _record_one(session, event, "decisions")


def post_statuses(session: Session, *, post_ids: Sequence[str]) -> dict[str, PostStatus]:
    """post_id → status, for the recorded posts among `post_ids`."""
    statuses: dict[str, PostStatus] = {}
    for start in range(0, len(post_ids), _IN_CHUNK):
        chunk = post_ids[start : start + _IN_CHUNK]
        rows = session.exec(select(Post.id, Post.status).where(col(Post.id).in_(list(chunk))))
        statuses.update((post_id, PostStatus(status)) for post_id, status in rows.all())
    return statuses


def _verdict_filters(post_ids: Sequence[str] | None, stage: Stage | str | None) -> list[Any]:
    filters: list[Any] = []
    if post_ids is not None:
        filters.append(col(Verdict.post_id).in_(list(post_ids)))
    if stage is not None:
        filters.append(col(Verdict.stage) == Stage(stage).value)
    return filters


def count_posts(
    session: Session, *, post_ids: Sequence[str] | None = None, status: PostStatus | None = None
) -> int:
    """How many posts are recorded (optionally among `post_ids`, with `status`)."""
    statement = select(sa.func.count()).select_from(Post)
    if post_ids is not None:
        statement = statement.where(col(Post.id).in_(list(post_ids)))
    if status is not None:
        statement = statement.where(col(Post.status) == status)
    return int(session.exec(statement).one())


def count_verdicts(
    session: Session, *, post_ids: Sequence[str] | None = None, stage: Stage | str | None = None
) -> int:
    """How many verdict rows exist (optionally for `post_ids`, of `stage`)."""
    statement = (
        select(sa.func.count()).select_from(Verdict).where(*_verdict_filters(post_ids, stage))
    )
    return int(session.exec(statement).one())


def verdicts_per_post(
    session: Session, *, post_ids: Sequence[str] | None = None, stage: Stage | str | None = None
) -> dict[str, int]:
    """post_id → number of verdict rows (posts without verdicts are absent)."""
    statement = (
        select(Verdict.post_id, sa.func.count())
        .where(*_verdict_filters(post_ids, stage))
        .group_by(col(Verdict.post_id))
    )
    return {post_id: int(count) for post_id, count in session.exec(statement).all()}


def count_decisions(session: Session, *, post_ids: Sequence[str] | None = None) -> int:
    """How many human decisions are recorded (optionally for `post_ids`)."""
    statement = select(sa.func.count()).select_from(HumanDecision)
    if post_ids is not None:
        statement = statement.where(col(HumanDecision.post_id).in_(list(post_ids)))
    return int(session.exec(statement).one())


def list_verdicts(
    session: Session, *, post_ids: Sequence[str] | None = None, stage: Stage | str | None = None
) -> list[Verdict]:
    """Verdict rows (optionally for `post_ids`, of `stage`), oldest first."""
    statement = (
        select(Verdict)
        .where(*_verdict_filters(post_ids, stage))
        .order_by(col(Verdict.occurred_at), col(Verdict.id))
    )
    return list(session.exec(statement).all())


def list_audit(
    session: Session, *, entity: str | None = None, entity_id: str | None = None
) -> list[AuditLog]:
    """Audit entries (optionally of one entity), oldest first."""
    statement = select(AuditLog)
    if entity is not None:
        statement = statement.where(AuditLog.entity == entity)
    if entity_id is not None:
        statement = statement.where(AuditLog.entity_id == entity_id)
    return list(session.exec(statement.order_by(col(AuditLog.at), col(AuditLog.id))).all())


def list_model_versions(session: Session, *, kind: str) -> list[ModelVersion]:
    """Every registered version of `kind`, newest first."""
    return list(
        session.exec(
            select(ModelVersion)
            .where(ModelVersion.kind == kind)
            .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        ).all()
    )
