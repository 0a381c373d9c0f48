"""OpenTelemetry tracing for the services: one trace follows a post through the pipeline.

The API starts the trace and puts its context into the Kafka record's headers (W3C
`traceparent`); the worker continues it per post (stage 1, the agent's spans, the events it
publishes carry the post's context in their headers); the review service reads the context that
daprd hands it with `review.requested` and runs the workflow's activities under it.

`configure_tracing` installs the process's tracer provider: OTLP/gRPC to
`MODERATION_TRACING__OTLP_ENDPOINT` (the collector daprd's Configuration exports to), and/or
JSON lines to `MODERATION_TRACING__FILE` (the integration test reads those). With neither, the
API's no-op provider stays and tracing costs next to nothing. Post text never enters a span.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from moderation.settings import Settings

TRACER_NAME = "moderation"
_configured: set[str] = set()
_lock = threading.Lock()


class JsonLinesExporter(SpanExporter):
    """Finished spans as one JSON object per line (ids in hex, the service's name included)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_record(span)) + "\n" for span in spans]
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)
        return SpanExportResult.SUCCESS


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "service": span.resource.attributes.get("service.name"),
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "start": span.start_time,
        "end": span.end_time,
    }


def configure_tracing(service: str, settings: Settings) -> bool:
    """Install the tracer provider for `service` once per process; False when nothing exports."""
    tracing = settings.tracing
    if tracing.otlp_endpoint is None and tracing.file is None:
        return False
    with _lock:
        if _configured:
            return True
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.namespace": "moderation"}),
            sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio)),
        )
        if tracing.otlp_endpoint is not None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=tracing.otlp_endpoint, insecure=True))
            )
        if tracing.file is not None:
            path = Path(str(tracing.file).replace("{service}", service))
            # Simple (synchronous) so a test sees every span as soon as it ends.
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
        trace.set_tracer_provider(provider)
        _configured.add(service)
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


# --- context in Kafka headers and HTTP headers ----------------------------------------------------


def kafka_headers(
    context: otel_context.Context | None = None, **extra: str
) -> list[tuple[str, bytes]]:
    """Kafka record headers carrying `context` (default: the current one) plus `extra`."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(name, value.encode()) for name, value in {**extra, **carrier}.items()]


def header_dict(context: otel_context.Context | None = None, **extra: str) -> dict[str, str]:
    """The same as `kafka_headers`, as the `dict[str, str]` FastStream's `publish` takes."""
    carrier: dict[str, str] = dict(extra)
    propagate.inject(carrier, context=context)
    return carrier


def context_from_kafka(headers: Iterable[tuple[str, bytes | None]] | None) -> otel_context.Context:
    """The trace context in a Kafka record's headers (an empty context when there is none)."""
    carrier = {
        name: value.decode(errors="replace") for name, value in headers or () if value is not None
    }
    return propagate.extract(carrier)


def context_from_mapping(carrier: Mapping[str, str]) -> otel_context.Context:
    """The trace context in HTTP-style headers (case-insensitive `traceparent`)."""
    return propagate.extract({name.lower(): value for name, value in carrier.items()})


def tracing_enabled() -> bool:
    """True once `configure_tracing` installed an exporting provider in this process."""
    return bool(_configured)


class PostTraces:
    """One span per post of a consumed batch, each continuing the trace of its Kafka headers.

    The worker scores a batch with one model call, but each post keeps its own trace: the
    span "moderate post" is the child of the API's span, the agent's spans are its children,
    and the events published for the post carry its context. Nothing is done (not even header
    parsing) while tracing is off: the hot path pays nothing for it.
    """

    def __init__(self, base_headers: Mapping[str, str]) -> None:
        self.enabled = tracing_enabled()
        self.base_headers = dict(base_headers)
        self._spans: dict[str, trace.Span] = {}
        self._started = time.time_ns()

    def start(self, post_id: str, headers: Iterable[tuple[str, bytes | None]] | None) -> None:
        if not self.enabled:
            return
        self._spans[post_id] = tracer().start_span(
            "moderate post",
            context=context_from_kafka(headers),
            kind=trace.SpanKind.CONSUMER,
            start_time=self._started,
            attributes={"moderation.post_id": post_id},
        )

    def headers(self, post_id: str) -> dict[str, str]:
        """Headers for an event about `post_id`: the base headers plus its trace context."""
        span = self._spans.get(post_id)
        if span is None:
            return self.base_headers
        return header_dict(trace.set_span_in_context(span), **self.base_headers)

    def contexts(self) -> dict[str, otel_context.Context]:
        """Each post's context, for work done on it elsewhere (the agent's runs)."""
        return {post_id: trace.set_span_in_context(span) for post_id, span in self._spans.items()}

    def end(self, post_id: str, *, decided_by: str) -> None:
        span = self._spans.pop(post_id, None)
        if span is not None:
            span.set_attribute("moderation.decided_by", decided_by)
            span.end()

    def end_all(self) -> None:
        for post_id in list(self._spans):
            self.end(post_id, decided_by="none")


def carrier_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace headers among `headers` (what a durable workflow input can keep)."""
    return {name: headers[name] for name in ("traceparent", "tracestate") if headers.get(name)}


def span_in(name: str, carrier: Mapping[str, str] | None, **attributes: str) -> Any:
    """A span named `name`, child of the context in `carrier` (a context manager)."""
    return tracer().start_as_current_span(
        name, context=context_from_mapping(carrier or {}), attributes=attributes
    )
