"""Agents SDK spans become OpenTelemetry spans; nothing is uploaded to OpenAI unless configured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents.tracing import (
    Span,
    SpanError,
    Trace,
    agent_span,
    custom_span,
    function_span,
    generation_span,
    get_trace_provider,
    guardrail_span,
    set_trace_provider,
    trace,
)
from agents.tracing.processors import BackendSpanExporter, default_processor
from agents.tracing.provider import DefaultTraceProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from moderation import tracing
from moderation.tracing import OpenTelemetryProcessor, configure_agent_tracing


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    # A provider of the test's own: the global one can be set only once per process.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def sdk_provider() -> Iterator[DefaultTraceProvider]:
    """A fresh SDK trace provider as the SDK builds it (with its OpenAI uploader), then the old."""
    previous = get_trace_provider()
    provider = DefaultTraceProvider()
    provider.register_processor(default_processor())
    provider.set_disabled(False)
    set_trace_provider(provider)
    yield provider
    set_trace_provider(previous)


class BackendUploads:
    """What the SDK's OpenAI exporter was asked to upload (the real upload is replaced)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items: list[Trace | Span[Any]] = []

        def record(exporter: BackendSpanExporter, items: list[Trace | Span[Any]]) -> None:
            self.items.extend(items)

        monkeypatch.setattr(BackendSpanExporter, "export", record)

    def trace_ids(self) -> set[str]:
        return {item.trace_id for item in self.items if isinstance(item, Trace)}


@pytest.fixture
def uploads(tracer_provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> BackendUploads:
    """Uploads recorded, not sent; `configure_agent_tracing` mirrors to the test's provider."""
    monkeypatch.setattr(
        tracing, "OpenTelemetryProcessor", lambda: OpenTelemetryProcessor(tracer_provider)
    )
    return BackendUploads(monkeypatch)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), f"span names are not unique: {[s.name for s in spans]}"
    return named


def parent_span_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def test_sdk_spans_become_otel_spans_under_their_parents(
    sdk_provider: DefaultTraceProvider,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    sdk_provider.set_processors([OpenTelemetryProcessor(tracer_provider=tracer_provider)])

    with trace("moderate post", group_id="post-1"):
        with agent_span("classifier", output_type="AgentVerdict"):
            with generation_span(model="smollm2") as generation:
                # Filled in during the span, as the SDK does after the model answers.
                generation.span_data.usage = {"input_tokens": 120, "output_tokens": 30}
            with function_span("author_history", input='{"author_id": "a-17"}') as function:
                function.set_error(SpanError(message="lookup failed", data=None))
            with guardrail_span("injection", triggered=True):
                pass
            with custom_span("cascade", {"stage": 2, "band": "uncertain", "nested": {"a": 1}}):
                pass
    spans = by_name(exporter)

    assert set(spans) == {
        "moderate post",
        "agent classifier",
        "generation smollm2",
        "function author_history",
        "guardrail injection",
        "custom cascade",
    }
    root, agent = spans["moderate post"], spans["agent classifier"]
    assert root.parent is None
    assert parent_span_id(agent) == span_id(root)
    children = ["generation smollm2", "function author_history", "guardrail injection"]
    for name in [*children, "custom cascade"]:
        assert parent_span_id(spans[name]) == span_id(agent), name
    assert len({span.context.trace_id for span in spans.values() if span.context}) == 1

    assert root.attributes is not None and root.attributes["agents.group_id"] == "post-1"
    assert agent.attributes == {
        "agents.span.type": "agent",
        "gen_ai.agent.name": "classifier",
        "agents.agent.output_type": "AgentVerdict",
    }
    assert spans["generation smollm2"].attributes == {
        "agents.span.type": "generation",
        "gen_ai.request.model": "smollm2",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
    }
    function_attributes = spans["function author_history"].attributes
    assert function_attributes == {
        "agents.span.type": "function",
        "gen_ai.tool.name": "author_history",
    }
    assert spans["guardrail injection"].attributes is not None
    assert spans["guardrail injection"].attributes["agents.guardrail.triggered"] is True
    assert spans["custom cascade"].attributes == {
        "agents.span.type": "custom",
        "agents.custom.stage": 2,
        "agents.custom.band": "uncertain",
    }

    status = spans["function author_history"].status
    assert (status.status_code, status.description) == (StatusCode.ERROR, "lookup failed")
    others = [span for name, span in spans.items() if name != "function author_history"]
    assert all(span.status.status_code is StatusCode.UNSET for span in others)


async def test_concurrent_runs_keep_their_own_parents(
    sdk_provider: DefaultTraceProvider,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    sdk_provider.set_processors([OpenTelemetryProcessor(tracer_provider=tracer_provider)])

    async def run(post: str) -> None:
        with trace(f"moderate {post}"), agent_span(f"classifier {post}"):
            await asyncio.sleep(0)
            with function_span(f"lookup {post}"):
                await asyncio.sleep(0)

    await asyncio.gather(*(run(f"p{i}") for i in range(5)))
    spans = by_name(exporter)

    assert len(spans) == 15
    for i in range(5):
        root = spans[f"moderate p{i}"]
        agent = spans[f"agent classifier p{i}"]
        assert parent_span_id(agent) == span_id(root)
        assert parent_span_id(spans[f"function lookup p{i}"]) == span_id(agent)


def test_without_upload_nothing_reaches_openai(
    sdk_provider: DefaultTraceProvider, exporter: InMemorySpanExporter, uploads: BackendUploads
) -> None:

    configure_agent_tracing(upload_to_openai=False)
    configure_agent_tracing(upload_to_openai=False)
    with trace("moderate post"), custom_span("cascade"):
        pass
    sdk_provider.force_flush()

    assert uploads.items == []
    # Configured twice, one processor: each span is mirrored once.
    assert sorted(span.name for span in exporter.get_finished_spans()) == [
        "custom cascade",
        "moderate post",
    ]


def test_with_upload_the_openai_exporter_stays(
    sdk_provider: DefaultTraceProvider, exporter: InMemorySpanExporter, uploads: BackendUploads
) -> None:

    configure_agent_tracing(upload_to_openai=False)
    configure_agent_tracing(upload_to_openai=True)
    with trace("moderate post") as uploaded:
        pass
    sdk_provider.force_flush()

    assert uploaded.trace_id in uploads.trace_ids()
    assert [span.name for span in exporter.get_finished_spans()] == ["moderate post"]
