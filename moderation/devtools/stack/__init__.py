"""The local stack (DACA mode 2): real Kafka, PostgreSQL, Zipkin, Dapr and an OpenAI-compatible LLM
server.

`moderation stack up` installs what is missing (cached outside the repository, keyed by version),
starts every component on loopback and returns once each really answers. `down` stops them all.
"""

from __future__ import annotations

import time

from moderation.cache import console, step
from moderation.devtools.stack.component import Component, ComponentStatus
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.llm import LLMServer
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.runtime import StackError
from moderation.devtools.stack.zipkin import ZipkinServer
from moderation.settings import Settings


def components(settings: Settings) -> list[Component]:
    """Every component in start order (Dapr needs Kafka and PostgreSQL for its components, and
    sends its spans to Zipkin)."""
    return [
        KafkaBroker(settings),
        PostgresCluster(settings),
        ZipkinServer(settings),
        DaprRuntime(settings),
        LLMServer(settings),
    ]


def select(settings: Settings, names: list[str] | None) -> list[Component]:
    chosen = components(settings)
    if not names:
        return chosen
    known = {component.name for component in chosen}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(known)}")
    return [component for component in chosen if component.name in names]


def install(settings: Settings, names: list[str] | None = None) -> None:
    """Download and build what is missing into the cache, without starting anything."""
    for component in select(settings, names):
        with step(f"{component.name}: install (cached)"):
            component.install()


def up(settings: Settings, names: list[str] | None = None) -> None:
    started = time.monotonic()
    for component in select(settings, names):
        with step(f"{component.name}: install (cached)"):
            component.install()
        component.start()
    console.print(f"[bold green]stack up[/bold green] in {time.monotonic() - started:.1f}s")


def down(settings: Settings, names: list[str] | None = None) -> None:
    """Stop the components in reverse order and check that no process is left behind."""
    chosen = select(settings, names)
    for component in reversed(chosen):
        with step(f"{component.name}: stop"):
            component.stop()
    leftover = [row for component in chosen for row in component.status() if row.running]
    if leftover:
        names_left = ", ".join(f"{row.name} (pid {row.pid})" for row in leftover)
        raise StackError(f"still running after stop: {names_left}")


def status(settings: Settings, names: list[str] | None = None) -> list[ComponentStatus]:
    return [item for component in select(settings, names) for item in component.status()]
