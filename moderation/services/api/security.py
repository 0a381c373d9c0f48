"""API-key authentication: header parsing, scopes, and a short in-process cache of lookups.

Keys are hashed at rest (`crud.authenticate_api_key` checks them); the cache is keyed by a
SHA-256 of the presented key so the hot path does not hit the database on every request. A key
revoked through this process's admin API stops working at once (`KeyCache.forget_key`); one
revoked elsewhere (the CLI, another replica) keeps working for at most `ttl` seconds here.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine
from sqlmodel import Session

from moderation.actors import key_actor
from moderation.db import crud
from moderation.db.crud.api_keys import ALL_TENANTS
from moderation.db.models import ApiKey
from moderation.events import DEFAULT_TENANT

BEARER_PREFIX = "bearer "
CACHE_TTL_SECONDS = 30.0
NEGATIVE_CACHE_TTL_SECONDS = 2.0
CACHE_MAX_ENTRIES = 10_000


class Scope(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    MODERATE = "moderate"
    REPORT = "report"
    ADMIN = "admin"


class AuthError(Exception):
    """Refused at the key check: 401 (no valid key), 403 (a scope is missing) or 429 (over a rate
    limit, see `limits.py`; `retry_after` is then the whole seconds to wait)."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated API key, as routes see it."""

    key_id: int
    name: str
    scopes: frozenset[str]
    tenant: str = DEFAULT_TENANT
    # Further tenants a `moderate` key works on (`*`: all); see `tenants`.
    granted_tenants: frozenset[str] = frozenset()
    # The moderator groups a `moderate` key works on (empty: all); see `review_groups`.
    moderator_groups: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        """Who this key is in claims, decisions and the audit log (`key:<id>`: names repeat)."""
        return key_actor(self.key_id)

    @property
    def display(self) -> str:
        """The key as people read it: `name (key:<id>)`."""
        return f"{self.name} ({self.actor})"

    @property
    def tenants(self) -> frozenset[str] | None:
        """The tenants whose posts, authors and reviews this key sees; None means all.

        `admin` keys see every tenant; `moderate` keys their own and the ones granted to them;
        every other key only its own.
        """
        if Scope.ADMIN in self.scopes:
            return None
        if Scope.MODERATE in self.scopes:
            if ALL_TENANTS in self.granted_tenants:
                return None
            return self.granted_tenants | {self.tenant}
        return frozenset({self.tenant})

    @property
    def review_groups(self) -> frozenset[str] | None:
        """The moderator groups whose reviews this key lists and claims; None means all.

        Groups route work, they do not hide it: every key still reads any review of its
        tenants. `admin` keys and keys without groups work on every group.
        """
        if Scope.ADMIN in self.scopes or not self.moderator_groups:
            return None
        return self.moderator_groups

    def sees(self, tenant: str) -> bool:
        """Whether this key may see what belongs to `tenant`."""
        tenants = self.tenants
        return tenants is None or tenant in tenants

    def allows(self, scope: Scope) -> bool:
        """Whether this key has `scope` (`admin` implies every scope)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes


def parse_scopes(text: str) -> list[str]:
    """Parse `submit,read` into known scope names.

    Raises:
        ValueError: an unknown or missing scope.
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    known = {scope.value for scope in Scope}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; choose from {sorted(known)}")
    if not names:
        raise ValueError(f"give at least one scope from {sorted(known)}")
    return list(dict.fromkeys(names))


def presented_key(authorization: str | None, x_api_key: str | None) -> str:
    """The key from `Authorization: Bearer <key>` or `X-API-Key`.

    Raises:
        AuthError: 401 when neither header carries a key.
    """
    if authorization:
        if authorization[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX:
            raise AuthError(401, "Authorization header must be 'Bearer <api key>'")
        key = authorization[len(BEARER_PREFIX) :].strip()
        if key:
            return key
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    raise AuthError(
        401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    )


def principal_of(api_key: ApiKey) -> Principal:
    """The cacheable view of an `ApiKey` row."""
    if api_key.id is None:
        raise ValueError("an API key without an id was returned by the database")
    return Principal(
        key_id=api_key.id,
        name=api_key.name,
        scopes=frozenset(api_key.scopes),
        tenant=api_key.tenant,
        granted_tenants=frozenset(api_key.granted_tenants),
        moderator_groups=frozenset(api_key.moderator_groups),
    )


class KeyCache:
    """Successful (and, very briefly, failed) key lookups by SHA-256 of the key."""

    def __init__(
        self,
        ttl: float = CACHE_TTL_SECONDS,
        negative_ttl: float = NEGATIVE_CACHE_TTL_SECONDS,
        max_entries: int = CACHE_MAX_ENTRIES,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        # key id → the digests its principal is cached under, so a revocation can drop them.
        self._digests: dict[int, set[str]] = {}

    @staticmethod
    def digest(key: str) -> str:
        """The cache key for a presented API key (the key itself is never stored)."""
        return hashlib.sha256(key.encode()).hexdigest()

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        """(hit, principal); a hit with None means "known bad key"."""
        entry = self._entries.get(digest)
        if entry is None:
            return False, None
        expires, principal = entry
        if time.monotonic() >= expires:
            self._entries.pop(digest, None)
            return False, None
        return True, principal

    def put(self, digest: str, principal: Principal | None) -> None:
        """Remember a lookup result."""
        if len(self._entries) >= self.max_entries:
            now = time.monotonic()
            self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._digests = {}
            for kept, (_, cached) in self._entries.items():
                if cached is not None:
                    self._digests.setdefault(cached.key_id, set()).add(kept)
        ttl = self.ttl if principal is not None else self.negative_ttl
        self._entries[digest] = (time.monotonic() + ttl, principal)
        if principal is not None:
            self._digests.setdefault(principal.key_id, set()).add(digest)

    def forget_key(self, key_id: int) -> None:
        """Drop every cached lookup of key `key_id` (it was just revoked in this process)."""
        for digest in self._digests.pop(key_id, set()):
            self._entries.pop(digest, None)

    def clear(self) -> None:
        """Forget everything (tests)."""
        self._entries.clear()
        self._digests.clear()


def lookup_key(engine: Engine, key: str) -> Principal | None:
    """Check a presented key against the database (blocking; run it in a thread)."""
    with Session(engine) as session:
        api_key = crud.authenticate_api_key(session, key=key)
        return principal_of(api_key) if api_key is not None else None


def create_key(
    engine: Engine,
    *,
    name: str,
    scopes: list[str],
    tenant: str = DEFAULT_TENANT,
    granted_tenants: list[str] | None = None,
    actor: str | None = None,
    moderator_groups: list[str] | None = None,
    known_groups: list[str] | None = None,
) -> tuple[str, Principal]:
    """Create a key; the plaintext is returned once and never stored (audited when `actor`).

    Raises:
        ValueError: what `crud.create_api_key` refuses (an unknown moderator group among them).
    """
    with Session(engine) as session:
        plaintext, api_key = crud.create_api_key(
            session,
            name=name,
            scopes=scopes,
            tenant=tenant,
            granted_tenants=granted_tenants,
            actor=actor,
            moderator_groups=moderator_groups,
            known_groups=known_groups,
        )
        return plaintext, principal_of(api_key)
