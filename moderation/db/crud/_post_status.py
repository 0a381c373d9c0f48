"""Private: the derived post status, recomputed in the transaction that changes its inputs.

Post status is *derived*, never set by an event directly: in the same transaction as the facts
of a batch, the status of every post the batch touched is recomputed from the rows present:

1. `in_review` while an *appeal* review of the post is open (not decided): an appeal reopens a
   decided post until a moderator decides it again;
2. else `decided` when a human decision (or a `human`-stage verdict) exists; decisions are
   append-only, so only an appeal moves a decided post (back to `in_review`, then `decided`);
3. else the most authoritative automated verdict (an `agent` verdict over a `model` one; the
   latest among equals) maps allow → `allowed`, remove → `removed`, review → `in_review`;
4. else `in_review` when a review was requested, else `pending`.

A decision closes the review it names (`decisions.review_id`; a decision event without one, from
before appeals existed, names the post's first review `review-<post_id>`). The review API marks a
review decided the moment a moderator decides (before the workflow records the decision), and the
post's status is refreshed with it.

Because the status is a function of the rows and not of the arrival order, events may arrive in
any order: a verdict recorded before its post (different topics, different partitions) simply
waits in `verdicts`, and the post takes the verdict's status when it is recorded. On PostgreSQL a
new post is inserted with its derived status (one write), and only posts recorded earlier are
updated; both happen under a transaction-scoped advisory lock taken after the verdicts, reviews
and decisions are inserted, so two recorders committing related facts at the same time cannot
leave a stale status: the later one takes its snapshot after the earlier one committed.

Used by `projections` (every recorded batch) and `reviews` (a decision taken or reverted); the
functions here never commit: their caller's transaction holds the facts and the status together.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session

from moderation.db.crud._sql import DECISIONS, POSTS, REVIEWS, VERDICTS, _chunks, _dialect
from moderation.db.models import PostStatus, ReviewStatus
from moderation.events import utc_now
from moderation.taxonomy import Decision, Stage

# Any constant works: it names "the post-status recompute" among PostgreSQL advisory locks.
_STATUS_LOCK_KEY = 0x6D6F645F737461  # "mod_sta"


def _status_literal(status: PostStatus) -> sa.ColumnElement[Any]:
    status_type = POSTS.c.status.type
    return sa.cast(sa.literal(status, status_type), status_type)


def _derived_post_status(posts: sa.FromClause) -> sa.ColumnElement[Any]:
    """The status of the `posts` row in scope, computed from verdicts, reviews and decisions."""
    verdict = VERDICTS.alias("top_verdict")
    verdict_status = sa.case(
        (verdict.c.stage == Stage.HUMAN.value, _status_literal(PostStatus.DECIDED)),
        (verdict.c.decision == Decision.ALLOW.value, _status_literal(PostStatus.ALLOWED)),
        (verdict.c.decision == Decision.REMOVE.value, _status_literal(PostStatus.REMOVED)),
        else_=_status_literal(PostStatus.IN_REVIEW),
    )
    # The most authoritative verdict first: human, then agent, then model; the latest among equals.
    stage_rank = sa.case(
        (verdict.c.stage == Stage.HUMAN.value, 2),
        (verdict.c.stage == Stage.AGENT.value, 1),
        else_=0,
    )
    top_verdict = (
        sa.select(verdict_status)
        .where(verdict.c.post_id == posts.c.id)
        .order_by(stage_rank.desc(), verdict.c.occurred_at.desc(), verdict.c.id.desc())
        .limit(1)
        .correlate(posts)
        .scalar_subquery()
    )
    has_decision, has_verdict, has_review = (
        sa.exists().where(alias.c.post_id == posts.c.id).correlate(posts)
        for alias in (
            DECISIONS.alias("any_decision"),
            VERDICTS.alias("any_verdict"),
            REVIEWS.alias("any_review"),
        )
    )
    appeal = REVIEWS.alias("open_appeal")
    has_open_appeal = (
        sa.exists()
        .where(
            appeal.c.post_id == posts.c.id,
            appeal.c.appeal_of.is_not(None),
            appeal.c.status != ReviewStatus.DECIDED,
        )
        .correlate(posts)
    )
    # Cheap existence probes first: the sorted verdict lookup runs only when there is one.
    return sa.case(
        (has_open_appeal, _status_literal(PostStatus.IN_REVIEW)),
        (has_decision, _status_literal(PostStatus.DECIDED)),
        (has_verdict, top_verdict),
        (has_review, _status_literal(PostStatus.IN_REVIEW)),
        else_=_status_literal(PostStatus.PENDING),
    )


def _in_ids(
    column: sa.ColumnElement[Any], dialect: str, name: str = "post_ids"
) -> sa.ColumnElement[bool]:
    """`column IN (:name)` with a list parameter `name`."""
    if dialect == "postgresql":
        # One array parameter: a statement psycopg caches, whatever the number of ids.
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(sa.Text())))
    return column.in_(sa.bindparam(name, expanding=True))


@lru_cache(maxsize=4)
def _post_status_update(dialect: str) -> sa.Update:
    """`UPDATE posts SET status = derived FROM (derived per post id) WHERE it changed`."""
    scoped = POSTS.alias("p")
    derived = (
        sa.select(scoped.c.id, _derived_post_status(scoped).label("status"))
        .where(_in_ids(scoped.c.id, dialect))
        .subquery("derived")
    )
    return (
        sa.update(POSTS)
        .where(POSTS.c.id == derived.c.id, POSTS.c.status != derived.c.status)
        .values(status=derived.c.status)
    )


@lru_cache(maxsize=4)
def _review_decided_update(dialect: str) -> sa.Update:
    """Close (status decided) the reviews that a recorded human decision names."""
    decision = DECISIONS.alias("d")

    def latest(column: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
        return (
            sa.select(column)
            .where(decision.c.review_id == REVIEWS.c.review_id)
            .order_by(decision.c.decided_at.desc(), decision.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )

    return (
        sa.update(REVIEWS)
        .where(
            _in_ids(REVIEWS.c.review_id, dialect, "review_ids"),
            REVIEWS.c.status != ReviewStatus.DECIDED,
            sa.exists().where(decision.c.review_id == REVIEWS.c.review_id),
        )
        .values(
            status=ReviewStatus.DECIDED,
            decided_at=latest(decision.c.decided_at),
            decided_by=latest(decision.c.moderator_id),
            updated_at=sa.bindparam("now"),
        )
    )


def _lock_status_recompute(session: Session) -> None:
    """Take the PostgreSQL advisory lock that serializes status derivation (held until commit).

    Statements after it take their snapshot once it is held: they see the facts of every
    writer that committed before, so concurrent recorders cannot leave a stale status.
    """
    session.connection().execute(sa.select(sa.func.pg_advisory_xact_lock(_STATUS_LOCK_KEY)))


def _refresh_derived_status(
    session: Session, *, post_ids: Sequence[str], review_ids: Sequence[str] = ()
) -> None:
    """Close the decided ones of `review_ids`, then recompute posts.status (caller commits)."""
    dialect = _dialect(session)
    # Reviews first: an appeal that closes changes its post's status.
    for chunk in _chunks(review_ids):
        session.exec(
            _review_decided_update(dialect), params={"review_ids": list(chunk), "now": utc_now()}
        )
    for chunk in _chunks(post_ids):
        session.exec(_post_status_update(dialect), params={"post_ids": list(chunk)})


def _refresh_post_status(session: Session, *, post_id: str) -> None:
    """Recompute one post's derived status after a review changed (caller commits)."""
    if _dialect(session) == "postgresql":
        _lock_status_recompute(session)
    _refresh_derived_status(session, post_ids=[post_id])
