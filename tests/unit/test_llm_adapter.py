"""The LLM adapter's request rewriting and response fix-ups, without a model or a network."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from moderation.llm.adapter import (
    answer_without_tools,
    create_app,
    needs_answer_without_tools,
    repair_json_content,
    rewrite_chat_request,
    rewrite_messages,
    rewrite_response_format,
    rewrite_tool_choice,
)

SCHEMA = {
    "type": "object",
    "properties": {"category": {"type": "string", "enum": ["safe", "spam"]}},
    "required": ["category"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "author_history",
        "description": "How often the author posted spam.",
        "parameters": {"type": "object", "properties": {"author_id": {"type": "string"}}},
    },
}
OTHER_TOOL = {"type": "function", "function": {"name": "transfer", "parameters": {}}}

# The second request of an Agents SDK run (after one tool call), as openai-agents 0.24 sends it.
SDK_REQUEST: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "messages": [
        {"role": "system", "content": "You moderate posts."},
        {"role": "user", "content": "Post by author a-17: buy cheap watches"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "author_history", "arguments": '{"author_id": "a-17"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 spam posts"},
    ],
    "tools": [TOOL],
    "max_tokens": 96,
    "temperature": 0.0,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "final_output", "strict": True, "schema": SCHEMA},
    },
}


def test_sdk_request_becomes_what_llama_cpp_accepts() -> None:
    original = copy.deepcopy(SDK_REQUEST)

    sent = rewrite_chat_request(SDK_REQUEST)

    assert SDK_REQUEST == original, "the caller's request must not be changed"
    assert sent["messages"] == [
        {"role": "system", "content": "You moderate posts."},
        {"role": "user", "content": "Post by author a-17: buy cheap watches"},
        {**SDK_REQUEST["messages"][2], "content": ""},
        {"role": "user", "content": "Result of functions.author_history:\n12 spam posts"},
    ]
    assert sent["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert sent["tool_choice"] == "auto"
    assert sent["tools"] == [TOOL]
    assert sent["max_tokens"] == 96


def test_null_assistant_content_becomes_empty_string() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "assistant"},
    ]

    assert [m["content"] for m in rewrite_messages(messages, with_tools=False)] == ["", ""]


def test_text_parts_are_joined_and_other_parts_left_alone() -> None:
    text_parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    messages = [{"role": "user", "content": text_parts}, {"role": "user", "content": image}]

    rewritten = rewrite_messages(messages, with_tools=False)

    assert rewritten[0]["content"] == "Hello, world"
    assert rewritten[1]["content"] == image


def test_tool_result_names_its_function_and_joins_text_parts() -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "42"}]},
        {"role": "tool", "tool_call_id": "unknown", "content": None},
    ]

    rewritten = rewrite_messages(messages, with_tools=False)

    assert rewritten[1] == {"role": "user", "content": "Result of functions.f:\n42"}
    assert rewritten[2] == {"role": "user", "content": "Result of functions.unknown:\n"}


def test_system_message_added_only_when_tools_need_one() -> None:
    user = [{"role": "user", "content": "hi"}]
    with_system = [{"role": "system", "content": "rules"}, *user]

    assert rewrite_messages(user, with_tools=True)[0] == {"role": "system", "content": ""}
    assert rewrite_messages(user, with_tools=False) == user
    assert rewrite_messages(with_system, with_tools=True) == with_system


def test_developer_role_becomes_system() -> None:
    messages = [{"role": "developer", "content": "rules"}]

    assert rewrite_messages(messages, with_tools=False) == [{"role": "system", "content": "rules"}]


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
            {"type": "json_object", "schema": SCHEMA},
        ),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "json_object"}),
        ({"type": "json_object"}, {"type": "json_object"}),
        ({"type": "text"}, {"type": "text"}),
        (None, None),
    ],
)
def test_response_format(response_format: Any, expected: Any) -> None:
    assert rewrite_response_format(response_format) == expected


@pytest.mark.parametrize(
    ("tool_choice", "tools", "expected"),
    [
        (None, [TOOL], "auto"),
        ("required", [TOOL], {"type": "function", "function": {"name": "author_history"}}),
        (
            "required",
            [TOOL, OTHER_TOOL],
            {"type": "function", "function": {"name": "author_history"}},
        ),
        ("none", [TOOL], "none"),
        ("auto", [TOOL], "auto"),
        (
            {"type": "function", "function": {"name": "transfer"}},
            [TOOL, OTHER_TOOL],
            {"type": "function", "function": {"name": "transfer"}},
        ),
        ("required", [], "required"),
    ],
)
def test_tool_choice(tool_choice: Any, tools: list[Any], expected: Any) -> None:
    assert rewrite_tool_choice(tool_choice, tools) == expected


def test_request_without_tools_gets_no_tool_choice() -> None:
    sent = rewrite_chat_request({"messages": [{"role": "user", "content": "hi"}], "tools": []})

    assert "tool_choice" not in sent
    assert "tools" not in sent


def test_max_completion_tokens_becomes_max_tokens() -> None:
    messages = [{"role": "user", "content": "hi"}]

    assert (
        rewrite_chat_request({"messages": messages, "max_completion_tokens": 8})["max_tokens"] == 8
    )
    both = rewrite_chat_request({"messages": messages, "max_completion_tokens": 8, "max_tokens": 4})
    assert both["max_tokens"] == 4


def _completion(message: dict[str, Any]) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


EMPTY_MESSAGE = _completion({"role": "assistant", "content": ""})
TOOL_CALL = _completion(
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
)


def test_empty_message_under_auto_is_asked_again_without_tools() -> None:
    sent = rewrite_chat_request({"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]})

    assert needs_answer_without_tools(sent, EMPTY_MESSAGE)
    assert not needs_answer_without_tools(sent, TOOL_CALL)
    assert not needs_answer_without_tools({**sent, "stream": True}, EMPTY_MESSAGE)
    assert not needs_answer_without_tools({**sent, "tool_choice": "none"}, EMPTY_MESSAGE)
    assert not needs_answer_without_tools(sent, {"error": "x"})

    retry = answer_without_tools({**sent, "parallel_tool_calls": False})
    assert retry == {"messages": [{"role": "user", "content": "hi"}]}


def test_json_answer_with_raw_newline_is_re_encoded() -> None:
    request = {"response_format": {"type": "json_object", "schema": SCHEMA}}
    response = _completion({"role": "assistant", "content": '{"reason": "a\nb"}'})

    assert repair_json_content(request, response)
    assert json.loads(response["choices"][0]["message"]["content"]) == {"reason": "a\nb"}


@pytest.mark.parametrize("content", ['{"reason": "ok"}', '{"reason": "trunc', None])
def test_valid_or_truncated_json_answer_is_left_alone(content: str | None) -> None:
    request = {"response_format": {"type": "json_object"}}
    response = _completion({"role": "assistant", "content": content})

    assert not repair_json_content(request, response)
    assert response["choices"][0]["message"]["content"] == content


def test_answer_is_not_touched_without_a_json_response_format() -> None:
    response = _completion({"role": "assistant", "content": '{"reason": "a\nb"}'})

    assert not repair_json_content({}, response)


# --- the proxy, with the upstream replaced by a scripted transport ------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _proxy(handler: Handler) -> TestClient:
    app = create_app("http://upstream.invalid", transport=httpx.MockTransport(handler))
    return TestClient(app)


def test_proxy_sends_the_rewritten_request_and_asks_again_for_an_empty_message() -> None:
    seen: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if "tools" in body:
            return httpx.Response(200, json=EMPTY_MESSAGE)
        return httpx.Response(200, json=_completion({"role": "assistant", "content": "Hello"}))

    with _proxy(upstream) as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]},
        )

    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Hello"
    assert [body.get("tool_choice") for body in seen] == ["auto", None]


def test_proxy_passes_errors_other_paths_and_streams_through() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if json.loads(request.content).get("stream"):
            return httpx.Response(
                200,
                content=b"data: {}\n\ndata: [DONE]\n\n",
                headers={"content-type": "text/event-stream"},
            )
        return httpx.Response(400, json={"error": "bad"})

    with _proxy(upstream) as client:
        assert client.get("/v1/models").json() == {"data": [{"id": "m"}]}
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        bad = client.post("/v1/chat/completions", json={"messages": []})
        streamed = client.post("/v1/chat/completions", json={"messages": [], "stream": True})

    assert (bad.status_code, bad.json()) == (400, {"error": "bad"})
    assert streamed.text == "data: {}\n\ndata: [DONE]\n\n"
    assert streamed.headers["content-type"].startswith("text/event-stream")


def test_readyz_reports_an_upstream_that_does_not_answer() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _proxy(upstream) as client:
        assert client.get("/readyz").status_code == 503
