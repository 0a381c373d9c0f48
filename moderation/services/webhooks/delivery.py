"""The delivery loop: claim due deliveries, send each to its endpoint, record the outcome.

- **Claims.** Every `poll_interval_seconds` (or at once when the consumer inserted something)
  the loop claims due deliveries (`crud.claim_due_deliveries`: `FOR UPDATE SKIP LOCKED`, and a
  lease, so replicas never take the same row and a crashed replica's claims come back). An
  endpoint whose queue is full or whose breaker is open is left out of the claim.
- **Isolation.** Each endpoint has its own lane: a bounded queue and `endpoint_concurrency`
  workers. A slow or dead endpoint fills only its own lane; the others, and the Kafka consumer
  that creates deliveries, never wait for it.
- **Attempts.** The URL is checked again (`moderation.webhooks.resolve_target`: DNS may have
  changed since registration) and the request goes to the address that was checked, signed
  with the endpoint's secrets, without following redirects, within `timeout_seconds`. A 2xx
  answer is a success; anything else, a timeout or a refused target is a failed attempt.
- **Retries.** After the n-th failed attempt the next one waits a random time between 0 and
  `min(backoff_cap_seconds, backoff_base_seconds * 2**(n-1))` (full jitter). A failure at or
  after the delivery's deadline (`max_age_hours` after it was created) is the last: the
  delivery is marked `dead` with its error, the dead-letter record the API shows.
- **Breakers.** `breaker_failures` failed attempts in a row open the endpoint's breaker for
  `breaker_cooldown_seconds`: its queued deliveries go back to the database, due when a trial
  attempt may be made, without counting as attempts.

Deliveries are at least once: an attempt whose answer is lost, or a lease that ends while an
attempt is still running, sends the same `webhook-id` again; receivers deduplicate on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import SplitResult, urlunsplit

import httpx
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.crud.webhooks import ENDPOINT_DELETED
from moderation.db.models import WebhookEndpoint
from moderation.events import utc_now
from moderation.resilience import CircuitBreaker
from moderation.settings import Settings, WebhookSettings
from moderation.webhooks import (
    IPAddress,
    Resolver,
    TargetRefused,
    https_required,
    resolve_target,
    signature_headers,
    system_resolver,
)

logger = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "moderation_webhook_attempts_total",
    "delivery attempts by outcome (succeeded | failed | refused: the target was not allowed)",
    ["outcome"],
)
DELIVERIES_DEAD = Counter(
    "moderation_webhook_deliveries_dead_total",
    "deliveries given up after their last attempt (or because their endpoint was deleted)",
)
ATTEMPT_SECONDS = Histogram(
    "moderation_webhook_attempt_seconds",
    "time of one delivery attempt: resolve, connect, send, answer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
OPEN_BREAKERS = Gauge("moderation_webhook_open_breakers", "endpoints whose circuit breaker is open")
USER_AGENT = "moderation-webhooks/1"


def backoff_bound(attempt: int, settings: WebhookSettings) -> float:
    """The longest wait after the `attempt`-th failed attempt (1-based)."""
    exponent = min(max(attempt - 1, 0), 62)  # 2**62 s is past any cap: no float overflow
    return min(settings.backoff_cap_seconds, settings.backoff_base_seconds * 2.0**exponent)


def retry_delay(attempt: int, settings: WebhookSettings, rng: random.Random) -> float:
    """Full jitter: a uniform wait between 0 and `backoff_bound(attempt)`."""
    return rng.uniform(0.0, backoff_bound(attempt, settings))


def payload_body(payload: dict[str, Any]) -> bytes:
    """The delivered body: compact JSON, the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class AttemptResult:
    succeeded: bool
    status_code: int | None = None
    error: str | None = None
    refused: bool = False


def _pinned_url(parts: SplitResult, address: IPAddress) -> str:
    """The URL with its host replaced by the address that was checked."""
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


class Sender:
    """Sends one attempt of a delivery to its endpoint.

    Args:
        settings: timeouts and what targets are allowed.
        require_https: refuse http:// URLs (outside development).
        client: the HTTP client (no redirects); closed by its owner.
        resolver: host name resolution (tests pass their own).
    """

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        require_https: bool,
        client: httpx.AsyncClient,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.require_https = require_https
        self.client = client
        self.resolver = resolver

    async def send(
        self, *, url: str, delivery_id: str, body: bytes, signing_secrets: list[str], at: datetime
    ) -> AttemptResult:
        try:
            parts, addresses = await resolve_target(
                url,
                require_https=self.require_https,
                allow_private=self.settings.allow_private_targets,
                resolver=self.resolver,
            )
        except TargetRefused as error:
            return AttemptResult(False, error=f"target refused: {error}", refused=True)
        headers = signature_headers(
            delivery_id=delivery_id, body=body, signing_secrets=signing_secrets, at=at
        )
        headers |= {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": parts.netloc.rsplit("@", 1)[-1],
        }
        # The host name still names the server for TLS (SNI and the certificate check).
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        request = self.client.build_request(
            "POST",
            _pinned_url(parts, addresses[0]),
            content=body,
            headers=headers,
            extensions=extensions,
        )
        try:
            response = await self.client.send(request, stream=True)
            await response.aclose()  # the answer's body is not read: only its status counts
        except httpx.TimeoutException:
            return AttemptResult(False, error=f"timed out after {self.settings.timeout_seconds:g}s")
        except httpx.HTTPError as error:
            return AttemptResult(False, error=f"{type(error).__name__}: {error}"[:500])
        if 200 <= response.status_code < 300:
            return AttemptResult(True, status_code=response.status_code)
        reason = f"HTTP {response.status_code}"
        if 300 <= response.status_code < 400:
            reason += " (redirects are not followed)"
        return AttemptResult(False, status_code=response.status_code, error=reason)


@dataclass(frozen=True)
class Job:
    delivery: crud.ClaimedDelivery
    endpoint: WebhookEndpoint


class Lane:
    """One endpoint's bounded queue and its workers."""

    def __init__(
        self, endpoint_id: str, settings: WebhookSettings, work: Callable[[Lane, Job], Any]
    ) -> None:
        self.endpoint_id = endpoint_id
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.endpoint_queue)
        self.breaker = CircuitBreaker(
            failures=settings.breaker_failures, reset_seconds=settings.breaker_cooldown_seconds
        )
        self.in_flight: set[str] = set()
        self._work = work
        self.tasks = [
            asyncio.create_task(self._run(), name=f"webhook-lane-{endpoint_id}-{n}")
            for n in range(settings.endpoint_concurrency)
        ]

    def room(self) -> int:
        return self.queue.maxsize - self.queue.qsize()

    def offer(self, job: Job) -> bool:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            return False
        return True

    def drain(self) -> list[Job]:
        """Take every queued job out (they are handed back to the database)."""
        jobs: list[Job] = []
        while True:
            try:
                jobs.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return jobs
            self.queue.task_done()

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            self.in_flight.add(job.delivery.id)
            try:
                await self._work(self, job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one delivery's failure must not stop the lane
                logger.exception("webhooks: delivery %s failed unexpectedly", job.delivery.id)
            finally:
                self.in_flight.discard(job.delivery.id)
                self.queue.task_done()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Dispatcher:
    """Claims due deliveries and sends them, one lane per endpoint.

    Args:
        settings: the settings tree (`webhooks`, `environment`).
        engine: where deliveries and endpoints are (a callable: the service sets it at start).
        client: the HTTP client; default one without redirects, closed by `close`.
        resolver: host name resolution.
        rng: the jitter's randomness.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Callable[[], Engine | None],
        *,
        client: httpx.AsyncClient | None = None,
        resolver: Resolver = system_resolver,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.webhooks
        self._engine = engine
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self.config.timeout_seconds),
            trust_env=False,  # never through an environment's proxy: the target was checked
        )
        self.sender = Sender(
            self.config,
            require_https=https_required(settings),
            client=self.client,
            resolver=resolver,
        )
        self.rng = rng or random.Random()
        self.lanes: dict[str, Lane] = {}
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # A claim is held while the delivery waits in its lane and is sent: at most a full
        # queue's worth of attempts ahead of it, each within the timeout.
        per_lane = self.config.endpoint_queue / self.config.endpoint_concurrency + 1
        self.lease = timedelta(seconds=self.config.timeout_seconds * per_lane + 30.0)

    # --- the database, off the event loop -----------------------------------------------

    async def _db(self, work: Callable[[Session], Any]) -> Any:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the webhook dispatcher has no database engine (not started)")

        def run() -> Any:
            with Session(engine) as session:
                return work(session)

        return await asyncio.to_thread(run)

    # --- claiming -------------------------------------------------------------------------

    def _blocked_endpoints(self) -> set[str]:
        return {
            endpoint_id
            for endpoint_id, lane in self.lanes.items()
            if lane.room() == 0 or not lane.breaker.ready()
        }

    def _lane(self, endpoint_id: str) -> Lane:
        lane = self.lanes.get(endpoint_id)
        if lane is None:
            lane = self.lanes[endpoint_id] = Lane(endpoint_id, self.config, self._attempt)
        return lane

    async def poll_once(self) -> int:
        """Claim the due deliveries and queue them in their lanes; how many were claimed."""
        now = utc_now()
        blocked = self._blocked_endpoints()
        claimed: list[crud.ClaimedDelivery] = await self._db(
            lambda session: crud.claim_due_deliveries(
                session,
                at=now,
                lease_until=now + self.lease,
                limit=self.config.claim_batch,
                exclude_endpoints=blocked,
            )
        )
        if not claimed:
            return 0
        wanted = {item.endpoint_id for item in claimed}
        endpoints: dict[str, WebhookEndpoint] = await self._db(
            lambda session: crud.endpoints_by_id(session, endpoint_ids=wanted)
        )
        gone: list[str] = []
        overflow: list[str] = []
        for item in claimed:
            endpoint = endpoints.get(item.endpoint_id)
            if endpoint is None or endpoint.disabled_at is not None:
                gone.append(item.id)
            elif not self._lane(item.endpoint_id).offer(Job(item, endpoint)):
                overflow.append(item.id)
        if gone:
            await self._db(
                lambda session: crud.mark_deliveries_dead(
                    session, delivery_ids=gone, reason=ENDPOINT_DELETED
                )
            )
            DELIVERIES_DEAD.inc(len(gone))
        if overflow:  # a lane filled up since `_blocked_endpoints`: due again at once
            await self._release(overflow, now)
        return len(claimed)

    async def _release(self, delivery_ids: list[str], at: datetime) -> None:
        await self._db(
            lambda session: crud.release_deliveries(
                session, delivery_ids=delivery_ids, next_attempt_at=at
            )
        )

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, lane: Lane, job: Job) -> None:
        if not lane.breaker.allow():
            # Open breaker: this job and every queued one go back, due at the trial time.
            jobs = [job, *lane.drain()]
            wait = max(lane.breaker.seconds_until_trial(), self.config.poll_interval_seconds)
            await self._release([j.delivery.id for j in jobs], utc_now() + timedelta(seconds=wait))
            return
        delivery = job.delivery
        started = time.perf_counter()
        at = utc_now()
        try:
            result = await self.sender.send(
                url=job.endpoint.url,
                delivery_id=delivery.id,
                body=payload_body(delivery.payload),
                signing_secrets=crud.signing_secrets(job.endpoint, at=at),
                at=at,
            )
        finally:
            ATTEMPT_SECONDS.observe(time.perf_counter() - started)
        if result.succeeded:
            lane.breaker.record_success()
        else:
            lane.breaker.record_failure()
        OPEN_BREAKERS.set(sum(1 for other in self.lanes.values() if other.breaker.is_open))
        ATTEMPTS.labels(
            outcome="succeeded" if result.succeeded else "refused" if result.refused else "failed"
        ).inc()
        await self._record(delivery, result)

    async def _record(self, delivery: crud.ClaimedDelivery, result: AttemptResult) -> None:
        now = utc_now()
        next_at: datetime | None = None
        if not result.succeeded and now < delivery.expires_at:
            delay = retry_delay(delivery.attempts + 1, self.config, self.rng)
            next_at = min(now + timedelta(seconds=delay), delivery.expires_at)
        await self._db(
            lambda session: crud.record_delivery_attempt(
                session,
                delivery_id=delivery.id,
                at=now,
                succeeded=result.succeeded,
                status_code=result.status_code,
                error=result.error,
                next_attempt_at=next_at,
            )
        )
        if not result.succeeded and next_at is None:
            DELIVERIES_DEAD.inc()
            logger.warning(
                "webhooks: delivery %s to endpoint %s is dead after %d attempts: %s",
                delivery.id,
                delivery.endpoint_id,
                delivery.attempts + 1,
                result.error,
            )

    # --- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    def poke(self) -> None:
        """New deliveries exist: poll now rather than at the next interval."""
        self.wake.set()

    async def _run(self) -> None:
        while True:
            self.wake.clear()
            try:
                claimed = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - e.g. the database restarting: poll again later
                logger.warning("webhooks: polling for due deliveries failed", exc_info=True)
                claimed = 0
            if claimed >= self.config.claim_batch:
                continue  # a backlog: claim the next batch at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.config.poll_interval_seconds)

    async def close(self) -> None:
        """Stop polling, stop the lanes, hand queued (not yet sent) deliveries back."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        queued = [job.delivery.id for lane in self.lanes.values() for job in lane.drain()]
        for lane in self.lanes.values():
            await lane.close()
        self.lanes.clear()
        if queued:
            try:
                await self._release(queued, utc_now())
            except Exception:  # noqa: BLE001 - their lease ends by itself
                logger.warning("webhooks: could not hand back %d deliveries", len(queued))
        if self._own_client:
            await self.client.aclose()
