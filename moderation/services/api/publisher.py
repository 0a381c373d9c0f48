"""How the API hands events to Kafka: an injectable publisher, Kafka by default, in memory in tests.

A publish call returns only once the broker acknowledged the record (acks=all, idempotent
producer) or raises `PublishUnavailable`; the API turns that into 503, never into a silent drop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from moderation.partitioning import key_partitioner, partition_for
from moderation.telemetry import kafka_headers

log = logging.getLogger(__name__)

# A record as the publisher sees it: (key, value), both already serialized.
Record = tuple[bytes, bytes]

# Producer tuning. Records are batched per partition while a request is in flight, so a short
# linger only helps when traffic is light; large batches carry a 1,000-post request in few calls.
LINGER_MS = 2
MAX_BATCH_BYTES = 512 * 1024
# Bounds each produce/metadata request. Batches that are already sent are retried by the
# idempotent producer until acknowledged; the HTTP request itself waits `timeout` at most.
REQUEST_TIMEOUT_MS = 15_000
# After Kafka was found unreachable, requests get 503 at once for this long; then one retries.
RECONNECT_INTERVAL_SECONDS = 1.0
# How long a broker that missed a deadline gets to answer a metadata request before the
# producer is abandoned.
PROBE_TIMEOUT_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 5.0


class PublishUnavailable(Exception):
    """Kafka did not acknowledge in time or cannot be reached; the caller answers 503.

    `reason` is what a client may read ("kafka unreachable"); `detail` (the client library's
    error, broker addresses) goes to the log and the internal readiness probe only.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Publisher(Protocol):
    """What the API needs from a message broker."""

    async def start(self) -> None:
        """Connect (the API stays up and answers 503 when the broker is unreachable)."""

    async def close(self) -> None:
        """Flush what is pending and disconnect."""

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Publish one record and wait for the broker's acknowledgement.

        Raises:
            PublishUnavailable: not acknowledged within the timeout, or broker unreachable.
        """

    async def publish_many(
        self, topic: str, records: Sequence[Record]
    ) -> list[PublishUnavailable | None]:
        """Publish records concurrently; wait until each is acknowledged or the timeout passes.

        Returns:
            Per record, in order: None when acknowledged, else the reason it was not.
        """

    async def ping(self) -> None:
        """Really ask the broker for metadata.

        Raises:
            PublishUnavailable: the broker did not answer.
        """


class KafkaPublisher:
    """aiokafka producer with `enable_idempotence=True` and `acks="all"`, and a circuit breaker.

    When a record is not acknowledged in time and the broker does not answer a metadata request
    either, the producer is abandoned: records it still holds are never sent (their requests
    answer 503 at their deadline), and for `RECONNECT_INTERVAL_SECONDS` requests get 503
    without waiting, instead of every request waiting out the timeout while aiokafka retries in
    a tight loop. Then one request tries a new producer. A producer whose sender died (an
    idempotent aiokafka producer gives up after some sequence errors) is replaced the same way,
    so the API survives a broker restart without being restarted itself.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        timeout: float,
        client_id: str = "moderation-api",
        auth: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.auth = dict(auth or {})  # SASL options (`moderation.kafka_auth.aiokafka_auth`)
        self.timeout = timeout
        self.client_id = client_id
        self._producer: Any = None
        self._lock = asyncio.Lock()
        self._next_attempt = 0.0
        self._last_error: str = "not connected yet"
        self._closed = False
        self._cleanups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect now if possible; otherwise the first publish retries."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._ensure_producer()
        except (PublishUnavailable, TimeoutError) as error:
            log.warning("kafka is not reachable at start-up: %s", _describe(error))

    async def close(self) -> None:
        """Flush pending records (bounded by the timeout) and stop the producer."""
        self._closed = True
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await producer.flush()
            except (TimeoutError, KafkaError) as error:
                log.warning("kafka did not take every pending record: %s", _describe(error))
            await _abandon(producer)
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    def _new_producer(self) -> Any:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=LINGER_MS,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            partitioner=key_partitioner,
            **self.auth,
        )

    def _retire(self, producer: Any, reason: str, *, back_off: bool = True) -> None:
        """Abandon `producer` in the background; with `back_off`, refuse fast for a while."""
        if self._producer is producer:
            self._producer = None
        self._last_error = reason
        if back_off:
            self._next_attempt = asyncio.get_running_loop().time() + RECONNECT_INTERVAL_SECONDS
        task = asyncio.create_task(_abandon(producer))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _ensure_producer(self) -> Any:
        producer = self._producer
        if producer is not None and not _is_dead(producer):
            return producer
        async with self._lock:
            if self._closed:
                raise PublishUnavailable("the API is shutting down")
            producer = self._producer
            if producer is not None and not _is_dead(producer):
                return producer
            if producer is not None:
                log.warning("kafka producer is unusable (its sender stopped); replacing it")
                self._retire(producer, "kafka producer failed", back_off=False)
            if asyncio.get_running_loop().time() < self._next_attempt:
                raise PublishUnavailable("kafka unreachable", self._last_error)
            producer = self._new_producer()
            try:
                await producer.start()
            except (KafkaError, OSError) as error:
                self._retire(producer, _describe(error))
                raise PublishUnavailable("kafka unreachable", self._last_error) from error
            except BaseException:
                # Cancelled (the request's deadline): do not leave a half-started producer.
                self._retire(producer, "kafka did not answer in time")
                raise
            self._producer = producer
            log.info("kafka producer connected to %s", self.bootstrap_servers)
            return producer

    async def _trip_if_unreachable(self, producer: Any) -> None:
        """After a missed deadline: abandon the producer if the broker does not answer at all."""
        if producer is None or self._producer is not producer:
            return
        async with self._lock:
            if self._producer is not producer:
                return
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    await producer.client.fetch_all_metadata()
            except (TimeoutError, KafkaError, OSError) as error:
                log.warning("kafka is unreachable (%s); failing fast", _describe(error))
                self._retire(producer, _describe(error))

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Publish one record and wait for its acknowledgement (see `Publisher.publish`)."""
        producer = None
        try:
            async with asyncio.timeout(self.timeout):
                producer = await self._ensure_producer()
                # The request's trace context travels in the record's headers.
                future = await producer.send(topic, value=value, key=key, headers=kafka_headers())
                await future
        except TimeoutError as error:
            await self._trip_if_unreachable(producer)
            raise PublishUnavailable(_not_acked(self.timeout)) from error
        except KafkaError as error:
            await self._trip_if_unreachable(producer)
            raise PublishUnavailable("kafka rejected the record", _describe(error)) from error

    async def publish_many(
        self, topic: str, records: Sequence[Record]
    ) -> list[PublishUnavailable | None]:
        """Build one record batch per partition, send them all, then await the acks.

        Records go to the partition the default partitioner picks for their key (murmur2, as
        every Kafka client does), so a post keeps its partition whichever producer sends it.
        """
        results: list[PublishUnavailable | None] = [None] * len(records)
        pending: list[tuple[asyncio.Future[Any], list[int]]] = []
        sent: set[int] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        producer = None
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._ensure_producer()
                partitions = list(await producer.partitions_for(topic))
                by_partition: dict[int, list[int]] = defaultdict(list)
                for index, (key, _value) in enumerate(records):
                    by_partition[partition_for(key, partitions)].append(index)
                headers = kafka_headers()  # one trace context for the whole request
                for partition, indices in by_partition.items():
                    for future, members in await _send_batches(
                        producer, topic, partition, records, indices, headers
                    ):
                        pending.append((future, members))
                        sent.update(members)
        except (TimeoutError, KafkaError, PublishUnavailable) as error:
            reason = _as_unavailable(error, self.timeout)
            for index in range(len(records)):
                if index not in sent:
                    results[index] = reason
        if pending:
            remaining = max(0.0, deadline - loop.time())
            await asyncio.wait([future for future, _ in pending], timeout=remaining)
            for future, members in pending:
                failure: PublishUnavailable | None = None
                if not future.done():
                    failure = PublishUnavailable(_not_acked(self.timeout))
                elif (exception := future.exception()) is not None:
                    failure = _as_unavailable(exception, self.timeout)
                if failure is not None:
                    for index in members:
                        results[index] = failure
        if any(result is not None for result in results):
            await self._trip_if_unreachable(producer)
        return results

    async def ping(self) -> None:
        """Fetch cluster metadata from the broker itself (not from the producer's cache)."""
        try:
            async with asyncio.timeout(min(self.timeout, 3.0)):
                producer = await self._ensure_producer()
                await producer.client.fetch_all_metadata()
        except TimeoutError as error:
            raise PublishUnavailable("kafka did not answer a metadata request") from error
        except KafkaError as error:
            raise PublishUnavailable("kafka metadata failed", _describe(error)) from error


async def _send_batches(
    producer: Any,
    topic: str,
    partition: int,
    records: Sequence[Record],
    indices: list[int],
    headers: list[tuple[str, bytes]],
) -> list[tuple[asyncio.Future[Any], list[int]]]:
    """Append the records to record batches (a new one when full) and submit each."""
    submitted: list[tuple[asyncio.Future[Any], list[int]]] = []
    builder = producer.create_batch()
    members: list[int] = []
    for index in indices:
        key, value = records[index]
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # Full. An empty builder always takes its first record, whatever its size.
            future = await producer.send_batch(builder, topic, partition=partition)
            submitted.append((future, members))
            builder, members = producer.create_batch(), []
            builder.append(key=key, value=value, timestamp=None, headers=headers)
        members.append(index)
    if members:
        future = await producer.send_batch(builder, topic, partition=partition)
        submitted.append((future, members))
    return submitted


def _is_dead(producer: Any) -> bool:
    # aiokafka has no public health flag: the sender task ends only on a fatal error (for an
    # idempotent producer, e.g. OutOfOrderSequenceNumber after a broker restart).
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()


async def _abandon(producer: Any) -> None:
    """Stop a producer without waiting for Kafka; records it still holds are never sent."""
    # `stop()` alone would first flush, which never ends while the broker is away (an
    # idempotent producer retries sent batches forever). Cancelling the sender first makes
    # `stop()` skip the flush and close the connections at once; requests still waiting for
    # those records answer 503 at their deadline.
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=STOP_TIMEOUT_SECONDS)
    try:
        async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
            await producer.stop()
    except (TimeoutError, KafkaError, OSError) as error:
        log.warning("kafka producer did not stop cleanly: %s", _describe(error))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _not_acked(timeout: float) -> str:
    return f"kafka did not acknowledge within {timeout:g}s"


def _as_unavailable(error: BaseException, timeout: float) -> PublishUnavailable:
    if isinstance(error, PublishUnavailable):
        return error
    if isinstance(error, TimeoutError):
        return PublishUnavailable(_not_acked(timeout))
    return PublishUnavailable("kafka rejected the record", _describe(error))


async def publish_each(
    publisher: Publisher, topic: str, records: Sequence[Record]
) -> list[PublishUnavailable | None]:
    """`publish_many` by one `publish` after the other: each record's error, or None."""
    results: list[PublishUnavailable | None] = []
    for key, value in records:
        try:
            await publisher.publish(topic, key, value)
        except PublishUnavailable as error:
            results.append(error)
        else:
            results.append(None)
    return results


@dataclass
class InMemoryPublisher:
    """Keeps every acknowledged record; `available = False` simulates a broker outage."""

    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    available: bool = True
    started: int = 0
    closed: int = 0

    async def start(self) -> None:
        """Count the start (the lifespan must start it once)."""
        self.started += 1

    async def close(self) -> None:
        """Count the close (the lifespan must close it once)."""
        self.closed += 1

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Record it, or fail as an unreachable broker would."""
        if not self.available:
            raise PublishUnavailable("kafka unreachable", "simulated outage")
        self.records.append((topic, key, value))

    async def publish_many(
        self, topic: str, records: Sequence[Record]
    ) -> list[PublishUnavailable | None]:
        """Record them all, or fail each."""
        return await publish_each(self, topic, records)

    async def ping(self) -> None:
        """Healthy unless `available` is False."""
        if not self.available:
            raise PublishUnavailable("kafka unreachable", "simulated outage")

    def values(self, topic: str) -> list[bytes]:
        """The values published to `topic`, in order."""
        return [value for record_topic, _, value in self.records if record_topic == topic]
