"""The pipeline's own services as local processes: api, classifier worker, recorder.

Used by the integration tests and `moderation bench`: each runs as `moderation <service>` from the
project's venv, is ready when its `/readyz` answers 200, and can be stopped or killed (SIGKILL)
like any other component of the stack.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import httpx

from moderation.settings import PROJECT_ROOT, Settings
from moderation.stack.runtime import ManagedProcess, ensure_ports_free, step, wait_for_process


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: str
    port: int


def service_specs(settings: Settings) -> dict[str, ServiceSpec]:
    return {
        spec.name: spec
        for spec in (
            ServiceSpec("api", "api", settings.api.port),
            ServiceSpec("worker", "worker", settings.worker.classifier_health_port),
            ServiceSpec("recorder", "recorder", settings.worker.recorder_health_port),
        )
    }


class PipelineServices:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.specs = service_specs(settings)
        self.processes = {
            name: ManagedProcess(
                name=f"service-{name}",
                argv=[sys.executable, "-m", "moderation.cli", spec.command],
                state_dir=settings.stack.state_dir,
                cwd=PROJECT_ROOT,
                env=dict(env or {}),
            )
            for name, spec in self.specs.items()
        }

    def ready(self, name: str) -> bool:
        url = f"http://127.0.0.1:{self.specs[name].port}/readyz"
        try:
            return httpx.get(url, timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, *names: str, timeout: float = 300.0) -> None:
        """Start services (idempotent) and wait until each is ready."""
        for name in names or tuple(self.processes):
            process = self.processes[name]
            if process.running():
                continue
            ensure_ports_free(name, [self.specs[name].port])
            with step(f"service {name}: start on port {self.specs[name].port}"):
                process.start()
                wait_for_process(process, f"service {name}", lambda n=name: self.ready(n), timeout)

    def stop(self, *names: str) -> None:
        for name in names or tuple(self.processes):
            self.processes[name].stop()

    def kill(self, name: str) -> None:
        """SIGKILL: no graceful shutdown, no final commit (crash simulation)."""
        self.processes[name].kill()
