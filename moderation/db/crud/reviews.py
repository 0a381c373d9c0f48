"""The moderators' queue: reviews, claims, decisions and escalations, all audited.

A review's stored `status` is what the last write set; a claim also runs out with time. Every
read therefore reports the *effective* status at `now` (`effective_review_status`): decided;
else claimed while a claim is live; else escalated once escalated; else pending. Writes that
take or release a review are single conditional UPDATEs, so two moderators racing for a review
(or a decision) get exactly one winner on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._post_status import _refresh_post_status
from moderation.db.crud._sql import (
    DECISIONS,
    POSTS,
    REVIEW_VOTES,
    REVIEWS,
    VERDICTS,
    _utc,
    _verdict_summary,
)
from moderation.db.crud._tenants import Tenants, post_visible
from moderation.db.crud.audit import AUDIT_ENTITY_REVIEW, append_audit, post_tenant
from moderation.db.crud.projections import record_events
from moderation.db.crud.reads import latest_automated_verdicts
from moderation.db.models import Post, Review, ReviewStatus, Verdict
from moderation.events import ReviewDecided, ReviewPriority, ReviewRequested, utc_now
from moderation.settings import DEFAULT_GROUP, ModeratorGroup, ReviewSettings

# Queue order, most urgent first.
PRIORITY_ORDER: tuple[ReviewPriority, ...] = (
    ReviewPriority.URGENT,
    ReviewPriority.HIGH,
    ReviewPriority.NORMAL,
    ReviewPriority.LOW,
)
_NEXT_PRIORITY = {
    ReviewPriority.LOW.value: ReviewPriority.NORMAL.value,
    ReviewPriority.NORMAL.value: ReviewPriority.HIGH.value,
    ReviewPriority.HIGH.value: ReviewPriority.URGENT.value,
}


def _priority_rank(column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    ranks = {priority.value: rank for rank, priority in enumerate(PRIORITY_ORDER)}
    return sa.case(ranks, value=column, else_=len(PRIORITY_ORDER))


def _live_claim(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(REVIEWS.c.claimed_by.is_not(None), REVIEWS.c.claim_expires_at > _utc(now))


def effective_review_status(now: datetime) -> sa.ColumnElement[str]:
    """SQL for a review's status at `now`: decided, claimed (live claim), escalated, pending."""
    return sa.case(
        (REVIEWS.c.status == ReviewStatus.DECIDED, ReviewStatus.DECIDED.value),
        (_live_claim(now), ReviewStatus.CLAIMED.value),
        (REVIEWS.c.escalated_at.is_not(None), ReviewStatus.ESCALATED.value),
        else_=ReviewStatus.PENDING.value,
    )


def _open_status(now: datetime) -> sa.ColumnElement[Any]:
    """What an undecided review's stored status should say at `now`."""
    return sa.case(
        (_live_claim(now), ReviewStatus.CLAIMED.value),
        (REVIEWS.c.escalated_at.is_not(None), ReviewStatus.ESCALATED.value),
        else_=ReviewStatus.PENDING.value,
    )


def voted_on(moderator: str) -> sa.ColumnElement[bool]:
    """SQL: `moderator` gave a vote on the review (double review: it needs someone else now)."""
    return sa.exists().where(
        REVIEW_VOTES.c.review_id == REVIEWS.c.review_id, REVIEW_VOTES.c.moderator_id == moderator
    )


def _claimable_by(moderator: str, now: datetime) -> sa.ColumnElement[bool]:
    """Undecided, and unclaimed, or its claim ran out, or `moderator` holds it (extends it);
    never by a moderator who already voted on it (`crud/review_votes.py`)."""
    return sa.and_(
        REVIEWS.c.status != ReviewStatus.DECIDED,
        sa.or_(
            REVIEWS.c.claimed_by.is_(None),
            REVIEWS.c.claim_expires_at.is_(None),
            REVIEWS.c.claim_expires_at <= _utc(now),
            REVIEWS.c.claimed_by == moderator,
        ),
        ~voted_on(moderator),
    )


# Where a post's language comes from (README "Bulk decisions and queue filters"): the submitter's
# metadata `lang` when given; else the language stage 1 found it written in and could not read
# (its verdict's `unreadable:language:<code>` signal). A post with neither has no known language.
LANGUAGE_SIGNAL = "unreadable:language:"


def language_is(language: str) -> sa.ColumnElement[bool]:
    """SQL: the review's post is in `language` (a code such as `ja`, compared lower-case)."""
    code = language.lower()
    declared = sa.func.lower(POSTS.c["metadata"]["lang"].as_string())
    by_metadata = sa.select(POSTS.c.id).where(declared == code)
    undeclared = sa.select(POSTS.c.id).where(sa.func.coalesce(declared, "") == "")
    # The signals are a JSON list of strings: its text holds the signal in quotes.
    by_signal = sa.select(VERDICTS.c.post_id).where(
        VERDICTS.c.stage == "model",
        sa.cast(VERDICTS.c.signals, sa.Text).contains(
            f'"{LANGUAGE_SIGNAL}{code}"', autoescape=True
        ),
    )
    return sa.or_(
        REVIEWS.c.post_id.in_(by_metadata),
        sa.and_(REVIEWS.c.post_id.in_(undeclared), REVIEWS.c.post_id.in_(by_signal)),
    )


class Routing(NamedTuple):
    """Which moderator group a review is routed to (README "Routing to moderator groups")."""

    groups: tuple[ModeratorGroup, ...] = ()
    default: str = DEFAULT_GROUP

    @classmethod
    def of(cls, review: ReviewSettings) -> Routing:
        """The routing `review.groups` and `review.default_group` configure."""
        return cls(tuple(review.groups), review.default_group)

    def names(self) -> list[str]:
        """Every group a review may be routed to, the default group last."""
        return [group.name for group in self.groups] + [self.default]


def review_group(
    groups: Sequence[ModeratorGroup], default: str = DEFAULT_GROUP
) -> sa.ColumnElement[str]:
    """SQL: the moderator group of the review: the first of `groups` whose every non-empty
    criterion matches (its category is one of the group's; its post's language, `language_is`,
    one of the group's), else `default`.

    Computed when read, never stored: the post (and so its language) may be recorded after
    its review, and the configuration may change.
    """
    whens = []
    for group in groups:
        criteria: list[sa.ColumnElement[bool]] = []
        if group.categories:
            criteria.append(REVIEWS.c.category.in_([c.value for c in group.categories]))
        if group.languages:
            criteria.append(sa.or_(*(language_is(code) for code in group.languages)))
        whens.append((sa.and_(*criteria), group.name))
    if not whens:
        return sa.cast(sa.literal(default), sa.String)
    return sa.case(*whens, else_=default)


def in_groups(routing: Routing | None, names: Collection[str]) -> sa.ColumnElement[bool]:
    """SQL: the review is routed to one of `names`."""
    routing = routing or Routing()
    return review_group(routing.groups, routing.default).in_(sorted(names))


def open_reviews_by_group(
    session: Session, *, routing: Routing | None, tenants: Tenants = None
) -> dict[str, int]:
    """How many undecided reviews (of `tenants`' posts) each group has, every group listed."""
    routing = routing or Routing()
    group = review_group(routing.groups, routing.default).label("group")
    # Grouped in an outer query: PostgreSQL sees the CASE's bound names in the SELECT and in a
    # GROUP BY as different expressions.
    routed = (
        sa.select(group)
        .where(REVIEWS.c.status != ReviewStatus.DECIDED, *post_visible(REVIEWS.c.post_id, tenants))
        .subquery()
    )
    counts = dict(
        session.execute(sa.select(routed.c.group, sa.func.count()).group_by(routed.c.group)).all()
    )
    return {name: int(counts.get(name, 0)) for name in routing.names()}


def by_author(author_id: str) -> sa.ColumnElement[bool]:
    """SQL: the review's post is by `author_id` (of whichever tenant the other filters allow)."""
    return REVIEWS.c.post_id.in_(sa.select(POSTS.c.id).where(POSTS.c.author_id == author_id))


class ReviewView(NamedTuple):
    """A review as moderators see it: its row, its status at the time of reading, its post and
    the automated verdict it reviews (the post or verdict may not be recorded yet)."""

    review: Review
    status: ReviewStatus
    text: str | None
    author_id: str | None
    verdict: Verdict | None
    tenant: str | None = None  # the post's (None while the post is not recorded)
    group: str = DEFAULT_GROUP  # the moderator group it is routed to at the time of reading
    votes: int = 0  # double review: judgements already given (`crud/review_votes.py`)
    images: tuple[dict[str, Any], ...] = ()  # the post's images (`events.ImageRef` dumps)


def _review_query(
    now: datetime, routing: Routing | None = None
) -> sa.Select[Review, str, str, str, str, str, list[dict[str, Any]]]:
    routing = routing or Routing()
    return sa.select(
        Review,
        effective_review_status(now).label("effective_status"),
        col(Post.text),
        col(Post.author_id),
        col(Post.tenant),
        review_group(routing.groups, routing.default).label("review_group"),
        col(Post.images),
    ).outerjoin(Post, col(Post.id) == col(Review.post_id))


def _vote_counts(session: Session, *, review_ids: Sequence[str]) -> dict[str, int]:
    """How many votes each of the reviews has (those without votes are left out)."""
    if not review_ids:
        return {}
    rows = session.execute(
        sa.select(REVIEW_VOTES.c.review_id, sa.func.count())
        .where(REVIEW_VOTES.c.review_id.in_(sorted(set(review_ids))))
        .group_by(REVIEW_VOTES.c.review_id)
    ).all()
    return {str(review_id): int(count) for review_id, count in rows}


def _views(session: Session, rows: Sequence[Any]) -> list[ReviewView]:
    verdicts = latest_automated_verdicts(session, post_ids=[row[0].post_id for row in rows])
    votes = _vote_counts(session, review_ids=[row[0].review_id for row in rows])
    return [
        ReviewView(
            review,
            ReviewStatus(status),
            text,
            author_id,
            verdicts.get(review.post_id),
            tenant,
            str(group),
            votes.get(review.review_id, 0),
            tuple(images or ()),
        )
        for review, status, text, author_id, tenant, group, images in rows
    ]


def list_reviews(
    session: Session,
    *,
    now: datetime,
    status: ReviewStatus | str | None = None,
    category: str | None = None,
    priority: ReviewPriority | str | None = None,
    limit: int = 50,
    offset: int = 0,
    tenants: Tenants = None,
    language: str | None = None,
    author_id: str | None = None,
    routing: Routing | None = None,
    groups: Collection[str] | None = None,
) -> tuple[list[ReviewView], int]:
    """A page of the queue, most urgent priority first, oldest first within a priority.

    Args:
        now: the time the effective status (and the `status` filter) refers to.
        status: only reviews whose effective status is this; by default the open queue
            (every status but decided).
        category: only reviews of this category.
        priority: only reviews of this priority.
        limit: the page size.
        offset: reviews skipped before the page.
        tenants: only reviews of these tenants' posts (None: every tenant).
        language: only reviews of posts in this language (`language_is`).
        author_id: only reviews of this author's posts.
        routing: the moderator groups (`Routing.of(settings.review)`; None: none configured).
        groups: only reviews routed to these groups (None: every group).

    Returns:
        The page and the number of reviews that match the filters.
    """
    filters = post_visible(REVIEWS.c.post_id, tenants)
    if status is not None:
        filters.append(effective_review_status(now) == ReviewStatus(status).value)
    else:
        filters.append(REVIEWS.c.status != ReviewStatus.DECIDED.value)
    if category is not None:
        filters.append(REVIEWS.c.category == category)
    if priority is not None:
        filters.append(REVIEWS.c.priority == ReviewPriority(priority).value)
    if language is not None:
        filters.append(language_is(language))
    if author_id is not None:
        filters.append(by_author(author_id))
    if groups is not None:
        filters.append(in_groups(routing, groups))
    statement = (
        _review_query(now, routing)
        .where(*filters)
        .order_by(
            _priority_rank(REVIEWS.c.priority), REVIEWS.c.created_at.asc(), REVIEWS.c.id.asc()
        )
        .limit(limit)
        .offset(offset)
    )
    rows = session.execute(statement).all()
    total = session.execute(sa.select(sa.func.count()).select_from(REVIEWS).where(*filters))
    return _views(session, rows), int(total.scalar_one())


def get_review(
    session: Session,
    *,
    review_id: str,
    now: datetime,
    tenants: Tenants = None,
    routing: Routing | None = None,
) -> ReviewView | None:
    """The review with its effective status and group (by `routing`) at `now`, or None (also
    when its post is not one of `tenants`; None: every tenant)."""
    row = session.execute(
        _review_query(now, routing)
        .where(REVIEWS.c.review_id == review_id, *post_visible(REVIEWS.c.post_id, tenants))
        .execution_options(populate_existing=True)
    ).first()
    return _views(session, [row])[0] if row is not None else None


def _review_state(view: ReviewView) -> dict[str, Any]:
    review = view.review
    return {
        "status": view.status.value,
        "priority": review.priority,
        "claimed_by": review.claimed_by,
        "claim_expires_at": review.claim_expires_at,
        "decided_by": review.decided_by,
        "decided_at": review.decided_at,
    }


def _audit_review(
    session: Session,
    *,
    actor: str,
    action: str,
    before: ReviewView,
    after: dict[str, Any],
    at: datetime,
) -> None:
    verdict = before.verdict
    append_audit(
        session,
        actor=actor,
        action=action,
        entity=AUDIT_ENTITY_REVIEW,
        entity_id=before.review.review_id,
        before=_review_state(before),
        after={
            **after,
            "post_id": before.review.post_id,
            "automated_verdict": _verdict_summary(verdict),
            "policy_version": verdict.policy_version if verdict is not None else None,
        },
        tenant=post_tenant(session, post_id=before.review.post_id),
        at=at,
        commit=False,
    )


def claim_review(
    session: Session,
    *,
    review_id: str,
    moderator: str,
    now: datetime,
    claim_seconds: float,
    tenants: Tenants = None,
    routing: Routing | None = None,
    groups: Collection[str] | None = None,
) -> ReviewView | None:
    """Claim a review for `moderator` until `now + claim_seconds` (audited as `review.claim`).

    One conditional UPDATE: it succeeds when the review is undecided and unclaimed, or its
    claim ran out, or `moderator` already holds it (the claim is then extended), and it is
    routed (by `routing`) to one of `groups` (None: any group).

    Returns:
        The claimed review, or None when it does not exist (or its post is not one of
        `tenants`), is decided, someone else holds a live claim or it is routed to another
        group (`get_review` tells which).
    """
    now = _utc(now)
    before = get_review(session, review_id=review_id, now=now, tenants=tenants, routing=routing)
    if before is None:
        return None
    expires = now + timedelta(seconds=claim_seconds)
    routed = [in_groups(routing, groups)] if groups is not None else []
    claimed = session.execute(
        sa.update(REVIEWS)
        .where(REVIEWS.c.review_id == review_id, _claimable_by(moderator, now), *routed)
        .values(
            claimed_by=moderator,
            claim_expires_at=expires,
            status=ReviewStatus.CLAIMED,
            updated_at=now,
        )
        .returning(REVIEWS.c.id)
    ).first()
    if claimed is None:
        session.rollback()
        return None
    after = {"status": ReviewStatus.CLAIMED.value, "claimed_by": moderator}
    _audit_review(
        session,
        actor=moderator,
        action="review.claim",
        before=before,
        after={**after, "claim_expires_at": expires, "priority": before.review.priority},
        at=now,
    )
    session.commit()
    return get_review(session, review_id=review_id, now=now, routing=routing)


def claim_next(
    session: Session,
    *,
    moderator: str,
    now: datetime,
    claim_seconds: float,
    category: str | None = None,
    attempts: int = 5,
    tenants: Tenants = None,
    language: str | None = None,
    routing: Routing | None = None,
    groups: Collection[str] | None = None,
) -> ReviewView | None:
    """Claim the most urgent, oldest review `moderator` may claim (its own claim included),
    among the reviews of `tenants`' posts (None: every tenant) routed (by `routing`) to one of
    `groups` (None: any group).

    Returns:
        The claimed review, or None when nothing is claimable.
    """
    now = _utc(now)
    filters = [_claimable_by(moderator, now), *post_visible(REVIEWS.c.post_id, tenants)]
    if category is not None:
        filters.append(REVIEWS.c.category == category)
    if language is not None:
        filters.append(language_is(language))
    if groups is not None:
        filters.append(in_groups(routing, groups))
    candidates = (
        sa.select(REVIEWS.c.review_id)
        .where(*filters)
        .order_by(
            _priority_rank(REVIEWS.c.priority), REVIEWS.c.created_at.asc(), REVIEWS.c.id.asc()
        )
    )
    skipped: set[str] = set()
    for _ in range(attempts):
        statement = candidates
        if skipped:
            statement = statement.where(REVIEWS.c.review_id.not_in(sorted(skipped)))
        review_id = session.execute(statement.limit(1)).scalar_one_or_none()
        session.commit()  # end the read: the claim below is its own conditional write
        if review_id is None:
            return None
        claimed = claim_review(
            session,
            review_id=review_id,
            moderator=moderator,
            now=now,
            claim_seconds=claim_seconds,
            tenants=tenants,
            routing=routing,
            groups=groups,
        )
        if claimed is not None:
            return claimed
        skipped.add(review_id)  # another moderator was faster: take the next one
    return None


class DecisionStart(StrEnum):
    """What `begin_decision` did."""

    STARTED = "started"
    NOT_FOUND = "not_found"
    ALREADY_DECIDED = "already_decided"
    NOT_CLAIMER = "not_claimer"


def begin_decision(session: Session, *, decision: ReviewDecided, is_admin: bool) -> DecisionStart:
    """Mark the review decided before the workflow records `decision` (audited `review.decide`).

    One conditional UPDATE: only an undecided review, and only by the moderator who claimed it
    (an admin may decide any undecided review), so a second decision finds it decided.
    `decided_at` is the decision's `occurred_at`, which `revert_decision` matches on.
    """
    review_id = decision.review_id
    moderator = decision.moderator_id
    at = _utc(decision.occurred_at)
    before = get_review(session, review_id=review_id, now=at)
    if before is None:
        return DecisionStart.NOT_FOUND
    conditions = [REVIEWS.c.review_id == review_id, REVIEWS.c.status != ReviewStatus.DECIDED]
    if not is_admin:
        conditions.append(REVIEWS.c.claimed_by == moderator)
    started = session.execute(
        sa.update(REVIEWS)
        .where(*conditions)
        .values(status=ReviewStatus.DECIDED, decided_at=at, decided_by=moderator, updated_at=at)
        .returning(REVIEWS.c.id)
    ).first()
    if started is None:
        session.rollback()
        current = get_review(session, review_id=review_id, now=at)
        if current is None:
            return DecisionStart.NOT_FOUND
        if current.status is ReviewStatus.DECIDED:
            return DecisionStart.ALREADY_DECIDED
        return DecisionStart.NOT_CLAIMER
    _audit_review(
        session,
        actor=moderator,
        action="review.decide",
        before=before,
        after={
            "status": ReviewStatus.DECIDED.value,
            "decided_by": moderator,
            "decision_event_id": decision.event_id,
            "label": decision.label.value,
            "decision": decision.decision.value,
            "note": decision.note,
            "overrode": decision.overrode.value if decision.overrode is not None else None,
            "as_admin": is_admin and before.review.claimed_by != moderator,
        },
        at=at,
    )
    _refresh_post_status(session, post_id=before.review.post_id)
    session.commit()
    return DecisionStart.STARTED


def revert_decision(session: Session, *, decision: ReviewDecided, reason: str) -> bool:
    """Undo `begin_decision` when the workflow could not be told (audited `review.decide.revert`).

    Only that attempt is undone (same moderator and time), and never once the decision was
    recorded. The review goes back to claimed (a live claim), escalated or pending.

    Returns:
        Whether the review was reopened.
    """
    at = _utc(decision.occurred_at)
    now = max(at, utc_now())
    recorded = sa.exists().where(DECISIONS.c.review_id == REVIEWS.c.review_id)
    reopened = session.execute(
        sa.update(REVIEWS)
        .where(
            REVIEWS.c.review_id == decision.review_id,
            REVIEWS.c.status == ReviewStatus.DECIDED,
            REVIEWS.c.decided_by == decision.moderator_id,
            REVIEWS.c.decided_at == at,
            ~recorded,
        )
        .values(status=_open_status(now), decided_at=None, decided_by=None, updated_at=now)
        .returning(REVIEWS.c.post_id)
    ).first()
    if reopened is None:
        session.rollback()
        return False
    append_audit(
        session,
        actor=decision.moderator_id,
        action="review.decide.revert",
        entity=AUDIT_ENTITY_REVIEW,
        entity_id=decision.review_id,
        before={"status": ReviewStatus.DECIDED.value, "decision_event_id": decision.event_id},
        after={"reason": reason},
        tenant=post_tenant(session, post_id=reopened.post_id),
        at=now,
        commit=False,
    )
    _refresh_post_status(session, post_id=reopened.post_id)
    session.commit()
    return True


def create_review_task(session: Session, *, event: ReviewRequested, sla_due_at: datetime) -> Review:
    """The review workflow's first activity: the review row of `event`, with its SLA.

    Idempotent: the row is inserted if neither the recorder nor an earlier attempt did, and
    `sla_due_at` is set only when it is not set yet.
    """
    record_events(session, events=[event])
    session.execute(
        sa.update(REVIEWS)
        .where(REVIEWS.c.review_id == event.review_id, REVIEWS.c.sla_due_at.is_(None))
        .values(sla_due_at=_utc(sla_due_at), updated_at=utc_now())
    )
    session.commit()
    return session.exec(
        select(Review)
        .where(Review.review_id == event.review_id)
        .execution_options(populate_existing=True)
    ).one()


def escalate_review(
    session: Session, *, review_id: str, now: datetime, reason: str = "sla expired"
) -> str | None:
    """Raise an undecided review's priority one step (urgent stays urgent) and mark it escalated.

    A live claim is kept (its status stays claimed); audited as `review.escalate`.

    Returns:
        The new priority, or None when the review does not exist or is decided.
    """
    now = _utc(now)
    before = get_review(session, review_id=review_id, now=now)
    if before is None:
        return None
    raised = sa.case(_NEXT_PRIORITY, value=REVIEWS.c.priority, else_=ReviewPriority.URGENT.value)
    row = session.execute(
        sa.update(REVIEWS)
        .where(REVIEWS.c.review_id == review_id, REVIEWS.c.status != ReviewStatus.DECIDED)
        .values(
            priority=raised,
            escalated_at=now,
            status=sa.case(
                (_live_claim(now), ReviewStatus.CLAIMED.value),
                else_=ReviewStatus.ESCALATED.value,
            ),
            updated_at=now,
        )
        .returning(REVIEWS.c.priority)
    ).first()
    if row is None:
        session.rollback()
        return None
    priority = str(row.priority)
    _audit_review(
        session,
        actor="review-workflow",
        action="review.escalate",
        before=before,
        after={"priority": priority, "escalated_at": now, "reason": reason},
        at=now,
    )
    session.commit()
    return priority


def record_human_decision(session: Session, *, event: ReviewDecided) -> bool:
    """The review workflow's persist activity: record the decision, close its review.

    Idempotent on the decision's event id (the recorder projects the same event).

    Returns:
        Whether the decision was new.
    """
    return record_events(session, events=[event]).inserted["decisions"] == 1
