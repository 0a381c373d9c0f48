"""A scripted OpenAI-compatible chat server for the agent service's crash tests (tests only).

A real HTTP server the agent service calls like vLLM: each post's first turn asks for the
author tool, its second answers with a valid verdict, after `delay` seconds each. It logs every
chat request (post, turn, when it started and when its answer was ready), so a test can show
which calls were made again after a crash. The real local LLM (SmolLM2) is too slow and too
erratic to count calls on; it is used by `test_agent_cascade.py`.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from tests.integration.llm_faults import free_port
from tests.scripted_llm import allow_json

POST_ID = re.compile(r"Post (\S+) by author")


@dataclass
class Call:
    post_id: str
    turn: int
    started: float  # time.monotonic()
    finished: float | None = None


class ScriptedChatServer:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.port = free_port()
        self.calls: list[Call] = []
        self.bodies: list[dict[str, Any]] = []  # every request as received (image parts too)
        self._lock = threading.Lock()
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="scripted-chat-server")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the scripted chat server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict[str, Any]:
            body = await request.json()
            messages = body["messages"]
            text = " ".join(str(m.get("content") or "") for m in messages if m["role"] == "user")
            found = POST_ID.search(text)
            turn = 1 + sum(1 for m in messages if m["role"] == "tool")
            call = Call(found.group(1) if found else "?", turn, time.monotonic())
            with self._lock:
                self.calls.append(call)
                self.bodies.append(body)
            await asyncio.sleep(self.delay)
            call.finished = time.monotonic()
            return _completion(body.get("model", "scripted"), turn)

        return app


def _completion(model: str, turn: int) -> dict[str, Any]:
    if turn == 1:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {"name": "author_recent_verdicts", "arguments": "{}"},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": allow_json()}
        finish = "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }
