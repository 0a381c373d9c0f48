"""Prometheus metrics of the ingest API, in a registry per app (tests build many apps)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics"]

BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 750, 1000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Posts ingested, batch sizes, publish latency and 503s."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.posts_ingested = Counter(
            "moderation_api_posts_ingested",
            "Posts acknowledged by Kafka and answered 202",
            ["endpoint"],
            registry=self.registry,
        )
        self.posts_rejected = Counter(
            "moderation_api_posts_rejected",
            "Posts refused as invalid inside batches (single requests: see HTTP 4xx)",
            ["endpoint"],
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "moderation_api_idempotent_replays",
            "Requests answered from an idempotency key without publishing again",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "moderation_api_batch_size",
            "Posts per :batch request",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "moderation_api_publish_latency_seconds",
            "Time from publish to Kafka acknowledgement (a whole batch counts once)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unavailable = Counter(
            "moderation_api_unavailable_responses",
            "503 answers because Kafka did not acknowledge (or the database failed)",
            ["endpoint", "reason"],
            registry=self.registry,
        )

        # Children bound once: `labels()` on every request is measurable on the hot path.
        self.ingested_single = self.posts_ingested.labels("single")
        self.ingested_batch = self.posts_ingested.labels("batch")
        self.latency_single = self.publish_latency.labels("single")
        self.latency_batch = self.publish_latency.labels("batch")
        self.rejected_batch = self.posts_rejected.labels("batch")

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
