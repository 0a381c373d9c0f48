"""A thin OpenAI-compatible proxy in front of the local llama.cpp server.

llama-cpp-python's server (chat format ``chatml-function-calling``) speaks Chat Completions but
has gaps that break the OpenAI Agents SDK. This proxy rewrites each chat request (pure functions
below, unit-tested) and passes every other path and every streamed response through unchanged:

- an assistant message with ``content: null`` (sent after tool calls) is rejected → ``""``;
- ``response_format: json_schema`` is rejected → ``json_object`` with the same ``schema``;
- the chat template does not render ``tool`` messages, so the model never sees a tool result →
  they become user messages naming the function;
- the tools are listed only inside a system message → one is added when there is none;
- ``tool_choice`` absent with tools means "auto" for OpenAI but "ignore the tools" here → "auto";
- ``tool_choice: "required"`` fails an assertion → the first tool, named (the server cannot
  force "any of these tools"; calling the first one still honours "a tool must be called");
- content given as a list of text parts is printed as a Python list → joined text;
- ``developer`` messages are rejected → ``system``; ``max_completion_tokens`` is ignored →
  ``max_tokens``;
- when "auto" lets the model answer with a message, the server's follow-up grammar cuts the
  message to nothing → the proxy asks again without tools, which also applies ``response_format``;
- the JSON grammar allows raw control characters inside strings, which strict parsers reject →
  the answer is re-encoded.

Fixed at launch instead: the chat template HTML-escaped message text (``"`` reached the model
as ``&#34;``); ``scripts/llm/serve_llama.py`` starts the server with autoescaping off. Not fixable
from here: "auto" with ``stream: true`` fails (function) or streams an empty message.

Run it with ``python -m moderation.llm.adapter`` (settings: ``MODERATION_LLM__*``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from moderation.settings import get_settings

logger = logging.getLogger(__name__)

JSONObject = dict[str, Any]

CHAT_PATH = "/v1/chat/completions"
# Generation on 2 CPU cores can be slow; the caller's own timeout is the one that matters.
UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


# --- request rewriting (pure) -------------------------------------------------------------------


def text_content(content: Any) -> Any:
    """Join a list of text parts into one string; leave anything else (images, None) as it is."""
    if isinstance(content, list) and all(
        isinstance(part, Mapping) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    return content


def tool_result_text(name: str | None, content: Any) -> str:
    """How a tool result is shown to the model, in the template's own `functions.<name>` terms."""
    text = text_content(content)
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return f"Result of functions.{name or 'unknown'}:\n{text}"


def rewrite_messages(messages: list[JSONObject], *, with_tools: bool) -> list[JSONObject]:
    """Messages in the shapes the server's validation and chat template handle."""
    tool_names: dict[str, str] = {}
    rewritten: list[JSONObject] = []
    for original in messages:
        message = dict(original)
        role = message.get("role")
        if role == "developer":
            message["role"] = role = "system"
        if "content" in message:
            message["content"] = text_content(message["content"])
        if role == "assistant":
            if message.get("content") is None:
                message["content"] = ""
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                if "id" in call and "name" in function:
                    tool_names[call["id"]] = function["name"]
        elif role == "tool":
            name = tool_names.get(str(message.get("tool_call_id")))
            message = {"role": "user", "content": tool_result_text(name, message.get("content"))}
        rewritten.append(message)
    if with_tools and not (rewritten and rewritten[0].get("role") == "system"):
        rewritten.insert(0, {"role": "system", "content": ""})
    return rewritten


def rewrite_response_format(response_format: Any) -> Any:
    """`json_schema` (OpenAI structured output) → `json_object` with the schema as grammar."""
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return response_format
    json_schema = response_format.get("json_schema") or {}
    schema = json_schema.get("schema") if isinstance(json_schema, Mapping) else None
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_object", "schema": schema}


def tool_name(tool: Any) -> str | None:
    if isinstance(tool, Mapping):
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def rewrite_tool_choice(tool_choice: Any, tools: list[Any]) -> Any:
    """`tool_choice` in the forms the server implements: "none", "auto" or a named tool."""
    if not tools:
        return tool_choice
    if tool_choice is None:
        return "auto"
    if tool_choice == "required":
        name = tool_name(tools[0])
        return {"type": "function", "function": {"name": name}} if name else "auto"
    return tool_choice


def rewrite_chat_request(body: Mapping[str, Any]) -> JSONObject:
    """The request to send upstream for a Chat Completions request (the input is not changed)."""
    request: JSONObject = copy.deepcopy(dict(body))
    tools = request.get("tools") or []
    if not tools:
        request.pop("tools", None)
    request["messages"] = rewrite_messages(request.get("messages") or [], with_tools=bool(tools))
    if "response_format" in request:
        request["response_format"] = rewrite_response_format(request["response_format"])
    if tools or "tool_choice" in request:
        request["tool_choice"] = rewrite_tool_choice(request.get("tool_choice"), tools)
    if "max_completion_tokens" in request:
        limit = request.pop("max_completion_tokens")
        request.setdefault("max_tokens", limit)
    return request


# --- response fix-up (pure) ---------------------------------------------------------------------


def needs_answer_without_tools(request: Mapping[str, Any], response: Any) -> bool:
    """True when "auto" chose a message, which the server returns empty (see module doc)."""
    if request.get("stream") or not request.get("tools") or request.get("tool_choice") != "auto":
        return False
    try:
        message = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return False
    return not message.get("tool_calls") and not message.get("content")


def repair_json_content(request: Mapping[str, Any], response: Any) -> bool:
    """Escape raw control characters in a JSON answer, in place; True if anything changed.

    The server's JSON grammar lets a string hold a raw newline, which strict parsers (pydantic,
    so the Agents SDK's `output_type`) reject; re-encoding the same value makes it valid.
    """
    response_format = request.get("response_format")
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_object":
        return False
    changed = False
    choices = response.get("choices") if isinstance(response, Mapping) else None
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        content: str = message["content"]
        try:
            json.loads(content)
            continue
        except ValueError:
            pass
        try:
            value = json.loads(content, strict=False)
        except ValueError:
            continue  # truncated or not JSON at all: leave it for the caller to report
        message["content"] = json.dumps(value, ensure_ascii=False)
        changed = True
    return changed


def answer_without_tools(request: Mapping[str, Any]) -> JSONObject:
    """The same request with the tools removed, so the model writes its message."""
    retry = {
        key: value
        for key, value in request.items()
        if key not in {"tools", "tool_choice", "parallel_tool_calls"}
    }
    retry["messages"] = [
        message
        for message in request.get("messages") or []
        # Only the placeholder system message added for the tool list.
        if message != {"role": "system", "content": ""}
    ]
    return retry


# --- proxy --------------------------------------------------------------------------------------


def _request_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}


def _response_headers(response: httpx.Response) -> dict[str, str]:
    # Bodies are passed on decoded, so their content-encoding no longer applies.
    dropped = HOP_BY_HOP | {"content-encoding"}
    return {k: v for k, v in response.headers.items() if k.lower() not in dropped}


async def _stream(client: httpx.AsyncClient, upstream_request: httpx.Request) -> StreamingResponse:
    upstream = await client.send(upstream_request, stream=True)
    return StreamingResponse(
        upstream.aiter_bytes(),
        status_code=upstream.status_code,
        headers=_response_headers(upstream),
        background=BackgroundTask(upstream.aclose),
    )


def create_app(upstream_url: str, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The proxy application in front of the llama.cpp server at `upstream_url`.

    Args:
        upstream_url: Base URL of the llama.cpp server, e.g. ``http://127.0.0.1:8012``.
        transport: Replaces the network (tests use ``httpx.MockTransport``).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # trust_env=False: a proxy configured in the environment must not see loopback traffic.
        async with httpx.AsyncClient(
            base_url=upstream_url, timeout=UPSTREAM_TIMEOUT, trust_env=False, transport=transport
        ) as client:
            app.state.upstream = client
            yield

    app = FastAPI(title="moderation LLM adapter", lifespan=lifespan)

    def upstream(request: Request) -> httpx.AsyncClient:
        client: httpx.AsyncClient = request.app.state.upstream
        return client

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        try:
            answer = await upstream(request).get("/v1/models", timeout=5.0)
            ready = answer.status_code == 200
        except httpx.HTTPError:
            ready = False
        return JSONResponse(
            {"status": "ready" if ready else "upstream not answering", "upstream": upstream_url},
            status_code=200 if ready else 503,
        )

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request) -> Response:
        client = upstream(request)
        headers = _request_headers(request)
        raw = await request.body()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # Not a JSON object: let the server produce its own error.
            return await _stream(
                client, client.build_request("POST", CHAT_PATH, content=raw, headers=headers)
            )
        sent = rewrite_chat_request(body)
        if sent.get("stream"):
            return await _stream(
                client, client.build_request("POST", CHAT_PATH, json=sent, headers=headers)
            )
        answer = await client.post(CHAT_PATH, json=sent, headers=headers)
        if answer.status_code != 200:
            return Response(
                answer.content,
                status_code=answer.status_code,
                headers=_response_headers(answer),
            )
        payload = answer.json()
        if needs_answer_without_tools(sent, payload):
            logger.info("auto tool choice picked a message; asking again without tools")
            sent = answer_without_tools(sent)
            answer = await client.post(CHAT_PATH, json=sent, headers=headers)
            payload = answer.json() if answer.status_code == 200 else None
        content = answer.content
        if payload is not None and repair_json_content(sent, payload):
            logger.info("re-encoded a JSON answer that held raw control characters")
            content = json.dumps(payload).encode()
        return Response(
            content,
            status_code=answer.status_code,
            headers=_response_headers(answer),
        )

    @app.api_route(
        "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    )
    async def passthrough(path: str, request: Request) -> StreamingResponse:
        client = upstream(request)
        upstream_request = client.build_request(
            request.method,
            "/" + path,
            params=request.url.query,
            headers=_request_headers(request),
            content=await request.body(),
        )
        return await _stream(client, upstream_request)

    return app


def main() -> None:
    """Serve the adapter on loopback at the configured port."""
    llm = get_settings().llm
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(f"http://127.0.0.1:{llm.server_port}")
    uvicorn.run(app, host="127.0.0.1", port=llm.adapter_port, log_level="info", loop="asyncio")


if __name__ == "__main__":
    main()
