"""Shapes of `/v1/config`: the live configuration, its version and its changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel


class ConfigItemPublic(SQLModel):
    key: str = Field(description="one of `keys`, e.g. `thresholds.remove.spam`")
    value: str = Field(description="the stored JSON value (`null`: the services' own setting)")
    version: str = Field(description="the configuration version that set it")


class ConfigChangePublic(SQLModel):
    key: str
    actor: str | None = Field(description="who changed it (`key:<id>`), as the audit log has it")
    actor_display: str | None = Field(
        default=None, description="the actor with its key's name, for people to read"
    )
    at: datetime
    before: str | None = Field(description="the value before (null: not set)")
    after: str | None
    version: str | None


class ConfigStatePublic(SQLModel):
    """What the services apply on top of their settings (`moderation/live_config.py`)."""

    version: str = Field(description="`c<n>` of the newest change, `static` when nothing is set")
    items: list[ConfigItemPublic]
    changes: list[ConfigChangePublic] = Field(description="the latest changes, newest first")
    keys: list[str] = Field(description="every key that may be set live")


class ConfigSet(SQLModel):
    """`PUT /v1/config/{key}`: the new value (JSON; null restores the services' setting)."""

    value: Any = Field(description="e.g. 0.9, true, 16")
