"""The review queue as Prometheus gauges, read from the database when Prometheus scrapes.

A collector rather than gauges set on every change: the queue's state changes in several
processes (the API claims, the workflows create and decide), and only the database knows it
all. Reads are cached for a few seconds so several scrapers cost one query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.events import utc_now

CACHE_SECONDS = 5.0


class ReviewQueueCollector(Collector):
    """`moderation_review_queue{state}` and `moderation_review_oldest_pending_seconds`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def _read(self) -> list[Metric]:
        now = utc_now()
        with Session(self.engine) as session:
            stats = crud.review_stats(session, now=now)
            oldest = crud.oldest_waiting_review(session, now=now)
        queue = GaugeMetricFamily(
            "moderation_review_queue", "undecided reviews by effective state", labels=["state"]
        )
        for state, count in (
            ("pending", stats.pending),
            ("escalated", stats.escalated),
            ("claimed", stats.claimed),
        ):
            queue.add_metric([state], count)
        age = GaugeMetricFamily(
            "moderation_review_oldest_pending_seconds",
            "age of the oldest review waiting for a moderator (0 when none waits)",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        inbound = GaugeMetricFamily(
            "moderation_review_inbound_24h", "reviews created in the last 24 hours",
            value=stats.inbound_24h,
        )  # fmt: skip
        return [queue, age, inbound]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_SECONDS:
                try:
                    self._cached = (time.monotonic(), self._read())
                except Exception:  # noqa: BLE001 - a scrape must not fail with the database
                    return
            yield from self._cached[1]
