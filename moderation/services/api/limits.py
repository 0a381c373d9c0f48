"""Limits at the API's edge: token buckets per API key and per client address, and body sizes.

Rate limits are token buckets held in this process, so with N API replicas a key may get up to N
times its budget; the limits protect the service from a runaway or hostile client, they are not
billing quotas. Three kinds of bucket (`ApiLimits`):

- posts per API key (`api.rate_limit_per_minute`, burst `api.rate_limit_burst`): every submit
  request costs one on arrival, a batch then costs the rest of its posts once its envelope is
  parsed, an appeal costs one;
- other authenticated requests per API key (`api.request_rate_limit_per_minute`): reading a
  post's trail, the review API, the metrics overview;
- failed key checks per client address (`api.auth_failure_limit_per_minute`): once a client has
  used them up, a key that is not already known valid gets 429 without a database lookup, so
  guessing keys is slow and cannot load the database. Keys known valid (cached) still pass, and
  so do keys whose prefix authenticated in this process (`known_prefixes`): a shared address
  (a NAT, the dashboard's server) flooded with bad keys does not lock its other users out;
- failed key checks per key prefix (`api.key_failure_limit_per_minute`), from any address: the
  public part of `mod_<prefix>_<secret>` names the key being guessed, so guessing one key's
  secret is throttled however many addresses the guesses come from.

The client address is the one `ProxyHeadersMiddleware` settles on (`api.trusted_proxies`): the
socket peer, or behind a trusted proxy the right-most untrusted X-Forwarded-For entry.

A refused request gets 429 with `Retry-After` (whole seconds) in the API's error format.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.services.api.routes.errors import json_error
from moderation.services.api.security import AuthError
from moderation.settings import ApiSettings

MAX_BUCKETS = 100_000
KNOWN_PREFIX_SECONDS = 24 * 3600.0


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` tokens a second."""

    capacity: float
    rate: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` tokens are there (0.0: now); takes nothing."""
        self._refill(now)
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, cost: float, now: float) -> float:
        """Take `cost` tokens and return 0.0, or take nothing and return the seconds to wait."""
        wait = self.wait(cost, now)
        if wait == 0.0:
            self.tokens -= cost
        return wait

    def spend(self, cost: float, now: float) -> None:
        """Take up to `cost` tokens, whatever is there (for charging after the fact)."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - cost)


class Buckets:
    """Token buckets by name, each `burst` tokens refilled at `per_minute`; 0 per minute: off."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_BUCKETS,
    ) -> None:
        self.enabled = per_minute > 0
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.clock = clock
        self.max_entries = max_entries
        self._buckets: dict[Hashable, TokenBucket] = {}

    def _bucket(self, name: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._prune(now)
            bucket = TokenBucket(self.capacity, self.rate, self.capacity, now)
            self._buckets[name] = bucket
        return bucket

    def _prune(self, now: float) -> None:
        # A full bucket is the same as no bucket: forgetting those loses nothing.
        self._buckets = {
            name: bucket
            for name, bucket in self._buckets.items()
            if bucket.wait(self.capacity, now) > 0.0
        }
        if len(self._buckets) >= self.max_entries:
            self._buckets.clear()

    def take(self, name: Hashable, cost: float = 1.0) -> float:
        """Charge `cost` to `name`: 0.0 when allowed, else the seconds to wait (nothing charged)."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        return self._bucket(name, now).take(cost, now)

    def wait(self, name: Hashable, cost: float = 1.0) -> float:
        """Seconds until `name` could spend `cost` (0.0: now); charges nothing."""
        if not self.enabled or name not in self._buckets:
            return 0.0
        now = self.clock()
        return self._bucket(name, now).wait(cost, now)

    def spend(self, name: Hashable, cost: float = 1.0) -> None:
        """Charge `cost` to `name` even when it has less left (it then has nothing)."""
        if self.enabled:
            now = self.clock()
            self._bucket(name, now).spend(cost, now)


class KnownPrefixes:
    """Key prefixes that authenticated recently (`ttl` seconds), at most `max_entries`."""

    def __init__(
        self,
        ttl: float = KNOWN_PREFIX_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_BUCKETS,
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}

    def add(self, prefix: str) -> None:
        now = self.clock()
        if prefix not in self._expiry and len(self._expiry) >= self.max_entries:
            self._expiry = {p: t for p, t in self._expiry.items() if t > now}
            if len(self._expiry) >= self.max_entries:
                self._expiry.clear()
        self._expiry[prefix] = now + self.ttl

    def __contains__(self, prefix: object) -> bool:
        expiry = self._expiry.get(prefix) if isinstance(prefix, str) else None
        return expiry is not None and expiry > self.clock()


def retry_after(seconds: float) -> int:
    """Whole seconds for `Retry-After` (at least 1: a client must not retry at once)."""
    return max(1, math.ceil(seconds))


def rate_limited(message: str, seconds: float) -> AuthError:
    """The 429 answer for a refused request."""
    wait = retry_after(seconds)
    return AuthError(429, f"{message}; retry in {wait}s", retry_after=wait)


@dataclass
class ApiLimits:
    """The API process's buckets (see the module docstring)."""

    posts: Buckets
    requests: Buckets
    auth_failures: Buckets
    key_failures: Buckets
    known_prefixes: KnownPrefixes

    @classmethod
    def from_settings(cls, api: ApiSettings) -> ApiLimits:
        return cls(
            # A full batch must fit in the bucket, whatever the burst setting says.
            posts=Buckets(api.rate_limit_per_minute, max(api.rate_limit_burst, api.max_batch)),
            requests=Buckets(api.request_rate_limit_per_minute, api.request_rate_limit_burst),
            auth_failures=Buckets(api.auth_failure_limit_per_minute, api.auth_failure_burst),
            key_failures=Buckets(api.key_failure_limit_per_minute, api.key_failure_burst),
            known_prefixes=KnownPrefixes(),
        )

    def charge_posts(self, key_id: int, name: str, posts: int) -> None:
        """Charge `posts` posts to the key.

        Raises:
            AuthError: 429 when the key's post budget has not that many left.
        """
        wait = self.posts.take(key_id, posts)
        if wait:
            raise rate_limited(
                f"API key '{name}' is over its rate limit of posts "
                f"({self.posts.rate * 60:,.0f}/min, bursts of {self.posts.capacity:,.0f})",
                wait,
            )

    def charge_request(self, key_id: int, name: str) -> None:
        """Charge one request (anything but submitting posts) to the key.

        Raises:
            AuthError: 429 when the key's request budget is used up.
        """
        wait = self.requests.take(key_id)
        if wait:
            raise rate_limited(
                f"API key '{name}' is over its rate limit of requests "
                f"({self.requests.rate * 60:,.0f}/min, bursts of {self.requests.capacity:,.0f})",
                wait,
            )

    def check_auth_failures(self, client: str, prefix: str | None = None) -> None:
        """Before a key is looked up: refuse a key prefix that failed too many checks from
        anywhere, and a client address that failed too many, unless `prefix` authenticated
        recently (then only the prefix's own budget applies).

        Raises:
            AuthError: 429 while the prefix's or the client's failure budget is used up.
        """
        if prefix is not None:
            wait = self.key_failures.wait(prefix)
            if wait:
                raise rate_limited("too many failed checks of this API key", wait)
            if prefix in self.known_prefixes:
                return
        wait = self.auth_failures.wait(client)
        if wait:
            raise rate_limited(f"too many failed API key checks from {client}", wait)

    def record_auth_failure(self, client: str, prefix: str | None) -> None:
        """A key check failed: charge the client's budget and the key prefix's."""
        self.auth_failures.spend(client)
        if prefix is not None:
            self.key_failures.spend(prefix)


# --- request bodies ---------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit: FastAPI's routes re-raise it to the
    app's HTTP error handler (a 413 in the API's format); `BodySizeLimit` answers it otherwise."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit:,} bytes")


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes` (`per_path` may raise it for a path).

    A declared `Content-Length` over the limit is refused before anything is read; a body
    without one (chunked) is counted while the app reads it and refused as it passes the limit,
    so no more than the limit plus one chunk is ever held.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one; counting still applies
    return None


def _too_large(limit: int) -> ASGIApp:
    return json_error(413, BodyTooLarge(limit).detail)
