"""OpenTelemetry tracing for the services: one trace follows a post through the pipeline.

The API starts the trace and puts its context into the Kafka record's headers (W3C
`traceparent`); the worker continues it per post (stage 1, the agent's spans, the events it
publishes carry the post's context in their headers); the review service reads the context that
daprd hands it with `review.requested` and runs the workflow's activities under it.

`configure_tracing` installs the process's tracer provider. Spans go to one place
(`span_destination`): OTLP/gRPC to `MODERATION_TRACING__OTLP_ENDPOINT` when it is set (the
collector of Kubernetes and compose, where daprd's spans go too), else to the local stack's
Zipkin (`MODERATION_TRACING__ZIPKIN__*`, as daprd's `components/configuration.yaml`); and also,
as JSON lines, to `MODERATION_TRACING__FILE`. With no destination at all the API's no-op
provider stays and tracing costs next to nothing. Post text never enters a span.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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

from moderation.settings import Settings, TracingSettings

TRACER_NAME = "moderation"
_configured: set[str] = set()
_lock = threading.Lock()
logger = logging.getLogger(__name__)


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


def span_destination(tracing: TracingSettings) -> Literal["otlp", "zipkin"] | None:
    """Where the spans go: the OTLP collector when one is named, else Zipkin unless turned off."""
    if tracing.otlp_endpoint:
        return "otlp"
    if tracing.zipkin.export:
        return "zipkin"
    return None


class QuietExporter(SpanExporter):
    """An HTTP exporter that logs one line while its server is down, not a traceback a batch."""

    def __init__(self, inner: SpanExporter, target: str) -> None:
        self.inner = inner
        self.target = target
        self.warned = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self.inner.export(spans)
        except OSError as error:  # requests' errors are OSErrors
            if not self.warned:
                logger.warning("tracing: %s unreachable, spans dropped (%s)", self.target, error)
                self.warned = True
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def zipkin_exporter(url: str) -> SpanExporter:
    """Zipkin's v2 JSON exporter posting to `url` (never through an environment proxy on
    loopback: a proxy for the outside cannot reach the local Zipkin)."""
    import requests
    from opentelemetry.exporter.zipkin.json import ZipkinExporter

    session = requests.Session()
    session.trust_env = urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}
    return QuietExporter(ZipkinExporter(endpoint=url, session=session, timeout=5), f"Zipkin {url}")


def configure_tracing(service: str, settings: Settings) -> bool:
    """Install the tracer provider for `service` once per process; False when nothing exports."""
    tracing = settings.tracing
    destination = span_destination(tracing)
    if destination is None and tracing.file is None:
        return False
    with _lock:
        if _configured:
            return True
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.namespace": "moderation"}),
            sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio)),
        )
        if destination == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=tracing.otlp_endpoint, insecure=True))
            )
        elif destination == "zipkin":
            exporter = zipkin_exporter(tracing.zipkin.spans_url)
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if tracing.file is not None:
            path = Path(str(tracing.file).replace("{service}", service))
            # Simple (synchronous) so a test sees every span as soon as it ends.
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
        trace.set_tracer_provider(provider)
        _configured.add(service)
    return True


@functools.cache
def tracer() -> trace.Tracer:
    """The process's tracer (a proxy until `configure_tracing` installs the provider; made once:
    the SDK builds a new tracer on every `get_tracer` call, a cost per post on the hot path)."""
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
    # daprd publishes a raw payload's context as `traceid` (a W3C traceparent value).
    if "traceparent" not in carrier and "traceid" in carrier:
        carrier["traceparent"] = carrier["traceid"]
    return propagate.extract(carrier)


def unsampled_traceparent(headers: Iterable[tuple[str, bytes | None]] | None) -> bytes | None:
    """The record's `traceparent` when it says its trace is not sampled, else None.

    A fast check of the flags' last hex digit, so that the records of dropped traces (most of
    them at a low sample ratio) cost no context parsing and no span. None also when there is no
    `traceparent` or it cannot be read: those take the full path.
    """
    for name, value in headers or ():
        if name == "traceparent":
            # 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>: bit 0 of the flags.
            if value is None or len(value) != 55 or value[52:53] != b"-":
                return None
            last = value[54:55]
            return value if last in _UNSAMPLED_DIGITS else None
    return None


# The hex digits whose lowest bit (the `sampled` flag) is 0.
_UNSAMPLED_DIGITS = frozenset(bytes([digit]) for digit in b"02468aceACE")


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
        # Posts whose trace is not sampled: their `traceparent`, passed on unchanged, no span.
        self._unsampled: dict[str, str] = {}
        self._started = time.time_ns()

    def start(self, post_id: str, headers: Iterable[tuple[str, bytes | None]] | None) -> None:
        if not self.enabled:
            return
        unsampled = unsampled_traceparent(headers)
        if unsampled is not None:
            self._unsampled[post_id] = unsampled.decode()
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
            unsampled = self._unsampled.get(post_id)
            if unsampled is not None:
                return {**self.base_headers, "traceparent": unsampled}
            return self.base_headers
        return header_dict(trace.set_span_in_context(span), **self.base_headers)

    def contexts(self) -> dict[str, otel_context.Context]:
        """Each post's context, for work done on it elsewhere (the agent's runs)."""
        contexts = {
            post_id: propagate.extract({"traceparent": traceparent})
            for post_id, traceparent in self._unsampled.items()
        }
        contexts.update(
            (post_id, trace.set_span_in_context(span)) for post_id, span in self._spans.items()
        )
        return contexts

    def end(self, post_id: str, *, decided_by: str) -> None:
        span = self._spans.pop(post_id, None)
        if span is not None:
            span.set_attribute("moderation.decided_by", decided_by)
            span.end()

    def end_all(self) -> None:
        for post_id in list(self._spans):
            self.end(post_id, decided_by="none")


def record_spans(
    name: str,
    records: Iterable[tuple[Iterable[tuple[str, bytes | None]] | None, Mapping[str, str]]],
    *,
    start_time: int,
) -> None:
    """One finished span `name` per consumed record (headers, attributes) whose trace is sampled.

    The recorder writes a whole batch at once; each record's span, from the batch's start to
    now, joins the trace in its headers. A record whose trace was dropped costs a header parse.
    """
    if not tracing_enabled():
        return
    spans = tracer()
    for headers, attributes in records:
        if unsampled_traceparent(headers) is not None:
            continue
        context = context_from_kafka(headers)
        if not trace.get_current_span(context).get_span_context().trace_flags.sampled:
            continue
        span = spans.start_span(
            name,
            context=context,
            kind=trace.SpanKind.CONSUMER,
            start_time=start_time,
            attributes=dict(attributes),
        )
        span.end()


def carrier_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace headers among `headers` (what a durable workflow input can keep)."""
    return {name: headers[name] for name in ("traceparent", "tracestate") if headers.get(name)}


def span_in(name: str, carrier: Mapping[str, str] | None, **attributes: str) -> Any:
    """A span named `name`, child of the context in `carrier` (a context manager)."""
    return tracer().start_as_current_span(
        name, context=context_from_mapping(carrier or {}), attributes=attributes
    )
