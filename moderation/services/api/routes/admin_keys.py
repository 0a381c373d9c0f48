"""`/v1/admin/keys`: list, create and revoke API keys (scope `admin`).

Each creation and revocation is audited (`api_key.create`, `api_key.revoke`: the admin key as
actor, the key's state before and after, never its hash) in the transaction that makes it. A
revocation takes effect at once in this process (its key cache forgets the key); other API
processes and the MCP server stop accepting it within `security.CACHE_TTL_SECONDS`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import ApiKey
from moderation.db.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeysPublic
from moderation.services.api.deps import AdminKey, StateDep
from moderation.services.api.routes.errors import ApiError

router = APIRouter(prefix="/v1/admin", tags=["admin"])

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `admin` scope"},
}


def public_key(api_key: ApiKey) -> ApiKeyPublic:
    """The API shape of a key: everything but its hash."""
    return ApiKeyPublic.model_validate(crud.api_key_state(api_key))


def _list(engine: Engine) -> list[ApiKeyPublic]:
    with Session(engine) as session:
        return [public_key(api_key) for api_key in crud.list_api_keys(session)]


def _create(
    engine: Engine, body: ApiKeyCreate, actor: str, known_groups: list[str]
) -> ApiKeyCreated:
    with Session(engine) as session:
        try:
            plaintext, api_key = crud.create_api_key(
                session,
                name=body.name,
                scopes=body.scopes,
                tenant=body.tenant,
                granted_tenants=body.granted_tenants,
                actor=actor,
                moderator_groups=body.moderator_groups,
                known_groups=known_groups,
            )
        except ValueError as error:
            raise ApiError(
                422,
                f"invalid request: {error}",
                errors=[{"field": "body", "message": str(error), "type": "value_error"}],
            ) from None
        return ApiKeyCreated(api_key=plaintext, key=public_key(api_key))


def _revoke(engine: Engine, key_id: int, actor: str) -> ApiKeyPublic:
    with Session(engine) as session:
        outcome, api_key = crud.revoke_api_key_by_id(session, key_id=key_id, actor=actor)
        if outcome is crud.KeyRevocation.NOT_FOUND or api_key is None:
            raise ApiError(404, f"API key {key_id} not found")
        if outcome is crud.KeyRevocation.ALREADY_REVOKED:
            revoked = api_key.revoked_at.isoformat() if api_key.revoked_at else "before"
            raise ApiError(409, f"API key {key_id} is already revoked ({revoked})")
        return public_key(api_key)


@router.get(
    "/keys",
    response_model=ApiKeysPublic,
    summary="Every API key (without secrets), revoked ones included",
    responses=AUTH_ERRORS,
)
async def list_keys(state: StateDep, _principal: AdminKey) -> ApiKeysPublic:
    return ApiKeysPublic(items=await run_in_threadpool(_list, state.engine))


@router.post(
    "/keys",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key; its plaintext is in this answer only",
    responses={
        **AUTH_ERRORS,
        422: {
            "description": "an unknown scope, a malformed tenant, an unknown moderator group, "
            "or grants or groups without `moderate`"
        },
    },
)
async def create_key(body: ApiKeyCreate, state: StateDep, principal: AdminKey) -> JSONResponse:
    """Create a key for `tenant` (audited); store `api_key` now, it is never shown again."""
    known_groups = crud.Routing.of(state.settings.review).names()
    created = await run_in_threadpool(_create, state.engine, body, principal.actor, known_groups)
    return JSONResponse(
        created.model_dump(mode="json"),
        status_code=201,
        # The plaintext must not land in a shared cache.
        headers={"Cache-Control": "no-store"},
    )


@router.post(
    "/keys/{key_id}/revoke",
    response_model=ApiKeyPublic,
    summary="Revoke an API key (audited); it stops working at once",
    responses={
        **AUTH_ERRORS,
        404: {"description": "no such key"},
        409: {"description": "the key is already revoked"},
    },
)
async def revoke_key(key_id: int, state: StateDep, principal: AdminKey) -> ApiKeyPublic:
    """Revoke the key; this process forgets it at once, others within the key cache's TTL."""
    revoked = await run_in_threadpool(_revoke, state.engine, key_id, principal.actor)
    state.key_cache.forget_key(key_id)
    return revoked
