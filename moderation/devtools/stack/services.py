"""The pipeline's own services as local processes: api, worker, recorder, review, agent, the
webhook dispatcher (`webhooks`).

Used by the integration tests and `moderation bench`: each runs as `moderation <service>` from the
project's venv, is ready when its `/readyz` answers 200 (the api's on its internal port), and can
be stopped or killed (SIGKILL) like any other component of the stack.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

from moderation.cache import step
from moderation.db.roles import SERVICE_ROLES
from moderation.devtools.stack.dapr import stack_tokens
from moderation.devtools.stack.runtime import (
    ManagedProcess,
    ensure_ports_free,
    http_ok,
    wait_for_process,
)
from moderation.settings import PROJECT_ROOT, Settings


def isolated_settings(settings: Settings, run: str) -> Settings:
    """The same settings with topics and consumer groups of their own (`<run>.<topic>`).

    Benchmarks and tests use them so that no run sees another's backlog.
    """
    topics = settings.kafka.topics.model_copy(
        update={
            name: f"{run}.{value}"
            for name, value in settings.kafka.topics.model_dump().items()
            if name != "dlq_suffix"
        }
    )
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topics": topics}),
            "worker": settings.worker.model_copy(
                update={
                    "classifier_group": f"{run}-classifier",
                    "recorder_group": f"{run}-recorder",
                }
            ),
            # Its own group too: deleting a run's ACLs must not take the shared group's.
            "webhooks": settings.webhooks.model_copy(update={"consumer_group": f"{run}-webhooks"}),
        }
    )


def service_env(settings: Settings) -> dict[str, str]:
    """Environment that gives service processes the topics, groups and agent of `settings`,
    and the local daprd's tokens (`DAPR_API_TOKEN`, `APP_API_TOKEN`)."""
    topics = settings.kafka.topics
    return stack_tokens(settings) | {
        "MODERATION_KAFKA__TOPICS__POSTS_SUBMITTED": topics.posts_submitted,
        "MODERATION_KAFKA__TOPICS__VERDICTS": topics.verdicts,
        "MODERATION_KAFKA__TOPICS__REVIEW_REQUESTED": topics.review_requested,
        "MODERATION_KAFKA__TOPICS__REVIEW_DECISIONS": topics.review_decisions,
        "MODERATION_KAFKA__TOPICS__REVIEW_ESCALATED": topics.review_escalated,
        "MODERATION_KAFKA__TOPICS__AGENT_REQUESTED": topics.agent_requested,
        "MODERATION_KAFKA__TOPICS__AUTHORS_ACTIONED": topics.authors_actioned,
        "MODERATION_KAFKA__TOPICS__REPORTS_RESOLVED": topics.reports_resolved,
        "MODERATION_WEBHOOKS__CONSUMER_GROUP": settings.webhooks.consumer_group,
        "MODERATION_WORKER__CLASSIFIER_GROUP": settings.worker.classifier_group,
        "MODERATION_WORKER__RECORDER_GROUP": settings.worker.recorder_group,
        "MODERATION_AGENT__ENABLED": str(settings.agent.enabled).lower(),
        "MODERATION_AGENT__RUNS_IN": settings.agent.runs_in,
        "MODERATION_LLM__BASE_URL": settings.llm.base_url,
    }


def database_role_env(service: str) -> dict[str, str]:
    """Each service logs in to PostgreSQL with its own role, as in production
    (`moderation.db.roles`; the stack creates the roles with its development password)."""
    role = SERVICE_ROLES.get(service)
    return {"MODERATION_DB__USER": role} if role else {}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: str
    port: int
    ready_path: str = "/readyz"
    ready_port: int | None = None  # where `ready_path` is served, when not on `port`

    @property
    def probe_port(self) -> int:
        return self.ready_port if self.ready_port is not None else self.port

    @property
    def ports(self) -> list[int]:
        return [self.port] if self.ready_port is None else [self.port, self.ready_port]


def service_specs(settings: Settings) -> dict[str, ServiceSpec]:
    return {
        spec.name: spec
        for spec in (
            ServiceSpec("api", "api", settings.api.port, ready_port=settings.api.internal_port),
            ServiceSpec("worker", "worker", settings.worker.classifier_health_port),
            ServiceSpec("recorder", "recorder", settings.worker.recorder_health_port),
            ServiceSpec("review", "review-service", settings.review.service_port),
            ServiceSpec("agent", "agent-service", settings.agent_service.service_port),
            ServiceSpec("mcp", "mcp-server", settings.mcp.port, "/healthz"),
            ServiceSpec("webhooks", "webhook-dispatcher", settings.webhooks.port),
            ServiceSpec("dashboard", "dashboard", settings.dashboard.port, "/_stcore/health"),
        )
    }


# Extra classifier workers (`worker-2`, ...) listen 100 ports above the previous one.
WORKER_REPLICA_PORT_STEP = 100


def worker_replica_specs(settings: Settings, replicas: int) -> dict[str, ServiceSpec]:
    """Workers 2..`replicas`: the worker's command in the same consumer group (Kafka splits the
    partitions between them), each with a health port of its own."""
    base = settings.worker.classifier_health_port
    return {
        f"worker-{index}": ServiceSpec(
            f"worker-{index}", "worker", base + WORKER_REPLICA_PORT_STEP * (index - 1)
        )
        for index in range(2, replicas + 1)
    }


def replica_env(spec: ServiceSpec) -> dict[str, str]:
    """A worker replica logs in as the worker and serves its probes on its own port."""
    return database_role_env("worker") | {
        "MODERATION_WORKER__CLASSIFIER_HEALTH_PORT": str(spec.port)
    }


class PipelineServices:
    """The services, configured by `settings` (topics and groups are passed to the processes);
    `worker_replicas` > 1 adds workers `worker-2`, ... (`worker_replica_specs`)."""

    def __init__(
        self,
        settings: Settings,
        extra_env: dict[str, str] | None = None,
        *,
        worker_replicas: int = 1,
    ) -> None:
        self.settings = settings
        self.extra_env = extra_env or {}
        env = service_env(settings) | self.extra_env
        replicas = worker_replica_specs(settings, worker_replicas)
        self.specs = service_specs(settings) | replicas
        self.processes = {
            name: ManagedProcess(
                name=f"service-{name}",
                argv=[sys.executable, "-m", "moderation.cli", spec.command],
                state_dir=settings.stack.state_dir,
                cwd=PROJECT_ROOT,
                env=env | (replica_env(spec) if name in replicas else database_role_env(name)),
            )
            for name, spec in self.specs.items()
        }

    def ready(self, name: str) -> bool:
        spec = self.specs[name]
        return http_ok(f"http://127.0.0.1:{spec.probe_port}{spec.ready_path}")

    def start(self, *names: str, timeout: float = 300.0) -> None:
        """Start services (idempotent) and wait until each is ready."""
        for name in names or tuple(self.processes):
            process = self.processes[name]
            if process.running():
                continue
            ensure_ports_free(name, self.specs[name].ports)
            with step(f"service {name}: start on port {self.specs[name].port}"):
                process.start()
                wait_for_process(process, f"service {name}", partial(self.ready, name), timeout)

    def stop(self, *names: str) -> None:
        for name in names or tuple(self.processes):
            self.processes[name].stop()

    def kill(self, name: str) -> None:
        """SIGKILL: no graceful shutdown, no final commit (crash simulation)."""
        self.processes[name].kill()

    def pids(self) -> dict[str, int]:
        """The pid of each running service, by name (what `moderation bench` samples RSS of)."""
        pids = {name: process.pid() for name, process in self.processes.items()}
        return {name: pid for name, pid in pids.items() if pid is not None}
