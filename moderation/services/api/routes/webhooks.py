"""`/v1/webhooks`: outbound webhook endpoints and their delivery log (scope `read`).

An endpoint belongs to the tenant of the key that registers it and receives that tenant's
events; keys that do not see the tenant get 404 for it, as if it did not exist. The signing
secret is returned once, at creation and at each rotation; after a rotation the previous secret
also signs for `webhooks.rotation_overlap_hours`. The URL is checked before anything is stored
(https outside development; hosts resolving to loopback or private addresses refused unless
`webhooks.allow_private_targets`); the dispatcher checks it again before each attempt.
Deliveries are made by `moderation webhook-dispatcher` (`services/webhooks/`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import WebhookDelivery, WebhookEndpoint
from moderation.db.schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhookSecretRotated,
    WebhooksPublic,
)
from moderation.events import utc_now
from moderation.services.api.deps import ReadKey, StateDep
from moderation.services.api.routes.errors import ApiError
from moderation.services.api.security import Principal
from moderation.webhooks import TargetRefused, https_required, new_secret, resolve_target

router = APIRouter(prefix="/v1", tags=["webhooks"])

MAX_LIMIT = 200
# Inside the databases' 64-bit OFFSET (beyond it a query fails: a 500).
MAX_OFFSET = 1_000_000_000
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `read` scope"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such endpoint (or delivery) for this key's tenants"}
}


def _public(endpoint: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic(
        id=endpoint.id,
        tenant=endpoint.tenant,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        created_at=endpoint.created_at,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
    )


def _delivery(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
    pending = delivery.status == "pending"
    return WebhookDeliveryPublic(
        id=delivery.id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if pending else None,
        expires_at=delivery.expires_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        payload=dict(delivery.payload),
    )


def _visible(session: Session, endpoint_id: str, principal: Principal) -> WebhookEndpoint:
    """The endpoint, if this key sees its tenant.

    Raises:
        ApiError: 404 otherwise (the same answer as for an endpoint that does not exist).
    """
    endpoint = crud.get_webhook_endpoint(session, endpoint_id=endpoint_id)
    if endpoint is None or not principal.sees(endpoint.tenant):
        raise ApiError(404, f"no webhook endpoint {endpoint_id!r}")
    return endpoint


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Register a webhook endpoint; the answer holds its signing secret, shown once",
    responses=RESPONSES
    | {
        409: {"description": "the tenant has as many endpoints as it may"},
        422: {"description": "a URL that is not https, private, malformed or does not resolve"},
    },
)
async def create_webhook(
    body: WebhookCreate, state: StateDep, principal: ReadKey
) -> WebhookCreated:
    settings = state.settings
    try:
        await resolve_target(
            body.url,
            require_https=https_required(settings),
            allow_private=settings.webhooks.allow_private_targets,
        )
    except TargetRefused as error:
        raise ApiError(
            422,
            f"url: {error}",
            errors=[{"field": "url", "message": str(error), "type": "webhook_url"}],
        ) from None
    limit = settings.webhooks.max_endpoints_per_tenant

    def create() -> WebhookCreated:
        with Session(state.engine) as session:
            if crud.count_webhook_endpoints(session, tenant=principal.tenant) >= limit:
                raise ApiError(
                    409,
                    f"tenant {principal.tenant!r} already has {limit} webhook endpoints "
                    "(webhooks.max_endpoints_per_tenant); delete one first",
                )
            secret = new_secret()
            endpoint = crud.create_webhook_endpoint(
                session,
                tenant=principal.tenant,
                owner_key_id=principal.key_id,
                url=body.url,
                event_types=body.event_types,
                secret=secret,
                actor=principal.actor,
            )
            return WebhookCreated(**_public(endpoint).model_dump(), secret=secret)

    return await run_in_threadpool(create)


@router.get(
    "/webhooks",
    response_model=WebhooksPublic,
    summary="The webhook endpoints of the tenants this key sees",
    responses=RESPONSES,
)
async def list_webhooks(state: StateDep, principal: ReadKey) -> WebhooksPublic:
    def read() -> WebhooksPublic:
        with Session(state.engine) as session:
            found = crud.list_webhook_endpoints(session, tenants=principal.tenants)
            return WebhooksPublic(items=[_public(endpoint) for endpoint in found])

    return await run_in_threadpool(read)


@router.get(
    "/webhooks/{endpoint_id}",
    response_model=WebhookPublic,
    summary="One webhook endpoint",
    responses=RESPONSES | NOT_FOUND,
)
async def get_webhook(endpoint_id: str, state: StateDep, principal: ReadKey) -> WebhookPublic:
    def read() -> WebhookPublic:
        with Session(state.engine) as session:
            return _public(_visible(session, endpoint_id, principal))

    return await run_in_threadpool(read)


@router.delete(
    "/webhooks/{endpoint_id}",
    status_code=204,
    summary="Delete a webhook endpoint: nothing more is delivered to it; its log stays",
    responses=RESPONSES | NOT_FOUND,
)
async def delete_webhook(endpoint_id: str, state: StateDep, principal: ReadKey) -> None:
    def delete() -> None:
        with Session(state.engine) as session:
            endpoint = _visible(session, endpoint_id, principal)
            crud.disable_webhook_endpoint(
                session, endpoint=endpoint, actor=principal.actor, at=utc_now()
            )

    await run_in_threadpool(delete)


@router.post(
    "/webhooks/{endpoint_id}/rotate-secret",
    response_model=WebhookSecretRotated,
    summary="A new signing secret, shown once; the previous one also signs for a while",
    responses=RESPONSES | NOT_FOUND,
)
async def rotate_webhook_secret(
    endpoint_id: str, state: StateDep, principal: ReadKey
) -> WebhookSecretRotated:
    overlap = timedelta(hours=state.settings.webhooks.rotation_overlap_hours)

    def rotate() -> WebhookSecretRotated:
        with Session(state.engine) as session:
            endpoint = _visible(session, endpoint_id, principal)
            secret = new_secret()
            until: datetime = utc_now() + overlap
            crud.rotate_webhook_secret(
                session,
                endpoint=endpoint,
                new_secret=secret,
                previous_valid_until=until,
                actor=principal.actor,
            )
            return WebhookSecretRotated(
                id=endpoint.id, secret=secret, previous_secret_expires_at=until
            )

    return await run_in_threadpool(rotate)


@router.get(
    "/webhooks/{endpoint_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    summary="An endpoint's delivery log, newest first: status, attempts, last error",
    responses=RESPONSES | NOT_FOUND,
)
async def list_deliveries(
    endpoint_id: str,
    state: StateDep,
    principal: ReadKey,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> WebhookDeliveriesPublic:
    def read() -> WebhookDeliveriesPublic:
        with Session(state.engine) as session:
            endpoint = _visible(session, endpoint_id, principal)
            rows, total = crud.list_webhook_deliveries(
                session, endpoint_id=endpoint.id, limit=limit, offset=offset
            )
            return WebhookDeliveriesPublic(
                items=[_delivery(row) for row in rows], total=total, limit=limit, offset=offset
            )

    return await run_in_threadpool(read)


@router.post(
    "/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    response_model=WebhookDeliveryPublic,
    summary="Send a delivery again (same webhook-id), with a new retry window",
    responses=RESPONSES | NOT_FOUND,
)
async def redeliver(
    endpoint_id: str, delivery_id: str, state: StateDep, principal: ReadKey
) -> WebhookDeliveryPublic:
    window = timedelta(hours=state.settings.webhooks.max_age_hours)

    def reset() -> WebhookDeliveryPublic:
        with Session(state.engine) as session:
            endpoint = _visible(session, endpoint_id, principal)
            delivery = crud.get_webhook_delivery(
                session, endpoint_id=endpoint.id, delivery_id=delivery_id
            )
            if delivery is None:
                raise ApiError(404, f"no delivery {delivery_id!r} for webhook {endpoint_id!r}")
            now = utc_now()
            return _delivery(
                crud.redeliver_webhook(session, delivery=delivery, at=now, expires_at=now + window)
            )

    return await run_in_threadpool(reset)
