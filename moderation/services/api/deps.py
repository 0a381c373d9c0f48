"""FastAPI dependencies as `Annotated` aliases, shared by every route."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.services.api.images import ImageIntake
from moderation.services.api.limits import ApiLimits
from moderation.services.api.metrics import ApiMetrics
from moderation.services.api.publisher import Publisher
from moderation.services.api.security import (
    AuthError,
    KeyCache,
    Principal,
    Scope,
    lookup_key,
    presented_key,
)
from moderation.services.api.workflows import ReviewWorkflows
from moderation.services.sidecar.history import WorkflowHistory
from moderation.settings import Settings

if TYPE_CHECKING:
    from moderation.precedents import DecisionLog


@dataclass
class ApiState:
    """What the lifespan creates once per process and routes share."""

    settings: Settings
    engine: Engine
    publisher: Publisher
    metrics: ApiMetrics
    workflows: ReviewWorkflows
    limits: ApiLimits
    # The agent and review services' workflow instances, read from their daprds.
    workflow_history: WorkflowHistory
    # A post's images: decoders and the object store, started on the first image.
    images: ImageIntake
    key_cache: KeyCache = field(default_factory=KeyCache)
    # Past human decisions for precedents; created on first use (the ranking imports sklearn).
    decision_log: DecisionLog | None = None


async def get_state(request: Request) -> ApiState:
    """The app's shared resources (set by the lifespan).

    Every dependency on the hot path is `async def`: FastAPI runs plain `def` dependencies in
    its thread pool, which costs more than the whole request.
    """
    state: ApiState = request.app.state.api
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A database session for one request (sync: FastAPI runs it in its thread pool)."""
    with Session(state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def authenticate(
    state: ApiState,
    headers: Mapping[str, str],
    scope: Scope | None = None,
    *,
    client: str | None = None,
) -> Principal:
    """The API key in `headers` (`Authorization: Bearer` or `X-API-Key`), cached briefly, with
    the request charged to the key's rate limit (`limits.py`): one post for `submit` requests
    (a batch charges its other posts itself), one request otherwise.

    Shared by the dependencies below and by the submit fast lane (`routes/submit_lane.py`).
    `client` is the caller's address, whose failed key checks are limited.

    Raises:
        AuthError: 401 when the key is missing, unknown or revoked; 403 when it lacks `scope`;
            429 over the key's rate limit, or for an unverified key from a client that failed
            too many key checks.
    """
    key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
    limits = state.limits
    address = client or "unknown"
    prefix = crud.api_key_prefix(key)
    cache = state.key_cache
    digest = cache.digest(key)
    hit, principal = cache.get(digest)
    if not hit:
        # Only lookups are refused: a key known valid still works from a noisy address.
        limits.check_auth_failures(address, prefix)
        principal = await run_in_threadpool(lookup_key, state.engine, key)
        cache.put(digest, principal)
        if principal is not None and prefix is not None:
            limits.known_prefixes.add(prefix)
    if principal is None:
        limits.record_auth_failure(address, prefix)
        raise AuthError(401, "invalid API key: unknown or revoked")
    if scope is not None and not principal.allows(scope):
        granted = ", ".join(sorted(principal.scopes)) or "none"
        raise AuthError(
            403, f"API key '{principal.name}' lacks scope '{scope}' (it has: {granted})"
        )
    if scope is Scope.SUBMIT:
        limits.charge_posts(principal.key_id, principal.name, 1)
    else:
        limits.charge_request(principal.key_id, principal.name)
    return principal


def client_address(request: Request) -> str | None:
    """The caller's address: the socket peer, or behind a proxy of `api.trusted_proxies` the
    address it forwarded (the app's `ProxyHeadersMiddleware` rewrites the ASGI scope's client,
    which the submit fast lane reads too)."""
    return request.client.host if request.client is not None else None


async def current_key(request: Request) -> Principal:
    """The API key of the request.

    It reads the headers itself instead of chaining FastAPI's security dependencies: each
    dependency level costs a full dependency solve on every request. The OpenAPI document
    still declares both schemes (see `app.py`).

    Raises:
        AuthError: 401 when the key is missing, unknown or revoked.
    """
    return await authenticate(
        request.app.state.api, request.headers, client=client_address(request)
    )


CurrentKey = Annotated[Principal, Depends(current_key)]


def require(scope: Scope) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency that admits keys with `scope` (or `admin`).

    Raises:
        AuthError: 401 as `current_key`, 403 when the key lacks the scope.
    """

    async def check(request: Request) -> Principal:
        return await authenticate(
            request.app.state.api, request.headers, scope, client=client_address(request)
        )

    return check


SubmitKey = Annotated[Principal, Depends(require(Scope.SUBMIT))]
ReadKey = Annotated[Principal, Depends(require(Scope.READ))]
ModerateKey = Annotated[Principal, Depends(require(Scope.MODERATE))]
AdminKey = Annotated[Principal, Depends(require(Scope.ADMIN))]


async def get_workflows(state: StateDep) -> ReviewWorkflows:
    """The gateway to the review workflows (override it with `app.dependency_overrides`)."""
    return state.workflows


WorkflowsDep = Annotated[ReviewWorkflows, Depends(get_workflows)]


async def get_workflow_history(state: StateDep) -> WorkflowHistory:
    """The reader of the workflow instances (override it with `app.dependency_overrides`)."""
    return state.workflow_history


WorkflowHistoryDep = Annotated[WorkflowHistory, Depends(get_workflow_history)]
