"""What every component of the local stack provides to `moderation stack up/down/status`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    healthy: bool
    endpoint: str
    pid: int | None = None
    rss_mib: float | None = None
    detail: str = ""


class Component(Protocol):
    """A real external part of the stack (Kafka, PostgreSQL, Dapr, the LLM server).

    `install` fetches or builds what is missing into the cache (idempotent, atomic);
    `start` starts it if it is not running and returns only once it really answers;
    `stop` leaves no process behind; `status` probes it.
    """

    name: str

    def install(self) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> list[ComponentStatus]: ...
