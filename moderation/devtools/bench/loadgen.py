"""Load generator for the ingest API: the ingest phase of the pipeline benchmark.

It speaks HTTP/1.1 over keep-alive connections with asyncio streams directly: a general-purpose
client spends more CPU per request than the API itself, and on a 2-core machine the generator
shares the CPU with the server, so a heavy client would measure the client.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from moderation.devtools.bench.report import latency_percentiles

DEFAULT_BATCH_SIZE = 1_000
TEXTS = (
    "Lovely weather at the lake today, anyone up for a swim?",
    "Selling my old bike, barely used, message me for details.",
    "This recipe needs more garlic. Always more garlic.",
    "Great match last night, what a comeback in the second half!",
)


class HttpError(Exception):
    """The server answered something this client cannot read."""


@dataclass
class _Phase:
    requests: int = 0
    posts_accepted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def summary(self, seconds: float, posts_sent: int) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "posts_sent": posts_sent,
            "posts_accepted": self.posts_accepted,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "seconds": round(seconds, 3),
            "posts_per_second": round(self.posts_accepted / seconds, 1) if seconds else 0.0,
            "latency_ms": latency_percentiles([latency * 1000 for latency in self.latencies]),
        }


class _Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str, port: int, api_key: str) -> None:
        self.host = host
        self.port = port
        self.head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            path.encode(),
            self.head,
            len(body),
        )
        self.writer.write(request + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"unreadable status line {lines[0]!r}")
        status = int(parts[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value.strip())
            elif lowered == b"transfer-encoding":
                raise HttpError("chunked responses are not expected from the ingest API")
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


def _post_body(run: str, index: int) -> bytes:
    return json.dumps(
        {"text": f"{TEXTS[index % len(TEXTS)]} #{index}", "author_id": f"bench-{run}"}
    ).encode()


async def _drive(
    host: str,
    port: int,
    api_key: str,
    *,
    path: str,
    bodies: list[bytes],
    batched: bool,
    concurrency: int,
) -> tuple[_Phase, float]:
    phase = _Phase()
    queue = iter(range(len(bodies)))

    async def worker() -> None:
        connection = _Connection(host, port, api_key)
        try:
            for index in queue:
                started = time.perf_counter()
                status, payload = await connection.post(path, bodies[index])
                phase.latencies.append(time.perf_counter() - started)
                phase.requests += 1
                phase.statuses[status] += 1
                if status == 202:
                    # A batch answer says how many of its posts were accepted.
                    phase.posts_accepted += int(json.loads(payload)["accepted"]) if batched else 1
        finally:
            await connection.close()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(concurrency, len(bodies)))):
            group.create_task(worker())
    return phase, time.perf_counter() - started


async def measure_ingest(
    base_url: str,
    api_key: str,
    *,
    single_requests: int,
    batch_posts: int,
    concurrency: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Measure ingest throughput of a running API: single-post requests, then batches.

    Args:
        base_url: e.g. `http://127.0.0.1:8000`.
        api_key: a key with the `submit` scope.
        single_requests: how many `POST /v1/posts` requests to send (0 skips the phase).
        batch_posts: how many posts to send through `POST /v1/posts:batch` (0 skips it).
        concurrency: connections kept busy at once in each phase.
        batch_size: posts per batch request.

    Returns:
        Per phase: requests, posts accepted, status counts, seconds, posts/s, latency p50/95/99.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"base_url must be http://host:port, got {base_url!r}")
    host, port = parts.hostname, parts.port or 80
    run = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {"base_url": base_url, "concurrency": concurrency}
    if single_requests > 0:
        bodies = [_post_body(run, index) for index in range(single_requests)]
        phase, seconds = await _drive(
            host,
            port,
            api_key,
            path="/v1/posts",
            bodies=bodies,
            batched=False,
            concurrency=concurrency,
        )
        result["single"] = phase.summary(seconds, single_requests)
    if batch_posts > 0:
        batches: list[bytes] = []
        for start in range(0, batch_posts, batch_size):
            items = [
                json.loads(_post_body(run, index))
                for index in range(start, min(start + batch_size, batch_posts))
            ]
            batches.append(json.dumps({"posts": items}).encode())
        phase, seconds = await _drive(
            host,
            port,
            api_key,
            path="/v1/posts:batch",
            bodies=batches,
            batched=True,
            concurrency=concurrency,
        )
        result["batch"] = phase.summary(seconds, batch_posts)
        result["batch"]["batch_size"] = batch_size
    return result
