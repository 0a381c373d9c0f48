"""`/v1/workflows`: the agent and review services' Dapr workflow instances (scope `moderate`).

Read from each service's daprd (`services/sidecar/history.py`): the newest instances with their
status, and one instance's step history (activities, timers, events, with times and failures).
Names, statuses, times and error messages only: never a workflow's input or output, which
carry a post's text. A daprd that cannot answer gives 503 with the reason.

A key that sees only some tenants sees only the instances of their posts (an instance's post is
named by its id, `crud.workflow_instance_tenants`): the list keeps those among the newest
`limit`, and any other instance is 404 as if it did not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import WorkflowApp, WorkflowHistoryPublic, WorkflowInstancesPublic
from moderation.services.api.deps import ModerateKey, StateDep, WorkflowHistoryDep
from moderation.services.api.routes.errors import ApiError, unavailable_response
from moderation.services.sidecar.history import InstanceNotFound, SidecarUnavailable

router = APIRouter(prefix="/v1", tags=["workflows"])

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Instance ids are ours (review ids, `agent-<post_id>-<policy>`); this bounds what reaches daprd.
MAX_INSTANCE_ID_CHARS = 300

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `moderate` scope"},
    422: {"description": "an unknown app, or a limit out of range"},
    503: {"description": "the app's daprd is unreachable or cannot answer (the reason says)"},
}


def _visible(engine: Engine, instance_ids: list[str], tenants: frozenset[str]) -> set[str]:
    """The instances among `instance_ids` whose post belongs to one of `tenants`."""
    with Session(engine) as session:
        owners = crud.workflow_instance_tenants(session, instance_ids=instance_ids)
    return {instance_id for instance_id, tenant in owners.items() if tenant in tenants}


@router.get(
    "/workflows",
    response_model=WorkflowInstancesPublic,
    summary="The newest workflow instances of the agent or review service, with their status",
    responses=RESPONSES,
)
async def list_workflows(
    state: StateDep,
    history: WorkflowHistoryDep,
    principal: ModerateKey,
    app: Annotated[WorkflowApp, Query(description="whose workflows: `agent` or `review`")],
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> WorkflowInstancesPublic | JSONResponse:
    try:
        found = await history.list_instances(app, limit=limit)
    except SidecarUnavailable as error:
        state.metrics.unavailable.labels("workflows", "dapr").inc()
        return unavailable_response(error.reason)
    tenants = principal.tenants
    if tenants is None:
        return found
    ids = [item.instance_id for item in found.items]
    visible = await run_in_threadpool(_visible, state.engine, ids, tenants)
    return found.model_copy(
        update={"items": [item for item in found.items if item.instance_id in visible]}
    )


@router.get(
    "/workflows/{app}/{instance_id}",
    response_model=WorkflowHistoryPublic,
    summary="One workflow instance: its status and its step history, in order",
    responses=RESPONSES | {404: {"description": "no such workflow instance"}},
)
async def get_workflow(
    state: StateDep,
    history: WorkflowHistoryDep,
    principal: ModerateKey,
    app: WorkflowApp,
    instance_id: Annotated[str, Path(min_length=1, max_length=MAX_INSTANCE_ID_CHARS)],
) -> WorkflowHistoryPublic | JSONResponse:
    tenants = principal.tenants
    if tenants is not None and not await run_in_threadpool(
        _visible, state.engine, [instance_id], tenants
    ):
        raise ApiError(404, f"no {app.value} workflow instance '{instance_id}'")
    try:
        return await history.history(app, instance_id)
    except InstanceNotFound as error:
        raise ApiError(404, f"no {app.value} workflow instance '{instance_id}'") from error
    except SidecarUnavailable as error:
        state.metrics.unavailable.labels("workflow", "dapr").inc()
        return unavailable_response(error.reason)
