"""Outbound webhooks: endpoints (the API) and their deliveries (the API and the dispatcher).

The API registers, lists, rotates and disables endpoints and reads the delivery log; the
dispatcher (`services/webhooks/`) inserts one delivery per event and matching endpoint
(idempotent on (endpoint, event): a redelivered Kafka event inserts nothing), claims the due
ones (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never claim the same row) and records
each attempt. Endpoint changes are audited with the endpoint's tenant; secrets never reach the
audit log.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._sql import _chunks, _insert_ignore, _table, _utc
from moderation.db.crud.audit import append_audit
from moderation.db.models import DeliveryStatus, Post, WebhookDelivery, WebhookEndpoint

AUDIT_ENTITY_WEBHOOK = "webhook"
ENDPOINT_ID_PREFIX = "whk_"
DELIVERY_ID_PREFIX = "msg_"
MAX_ERROR_CHARS = 1_000
ENDPOINT_DELETED = "the endpoint was deleted"

DELIVERIES = _table(WebhookDelivery)


def new_endpoint_id() -> str:
    return ENDPOINT_ID_PREFIX + secrets.token_hex(12)


def new_delivery_id() -> str:
    """A delivery's id, sent as `webhook-id` on each of its attempts."""
    return DELIVERY_ID_PREFIX + secrets.token_hex(16)


def _audited(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What the audit log keeps of an endpoint: never its secrets."""
    return {
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "disabled_at": endpoint.disabled_at,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at,
    }


# --- endpoints (the API) -------------------------------------------------------------------


def create_webhook_endpoint(
    session: Session,
    *,
    tenant: str,
    owner_key_id: int | None,
    url: str,
    event_types: Sequence[str],
    secret: str,
    actor: str,
) -> WebhookEndpoint:
    """Register an endpoint (audited in the same transaction)."""
    endpoint = WebhookEndpoint(
        id=new_endpoint_id(),
        tenant=tenant,
        owner_key_id=owner_key_id,
        url=url,
        event_types=list(dict.fromkeys(event_types)),
        secret=secret,
    )
    session.add(endpoint)
    append_audit(
        session,
        actor=actor,
        action="webhook.create",
        entity=AUDIT_ENTITY_WEBHOOK,
        entity_id=endpoint.id,
        before=None,
        after=_audited(endpoint),
        tenant=tenant,
        commit=False,
    )
    session.commit()
    session.refresh(endpoint)
    return endpoint


def count_webhook_endpoints(session: Session, *, tenant: str) -> int:
    """Active endpoints of `tenant`."""
    return int(
        session.exec(
            select(sa.func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.tenant == tenant, col(WebhookEndpoint.disabled_at).is_(None))
        ).one()
    )


def list_webhook_endpoints(
    session: Session, *, tenants: Collection[str] | None
) -> list[WebhookEndpoint]:
    """Active endpoints of `tenants` (None: every tenant), oldest first."""
    query = select(WebhookEndpoint).where(col(WebhookEndpoint.disabled_at).is_(None))
    if tenants is not None:
        query = query.where(col(WebhookEndpoint.tenant).in_(sorted(tenants)))
    return list(session.exec(query.order_by(col(WebhookEndpoint.created_at))).all())


def get_webhook_endpoint(session: Session, *, endpoint_id: str) -> WebhookEndpoint | None:
    """An active endpoint; None when unknown or deleted."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    return endpoint if endpoint is not None and endpoint.disabled_at is None else None


def disable_webhook_endpoint(
    session: Session, *, endpoint: WebhookEndpoint, actor: str, at: datetime
) -> WebhookEndpoint:
    """Delete an endpoint: it gets no new deliveries, its pending ones are given up (dead,
    "the endpoint was deleted") and its log stays readable."""
    before = _audited(endpoint)
    endpoint.disabled_at = _utc(at)
    session.add(endpoint)
    session.exec(
        sa.update(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint.id,
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.DEAD, last_error=ENDPOINT_DELETED)
    )
    append_audit(
        session,
        actor=actor,
        action="webhook.delete",
        entity=AUDIT_ENTITY_WEBHOOK,
        entity_id=endpoint.id,
        before=before,
        after=_audited(endpoint),
        tenant=endpoint.tenant,
        commit=False,
    )
    session.commit()
    session.refresh(endpoint)
    return endpoint


def rotate_webhook_secret(
    session: Session,
    *,
    endpoint: WebhookEndpoint,
    new_secret: str,
    previous_valid_until: datetime,
    actor: str,
) -> WebhookEndpoint:
    """Replace the signing secret; the old one keeps signing until `previous_valid_until`."""
    before = _audited(endpoint)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = _utc(previous_valid_until)
    endpoint.secret = new_secret
    session.add(endpoint)
    append_audit(
        session,
        actor=actor,
        action="webhook.rotate_secret",
        entity=AUDIT_ENTITY_WEBHOOK,
        entity_id=endpoint.id,
        before=before,
        after=_audited(endpoint),
        tenant=endpoint.tenant,
        commit=False,
    )
    session.commit()
    session.refresh(endpoint)
    return endpoint


def signing_secrets(endpoint: WebhookEndpoint, *, at: datetime) -> list[str]:
    """The secrets that sign a delivery at `at`: the current one, and the previous one while
    its overlap lasts."""
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and _utc(at) < _utc(expires):
        found.append(endpoint.previous_secret)
    return found


# --- the delivery log (the API) ------------------------------------------------------------


def list_webhook_deliveries(
    session: Session, *, endpoint_id: str, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    """A page of an endpoint's deliveries, newest first, and how many it has in all."""
    total = session.exec(
        select(sa.func.count())
        .select_from(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
    ).one()
    rows = session.exec(
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)


def get_webhook_delivery(
    session: Session, *, endpoint_id: str, delivery_id: str
) -> WebhookDelivery | None:
    delivery = session.get(WebhookDelivery, delivery_id)
    return delivery if delivery is not None and delivery.endpoint_id == endpoint_id else None


def redeliver_webhook(
    session: Session, *, delivery: WebhookDelivery, at: datetime, expires_at: datetime
) -> WebhookDelivery:
    """Send a delivery again (same `webhook-id`) as soon as the dispatcher polls: pending now,
    with a new retry window; its attempts start counting again."""
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = _utc(at)
    delivery.expires_at = _utc(expires_at)
    session.add(delivery)
    session.commit()
    session.refresh(delivery)
    return delivery


# --- the dispatcher ------------------------------------------------------------------------


def post_tenants(session: Session, *, post_ids: Sequence[str]) -> dict[str, str]:
    """The tenant of each recorded post among `post_ids` (unrecorded ones are absent)."""
    found: dict[str, str] = {}
    for chunk in _chunks(sorted(set(post_ids))):
        rows = session.exec(select(Post.id, Post.tenant).where(col(Post.id).in_(chunk))).all()
        found.update(dict(rows))
    return found


def active_webhook_endpoints(
    session: Session, *, tenants: Collection[str]
) -> list[WebhookEndpoint]:
    """Active endpoints of `tenants` (the dispatcher matches events against them)."""
    if not tenants:
        return []
    return list_webhook_endpoints(session, tenants=tenants)


def endpoints_by_id(
    session: Session, *, endpoint_ids: Collection[str]
) -> dict[str, WebhookEndpoint]:
    """The endpoints of `endpoint_ids`, deleted ones included (their deliveries stop)."""
    if not endpoint_ids:
        return {}
    rows = session.exec(
        select(WebhookEndpoint).where(col(WebhookEndpoint.id).in_(sorted(endpoint_ids)))
    ).all()
    return {row.id: row for row in rows}


@dataclass(frozen=True)
class NewDelivery:
    """One event for one endpoint, as the dispatcher's consumer creates it."""

    endpoint_id: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    expires_at: datetime


def insert_webhook_deliveries(session: Session, *, deliveries: Sequence[NewDelivery]) -> int:
    """Insert deliveries, ignoring those already there (same endpoint and event); commits.

    Returns:
        How many were new.
    """
    rows = [
        {
            "id": new_delivery_id(),
            "endpoint_id": item.endpoint_id,
            "event_id": item.event_id,
            "event_type": item.event_type,
            "payload": item.payload,
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": _utc(item.created_at),
            "expires_at": _utc(item.expires_at),
            "last_status_code": None,
            "last_error": None,
            "created_at": _utc(item.created_at),
            "delivered_at": None,
        }
        for item in deliveries
    ]
    inserted = _insert_ignore(session, DELIVERIES, rows, ("endpoint_id", "event_id"))
    session.commit()
    return inserted


@dataclass(frozen=True)
class ClaimedDelivery:
    """A due delivery the dispatcher now holds until its lease ends."""

    id: str
    endpoint_id: str
    event_type: str
    payload: dict[str, Any]
    attempts: int
    expires_at: datetime


def claim_due_deliveries(
    session: Session,
    *,
    at: datetime,
    lease_until: datetime,
    limit: int,
    exclude_endpoints: Collection[str] = (),
) -> list[ClaimedDelivery]:
    """Claim pending deliveries due at `at`, oldest due first: their next attempt moves to
    `lease_until`, so no other dispatcher takes them meanwhile and a crashed one's claims come
    back by themselves. Commits.

    `exclude_endpoints` are endpoints the caller cannot take more of now (a full queue, an open
    breaker): their deliveries stay for later instead of being claimed and handed back.
    """
    query = (
        select(WebhookDelivery)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            col(WebhookDelivery.next_attempt_at) <= _utc(at),
        )
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if exclude_endpoints:
        query = query.where(col(WebhookDelivery.endpoint_id).not_in(sorted(exclude_endpoints)))
    rows = list(session.exec(query).all())
    claimed = [
        ClaimedDelivery(
            id=row.id,
            endpoint_id=row.endpoint_id,
            event_type=row.event_type,
            payload=dict(row.payload),
            attempts=row.attempts,
            expires_at=row.expires_at,
        )
        for row in rows
    ]
    if rows:
        session.exec(
            sa.update(WebhookDelivery)
            .where(col(WebhookDelivery.id).in_([row.id for row in rows]))
            .values(next_attempt_at=_utc(lease_until))
        )
    session.commit()
    return claimed


def record_delivery_attempt(
    session: Session,
    *,
    delivery_id: str,
    at: datetime,
    succeeded: bool,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
) -> None:
    """Record one attempt: succeeded; failed with a next attempt; or failed for the last time
    (`next_attempt_at` None: the delivery is dead, its error kept). Commits.

    Only a pending delivery changes: one redelivered or finished meanwhile is left alone.
    """
    values: dict[str, Any] = {
        "attempts": col(WebhookDelivery.attempts) + 1,
        "last_status_code": status_code,
        "last_error": error[:MAX_ERROR_CHARS] if error else None,
    }
    if succeeded:
        values |= {"status": DeliveryStatus.SUCCEEDED, "delivered_at": _utc(at)}
    elif next_attempt_at is None:
        values |= {"status": DeliveryStatus.DEAD}
    else:
        values |= {"next_attempt_at": _utc(next_attempt_at)}
    session.exec(
        sa.update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
        )
        .values(**values)
    )
    session.commit()


def release_deliveries(
    session: Session, *, delivery_ids: Sequence[str], next_attempt_at: datetime
) -> None:
    """Hand claimed deliveries back without an attempt (shutdown, an open breaker): due again
    at `next_attempt_at`. Commits."""
    for chunk in _chunks(list(delivery_ids)):
        session.exec(
            sa.update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id).in_(chunk),
                col(WebhookDelivery.status) == DeliveryStatus.PENDING,
            )
            .values(next_attempt_at=_utc(next_attempt_at))
        )
    session.commit()


def mark_deliveries_dead(session: Session, *, delivery_ids: Sequence[str], reason: str) -> None:
    """Give up pending deliveries without an attempt (their endpoint was deleted). Commits."""
    for chunk in _chunks(list(delivery_ids)):
        session.exec(
            sa.update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id).in_(chunk),
                col(WebhookDelivery.status) == DeliveryStatus.PENDING,
            )
            .values(status=DeliveryStatus.DEAD, last_error=reason[:MAX_ERROR_CHARS])
        )
    session.commit()
