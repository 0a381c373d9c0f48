"""`/v1/config`: the live configuration (`moderation/live_config.py`).

`GET` (scope `moderate`: the metrics page shows it) answers what is set, its version and the
latest changes. `PUT /v1/config/{key}` (scope `admin`) stores a new value after checking it
against the settings it lands in; the store's trigger tells every service's daprd, and the
worker and the agent service apply it to their next batch or run, with no restart. Each change
is audited (who, when, before, after) in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.actors import actor_display, key_actor
from moderation.db import crud
from moderation.db.schemas import (
    ConfigChangePublic,
    ConfigItemPublic,
    ConfigSet,
    ConfigStatePublic,
)
from moderation.live_config import LIVE_KEYS, LiveConfigError, apply_live, config_version
from moderation.services.api.deps import AdminKey, ModerateKey, StateDep
from moderation.services.api.routes.errors import ApiError
from moderation.settings import Settings

router = APIRouter(prefix="/v1", tags=["config"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the scope"},
}


def _state(engine: Engine) -> ConfigStatePublic:
    with Session(engine) as session:
        items = crud.list_config(session)
        changes = crud.config_changes(session)
        names = crud.api_key_names(session, actors=[change.actor for change in changes])
    return ConfigStatePublic(
        version=config_version({item.key: item.version for item in items}),
        items=[ConfigItemPublic(key=i.key, value=i.value, version=i.version) for i in items],
        changes=[
            ConfigChangePublic(**change.__dict__, actor_display=actor_display(change.actor, names))
            for change in changes
        ],
        keys=list(LIVE_KEYS),
    )


def _set(engine: Engine, settings: Settings, key: str, value: str, actor: str) -> None:
    with Session(engine) as session:
        stored = {item.key: item.value for item in crud.list_config(session)}
        # Checked with everything else that is set: the services apply them together.
        apply_live(settings, stored | {key: value}, "check")
        crud.set_config(session, key=key, value=value, actor=actor)


@router.get(
    "/config",
    response_model=ConfigStatePublic,
    summary="The live configuration: what is set, its version, the latest changes",
    responses=RESPONSES,
)
async def get_config(state: StateDep, _principal: ModerateKey) -> ConfigStatePublic:
    return await run_in_threadpool(_state, state.engine)


@router.put(
    "/config/{key}",
    response_model=ConfigStatePublic,
    summary="Change one live setting (audited); the services apply it within seconds",
    responses=RESPONSES
    | {422: {"description": "a key that cannot be set live, or a value its setting refuses"}},
)
async def put_config(
    key: str,
    body: ConfigSet,
    state: StateDep,
    principal: AdminKey,
) -> ConfigStatePublic:
    value = json.dumps(body.value)
    try:
        await run_in_threadpool(
            _set, state.engine, state.settings, key, value, key_actor(principal.key_id)
        )
    except LiveConfigError as error:
        raise ApiError(422, f"{key}: {error}") from error
    return await run_in_threadpool(_state, state.engine)
