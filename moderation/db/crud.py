"""The single database API: keyword-only functions over a `Session`, for every reader and writer.

The api, the recorder, the dashboards and the jobs go through these functions; nothing else
writes SQL against the read model. Every write function commits its own transaction.

Projections of the Kafka topics (`record_*`) are idempotent: each is an
`INSERT ... ON CONFLICT DO NOTHING` on the event's natural key (posts.id, verdicts
(post_id, stage, model_version), reviews.post_id, decisions.event_id), so a redelivered event is
harmless. `record_events` writes a whole consumer batch with one round trip per table.

Post status is *derived*, never set by an event directly: in the same transaction as the facts
of a batch, the status of every post the batch touched is recomputed from the rows present:

1. `decided` when a human decision (or a `human`-stage verdict) exists; decisions are
   append-only, so a decided post never moves back;
2. else the most authoritative automated verdict (an `agent` verdict over a `model` one; the
   latest among equals) maps allow → `allowed`, remove → `removed`, review → `in_review`;
3. else `in_review` when a review was requested, else `pending`.

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
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

import sqlalchemy as sa
from pydantic_core import to_json, to_jsonable_python
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.sql.dml import ReturningInsert
from sqlmodel import Session, SQLModel, col, select

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
from moderation.events import (
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewRequested,
    utc_now,
)
from moderation.taxonomy import Decision as VerdictDecision
from moderation.taxonomy import Stage

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
        "post_id": event.post_id,
        "status": ReviewStatus.PENDING,
        "priority": event.priority.value,
        "reason": event.reason,
        "category": event.verdict.primary_category.value,
        "created_at": _utc(event.occurred_at),
        "updated_at": now,
    }


def _decision_row(event: ReviewDecided) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "post_id": event.post_id,
        "label": event.label.value,
        "decision": event.decision.value,
        "moderator_id": event.moderator_id,
        "note": event.note,
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
            kind, key, row = "reviews", event.post_id, _review_row(event, now)
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
        "reviews": _insert_ignore(session, REVIEWS, list(keyed["reviews"].values()), ["post_id"]),
        "decisions": _insert_ignore(
            session, DECISIONS, list(keyed["decisions"].values()), ["event_id"]
        ),
    }
    facts = {
        row["post_id"]
        for kind in ("verdicts", "reviews", "decisions")
        for row in keyed[kind].values()
    }
    decided = sorted(
        {row["post_id"] for kind in ("reviews", "decisions") for row in keyed[kind].values()}
    )
    posts = list(keyed["posts"].values())
    if _dialect(session) == "postgresql":
        _lock_status_recompute(session)
        # New posts get their derived status as they are inserted (no second write): only
        # posts that existed before need the recompute.
        inserted["posts"] = _insert_ignore(session, POSTS, posts, ["id"], derive_status=True)
        _refresh_derived_status(session, post_ids=sorted(facts), review_post_ids=decided)
    else:
        inserted["posts"] = _insert_ignore(session, POSTS, posts, ["id"])
        touched = sorted(facts | {row["id"] for row in posts})
        _refresh_derived_status(session, post_ids=touched, review_post_ids=decided)
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
    # Cheap existence probes first: the sorted verdict lookup runs only when there is one.
    return sa.case(
        (has_decision, _status_literal(PostStatus.DECIDED)),
        (has_verdict, top_verdict),
        (has_review, _status_literal(PostStatus.IN_REVIEW)),
        else_=_status_literal(PostStatus.PENDING),
    )


def _in_post_ids(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[bool]:
    if dialect == "postgresql":
        # One array parameter: a statement psycopg caches, whatever the number of ids.
        return column == sa.any_(sa.bindparam("post_ids", type_=postgresql.ARRAY(sa.Text())))
    return column.in_(sa.bindparam("post_ids", expanding=True))


@lru_cache(maxsize=4)
def _post_status_update(dialect: str) -> sa.Update:
    """`UPDATE posts SET status = derived FROM (derived per post id) WHERE it changed`."""
    scoped = POSTS.alias("p")
    derived = (
        sa.select(scoped.c.id, _derived_post_status(scoped).label("status"))
        .where(_in_post_ids(scoped.c.id, dialect))
        .subquery("derived")
    )
    return (
        sa.update(POSTS)
        .where(POSTS.c.id == derived.c.id, POSTS.c.status != derived.c.status)
        .values(status=derived.c.status)
    )


@lru_cache(maxsize=4)
def _review_decided_update(dialect: str) -> sa.Update:
    """Close (status decided) the reviews of posts that have a human decision."""
    decision = DECISIONS.alias("d")
    return (
        sa.update(REVIEWS)
        .where(
            _in_post_ids(REVIEWS.c.post_id, dialect),
            REVIEWS.c.status != ReviewStatus.DECIDED,
            sa.exists().where(decision.c.post_id == REVIEWS.c.post_id),
        )
        .values(status=ReviewStatus.DECIDED, updated_at=sa.bindparam("now"))
    )


def _lock_status_recompute(session: Session) -> None:
    """Take the PostgreSQL advisory lock that serializes status derivation (held until commit).

    Statements after it take their snapshot once it is held: they see the facts of every
    writer that committed before, so concurrent recorders cannot leave a stale status.
    """
    session.connection().execute(sa.select(sa.func.pg_advisory_xact_lock(_STATUS_LOCK_KEY)))


def _refresh_derived_status(
    session: Session, *, post_ids: Sequence[str], review_post_ids: Sequence[str] = ()
) -> None:
    """Recompute posts.status (and close decided reviews) for these posts (caller commits)."""
    if not post_ids and not review_post_ids:
        return
    dialect = _dialect(session)
    for chunk in _chunks(post_ids):
        session.exec(_post_status_update(dialect), params={"post_ids": list(chunk)})
    for chunk in _chunks(review_post_ids):
        session.exec(
            _review_decided_update(dialect), params={"post_ids": list(chunk), "now": utc_now()}
        )


def _record_one(session: Session, event: Event, kind: str) -> bool:
    return record_events(session, events=[event]).inserted[kind] == 1


def record_post_submitted(session: Session, *, event: PostSubmitted) -> bool:
    """Record a submitted post; returns False when it was already recorded."""
    return _record_one(session, event, "posts")


def record_verdict(session: Session, *, event: ModerationVerdict) -> bool:
    """Record a stage's verdict; returns False for a duplicate (post, stage, model version)."""
    return _record_one(session, event, "verdicts")


def record_review_requested(session: Session, *, event: ReviewRequested) -> bool:
    """Open a pending review for the post; returns False when one already exists."""
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
    reviews = session.exec(select(Review).where(Review.post_id == post_id)).all()
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


def authenticate_api_key(session: Session, *, key: str) -> ApiKey | None:
    """The key's row when `key` is valid and not revoked, else None (constant-time check)."""
    parts = key.split("_", 2) if len(key) <= 256 else []
    prefix = parts[1] if len(parts) == 3 and parts[0] == API_KEY_PREFIX else None
    api_key = (
        session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
        if prefix is not None and len(prefix) <= 32
        else None
    )
    expected = api_key.key_hash if api_key is not None else _UNKNOWN_KEY_DIGEST
    matches = hmac.compare_digest(_key_digest(key), expected)
    if api_key is None or not matches or api_key.revoked_at is not None:
        return None
    return api_key


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
) -> ModelVersion:
    """Register a model version (idempotent on kind + version: a known one is returned as is).

    With status `champion` the version is promoted (registered before or not) and the previous
    champion of the same kind is retired, in one transaction.
    """
    model = session.exec(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    ).first()
    if model is None:
        model = ModelVersion(
            kind=kind,
            version=version,
            artifact_uri=artifact_uri,
            metrics=to_jsonable_python(metrics),
            status=status,
        )
        session.add(model)
        session.flush()
    elif status is ModelStatus.CHAMPION:
        model.status = status
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
) -> AuditLog:
    """Append one audit entry (who, what, on which entity, the state before and after)."""
    entry = AuditLog(
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        before=to_jsonable_python(before),
        after=to_jsonable_python(after),
    )
    session.add(entry)
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
