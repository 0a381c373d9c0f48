"""The agent's model calls through daprd's Conversation API (`conversation.openai`, alpha2).

A daprd of this test's own (free ports, no placement or scheduler, app id `agent-service` so the
scoped component loads) reads the project's own `components/conversation-llm.yaml`,
`resiliency.yaml` and `secretstore-localfile.yaml`, with the values the stack gives the agent's
daprd (endpoint and model through envRef, the key from the secrets file). It talks to a
recording scripted server (what reaches the server, exactly) and to the real local LLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from agents import AgentOutputSchema, Model, ModelResponse, ModelSettings, ModelTracing, Tool
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from moderation.classifier.agent import AgentVerdict, CategoryScores
from moderation.classifier.agent_steps import (
    AgentSteps,
    RetryableModelError,
    first_message,
    parse_answer,
)
from moderation.devtools.stack.dapr import COMPONENTS_DIR, DaprRuntime, stack_tokens
from moderation.devtools.stack.llm import LLMServer
from moderation.events import AgentRequested
from moderation.llm.dapr_conversation import DaprConversationProvider, ModelRoute
from moderation.llm.provider import ModelCallError
from moderation.settings import Settings
from tests.integration.llm_faults import free_port
from tests.scripted_llm import allow_json
from tests.unit.test_agent_workflow import uncertain_handoff

pytestmark = pytest.mark.integration

COMPONENT = "agent-llm"
RESOURCES = ("conversation-llm.yaml", "resiliency.yaml", "secretstore-localfile.yaml")
SCRIPTED_MODEL = "scripted-model"


# --- a recording OpenAI-compatible server ------------------------------------------------------


@dataclass
class RecordingServer:
    """Answers each chat request with the next scripted reply (a message dict, or an int: that
    HTTP status) and keeps every request body."""

    replies: list[dict[str, Any] | int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="recording-chat-server")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the recording server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def script(self, *replies: dict[str, Any] | int) -> int:
        """Queue `replies`; returns how many requests were seen so far."""
        self.replies[:] = list(replies)
        return len(self.bodies)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.bodies.append(body)
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            if isinstance(reply, int):
                return JSONResponse({"error": {"message": f"scripted {reply}"}}, reply)
            finish = "tool_calls" if reply.get("tool_calls") else "stop"
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }

        return app


def tool_call(name: str, arguments: str = "{}", call_id: str = "call_scripted1") -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ],
    }


def answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


# --- a daprd of the test's own -----------------------------------------------------------------


@dataclass(frozen=True)
class Sidecar:
    grpc_address: str
    http_port: int
    log: Path


@pytest.fixture(scope="module")
def start_daprd(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str, str], Sidecar]]:
    """Starts a daprd whose `agent-llm` component calls `endpoint` as `model`."""
    daprd = DaprRuntime(settings).binaries()["daprd"]
    if not daprd.is_file():
        pytest.skip("no daprd built (moderation stack up builds it)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(endpoint: str, model: str) -> Sidecar:
        directory = tmp_path_factory.mktemp("conversation-daprd")
        resources = directory / "components"
        resources.mkdir()
        for name in RESOURCES:
            shutil.copy(COMPONENTS_DIR / name, resources / name)
        secrets = directory / "secrets.json"
        secrets.write_text(json.dumps({"llm-api-key": settings.llm.api_key.get_secret_value()}))
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        log = directory / "daprd.log"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "MODERATION_LLM_BASE_URL": endpoint,
            "MODERATION_LLM_MODEL": model,
            "MODERATION_DAPR_SECRETS_FILE": str(secrets),
            "DAPR_API_TOKEN": stack_tokens(settings)["DAPR_API_TOKEN"],
        }
        argv = [
            str(daprd), "--app-id", "agent-service", "--mode", "standalone",
            "--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port),
            "--dapr-listen-addresses", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--resources-path", str(resources), "--log-level", "info",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        processes.append(process)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                url = f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound"
                if httpx.get(url, timeout=1).status_code == 204:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert "Component loaded: agent-llm (conversation.openai/v1)" in log.read_text()
        return Sidecar(f"127.0.0.1:{grpc_port}", http_port, log)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(autouse=True)
def sdk_health_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's client checks a daprd's health on DAPR_HTTP_PORT when created (3500 by default).
    from dapr.conf import settings as sdk_settings

    monkeypatch.setattr(sdk_settings, "DAPR_HTTP_ENDPOINT", None, raising=False)


def use_health_port(monkeypatch: pytest.MonkeyPatch, sidecar: Sidecar) -> None:
    from dapr.conf import settings as sdk_settings

    monkeypatch.setattr(sdk_settings, "DAPR_HTTP_PORT", sidecar.http_port, raising=False)


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scripted_sidecar(
    recorder: RecordingServer, start_daprd: Callable[[str, str], Sidecar]
) -> Sidecar:
    return start_daprd(recorder.base_url, SCRIPTED_MODEL)


def provider_for(
    sidecar: Sidecar, model: str, *, scrub_pii: bool = False
) -> DaprConversationProvider:
    route = ModelRoute(COMPONENT, sidecar.grpc_address, deadline_seconds=150, scrub_pii=scrub_pii)
    return DaprConversationProvider(route, model)


def request_for(text: str) -> AgentRequested:
    return uncertain_handoff(text)


async def ask(model: Model, text: str, tools: list[Tool] | None = None) -> ModelResponse:
    """One call with the SDK's full signature (as `AgentSteps.model_call` makes it)."""
    return await model.get_response(
        "sys", text, ModelSettings(tool_choice="auto" if tools else None), tools or [], None, [],
        ModelTracing.DISABLED, previous_response_id=None, conversation_id=None, prompt=None,
    )  # fmt: skip


def text_of(response: ModelResponse) -> str:
    return "".join(
        part.text
        for item in response.output
        if isinstance(item, ResponseOutputMessage)
        for part in item.content
        if isinstance(part, ResponseOutputText)
    )


# --- the tests ---------------------------------------------------------------------------------


async def test_a_tool_call_goes_out_and_its_result_comes_back_then_the_answer_parses(
    settings: Settings,
    recorder: RecordingServer,
    scripted_sidecar: Sidecar,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_health_port(monkeypatch, scripted_sidecar)
    steps = AgentSteps(settings, provider_for(scripted_sidecar, SCRIPTED_MODEL), None)
    seen = recorder.script(
        tool_call("author_recent_verdicts", "{}", call_id="call_abc123"), answer(allow_json())
    )
    conversation: list[dict[str, Any]] = [{"role": "user", "content": "Post p-1 by author: hi"}]

    first = await steps.model_call(conversation, [], SCRIPTED_MODEL)

    assert first["tool_calls"] == [
        {"name": "author_recent_verdicts", "call_id": "call_abc123", "arguments": "{}"}
    ]
    request = recorder.bodies[seen]
    # What daprd's component sent: the component's model, both tools with their JSON schemas,
    # the tool choice, temperature, and the output schema as json_schema (inlined: no $ref).
    assert request["model"] == SCRIPTED_MODEL
    assert [t["function"]["name"] for t in request["tools"]] == [
        "author_recent_verdicts",
        "similar_precedents",
    ]
    assert request["tools"][0]["function"]["parameters"]["type"] == "object"
    assert request["tool_choice"] == settings.agent.tool_choice
    assert request["temperature"] == settings.agent.temperature
    schema = request["response_format"]["json_schema"]["schema"]
    assert request["response_format"]["type"] == "json_schema"
    assert schema["properties"]["decision"]["enum"] == ["allow", "remove", "review"]
    assert set(schema["properties"]["scores"]["properties"]) == {
        "safe", "spam", "harassment", "hate", "violence", "sexual", "sexual_minors",
        "self_harm", "illicit",
    }  # fmt: skip
    assert "$ref" not in json.dumps(schema)
    # What Dapr 1.18.2 does not carry (README): max_tokens, bounds, parallel_tool_calls.
    assert "max_tokens" not in request and "max_completion_tokens" not in request
    assert "maximum" not in json.dumps(schema) and "maxLength" not in json.dumps(schema)
    assert "parallel_tool_calls" not in request
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert request["messages"][1]["content"] == "Post p-1 by author: hi"

    call = first["tool_calls"][0]
    result = await steps.tool_call(request_for("hi"), call)
    conversation = [*conversation, *first["items"], result]
    second = await steps.model_call(conversation, ["author_recent_verdicts"], SCRIPTED_MODEL)

    follow_up = recorder.bodies[seen + 1]
    assert [m["role"] for m in follow_up["messages"]] == ["system", "user", "assistant", "tool"]
    assistant, tool = follow_up["messages"][2], follow_up["messages"][3]
    assert assistant["tool_calls"] == [
        {
            "id": "call_abc123",
            "type": "function",
            "function": {"name": "author_recent_verdicts", "arguments": "{}"},
        }
    ]
    assert tool["tool_call_id"] == "call_abc123"
    assert tool["content"] == result["output"]
    # The tool already called is offered no more.
    assert [t["function"]["name"] for t in follow_up["tools"]] == ["similar_precedents"]
    assert second["tool_calls"] == []
    verdict = parse_answer(second["text"])
    assert isinstance(verdict, AgentVerdict)
    assert verdict.decision.value == "allow"


async def test_failures_are_labelled_as_on_the_direct_route_under_daprs_resiliency(
    recorder: RecordingServer, scripted_sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_health_port(monkeypatch, scripted_sidecar)
    model = provider_for(scripted_sidecar, SCRIPTED_MODEL).get_model(None)

    async def failure(on: Model = model) -> ModelCallError:
        with pytest.raises(ModelCallError) as caught:
            await ask(on, "hi")
        return caught.value

    # A 503: daprd's retry policy (llmRetry) tries once more, then the workflow may retry.
    seen = recorder.script(503)
    error = await failure()
    assert (error.kind, error.retryable) == ("http_503", True)
    assert len(recorder.bodies) - seen == 2

    # A 400: no use trying again (daprd's policy still does, once: it cannot tell).
    seen = recorder.script(400)
    error = await failure()
    assert (error.kind, error.retryable) == ("http_400", False)
    assert len(recorder.bodies) - seen == 2

    # The fifth failure in a row opens daprd's breaker (llmBreaker): calls then fail at once,
    # without reaching the server, until it half-opens.
    seen = recorder.script(500)
    error = await failure()
    assert (error.kind, error.retryable) == ("dapr_circuit_open", True)
    error = await failure()
    assert error.kind == "dapr_circuit_open"
    assert len(recorder.bodies) - seen == 1

    # A component this daprd does not have.
    missing = DaprConversationProvider(
        ModelRoute("no-such-llm", scripted_sidecar.grpc_address, deadline_seconds=30),
        SCRIPTED_MODEL,
    ).get_model(None)
    error = await failure(missing)
    assert (error.kind, error.retryable) == ("dapr_invalid_request", False)


PII = "write to jane.doe@example.com or call +1 415 555 0100"


async def test_scrub_pii_rewrites_what_the_model_sees_and_says_not_the_tool_arguments(
    settings: Settings,
    start_daprd: Callable[[str, str], Sidecar],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A daprd of its own: the breaker of the other test's daprd is open.
    server = RecordingServer()
    server.start()
    try:
        sidecar = start_daprd(server.base_url, SCRIPTED_MODEL)
        use_health_port(monkeypatch, sidecar)
        steps = AgentSteps(settings, provider_for(sidecar, SCRIPTED_MODEL), None)
        tools: list[Tool] = list(steps.tools.values())

        # Off (the agent's route): the post reaches the model as written.
        plain = provider_for(sidecar, SCRIPTED_MODEL).get_model(None)
        server.script(answer(f"reply to {PII}"))
        response = await ask(plain, PII, tools)
        assert server.bodies[-1]["messages"][1]["content"] == PII
        assert PII in text_of(response)

        # On: e-mail and phone replaced in what is sent and in the text answer; a tool call's
        # arguments come back untouched (daprd scrubs message content only).
        scrubbed = provider_for(sidecar, SCRIPTED_MODEL, scrub_pii=True).get_model(None)
        server.script(answer(f"reply to {PII}"))
        response = await ask(scrubbed, PII, tools)
        sent = server.bodies[-1]["messages"][1]["content"]
        assert "jane.doe@example.com" not in sent and "<EMAIL_ADDRESS>" in sent
        assert "415 555 0100" not in sent and "<PHONE_NUMBER>" in sent
        assert "jane.doe@example.com" not in text_of(response)
        assert "<EMAIL_ADDRESS>" in text_of(response)

        server.script(tool_call("similar_precedents", json.dumps({"note": PII})))
        response = await ask(scrubbed, PII, tools)
        (call,) = response.output
        assert isinstance(call, ResponseFunctionToolCall)
        assert PII in call.arguments

        # Neither daprd's log nor ours holds the text.
        server.script(500)
        with caplog.at_level("DEBUG", logger="moderation.llm.dapr_conversation"):
            with pytest.raises(ModelCallError):
                await ask(plain, PII, tools)
        assert "jane.doe" not in caplog.text and "dapr conversation" in caplog.text
        assert "jane.doe" not in sidecar.log.read_text()
    finally:
        server.stop()


@pytest.mark.timeout(900)
async def test_the_real_local_llm_through_daprd_calls_a_tool_then_answers_in_schema(
    settings: Settings,
    llm: LLMServer,
    start_daprd: Callable[[str, str], Sidecar],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sidecar = start_daprd(settings.llm.base_url, settings.llm.model)
    use_health_port(monkeypatch, sidecar)
    # The local server needs "required" for SmolLM2 to use its tools at all (README).
    local = settings.model_copy(
        update={"agent": settings.agent.model_copy(update={"tool_choice": "required"})}
    )
    steps = AgentSteps(local, provider_for(sidecar, settings.llm.model), None)
    request = request_for("Buy cheap watches now at spam dot example, best prices!!!")
    conversation: list[dict[str, Any]] = [{"role": "user", "content": first_message(request)}]
    called: list[str] = []
    text = ""
    for _ in range(local.agent.max_turns):
        turn = await steps.model_call(conversation, called, settings.llm.model)
        assert "error" not in turn, turn
        conversation = [*conversation, *turn["items"]]
        if not turn["tool_calls"]:
            text = turn["text"]
            break
        for call in turn["tool_calls"]:
            assert call["name"] in steps.tools
            json.loads(call["arguments"])
            conversation.append(await steps.tool_call(request, call))
            called.append(call["name"])
    print(f"\ntools called: {called}; answer: {text[:300]}")  # noqa: T201
    assert called, "the model called a tool through daprd"
    assert conversation[1]["type"] == "function_call"
    assert conversation[2]["type"] == "function_call_output"
    # The grammar built from the schema daprd forwards keeps the keys and enums; the bounds it
    # drops (0-100, at most 3 sections, 200 characters) are left to `parse_answer` and repair.
    document = json.loads(text)
    assert set(document) == set(AgentOutputSchema(AgentVerdict).json_schema()["required"])
    assert document["decision"] in ("allow", "remove", "review")
    assert set(document["scores"]) == set(CategoryScores.model_fields)


async def test_a_daprd_that_does_not_answer_is_a_retryable_failure(
    settings: Settings, scripted_sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_health_port(monkeypatch, scripted_sidecar)
    route = ModelRoute(COMPONENT, f"127.0.0.1:{free_port()}", deadline_seconds=5)
    steps = AgentSteps(settings, DaprConversationProvider(route, SCRIPTED_MODEL), None)
    with pytest.raises(RetryableModelError, match="^connection|^timeout"):
        await steps.model_call([{"role": "user", "content": "hi"}], [], SCRIPTED_MODEL)
    await asyncio.sleep(0)
