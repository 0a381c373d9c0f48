"""Shapes of `/v1/admin/keys`: API keys as admins list, create and revoke them.

A key's hash never leaves the database; its plaintext is in the one answer that creates it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import StringConstraints
from sqlmodel import Field, SQLModel

from moderation.events import DEFAULT_TENANT, TENANT_PATTERN
from moderation.settings import GROUP_PATTERN

# The scopes a key may hold (`crud.API_SCOPES`; a unit test keeps the two equal).
ScopeName = Literal["submit", "read", "moderate", "report", "admin"]
# A tenant a `moderate` key is granted besides its own; `*` grants every tenant.
GRANT_PATTERN = r"^(\*|[a-z0-9][a-z0-9_-]{0,63})$"
TenantName = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
GrantName = Annotated[str, StringConstraints(pattern=GRANT_PATTERN)]
GroupName = Annotated[str, StringConstraints(pattern=GROUP_PATTERN)]


class ApiKeyPublic(SQLModel):
    """An API key without its secret."""

    id: int
    name: str
    prefix: str = Field(description="the public part of the key: `mod_<prefix>_<secret>`")
    scopes: list[str]
    tenant: str = Field(description="the tenant the key acts for")
    granted_tenants: list[str] = Field(
        description="further tenants a `moderate` key works on (`*`: all)"
    )
    moderator_groups: list[str] = Field(
        default_factory=list,
        description="the moderator groups a `moderate` key works on (empty: every group)",
    )
    created_at: datetime
    revoked_at: datetime | None = Field(description="null while the key works")


class ApiKeysPublic(SQLModel):
    """`GET /v1/admin/keys`: every key, revoked ones included, oldest first."""

    items: list[ApiKeyPublic]


class ApiKeyCreate(SQLModel):
    """`POST /v1/admin/keys`."""

    name: str = Field(min_length=1, max_length=128, description="who or what uses it")
    scopes: list[ScopeName] = Field(min_length=1, description="`admin` implies every scope")
    tenant: TenantName = Field(
        default=DEFAULT_TENANT,
        description="the platform the key acts for: it sees only this tenant's posts",
    )
    granted_tenants: list[GrantName] = Field(
        default_factory=list,
        max_length=100,
        description="`moderate` keys only: further tenants to work on (`*`: all)",
    )
    moderator_groups: list[GroupName] = Field(
        default_factory=list,
        max_length=100,
        description="`moderate` keys only: the moderator groups (`review.groups`, or the "
        "default group) whose reviews the key claims; empty: every group",
    )


class ApiKeyCreated(SQLModel):
    """The new key; `api_key` is its plaintext, shown this once and never again."""

    api_key: str = Field(description="`mod_<prefix>_<secret>`: store it now")
    key: ApiKeyPublic
