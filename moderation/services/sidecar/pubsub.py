"""Kafka through the app's daprd: publishing raw events, reading deliveries, dead letters."""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from dapr.clients import DaprClient

from moderation.events import DeadLetter, Event, utc_now
from moderation.settings import Settings
from moderation.telemetry import header_dict


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]  # grpc is untyped
):
    pass


class TraceContextInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sends the current trace context (`traceparent`) with each call to daprd: its publish span
    joins the post's trace, and the event it publishes carries it on (the SDK sends none)."""

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        carrier = header_dict()
        if carrier:
            metadata = [*(details.metadata or ()), *carrier.items()]
            details = _CallDetails(
                details.method, details.timeout, metadata, details.credentials,
                details.wait_for_ready, details.compression,
            )  # fmt: skip
        return continuation(details, request)


class DaprSink:
    """Publishes events as raw JSON through the sidecar's Kafka pub/sub, keyed by post id.

    Args:
        settings: the pub/sub component's name.
        grpc_endpoint: the app's own daprd (`host:port`); default: the review service's.
    """

    def __init__(self, settings: Settings, grpc_endpoint: str | None = None) -> None:
        self.settings = settings
        self.client = DaprClient(
            grpc_endpoint or f"127.0.0.1:{settings.dapr.grpc_port}",
            interceptors=[TraceContextInterceptor()],
        )

    def publish(self, topic: str, event: Event) -> None:
        self.publish_raw(topic, event.model_dump_json(), event.post_id)

    def publish_raw(self, topic: str, payload: str, key: str | None) -> None:
        metadata = {"rawPayload": "true"} | ({"partitionKey": key} if key else {})
        self.client.publish_event(
            pubsub_name=self.settings.dapr.pubsub_name,
            topic_name=topic,
            data=payload,
            data_content_type="application/json",
            publish_metadata=metadata,
        )

    def dead_letter(
        self, source_topic: str, consumer_group: str, payload: bytes, error: Exception
    ) -> None:
        """`payload` with its error to `<source_topic>.dlq`."""
        letter = DeadLetter(
            source_topic=source_topic,
            # Dapr does not pass the Kafka coordinates of a delivery to the app.
            partition=-1,
            offset=-1,
            consumer_group=consumer_group,
            key=None,
            payload=payload.decode(errors="replace"),
            error=str(error)[:2_000],
            error_type=type(error).__name__,
            failed_at=utc_now(),
        )
        dlq = source_topic + self.settings.kafka.topics.dlq_suffix
        self.publish_raw(dlq, letter.model_dump_json(), None)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]  # untyped in the SDK


def delivered_payload(body: bytes) -> bytes:
    """The raw event inside what Dapr delivers (a CloudEvent wrapping the raw Kafka value)."""
    try:
        envelope = json.loads(body)
    except json.JSONDecodeError:
        return body
    if isinstance(envelope, dict) and "data_base64" in envelope:
        return base64.b64decode(envelope["data_base64"])
    if isinstance(envelope, dict) and "specversion" in envelope and "data" in envelope:
        data = envelope["data"]
        return data.encode() if isinstance(data, str) else json.dumps(data).encode()
    return body
