"""The live configuration's store (`moderation_config`) and its audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from moderation.db.crud.audit import append_audit
from moderation.db.models import AuditLog, ConfigEntry

AUDIT_ENTITY_CONFIG = "config"


@dataclass(frozen=True)
class ConfigChange:
    key: str
    actor: str
    at: datetime
    before: str | None  # the stored JSON value; None: not set
    after: str | None
    version: str | None


def list_config(session: Session) -> list[ConfigEntry]:
    """Every stored key, by key."""
    return list(session.exec(select(ConfigEntry).order_by(col(ConfigEntry.key))).all())


def set_config(session: Session, *, key: str, value: str, actor: str) -> ConfigEntry:
    """Store `value` (JSON text) under `key` with the next version, audited in the same
    transaction (who, when, before, after). The caller validates key and value first."""
    # Serialised on the table: two writers cannot hand out the same version.
    rows = session.exec(select(ConfigEntry).with_for_update()).all()
    version = str(max((int(r.version) for r in rows if r.version.isdigit()), default=0) + 1)
    entry = next((row for row in rows if row.key == key), None)
    before = {"value": entry.value, "version": entry.version} if entry is not None else None
    if entry is None:
        entry = ConfigEntry(key=key, value=value, version=version, meta={"by": actor})
    else:
        entry.value, entry.version, entry.meta = value, version, {"by": actor}
    session.add(entry)
    append_audit(
        session,
        actor=actor,
        action="config.set",
        entity=AUDIT_ENTITY_CONFIG,
        entity_id=key,
        before=before,
        after={"value": value, "version": version},
        commit=False,
    )
    session.commit()
    session.refresh(entry)
    return entry


def config_changes(session: Session, *, limit: int = 50) -> list[ConfigChange]:
    """The latest changes, newest first."""
    rows = session.exec(
        select(AuditLog)
        .where(AuditLog.entity == AUDIT_ENTITY_CONFIG)
        .order_by(col(AuditLog.at).desc(), col(AuditLog.id).desc())
        .limit(limit)
    ).all()
    return [
        ConfigChange(
            key=row.entity_id,
            actor=row.actor,
            at=row.at,
            before=(row.before or {}).get("value"),
            after=(row.after or {}).get("value"),
            version=(row.after or {}).get("version"),
        )
        for row in rows
    ]
