"""Private helpers the crud modules share, imported explicitly and never re-exported.

The tables the modules query, time and chunking helpers, the idempotent multi-row insert
(`INSERT ... ON CONFLICT DO NOTHING` on PostgreSQL and SQLite), and the summary of a verdict that
review audit entries keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.sql.dml import ReturningInsert
from sqlmodel import Session, SQLModel

from moderation.db.models import (
    AuditLog,
    HumanDecision,
    IdempotencyKey,
    Post,
    Review,
    ReviewVote,
    Verdict,
)
from moderation.taxonomy import Stage

# Bounded IN lists: far below PostgreSQL's 65,535 and SQLite's 32,766 bind parameters.
_IN_CHUNK = 5_000
# Automated verdicts only, most authoritative first (as for the derived post status).
_AUTOMATED_STAGES = (Stage.AGENT.value, Stage.MODEL.value)


def _table(model: type[SQLModel]) -> sa.Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


POSTS = _table(Post)
VERDICTS = _table(Verdict)
REVIEWS = _table(Review)
DECISIONS = _table(HumanDecision)
IDEMPOTENCY_KEYS = _table(IdempotencyKey)
AUDIT = _table(AuditLog)
REVIEW_VOTES = _table(ReviewVote)

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


# SQL for a new row's `status`, computed from the incoming rows (`_post_status`): passed in, as
# the status rules build on this module and it must not import them back.
StatusExpression = Callable[[sa.FromClause], sa.ColumnElement[Any]]


@cache
def _postgres_recordset_insert(
    table: sa.Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...],
    derived_status: StatusExpression | None,
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
        derived_status(records)
        if derived_status is not None and name == "status"
        else records.c[name]
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
    derived_status: StatusExpression | None = None,
) -> int:
    """`INSERT ... ON CONFLICT (conflict) DO NOTHING` for many rows; returns how many were new.

    With `derived_status` (posts, PostgreSQL) each new post's status is computed by that SQL
    from the verdicts, reviews and decisions already recorded instead of taken from the row.
    """
    if not rows:
        return 0
    dialect = _dialect(session)
    if dialect == "postgresql":
        statement = _postgres_recordset_insert(
            table, tuple(rows[0]), tuple(conflict), derived_status
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


def _verdict_summary(verdict: Verdict | None) -> dict[str, Any] | None:
    """The automated verdict a review is about, as the review's audit entries record it."""
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
