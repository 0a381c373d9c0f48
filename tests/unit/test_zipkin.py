"""Where spans go (OTLP or Zipkin), the Zipkin exporter's wire format, the recorder's spans, and
the stack's Zipkin component (command line, cache, status) without starting it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from moderation import telemetry
from moderation.devtools.stack import components
from moderation.devtools.stack.runtime import StackError
from moderation.devtools.stack.zipkin import ZipkinServer
from moderation.services.sidecar.pubsub import TraceContextInterceptor, _CallDetails
from moderation.settings import Settings, TracingSettings, ZipkinSettings
from moderation.telemetry import QuietExporter, record_spans, span_destination, zipkin_exporter

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
DROPPED = "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-00"


def test_spans_go_to_zipkin_by_default_and_to_otlp_when_a_collector_is_named() -> None:
    assert span_destination(TracingSettings()) == "zipkin"
    assert span_destination(TracingSettings(otlp_endpoint="http://otel-collector:4317")) == "otlp"
    off = TracingSettings(zipkin=ZipkinSettings(export=False))
    assert span_destination(off) is None


def test_zipkin_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_TRACING__ZIPKIN__PORT", "19411")
    monkeypatch.setenv("MODERATION_TRACING__ZIPKIN__EXPORT", "false")
    zipkin = Settings().tracing.zipkin
    assert zipkin.spans_url == "http://127.0.0.1:19411/api/v2/spans"
    assert not zipkin.export


class _Unreachable(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise requests.ConnectionError("connection refused")


def test_an_unreachable_zipkin_costs_one_warning_not_a_traceback_per_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = QuietExporter(_Unreachable(), "Zipkin http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="moderation.telemetry"):
        results = [exporter.export([]) for _ in range(3)]
    assert results == [SpanExportResult.FAILURE] * 3
    assert len(caplog.records) == 1 and "unreachable" in caplog.records[0].getMessage()


@pytest.fixture
def zipkin_intake() -> Iterator[tuple[str, list[Any]]]:
    """A loopback HTTP server that records what is posted to it, as Zipkin's intake would."""
    received: list[Any] = []

    class Intake(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers["Content-Length"])
            received.append((self.path, json.loads(self.rfile.read(length))))
            self.send_response(202)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = HTTPServer(("127.0.0.1", 0), Intake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v2/spans", received
    server.shutdown()
    server.server_close()


def test_the_zipkin_exporter_posts_v2_json_with_the_service_name(
    zipkin_intake: tuple[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = zipkin_intake
    # A proxy in the environment must not carry spans meant for the loopback Zipkin.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    provider = TracerProvider(resource=Resource.create({"service.name": "worker"}))
    provider.add_span_processor(SimpleSpanProcessor(zipkin_exporter(url)))
    with provider.get_tracer("t").start_as_current_span("moderate post") as parent:
        with provider.get_tracer("t").start_as_current_span("agent classifier"):
            pass
    paths = {path for path, _ in received}
    spans = [span for _, batch in received for span in batch]
    assert paths == {"/api/v2/spans"}
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) == {"moderate post", "agent classifier"}
    assert by_name["agent classifier"]["parentId"] == by_name["moderate post"]["id"]
    assert by_name["moderate post"]["traceId"] == f"{parent.get_span_context().trace_id:032x}"
    assert by_name["moderate post"]["localEndpoint"]["serviceName"] == "worker"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """A tracer provider of the test's own in place of the process's (which stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "recorder"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("t"))
    monkeypatch.setattr(telemetry, "_configured", {"recorder"})
    return exporter


def test_the_recorder_adds_a_span_to_sampled_traces_only(recorded: InMemorySpanExporter) -> None:
    records = [
        ([("traceparent", SAMPLED.encode())], {"moderation.post_id": "p1"}),
        ([("traceparent", DROPPED.encode())], {"moderation.post_id": "p2"}),
        (None, {"moderation.post_id": "p3"}),
    ]
    record_spans("record event", records, start_time=1)
    (span,) = recorded.get_finished_spans()
    assert span.name == "record event" and span.attributes == {"moderation.post_id": "p1"}
    assert span.parent is not None and span.parent.span_id == int(SAMPLED.split("-")[2], 16)
    assert span.context is not None and span.context.trace_id == int(SAMPLED.split("-")[1], 16)


def test_events_daprd_published_join_their_trace_too(recorded: InMemorySpanExporter) -> None:
    # daprd names a raw payload's W3C context `traceid` in the Kafka headers.
    headers = [("traceid", SAMPLED.encode()), ("tracestate", b"")]
    record_spans("record event", [(headers, {})], start_time=1)
    (span,) = recorded.get_finished_spans()
    assert span.context is not None and span.context.trace_id == int(SAMPLED.split("-")[1], 16)


def test_the_recorder_reads_no_header_while_tracing_is_off() -> None:
    def headers() -> Iterator[tuple[str, bytes]]:
        raise AssertionError("headers were read")
        yield ("traceparent", b"")

    record_spans("record event", [(headers(), {})], start_time=1)


def stack_settings(tmp_path: Path) -> Settings:
    return Settings().model_copy(
        update={
            "stack": Settings().stack.model_copy(
                update={"cache_dir": tmp_path / "cache", "state_dir": tmp_path / "state"}
            )
        }
    )


def test_zipkin_runs_in_memory_on_its_configured_loopback_port(tmp_path: Path) -> None:
    server = ZipkinServer(stack_settings(tmp_path))
    argv = server.argv()
    assert "-Xmx256m" in argv and argv[-1] == str(server.jar)
    assert "-Darmeria.ports[0].ip=127.0.0.1" in argv and "-Darmeria.ports[0].port=9411" in argv
    assert server.server_env()["STORAGE_TYPE"] == "mem"
    assert server.server_env()["MEM_MAX_SPANS"] == "50000"
    (row,) = server.status()
    assert (row.name, row.running, row.healthy) == ("zipkin", False, False)
    assert row.endpoint == "http://127.0.0.1:9411"


def test_zipkin_starts_before_dapr_whose_spans_it_receives(tmp_path: Path) -> None:
    names = [component.name for component in components(stack_settings(tmp_path))]
    assert names.index("zipkin") < names.index("dapr")


def test_a_jar_with_other_bytes_is_refused_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ZipkinServer(stack_settings(tmp_path))
    monkeypatch.setattr("moderation.devtools.stack.zipkin.require_tool", lambda *_: "mvn")

    def fake_maven(argv: list[str], what: str) -> str:
        staging = Path(next(a for a in argv if a.startswith("-DoutputDirectory=")).split("=")[1])
        (staging / server.jar.name).write_bytes(b"not zipkin")
        return ""

    monkeypatch.setattr("moderation.devtools.stack.zipkin.run", fake_maven)
    with pytest.raises(StackError, match="sha256"):
        server.install()
    assert not server.jar.parent.exists()


def test_calls_to_daprd_carry_the_current_trace_context() -> None:
    sent: list[Any] = []
    details = _CallDetails(
        "/dapr.proto.runtime.v1.Dapr/PublishEvent", None, [("a", "b")], None, None, None
    )
    interceptor = TraceContextInterceptor()
    interceptor.intercept_unary_unary(lambda d, _r: sent.append(d.metadata), details, object())
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("agent: publish") as span:
        interceptor.intercept_unary_unary(lambda d, _r: sent.append(d.metadata), details, object())
    without, within = sent
    assert without == [("a", "b")]  # no current span: the call is unchanged
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert within[0] == ("a", "b") and within[1][0] == "traceparent" and trace_id in within[1][1]
