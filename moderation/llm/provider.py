"""The agents' model provider: Chat Completions on any OpenAI-compatible endpoint, metered.

vLLM in production, the local llama.cpp adapter in tests (``settings.llm.base_url``). Chat
Completions rather than the Responses API because neither vLLM nor llama.cpp implements the
latter fully. Retries belong to the Agents SDK's runner (`retry_settings`): the OpenAI client
itself never retries, so every attempt is one metered call and the backoff is ours to set.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

import openai
from agents import (
    Model,
    ModelProvider,
    ModelResponse,
    ModelRetryBackoffSettings,
    ModelRetrySettings,
    OpenAIChatCompletionsModel,
    RetryDecision,
    RetryPolicyContext,
    retry_policies,
)
from prometheus_client import Counter, Histogram

from moderation.settings import AgentSettings, LLMSettings

LLM_CALLS = Counter(
    "moderation_llm_calls_total", "model calls (one per attempt) by outcome", ["outcome"]
)
LLM_CALL_SECONDS = Histogram(
    "moderation_llm_call_seconds",
    "duration of one model call",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
LLM_RETRIES = Counter("moderation_llm_retries_total", "model calls retried, by cause", ["cause"])

RETRYABLE_STATUSES = (408, 409, 429, 500, 502, 503, 504)


class ModelCallError(Exception):
    """A failed model call on a route whose errors are not the OpenAI client's (the Dapr
    Conversation API): it carries its own label and whether trying again may help."""

    def __init__(self, message: str, *, kind: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


def error_kind(error: BaseException) -> str:
    """A short, bounded label for a failed call (metrics and fallback reasons)."""
    if isinstance(error, ModelCallError):
        return error.kind
    if isinstance(error, openai.APITimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, openai.APIStatusError):
        return f"http_{error.status_code}"
    return type(error).__name__


class MeteredChatModel(OpenAIChatCompletionsModel):
    """Chat Completions with a metric per call: count by outcome and latency."""

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        started = time.perf_counter()
        try:
            response = await super().get_response(*args, **kwargs)
        except BaseException as error:
            LLM_CALLS.labels(outcome=error_kind(error)).inc()
            raise
        finally:
            LLM_CALL_SECONDS.observe(time.perf_counter() - started)
        LLM_CALLS.labels(outcome="ok").inc()
        return response


class ChatCompletionsProvider(ModelProvider):
    """Every agent runs on one OpenAI-compatible endpoint; a name selects the model or adapter."""

    def __init__(self, client: openai.AsyncOpenAI, default_model: str) -> None:
        self.client = client
        self.default_model = default_model

    def get_model(self, model_name: str | None) -> Model:
        return MeteredChatModel(model=model_name or self.default_model, openai_client=self.client)


def create_client(
    llm: LLMSettings, *, via_dapr: str | None = None, dapr_token: str | None = None
) -> openai.AsyncOpenAI:
    """The OpenAI client of a service (created once, closed at shutdown).

    With `via_dapr` (the daprd HTTP address and the HTTPEndpoint's name, as from
    `invocation_base_url`), every call goes through daprd's service invocation, so the
    sidecar's resiliency policy for that endpoint (timeout, retry, circuit breaker) applies.
    """
    return openai.AsyncOpenAI(
        base_url=via_dapr or llm.base_url,
        api_key=llm.api_key.get_secret_value(),
        timeout=llm.timeout_seconds,
        max_retries=0,  # the runner retries (retry_settings), so each attempt is metered
        default_headers={"dapr-api-token": dapr_token} if via_dapr and dapr_token else None,
    )


def invocation_base_url(llm_base_url: str, dapr_http_endpoint: str, endpoint_name: str) -> str:
    """The model server's base URL as seen through daprd's service invocation of an HTTPEndpoint.

    daprd forwards `<dapr>/v1.0/invoke/<endpoint>/method/<path>` to `<endpoint baseUrl>/<path>`;
    the endpoint's baseUrl is the server's origin (`endpoint_origin`), so the path keeps the
    server's own prefix: http://vllm:8000/v1 -> <dapr>/v1.0/invoke/<name>/method/v1.
    """
    path = urlsplit(llm_base_url).path.rstrip("/")
    return f"{dapr_http_endpoint.rstrip('/')}/v1.0/invoke/{endpoint_name}/method{path}"


def endpoint_origin(llm_base_url: str) -> str:
    """scheme://host:port of the model server: the HTTPEndpoint's baseUrl."""
    parts = urlsplit(llm_base_url)
    return f"{parts.scheme}://{parts.netloc}"


_RETRYABLE = retry_policies.any(
    retry_policies.provider_suggested(),
    retry_policies.network_error(),
    retry_policies.http_status(RETRYABLE_STATUSES),
)


async def _counted_retry_policy(context: RetryPolicyContext) -> bool | RetryDecision:
    decision: bool | RetryDecision | Awaitable[bool | RetryDecision]
    if isinstance(context.error, ModelCallError):
        decision = context.error.retryable
    else:
        decision = _RETRYABLE(context)
    if inspect.isawaitable(decision):
        decision = await decision
    if decision if isinstance(decision, bool) else decision.retry:
        LLM_RETRIES.labels(cause=error_kind(context.error)).inc()
    return decision


def retry_settings(agent: AgentSettings) -> ModelRetrySettings:
    """Exponential backoff with jitter on 408/409/429/5xx, timeouts and connection errors."""
    return ModelRetrySettings(
        max_retries=agent.max_attempts - 1,
        backoff=ModelRetryBackoffSettings(
            initial_delay=agent.backoff_initial_seconds,
            max_delay=agent.backoff_max_seconds,
            multiplier=2.0,
            jitter=True,
        ),
        policy=_counted_retry_policy,
    )
