"""Offline checks of the containers: docker/*.Dockerfile, .dockerignore, docker-compose.yaml.

Docker cannot run here, so nothing is built or started. What is checked without it: hadolint on
every Dockerfile; the compose file against the Compose Specification schema (vendored from
compose-go, see tests/data/README.md); and what the files must keep: non-root multi-stage images
on pinned bases, pinned images everywhere, healthchecks, secrets only from the environment or
secret files, and the ports, versions and names of the settings. `tests/integration/
test_containers.py` loads the compose file with compose-go itself (`docker compose config`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no types-jsonschema in the dev group
import pytest
import yaml

from moderation.db.roles import CONFIG_READER_ROLE, DAPR_STATE_ROLE, SERVICE_GRANTS
from moderation.devtools.stack.dapr import sidecar_specs
from moderation.devtools.stack.services import service_specs
from moderation.kafka_auth import PRINCIPALS, acl_grants
from moderation.services.api.workflows import DaprReviewWorkflows
from moderation.settings import (
    PROJECT_ROOT,
    DaprSettings,
    DatabaseSettings,
    Settings,
    ZipkinSettings,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yaml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = {
    "service": DOCKER / "service.Dockerfile",
    "dashboard": DOCKER / "dashboard.Dockerfile",
    "nightly": DOCKER / "nightly.Dockerfile",
}
# The build contexts' images (docker-compose.yaml builds them; never pulled).
LOCAL_IMAGES = {
    "moderation-service:local",
    "moderation-dashboard:local",
    "moderation-nightly:local",
}
# Images with neither a shell nor an HTTP client (distroless / a bare binary): a container
# healthcheck cannot run in them. The Dapr ones show through the review and agent services'
# /readyz; the collector is best effort (spans are dropped while it is down).
NO_PROBE_TOOL = {
    "placement": "daprio/placement",
    "scheduler": "daprio/scheduler",
    "review-dapr": "daprio/daprd",
    "agent-dapr": "daprio/daprd",
    "worker-dapr": "daprio/daprd",
    "otel-collector": "otel/opentelemetry-collector-contrib",
}
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|api[_-]?key|token|credential)")
# The Kafka principals of the compose stack: moderation/kafka_auth.py's, and `nightly` and `mcp`
# (no ACL: the nightly job and the MCP server use no Kafka, their settings load only with one).
COMPOSE_KAFKA_PRINCIPALS = (*PRINCIPALS, "nightly", "mcp")
# Who connects as whom (`admin`: the `topics` service, which creates topics and ACLs).
KAFKA_LOGINS = {"topics": "admin", "api": "api", "base-model": "worker", "worker": "worker",
                "recorder": "recorder", "review": "review", "agent": "agent",
                "webhook-dispatcher": "dispatcher", "nightly": "nightly",
                "mcp": "mcp"}  # fmt: skip
KAFKA_PASSWORD_FILE = "/run/secrets/kafka_password"
# Each Dapr app's daprd (docker-compose.yaml): its app container, whose network namespace it
# shares, and the Kafka principal its pub/sub component logs in as.
DAPRDS = {"review-dapr": ("review", "review"), "agent-dapr": ("agent", "agent"),
          "worker-dapr": ("worker", "worker")}  # fmt: skip
# The agent pair's own Dapr tokens (docker/dapr_secrets.py AGENT_TOKENS_FILE).
AGENT_TOKENS_ENV_FILE = "./.secrets/dapr-agent-tokens.env"
# The worker pair's own Dapr API token (docker/dapr_secrets.py WORKER_TOKENS_FILE).
WORKER_TOKENS_ENV_FILE = "./.secrets/dapr-worker-tokens.env"
# The live configuration's store (components/), which every daprd loads.
CONFIGSTORE_FILE = ROOT / "components" / "configstore-postgresql.yaml"


# --- helpers -------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages(path: Path) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base image, stage name, instructions) for each FROM of a Dockerfile."""
    result: list[tuple[str, str, list[tuple[str, str]]]] = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            result.append((words[0], name, []))
        elif result:
            result[-1][2].append((keyword, arguments))
    return result


def image_tag(image: str) -> str:
    """The tag of `repository[:tag]` (a registry port is not a tag); '' without one."""
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def env_values(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for item in shlex.split(arguments):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def command_flags(command: list[str]) -> dict[str, str]:
    """`["./daprd", "--app-id", "x", ...]` -> {"app-id": "x", ...} (every flag takes a value)."""
    flags = command[1:]
    assert len(flags) % 2 == 0, command
    return {
        name.removeprefix("--"): value for name, value in zip(flags[::2], flags[1::2], strict=True)
    }


def probe_port(service: dict[str, Any]) -> int:
    """The port of the URL a service's healthcheck asks."""
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", " ".join(service["healthcheck"]["test"]))
    assert match, service["healthcheck"]
    return int(match.group(1))


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    dependencies: dict[str, dict[str, Any]] = service.get("depends_on", {})
    return dependencies


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, scalar) of a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")
    else:
        yield path, node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


# --- Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    result = subprocess.run(  # noqa: S603 - fixed argv
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_warning(tmp_path: Path) -> None:
    """The threshold really bites: an unpinned base image is a warning (DL3007), so a failure."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nUSER 10001\n")
    result = subprocess.run(  # noqa: S603 - fixed argv
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_the_docker_folder_has_the_three_images() -> None:
    assert sorted(DOCKER.glob("*.Dockerfile")) == sorted(DOCKERFILES.values())


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_on_pinned_bases(name: str) -> None:
    built = stages(DOCKERFILES[name])
    assert len(built) >= 2
    names = {stage_name for _, stage_name, _ in built}
    for base, _, _ in built:
        if base in names:
            continue  # a stage of this file
        assert image_tag(base), f"{name}: FROM {base} has no tag"
        assert image_tag(base) != "latest", f"{name}: FROM {base}"
    # The venv links to the builder's interpreter: the runtime must have the same one.
    assert built[0][0] == built[-1][0] == "python:3.11-slim-bookworm"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_as_a_non_root_user(name: str) -> None:
    runtime = stages(DOCKERFILES[name])[-1][2]
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    assert users, f"{name}: the runtime stage sets no USER"
    # Numeric, so that Kubernetes' runAsNonRoot can verify it; 10001 as in k8s/.
    assert users[-1] == "10001:10001"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_installs_the_lock_with_the_makefiles_uv(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    uv_version = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert uv_version is not None
    assert f"pip install --no-cache-dir uv=={uv_version.group(1)}\n" in text
    syncs = re.findall(r"uv sync [^\n]*", text)
    assert len(syncs) == 2  # dependencies, then the project
    extra = " --extra train" if name == "nightly" else ""
    assert syncs[0] == f"uv sync --locked --no-dev{extra} --no-install-project"
    assert syncs[1] == f"uv sync --locked --no-dev{extra}"
    assert "--extra vllm" not in text  # deployment-only; vLLM has its own image


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runtime_stage_copies_only_the_venv_and_the_code(name: str) -> None:
    runtime = stages(DOCKERFILES[name])[-1][2]
    copies = [arguments.split() for keyword, arguments in runtime if keyword == "COPY"]
    from_stages = {words[0].removeprefix("--from=") for words in copies if "--from" in words[0]}
    assert from_stages <= {"builder", "dataset"}
    sources = {words[0] for words in copies if not words[0].startswith("--")}
    assert sources <= {"moderation", "hitl_dashboard", "jobs", "data", "pyproject.toml"}
    env = env_values(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/app/.venv/bin:")
    for variable in env:
        assert not SECRET_NAME.search(variable), f"{name}: ENV {variable} in an image"
    assert not [a for k, a in dockerfile_instructions(DOCKERFILES[name]) if k == "ARG"]


def test_entrypoints_and_commands() -> None:
    expected = {"service": '["--help"]', "dashboard": '["dashboard"]', "nightly": '["nightly"]'}
    for name, path in DOCKERFILES.items():
        runtime = stages(path)[-1][2]
        assert ("ENTRYPOINT", '["moderation"]') in runtime
        assert [a for k, a in runtime if k == "CMD"] == [expected[name]]


def test_only_the_dashboard_image_has_a_healthcheck() -> None:
    """One port per image only for the dashboard; the service image's port depends on its
    command (compose probes each service) and the nightly job is a one-shot."""
    for name, path in DOCKERFILES.items():
        checks = [a for k, a in stages(path)[-1][2] if k == "HEALTHCHECK"]
        if name == "dashboard":
            assert len(checks) == 1 and "http://127.0.0.1:8501/_stcore/health" in checks[0]
        else:
            assert checks == []


@pytest.mark.parametrize("name", ["service", "nightly"])
def test_images_carry_the_data_and_the_built_dataset(name: str) -> None:
    runtime = stages(DOCKERFILES[name])[-1][2]
    copies = [arguments for keyword, arguments in runtime if keyword == "COPY"]
    assert "data ./data" in copies  # data/policy/ is read by the agent at run time
    cache = env_values(runtime)["MODERATION_STACK__CACHE_DIR"]
    assert f"--from=dataset {cache} {cache}" in copies
    dataset = [s for s in stages(DOCKERFILES[name]) if s[1] == "dataset"][0]
    assert env_values(dataset[2])["MODERATION_STACK__CACHE_DIR"] == cache
    assert any("data/build_dataset.py" in a for k, a in dataset[2] if k == "RUN")


def test_dockerignore_is_an_allowlist_of_what_the_dockerfiles_copy() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for path in DOCKERFILES.values():
        for keyword, arguments in dockerfile_instructions(path):
            words = arguments.split()
            if keyword == "COPY" and not words[0].startswith("--from"):
                copied.update(words[:-1])
    assert included == copied
    for never in (
        ".git",
        ".venv",
        ".stack",
        ".models",
        ".nightly",
        ".secrets",
        "tests",
        "test-artifacts",
        "bench-results",
        "k8s",
        "scripts",
        "components",
    ):
        assert never not in included
    assert "**/__pycache__" in lines  # not even from the allowed folders


# --- docker-compose.yaml: schema -----------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_schema_check_catches_a_typo() -> None:
    broken = load_compose()
    broken["services"]["api"]["healtcheck"] = broken["services"]["api"].pop("healthcheck")
    errors = schema_errors(broken)
    assert len(errors) == 1
    assert errors[0].startswith("services.api:") and "'healtcheck' was unexpected" in errors[0]


def test_schema_check_catches_a_wrong_type() -> None:
    broken = load_compose()
    broken["services"]["api"]["ports"] = "8000:8000"  # must be a list
    assert schema_errors(broken)


# --- docker-compose.yaml: structure --------------------------------------------------------------


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert image_tag(image) not in ("", "latest"), f"{name}: image {image!r}"
        if "build" in service:
            assert image in LOCAL_IMAGES, name
            assert (ROOT / service["build"]["dockerfile"]).is_file()


def test_images_follow_the_settings_and_the_lock(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    assert services["kafka"]["image"] == f"apache/kafka:{settings.kafka.version}"
    for name, image in (("placement", "placement"), ("scheduler", "scheduler")):
        assert services[name]["image"] == f"daprio/{image}:{settings.dapr.version}"
    for name in DAPRDS:
        assert services[name]["image"] == f"daprio/daprd:{settings.dapr.version}", name
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (vllm_pin,) = extras["vllm"]
    assert services["vllm"]["image"] == f"vllm/vllm-openai:v{vllm_pin.split('==')[1]}"
    assert services["postgres"]["image"] == "postgres:15"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot
        if name in NO_PROBE_TOOL:
            assert service["image"].startswith(NO_PROBE_TOOL[name] + ":")
            assert "ports" not in service
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
    for name, service in services.items():
        if "ports" in service:
            assert "healthcheck" in service, f"{name} publishes a port without a healthcheck"


def test_published_ports_are_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {
        "api": ["127.0.0.1:8000:8000"],
        "mcp": ["127.0.0.1:8006:8006"],  # its clients are the API's
        "dashboard": ["127.0.0.1:8501:8501"],
        "prometheus": ["127.0.0.1:9090:9090"],
    }


def test_dependencies_exist_and_wait_for_what_they_can(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            target = services[dependency]
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dependency}'s health"
            elif condition["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no"
            else:
                assert condition["condition"] == "service_started"
        network_mode = service.get("network_mode", "")
        if network_mode.startswith("service:"):
            assert network_mode.removeprefix("service:") in depends_on(service)


def test_the_services_run_their_command_and_probe_its_port(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    ports = {
        "api": ("api", settings.api.internal_port),  # readiness is on the internal listener
        "worker": ("worker", settings.worker.classifier_health_port),
        "recorder": ("recorder", settings.worker.recorder_health_port),
        "review": ("review-service", settings.review.service_port),
        "agent": ("agent-service", settings.agent_service.service_port),
        "mcp": ("mcp-server", settings.mcp.port),
        "dashboard": ("dashboard", settings.dashboard.port),
    }
    # What each probes (moderation/devtools/stack/services.py `ready_path`).
    paths = {"dashboard": "/_stcore/health", "mcp": "/healthz"}
    for name, (command, port) in ports.items():
        assert services[name]["command"] == [command]
        assert probe_port(services[name]) == port
        path = paths.get(name, "/readyz")
        assert f"http://127.0.0.1:{port}{path}'" in " ".join(services[name]["healthcheck"]["test"])
    assert service_specs(settings)["mcp"].ready_path == paths["mcp"]


def test_vllm_runs_only_under_the_gpu_profile(services: dict[str, dict[str, Any]]) -> None:
    gpu = {name for name, s in services.items() if "gpu" in s.get("profiles", [])}
    assert gpu == {"vllm"}
    assert services["vllm"]["profiles"] == ["gpu"]
    for name, service in services.items():
        assert "vllm" not in depends_on(service), f"{name} cannot start without a GPU"
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        if name != "vllm":
            assert "devices" not in devices, name
    (device,) = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_vllm_serves_lora_adapters_the_nightly_writes(
    services: dict[str, dict[str, Any]],
) -> None:
    vllm, nightly = services["vllm"], services["nightly"]
    assert vllm["entrypoint"] == ["vllm", "serve"]
    command = vllm["command"]
    for flag in ("--enable-lora", "--enable-auto-tool-choice"):
        assert flag in command
    assert command[command.index("--served-model-name") + 1] == "moderation-base"
    assert command[command.index("--tool-call-parser") + 1] == "hermes"
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # The adapters' base model is the served model; the key comes from the environment.
    base_model = nightly["environment"]["MODERATION_NIGHTLY__LORA__BASE_MODEL"]
    assert command[0] == base_model
    assert nightly["environment"]["MODERATION_LLM__MODEL"] == "moderation-base"
    assert nightly["environment"]["MODERATION_NIGHTLY__LORA__ADMIN_URL"] == "http://vllm:8000"
    # Both mount the models volume where the image puts the adapters.
    adapter_dir = env_values(stages(DOCKERFILES["nightly"])[-1][2])[
        "MODERATION_NIGHTLY__LORA__ADAPTER_DIR"
    ]
    assert "models:/models" in nightly["volumes"]
    assert "models:/models:ro" in vllm["volumes"]
    assert adapter_dir.startswith("/models/")


def test_nightly_is_a_one_shot_job(services: dict[str, dict[str, Any]]) -> None:
    nightly = services["nightly"]
    assert nightly["profiles"] == ["jobs"]
    assert nightly["restart"] == "no"
    assert nightly["command"] == ["nightly"]
    assert nightly["build"]["dockerfile"] == "docker/nightly.Dockerfile"
    jobs = {name for name, s in services.items() if "jobs" in s.get("profiles", [])}
    assert jobs == {"nightly"}


def test_models_volume_is_where_the_images_keep_models(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("service", "nightly"):
        env = env_values(stages(DOCKERFILES[name])[-1][2])
        assert env["MODERATION_MODELS__ARTIFACT_DIR"] == "/models"
    # The worker serves what the nightly (or the review service's Dapr job) promotes, and
    # never writes there (issue 11): only the writers mount the volume read-write.
    for name in ("review", "nightly", "base-model"):
        assert "models:/models" in services[name]["volumes"], name
    # The MCP server loads the same fast model as the worker, read-only too.
    for name in ("worker", "mcp"):
        assert "models:/models:ro" in services[name]["volumes"], name
        assert "models:/models" not in services[name]["volumes"], name
        assert depends_on(services[name])["base-model"] == {
            "condition": "service_completed_successfully"
        }, name


def test_the_api_writes_posts_images_where_the_worker_reads_them(
    services: dict[str, dict[str, Any]],
) -> None:
    # README "Images": the API stores a post's images, the worker's detector reads them.
    assert services["api"]["environment"]["MODERATION_IMAGES__STORE__LOCAL_DIR"] == "/images"
    assert "images:/images" in services["api"]["volumes"]
    assert "images:/images:ro" in services["worker"]["volumes"]


# --- secrets -------------------------------------------------------------------------------------


def container_files() -> list[Path]:
    files = [COMPOSE_FILE, ROOT / ".dockerignore", ROOT / ".hadolint.yaml"]
    files += [p for p in sorted(DOCKER.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return files


def test_no_secret_literal_in_any_container_file() -> None:
    from moderation.settings import DEV_DB_PASSWORD, DEV_LLM_API_KEY

    for path in container_files():
        text = path.read_text()
        for literal in (DEV_DB_PASSWORD, DEV_LLM_API_KEY):
            assert literal not in text, f"{path.name} contains a development secret"
        # A secret variable may be required (`${X:?...}`) but never defaulted (`${X:-...}`).
        for match in re.finditer(r"\$\{(\w+)(:?[-?])?", text):
            if SECRET_NAME.search(match.group(1)):
                assert match.group(2) == ":?", f"{path.name}: {match.group(0)}"


def test_compose_secrets_come_from_the_environment_or_files(
    compose: dict[str, Any],
) -> None:
    declared = set(compose["secrets"])
    for path, value in walk(compose["services"]):
        key = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
        if key == "secrets" or (key == "source" and ".secrets[" in path):
            assert value in declared, path  # a service's reference to a declared secret
            continue
        if not SECRET_NAME.search(key) or not isinstance(value, str):
            continue
        required = re.fullmatch(r"\$\{\w+:\?[^}]+\}", value)
        from_secret = value.startswith("/run/secrets/")
        assert required or from_secret, f"{path} = {value!r}"
    assert compose["secrets"] == {
        "db_password": {"environment": "MODERATION_DB__PASSWORD"},
        "dapr_secrets": {"file": "./.secrets/dapr-secrets.json"},
        "dapr_agent_secrets": {"file": "./.secrets/dapr-agent-secrets.json"},
        "dapr_worker_secrets": {"file": "./.secrets/dapr-worker-secrets.json"},
        "db_dapr_password": {"file": "./.secrets/postgres/dapr"},
        **{f"kafka_{p}": {"file": f"./.secrets/kafka/{p}"} for p in COMPOSE_KAFKA_PRINCIPALS},
    }
    assert ".secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_dashboard_gets_no_secret(services: dict[str, dict[str, Any]]) -> None:
    assert set(services["dashboard"]["environment"]) == {"MODERATION_DASHBOARD__API_URL"}
    assert "secrets" not in services["dashboard"]


# --- PostgreSQL, Kafka, Dapr, Prometheus ---------------------------------------------------------


def test_postgres_matches_the_settings(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    postgres = services["postgres"]
    env = postgres["environment"]
    assert env["POSTGRES_USER"] == settings.db.user
    assert env["POSTGRES_DB"] == settings.db.name
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert postgres["secrets"] == ["db_password", "db_dapr_password"]
    # Dapr's state store database is its own role's, created with that role's password; nobody
    # but the owner (every compose service logs in as the owner) may connect to the read model.
    init = (DOCKER / "postgres" / "init" / "10-dapr-state.sql").read_text()
    assert "\\set password `cat /run/secrets/db_dapr_password`\n" in init
    assert f"CREATE ROLE {DAPR_STATE_ROLE} WITH LOGIN PASSWORD :'password';" in init
    assert f"CREATE DATABASE {settings.db.dapr_state_name} OWNER {DAPR_STATE_ROLE};" in init
    assert 'REVOKE CONNECT ON DATABASE :"DBNAME" FROM PUBLIC;' in init
    assert "./docker/postgres/init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    app_env = services["api"]["environment"]
    assert (app_env["MODERATION_DB__HOST"], app_env["MODERATION_DB__PORT"]) == ("postgres", "5432")


def test_kafka_matches_the_settings(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    env = services["kafka"]["environment"]
    assert env["KAFKA_NUM_PARTITIONS"] == str(settings.kafka.partitions)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "SASL_PLAINTEXT://kafka:9092"
    # The topics are created from the settings by the project's own function.
    assert "ensure_topics(get_settings())" in services["topics"]["entrypoint"][-1]
    assert services["topics"]["restart"] == "no"
    for name in ("api", "worker", "recorder", "review", "agent", "webhook-dispatcher"):
        assert depends_on(services[name])["topics"] == {
            "condition": "service_completed_successfully"
        }


# --- Kafka: SASL/SCRAM and one principal per service (issue 11, "forged events") ---------------


def kafka_secrets(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each `kafka_*` secret a service mounts."""
    found: list[tuple[str, str]] = []
    for entry in service.get("secrets", []):
        source, target = (entry, entry) if isinstance(entry, str) else (
            entry["source"], entry.get("target", entry["source"]))  # fmt: skip
        if source.startswith("kafka_"):
            found.append((source, target))
    return found


def test_compose_kafka_requires_sasl_and_acls(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = kafka["environment"]
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}  # no listener without authentication
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    assert set(listeners) <= set(protocols)
    assert listeners["CONTROLLER"].startswith("localhost:")  # the one node's own quorum
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in protocols
    assert "ports" not in kafka  # never on the host
    assert kafka["entrypoint"] == ["bash", "/opt/moderation/start.sh"]
    assert "./docker/kafka/start.sh:/opt/moderation/start.sh:ro" in kafka["volumes"]
    script = (DOCKER / "kafka" / "start.sh").read_text()
    for line in (
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin",
        "allow.everyone.if.no.acl.found=false",
        "sasl.enabled.mechanisms=$MECHANISM",
    ):
        assert line in script, line
    assert f"MECHANISM={Settings().kafka.sasl_mechanism}\n" in script
    # The storage is formatted with every principal's credentials, each a mounted secret.
    principals = re.search(r"^PRINCIPALS=\(([^)]*)\)$", script, re.M)
    assert principals is not None
    assert tuple(principals.group(1).split()) == COMPOSE_KAFKA_PRINCIPALS
    assert kafka["secrets"] == [f"kafka_{p}" for p in COMPOSE_KAFKA_PRINCIPALS]
    # Healthy means an authenticated request was answered.
    assert "--command-config" in kafka["healthcheck"]["test"]


def test_each_compose_process_connects_as_its_own_kafka_principal(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, principal in KAFKA_LOGINS.items():
        service = services[name]
        env = service["environment"]
        assert env["MODERATION_KAFKA__USERNAME"] == principal, name
        assert env["MODERATION_KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert "MODERATION_KAFKA__PASSWORD" not in env, name  # from the secret, at start
        # Its own principal's password and no other, where the entrypoint reads it.
        assert kafka_secrets(service) == [(f"kafka_{principal}", "kafka_password")], name
        entrypoint = service["entrypoint"]
        assert entrypoint[:2] == ["sh", "-c"], name
        script = entrypoint[2].replace("$$", "$")  # as compose passes it (`$$` escapes `$`)
        assert script.startswith(f'MODERATION_KAFKA__PASSWORD="$(cat {KAFKA_PASSWORD_FILE})" ')
    # The services still run their own command through the image's `moderation`.
    for name in ("api", "worker", "recorder", "review", "agent", "webhook-dispatcher", "mcp",
                 "nightly"):  # fmt: skip
        assert services[name]["entrypoint"][2].endswith('exec moderation "$$@"'), name
    # Only the broker and those processes hold a Kafka password: never the dashboard, vLLM,
    # Prometheus or Dapr's control plane.
    holders = {name for name, service in services.items() if kafka_secrets(service)}
    assert holders == set(KAFKA_LOGINS) | {"kafka"}
    # Each daprd logs in as its app's principal (components/pubsub-kafka.yaml): the review
    # service's as `review`, the agent service's as `agent`, each with its own secrets file.
    for name, (_, principal) in DAPRDS.items():
        daprd = services[name]["environment"]
        assert daprd["MODERATION_KAFKA_SASL_USERNAME"] == principal, name
    secrets_files = {
        services[name]["environment"]["MODERATION_DAPR_SECRETS_FILE"] for name in DAPRDS
    }
    assert len(secrets_files) == len(DAPRDS)


def test_kafka_passwords_are_generated_once_and_given_to_daprd(tmp_path: Path) -> None:
    module = load_dapr_secrets_module()
    assert module.KAFKA_PRINCIPALS == COMPOSE_KAFKA_PRINCIPALS
    first = module.kafka_passwords(tmp_path / "kafka")
    assert set(first) == set(COMPOSE_KAFKA_PRINCIPALS)
    assert len(set(first.values())) == len(first)  # one password per principal
    for principal, password in first.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", password), principal  # start.sh's alphabet
        assert (tmp_path / "kafka" / principal).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "kafka").stat().st_mode & 0o777 == 0o700
    assert module.kafka_passwords(tmp_path / "kafka") == first  # kept, never regenerated
    # daprd's password is the `review` principal's, under the component's secretKeyRef key.
    pubsub = yaml.safe_load((ROOT / "components" / "pubsub-kafka.yaml").read_text())
    (sasl,) = [m for m in pubsub["spec"]["metadata"] if m["name"] == "saslPassword"]
    output = module.write_secrets("db", tmp_path / "dapr.json", first["review"])
    assert json.loads(output.read_text())[sasl["secretKeyRef"]["key"]] == first["review"]
    # Each daprd's file is the compose secret its service mounts, with its own principal's
    # password: `review` for the review service's daprd, `agent` for the agent service's.
    declared = load_compose()["secrets"]
    services = load_compose()["services"]
    assert {principal for _, principal in module.DAPRD_SECRETS.values()} == {
        principal for _, principal in DAPRDS.values()
    }
    for name, (_, principal) in DAPRDS.items():
        [secret] = services[name]["secrets"]
        target = services[name]["environment"]["MODERATION_DAPR_SECRETS_FILE"]
        assert target == f"/run/secrets/{secret}", name
        [(path, owner)] = [v for v in module.DAPRD_SECRETS.values() if v[1] == principal]
        assert (ROOT / declared[secret]["file"]).resolve() == path, name
        written = module.write_secrets("db", tmp_path / f"{name}.json", first[owner])
        assert json.loads(written.read_text())[sasl["secretKeyRef"]["key"]] == first[principal]
    secret_files = {
        name: (ROOT / s["file"]).resolve()
        for name, s in declared.items()
        if name.startswith("kafka_")
    }
    assert secret_files == {f"kafka_{p}": module.KAFKA_DIR / p for p in COMPOSE_KAFKA_PRINCIPALS}


def test_daprd_runs_next_to_the_review_service(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    daprd = services["review-dapr"]
    assert daprd["network_mode"] == "service:review"
    flags = command_flags(daprd["command"])
    assert daprd["command"][0] == "./daprd"
    assert flags["app-id"] == settings.dapr.app_id
    assert flags["app-port"] == str(settings.review.service_port)
    assert flags["dapr-http-port"] == str(settings.dapr.http_port)
    assert flags["dapr-grpc-port"] == str(settings.dapr.grpc_port)
    assert flags["metrics-port"] == str(settings.dapr.metrics_port)
    assert flags["placement-host-address"] == f"placement:{settings.dapr.placement_port}"
    assert flags["scheduler-host-address"] == f"scheduler:{settings.dapr.scheduler_port}"
    assert flags["resources-path"] == "/components"
    assert "./components:/components:ro" in daprd["volumes"]
    assert f"./docker/dapr/configuration.yaml:{flags['config']}:ro" in daprd["volumes"]
    # The api reaches that daprd through the review container.
    assert services["api"]["environment"]["MODERATION_DAPR__HOST"] == "review"


def test_daprd_runs_next_to_the_agent_service(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    daprd = services["agent-dapr"]
    assert daprd["network_mode"] == "service:agent"
    flags = command_flags(daprd["command"])
    assert daprd["command"][0] == "./daprd"
    agent = settings.agent_service
    assert flags["app-id"] == agent.app_id
    assert flags["app-port"] == str(agent.service_port)
    assert flags["app-channel-address"] == "127.0.0.1"
    assert flags["dapr-http-port"] == str(agent.dapr_http_port)
    assert flags["dapr-grpc-port"] == str(agent.dapr_grpc_port)
    assert flags["metrics-port"] == str(agent.dapr_metrics_port)
    # Nobody outside its network namespace calls it (the agent service dials 127.0.0.1).
    assert flags["dapr-listen-addresses"] == "127.0.0.1"
    assert agent.dapr_grpc_endpoint == f"127.0.0.1:{flags['dapr-grpc-port']}"
    # The same control plane, components and configuration as the review service's daprd, plus
    # its own resources: the HTTPEndpoint in front of vLLM (its default model route).
    review = command_flags(services["review-dapr"]["command"])
    for flag in ("placement-host-address", "scheduler-host-address", "config"):
        assert flags[flag] == review[flag], flag
    command = daprd["command"]
    resources = [command[i + 1] for i, flag in enumerate(command) if flag == "--resources-path"]
    assert resources == [review["resources-path"], "/agent-resources"]
    own = "./docker/dapr/agent:/agent-resources:ro"
    assert [v for v in daprd["volumes"] if v != own] == services["review-dapr"]["volumes"]
    endpoint = yaml.safe_load((PROJECT_ROOT / "docker/dapr/agent/llm-endpoint.yaml").read_text())
    assert endpoint["kind"] == "HTTPEndpoint"
    assert endpoint["metadata"]["name"] == agent.llm_http_endpoint
    assert endpoint["scopes"] == [agent.app_id]
    # The endpoint's origin is the agent's model server's (the compose services' llm.base_url).
    base_url = services["agent"]["environment"]["MODERATION_LLM__BASE_URL"]
    assert base_url.startswith(endpoint["spec"]["baseUrl"] + "/")
    # Its Kafka group is its app id: the one `acl_grants` gives `agent`.
    assert acl_grants(settings)["agent"].groups == (agent.app_id,)
    assert services["agent"]["command"] == ["agent-service"]
    assert depends_on(daprd)["agent"] == {"condition": "service_started"}


def test_daprd_runs_next_to_the_worker_for_the_live_configuration(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    """The worker's daprd serves it the Configuration API only: no app channel."""
    daprd = services["worker-dapr"]
    assert daprd["network_mode"] == "service:worker"
    flags = command_flags(daprd["command"])
    assert daprd["command"][0] == "./daprd"
    worker = settings.worker
    # The local stack's daprd for the worker (moderation/devtools/stack/dapr.py).
    assert flags["app-id"] == sidecar_specs(settings)["worker"].app_id == "classifier-worker"
    assert "app-port" not in flags and "app-channel-address" not in flags
    assert flags["dapr-http-port"] == str(worker.dapr_http_port)
    assert flags["dapr-grpc-port"] == str(worker.dapr_grpc_port)
    assert flags["metrics-port"] == str(worker.dapr_metrics_port)
    # Only the worker calls it, from the same network namespace (it dials 127.0.0.1).
    assert flags["dapr-listen-addresses"] == "127.0.0.1"
    # The same control plane, components and configuration as the review service's daprd.
    review = command_flags(services["review-dapr"]["command"])
    for flag in ("placement-host-address", "scheduler-host-address", "resources-path", "config"):
        assert flags[flag] == review[flag], flag
    assert daprd["volumes"] == services["review-dapr"]["volumes"]
    # Every daprd's ports differ: no two share a network namespace, but the settings keep the
    # local stack's three daprds apart on one host, and compose follows them.
    ports = [
        command_flags(services[name]["command"])[flag]
        for name in DAPRDS
        for flag in ("dapr-http-port", "dapr-grpc-port", "metrics-port")
    ]
    assert len(set(ports)) == len(ports)
    assert services["worker"]["command"] == ["worker"]
    assert depends_on(daprd)["worker"] == {"condition": "service_started"}
    for dependency in ("kafka", "postgres"):  # its pub/sub and its stores
        assert depends_on(daprd)[dependency] == {"condition": "service_healthy"}, dependency


def component_env_refs(app_id: str) -> set[str]:
    """The envRefs of the components a daprd of `app_id` loads (unscoped, or scoped to it)."""
    documents = [
        yaml.safe_load(p.read_text()) for p in sorted((ROOT / "components").glob("*.yaml"))
    ]
    return {
        item["envRef"]
        for document in documents
        if app_id in document.get("scopes", [app_id])
        for item in (document.get("spec", {}).get("metadata") or [])
        if "envRef" in item
    }


def test_components_get_every_env_ref_they_read(services: dict[str, dict[str, Any]]) -> None:
    env_refs = component_env_refs("review-service")
    daprd = services["review-dapr"]
    assert set(daprd["environment"]) == env_refs | {"DAPR_API_TOKEN", "APP_API_TOKEN"}
    secrets_file = daprd["environment"]["MODERATION_DAPR_SECRETS_FILE"]
    assert secrets_file == "/run/secrets/dapr_secrets" and daprd["secrets"] == ["dapr_secrets"]
    assert daprd["environment"]["MODERATION_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    # The agent service's and the worker's daprd: the same variables, their tokens from their
    # env files, each its own secrets file.
    pairs = (("agent-dapr", "dapr_agent_secrets", "agent-service"),
             ("worker-dapr", "dapr_worker_secrets", "classifier-worker"))  # fmt: skip
    for name, secret, app_id in pairs:
        other = services[name]
        assert set(other["environment"]) == component_env_refs(app_id), name
        secrets_file = other["environment"]["MODERATION_DAPR_SECRETS_FILE"]
        assert secrets_file == f"/run/secrets/{secret}", name
        assert other["secrets"] == [secret], name
        assert other["environment"]["MODERATION_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name


def test_dapr_configuration_differs_only_in_where_traces_go(
    services: dict[str, dict[str, Any]],
) -> None:
    local = yaml.safe_load((ROOT / "components" / "configuration.yaml").read_text())
    compose = yaml.safe_load((DOCKER / "dapr" / "configuration.yaml").read_text())
    # Compose sends daprd's spans to its collector over OTLP, the local stack to its Zipkin.
    endpoint = compose["spec"]["tracing"].pop("otel")["endpointAddress"]
    zipkin = local["spec"]["tracing"].pop("zipkin")["endpointAddress"]
    assert zipkin == ZipkinSettings().spans_url
    assert compose == local
    host, port = endpoint.split(":")
    assert host in services
    collector = yaml.safe_load((DOCKER / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"0.0.0.0:{port}"
    assert services["api"]["environment"]["MODERATION_TRACING__OTLP_ENDPOINT"] == (
        f"http://{host}:{port}"
    )
    pipeline = collector["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(collector[kind])


def test_dapr_control_plane_ports_follow_the_settings(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    d = settings.dapr
    placement = command_flags(services["placement"]["command"])
    assert placement == {
        "port": str(d.placement_port),
        "healthz-port": str(d.placement_healthz_port),
        "metrics-port": str(d.placement_metrics_port),
    }
    scheduler = command_flags(services["scheduler"]["command"])
    assert scheduler["port"] == str(d.scheduler_port)
    assert scheduler["metrics-port"] == str(d.scheduler_metrics_port)
    assert scheduler["override-broadcast-host-port"] == f"scheduler:{d.scheduler_port}"
    assert scheduler["etcd-data-dir"].startswith("/var/lock/")
    assert "scheduler-data:/var/lock" in services["scheduler"]["volumes"]


def test_prometheus_scrapes_every_metrics_port(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    # Each service serves /metrics on the port its healthcheck probes.
    expected = {
        f"{name}:{probe_port(services[name])}"
        for name in ("api", "worker", "recorder", "webhook-dispatcher")
    }
    expected.add(f"review:{probe_port(services['review'])}")
    expected.add(f"agent:{probe_port(services['agent'])}")
    daprd = command_flags(services["review-dapr"]["command"])
    expected.add(f"review:{daprd['metrics-port']}")  # daprd lives in review's network namespace
    agent_daprd = command_flags(services["agent-dapr"]["command"])
    expected.add(f"agent:{agent_daprd['metrics-port']}")  # and the agent's in agent's
    worker_daprd = command_flags(services["worker-dapr"]["command"])
    expected.add(f"worker:{worker_daprd['metrics-port']}")  # and the worker's in worker's
    for name in ("placement", "scheduler"):
        expected.add(f"{name}:{command_flags(services[name]['command'])['metrics-port']}")
    expected.add("localhost:9090")
    assert targets == expected
    # The MCP server serves no /metrics.
    assert not [target for target in targets if target.startswith("mcp:")]
    assert daprd["metrics-port"] == str(settings.dapr.metrics_port)
    assert agent_daprd["metrics-port"] == str(settings.agent_service.dapr_metrics_port)
    assert worker_daprd["metrics-port"] == str(settings.worker.dapr_metrics_port)
    mount = "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in services["prometheus"]["volumes"]


# --- the Dapr secrets file and the api's sidecar address -----------------------------------------


def load_dapr_secrets_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dapr_secrets", DOCKER / "dapr_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def component_secret_key(path: Path) -> str:
    """The secrets-file key of a component's `connectionString` (its secretKeyRef)."""
    component = yaml.safe_load(path.read_text())
    (connection,) = [m for m in component["spec"]["metadata"] if m["name"] == "connectionString"]
    key: str = connection["secretKeyRef"]["key"]
    return key


def test_dapr_secrets_file_is_what_the_statestore_reads(tmp_path: Path) -> None:
    module = load_dapr_secrets_module()
    output = module.write_secrets("s3cret-for-tests", tmp_path / ".secrets" / "dapr.json")
    key = component_secret_key(ROOT / "components" / "statestore-postgresql.yaml")
    written = json.loads(output.read_text())
    # The same string the local stack writes (Dapr's own role), for the compose stack's PostgreSQL.
    db = DatabaseSettings(
        host="postgres",
        port=5432,
        user=DAPR_STATE_ROLE,
        password="s3cret-for-tests",  # type: ignore[arg-type]
    )
    assert written == {key: db.libpq_dsn(db.dapr_state_name)}
    assert output.stat().st_mode & 0o777 == 0o644
    assert output.parent.stat().st_mode & 0o777 == 0o700


def test_dapr_secrets_file_is_what_the_configstore_reads(tmp_path: Path) -> None:
    """Every daprd's configuration store reads `moderation` as the owner: compose has no
    per-service roles (no `moderation_config_reader`), every compose service logs in as the
    owner, and its init script creates no role but Dapr's state store's."""
    module = load_dapr_secrets_module()
    output = module.write_secrets("s3cret-for-tests", tmp_path / "dapr.json", "kafka-pw", "own3r")
    key = component_secret_key(CONFIGSTORE_FILE)
    assert key == module.CONFIG_SECRET_KEY
    written = json.loads(output.read_text())
    owner = DatabaseSettings(
        host="postgres",
        port=5432,
        user=module.OWNER,
        password="own3r",  # type: ignore[arg-type]
    )
    assert written[key] == owner.libpq_dsn(owner.name)
    assert (module.OWNER, module.APP_DATABASE) == (Settings().db.user, Settings().db.name)
    # The state store keeps Dapr's own role; the pub/sub its principal's password.
    state_key = component_secret_key(ROOT / "components" / "statestore-postgresql.yaml")
    assert f"user={DAPR_STATE_ROLE} " in written[state_key]
    assert set(written) == {state_key, key, module.KAFKA_SECRET_KEY}
    # The owner's password is compose's own (the `db_password` secret, from the environment).
    declared = load_compose()["secrets"]
    assert declared["db_password"] == {"environment": module.OWNER_PASSWORD_ENV}
    # No compose role for the reader: the init scripts create Dapr's state role only.
    init = "".join(p.read_text() for p in sorted((DOCKER / "postgres" / "init").glob("*")))
    assert CONFIG_READER_ROLE not in init
    assert CONFIG_READER_ROLE in SERVICE_GRANTS  # the role exists outside compose
    compose_text = COMPOSE_FILE.read_text()
    assert "MODERATION_DB__USER" not in compose_text  # every service logs in as the owner


def test_dapr_secrets_cli_writes_every_daprd_file_with_the_configstore_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_dapr_secrets_module()
    outputs = {}
    for app, (path, principal) in module.DAPRD_SECRETS.items():
        outputs[app] = tmp_path / path.name
        module.DAPRD_SECRETS[app] = (outputs[app], principal)
    monkeypatch.setattr(module, "KAFKA_DIR", tmp_path / "kafka")
    monkeypatch.setattr(module, "DAPR_DB_PASSWORD_FILE", tmp_path / "postgres" / "dapr")
    monkeypatch.setattr(module, "AGENT_TOKENS_FILE", tmp_path / "agent-tokens.env")
    monkeypatch.setattr(module, "WORKER_TOKENS_FILE", tmp_path / "worker-tokens.env")
    monkeypatch.setattr(module.kafka_passwords, "__defaults__", (tmp_path / "kafka",))
    monkeypatch.setattr(module.agent_tokens, "__defaults__", (tmp_path / "agent-tokens.env",))
    monkeypatch.setattr(module.worker_tokens, "__defaults__", (tmp_path / "worker-tokens.env",))
    # Without the owner's password it writes nothing and names the variable.
    monkeypatch.delenv(module.OWNER_PASSWORD_ENV, raising=False)
    assert module.main() == 2
    assert module.OWNER_PASSWORD_ENV in capsys.readouterr().err
    assert not any(path.exists() for path in outputs.values())
    monkeypatch.setenv(module.OWNER_PASSWORD_ENV, "owner-pw")
    assert module.main() == 0
    kafka = module.kafka_passwords(tmp_path / "kafka")
    for app, path in outputs.items():
        written = json.loads(path.read_text())
        assert written[module.CONFIG_SECRET_KEY] == module.config_connection_string("owner-pw")
        assert written[module.KAFKA_SECRET_KEY] == kafka[module.DAPRD_SECRETS[app][1]], app
    assert set(outputs) == {"review", "agent", "worker"}


def test_dapr_secrets_quotes_a_password_libpq_would_split() -> None:
    module = load_dapr_secrets_module()
    assert module.libpq_value("plain") == "plain"
    assert module.libpq_value("two words") == "'two words'"
    assert module.libpq_value("it's\\") == "'it\\'s\\\\'"
    assert module.libpq_value("") == "''"


def test_dapr_secrets_match_the_compose_database(services: dict[str, dict[str, Any]]) -> None:
    module = load_dapr_secrets_module()
    env = services["postgres"]["environment"]
    assert (module.HOST, module.OWNER) == ("postgres", env["POSTGRES_USER"])
    assert module.USER == DAPR_STATE_ROLE != module.OWNER
    assert module.DATABASE == Settings().db.dapr_state_name
    declared = load_compose()["secrets"]
    assert module.OUTPUT == (ROOT / declared["dapr_secrets"]["file"]).resolve()
    assert module.AGENT_OUTPUT == (ROOT / declared["dapr_agent_secrets"]["file"]).resolve()
    assert module.WORKER_OUTPUT == (ROOT / declared["dapr_worker_secrets"]["file"]).resolve()
    # The password the init script gives Dapr's role is the one in its connection string.
    assert module.DAPR_DB_PASSWORD_FILE == (ROOT / declared["db_dapr_password"]["file"]).resolve()


def test_dapr_database_password_is_generated_once(tmp_path: Path) -> None:
    module = load_dapr_secrets_module()
    path = tmp_path / "postgres" / "dapr"
    first = module.generated_password(path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", first)  # nothing libpq would need quoted
    assert module.generated_password(path) == first  # kept, never regenerated
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_the_api_reaches_the_review_sidecar_at_the_configured_host() -> None:
    """In compose the sidecar is in the review container, not on the api's loopback."""
    default = DaprReviewWorkflows.from_settings(Settings())
    assert (default.host, default.port) == ("127.0.0.1", 50001)
    composed = DaprReviewWorkflows.from_settings(Settings(dapr=DaprSettings(host="review")))
    assert (composed.host, composed.port) == ("review", 50001)
    assert DaprSettings(host="review").grpc_endpoint == "review:50001"


def test_daprd_api_token_is_shared_by_its_clients(services: dict[str, dict[str, Any]]) -> None:
    """daprd listens beyond loopback, so it requires a token: the api and the review service
    (the Dapr SDK reads DAPR_API_TOKEN) get the same one, from the environment."""
    token = services["review-dapr"]["environment"]["DAPR_API_TOKEN"]
    assert token.startswith("${MODERATION_DAPR__API_TOKEN:?")
    for name in ("api", "review"):
        assert services[name]["environment"]["DAPR_API_TOKEN"] == token
    holders = {n for n, s in services.items() if "DAPR_API_TOKEN" in s.get("environment", {})}
    assert holders == {"api", "review", "review-dapr"}


def test_the_agent_pair_has_its_own_dapr_tokens(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The agent service hands submitted text to an LLM: it never holds the review daprd's
    tokens (with them it could raise a moderator's decision on a review workflow). It and its
    daprd share tokens of their own, generated by docker/dapr_secrets.py into an env file."""
    review_tokens = {
        services["review-dapr"]["environment"][name] for name in ("DAPR_API_TOKEN", "APP_API_TOKEN")
    }
    module = load_dapr_secrets_module()
    assert (ROOT / AGENT_TOKENS_ENV_FILE).resolve() == module.AGENT_TOKENS_FILE
    for name in ("agent", "agent-dapr"):
        service = services[name]
        values = set(service["environment"].values())
        assert not values & review_tokens, name
        assert not {"DAPR_API_TOKEN", "APP_API_TOKEN"} & set(service["environment"]), name
        # Optional only so that `docker compose config` loads without .secrets/: the service
        # refuses to start without an app token.
        assert service["env_file"] == [{"path": AGENT_TOKENS_ENV_FILE, "required": False}], name
    holders = {n for n, s in services.items() if "env_file" in s}
    assert holders == {"agent", "agent-dapr", "worker", "worker-dapr"}
    # Generated once and kept, one token per variable, nothing compose would need quoted.
    path = tmp_path / "tokens.env"
    first = module.agent_tokens(path)
    assert set(first) == {"DAPR_API_TOKEN", "APP_API_TOKEN"}
    assert len(set(first.values())) == 2
    for value in first.values():
        assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", value)
    assert module.agent_tokens(path) == first
    assert path.read_text() == "".join(f"{k}={v}\n" for k, v in first.items())
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_the_worker_pair_has_its_own_dapr_api_token(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The worker handles submitted text: it never holds the review or agent daprd's tokens. It
    and its daprd share an API token of their own; that daprd never calls the worker (no app
    channel), so there is no app token."""
    module = load_dapr_secrets_module()
    assert (ROOT / WORKER_TOKENS_ENV_FILE).resolve() == module.WORKER_TOKENS_FILE
    assert module.WORKER_TOKENS_FILE != module.AGENT_TOKENS_FILE
    review_tokens = {
        services["review-dapr"]["environment"][name] for name in ("DAPR_API_TOKEN", "APP_API_TOKEN")
    }
    for name in ("worker", "worker-dapr"):
        service = services[name]
        assert not set(service["environment"].values()) & review_tokens, name
        assert not {"DAPR_API_TOKEN", "APP_API_TOKEN"} & set(service["environment"]), name
        assert service["env_file"] == [{"path": WORKER_TOKENS_ENV_FILE, "required": False}], name
    # Generated once and kept, the API token only.
    path = tmp_path / "worker-tokens.env"
    first = module.worker_tokens(path)
    assert set(first) == {"DAPR_API_TOKEN"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", first["DAPR_API_TOKEN"])
    assert module.worker_tokens(path) == first
    assert path.read_text() == f"DAPR_API_TOKEN={first['DAPR_API_TOKEN']}\n"
    assert path.stat().st_mode & 0o777 == 0o644
    # Not the agent pair's token.
    assert module.agent_tokens(tmp_path / "agent.env")["DAPR_API_TOKEN"] != first["DAPR_API_TOKEN"]


def test_dapr_mtls_is_all_or_nothing(services: dict[str, dict[str, Any]]) -> None:
    """Compose runs no Sentry (docker-compose.yaml says why: daprd takes its trust anchors only
    from DAPR_TRUST_ANCHORS, which compose cannot fill from Sentry's volume). So no Dapr process
    asks for an identity it cannot get, and no daprd carries an access-control policy, which
    without mTLS would refuse its allowed callers too: mTLS and policies come together."""
    sentries = [name for name, s in services.items() if "daprio/sentry" in s.get("image", "")]
    daprds = list(DAPRDS)
    control_plane = ["placement", "scheduler"]
    mtls_flags = {"enable-mtls", "tls-enabled", "sentry-address", "trust-anchors-file"}
    for name in (*daprds, *control_plane):
        flags = command_flags(services[name]["command"])
        uses_mtls = bool(mtls_flags & set(flags)) or "DAPR_TRUST_ANCHORS" in (
            services[name].get("environment") or {}
        )
        assert uses_mtls is bool(sentries), name
    for name in daprds:
        config = command_flags(services[name]["command"])["config"]
        [mount] = [v for v in services[name]["volumes"] if v.endswith(f":{config}:ro")]
        configuration = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
        assert ("accessControl" in configuration["spec"]) is bool(sentries), name
