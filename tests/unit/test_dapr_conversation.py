"""The Dapr Conversation route's conversions, with a fake `converse_alpha2` (no daprd): the
SDK's items to Dapr's messages and back, tools, structured output, errors. Against a real daprd:
`tests/integration/test_conversation_api.py`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import pytest
from agents import AgentOutputSchema, ModelSettings, UserError
from dapr.clients.grpc import conversation as dc
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage

from moderation.classifier.agent import AgentVerdict
from moderation.classifier.agent_steps import AgentSteps, RetryableModelError, parse_answer
from moderation.llm.dapr_conversation import (
    DaprConversationModel,
    DaprConversationProvider,
    ModelRoute,
    classify_error,
    inline_refs,
    to_dapr_messages,
    to_response_format,
)
from moderation.llm.provider import LLM_CALLS, ModelCallError, error_kind
from moderation.services.agent.app import model_provider
from moderation.services.agent.workflow import failure_label
from moderation.settings import Settings
from tests.scripted_llm import allow_json
from tests.unit.test_agent_workflow import uncertain_handoff
from tests.unit.test_containers import load_dapr_secrets_module

MODEL = "smollm2-135m-instruct"
ROUTE = ModelRoute(component="agent-llm", address="127.0.0.1:1", deadline_seconds=5)


def reply(
    content: str = "", calls: list[tuple[str, str, str]] | None = None, finish: str = "stop"
) -> dc.ConversationResponseAlpha2:
    """A daprd answer: text and/or tool calls (id, name, arguments)."""
    tool_calls = [
        dc.ConversationToolCalls(
            id=call_id, function=dc.ConversationToolCallsOfFunction(name=name, arguments=args)
        )
        for call_id, name, args in calls or []
    ]
    choice = dc.ConversationResultAlpha2Choices(
        finish_reason=finish,
        index=0,
        message=dc.ConversationResultAlpha2Message(content=content, tool_calls=tool_calls),
    )
    usage = dc.ConversationResultAlpha2CompletionUsage(
        completion_tokens=7, prompt_tokens=11, total_tokens=18
    )
    return dc.ConversationResponseAlpha2(
        context_id=None,
        outputs=[dc.ConversationResultAlpha2(choices=[choice], model=MODEL, usage=usage)],
    )


@dataclass
class FakeDapr:
    """Plays daprd: answers in order, records each request."""

    answers: list[dc.ConversationResponseAlpha2 | BaseException]
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def converse_alpha2(
        self, name: str, inputs: list[dc.ConversationInputAlpha2], **kwargs: Any
    ) -> dc.ConversationResponseAlpha2:
        self.requests.append({"name": name, "inputs": inputs, **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeProvider(DaprConversationProvider):
    def __init__(self, fake: FakeDapr) -> None:
        super().__init__(ROUTE, MODEL)
        self.fake = fake

    def client(self) -> Any:
        return self.fake


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def roles(messages: list[dc.ConversationMessage]) -> list[str]:
    return [
        next(role for role in ("system", "user", "assistant", "tool") if getattr(m, f"of_{role}"))
        for m in messages
    ]


def steps_with(fake: FakeDapr, settings: Settings | None = None) -> AgentSteps:
    return AgentSteps(settings or Settings(), FakeProvider(fake), None)


def test_a_tool_call_round_trip_keeps_its_id_name_and_arguments() -> None:
    fake = FakeDapr([
        reply(calls=[("call_7", "author_recent_verdicts", "{}")], finish="tool_calls"),
        reply(allow_json()),
    ])  # fmt: skip
    steps = steps_with(fake)
    conversation: list[dict[str, Any]] = [{"role": "user", "content": "Post p-1 ..."}]

    first = asyncio.run(steps.model_call(conversation, [], MODEL))

    assert first["tool_calls"] == [
        {"name": "author_recent_verdicts", "call_id": "call_7", "arguments": "{}"}
    ]
    sent = fake.requests[0]
    assert sent["name"] == "agent-llm"
    assert [t.function.name for t in sent["tools"]] == [
        "author_recent_verdicts",
        "similar_precedents",
    ]
    assert sent["tools"][0].function.parameters["type"] == "object"
    assert sent["tool_choice"] == "auto"
    assert sent["temperature"] == 0.0
    assert sent["scrub_pii"] is False
    assert roles(sent["inputs"][0].messages) == ["system", "user"]

    result = asyncio.run(steps.tool_call(uncertain_handoff(), first["tool_calls"][0]))
    second = asyncio.run(
        steps.model_call(
            [*conversation, *first["items"], result], ["author_recent_verdicts"], MODEL
        )
    )

    messages = fake.requests[1]["inputs"][0].messages
    assert roles(messages) == ["system", "user", "assistant", "tool"]
    (call,) = messages[2].of_assistant.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_7",
        "author_recent_verdicts",
        "{}",
    )
    assert messages[3].of_tool.tool_id == "call_7"
    assert messages[3].of_tool.name == "author_recent_verdicts"
    assert [c.text for c in messages[3].of_tool.content] == [result["output"]]
    assert [t.function.name for t in fake.requests[1]["tools"]] == ["similar_precedents"]
    assert isinstance(parse_answer(second["text"]), AgentVerdict)


def test_the_answer_maps_back_to_the_sdks_items_and_usage() -> None:
    model = DaprConversationModel(MODEL, ROUTE, FakeDapr([reply("hello")]), served_model=MODEL)
    response = asyncio.run(
        model.get_response(
            None, "hi", ModelSettings(), [], None, [], None,  # type: ignore[arg-type]
            previous_response_id=None, conversation_id=None, prompt=None,
        )
    )  # fmt: skip
    (message,) = response.output
    assert isinstance(message, ResponseOutputMessage)
    assert message.content[0].text == "hello"  # type: ignore[union-attr]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 7)

    fake = FakeDapr([reply(calls=[("", "similar_precedents", '{"k": 1}')])])
    model = DaprConversationModel(MODEL, ROUTE, fake, served_model=MODEL)
    response = asyncio.run(
        model.get_response(
            None, "hi", ModelSettings(), [], None, [], None,  # type: ignore[arg-type]
            previous_response_id=None, conversation_id=None, prompt=None,
        )
    )  # fmt: skip
    (call,) = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.call_id.startswith("call_")  # daprd may omit the id: one is made up
    assert call.arguments == '{"k": 1}'


def test_the_output_schema_goes_as_a_json_schema_without_refs() -> None:
    struct = to_response_format(AgentOutputSchema(AgentVerdict))
    schema = MessageToDict(struct)

    assert schema["name"] == "final_output" and schema["strict"] is True
    assert "$defs" not in schema and "$ref" not in str(schema)
    assert schema["properties"]["decision"] == {
        "enum": ["allow", "remove", "review"], "title": "Decision", "type": "string",
    }  # fmt: skip
    assert schema["properties"]["scores"]["type"] == "object"
    assert schema["properties"]["policy_sections"]["items"]["type"] == "string"


def test_a_schema_the_component_would_drop_is_refused_here() -> None:
    optional = {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {}]}}}

    class Optional_(AgentOutputSchema):
        def json_schema(self) -> dict[str, Any]:
            return optional

    with pytest.raises(UserError, match="/x"):
        to_response_format(Optional_(AgentVerdict))
    with pytest.raises(UserError, match="cannot be inlined"):
        inline_refs({"$ref": "#/$defs/Missing"})


def test_messages_of_each_role_and_text_parts() -> None:
    messages = to_dapr_messages([
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "plain answer"},
    ])  # fmt: skip
    assert roles(messages) == ["system", "user", "assistant"]
    assert messages[1].of_user is not None
    assert messages[1].of_user.content[0].text == "ab"
    with pytest.raises(UserError):
        to_dapr_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_a_named_tool_choice_is_refused_rather_than_sent_as_a_bare_string() -> None:
    fake = FakeDapr([])
    steps = steps_with(fake)
    steps.model_settings = ModelSettings(tool_choice="similar_precedents")
    result = asyncio.run(steps.model_call([{"role": "user", "content": "x"}], [], MODEL))
    assert result == {"error": "UserError"}  # the post goes to review, as on the direct route
    assert fake.requests == []


@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed"), "connection", True),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"), "timeout", True),
        (TimeoutError(), "timeout", True),
        (
            FakeRpcError(
                grpc.StatusCode.INTERNAL,
                "failed conversing with component agent-llm: API returned unexpected status "
                "code: 503: overloaded",
            ),
            "http_503",
            True,
        ),
        (
            FakeRpcError(
                grpc.StatusCode.INTERNAL,
                "failed conversing with component agent-llm: API returned unexpected status "
                "code: 400: context too long",
            ),
            "http_400",
            False,
        ),
        (
            FakeRpcError(
                grpc.StatusCode.INTERNAL,
                "failed conversing with component agent-llm: context deadline exceeded",
            ),
            "timeout",
            True,
        ),
        (
            FakeRpcError(
                grpc.StatusCode.INTERNAL,
                "failed conversing with component agent-llm: circuit breaker is open",
            ),
            "dapr_circuit_open",
            True,
        ),
        (
            FakeRpcError(
                grpc.StatusCode.INTERNAL,
                'failed conversing with component agent-llm: Post "http://x/v1/chat/completions"'
                ": dial tcp 127.0.0.1:8011: connect: connection refused",
            ),
            "connection",
            True,
        ),
        (
            FakeRpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "failed finding conversation component agent-llm",
            ),
            "dapr_invalid_request",
            False,
        ),
        (FakeRpcError(grpc.StatusCode.INTERNAL, "something else"), "dapr_error", False),
    ],
)
def test_dapr_errors_are_labelled_and_retried_as_on_the_direct_route(
    error: BaseException, kind: str, retryable: bool
) -> None:
    mapped = classify_error(error)
    assert (error_kind(mapped), mapped.retryable) == (kind, retryable)
    assert failure_label(f"{kind}: detail") == kind  # the workflow's fallback reason

    steps = steps_with(FakeDapr([error]))
    before = LLM_CALLS.labels(outcome=kind)._value.get()
    conversation = [{"role": "user", "content": "x"}]
    if retryable:
        with pytest.raises(RetryableModelError, match=f"^{kind}: "):
            asyncio.run(steps.model_call(conversation, [], MODEL))
    else:
        assert asyncio.run(steps.model_call(conversation, [], MODEL)) == {"error": kind}
    assert LLM_CALLS.labels(outcome=kind)._value.get() == before + 1


def test_a_model_the_component_does_not_serve_is_never_called() -> None:
    fake = FakeDapr([reply("x")])
    result = asyncio.run(
        steps_with(fake).model_call([{"role": "user", "content": "x"}], [], "moderation-lora-v2")
    )
    assert result == {"error": "model_not_served"}
    assert fake.requests == []


def test_a_silent_daprd_is_a_timeout() -> None:
    class Silent:
        async def converse_alpha2(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(10)

    route = ModelRoute("agent-llm", "127.0.0.1:1", deadline_seconds=0.05)
    model = DaprConversationModel(MODEL, route, Silent(), served_model=MODEL)
    with pytest.raises(ModelCallError) as caught:
        asyncio.run(
            model.get_response(
                None, "hi", ModelSettings(), [], None, [], None,  # type: ignore[arg-type]
                previous_response_id=None, conversation_id=None, prompt=None,
            )
        )  # fmt: skip
    assert (caught.value.kind, caught.value.retryable) == ("timeout", True)


def test_the_agent_service_picks_its_route_from_the_settings() -> None:
    settings = Settings()
    assert type(model_provider(settings)).__name__ == "ChatCompletionsProvider"
    dapr = settings.model_copy(
        update={
            "agent_service": settings.agent_service.model_copy(
                update={"llm_route": "dapr-conversation"}
            )
        }
    )
    provider = model_provider(dapr)
    assert isinstance(provider, DaprConversationProvider)
    assert provider.route.component == "agent-llm"
    assert provider.route.address == dapr.agent_service.dapr_grpc_endpoint
    assert provider.route.scrub_pii is False


def test_streaming_is_refused_with_a_reason() -> None:
    model = DaprConversationModel(MODEL, ROUTE, FakeDapr([]), served_model=MODEL)
    with pytest.raises(NotImplementedError, match="does not stream"):
        model.stream_response(
            None, "hi", ModelSettings(), [], None, [], None,  # type: ignore[arg-type]
            previous_response_id=None, conversation_id=None, prompt=None,
        )  # fmt: skip


def test_model_call_errors_keep_their_label_in_the_sdk_runner_retry_policy() -> None:
    error = ModelCallError("x", kind="http_503", retryable=True)
    assert error_kind(error) == "http_503"


def test_compose_gives_only_the_agents_daprd_the_llm_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_dapr_secrets_module()
    monkeypatch.setattr(module, "OUTPUT", tmp_path / "review.json")
    monkeypatch.setattr(module, "KAFKA_DIR", tmp_path / "kafka")
    monkeypatch.setattr(module, "DAPR_DB_PASSWORD_FILE", tmp_path / "dapr")
    monkeypatch.setattr(module, "AGENT_TOKENS_FILE", tmp_path / "agent.env")
    monkeypatch.setattr(module, "WORKER_TOKENS_FILE", tmp_path / "worker.env")
    files = {app: tmp_path / f"{app}.json" for app in ("review", "agent", "worker")}
    monkeypatch.setattr(module, "DAPRD_SECRETS", {app: (path, app) for app, path in files.items()})
    monkeypatch.setenv("MODERATION_DB__PASSWORD", "owner-pw")
    monkeypatch.setenv("MODERATION_LLM__API_KEY", "vllm-key")
    assert module.main() == 0
    documents = {app: json.loads(path.read_text()) for app, path in files.items()}
    assert documents["agent"]["llm-api-key"] == "vllm-key"
    assert "llm-api-key" not in documents["review"] and "llm-api-key" not in documents["worker"]
