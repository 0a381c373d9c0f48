"""API keys: created once in plaintext, stored as a digest, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.actors import actor_key_ids
from moderation.db.crud._sql import _IN_CHUNK
from moderation.db.models import ApiKey
from moderation.events import utc_now

API_SCOPES = frozenset({"submit", "read", "moderate", "admin"})
API_KEY_PREFIX = "mod"


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
