"""The audit log: who did what to which entity, with the state before and after.

Writers append in the transaction of the change they audit; the audit page (`GET /v1/audit`)
reads it newest first, filtered, and only the tenants the reader sees (`tenants=None`: all).
Entries about a post's things (claims, decisions, appeals) carry the post's tenant; entries
without one (live configuration, API keys) are global and shown only to keys that see every
tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlmodel import Session, col, select

from moderation.db.crud._sql import AUDIT, _utc
from moderation.db.crud._tenants import Tenants, tenant_in
from moderation.db.models import AuditLog, Post
from moderation.events import utc_now

# The `entity` of audit entries about reviews.
AUDIT_ENTITY_REVIEW = "review"


def append_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    tenant: str | None = None,
    at: datetime | None = None,
    commit: bool = True,
) -> AuditLog:
    """Append one audit entry (who, what, on which entity, the state before and after).

    `tenant` is the tenant of the post the entity belongs to (`post_tenant`); None for a global
    change. With `commit=False` the entry joins the session's transaction and the caller commits.
    """
    entry = AuditLog(
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        before=to_jsonable_python(before),
        after=to_jsonable_python(after),
        tenant=tenant,
        at=_utc(at) if at is not None else utc_now(),
    )
    session.add(entry)
    if commit:
        session.commit()
        session.refresh(entry)
    return entry


def post_tenant(session: Session, *, post_id: str) -> str | None:
    """The tenant of a recorded post; None when the post is not recorded (yet)."""
    return session.exec(select(Post.tenant).where(Post.id == post_id)).first()


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to read: each field set narrows the selection (exact matches; the times
    are inclusive). `tenants` are the ones the reader sees, None for all of them."""

    tenants: Tenants = None
    actor: str | None = None
    action: str | None = None
    entity: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _audit_conditions(where: AuditFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    # NULL (global) entries fail the IN test: they are for all-tenant readers only.
    conditions += tenant_in(AUDIT.c.tenant, where.tenants)
    for column, value in (
        (AuditLog.actor, where.actor),
        (AuditLog.action, where.action),
        (AuditLog.entity, where.entity),
        (AuditLog.entity_id, where.entity_id),
    ):
        if value is not None:
            conditions.append(col(column) == value)
    if where.since is not None:
        conditions.append(col(AuditLog.at) >= _utc(where.since))
    if where.until is not None:
        conditions.append(col(AuditLog.at) <= _utc(where.until))
    return conditions


def _newest_first(where: AuditFilter) -> Any:
    return (
        select(AuditLog)
        .where(*_audit_conditions(where))
        .order_by(col(AuditLog.at).desc(), col(AuditLog.id).desc())
    )


def list_audit(
    session: Session, *, where: AuditFilter, limit: int = 50, offset: int = 0
) -> tuple[list[AuditLog], int]:
    """A page of the entries matching `where`, newest first, and how many match in all."""
    total = session.exec(
        select(sa.func.count()).select_from(AuditLog).where(*_audit_conditions(where))
    ).one()
    rows = session.exec(_newest_first(where).limit(limit).offset(offset)).all()
    return list(rows), int(total)


def iter_audit(
    session: Session, *, where: AuditFilter, limit: int, chunk: int = 1_000
) -> Iterator[list[AuditLog]]:
    """The entries matching `where`, newest first, at most `limit`, in lists of `chunk` rows
    (the CSV export streams them without holding the whole log in memory)."""
    result = session.exec(_newest_first(where).limit(limit).execution_options(yield_per=chunk))
    yield from (list(part) for part in result.partitions(chunk))
