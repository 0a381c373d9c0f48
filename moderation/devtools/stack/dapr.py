"""The Dapr runtime: `daprd`, `placement`, `scheduler` and `sentry`, built with Go from the
module proxy.

`go install github.com/dapr/dapr/cmd/daprd@vX` refuses modules with replace directives, so
`scripts/dapr/go.mod` is a wrapper module that requires dapr and repeats its replaces. Its
go.sum is dapr's own (the checksum database does not answer for some of dapr's dependencies
here, and dapr's go.sum was itself verified when the dapr module was downloaded). Its `daprd/`
is daprd with the stable components plus the OpenAI conversation component (alpha) that the
agent's LLM calls go through.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml
from pydantic import SecretStr

from moderation.cache import cache_entry, step
from moderation.db.roles import CONFIG_READER_ROLE, DAPR_STATE_ROLE
from moderation.devtools.stack.component import ComponentStatus
from moderation.devtools.stack.runtime import (
    ManagedProcess,
    StackError,
    ensure_ports_free,
    http_ok,
    require_tool,
    rss_mib,
    run,
    wait_for_process,
)
from moderation.kafka_auth import Principal, credentials
from moderation.llm.provider import endpoint_origin
from moderation.local_secrets import local_secret
from moderation.settings import PROJECT_ROOT, Settings

WRAPPER_DIR = PROJECT_ROOT / "scripts" / "dapr"
COMPONENTS_DIR = PROJECT_ROOT / "components"
CONFIG_FILE = COMPONENTS_DIR / "configuration.yaml"
BINARIES = ("daprd", "placement", "scheduler", "sentry")
BUILD_PACKAGE = "github.com/dapr/dapr"
# Part of the build's cache key: bump it when what is built changes (2: sentry, and daprd with
# the OpenAI conversation component).
BUILD_REVISION = 2
LOOPBACK = "127.0.0.1"
# The control plane's SPIFFE trust domain (sentry, placement, scheduler); the apps' own is
# `settings.dapr.trust_domain`.
CONTROL_PLANE_TRUST_DOMAIN = "localhost"
# Self-hosted daprd's namespace (it reads NAMESPACE; unset means this one).
NAMESPACE = "default"
WORKER_APP_ID = "classifier-worker"
API_APP_ID = "moderation-api"


def stack_tokens(settings: Settings) -> dict[str, str]:
    """Dapr's token variables for the local stack's daprd and every process talking to it.

    `DAPR_API_TOKEN` (daprd then requires it on its API) and `APP_API_TOKEN` (daprd sends it
    to the app): the settings' tokens when set, otherwise tokens generated once into the stack's
    state dir (`<state_dir>/dapr/*-token`, 0600, ignored by git), so that daprd, the services
    the stack starts and the commands run next to it agree without any configuration.
    """
    directory = settings.stack.state_dir / "dapr"
    api, app = settings.dapr.api_token, settings.dapr.app_token
    return {
        "DAPR_API_TOKEN": api.get_secret_value() if api else local_secret(directory / "api-token"),
        "APP_API_TOKEN": app.get_secret_value() if app else local_secret(directory / "app-token"),
    }


def with_stack_tokens(settings: Settings) -> Settings:
    """In development, `settings` with the local stack's Dapr tokens where none is set."""
    if settings.environment != "development":
        return settings
    tokens = stack_tokens(settings)
    dapr = settings.dapr.model_copy(
        update={
            "api_token": SecretStr(tokens["DAPR_API_TOKEN"]),
            "app_token": SecretStr(tokens["APP_API_TOKEN"]),
        }
    )
    return settings.model_copy(update={"dapr": dapr})


def binary_version(path: Path) -> str | None:
    """`<binary> --version` prints the version injected by ldflags (e.g. 1.18.2)."""
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else None


@dataclass(frozen=True)
class SidecarSpec:
    """One Dapr app's daprd: its app id, ports and the Kafka principal its pub/sub acts as."""

    app: str  # the stack's short name: "review" or "agent"
    app_id: str
    http_port: int
    grpc_port: int
    metrics_port: int
    principal: Principal
    # App ids that may invoke this app through Dapr (its daprd's access-control policy);
    # every other caller is refused.
    allowed_callers: tuple[str, ...] = ()
    # How long daprd keeps a finished workflow's state before purging it (apps that run
    # workflows); None: forever.
    workflow_retention_hours: float | None = None


def sidecar_specs(settings: Settings) -> dict[str, SidecarSpec]:
    """The stack's Dapr apps: the review service, the agent service and the worker."""
    d, agent = settings.dapr, settings.agent_service
    return {
        "review": SidecarSpec("review", d.app_id, d.http_port, d.grpc_port, d.metrics_port,
                              "review", allowed_callers=(API_APP_ID,),
                              workflow_retention_hours=settings.review.workflow_retention_hours),
        "agent": SidecarSpec("agent", agent.app_id, agent.dapr_http_port, agent.dapr_grpc_port,
                             agent.dapr_metrics_port, "agent", allowed_callers=(WORKER_APP_ID,),
                             workflow_retention_hours=agent.workflow_retention_hours),
        # The worker's daprd serves it the live configuration only (no app channel).
        "worker": SidecarSpec("worker", WORKER_APP_ID, settings.worker.dapr_http_port,
                              settings.worker.dapr_grpc_port, settings.worker.dapr_metrics_port,
                              "worker"),
    }  # fmt: skip


class DaprRuntime:
    name = "dapr"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dapr = settings.dapr
        self.state_dir = settings.stack.state_dir
        self.placement = ManagedProcess(name="dapr-placement", argv=[], state_dir=self.state_dir)
        self.scheduler = ManagedProcess(name="dapr-scheduler", argv=[], state_dir=self.state_dir)
        self.sentry = ManagedProcess(name="dapr-sentry", argv=[], state_dir=self.state_dir)
        self.sidecars = sidecar_specs(settings)
        self.daprds = {
            app: ManagedProcess(
                name=f"daprd-{spec.app_id}", argv=[], state_dir=self.state_dir, cwd=PROJECT_ROOT
            )
            for app, spec in self.sidecars.items()
        }
        self.daprd = self.daprds["review"]

    # --- install -------------------------------------------------------------------------

    @property
    def build_dir(self) -> Path:
        name = f"dapr-{self.dapr.version}-b{BUILD_REVISION}"
        return self.settings.stack.cache_dir / "dapr" / name

    def binaries(self) -> dict[str, Path]:
        """Reuse an installed runtime (PATH or ~/.dapr/bin) whose daprd has our version.

        placement, scheduler and sentry have no --version flag: they are taken from the same
        directory as the matching daprd (that is how `dapr init --slim` lays them out; the
        released daprd has every component, the conversation ones included).
        """
        directories = [Path.home() / ".dapr" / "bin"]
        on_path = shutil.which("daprd")
        if on_path:
            directories.insert(0, Path(on_path).parent)
        for directory in directories:
            paths = {binary: directory / binary for binary in BINARIES}
            if all(path.is_file() for path in paths.values()) and (
                binary_version(paths["daprd"]) == self.dapr.version
            ):
                return paths
        return {binary: self.build_dir / "bin" / binary for binary in BINARIES}

    def install(self) -> None:
        if all(path.is_file() for path in self.binaries().values()):
            return
        go = require_tool(
            "go", "install Go >= 1.26 (https://go.dev/doc/install or `apt-get install golang`)"
        )
        label = (
            f"dapr {self.dapr.version}: build daprd, placement, scheduler, sentry (cold: ~5-20 min)"
        )
        with step(label):
            cache_entry(
                self.build_dir.parent, self.build_dir.name, lambda staging: self._build(go, staging)
            )

    def _build(self, go: str, staging: Path) -> None:
        version = self.dapr.version
        module = f"{BUILD_PACKAGE}@v{version}"
        work = staging / "module"
        work.mkdir()
        shutil.copy(WRAPPER_DIR / "go.mod", work / "go.mod")
        shutil.copytree(WRAPPER_DIR / "daprd", work / "daprd")
        wrapper = (work / "go.mod").read_text()
        if f"require {BUILD_PACKAGE} v{version}" not in wrapper:
            raise StackError(
                f"scripts/dapr/go.mod does not require {module}: update it with the version"
            )
        info = json.loads(
            run([go, "mod", "download", "-json", module], f"downloading {module}", cwd=work)
        )
        if "Error" in info:
            raise StackError(f"downloading {module}: {info['Error']}")
        dapr_sum = Path(info["Dir"]) / "go.sum"
        (work / "go.sum").write_text(
            dapr_sum.read_text()
            + f"{BUILD_PACKAGE} v{version} {info['Sum']}\n"
            + f"{BUILD_PACKAGE} v{version}/go.mod {info['GoModSum']}\n"
        )
        commit = info.get("Origin", {}).get("Hash", "")
        ldflags = " ".join(
            [
                "-s -w",
                f"-X {BUILD_PACKAGE}/pkg/buildinfo.version={version}",
                f"-X {BUILD_PACKAGE}/pkg/buildinfo.gitcommit={commit}",
                f"-X {BUILD_PACKAGE}/pkg/buildinfo.gitversion=v{version}",
                f"-X github.com/dapr/kit/logger.DaprVersion={version}",
            ]
        )
        run(
            [go, "build", "-mod=mod", "-tags", "stablecomponents", "-ldflags", ldflags,
             "-o", str(staging / "bin") + "/", "./daprd",
             *(f"{BUILD_PACKAGE}/cmd/{b}" for b in BINARIES if b != "daprd")],
            f"building Dapr {version}",
            cwd=work,
            env={"CGO_ENABLED": "0", "GOFLAGS": ""},
        )  # fmt: skip
        shutil.rmtree(work)

    # --- run -----------------------------------------------------------------------------

    def secrets_file(self, app: str = "review") -> Path:
        return self.state_dir / "dapr" / f"secrets-{app}.json"

    def _write_secrets(self, app: str) -> None:
        """The local file secret store's content, from settings (never committed)."""
        path = self.secrets_file(app)
        path.parent.mkdir(parents=True, exist_ok=True)
        kafka = credentials(self.settings, self.sidecars[app].principal)
        # daprd logs in as Dapr's own role, which owns dapr_state and may not connect to the
        # application database (`moderation.db.roles`; the stack gives it the dev password).
        db = self.settings.db
        state_store = db.model_copy(update={"user": DAPR_STATE_ROLE})
        # The configuration store reads the live configuration as its own read-only role.
        config_store = db.model_copy(update={"user": CONFIG_READER_ROLE})
        secrets = {
            "dapr-state-connection-string": state_store.libpq_dsn(db.dapr_state_name),
            "config-connection-string": config_store.libpq_dsn(db.name),
            "kafka-sasl-password": kafka.password if kafka else "",
        }
        if app == "agent":
            # The conversation component `agent-llm` (scoped to the agent service).
            secrets["llm-api-key"] = self.settings.llm.api_key.get_secret_value()
        path.write_text(json.dumps(secrets, indent=2))
        path.chmod(0o600)

    def sidecar_env(self, app: str = "review") -> dict[str, str]:
        """Values the components read through `envRef`: each app's pub/sub acts as its own
        Kafka principal."""
        kafka = credentials(self.settings, self.sidecars[app].principal)
        return {
            "MODERATION_KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
            "MODERATION_KAFKA_SASL_USERNAME": (kafka.username if kafka else ""),
            "MODERATION_DAPR_SECRETS_FILE": str(self.secrets_file(app)),
            # The conversation component's server (components/conversation-llm.yaml).
            "MODERATION_LLM_BASE_URL": self.settings.llm.base_url,
            "MODERATION_LLM_MODEL": self.settings.llm.model,
        }

    def _start_control_plane(
        self,
        process: ManagedProcess,
        grpc_port: int,
        healthz_port: int,
        metrics_port: int,
        extra_flags: dict[str, object],
        extra_ports: list[int],
    ) -> None:
        """placement and scheduler share their flags for ports, loopback and health."""
        if process.running():
            return
        ensure_ports_free(process.name, [grpc_port, healthz_port, metrics_port, *extra_ports])
        binary = self.binaries()[process.name.removeprefix("dapr-")]
        process.argv = [
            str(binary),
            *_flags(
                {
                    "port": grpc_port,
                    "listen-address": LOOPBACK,
                    "healthz-port": healthz_port,
                    "healthz-listen-address": LOOPBACK,
                    "metrics-port": metrics_port,
                    "metrics-listen-address": LOOPBACK,
                    **extra_flags,
                }
            ),
        ]
        with step(f"dapr: start {process.name} on {LOOPBACK}:{grpc_port}"):
            process.start()
            wait_for_process(process, process.name, partial(_healthz, healthz_port), 120)

    # --- identity (Sentry) ---------------------------------------------------------------

    @property
    def credentials_dir(self) -> Path:
        """Sentry's issuer credentials: it generates a root and an issuer here on first start."""
        return self.state_dir / "dapr" / "sentry"

    @property
    def trust_anchors_file(self) -> Path:
        return self.credentials_dir / "ca.crt"

    def _control_plane_mtls(self) -> dict[str, object]:
        """Flags that make placement and scheduler take their identity from Sentry and talk
        mTLS to every daprd."""
        if not self.dapr.mtls:
            return {}
        return {
            "tls-enabled": "true",
            "trust-domain": CONTROL_PLANE_TRUST_DOMAIN,
            "trust-anchors-file": self.trust_anchors_file,
            "sentry-address": f"{LOOPBACK}:{self.dapr.sentry_port}",
        }

    def _start_sentry(self) -> None:
        d = self.dapr
        # The issuer's private key lives here: only the stack's user may read it.
        self.credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.credentials_dir.chmod(0o700)
        config = self.state_dir / "dapr" / "sentry-config.yaml"
        config.write_text(yaml.safe_dump(_sentry_configuration()))
        self._start_control_plane(
            self.sentry, d.sentry_port, d.sentry_healthz_port, d.sentry_metrics_port,
            extra_flags={
                "issuer-credentials": self.credentials_dir,
                "trust-domain": CONTROL_PLANE_TRUST_DOMAIN,
                "config": config,
                "mode": "standalone",
            },
            extra_ports=[],
        )  # fmt: skip
        if not self.trust_anchors_file.is_file():
            raise StackError(f"dapr-sentry started but wrote no {self.trust_anchors_file}")

    def sidecar_config(self, app: str) -> Path:
        """The app's daprd configuration: the shared one (tracing, metrics) plus the app's
        access-control policy, written into the state dir when its daprd starts."""
        path = self.state_dir / "dapr" / f"config-{app}.yaml"
        configuration = yaml.safe_load(CONFIG_FILE.read_text())
        configuration["metadata"]["name"] = f"moderation-config-{app}"
        spec = self.sidecars[app]
        configuration["spec"]["accessControl"] = access_control(spec, self.dapr.trust_domain)
        if spec.workflow_retention_hours is not None:
            configuration["spec"]["workflow"] = workflow_spec(spec.workflow_retention_hours)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(configuration, sort_keys=False))
        return path

    def start(self) -> None:
        d = self.dapr
        if d.mtls:
            self._start_sentry()
        self._start_control_plane(
            self.placement, d.placement_port, d.placement_healthz_port, d.placement_metrics_port,
            extra_flags=self._control_plane_mtls(), extra_ports=[],
        )  # fmt: skip
        scheduler_data = self.state_dir / "dapr" / "scheduler"
        scheduler_data.mkdir(parents=True, exist_ok=True)
        peer = f"http://{LOOPBACK}:{d.scheduler_etcd_peer_port}"
        self._start_control_plane(
            self.scheduler, d.scheduler_port, d.scheduler_healthz_port, d.scheduler_metrics_port,
            extra_flags={
                "etcd-data-dir": scheduler_data,
                "etcd-client-port": d.scheduler_etcd_client_port,
                "etcd-client-listen-address": LOOPBACK,
                "etcd-initial-cluster": f"dapr-scheduler-server-0={peer}",
                **self._control_plane_mtls(),
            },
            extra_ports=[d.scheduler_etcd_client_port, d.scheduler_etcd_peer_port],
        )  # fmt: skip
        self.start_sidecar()

    def llm_endpoint(self, base_url: str) -> Path:
        """The agent's daprd's own resources: the HTTPEndpoint in front of the model server
        (`agent_service.llm_http_endpoint`), whose calls run under the endpoint's resiliency
        policy (`components/resiliency.yaml`). Written when the daprd starts: its baseUrl is
        the server the agent service is pointed at (the local adapter, or a test's server)."""
        directory = self.state_dir / "dapr" / "resources-agent"
        directory.mkdir(parents=True, exist_ok=True)
        service = self.settings.agent_service
        endpoint = {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "HTTPEndpoint",
            "metadata": {"name": service.llm_http_endpoint},
            "spec": {"baseUrl": endpoint_origin(base_url)},
            "scopes": [service.app_id],
        }
        (directory / "llm-endpoint.yaml").write_text(yaml.safe_dump(endpoint, sort_keys=False))
        return directory

    def start_sidecar(
        self, *, app_port: int | None = None, app: str = "review", llm_base_url: str | None = None
    ) -> None:
        """Start a Dapr app's daprd (tests restart it to prove workflows are durable).

        With `app_port`, daprd talks to the app there (pub/sub deliveries, workflow work);
        without, it serves only the building blocks (the stack's default for the review
        service's: the service may not run). The agent's daprd fronts the model server at
        `llm_base_url` (default: the settings' `llm.base_url`).
        """
        process, spec = self.daprds[app], self.sidecars[app]
        if process.running():
            return
        d = self.dapr
        channel = {"app-port": app_port, "app-channel-address": LOOPBACK} if app_port else {}
        ensure_ports_free(
            f"daprd ({spec.app_id})", [spec.http_port, spec.grpc_port, spec.metrics_port]
        )
        self._write_secrets(app)
        mtls: dict[str, object] = {}
        identity: dict[str, str] = {}
        if d.mtls:
            mtls = {
                "enable-mtls": "true",
                "sentry-address": f"{LOOPBACK}:{d.sentry_port}",
                "control-plane-trust-domain": CONTROL_PLANE_TRUST_DOMAIN,
            }
            identity = {
                "DAPR_TRUST_ANCHORS": self.trust_anchors_file.read_text(),
                "NAMESPACE": NAMESPACE,
            }
        own_resources: list[str] = []
        if app == "agent":
            resources = self.llm_endpoint(llm_base_url or self.settings.llm.base_url)
            own_resources = ["--resources-path", str(resources)]
        process.argv = [
            str(self.binaries()["daprd"]),
            *_flags(
                {
                    "app-id": spec.app_id,
                    "mode": "standalone",
                    "dapr-http-port": spec.http_port,
                    "dapr-grpc-port": spec.grpc_port,
                    "dapr-listen-addresses": LOOPBACK,
                    "metrics-port": spec.metrics_port,
                    "metrics-listen-address": LOOPBACK,
                    "placement-host-address": f"{LOOPBACK}:{d.placement_port}",
                    "scheduler-host-address": f"{LOOPBACK}:{d.scheduler_port}",
                    "resources-path": COMPONENTS_DIR,
                    "config": self.sidecar_config(app),
                    "log-level": "info",
                    **channel,
                    **mtls,
                }
            ),
            *own_resources,
        ]
        # daprd reads its two tokens from the environment (self-hosted mode).
        process.env = self.sidecar_env(app) | stack_tokens(self.settings) | identity
        label = (
            f"dapr: start daprd for {spec.app_id} (http {spec.http_port}, grpc {spec.grpc_port})"
        )
        with step(label):
            process.start()
            # With an app, /healthz waits for the app; the building blocks are ready before that.
            endpoint = f"http://{LOOPBACK}:{spec.http_port}"
            ready = partial(_sidecar_ready, endpoint, outbound=app_port is not None)
            wait_for_process(process, f"daprd ({spec.app_id})", ready, 120)

    def sidecar_healthy(self, app: str = "review") -> bool:
        """daprd's /v1.0/healthz answers 204 once components and actors are ready."""
        return _sidecar_ready(f"http://{LOOPBACK}:{self.sidecars[app].http_port}", outbound=False)

    def stop_sidecar(self, *, crash: bool = False, app: str = "review") -> None:
        if crash:
            self.daprds[app].kill()
        else:
            self.daprds[app].stop()

    def stop(self) -> None:
        for process in (*self.daprds.values(), self.scheduler, self.placement, self.sentry):
            process.stop()

    def status(self) -> list[ComponentStatus]:
        d = self.dapr
        rows = []
        checks: list[tuple[ManagedProcess, str, Callable[[], bool]]] = []
        if d.mtls:
            sentry_ready = partial(_healthz, d.sentry_healthz_port)
            checks.append((self.sentry, f"127.0.0.1:{d.sentry_port}", sentry_ready))
        checks += [
            (
                self.placement,
                f"127.0.0.1:{d.placement_port}",
                partial(_healthz, d.placement_healthz_port),
            ),
            (
                self.scheduler,
                f"127.0.0.1:{d.scheduler_port}",
                partial(_healthz, d.scheduler_healthz_port),
            ),
        ]
        for app, spec in self.sidecars.items():
            # `stack up` starts the review service's daprd; the others come with their app.
            if app != "review" and not self.daprds[app].running():
                continue
            endpoint = f"http://{LOOPBACK}:{spec.http_port} grpc:{spec.grpc_port}"
            checks.append((self.daprds[app], endpoint, partial(self.sidecar_healthy, app)))
        for process, endpoint, probe in checks:
            pid = process.pid()
            healthy = pid is not None and probe()
            rows.append(
                ComponentStatus(
                    name=process.name,
                    running=pid is not None,
                    healthy=healthy,
                    endpoint=endpoint,
                    pid=pid,
                    rss_mib=rss_mib(pid) if pid else None,
                    detail=f"Dapr {d.version}",
                )
            )
        return rows


def access_control(spec: SidecarSpec, trust_domain: str) -> dict[str, object]:
    """Dapr's access-control policy for an app: deny every caller but `spec.allowed_callers`.

    daprd checks the caller's SPIFFE id (issued by Sentry, proven by mTLS) against this policy
    on every service invocation that reaches the app.
    """
    return {
        "defaultAction": "deny",
        "trustDomain": trust_domain,
        "policies": [
            {
                "appId": caller,
                "defaultAction": "allow",
                "trustDomain": trust_domain,
                "namespace": NAMESPACE,
            }
            for caller in spec.allowed_callers
        ],
    }


def workflow_spec(retention_hours: float) -> dict[str, object]:
    """daprd's workflow settings: purge a finished workflow's state `retention_hours` after it
    ended (without, every run's history stays in the state store for ever)."""
    seconds = round(retention_hours * 3600)
    return {"stateRetentionPolicy": {"anyTerminal": f"{seconds}s"}}


def _sentry_configuration() -> dict[str, object]:
    """Sentry's own configuration: workload certificates live a day and are renewed by daprd."""
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "daprsystem"},
        "spec": {"mtls": {"enabled": True, "workloadCertTTL": "24h", "allowedClockSkew": "15m"}},
    }


def _flags(flags: dict[str, object]) -> list[str]:
    """{"app-id": "x", "port": 1} -> ["--app-id", "x", "--port", "1"]."""
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def _sidecar_ready(endpoint: str, *, outbound: bool) -> bool:
    """/v1.0/healthz (everything, the app included) or /v1.0/healthz/outbound (components and
    building blocks, app or not) answers 204."""
    path = "/v1.0/healthz/outbound" if outbound else "/v1.0/healthz"
    return http_ok(f"{endpoint}{path}", statuses=(204,))


def _healthz(port: int) -> bool:
    return http_ok(f"http://{LOOPBACK}:{port}/healthz", statuses=(200, 204))
