"""Reads of the recorded facts: posts and their trails, verdicts, and human decisions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db import models
from moderation.db.crud._sql import _AUTOMATED_STAGES, DECISIONS, POSTS, VERDICTS, _chunks
from moderation.db.crud._tenants import Tenants, post_visible, tenant_in
from moderation.db.models import Post, Review, Verdict
from moderation.events import DEFAULT_TENANT
from moderation.taxonomy import Stage


class PostTrailRows(NamedTuple):
    """A post and everything recorded about it (the post may be missing while it is in flight)."""

    post: Post | None
    verdicts: list[Verdict]
    reviews: list[Review]
    decisions: list[models.HumanDecision]


def get_post(session: Session, *, post_id: str) -> Post | None:
    """The post, or None when it is not (yet) recorded."""
    return session.get(Post, post_id)


def get_post_trail(session: Session, *, post_id: str) -> PostTrailRows:
    """The post with its verdicts, reviews and decisions, each in the order they happened."""
    verdicts = session.exec(
        select(Verdict)
        .where(Verdict.post_id == post_id)
        .order_by(col(Verdict.occurred_at), col(Verdict.id))
    ).all()
    reviews = session.exec(
        select(Review)
        .where(Review.post_id == post_id)
        .order_by(col(Review.created_at), col(Review.id))
    ).all()
    decisions = session.exec(
        select(models.HumanDecision)
        .where(models.HumanDecision.post_id == post_id)
        .order_by(col(models.HumanDecision.decided_at), col(models.HumanDecision.id))
    ).all()
    return PostTrailRows(
        get_post(session, post_id=post_id), list(verdicts), list(reviews), list(decisions)
    )


def verdict_timings(
    session: Session, *, author_id: str, stage: Stage | str
) -> list[tuple[str, datetime, datetime]]:
    """(post_id, submitted_at, verdict recorded_at) for an author's posts with a `stage` verdict.

    One indexed join, cheap enough to poll while a benchmark runs.
    """
    statement = (
        select(Post.id, Post.submitted_at, Verdict.recorded_at)
        .join(Verdict, col(Verdict.post_id) == col(Post.id))
        .where(col(Post.author_id) == author_id, col(Verdict.stage) == str(stage))
    )
    return [
        (post_id, submitted, recorded) for post_id, submitted, recorded in session.exec(statement)
    ]


def count_author_verdicts(session: Session, *, author_id: str, stage: Stage | str) -> int:
    """How many of an author's posts have a `stage` verdict row (a benchmark's progress)."""
    statement = (
        select(sa.func.count())
        .select_from(Post)
        .join(Verdict, col(Verdict.post_id) == col(Post.id))
        .where(col(Post.author_id) == author_id, col(Verdict.stage) == str(stage))
    )
    return int(session.exec(statement).one())


class AuthorVerdict(NamedTuple):
    post_id: str
    stage: str
    decision: str
    primary_category: str
    occurred_at: datetime


def list_author_verdicts(
    session: Session, *, author_id: str, limit: int, exclude_post_id: str | None = None
) -> list[AuthorVerdict]:
    """An author's most recent verdicts, newest first (the classifier agent's history tool)."""
    statement = (
        sa.select(
            col(Verdict.post_id),
            col(Verdict.stage),
            col(Verdict.decision),
            col(Verdict.primary_category),
            col(Verdict.occurred_at),
        )
        .join(Post, col(Post.id) == col(Verdict.post_id))
        .where(col(Post.author_id) == author_id)
        .order_by(col(Verdict.occurred_at).desc(), col(Verdict.id).desc())
        .limit(limit)
    )
    if exclude_post_id is not None:
        statement = statement.where(col(Verdict.post_id) != exclude_post_id)
    return [AuthorVerdict(*row) for row in session.execute(statement).all()]


class DecidedPost(NamedTuple):
    """A past human decision with its post's text: a precedent for the agent and the moderator."""

    post_id: str
    text: str
    label: str
    decision: str
    note: str | None
    decided_at: datetime
    tenant: str = DEFAULT_TENANT


def list_human_decisions(session: Session, *, limit: int) -> list[DecidedPost]:
    """The most recent human decisions with their posts' text, newest first (precedents)."""
    statement = (
        sa.select(
            col(models.HumanDecision.post_id),
            col(Post.text),
            col(models.HumanDecision.label),
            col(models.HumanDecision.decision),
            col(models.HumanDecision.note),
            col(models.HumanDecision.decided_at),
            col(Post.tenant),
        )
        .join(Post, col(Post.id) == col(models.HumanDecision.post_id))
        .order_by(col(models.HumanDecision.decided_at).desc(), col(models.HumanDecision.id).desc())
        .limit(limit)
    )
    return [DecidedPost(*row) for row in session.execute(statement).all()]


def _automated_verdict_order() -> list[sa.ColumnElement[Any]]:
    stage_rank = sa.case((col(Verdict.stage) == Stage.AGENT.value, 0), else_=1)
    return [stage_rank, col(Verdict.occurred_at).desc(), col(Verdict.id).desc()]


def latest_automated_verdicts(session: Session, *, post_ids: Sequence[str]) -> dict[str, Verdict]:
    """post_id → its most authoritative automated verdict (agent over model, latest first)."""
    found: dict[str, Verdict] = {}
    for chunk in _chunks(list(dict.fromkeys(post_ids))):
        rows = session.exec(
            select(Verdict)
            .where(
                col(Verdict.post_id).in_(list(chunk)),
                col(Verdict.stage).in_(_AUTOMATED_STAGES),
            )
            .order_by(col(Verdict.post_id), *_automated_verdict_order())
        ).all()
        for verdict in rows:
            found.setdefault(verdict.post_id, verdict)
    return found


def latest_automated_verdict(session: Session, *, post_id: str) -> Verdict | None:
    """The post's most authoritative automated verdict (what a human decision overrides)."""
    return latest_automated_verdicts(session, post_ids=[post_id]).get(post_id)


class DecisionLogRow(NamedTuple):
    """One line of the decision log export."""

    decided_at: datetime
    review_id: str
    post_id: str
    label: str
    decision: str
    moderator: str
    note: str | None
    overrode: str | None
    policy_version: str | None


def decision_log(session: Session, *, limit: int, tenants: Tenants = None) -> list[DecisionLogRow]:
    """The latest `limit` human decisions on `tenants`' posts (None: every tenant), newest
    first, with the policy version in force (that of the automated verdict the decision
    reviewed)."""
    verdict = VERDICTS.alias("v")
    stage_rank = sa.case((verdict.c.stage == Stage.AGENT.value, 0), else_=1)
    policy_version = (
        sa.select(verdict.c.policy_version)
        .where(verdict.c.post_id == DECISIONS.c.post_id, verdict.c.stage.in_(_AUTOMATED_STAGES))
        .order_by(stage_rank, verdict.c.occurred_at.desc(), verdict.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    statement = (
        sa.select(
            DECISIONS.c.decided_at,
            DECISIONS.c.review_id,
            DECISIONS.c.post_id,
            DECISIONS.c.label,
            DECISIONS.c.decision,
            DECISIONS.c.moderator_id,
            DECISIONS.c.note,
            DECISIONS.c.overrode,
            policy_version,
        )
        .where(*post_visible(DECISIONS.c.post_id, tenants))
        .order_by(DECISIONS.c.decided_at.desc(), DECISIONS.c.id.desc())
        .limit(limit)
    )
    return [DecisionLogRow(*row) for row in session.execute(statement).all()]


def image_visible(session: Session, *, sha256: str, tenants: Tenants = None) -> bool:
    """Whether a post of `tenants` (None: any) has the image whose stored bytes hash to
    `sha256` (the posts' `images` JSON holds it as text; a hex digest cannot occur by chance)."""
    found = session.execute(
        sa.select(POSTS.c.id)
        .where(
            sa.cast(POSTS.c.images, sa.Text).contains(f'"{sha256}"', autoescape=True),
            *tenant_in(POSTS.c.tenant, tenants),
        )
        .limit(1)
    ).first()
    return found is not None


class RemovedImages(NamedTuple):
    """A post humans removed, with its images (for the nightly's shareable hash list)."""

    post_id: str
    label: str
    images: list[dict[str, Any]]
    decided_at: datetime


def removed_images(session: Session, *, until: datetime) -> list[RemovedImages]:
    """Posts with images whose latest human decision up to `until` is a removal."""
    latest = (
        sa.select(
            DECISIONS.c.post_id,
            DECISIONS.c.label,
            DECISIONS.c.decision,
            DECISIONS.c.decided_at,
            sa.func.row_number()
            .over(
                partition_by=DECISIONS.c.post_id,
                order_by=(DECISIONS.c.decided_at.desc(), DECISIONS.c.id.desc()),
            )
            .label("rank"),
        )
        .where(DECISIONS.c.decided_at <= until)
        .subquery()
    )
    rows = session.execute(
        sa.select(latest.c.post_id, latest.c.label, POSTS.c.images, latest.c.decided_at)
        .join(POSTS, POSTS.c.id == latest.c.post_id)
        .where(latest.c.rank == 1, latest.c.decision == "remove")
        .order_by(latest.c.decided_at, latest.c.post_id)
    ).all()
    return [
        RemovedImages(str(post_id), str(label), list(images), decided_at)
        for post_id, label, images, decided_at in rows
        if images
    ]
