"""A fault-injecting HTTP proxy in front of the real local LLM endpoint (tests only).

Passes requests through to the real server, or answers them itself with the failure a test
switches on: HTTP 500, HTTP 429 (with Retry-After), or a 200 whose message is JSON that does not
match the verdict schema. When the real server is gone it answers 502, as a reverse proxy does.
It counts the chat requests it saw, so a test can check the retries.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

Mode = Literal["pass", "500", "429", "garbage"]

GARBAGE_CONTENT = '{"decision": "allow", "scores": "all fine", "rationale": 7}'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.mode: Mode = "pass"
        self.chat_requests = 0
        self._lock = threading.Lock()
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="llm-fault-proxy")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set_mode(self, mode: Mode) -> int:
        """Switch the failure mode; returns the chat requests seen so far."""
        with self._lock:
            self.mode = mode
            return self.chat_requests

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the LLM fault proxy did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _app(self) -> FastAPI:
        app = FastAPI()
        client = httpx.AsyncClient(trust_env=False, timeout=600)

        @app.api_route("/v1/{path:path}", methods=["GET", "POST"])
        async def proxy(path: str, request: Request) -> Response:
            body = await request.body()
            if path == "chat/completions":
                with self._lock:
                    self.chat_requests += 1
                    mode = self.mode
                if mode == "500":
                    return JSONResponse({"error": {"message": "injected 500"}}, status_code=500)
                if mode == "429":
                    return JSONResponse(
                        {"error": {"message": "injected 429"}},
                        status_code=429,
                        headers={"retry-after": "0.2"},
                    )
                if mode == "garbage":
                    return JSONResponse(_completion(GARBAGE_CONTENT))
            try:
                upstream = await client.request(
                    request.method,
                    f"{self.upstream}/{path}",
                    content=body,
                    headers={
                        "content-type": request.headers.get("content-type", "application/json")
                    },
                )
            except httpx.TransportError as error:
                # What a reverse proxy (an ingress, nginx) answers for a server that is gone.
                return JSONResponse({"error": {"message": f"upstream: {error}"}}, status_code=502)
            return Response(
                upstream.content,
                status_code=upstream.status_code,
                media_type=upstream.headers.get("content-type"),
            )

        return app


def _completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-injected",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "injected",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
