"""Error bodies that say what is wrong: `{"detail": "<message>", "errors": [{field, message}]}`.

FastAPI's validation errors are rewritten into that shape (malformed JSON becomes 400 with the
parser's message and position); 503 answers carry `Retry-After`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from moderation.services.api.security import AuthError

RETRY_AFTER_SECONDS = 5


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str = Field(examples=["text"])
    message: str = Field(examples=["must not be empty"])
    type: str | None = Field(default=None, description="pydantic's error type, when known")


class ErrorBody(BaseModel):
    """Every error answer of `/v1`; some add fields (a batch's per-post `results`)."""

    model_config = ConfigDict(extra="allow")

    detail: str = Field(description="what is wrong, as a sentence")
    errors: list[FieldError] | None = Field(default=None, description="per invalid field")


class ApiError(Exception):
    """An error answered with `status` and a message (and optionally per-field errors)."""

    def __init__(
        self, status: int, message: str, *, errors: Sequence[Mapping[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = [dict(error) for error in errors]


def json_error(
    status: int,
    message: str,
    *,
    errors: Sequence[Mapping[str, str]] = (),
    body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response: `detail` is always a readable sentence."""
    content: dict[str, Any] = {"detail": message}
    if errors:
        content["errors"] = [dict(error) for error in errors]
    if body:
        content.update(body)
    return JSONResponse(content, status_code=status, headers=dict(headers or {}))


def unavailable_response(message: str, *, body: Mapping[str, Any] | None = None) -> JSONResponse:
    """503 with `Retry-After`: nothing was accepted that is not listed as accepted."""
    return json_error(
        503,
        f"service unavailable: {message}; retry in {RETRY_AFTER_SECONDS}s",
        body=body,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _field_name(loc: Sequence[int | str], prefix: str | None) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    elif parts and parts[0] in ("header", "query", "path"):
        return f"{parts[0]} {'.'.join(str(p) for p in parts[1:])}"
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    if prefix:
        return f"{prefix}.{name}" if name and not name.startswith("[") else f"{prefix}{name}"
    return name or "body"


def _message(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        return "field required"
    if kind == "string_too_long" and isinstance(value, str):
        return f"too long: {len(value):,} characters; the limit is {ctx.get('max_length', 0):,}"
    if kind == "string_too_short" and isinstance(value, str):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"too short: {len(value):,} characters; at least {ctx.get('min_length')} required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a JSON object, got {_json_type(value)}"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind.endswith("_type"):
        return f"{message} (got {_json_type(value)})"
    return message


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def describe_errors(
    errors: Sequence[Mapping[str, Any]], *, prefix: str | None = None
) -> list[dict[str, str]]:
    """Pydantic/FastAPI errors as `[{field, message, type}]`."""
    return [
        {
            "field": _field_name(error.get("loc", ()), prefix),
            "message": _message(error),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]


def _position(document: Any, pos: int) -> str:
    if isinstance(document, bytes):
        document = document.decode(errors="replace")
    if not isinstance(document, str):
        return f"at character {pos}"
    line = document.count("\n", 0, pos) + 1
    column = pos - (document.rfind("\n", 0, pos) + 1) + 1
    return f"at line {line} column {column} (char {pos})"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            loc = error.get("loc", ())
            pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            return json_error(
                400,
                f"malformed JSON body: {reason} {_position(exc.body, pos)}",
                errors=[{"field": "body", "message": str(reason), "type": "json_invalid"}],
            )
    described = describe_errors(errors)
    if (
        len(described) == 1
        and described[0]["field"] == "body"
        and described[0]["type"] in ("missing",)
    ):
        return json_error(422, "request body is missing: send a JSON object", errors=described)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in described)
    return json_error(422, f"invalid request: {summary}", errors=described)


def api_error_response(exc: ApiError | AuthError) -> JSONResponse:
    """The response for a refused request (401 carries `WWW-Authenticate`, 429 `Retry-After`)."""
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return json_error(exc.status, exc.message, headers=headers)
    return json_error(exc.status, exc.message, errors=exc.errors)


def database_unavailable(state: Any, endpoint: str, exc: Exception) -> JSONResponse:
    """503 when the database cannot be reached (counted per endpoint)."""
    if state is not None:
        state.metrics.unavailable.labels(endpoint, "database").inc()
    return unavailable_response(f"the database is unreachable ({type(exc).__name__})")


DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError | AuthError)
    return api_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return json_error(exc.status_code, message, headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    endpoint = getattr(request.scope.get("route"), "path", "other")
    return database_unavailable(getattr(request.app.state, "api", None), endpoint, exc)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error a clear body."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AuthError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error_type in DATABASE_ERRORS:
        app.add_exception_handler(error_type, _database_error)
