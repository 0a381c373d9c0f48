"""API keys: created once in plaintext, stored as a digest, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Iterable
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.actors import actor_key_ids
from moderation.db.crud._sql import _IN_CHUNK
from moderation.db.crud.audit import append_audit
from moderation.db.models import ApiKey
from moderation.events import DEFAULT_TENANT, TENANT_PATTERN, utc_now
from moderation.settings import GROUP_PATTERN

API_SCOPES = frozenset({"submit", "read", "moderate", "report", "admin"})
# A `moderate` key granted this tenant works on every tenant.
ALL_TENANTS = "*"
API_KEY_PREFIX = "mod"
# The `entity` of audit entries about API keys (actions `api_key.create`, `api_key.revoke`).
AUDIT_ENTITY_API_KEY = "api_key"


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# Compared against when the prefix is unknown, so a miss costs the same as a wrong secret.
_UNKNOWN_KEY_DIGEST = _key_digest(f"{API_KEY_PREFIX}_unknown_unknown")


def create_api_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    tenant: str = DEFAULT_TENANT,
    granted_tenants: Iterable[str] | None = None,
    actor: str | None = None,
    moderator_groups: Iterable[str] | None = None,
    known_groups: Collection[str] | None = None,
) -> tuple[str, ApiKey]:
    """Create an API key; the plaintext `mod_<prefix>_<secret>` is returned once, never stored.

    With `actor` (who creates it: `key:<id>`, or `cli`) an `api_key.create` audit entry is
    written in the same transaction (the key's state, never its hash). `moderator_groups`
    (a `moderate` key's groups, README "Routing to moderator groups") must be among
    `known_groups` when given (the configured groups and the default group).

    Raises:
        ValueError: for a scope outside `API_SCOPES`, a malformed tenant name, granted
            tenants or moderator groups on a key without `moderate`, or an unknown group.
    """
    wanted = sorted(set(scopes))
    unknown = [scope for scope in wanted if scope not in API_SCOPES]
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; valid: {sorted(API_SCOPES)}")
    grants = sorted(set(granted_tenants or ()))
    if grants and "moderate" not in wanted:
        # Only `moderate` keys work across tenants (`security.Principal.tenants`).
        raise ValueError("granted tenants apply only to keys with the `moderate` scope")
    for name_ in [tenant, *grants]:
        if name_ != ALL_TENANTS and not re.fullmatch(TENANT_PATTERN, name_):
            raise ValueError(
                f"invalid tenant {name_!r}: lower-case letters, digits, '-' and '_', 1-64 long"
            )
    groups = _checked_groups(sorted(set(moderator_groups or ())), wanted, known_groups)
    prefix = secrets.token_hex(6)  # hex: never contains the "_" separator
    plaintext = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=_key_digest(plaintext),
        scopes=wanted,
        tenant=tenant,
        granted_tenants=grants,
        moderator_groups=groups,
    )
    session.add(api_key)
    if actor is not None:
        session.flush()  # the id, for the audit entry, in the same transaction
        _audit_key(session, actor=actor, action="api_key.create", before=None, after=api_key)
    session.commit()
    session.refresh(api_key)
    return plaintext, api_key


def _checked_groups(
    groups: list[str], scopes: list[str], known: Collection[str] | None
) -> list[str]:
    if groups and "moderate" not in scopes:
        raise ValueError("moderator groups apply only to keys with the `moderate` scope")
    for group in groups:
        if not re.fullmatch(GROUP_PATTERN, group):
            raise ValueError(
                f"invalid moderator group {group!r}: lower-case letters, digits, '-' and '_', "
                "1-64 long"
            )
    unknown = [group for group in groups if known is not None and group not in known]
    if unknown:
        raise ValueError(
            f"unknown moderator group(s) {unknown}; configured: {list(known or ())} "
            "(MODERATION_REVIEW__GROUPS, MODERATION_REVIEW__DEFAULT_GROUP)"
        )
    return groups


def api_key_state(api_key: ApiKey) -> dict[str, Any]:
    """What the audit log keeps of a key: everything but its hash."""
    return {
        "id": api_key.id,
        "name": api_key.name,
        "prefix": api_key.prefix,
        "scopes": list(api_key.scopes),
        "tenant": api_key.tenant,
        "granted_tenants": list(api_key.granted_tenants),
        "moderator_groups": list(api_key.moderator_groups),
        "created_at": api_key.created_at,
        "revoked_at": api_key.revoked_at,
    }


def _audit_key(
    session: Session, *, actor: str, action: str, before: dict[str, Any] | None, after: ApiKey
) -> None:
    """An audit entry about `after` in the session's transaction (the caller commits)."""
    append_audit(
        session,
        actor=actor,
        action=action,
        entity=AUDIT_ENTITY_API_KEY,
        entity_id=str(after.id),
        before=before,
        after=api_key_state(after),
        commit=False,
    )


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


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.id))).all())


class KeyRevocation(StrEnum):
    """What `revoke_api_key_by_id` did."""

    REVOKED = "revoked"
    NOT_FOUND = "not_found"
    ALREADY_REVOKED = "already_revoked"


def revoke_api_key_by_id(
    session: Session, *, key_id: int, actor: str
) -> tuple[KeyRevocation, ApiKey | None]:
    """Revoke key `key_id`, audited as `api_key.revoke` by `actor` in the same transaction.

    One conditional UPDATE (only a key not yet revoked), so of two concurrent revocations one
    revokes and the other finds it revoked.

    Returns:
        What happened, and the key's row as it now is (None when there is no such key).
    """
    before = session.get(ApiKey, key_id)
    if before is None:
        return KeyRevocation.NOT_FOUND, None
    state = api_key_state(before)
    revoked = session.execute(
        sa.update(ApiKey)
        .where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))
        .values(revoked_at=utc_now())
        .returning(col(ApiKey.id))
    ).first()
    if revoked is None:
        session.rollback()
        return KeyRevocation.ALREADY_REVOKED, session.get(ApiKey, key_id)
    session.refresh(before)
    _audit_key(session, actor=actor, action="api_key.revoke", before=state, after=before)
    session.commit()
    session.refresh(before)
    return KeyRevocation.REVOKED, before


def revoke_api_key(session: Session, *, prefix: str) -> bool:
    """Revoke the key with this prefix; returns False when there is no such active key."""
    api_key = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if api_key is None or api_key.revoked_at is not None:
        return False
    api_key.revoked_at = utc_now()
    session.add(api_key)
    session.commit()
    return True
