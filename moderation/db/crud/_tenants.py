"""Tenant visibility in SQL: what a key that sees only some tenants may count and read.

Every crud read behind a `/v1` route takes `tenants: frozenset[str] | None` (the key's
`Principal.tenants`): None means every tenant and adds no condition at all, so the queries of
admins and single-tenant deployments stay as they were. Reviews, verdicts and decisions have no
tenant of their own: they belong to their post's tenant, and a row whose post is not recorded
(yet) belongs to no tenant a restricted key sees.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from moderation.db.crud._sql import POSTS

Tenants = frozenset[str] | None


def tenant_in(column: sa.ColumnElement[Any], tenants: Tenants) -> list[sa.ColumnElement[bool]]:
    """`column IN tenants`, or no condition for None (spread it into `.where(*...)`)."""
    if tenants is None:
        return []
    return [column.in_(sorted(tenants))]


def post_visible(post_id: sa.ColumnElement[Any], tenants: Tenants) -> list[sa.ColumnElement[bool]]:
    """`post_id` names a post of one of `tenants` (no condition for None)."""
    if tenants is None:
        return []
    visible = sa.select(POSTS.c.id).where(POSTS.c.tenant.in_(sorted(tenants)))
    return [post_id.in_(visible)]


def sees(tenants: Tenants, tenant: str | None) -> bool:
    """Whether a key seeing `tenants` sees a row of `tenant` (None: its post is unknown)."""
    return tenants is None or (tenant is not None and tenant in tenants)
