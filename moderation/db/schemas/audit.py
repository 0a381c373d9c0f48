"""Shapes of `/v1/audit`: the audit trail (who did what, when, the state before and after)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel


class AuditEntryPublic(SQLModel):
    """One audited change."""

    id: int
    at: datetime
    actor: str = Field(description="who: `key:<id>` for an API key, or a service's name")
    actor_display: str = Field(description="the actor as people read it: `name (key:<id>)`")
    action: str = Field(description="what: `review.claim`, `review.decide`, `config.set`, ...")
    entity: str = Field(description="on what kind of thing: `review`, `config`, ...")
    entity_id: str
    tenant: str | None = Field(
        default=None, description="the tenant of the post concerned; null for a global change"
    )
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class AuditPagePublic(SQLModel):
    """A page of the audit trail, newest first, and how many entries match in all."""

    items: list[AuditEntryPublic]
    total: int
    limit: int
    offset: int
