"""The agent's model calls through the Dapr Conversation API (alpha2, `conversation.openai`).

An Agents SDK `Model` whose `get_response` asks the agent service's daprd
(`DaprClient.converse_alpha2`) instead of calling the endpoint itself; daprd's component calls
the OpenAI-compatible server (vLLM, or the local adapter) under the sidecar's resiliency policy
(`components/resiliency.yaml`: timeout, retry, circuit breaker). The SDK's own converter turns
the run's items into Chat Completions messages, which map one to one onto Dapr's messages
(system, user, assistant with its tool calls, tool results); the answer is turned back into the
same output items the direct route returns, so the agent's steps cannot tell the routes apart.

What Dapr 1.18.2 with components-contrib 1.18.3 carries, and what it does not (README, "How the
agent reaches its model"): the model is the component's (no per-request model), `max_tokens`,
`top_p`, `parallel_tool_calls` and a tool's `strict` flag are not forwarded, a tool choice that
names a function reaches the server as a bare string, and the output schema is rebuilt by the
component keeping only `type`, `properties`, `items`, `required`, `enum`, `description` and
`additionalProperties` (so `$ref` must be inlined here, and numeric or length bounds are lost).

Nothing here logs a message's text: the posts are users' data. Dapr's `scrub_pii` rewrites the
text sent to the model and returned by it, not any log (`ModelRoute.scrub_pii`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from agents import (
    AgentOutputSchemaBase,
    Handoff,
    Model,
    ModelBehaviorError,
    ModelProvider,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    Tool,
    TResponseInputItem,
    Usage,
    UserError,
)
from agents.items import TResponseStreamEvent
from agents.models.chatcmpl_converter import Converter
from dapr.clients.grpc import conversation as dc
from google.protobuf.struct_pb2 import Struct  # type: ignore[import-untyped]  # no stubs
from openai.types.chat import ChatCompletionMessage

from moderation.llm.provider import (
    LLM_CALL_SECONDS,
    LLM_CALLS,
    RETRYABLE_STATUSES,
    ModelCallError,
    error_kind,
)

logger = logging.getLogger(__name__)

TOOL_CHOICES = ("auto", "required", "none")
# The JSON-schema types the component's converter accepts (workarounds.go, ValidateSchema).
SCHEMA_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_STATUS = re.compile(r"status code: (\d{3})")


class ConversationClient(Protocol):
    """What the model needs of `dapr.aio.clients.DaprClient` (a fake in unit tests)."""

    async def converse_alpha2(
        self,
        name: str,
        inputs: list[dc.ConversationInputAlpha2],
        *,
        scrub_pii: bool | None = None,
        temperature: float | None = None,
        tools: list[dc.ConversationTools] | None = None,
        tool_choice: str | None = None,
        response_format: Struct | None = None,
    ) -> dc.ConversationResponseAlpha2: ...


# --- request ---------------------------------------------------------------------------------


def _text(content: Any) -> str:
    """A Chat Completions content (a string or text parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise UserError(f"the Dapr conversation route carries text only, not {part!r:.80}")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _content(text: str) -> list[dc.ConversationMessageContent]:
    return [dc.ConversationMessageContent(text=text)] if text else []


def to_dapr_messages(messages: list[Mapping[str, Any]]) -> list[dc.ConversationMessage]:
    """Chat Completions messages as Dapr's (a tool result keeps its call id and names its tool)."""
    tool_names: dict[str, str] = {}
    converted: list[dc.ConversationMessage] = []
    for message in messages:
        role, text = message["role"], _text(message.get("content"))
        if role in ("system", "developer"):
            # daprd maps a developer message to the user role; the SDK means the system's.
            converted.append(dc.ConversationMessage(of_system=dc.ConversationMessageOfSystem(
                content=_content(text))))  # fmt: skip
        elif role == "user":
            converted.append(dc.ConversationMessage(of_user=dc.ConversationMessageOfUser(
                content=_content(text))))  # fmt: skip
        elif role == "assistant":
            calls = []
            for call in message.get("tool_calls") or []:
                function = call["function"]
                tool_names[call["id"]] = function["name"]
                calls.append(dc.ConversationToolCalls(id=call["id"],
                    function=dc.ConversationToolCallsOfFunction(
                        name=function["name"], arguments=function["arguments"])))  # fmt: skip
            converted.append(dc.ConversationMessage(of_assistant=dc.ConversationMessageOfAssistant(
                content=_content(text), tool_calls=calls)))  # fmt: skip
        elif role == "tool":
            call_id = str(message["tool_call_id"])
            # Exactly one part: langchaingo refuses a tool message with more (openaillm.go:183).
            converted.append(dc.ConversationMessage(of_tool=dc.ConversationMessageOfTool(
                tool_id=call_id, name=tool_names.get(call_id, ""),
                content=[dc.ConversationMessageContent(text=text)])))  # fmt: skip
        else:
            raise UserError(f"the Dapr conversation route has no {role!r} message")
    return converted


def to_dapr_tools(tools: list[Tool]) -> list[dc.ConversationTools]:
    """The function tools with their JSON schemas (daprd passes `parameters` on unchanged)."""
    converted = []
    for tool in tools:
        function = Converter.tool_to_openai(tool)["function"]
        converted.append(dc.ConversationTools(function=dc.ConversationToolsFunction(
            name=function["name"], description=function.get("description") or None,
            parameters=dict(function.get("parameters") or {}))))  # fmt: skip
    return converted


def to_dapr_tool_choice(choice: str | None, has_tools: bool) -> str | None:
    """`auto`, `required`, `none`, or nothing when there are no tools (daprd refuses
    `required` without tools). A named function would reach the server as a bare string."""
    if not has_tools or choice is None:
        return None
    if choice not in TOOL_CHOICES:
        raise UserError(
            f"tool_choice {choice!r}: the Dapr conversation route carries only {TOOL_CHOICES}"
        )
    return choice


def inline_refs(schema: Any, definitions: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """`schema` with every local `$ref` replaced by its definition (the component resolves none).

    Raises:
        UserError: a reference that is not local, unknown, or nested deeper than 32 (recursive).
    """
    if depth > 32:
        raise UserError(
            "the output schema is recursive: the Dapr conversation route cannot carry it"
        )
    if isinstance(schema, list):
        return [inline_refs(item, definitions, depth) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    definitions = {**(definitions or {}), **schema.get("$defs", {})}
    ref = schema.get("$ref")
    if ref is not None:
        name = str(ref).removeprefix("#/$defs/")
        if name not in definitions:
            raise UserError(f"output schema reference {ref!r} cannot be inlined")
        merged = {**definitions[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return inline_refs(merged, definitions, depth + 1)
    return {
        key: inline_refs(value, definitions, depth + 1 if key == "properties" else depth)
        for key, value in schema.items()
        if key != "$defs"
    }


def _check_types(schema: Mapping[str, Any], path: str) -> None:
    if schema.get("type") not in SCHEMA_TYPES:
        # The component would log a warning and drop structured output altogether.
        raise UserError(f"output schema at {path or '/'} has no single type the Dapr route keeps")
    for name, prop in (schema.get("properties") or {}).items():
        _check_types(prop, f"{path}/{name}")
    if isinstance(schema.get("items"), Mapping):
        _check_types(schema["items"], f"{path}/items")


def to_response_format(output_schema: AgentOutputSchemaBase | None) -> Struct | None:
    """The output schema as the `response_format` daprd reads: the JSON schema itself, with the
    definition's name and strictness as top-level keys (converse.go, workarounds.go:530)."""
    if output_schema is None or output_schema.is_plain_text():
        return None
    schema = inline_refs(output_schema.json_schema())
    _check_types(schema, "")
    struct = Struct()
    struct.update(
        {**schema, "name": "final_output", "strict": output_schema.is_strict_json_schema()}
    )
    return struct


# --- response and errors ---------------------------------------------------------------------


def to_model_response(response: dc.ConversationResponseAlpha2) -> ModelResponse:
    """The first choice as the SDK's output items (as `OpenAIChatCompletionsModel` builds them)."""
    if not response.outputs or not response.outputs[0].choices:
        raise ModelBehaviorError("the Dapr conversation response has no choices")
    output = response.outputs[0]
    choice = output.choices[0]
    calls = [
        {
            "id": call.id or f"call_{uuid.uuid4().hex[:24]}",  # daprd omits an empty id
            "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments},
        }
        for call in choice.message.tool_calls
        if call.function is not None
    ]
    message = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": choice.message.content or None,
            "tool_calls": calls or None,
        }
    )
    if choice.finish_reason == "length" and not message.content and not message.tool_calls:
        raise ModelBehaviorError("the answer was cut at max tokens before any text or tool call")
    usage = output.usage
    return ModelResponse(
        output=Converter.message_to_output_items(message),
        usage=Usage(
            requests=1,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0,
        ),
        response_id=None,
    )


def classify_error(error: BaseException) -> ModelCallError:
    """A Dapr or gRPC failure as the label and retry decision the direct route would give it.

    daprd answers INTERNAL "failed conversing with component ..." with the component's error
    text (messages/predefined.go:143): the server's HTTP status (langchaingo: "API returned
    unexpected status code: 503: ..."), the resiliency timeout ("context deadline exceeded") or
    its open breaker ("circuit breaker is open").
    """
    if isinstance(error, TimeoutError):
        return ModelCallError("no answer from daprd in time", kind="timeout", retryable=True)
    code = error.code() if isinstance(error, grpc.RpcError) else None
    detail = (error.details() if isinstance(error, grpc.RpcError) else str(error)) or ""
    detail = str(detail)[:300]
    if code == grpc.StatusCode.UNAVAILABLE:
        return ModelCallError(detail, kind="connection", retryable=True)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "context deadline exceeded" in detail:
        return ModelCallError(detail, kind="timeout", retryable=True)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # No such component, or a request daprd refuses: trying again changes nothing.
        return ModelCallError(detail, kind="dapr_invalid_request", retryable=False)
    status = _STATUS.search(detail)
    if status is not None:
        value = int(status.group(1))
        return ModelCallError(detail, kind=f"http_{value}", retryable=value in RETRYABLE_STATUSES)
    if "circuit breaker is open" in detail:
        return ModelCallError(detail, kind="dapr_circuit_open", retryable=True)
    if any(s in detail for s in ("connection refused", "connection reset", "EOF", "no such host")):
        return ModelCallError(detail, kind="connection", retryable=True)
    if "empty response" in detail:  # model.go:85: langchaingokit calls it retriable
        return ModelCallError(detail, kind="empty_response", retryable=True)
    return ModelCallError(detail, kind="dapr_error", retryable=False)


# --- the model and its provider --------------------------------------------------------------


@dataclass(frozen=True)
class ModelRoute:
    """Where the calls go: the component's name, daprd's gRPC address, the call's deadline.

    `scrub_pii`: Dapr 1.18 replaces e-mail addresses, phone numbers, IPs, card numbers, ... with
    placeholders in every message sent to the model and in its text answer (not in tool-call
    arguments, not in any log). Off for the agent: contact details are what spam is made of, and
    a rewritten answer may no longer match its schema.
    """

    component: str
    address: str
    deadline_seconds: float
    scrub_pii: bool = False


class DaprConversationModel(Model):
    """One model call = one `converse_alpha2` on the route's component, metered like the direct
    route (`moderation_llm_calls_total{outcome}`, `moderation_llm_call_seconds`)."""

    def __init__(
        self, model: str, route: ModelRoute, client: ConversationClient, *, served_model: str
    ) -> None:
        self.model = model
        self.route = route
        self.client = client
        self.served_model = served_model

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],  # noqa: A002 - the SDK's parameter name
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any | None = None,
    ) -> ModelResponse:
        if handoffs or previous_response_id or conversation_id or prompt:
            raise UserError("the Dapr conversation route carries no handoffs or server state")
        messages: list[Mapping[str, Any]] = list(Converter.items_to_messages(input))
        if system_instructions:
            messages.insert(0, {"role": "system", "content": system_instructions})
        dapr_tools = to_dapr_tools(tools)
        tool_choice = to_dapr_tool_choice(
            _choice_name(model_settings.tool_choice), bool(dapr_tools)
        )
        response_format = to_response_format(output_schema)
        inputs = [dc.ConversationInputAlpha2(messages=to_dapr_messages(messages),
                                             scrub_pii=self.route.scrub_pii)]  # fmt: skip
        started = time.perf_counter()
        try:
            if self.model != self.served_model:
                raise ModelCallError(
                    f"the component {self.route.component!r} serves {self.served_model!r}, "
                    f"not {self.model!r}",
                    kind="model_not_served", retryable=False,
                )  # fmt: skip
            call = self.client.converse_alpha2(
                self.route.component, inputs, scrub_pii=self.route.scrub_pii,
                temperature=model_settings.temperature, tools=dapr_tools or None,
                tool_choice=tool_choice, response_format=response_format,
            )  # fmt: skip
            try:
                answer = await asyncio.wait_for(call, timeout=self.route.deadline_seconds)
            except (grpc.RpcError, TimeoutError) as error:
                raise classify_error(error) from error
            response = to_model_response(answer)
        except BaseException as error:
            LLM_CALLS.labels(outcome=error_kind(error)).inc()
            # Counts and labels only: the messages are users' posts.
            logger.info(
                "dapr conversation %s failed (%s) after %d messages",
                self.route.component, error_kind(error), len(messages),
            )  # fmt: skip
            raise
        finally:
            LLM_CALL_SECONDS.observe(time.perf_counter() - started)
        LLM_CALLS.labels(outcome="ok").inc()
        return response

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],  # noqa: A002 - the SDK's parameter name
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any | None = None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError(
            "Dapr 1.18's conversation API (alpha2) does not stream; the agent's workflow never "
            "asks for a stream (use get_response)"
        )


def _choice_name(choice: Any) -> str | None:
    return None if choice is None else str(choice)


class DaprConversationProvider(ModelProvider):
    """Every model name resolves to the route's component, whose model is fixed in its metadata
    (Dapr's conversation request has no model field): a call for another name fails without
    being made (`model_not_served`), so a verdict never names a model that did not produce it."""

    def __init__(self, route: ModelRoute, default_model: str) -> None:
        self.route = route
        self.default_model = default_model
        # A grpc.aio channel belongs to the loop it was made on; the workflow worker runs the
        # activities on a loop of its own.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def get_model(self, model_name: str | None) -> Model:
        name = model_name or self.default_model
        return DaprConversationModel(
            name, self.route, _LazyClient(self), served_model=self.default_model
        )

    def client(self) -> ConversationClient:
        """This loop's Dapr client (created on first use: it checks the sidecar answers)."""
        from dapr.aio.clients import DaprClient

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = DaprClient(self.route.address)
            self._clients[loop] = client
        return client


class _LazyClient:
    """Resolves the provider's client on the loop the call runs on."""

    def __init__(self, provider: DaprConversationProvider) -> None:
        self.provider = provider

    async def converse_alpha2(
        self, name: str, inputs: list[dc.ConversationInputAlpha2], **kwargs: Any
    ) -> dc.ConversationResponseAlpha2:
        return await self.provider.client().converse_alpha2(name, inputs, **kwargs)
