"""The agent registry: which agents and MCP servers run, in the Dapr state store.

Each entry is one key (`agent:<name>`) of the `agentregistry` store
(`components/agentregistry-postgresql.yaml`, keys shared by every app), and the key `agents`
lists the names. The agent service registers itself and the MCP server it uses when it starts
and when its served model changes; `moderation agents` lists them through any daprd.
"""

from __future__ import annotations

import json
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from pydantic import BaseModel, Field

from moderation.events import utc_now

INDEX_KEY = "agents"
INDEX_ATTEMPTS = 5


class RegistryEntry(BaseModel):
    name: str
    kind: Literal["agent", "mcp-server"]
    version: str = Field(description="the moderation package's version")
    model: str | None = Field(default=None, description="the served model (agents)")
    policy_version: str | None = None
    endpoints: dict[str, str] = Field(default_factory=dict)
    tools: list[str] = Field(default_factory=list)
    registered_at: datetime = Field(default_factory=utc_now)


def package_version() -> str:
    try:
        return version("moderation")
    except PackageNotFoundError:
        return "unknown"


def entry_key(name: str) -> str:
    return f"agent:{name}"


def register(client: DaprClient, store: str, entry: RegistryEntry) -> None:
    """Write `entry` and add its name to the index (first writer wins, then retried)."""
    client.save_state(store, entry_key(entry.name), entry.model_dump_json())
    for _ in range(INDEX_ATTEMPTS):
        current = client.get_state(store, INDEX_KEY)
        names: list[str] = json.loads(current.data) if current.data else []
        if entry.name in names:
            return
        try:
            client.save_state(
                store,
                INDEX_KEY,
                json.dumps(sorted({*names, entry.name})),
                etag=current.etag or None,
                options=StateOptions(concurrency=Concurrency.first_write),
            )
            return
        except Exception:  # noqa: BLE001, S112 - another writer won the race: read again
            continue
    raise RuntimeError(f"could not add {entry.name} to the agent registry's index")


def list_entries(client: DaprClient, store: str) -> list[RegistryEntry]:
    """Every registered agent and MCP server, by name."""
    index = client.get_state(store, INDEX_KEY)
    names: list[str] = json.loads(index.data) if index.data else []
    entries: list[RegistryEntry] = []
    for name in names:
        found = client.get_state(store, entry_key(name))
        if found.data:
            entries.append(RegistryEntry.model_validate_json(found.data))
    return entries


def as_rows(entries: list[RegistryEntry]) -> list[dict[str, Any]]:
    return [entry.model_dump(mode="json") for entry in entries]
