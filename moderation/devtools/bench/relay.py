"""The raw-relay ceiling: what the broker and the database carry with no pipeline in between.

The pipeline's saturation figure alone does not say whether 2 cores are spent well; this says
what the same machine does with the same posts when nothing is decoded, classified or
validated. The same PostSubmitted bytes (built as the API builds them, keyed by post id, with
the API's one `traceparent` header per 1,000-post request) go through the same broker with the
same producer guarantees (acks=all, idempotent; the API's linger and batch size for the load,
the worker's for the relay) into a plain PostgreSQL table:

1. load (this process): one producer sends the posts to `<posts.submitted>.relay-<n>.in` as
   fast as the acknowledgements come back;
2. relay (its own process): a consumer `getmany`s batches of `worker.max_batch`, re-publishes
   each record's key, value, headers and timestamp to `...relay-<n>.out`, waits for the batch's
   acknowledgements, then commits its offsets (commit after publish, as the worker does);
3. copy (its own process): a consumer `getmany`s batches of `worker.recorder_max_batch` and
   writes each with one binary `COPY`, commits the transaction, then the offsets.

Relay and copy run in processes of their own so they, like the worker and the recorder, can use
both cores. Every post must be recorded exactly once with its bytes unchanged:
`RelayCheckFailed` otherwise, so a broken ceiling is never reported as a figure.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import re
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from queue import Empty
from typing import Any, Literal, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.progress import Progress
from sqlalchemy import Engine, make_url, text

from moderation.db.engine import connect_args, make_engine
from moderation.devtools.bench.e2e import bench_text
from moderation.devtools.bench.report import latency_percentiles
from moderation.devtools.stack.kafka import create_topics, drop_topics
from moderation.events import DEFAULT_TENANT, PostSubmitted
from moderation.kafka_auth import ADMIN, aiokafka_auth
from moderation.services.api.publisher import LINGER_MS, MAX_BATCH_BYTES, REQUEST_TIMEOUT_MS
from moderation.settings import Settings, TopicSettings

Stage = Literal["relay", "copy"]
# Posts per API batch request: the API sends one trace context (one `traceparent`) per request.
REQUEST_POSTS = 1_000
# The worker's producer batch (`services/worker/app.py`, `create_broker`).
WORKER_MAX_BATCH_BYTES = 1024 * 1024
# Spawned interpreters import the project and join their consumer groups before the clock runs.
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


class RelayError(Exception):
    """The relay could not be measured: a stage failed, or the posts were not all recorded."""


class RelayCheckFailed(RelayError):
    """Posts were lost, doubled or altered on the way: the figure would be a lie.

    `result` holds the whole summary (which counts are off, and the timings anyway).
    """

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(
            f"relay ceiling: of {result['posts']:,} posts {result['lost']:,} lost, "
            f"{result['doubled']:,} doubled, {result['altered']:,} altered "
            f"(rows {result['rows']:,}); the relay must carry every post exactly once"
        )
        self.result = result


@dataclass(frozen=True)
class RelayNames:
    """The topics, consumer groups and table of one relay measurement (all its own)."""

    inbound: str
    outbound: str
    relay_group: str
    copy_group: str
    table: str


def run_prefix(settings: Settings) -> str:
    """The isolated prefix of `settings` (`bench-<run>` from `isolated_settings`), or ``""``."""
    topic, default = settings.kafka.topics.posts_submitted, TopicSettings().posts_submitted
    return topic.removesuffix(f".{default}") if topic.endswith(f".{default}") else ""


def relay_names(settings: Settings, nonce: str) -> RelayNames:
    """Names under the run's prefix plus `nonce`, so no measurement sees another's records.

    The table name is a plain lower-case identifier of at most 63 bytes (PostgreSQL's limit).
    """
    if not re.fullmatch(r"[a-z0-9]{1,16}", nonce):
        raise ValueError(f"nonce must be 1-16 lower-case letters or digits, got {nonce!r}")
    topic = settings.kafka.topics.posts_submitted
    readable = re.sub(r"[^a-z0-9]+", "_", run_prefix(settings).lower()).strip("_")[:24]
    table = "_".join(part for part in ("bench_relay", readable, nonce) if part)
    return RelayNames(
        inbound=f"{topic}.relay-{nonce}.in",
        outbound=f"{topic}.relay-{nonce}.out",
        relay_group=f"{settings.worker.classifier_group}-relay-{nonce}",
        copy_group=f"{settings.worker.recorder_group}-relay-{nonce}",
        table=table,
    )


def relay_payloads(
    count: int, length: int | None = None, *, author: str, tenant: str = DEFAULT_TENANT
) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` posts exactly as the API's batch route publishes them.

    The same event (`PostSubmitted` with fresh 128-bit hex post and event ids, the submitting
    key's tenant, no external id, metadata or images), serialized the same way, keyed by post
    id; texts are the pipeline bench's (`bench_text`), so the relay carries the bytes the
    pipeline carries.
    """
    raw = os.urandom(32 * count).hex()
    records: list[tuple[bytes, bytes]] = []
    for index in range(count):
        ids = raw[64 * index : 64 * index + 64]
        event = PostSubmitted(
            event_id=ids[32:],
            post_id=ids[:32],
            text=bench_text(index, length),
            author_id=author,
            tenant=tenant,
        )
        records.append((event.key(), event.model_dump_json().encode()))
    return records


def request_headers() -> list[tuple[str, bytes]]:
    """The headers of one API batch request's records: its (unsampled) W3C trace context.

    The served API always has a tracer provider (it exports to the stack's Zipkin), so every
    record carries a `traceparent` even when the post is not sampled.
    """
    return [("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00".encode())]


def digest(payload: bytes) -> str:
    """SHA-256 in hex: PostgreSQL computes the same of a recorded payload."""
    return hashlib.sha256(payload).hexdigest()


class RelayRow(NamedTuple):
    """One recorded row: its key, the record's first produce time, when it was written, and
    the SHA-256 of its payload."""

    key: str
    produced_at: datetime
    recorded_at: datetime
    sha256: str


def relay_summary(
    sent: Sequence[tuple[str, str]], rows: Sequence[RelayRow], *, partitions: int
) -> dict[str, Any]:
    """The ceiling's figures from what was sent ((key, SHA-256) per post) and what was recorded.

    `lost`: posts with no row. `doubled`: rows beyond one per key, plus keys sent twice.
    `altered`: rows whose payload is not the one sent under their key, or whose key was never
    sent. Throughput counts each recorded post once, over first produce → last row written.
    """
    expected = dict(sent)
    recorded = Counter(row.key for row in rows)
    altered = sum(1 for row in rows if expected.get(row.key) != row.sha256)
    first = min((row.produced_at for row in rows), default=None)
    last = max((row.recorded_at for row in rows), default=None)
    span = (last - first).total_seconds() if first and last else 0.0
    done = sum(1 for key in recorded if key in expected)
    latencies = [(row.recorded_at - row.produced_at).total_seconds() * 1000 for row in rows]
    return {
        "posts": len(sent),
        "rows": len(rows),
        "lost": len(expected.keys() - recorded.keys()),
        "doubled": (len(rows) - len(recorded)) + (len(sent) - len(expected)),
        "altered": altered,
        "seconds": round(span, 3),
        "posts_per_second": round(done / span, 1) if span > 0 else 0.0,
        "latency_ms": latency_percentiles(latencies),
        "partitions": partitions,
    }


def check_relay(result: dict[str, Any]) -> dict[str, Any]:
    """`result` when every post was recorded exactly once and unchanged.

    Raises:
        RelayCheckFailed: any post lost, doubled or altered.
    """
    if result["lost"] or result["doubled"] or result["altered"]:
        raise RelayCheckFailed(result)
    return result


# --- the stages in their own processes -------------------------------------------------------


def _consumer(settings: Settings, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"bench-{group}",
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **aiokafka_auth(settings, ADMIN),
    )


def _producer(settings: Settings, *, linger_ms: int, max_batch_size: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id="bench-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        **aiokafka_auth(settings, ADMIN),
    )


class _Signals:
    """What a stage tells the coordinator: ready once its partitions are assigned; its error."""

    def __init__(self, stage: Stage, events: Queue[tuple[str, str, str]], partitions: int) -> None:
        self.stage = stage
        self.events = events
        self.partitions = partitions
        self.ready = False

    def after_poll(self, consumer: AIOKafkaConsumer) -> None:
        if not self.ready and len(consumer.assignment()) >= self.partitions:
            self.ready = True
            self.events.put((self.stage, "ready", ""))


async def _relay(settings: Settings, names: RelayNames, signals: _Signals, stop: Event) -> None:
    consumer = _consumer(settings, names.inbound, names.relay_group)
    producer = _producer(
        settings, linger_ms=settings.worker.linger_ms, max_batch_size=WORKER_MAX_BATCH_BYTES
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(
                timeout_ms=settings.worker.batch_timeout_ms, max_records=settings.worker.max_batch
            )
            signals.after_poll(consumer)
            if not batches:
                continue
            acks = []
            for records in batches.values():
                for record in records:
                    acks.append(
                        await producer.send(
                            names.outbound,
                            value=record.value,
                            key=record.key,
                            headers=list(record.headers),
                            # Latency is measured from the load's produce, across both hops.
                            timestamp_ms=record.timestamp,
                        )
                    )
            await asyncio.gather(*acks)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def _copy_statement(table: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
        raise ValueError(f"not a plain table name: {table!r}")
    return f"COPY {table} (key, produced_at, payload) FROM STDIN (FORMAT BINARY)"


def _psycopg_params(settings: Settings) -> dict[str, Any]:
    """psycopg's connection parameters for `settings.db`, as `make_engine` connects."""
    url = make_url(settings.db.url)
    if url.get_backend_name() != "postgresql":
        raise RelayError(f"the relay ceiling needs PostgreSQL, not {url.get_backend_name()}")
    params: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
    return {**params, **dict(url.query), **connect_args(settings)}


async def _copy(settings: Settings, names: RelayNames, signals: _Signals, stop: Event) -> None:
    import psycopg

    statement = _copy_statement(names.table)
    consumer = _consumer(settings, names.outbound, names.copy_group)
    connection = await psycopg.AsyncConnection.connect(**_psycopg_params(settings))
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(
                timeout_ms=settings.worker.batch_timeout_ms,
                max_records=settings.worker.recorder_max_batch,
            )
            signals.after_poll(consumer)
            if not batches:
                continue
            async with connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(["text", "timestamptz", "bytea"])
                for records in batches.values():
                    for record in records:
                        produced = datetime.fromtimestamp(record.timestamp / 1000, UTC)
                        key = (record.key or b"").decode()
                        await copy.write_row((key, produced, record.value or b""))
            await connection.commit()
            await consumer.commit()
    finally:
        await consumer.stop()
        await connection.close()


def _stage_main(
    stage: Stage,
    settings: Settings,
    names: RelayNames,
    events: Queue[tuple[str, str, str]],
    stop: Event,
) -> None:
    """A spawned stage process: run until `stop` is set; report a failure before exiting 1."""
    signals = _Signals(stage, events, settings.kafka.partitions)
    run = _relay if stage == "relay" else _copy
    try:
        asyncio.run(run(settings, names, signals, stop))
    except BaseException:
        events.put((stage, "failed", traceback.format_exc()))
        raise SystemExit(1) from None


class _Stages:
    """The relay and copy processes, started with `spawn` (no Kafka client state is forked)."""

    def __init__(self, settings: Settings, names: RelayNames) -> None:
        context = multiprocessing.get_context("spawn")
        self.events: Queue[tuple[str, str, str]] = context.Queue()
        self.stop_event = context.Event()
        self.ready: set[str] = set()
        self.forced: list[str] = []
        self.processes: dict[Stage, BaseProcess] = {
            stage: context.Process(
                target=_stage_main,
                args=(stage, settings, names, self.events, self.stop_event),
                name=f"bench-relay-{stage}",
                daemon=True,
            )
            for stage in ("relay", "copy")
        }

    def start(self, timeout: float) -> None:
        for process in self.processes.values():
            process.start()
        deadline = time.monotonic() + timeout
        while len(self.ready) < len(self.processes):
            self.check(wait=0.2)
            if time.monotonic() > deadline:
                waiting = sorted(set(self.processes) - self.ready)
                raise RelayError(f"relay stages {waiting} not assigned their partitions in time")

    def check(self, wait: float = 0.0) -> None:
        """Take the stages' messages; raise if one failed, died before it was asked to stop,
        or had to be ended."""
        self._take(wait)
        for stage, process in self.processes.items():
            if process.exitcode is not None and not self.stop_event.is_set():
                self._take(1.0)  # its traceback may still be in the pipe
                raise RelayError(f"relay stage {stage} exited with code {process.exitcode}")
        if self.forced:
            raise RelayError(f"relay stages {self.forced} did not stop when asked; ended them")

    def _take(self, wait: float) -> None:
        try:
            while True:
                stage, kind, detail = self.events.get(timeout=wait)
                wait = 0.0
                if kind == "failed":
                    raise RelayError(f"relay stage {stage} failed:\n{detail}")
                self.ready.add(stage)
        except Empty:
            pass

    def stop(self) -> None:
        """Ask each stage to finish its batch and leave its group; end it if it does not."""
        self.stop_event.set()
        for stage, process in self.processes.items():
            if process.pid is None:
                continue  # never started
            process.join(STOP_TIMEOUT_SECONDS)
            if process.is_alive():
                self.forced.append(stage)
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


# --- the coordinator -------------------------------------------------------------------------


async def _load(settings: Settings, topic: str, records: Sequence[tuple[bytes, bytes]]) -> float:
    """Send every record without awaiting each, then await all acks; the seconds it took."""
    producer = _producer(settings, linger_ms=LINGER_MS, max_batch_size=MAX_BATCH_BYTES)
    await producer.start()
    try:
        started = time.perf_counter()
        acks = []
        for start in range(0, len(records), REQUEST_POSTS):
            headers = request_headers()
            for key, value in records[start : start + REQUEST_POSTS]:
                acks.append(await producer.send(topic, value=value, key=key, headers=headers))
        await asyncio.gather(*acks)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def _create_table(engine: Engine, table: str) -> None:
    # A logged table, as the read model's: the ceiling pays the same WAL as the recorder. No
    # key or index: a duplicate must land (and be counted), and the recorder's work is not
    # what this measures. recorded_at is clock_timestamp(), the time each row is written:
    # now() would stamp a whole COPY with its transaction's start, before the rows streamed.
    _copy_statement(table)  # a plain identifier, checked
    with engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE {table} (key text NOT NULL, produced_at timestamptz NOT NULL, "
                "recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                "payload bytea NOT NULL)"
            )
        )


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _rows(engine: Engine, table: str) -> list[RelayRow]:
    query = text(
        f"SELECT key, produced_at, recorded_at, encode(sha256(payload), 'hex') FROM {table}"
    )
    with engine.connect() as connection:
        return [RelayRow(*row) for row in connection.execute(query)]


def _wait_recorded(
    engine: Engine, table: str, posts: int, stages: _Stages, timeout: float, console: Console
) -> None:
    """Poll the row count once a second (the measuring must not load the machine it measures)."""
    deadline = time.monotonic() + timeout
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("relay: waiting for rows", total=posts)
        while True:
            stages.check()
            done = _count(engine, table)
            progress.update(task, completed=done)
            if done >= posts:
                return
            if time.monotonic() > deadline:
                raise RelayError(
                    f"relay: {done:,} of {posts:,} posts recorded after {timeout:.0f} s"
                )
            time.sleep(1.0)


def measure_relay(
    run_settings: Settings,
    *,
    posts: int,
    length: int | None = None,
    console: Console | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The raw-relay ceiling for `posts` posts of about `length` characters (module docstring).

    Args:
        run_settings: a bench run's isolated settings, with Kafka and PostgreSQL up.
        posts: how many posts to relay.
        length: the texts' length (`bench_text`); None: the short everyday posts.
        console: where the progress bar shows.
        timeout: seconds to wait for every row (default: 60 + 4 ms a post).

    Returns:
        posts, rows, lost, doubled, altered, seconds (first produce → last row written),
        posts_per_second, latency_ms (row written − first produce; p50/p95/p99/max),
        partitions, load_seconds (every post acknowledged by the broker), topics, table.

    Raises:
        RelayCheckFailed: a post was lost, doubled or altered (its `result` has the figures).
        RelayError: a stage failed, or not every post was recorded within `timeout`.
    """
    if posts < 1:
        raise ValueError("posts must be at least 1")
    console = console or Console()
    names = relay_names(run_settings, uuid.uuid4().hex[:8])
    author = f"{run_prefix(run_settings) or 'bench'}-saturation"  # the pipeline's saturation
    records = relay_payloads(posts, length, author=author)
    engine = make_engine(run_settings)
    stages = _Stages(run_settings, names)
    table_created = False
    try:
        asyncio.run(create_topics(run_settings, [names.inbound, names.outbound]))
        _create_table(engine, names.table)
        table_created = True
        stages.start(READY_TIMEOUT_SECONDS)
        load_seconds = asyncio.run(_load(run_settings, names.inbound, records))
        wait = timeout or 60 + posts / 250
        _wait_recorded(engine, names.table, posts, stages, wait, console)
        stages.stop()
        stages.check()
        rows = _rows(engine, names.table)
    finally:
        stages.stop()
        try:
            if table_created:
                with engine.begin() as connection:
                    connection.execute(text(f"DROP TABLE IF EXISTS {names.table}"))
        finally:
            engine.dispose()
            asyncio.run(drop_topics(run_settings, [names.inbound, names.outbound], wait=True))
    sent = [(key.decode(), digest(value)) for key, value in records]
    result = relay_summary(sent, rows, partitions=run_settings.kafka.partitions)
    result["load_seconds"] = round(load_seconds, 3)
    result["topics"] = [names.inbound, names.outbound]
    result["table"] = names.table
    return check_relay(result)
