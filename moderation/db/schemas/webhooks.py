"""Shapes of `/v1/webhooks`: endpoints, their signing secret (shown once) and their deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, field_validator
from sqlmodel import Field, SQLModel

from moderation.db.models import DeliveryStatus
from moderation.webhooks import EVENT_TYPES, MAX_URL_CHARS, EventType


class WebhookCreate(SQLModel):
    """`POST /v1/webhooks`: where to deliver, and which events."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="https URL that receives the events (http only in development); hosts on "
        "loopback or private addresses are refused unless `webhooks.allow_private_targets`",
        schema_extra={"examples": ["https://platform.example/hooks/moderation"]},
    )
    event_types: list[EventType] = Field(
        min_length=1,
        max_length=len(EVENT_TYPES),
        description=f"what to deliver: any of {', '.join(EVENT_TYPES)}",
        schema_extra={"examples": [["post.verdict", "review.decided"]]},
    )

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, value: list[EventType]) -> list[EventType]:
        if len(set(value)) != len(value):
            raise ValueError("each event type at most once")
        return value


class WebhookPublic(SQLModel):
    """A registered endpoint (never its secret)."""

    id: str = Field(schema_extra={"examples": ["whk_5f0c2a9e8b7d6c5a4b3c2d1e"]})
    tenant: str
    url: str
    event_types: list[str]
    created_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="after a rotation: until when the previous secret also signs"
    )


class WebhookCreated(WebhookPublic):
    """The new endpoint with its signing secret: shown this once, store it now."""

    secret: str = Field(
        description="`whsec_<base64>`: verify each delivery's `webhook-signature` with it"
    )


class WebhookSecretRotated(SQLModel):
    """`POST /v1/webhooks/{id}/rotate-secret`: the new secret, shown this once."""

    id: str
    secret: str = Field(description="the new `whsec_` secret; it signs every delivery from now")
    previous_secret_expires_at: datetime = Field(
        description="until then deliveries carry a second signature, by the previous secret"
    )


class WebhooksPublic(SQLModel):
    items: list[WebhookPublic]


class WebhookDeliveryPublic(SQLModel):
    """One event for one endpoint, with its attempts so far."""

    id: str = Field(description="the `webhook-id` header of each of its attempts")
    event_id: str
    event_type: str
    status: DeliveryStatus = Field(
        description="pending (waiting for its next attempt), succeeded, or dead (every attempt "
        "failed until the retry window closed)"
    )
    attempts: int
    next_attempt_at: datetime | None = Field(description="while pending")
    expires_at: datetime = Field(description="no attempt after this; the delivery is then dead")
    last_status_code: int | None = Field(description="the endpoint's last answer, if any")
    last_error: str | None = Field(description="why the last attempt failed")
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="the JSON body that is delivered")


class WebhookDeliveriesPublic(SQLModel):
    """A page of an endpoint's deliveries, newest first."""

    items: list[WebhookDeliveryPublic]
    total: int
    limit: int
    offset: int
