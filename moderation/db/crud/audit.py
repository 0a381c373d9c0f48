"""The audit log: who did what to which entity, with the state before and after."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlmodel import Session

from moderation.db.crud._sql import _utc
from moderation.db.models import AuditLog
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
