"""`POST /v1/posts` served straight from ASGI: the hot path of the ingest API.

Measured with uvicorn (h11, one worker) on the 2-core target, FastAPI's request machinery
(exception middleware, routing, dependency solving, the request object) cost about as much CPU
as the rest of the request together, Kafka included. This middleware answers
`POST /v1/posts` before it: it authenticates with the same `deps.authenticate`, runs the same
`posts.accept_post` as the FastAPI route (which remains the documented operation and the code
path when the lane is absent), and renders errors with the same bodies. Every other request
goes to FastAPI untouched.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from moderation.services.api.deps import ApiState, authenticate
from moderation.services.api.routes.errors import (
    DATABASE_ERRORS,
    ApiError,
    api_error_response,
    database_unavailable,
)
from moderation.services.api.routes.posts import accept_post
from moderation.services.api.security import AuthError
from moderation.services.api.security import Scope as KeyScope

SUBMIT_PATH = "/v1/posts"


class SubmitFastLane:
    """ASGI middleware that serves `POST /v1/posts` without FastAPI's per-request layers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SUBMIT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state: ApiState = scope["app"].state.api
        # Servers lower-case header names (ASGI spec); a dict makes the few lookups O(1).
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        response: Response
        try:
            client = scope.get("client")
            address = client[0] if client else None
            principal = await authenticate(state, headers, KeyScope.SUBMIT, client=address)
            body = await _read_body(receive)
            response = await accept_post(state, principal, headers, body)
        except (ApiError, AuthError) as error:
            response = api_error_response(error)
        except ClientDisconnect:
            return
        except DATABASE_ERRORS as error:
            response = database_unavailable(state, SUBMIT_PATH, error)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
