"""The Agents SDK's traces as OpenTelemetry spans; nothing goes to OpenAI unless configured.

The SDK reports each trace and span to its tracing processors; by default one of them uploads
everything to OpenAI. `configure_agent_tracing` replaces it with `OpenTelemetryProcessor`, which
turns the SDK's spans into OpenTelemetry spans through the API only: they go wherever the
process's tracer provider sends them, and nowhere when none is configured (the API's no-op).

Attributes follow the GenAI semantic conventions where they apply (``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.tool.name``, ...). Inputs and outputs (post text,
messages, tool results) are never recorded: traces are not a place for user content.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from agents import set_trace_processors
from agents.tracing import (
    AgentSpanData,
    CustomSpanData,
    FunctionSpanData,
    GenerationSpanData,
    GuardrailSpanData,
    HandoffSpanData,
    Span,
    SpanData,
    Trace,
    TraceProvider,
    TracingProcessor,
    TurnSpanData,
    get_trace_provider,
)
from agents.tracing.processors import default_processor
from opentelemetry import trace as otel
from opentelemetry.util.types import AttributeValue

Attributes = dict[str, AttributeValue]


def span_name(data: SpanData) -> str:
    """``<type> <what>``: ``agent classifier``, ``generation gpt-x``, ``function lookup``."""
    detail: object
    if isinstance(data, GenerationSpanData):
        detail = data.model
    elif isinstance(data, HandoffSpanData):
        detail = f"{data.from_agent} -> {data.to_agent}"
    elif isinstance(data, TurnSpanData):
        detail = f"{data.agent_name} #{data.turn}"
    else:
        detail = getattr(data, "name", None)
    return f"{data.type} {detail}" if detail else data.type


def span_attributes(data: SpanData) -> Attributes:
    """What a span's data says about the run, without its inputs and outputs."""
    attributes: Attributes = {"agents.span.type": data.type}
    if isinstance(data, AgentSpanData):
        attributes["gen_ai.agent.name"] = data.name
        if data.output_type:
            attributes["agents.agent.output_type"] = data.output_type
    elif isinstance(data, GenerationSpanData) and data.model:
        attributes["gen_ai.request.model"] = data.model
    elif isinstance(data, FunctionSpanData):
        attributes["gen_ai.tool.name"] = data.name
    elif isinstance(data, GuardrailSpanData):
        attributes["agents.guardrail.name"] = data.name
        attributes["agents.guardrail.triggered"] = data.triggered
    elif isinstance(data, CustomSpanData):
        attributes.update(
            (f"agents.custom.{key}", value)
            for key, value in data.data.items()
            if isinstance(value, str | bool | int | float)
        )
    usage: object = getattr(data, "usage", None)
    if isinstance(usage, Mapping):
        for key in ("input_tokens", "output_tokens"):
            if isinstance(usage.get(key), int):
                attributes[f"gen_ai.usage.{key}"] = usage[key]
    return attributes


class OpenTelemetryProcessor(TracingProcessor):
    """Mirrors SDK traces and spans as OpenTelemetry spans, with the same parent-child links.

    An SDK trace becomes a root span named after its workflow (a child of the OpenTelemetry
    span current where the trace starts, if any); each SDK span becomes a child of the span of
    its SDK parent. The SDK calls processors from any thread, so the open spans are kept in a
    dict guarded by a lock.

    Args:
        tracer_provider: Where the spans go; the global tracer provider when None.
    """

    def __init__(self, tracer_provider: otel.TracerProvider | None = None) -> None:
        self._tracer = otel.get_tracer(__name__, tracer_provider=tracer_provider)
        self._open: dict[str, otel.Span] = {}
        self._lock = threading.Lock()

    def _start(self, key: str, parent_key: str | None, name: str, attributes: Attributes) -> None:
        with self._lock:
            parent = self._open.get(parent_key) if parent_key else None
        context = otel.set_span_in_context(parent) if parent is not None else None
        span = self._tracer.start_span(name, context=context, attributes=attributes)
        with self._lock:
            self._open[key] = span

    def _pop(self, key: str) -> otel.Span | None:
        with self._lock:
            return self._open.pop(key, None)

    def on_trace_start(self, trace: Trace) -> None:
        attributes: Attributes = {"agents.trace_id": trace.trace_id}
        exported = trace.export() or {}
        if exported.get("group_id"):
            attributes["agents.group_id"] = str(exported["group_id"])
        self._start(trace.trace_id, None, trace.name, attributes)

    def on_trace_end(self, trace: Trace) -> None:
        span = self._pop(trace.trace_id)
        if span is not None:
            span.end()

    def on_span_start(self, span: Span[Any]) -> None:
        parent_key = span.parent_id or span.trace_id
        self._start(span.span_id, parent_key, span_name(span.span_data), {})

    def on_span_end(self, span: Span[Any]) -> None:
        otel_span = self._pop(span.span_id)
        if otel_span is None:
            return
        # Set at the end: usage, results and guardrail outcomes are filled in during the span.
        otel_span.set_attributes(span_attributes(span.span_data))
        if span.error is not None:
            otel_span.set_status(otel.Status(otel.StatusCode.ERROR, span.error["message"]))
        otel_span.end()

    def shutdown(self) -> None:
        """Nothing to do: exporting belongs to the OpenTelemetry SDK's span processors."""

    def force_flush(self) -> None:
        """Nothing to do: exporting belongs to the OpenTelemetry SDK's span processors."""


_configure_lock = threading.Lock()
_configured: tuple[TraceProvider, bool] | None = None


def configure_agent_tracing(upload_to_openai: bool) -> None:
    """Send the Agents SDK's spans to OpenTelemetry, and to OpenAI only when asked.

    Idempotent: calling it again with the same choice changes nothing.

    Args:
        upload_to_openai: Keep the SDK's default processor, which uploads traces to OpenAI
            (``settings.llm.trace_upload``); otherwise it is removed.
    """
    global _configured
    with _configure_lock:
        provider = get_trace_provider()
        if _configured == (provider, upload_to_openai):
            return
        processors: list[TracingProcessor] = [OpenTelemetryProcessor()]
        if upload_to_openai:
            processors.insert(0, default_processor())
        set_trace_processors(processors)
        _configured = (provider, upload_to_openai)
