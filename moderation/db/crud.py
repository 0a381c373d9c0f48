"""The single database API: keyword-only functions over a `Session`, for every reader and writer.

The api, the recorder, the dashboards and the jobs go through these functions; nothing else
writes SQL against the read model. Every write function commits its own transaction.

Projections of the Kafka topics (`record_*`) are idempotent: each is an
`INSERT ... ON CONFLICT DO NOTHING` on the event's natural key (posts.id, verdicts
(post_id, stage, model_version), reviews.review_id, decisions.event_id), so a redelivered event is
harmless. `record_events` writes a whole consumer batch with one round trip per table. A review
row is an upsert on `review_id` shared by two writers: the recorder's projection of
`review.requested` and the review workflow's `create_review_task`, which also sets the SLA
(whichever comes first inserts; neither overwrites what the other or a moderator changed).

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
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache, lru_cache
from typing import Any, NamedTuple

import sqlalchemy as sa
from pydantic_core import to_json, to_jsonable_python
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.sql.dml import ReturningInsert
from sqlmodel import Session, SQLModel, col, select

from moderation.actors import actor_display, actor_key_ids
from moderation.db.models import (
    ApiKey,
    AuditLog,
    Decision,
    IdempotencyKey,
    JobRun,
    ModelStatus,
    ModelVersion,
    Post,
    PostStatus,
    Review,
    ReviewStatus,
    Verdict,
)
from moderation.db.schemas import (
    AgreementPublic,
    CategoryCountPublic,
    DecisionCountPublic,
    HumanSharePublic,
    JobRunPublic,
    LatencyMeasure,
    LatencyPercentilesPublic,
    LatencySamplePublic,
    MetricsOverviewPublic,
    MetricsWindowPublic,
    ModelVersionMetricsPublic,
    ModeratorLoadPublic,
    QueueMetricsPublic,
    ThroughputBucketPublic,
)
from moderation.events import (
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
    review_id_for,
    utc_now,
)
from moderation.taxonomy import Category, Stage
from moderation.taxonomy import Decision as VerdictDecision

API_SCOPES = frozenset({"submit", "read", "moderate", "admin"})
API_KEY_PREFIX = "mod"
# Any constant works: it names "the post-status recompute" among PostgreSQL advisory locks.
_STATUS_LOCK_KEY = 0x6D6F645F737461  # "mod_sta"
# Bounded IN lists: far below PostgreSQL's 65,535 and SQLite's 32,766 bind parameters.
_IN_CHUNK = 5_000


def _table(model: type[SQLModel]) -> sa.Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


POSTS = _table(Post)
VERDICTS = _table(Verdict)
REVIEWS = _table(Review)
DECISIONS = _table(Decision)
IDEMPOTENCY_KEYS = _table(IdempotencyKey)

InsertFactory = Callable[[sa.Table], PostgresInsert | SqliteInsert]
_INSERTS: dict[str, InsertFactory] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _utc(moment: datetime) -> datetime:
    # SQLite drops the offset when storing: normalize so stored times compare correctly.
    return moment.astimezone(UTC)


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


@cache
def _postgres_recordset_insert(
    table: sa.Table, columns: tuple[str, ...], conflict: tuple[str, ...], derive_status: bool
) -> ReturningInsert[Any]:
    """`INSERT ... SELECT FROM json_populate_recordset(:rows) ON CONFLICT DO NOTHING RETURNING`.

    The whole batch travels as one JSON parameter that the server turns into rows of the table's
    own type (lengths, enums and timestamps checked as on any insert). One small statement that
    psycopg caches and prepares, and no per-value adaptation in Python: about 3x faster than a
    multi-row VALUES list or one array per column.
    """
    row_type: sa.ColumnElement[Any] = sa.literal_column(
        f'NULL::"{table.name}"'
    )  # the table's own row type
    records = (
        sa.func.json_populate_recordset(
            row_type, sa.cast(sa.bindparam("rows", type_=sa.Text()), postgresql.JSON)
        )
        .table_valued(*columns)
        .alias("incoming")
    )
    values = [
        _derived_post_status(records) if derive_status and name == "status" else records.c[name]
        for name in columns
    ]
    return (
        postgresql.insert(table)
        .from_select(list(columns), sa.select(*values))
        .on_conflict_do_nothing(index_elements=list(conflict))
        .returning(table.c[conflict[0]])
    )


def _stored_enum(column: sa.Column[Any], value: Any) -> Any:
    """An enum member as the text its column stores (SQLAlchemy stores the member's name)."""
    if value is None or not isinstance(column.type, sa.Enum) or column.type.enum_class is None:
        return value
    return dict(zip(column.type.enum_class, column.type.enums, strict=True))[value]


def _rows_json(table: sa.Table, rows: Sequence[dict[str, Any]]) -> str:
    enums = [name for name in rows[0] if isinstance(table.c[name].type, sa.Enum)]
    if enums:
        rows = [
            {**row, **{name: _stored_enum(table.c[name], row[name]) for name in enums}}
            for row in rows
        ]
    return to_json(rows).decode()


def _insert_ignore(
    session: Session,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    conflict: Sequence[str],
    *,
    derive_status: bool = False,
) -> int:
    """`INSERT ... ON CONFLICT (conflict) DO NOTHING` for many rows; returns how many were new.

    With `derive_status` (posts, PostgreSQL) each new post's status is computed from the
    verdicts, reviews and decisions already recorded instead of taken from the row.
    """
    if not rows:
        return 0
    dialect = _dialect(session)
    if dialect == "postgresql":
        statement = _postgres_recordset_insert(
            table, tuple(rows[0]), tuple(conflict), derive_status
        )
        rows_json = _rows_json(table, rows)
        return len(session.exec(statement, params={"rows": rows_json}).all())
    try:
        insert = _INSERTS[dialect]
    except KeyError:
        raise NotImplementedError(f"no idempotent insert for the {dialect} dialect") from None
    generic = (
        insert(table)
        .on_conflict_do_nothing(index_elements=list(conflict))
        .returning(table.c[conflict[0]])
    )
    # A list of parameter sets: SQLAlchemy batches them into multi-row VALUES (insertmanyvalues).
    return len(session.exec(generic, params=list(rows)).all())


# --- projections of the topics ---------------------------------------------------------------


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
        "external_id": event.external_id,
        "metadata": dict(event.metadata),
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


def record_events(session: Session, *, events: Sequence[Event]) -> RecordResult:
    """Record a batch of events of any topic: one insert per table, then the derived statuses.

    Idempotent: events already recorded (same natural key) are ignored.

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
        inserted["posts"] = _insert_ignore(session, POSTS, posts, ["id"], derive_status=True)
        _refresh_derived_status(session, post_ids=sorted(facts), review_ids=closing)
    else:
        inserted["posts"] = _insert_ignore(session, POSTS, posts, ["id"])
        touched = sorted(facts | {row["id"] for row in posts})
        _refresh_derived_status(session, post_ids=touched, review_ids=closing)
    session.commit()
    return RecordResult(received=received, inserted=inserted)


def _status_literal(status: PostStatus) -> sa.ColumnElement[Any]:
    status_type = POSTS.c.status.type
    return sa.cast(sa.literal(status, status_type), status_type)


def _derived_post_status(posts: sa.FromClause) -> sa.ColumnElement[Any]:
    """The status of the `posts` row in scope, computed from verdicts, reviews and decisions."""
    verdict = VERDICTS.alias("top_verdict")
    verdict_status = sa.case(
        (verdict.c.stage == Stage.HUMAN.value, _status_literal(PostStatus.DECIDED)),
        (verdict.c.decision == VerdictDecision.ALLOW.value, _status_literal(PostStatus.ALLOWED)),
        (verdict.c.decision == VerdictDecision.REMOVE.value, _status_literal(PostStatus.REMOVED)),
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


def _record_one(session: Session, event: Event, kind: str) -> bool:
    return record_events(session, events=[event]).inserted[kind] == 1


def record_post_submitted(session: Session, *, event: PostSubmitted) -> bool:
    """Record a submitted post; returns False when it was already recorded."""
    return _record_one(session, event, "posts")


def record_verdict(session: Session, *, event: ModerationVerdict) -> bool:
    """Record a stage's verdict; returns False for a duplicate (post, stage, model version)."""
    return _record_one(session, event, "verdicts")


def record_review_requested(session: Session, *, event: ReviewRequested) -> bool:
    """Open a pending review (`event.review_id`); returns False when it already exists."""
    return _record_one(session, event, "reviews")


def record_review_decided(session: Session, *, event: ReviewDecided) -> bool:
    """Append a human decision; returns False when this decision event was already recorded."""
    return _record_one(session, event, "decisions")


# --- reads -------------------------------------------------------------------------------------


class PostTrail(NamedTuple):
    """A post and everything recorded about it (the post may be missing while it is in flight)."""

    post: Post | None
    verdicts: list[Verdict]
    reviews: list[Review]
    decisions: list[Decision]


def get_post(session: Session, *, post_id: str) -> Post | None:
    """The post, or None when it is not (yet) recorded."""
    return session.get(Post, post_id)


def get_post_trail(session: Session, *, post_id: str) -> PostTrail:
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
        select(Decision)
        .where(Decision.post_id == post_id)
        .order_by(col(Decision.decided_at), col(Decision.id))
    ).all()
    return PostTrail(
        get_post(session, post_id=post_id), list(verdicts), list(reviews), list(decisions)
    )


def post_statuses(session: Session, *, post_ids: Sequence[str]) -> dict[str, PostStatus]:
    """post_id → status, for the recorded posts among `post_ids`."""
    statuses: dict[str, PostStatus] = {}
    for chunk in _chunks(post_ids):
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
    statement = select(sa.func.count()).select_from(Decision)
    if post_ids is not None:
        statement = statement.where(col(Decision.post_id).in_(list(post_ids)))
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


class HumanDecision(NamedTuple):
    post_id: str
    text: str
    label: str
    decision: str
    note: str | None
    decided_at: datetime


def list_human_decisions(session: Session, *, limit: int) -> list[HumanDecision]:
    """The most recent human decisions with their posts' text, newest first (precedents)."""
    statement = (
        sa.select(
            col(Decision.post_id),
            col(Post.text),
            col(Decision.label),
            col(Decision.decision),
            col(Decision.note),
            col(Decision.decided_at),
        )
        .join(Post, col(Post.id) == col(Decision.post_id))
        .order_by(col(Decision.decided_at).desc(), col(Decision.id).desc())
        .limit(limit)
    )
    return [HumanDecision(*row) for row in session.execute(statement).all()]


# --- reviews: the moderators' queue ------------------------------------------------------------
#
# A review's stored `status` is what the last write set; a claim also runs out with time. Every
# read therefore reports the *effective* status at `now` (`effective_review_status`): decided;
# else claimed while a claim is live; else escalated once escalated; else pending. Writes that
# take or release a review are single conditional UPDATEs, so two moderators racing for a review
# (or a decision) get exactly one winner on PostgreSQL and SQLite alike.

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
# Automated verdicts only, most authoritative first (as for the derived post status).
_AUTOMATED_STAGES = (Stage.AGENT.value, Stage.MODEL.value)
AUDIT_ENTITY_REVIEW = "review"


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


def _claimable_by(moderator: str, now: datetime) -> sa.ColumnElement[bool]:
    """Undecided, and unclaimed, or its claim ran out, or `moderator` holds it (extends it)."""
    return sa.and_(
        REVIEWS.c.status != ReviewStatus.DECIDED,
        sa.or_(
            REVIEWS.c.claimed_by.is_(None),
            REVIEWS.c.claim_expires_at.is_(None),
            REVIEWS.c.claim_expires_at <= _utc(now),
            REVIEWS.c.claimed_by == moderator,
        ),
    )


class ReviewView(NamedTuple):
    """A review as moderators see it: its row, its status at the time of reading, its post and
    the automated verdict it reviews (the post or verdict may not be recorded yet)."""

    review: Review
    status: ReviewStatus
    text: str | None
    author_id: str | None
    verdict: Verdict | None


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


def _review_query(now: datetime) -> sa.Select[Review, str, str, str]:
    return sa.select(
        Review,
        effective_review_status(now).label("effective_status"),
        col(Post.text),
        col(Post.author_id),
    ).outerjoin(Post, col(Post.id) == col(Review.post_id))


def _views(session: Session, rows: Sequence[Any]) -> list[ReviewView]:
    verdicts = latest_automated_verdicts(session, post_ids=[row[0].post_id for row in rows])
    return [
        ReviewView(review, ReviewStatus(status), text, author_id, verdicts.get(review.post_id))
        for review, status, text, author_id in rows
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

    Returns:
        The page and the number of reviews that match the filters.
    """
    filters: list[sa.ColumnElement[bool]] = []
    if status is not None:
        filters.append(effective_review_status(now) == ReviewStatus(status).value)
    else:
        filters.append(REVIEWS.c.status != ReviewStatus.DECIDED.value)
    if category is not None:
        filters.append(REVIEWS.c.category == category)
    if priority is not None:
        filters.append(REVIEWS.c.priority == ReviewPriority(priority).value)
    statement = (
        _review_query(now)
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


def get_review(session: Session, *, review_id: str, now: datetime) -> ReviewView | None:
    """The review with its effective status at `now`, or None."""
    row = session.execute(
        _review_query(now)
        .where(REVIEWS.c.review_id == review_id)
        .execution_options(populate_existing=True)
    ).first()
    return _views(session, [row])[0] if row is not None else None


def _verdict_summary(verdict: Verdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {
        "event_id": verdict.event_id,
        "stage": verdict.stage,
        "decision": verdict.decision,
        "primary_category": verdict.primary_category,
        "confidence": verdict.confidence,
        "model_version": verdict.model_version,
        "policy_version": verdict.policy_version,
    }


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
        at=at,
        commit=False,
    )


def _refresh_post_status(session: Session, *, post_id: str) -> None:
    """Recompute one post's derived status after a review changed (caller commits)."""
    if _dialect(session) == "postgresql":
        _lock_status_recompute(session)
    _refresh_derived_status(session, post_ids=[post_id])


def claim_review(
    session: Session, *, review_id: str, moderator: str, now: datetime, claim_seconds: float
) -> ReviewView | None:
    """Claim a review for `moderator` until `now + claim_seconds` (audited as `review.claim`).

    One conditional UPDATE: it succeeds when the review is undecided and unclaimed, or its
    claim ran out, or `moderator` already holds it (the claim is then extended).

    Returns:
        The claimed review, or None when it does not exist, is decided or someone else holds
        a live claim (`get_review` tells which).
    """
    now = _utc(now)
    before = get_review(session, review_id=review_id, now=now)
    if before is None:
        return None
    expires = now + timedelta(seconds=claim_seconds)
    claimed = session.execute(
        sa.update(REVIEWS)
        .where(REVIEWS.c.review_id == review_id, _claimable_by(moderator, now))
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
    return get_review(session, review_id=review_id, now=now)


def claim_next(
    session: Session,
    *,
    moderator: str,
    now: datetime,
    claim_seconds: float,
    category: str | None = None,
    attempts: int = 5,
) -> ReviewView | None:
    """Claim the most urgent, oldest review `moderator` may claim (its own claim included).

    Returns:
        The claimed review, or None when nothing is claimable.
    """
    now = _utc(now)
    filters = [_claimable_by(moderator, now)]
    if category is not None:
        filters.append(REVIEWS.c.category == category)
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


class ReviewStats(NamedTuple):
    """The queue at a glance, as Bluesky Ozone's queue statistics."""

    pending: int
    escalated: int
    claimed: int
    inbound_24h: int
    actioned_24h: int
    action_rate: float | None
    avg_handling_seconds: float | None


def review_stats(session: Session, *, now: datetime) -> ReviewStats:
    """Queue counts at `now` and the last 24 hours' flow.

    `pending`, `escalated` and `claimed` count undecided reviews by effective status (they do
    not overlap). `inbound_24h`: reviews created in the window; `actioned_24h`: reviews decided
    in it; `action_rate`: the share of the window's recorded human decisions that remove;
    `avg_handling_seconds`: mean of decided_at - created_at over the window's decided reviews.
    Rates are None when there is nothing to average.
    """
    now = _utc(now)
    since = now - timedelta(hours=24)
    status = effective_review_status(now)
    counts = dict(
        session.execute(
            sa.select(status, sa.func.count())
            .where(REVIEWS.c.status != ReviewStatus.DECIDED)
            .group_by(status)
        ).all()
    )
    inbound = session.execute(
        sa.select(sa.func.count()).select_from(REVIEWS).where(REVIEWS.c.created_at >= since)
    ).scalar_one()
    handled = session.execute(
        sa.select(REVIEWS.c.created_at, REVIEWS.c.decided_at).where(
            REVIEWS.c.status == ReviewStatus.DECIDED, REVIEWS.c.decided_at >= since
        )
    ).all()
    decided, removed = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(
                sa.func.sum(sa.case((DECISIONS.c.decision == VerdictDecision.REMOVE.value, 1))),
                0,
            ),
        ).where(DECISIONS.c.decided_at >= since)
    ).one()
    # Times come back aware from the column type: subtract in Python, portable across backends.
    durations = [
        (_utc(decided_at) - _utc(created_at)).total_seconds() for created_at, decided_at in handled
    ]
    return ReviewStats(
        pending=int(counts.get(ReviewStatus.PENDING.value, 0)),
        escalated=int(counts.get(ReviewStatus.ESCALATED.value, 0)),
        claimed=int(counts.get(ReviewStatus.CLAIMED.value, 0)),
        inbound_24h=int(inbound),
        actioned_24h=len(handled),
        action_rate=round(int(removed) / int(decided), 4) if decided else None,
        avg_handling_seconds=round(sum(durations) / len(durations), 3) if durations else None,
    )


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


def decision_log(session: Session, *, limit: int) -> list[DecisionLogRow]:
    """The latest `limit` human decisions, newest first, with the policy version in force
    (that of the automated verdict the decision reviewed)."""
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
        .order_by(DECISIONS.c.decided_at.desc(), DECISIONS.c.id.desc())
        .limit(limit)
    )
    return [DecisionLogRow(*row) for row in session.execute(statement).all()]


def latest_decision(session: Session, *, post_id: str) -> Decision | None:
    """The post's most recent human decision, or None."""
    return session.exec(
        select(Decision)
        .where(Decision.post_id == post_id)
        .order_by(col(Decision.decided_at).desc(), col(Decision.id).desc())
    ).first()


def open_appeal_for(session: Session, *, post_id: str) -> Review | None:
    """The post's undecided appeal review, or None."""
    return session.exec(
        select(Review).where(
            Review.post_id == post_id,
            col(Review.appeal_of).is_not(None),
            Review.status != ReviewStatus.DECIDED,
        )
    ).first()


def count_appeals(session: Session, *, post_id: str) -> int:
    """How many appeal reviews the post has had (the next is `review_id_for(post_id, n + 1)`)."""
    statement = (
        select(sa.func.count())
        .select_from(Review)
        .where(Review.post_id == post_id, col(Review.appeal_of).is_not(None))
    )
    return int(session.exec(statement).one())


def record_appeal(session: Session, *, event: ReviewRequested, actor: str) -> bool:
    """Record an appeal's review at once (the recorder projects the same event later) and audit
    it as `review.appeal`, naming the decision appealed.

    Returns:
        Whether the review was new.
    """
    appealed = (
        session.exec(select(Decision).where(Decision.event_id == event.appeal_of)).first()
        if event.appeal_of is not None
        else None
    )
    new = record_review_requested(session, event=event)
    verdict = latest_automated_verdict(session, post_id=event.post_id)
    append_audit(
        session,
        actor=actor,
        action="review.appeal",
        entity=AUDIT_ENTITY_REVIEW,
        entity_id=event.review_id,
        before=(
            {
                "decision_event_id": appealed.event_id,
                "review_id": appealed.review_id,
                "label": appealed.label,
                "decision": appealed.decision,
                "moderator": appealed.moderator_id,
            }
            if appealed is not None
            else None
        ),
        after={
            "post_id": event.post_id,
            "status": ReviewStatus.PENDING.value,
            "priority": event.priority.value,
            "reason": event.reason,
            "appeal_of": event.appeal_of,
            "automated_verdict": _verdict_summary(verdict),
            "policy_version": verdict.policy_version if verdict is not None else None,
        },
        at=event.occurred_at,
        commit=False,
    )
    session.commit()
    return new


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


# --- API keys ----------------------------------------------------------------------------------


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# Compared against when the prefix is unknown, so a miss costs the same as a wrong secret.
_UNKNOWN_KEY_DIGEST = _key_digest(f"{API_KEY_PREFIX}_unknown_unknown")


def create_api_key(session: Session, *, name: str, scopes: Iterable[str]) -> tuple[str, ApiKey]:
    """Create an API key; the plaintext `mod_<prefix>_<secret>` is returned once, never stored.

    Raises:
        ValueError: for a scope outside `API_SCOPES`.
    """
    wanted = sorted(set(scopes))
    unknown = [scope for scope in wanted if scope not in API_SCOPES]
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; valid: {sorted(API_SCOPES)}")
    prefix = secrets.token_hex(6)  # hex: never contains the "_" separator
    plaintext = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey(name=name, prefix=prefix, key_hash=_key_digest(plaintext), scopes=wanted)
    session.add(api_key)
    session.commit()
    session.refresh(api_key)
    return plaintext, api_key


def api_key_prefix(key: str) -> str | None:
    """The public part of a presented key (`mod_<prefix>_<secret>`), None when it has none."""
    parts = key.split("_", 2) if len(key) <= 256 else []
    prefix = parts[1] if len(parts) == 3 and parts[0] == API_KEY_PREFIX else None
    return prefix if prefix is not None and 0 < len(prefix) <= 32 else None


def authenticate_api_key(session: Session, *, key: str) -> ApiKey | None:
    """The key's row when `key` is valid and not revoked, else None (constant-time check)."""
    prefix = api_key_prefix(key)
    api_key = (
        session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
        if prefix is not None
        else None
    )
    expected = api_key.key_hash if api_key is not None else _UNKNOWN_KEY_DIGEST
    matches = hmac.compare_digest(_key_digest(key), expected)
    if api_key is None or not matches or api_key.revoked_at is not None:
        return None
    return api_key


def api_key_names(session: Session, *, actors: Iterable[str | None]) -> dict[int, str]:
    """The names of the API keys among recorded identities (`key:<id>`, see `actors.py`)."""
    key_ids = sorted(actor_key_ids(actors))
    names: dict[int, str] = {}
    for start in range(0, len(key_ids), _IN_CHUNK):
        wanted = key_ids[start : start + _IN_CHUNK]
        statement = sa.select(col(ApiKey.id), col(ApiKey.name)).where(col(ApiKey.id).in_(wanted))
        rows = session.execute(statement)
        names.update({int(key_id): str(name) for key_id, name in rows.all()})
    return names


def revoke_api_key(session: Session, *, prefix: str) -> bool:
    """Revoke the key with this prefix; returns False when there is no such active key."""
    api_key = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if api_key is None or api_key.revoked_at is not None:
        return False
    api_key.revoked_at = utc_now()
    session.add(api_key)
    session.commit()
    return True


# --- idempotency keys --------------------------------------------------------------------------


def claim_idempotency_key(session: Session, *, key: str, post_id: str) -> tuple[str, bool]:
    """Bind `key` to `post_id` unless it is bound already.

    Returns:
        The post id bound to the key (the earlier one when the key was claimed before) and
        whether that post was already published.

    Raises:
        ValueError: for a key longer than the column (300 characters).
    """
    if len(key) > 300:
        raise ValueError("idempotency key longer than 300 characters")
    row = {"key": key, "post_id": post_id, "published": False, "created_at": utc_now()}
    _insert_ignore(session, IDEMPOTENCY_KEYS, [row], ["key"])
    session.commit()
    claimed = session.exec(
        select(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    ).one()
    return claimed.post_id, claimed.published


def mark_published(session: Session, *, key: str) -> None:
    """Record that the post bound to `key` was acknowledged by Kafka."""
    session.exec(
        sa.update(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key).values(published=True)
    )
    session.commit()


# --- model registry ----------------------------------------------------------------------------


def _retire_champions(session: Session, *, kind: str, keep: int | None) -> None:
    champions = session.exec(
        select(ModelVersion).where(
            ModelVersion.kind == kind, ModelVersion.status == ModelStatus.CHAMPION
        )
    ).all()
    for champion in champions:
        if champion.id != keep:
            champion.status = ModelStatus.RETIRED
            session.add(champion)


def register_model_version(
    session: Session,
    *,
    kind: str,
    version: str,
    artifact_uri: str,
    metrics: dict[str, Any],
    status: ModelStatus = ModelStatus.CHALLENGER,
    artifact_sha256: str | None = None,
) -> ModelVersion:
    """Register a model version (idempotent on kind + version: a known one is returned as is).

    With status `champion` the version is promoted (registered before or not) and the previous
    champion of the same kind is retired, in one transaction. `artifact_sha256` is the digest
    loaders check (`classifier.artifacts`); it fills in a known version's missing digest (a row
    registered before digests existed) but never replaces one.
    """
    model = session.exec(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    ).first()
    if model is None:
        model = ModelVersion(
            kind=kind,
            version=version,
            artifact_uri=artifact_uri,
            artifact_sha256=artifact_sha256,
            metrics=to_jsonable_python(metrics),
            status=status,
        )
        session.add(model)
        session.flush()
    else:
        if status is ModelStatus.CHAMPION:
            model.status = status
        if model.artifact_sha256 is None and artifact_sha256 is not None:
            model.artifact_sha256 = artifact_sha256
        session.add(model)
    if status is ModelStatus.CHAMPION:
        _retire_champions(session, kind=kind, keep=model.id)
    session.commit()
    session.refresh(model)
    return model


def promote_model_version(session: Session, *, kind: str, version: str) -> ModelVersion:
    """Make a registered version the champion of its kind (the previous one is retired).

    Raises:
        LookupError: when the version is not registered.
    """
    model = session.exec(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    ).first()
    if model is None:
        raise LookupError(f"model {kind} {version} is not registered")
    return register_model_version(
        session,
        kind=kind,
        version=version,
        artifact_uri=model.artifact_uri,
        metrics=model.metrics,
        status=ModelStatus.CHAMPION,
        artifact_sha256=model.artifact_sha256,
    )


def get_champion(session: Session, *, kind: str) -> ModelVersion | None:
    """The current champion of `kind`, or None."""
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.CHAMPION)
        .order_by(col(ModelVersion.created_at).desc())
    ).first()


def list_model_versions(session: Session, *, kind: str) -> list[ModelVersion]:
    """Every registered version of `kind`, newest first."""
    return list(
        session.exec(
            select(ModelVersion)
            .where(ModelVersion.kind == kind)
            .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        ).all()
    )


# --- audit log and job runs --------------------------------------------------------------------


def append_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    at: datetime | None = None,
    commit: bool = True,
) -> AuditLog:
    """Append one audit entry (who, what, on which entity, the state before and after).

    With `commit=False` the entry joins the session's transaction and the caller commits.
    """
    entry = AuditLog(
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        before=to_jsonable_python(before),
        after=to_jsonable_python(after),
        at=_utc(at) if at is not None else utc_now(),
    )
    session.add(entry)
    if commit:
        session.commit()
        session.refresh(entry)
    return entry


def start_job_run(session: Session, *, job: str, details: dict[str, Any] | None = None) -> JobRun:
    """Record that a job started (status `running`)."""
    run = JobRun(job=job, status="running", details=to_jsonable_python(details or {}))
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def finish_job_run(
    session: Session,
    *,
    run_id: int,
    status: str,
    counts: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> JobRun:
    """Record how a job ended (`succeeded` / `failed`), with its counts and details.

    Raises:
        LookupError: when there is no such run.
    """
    run = session.get(JobRun, run_id)
    if run is None:
        raise LookupError(f"no job run {run_id}")
    run.status = status
    run.finished_at = utc_now()
    if counts is not None:
        run.counts = to_jsonable_python(counts)
    if details is not None:
        run.details = {**run.details, **to_jsonable_python(details)}
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


# --- metrics: what the dashboard plots ---------------------------------------------------------
#
# Counts are GROUP BYs over time buckets aligned to the epoch (hourly buckets start on the hour),
# computed in a subquery so the grouped expression is a plain column (PostgreSQL with server-side
# parameters would not match two copies of an expression holding a parameter). Percentiles and
# mean durations are computed in Python on at most `row_cap` newest rows of the window:
# `percentile_cont` and timestamp arithmetic have no portable SQL across PostgreSQL and SQLite.

METRICS_ROW_CAP = 50_000
METRICS_MAX_BUCKETS = 2_000
MODEL_VERSIONS_SHOWN = 200
JOB_RUNS_SHOWN = 20
HUMAN_STAGE = Stage.HUMAN.value
AUDIT = _table(AuditLog)
MODEL_VERSIONS = _table(ModelVersion)
JOB_RUNS = _table(JobRun)
_STAGE_ORDER = (Stage.MODEL.value, Stage.AGENT.value)
_MEASURES: tuple[LatencyMeasure, ...] = ("verdict", "end_to_end")


class MetricsWindow(NamedTuple):
    """Whole buckets of `bucket_seconds`, numbered from the epoch, from `first` to `last`."""

    hours: float
    bucket_seconds: int
    first: int
    last: int
    until: datetime

    def start_of(self, bucket: int) -> datetime:
        """When bucket number `bucket` starts."""
        return datetime.fromtimestamp(bucket * self.bucket_seconds, UTC)

    @property
    def since(self) -> datetime:
        return self.start_of(self.first)

    @property
    def end(self) -> datetime:
        """The end of the last bucket (rows from `since` up to here are in the window)."""
        return self.start_of(self.last + 1)

    def bucket_of(self, moment: datetime) -> int:
        return int(_utc(moment).timestamp() // self.bucket_seconds)

    def covers(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        return sa.and_(column >= self.since, column < self.end)


def metrics_window(*, now: datetime, hours: float, bucket_minutes: int) -> MetricsWindow:
    """The buckets covering the last `hours` up to `now` (the first one may start earlier).

    Raises:
        ValueError: a window or bucket that is not positive, or more than `METRICS_MAX_BUCKETS`
            buckets.
    """
    if hours <= 0 or bucket_minutes < 1:
        raise ValueError("hours and bucket_minutes must be positive")
    bucket_seconds = bucket_minutes * 60
    now = _utc(now)
    first = int((now - timedelta(hours=hours)).timestamp() // bucket_seconds)
    last = int(now.timestamp() // bucket_seconds)
    if last - first + 1 > METRICS_MAX_BUCKETS:
        raise ValueError(
            f"{last - first + 1} buckets of {bucket_minutes} min in {hours:g} h: at most "
            f"{METRICS_MAX_BUCKETS}; choose larger buckets"
        )
    return MetricsWindow(hours, bucket_seconds, first, last, now)


def _bucket_index(
    session: Session, column: sa.ColumnElement[Any], bucket_seconds: int
) -> sa.ColumnElement[int]:
    """SQL: the number of the `bucket_seconds` bucket since the epoch that `column` falls in."""
    if _dialect(session) == "postgresql":
        epoch = sa.extract("epoch", column)
        return sa.cast(sa.func.floor(epoch / bucket_seconds), sa.BigInteger)
    # SQLite keeps UTC text; strftime('%s') reads it as epoch seconds, and integer division of
    # these positive numbers floors.
    return sa.cast(sa.func.strftime("%s", column), sa.Integer) // bucket_seconds


def _bucket_counts(
    session: Session,
    window: MetricsWindow,
    column: sa.ColumnElement[Any],
    *where: sa.ColumnElement[bool],
    by: sa.ColumnElement[Any] | None = None,
) -> dict[tuple[int, Any], int]:
    """(bucket, value of `by` or None) → rows of the window matching `where`."""
    inner = sa.select(
        _bucket_index(session, column, window.bucket_seconds).label("bucket"),
        (by if by is not None else sa.null()).label("value"),
    ).where(window.covers(column), *where)
    counted = inner.subquery()
    rows = session.execute(
        sa.select(counted.c.bucket, counted.c.value, sa.func.count()).group_by(
            counted.c.bucket, counted.c.value
        )
    ).all()
    return {(int(bucket), value): int(count) for bucket, value, count in rows}


def _first_review_exists() -> sa.Exists:
    # Appeals are reviews the submitter asked for, not ones the models sent.
    return sa.exists().where(REVIEWS.c.post_id == POSTS.c.id, REVIEWS.c.appeal_of.is_(None))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def throughput_buckets(session: Session, *, window: MetricsWindow) -> list[ThroughputBucketPublic]:
    """Posts, automated verdicts by stage, human decisions and posts sent to humans per bucket
    (every bucket of the window, oldest first, zeros included)."""
    posts = _bucket_counts(session, window, POSTS.c.submitted_at)
    sent = _bucket_counts(session, window, POSTS.c.submitted_at, _first_review_exists())
    decisions = _bucket_counts(session, window, DECISIONS.c.decided_at)
    verdicts = _bucket_counts(
        session,
        window,
        VERDICTS.c.occurred_at,
        VERDICTS.c.stage.in_(_AUTOMATED_STAGES),
        by=VERDICTS.c.stage,
    )
    buckets = []
    for bucket in range(window.first, window.last + 1):
        submitted = posts.get((bucket, None), 0)
        to_humans = sent.get((bucket, None), 0)
        buckets.append(
            ThroughputBucketPublic(
                start=window.start_of(bucket),
                posts=submitted,
                verdicts={stage: verdicts.get((bucket, stage), 0) for stage in _STAGE_ORDER},
                decisions=decisions.get((bucket, None), 0),
                sent_to_humans=to_humans,
                share_to_humans=_share(to_humans, submitted),
            )
        )
    return buckets


def _percentiles(
    start: datetime | None, stage: str, measure: LatencyMeasure, values: list[float]
) -> LatencyPercentilesPublic:
    import numpy as np  # here: only the metrics read needs it, not the API's hot path

    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return LatencyPercentilesPublic(
        start=start,
        stage=stage,
        measure=measure,
        count=len(values),
        p50_ms=round(float(p50), 3),
        p95_ms=round(float(p95), 3),
        p99_ms=round(float(p99), 3),
    )


def latency_percentiles(
    session: Session, *, window: MetricsWindow, row_cap: int = METRICS_ROW_CAP
) -> tuple[list[LatencyPercentilesPublic], list[LatencyPercentilesPublic], LatencySamplePublic]:
    """p50/p95/p99 per bucket and for the whole window, per automated stage and measure.

    `verdict` is the verdict's `latency_ms` (submission to verdict, measured by the worker);
    `end_to_end` is submission to the verdict's row in the read model (`recorded_at`), which adds
    the verdicts topic and the recorder. Read from the newest `row_cap` verdicts of the window.

    Returns:
        (per bucket, whole window, which rows were read).
    """
    rows = session.execute(
        sa.select(
            VERDICTS.c.stage,
            VERDICTS.c.occurred_at,
            VERDICTS.c.recorded_at,
            VERDICTS.c.latency_ms,
            POSTS.c.submitted_at,
        )
        .select_from(VERDICTS.outerjoin(POSTS, POSTS.c.id == VERDICTS.c.post_id))
        .where(window.covers(VERDICTS.c.occurred_at), VERDICTS.c.stage.in_(_AUTOMATED_STAGES))
        .order_by(VERDICTS.c.occurred_at.desc(), VERDICTS.c.id.desc())
        .limit(row_cap + 1)
    ).all()
    truncated = len(rows) > row_cap
    rows = rows[:row_cap]
    per_bucket: dict[tuple[int, str, LatencyMeasure], list[float]] = {}
    whole: dict[tuple[str, LatencyMeasure], list[float]] = {}
    for stage, occurred_at, recorded_at, latency, submitted_at in rows:
        measured: list[tuple[LatencyMeasure, float]] = [("verdict", float(latency))]
        if submitted_at is not None:
            # Clocks of different hosts may disagree by a little: never a negative duration.
            seconds = (_utc(recorded_at) - _utc(submitted_at)).total_seconds()
            measured.append(("end_to_end", max(0.0, seconds * 1000)))
        bucket = window.bucket_of(occurred_at)
        for measure, value in measured:
            per_bucket.setdefault((bucket, stage, measure), []).append(value)
            whole.setdefault((stage, measure), []).append(value)

    def order(stage: str, measure: LatencyMeasure) -> tuple[int, int]:
        return _rank(_STAGE_ORDER, stage), _MEASURES.index(measure)

    buckets = [
        _percentiles(window.start_of(bucket), stage, measure, per_bucket[bucket, stage, measure])
        for bucket, stage, measure in sorted(per_bucket, key=lambda k: (k[0], *order(*k[1:])))
    ]
    overall = [
        _percentiles(None, stage, measure, whole[stage, measure])
        for stage, measure in sorted(whole, key=lambda k: order(*k))
    ]
    sample = LatencySamplePublic(
        rows=len(rows),
        cap=row_cap,
        truncated=truncated,
        oldest=rows[-1][1] if rows else None,
    )
    return buckets, overall, sample


def decision_mix(session: Session, *, window: MetricsWindow) -> list[DecisionCountPublic]:
    """Automated verdicts by stage and decision, then human decisions (stage `human`)."""
    verdicts = session.execute(
        sa.select(VERDICTS.c.stage, VERDICTS.c.decision, sa.func.count())
        .where(window.covers(VERDICTS.c.occurred_at), VERDICTS.c.stage.in_(_AUTOMATED_STAGES))
        .group_by(VERDICTS.c.stage, VERDICTS.c.decision)
    ).all()
    humans = session.execute(
        sa.select(DECISIONS.c.decision, sa.func.count())
        .where(window.covers(DECISIONS.c.decided_at))
        .group_by(DECISIONS.c.decision)
    ).all()
    rows = [(stage, decision, int(count)) for stage, decision, count in verdicts]
    rows += [(HUMAN_STAGE, decision, int(count)) for decision, count in humans]
    decisions = [d.value for d in VerdictDecision]
    stages = [*_STAGE_ORDER, HUMAN_STAGE]
    rows.sort(key=lambda row: (_rank(stages, row[0]), _rank(decisions, row[1]), row[1]))
    return [DecisionCountPublic(stage=s, decision=d, count=c) for s, d, c in rows]


def category_mix(session: Session, *, window: MetricsWindow) -> list[CategoryCountPublic]:
    """Automated verdicts by stage and primary category, then the human labels."""
    verdicts = session.execute(
        sa.select(VERDICTS.c.stage, VERDICTS.c.primary_category, sa.func.count())
        .where(window.covers(VERDICTS.c.occurred_at), VERDICTS.c.stage.in_(_AUTOMATED_STAGES))
        .group_by(VERDICTS.c.stage, VERDICTS.c.primary_category)
    ).all()
    humans = session.execute(
        sa.select(DECISIONS.c.label, sa.func.count())
        .where(window.covers(DECISIONS.c.decided_at))
        .group_by(DECISIONS.c.label)
    ).all()
    rows = [(stage, category, int(count)) for stage, category, count in verdicts]
    rows += [(HUMAN_STAGE, label, int(count)) for label, count in humans]
    categories = [c.value for c in Category]
    stages = [*_STAGE_ORDER, HUMAN_STAGE]
    rows.sort(key=lambda row: (_rank(stages, row[0]), _rank(categories, row[1]), row[1]))
    return [CategoryCountPublic(stage=s, category=c, count=n) for s, c, n in rows]


def _rank(order: Sequence[str], value: str) -> int:
    return order.index(value) if value in order else len(order)


def human_share(session: Session, *, window: MetricsWindow) -> HumanSharePublic:
    """Posts submitted in the window, and how many of them have a (non-appeal) review."""
    posts, sent = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((_first_review_exists(), 1), else_=0)), 0),
        ).where(window.covers(POSTS.c.submitted_at))
    ).one()
    return HumanSharePublic(
        posts=int(posts), sent_to_humans=int(sent), share=_share(int(sent), int(posts))
    )


def _latest_category(stage: str) -> sa.ScalarSelect[Any]:
    """SQL: the primary category of the decided post's latest `stage` verdict."""
    verdict = VERDICTS.alias(f"{stage}_verdict")
    return (
        sa.select(verdict.c.primary_category)
        .where(verdict.c.post_id == DECISIONS.c.post_id, verdict.c.stage == stage)
        .order_by(verdict.c.occurred_at.desc(), verdict.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def agreement(
    session: Session, *, window: MetricsWindow
) -> tuple[list[AgreementPublic], AgreementPublic]:
    """For the window's human decisions: did the model (and the agent) pick the human's label?

    Returns:
        (per label in taxonomy order, all labels together).
    """
    inner = (
        sa.select(
            DECISIONS.c.label.label("label"),
            _latest_category(Stage.MODEL.value).label("model"),
            _latest_category(Stage.AGENT.value).label("agent"),
        )
        .where(window.covers(DECISIONS.c.decided_at))
        .subquery()
    )

    def agreed(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.func.coalesce(sa.func.sum(sa.case((column == inner.c.label, 1), else_=0)), 0)

    rows = session.execute(
        sa.select(
            inner.c.label,
            sa.func.count(),
            sa.func.count(inner.c.model),
            agreed(inner.c.model),
            sa.func.count(inner.c.agent),
            agreed(inner.c.agent),
        ).group_by(inner.c.label)
    ).all()
    counts: dict[str, list[int]] = {
        str(label): [int(n) for n in numbers] for label, *numbers in rows
    }
    categories = [c.value for c in Category]
    labels = sorted(counts, key=lambda label: (_rank(categories, label), label))
    per_label = [_agreement(label, *counts[label]) for label in labels]
    totals = [sum(column) for column in zip(*counts.values(), strict=True)] or [0] * 5
    return per_label, _agreement("all", *totals)


def _agreement(
    label: str, decisions: int, model: int, model_agreed: int, agent: int, agent_agreed: int
) -> AgreementPublic:
    return AgreementPublic(
        label=label,
        decisions=decisions,
        model_compared=model,
        model_agreed=model_agreed,
        model_agreement=_share(model_agreed, model),
        agent_compared=agent,
        agent_agreed=agent_agreed,
        agent_agreement=_share(agent_agreed, agent),
    )


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def moderator_load(
    session: Session, *, window: MetricsWindow, row_cap: int = METRICS_ROW_CAP
) -> list[ModeratorLoadPublic]:
    """Per moderator, the reviews decided in the window (the newest `row_cap`): how many, mean
    handling (their first claim of the review to the decision) and mean time to decision."""
    decided = sa.and_(
        REVIEWS.c.status == ReviewStatus.DECIDED,
        REVIEWS.c.decided_by.is_not(None),
        window.covers(REVIEWS.c.decided_at),
    )
    claims = (
        sa.select(
            AUDIT.c.entity_id.label("review_id"),
            AUDIT.c.actor.label("moderator"),
            sa.func.min(AUDIT.c.at).label("claimed_at"),
        )
        .where(
            AUDIT.c.action == "review.claim",
            AUDIT.c.entity == AUDIT_ENTITY_REVIEW,
            AUDIT.c.entity_id.in_(sa.select(REVIEWS.c.review_id).where(decided)),
        )
        .group_by(AUDIT.c.entity_id, AUDIT.c.actor)
        .subquery()
    )
    rows = session.execute(
        sa.select(
            REVIEWS.c.decided_by, REVIEWS.c.created_at, REVIEWS.c.decided_at, claims.c.claimed_at
        )
        .select_from(
            REVIEWS.outerjoin(
                claims,
                sa.and_(
                    claims.c.review_id == REVIEWS.c.review_id,
                    claims.c.moderator == REVIEWS.c.decided_by,
                ),
            )
        )
        .where(decided)
        .order_by(REVIEWS.c.decided_at.desc(), REVIEWS.c.id.desc())
        .limit(row_cap)
    ).all()
    handling: dict[str, list[float]] = {}
    waiting: dict[str, list[float]] = {}
    for moderator, created_at, decided_at, claimed_at in rows:
        done = _utc(decided_at)
        waiting.setdefault(moderator, []).append((done - _utc(created_at)).total_seconds())
        handled = handling.setdefault(moderator, [])
        if claimed_at is not None and _utc(claimed_at) <= done:
            handled.append((done - _utc(claimed_at)).total_seconds())
    names = api_key_names(session, actors=waiting)
    load = [
        ModeratorLoadPublic(
            moderator=moderator,
            moderator_display=actor_display(moderator, names),
            decided=len(waits),
            mean_handling_seconds=_mean(handling[moderator]),
            mean_time_to_decision_seconds=_mean(waits),
        )
        for moderator, waits in waiting.items()
    ]
    return sorted(load, key=lambda row: (-row.decided, row.moderator))


def oldest_waiting_review(session: Session, *, now: datetime) -> datetime | None:
    """When the oldest review waiting for a moderator (pending or escalated) was created."""
    status = effective_review_status(_utc(now))
    oldest = session.execute(
        sa.select(sa.func.min(REVIEWS.c.created_at)).where(
            status.in_([ReviewStatus.PENDING.value, ReviewStatus.ESCALATED.value])
        )
    ).scalar_one()
    return _utc(oldest) if oldest is not None else None


def queue_metrics(
    session: Session, *, now: datetime, window: MetricsWindow, row_cap: int = METRICS_ROW_CAP
) -> QueueMetricsPublic:
    """`review_stats` at `now`, the oldest review waiting for a moderator, and the window's
    load per moderator."""
    now = _utc(now)
    oldest_at = oldest_waiting_review(session, now=now)
    return QueueMetricsPublic(
        **review_stats(session, now=now)._asdict(),
        oldest_pending_at=oldest_at,
        oldest_pending_age_seconds=(
            round(max(0.0, (now - oldest_at).total_seconds()), 3) if oldest_at else None
        ),
        moderators=moderator_load(session, window=window, row_cap=row_cap),
    )


class ModelScores(NamedTuple):
    """The scores a registry entry's `metrics` holds (None when absent or not a number)."""

    gold_macro_f1: float | None
    time_split_macro_f1: float | None
    validation_macro_f1: float | None
    eval_loss: float | None
    promoted: bool | None
    run_id: int | None


def _at(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def model_scores(metrics: Any) -> ModelScores:
    """Read the scores of the shapes the registry holds, tolerating anything else.

    - nightly challenger: `scores.<split>.macro_f1` (gold, time_split), `decision.promote`,
      `run_id`;
    - base model (the worker's training report): `{"split": "validation", "macro_f1": ...}`, or
      `validation.macro_f1`;
    - LoRA adapter: `eval_loss`, `run_id`.
    """
    validation = _finite(_at(metrics, "validation", "macro_f1"))
    if validation is None and _at(metrics, "split") == "validation":
        validation = _finite(_at(metrics, "macro_f1"))
    promoted = _at(metrics, "decision", "promote")
    run_id = _at(metrics, "run_id")
    return ModelScores(
        gold_macro_f1=_finite(_at(metrics, "scores", "gold", "macro_f1")),
        time_split_macro_f1=_finite(_at(metrics, "scores", "time_split", "macro_f1")),
        validation_macro_f1=validation,
        eval_loss=_finite(_at(metrics, "eval_loss")),
        promoted=promoted if isinstance(promoted, bool) else None,
        run_id=run_id if isinstance(run_id, int) and not isinstance(run_id, bool) else None,
    )


def model_version_metrics(
    session: Session, *, limit: int = MODEL_VERSIONS_SHOWN
) -> list[ModelVersionMetricsPublic]:
    """The newest `limit` registered versions of every kind with their scores, oldest first."""
    models = session.exec(
        select(ModelVersion)
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        .limit(limit)
    ).all()
    return [
        ModelVersionMetricsPublic(
            kind=model.kind,
            version=model.version,
            status=model.status,
            created_at=model.created_at,
            **model_scores(model.metrics)._asdict(),
        )
        for model in reversed(models)
    ]


def recent_job_runs(session: Session, *, limit: int = JOB_RUNS_SHOWN) -> list[JobRunPublic]:
    """The newest `limit` job runs (every job), newest first."""
    runs = session.exec(
        select(JobRun).order_by(col(JobRun.started_at).desc(), col(JobRun.id).desc()).limit(limit)
    ).all()
    public = []
    for run in runs:
        promoted = run.details.get("promoted")
        error = run.details.get("error")
        finished = run.finished_at
        public.append(
            JobRunPublic(
                id=run.id or 0,
                job=run.job,
                status=run.status,
                started_at=run.started_at,
                finished_at=finished,
                duration_seconds=(
                    round((_utc(finished) - _utc(run.started_at)).total_seconds(), 3)
                    if finished is not None
                    else None
                ),
                counts=run.counts,
                promoted=promoted if isinstance(promoted, bool) else None,
                error=str(error)[:500] if error else None,
            )
        )
    return public


def metrics_overview(
    session: Session,
    *,
    now: datetime,
    hours: float,
    bucket_minutes: int,
    row_cap: int = METRICS_ROW_CAP,
) -> MetricsOverviewPublic:
    """Everything the metrics dashboard plots, for the last `hours` in `bucket_minutes` buckets.

    Raises:
        ValueError: an invalid window (see `metrics_window`).
    """
    window = metrics_window(now=now, hours=hours, bucket_minutes=bucket_minutes)
    latency, latency_window, sample = latency_percentiles(session, window=window, row_cap=row_cap)
    per_label, total = agreement(session, window=window)
    return MetricsOverviewPublic(
        window=MetricsWindowPublic(
            since=window.since, until=window.until, hours=hours, bucket_minutes=bucket_minutes
        ),
        throughput=throughput_buckets(session, window=window),
        latency=latency,
        latency_window=latency_window,
        latency_sample=sample,
        decision_mix=decision_mix(session, window=window),
        category_mix=category_mix(session, window=window),
        to_humans=human_share(session, window=window),
        agreement=per_label,
        agreement_total=total,
        queue=queue_metrics(session, now=now, window=window, row_cap=row_cap),
        model_versions=model_version_metrics(session),
        job_runs=recent_job_runs(session),
    )
