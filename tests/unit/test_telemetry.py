"""Trace context through Kafka headers and HTTP headers, the JSON-lines exporter, PostTraces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from moderation.telemetry import (
    JsonLinesExporter,
    PostTraces,
    carrier_of,
    context_from_kafka,
    context_from_mapping,
    kafka_headers,
    unsampled_traceparent,
)


def provider(path: Path) -> TracerProvider:
    local = TracerProvider(resource=Resource.create({"service.name": "test"}))
    local.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    return local


def test_a_span_context_survives_kafka_headers(tmp_path: Path) -> None:
    tracer = provider(tmp_path / "spans.jsonl").get_tracer("t")
    with tracer.start_as_current_span("api") as parent:
        headers = kafka_headers(None, **{"content-type": "application/json"})
    names = [name for name, _ in headers]
    assert names[0] == "content-type" and "traceparent" in names
    context = context_from_kafka(headers)
    with tracer.start_as_current_span("worker", context=context) as child:
        pass
    assert child.get_span_context().trace_id == parent.get_span_context().trace_id
    assert isinstance(child, ReadableSpan) and child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id


def test_http_carriers_keep_only_the_trace_headers(tmp_path: Path) -> None:
    tracer = provider(tmp_path / "spans.jsonl").get_tracer("t")
    with tracer.start_as_current_span("dapr") as span:
        headers = dict(kafka_headers())
    delivered = {"Traceparent": headers["traceparent"].decode(), "Content-Type": "x"}
    carrier = carrier_of({k.lower(): v for k, v in delivered.items()})
    assert list(carrier) == ["traceparent"]
    restored = trace.get_current_span(context_from_mapping(delivered)).get_span_context()
    assert restored.trace_id == span.get_span_context().trace_id


def test_spans_are_written_as_json_lines_without_post_text(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = provider(path).get_tracer("t")
    with tracer.start_as_current_span("outer", attributes={"moderation.post_id": "p1"}):
        with tracer.start_as_current_span("inner"):
            pass
    inner, outer = (json.loads(line) for line in path.read_text().splitlines())
    assert (inner["name"], outer["name"]) == ("inner", "outer")
    assert inner["parent_id"] == outer["span_id"] and inner["trace_id"] == outer["trace_id"]
    assert outer["service"] == "test" and outer["attributes"] == {"moderation.post_id": "p1"}


def test_post_traces_cost_nothing_while_tracing_is_off() -> None:
    traces = PostTraces({"content-type": "application/json"})
    assert not traces.enabled  # no provider was configured in this process
    traces.start("p1", [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")])
    assert traces.headers("p1") == {"content-type": "application/json"}
    assert traces.contexts() == {}
    traces.end("p1", decided_by="model")
    traces.end_all()


def _traceparent(flags: bytes) -> bytes:
    return b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-" + flags


def test_unsampled_traceparents_are_recognised_from_their_flags() -> None:
    for flags in (b"00", b"02", b"fe", b"0A"):
        value = _traceparent(flags)
        assert unsampled_traceparent([("content-type", b"x"), ("traceparent", value)]) == value
    for flags in (b"01", b"03", b"ff", b"0B"):
        assert unsampled_traceparent([("traceparent", _traceparent(flags))]) is None
    # Missing or unreadable: the full path decides.
    assert unsampled_traceparent([("content-type", b"x")]) is None
    assert unsampled_traceparent(None) is None
    assert unsampled_traceparent([("traceparent", b"00-short-00")]) is None
    assert unsampled_traceparent([("traceparent", None)]) is None


def test_post_traces_pass_an_unsampled_context_on_without_a_span(monkeypatch: Any) -> None:
    import moderation.telemetry as telemetry

    monkeypatch.setattr(telemetry, "tracing_enabled", lambda: True)
    traces = PostTraces({"content-type": "application/json"})
    assert traces.enabled
    dropped, kept = _traceparent(b"00"), _traceparent(b"01")
    traces.start("dropped", [("traceparent", dropped)])
    traces.start("kept", [("traceparent", kept)])
    # The dropped trace's context goes on unchanged, with no span of its own.
    assert traces.headers("dropped") == {
        "content-type": "application/json",
        "traceparent": dropped.decode(),
    }
    assert set(traces._spans) == {"kept"}
    assert "traceparent" in traces.headers("kept")
    restored = trace.get_current_span(traces.contexts()["dropped"]).get_span_context()
    assert restored.trace_id == int("1" * 32, 16) and not restored.trace_flags.sampled
    traces.end_all()
