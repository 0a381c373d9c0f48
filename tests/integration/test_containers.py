"""docker-compose.yaml loaded by compose-go, the library Docker Compose itself loads files with.

`scripts/compose-check` is built with Go from the module proxy (once; cached in the stack's cache
directory, keyed by its sources) and does what `docker compose config` does without a Docker
engine: schema validation, interpolation, normalisation and the consistency checks. It also
proves that the schema vendored for the unit tests is compose-go's own. Needs Go and the module
proxy on first run, as the Dapr build does; no Docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from moderation.cache import cache_entry, step
from moderation.devtools.stack.runtime import require_tool, run
from moderation.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "scripts" / "compose-check"
COMPOSE_FILE = ROOT / "docker-compose.yaml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
# Stand-ins for the secrets compose requires from the environment (never real values).
SECRET_ENV = {
    "MODERATION_DB__PASSWORD": "test-only-db",
    "MODERATION_LLM__API_KEY": "test-only-llm",
    "MODERATION_DAPR__API_TOKEN": "test-only-token",
    "MODERATION_DAPR__APP_TOKEN": "test-only-app-token",
}


@pytest.fixture(scope="module")
def compose_check(settings: Settings) -> Path:
    go = require_tool("go", "install Go >= 1.24 (https://go.dev/doc/install)")
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCES / name).read_bytes())
    key = f"compose-check-{digest.hexdigest()[:12]}"

    def build(staging: Path) -> None:
        run(
            [go, "build", "-o", str(staging / "compose-check"), "."],
            "building scripts/compose-check",
            cwd=SOURCES,
            env={"CGO_ENABLED": "0"},
        )

    with step(f"compose-check: build with compose-go ({key})"):
        entry = cache_entry(settings.stack.cache_dir / "compose-check", key, build)
    return entry / "compose-check"


def load(binary: Path, compose_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only PATH and HOME from this process: a MODERATION_* of the caller must not leak in.
    base = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    return subprocess.run(  # noqa: S603 - our own binary
        [str(binary), str(compose_file)],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_vendored_schema_is_compose_gos_own(compose_check: Path) -> None:
    embedded = subprocess.run(  # noqa: S603 - our own binary
        [str(compose_check), "schema"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert embedded == SCHEMA_FILE.read_text()


def test_compose_file_loads_as_docker_compose_would(compose_check: Path) -> None:
    result = load(compose_check, COMPOSE_FILE, SECRET_ENV)
    assert result.returncode == 0, result.stderr
    project = json.loads(result.stdout)
    declared = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(project["services"]) == set(declared)  # every profile enabled
    services = project["services"]
    assert services["review-dapr"]["network_mode"] == "service:review"
    assert services["vllm"]["profiles"] == ["gpu"]
    # Interpolated: the required secrets from the environment, defaults elsewhere.
    api_env = services["api"]["environment"]
    assert api_env["MODERATION_DB__PASSWORD"] == SECRET_ENV["MODERATION_DB__PASSWORD"]
    assert api_env["MODERATION_AGENT__ENABLED"] == "false"
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == SECRET_ENV["MODERATION_LLM__API_KEY"]
    assert project["secrets"]["db_password"]["environment"] == "MODERATION_DB__PASSWORD"
    token = SECRET_ENV["MODERATION_DAPR__API_TOKEN"]
    assert services["review-dapr"]["environment"]["DAPR_API_TOKEN"] == token


def test_compose_stops_without_the_secrets(compose_check: Path) -> None:
    result = load(compose_check, COMPOSE_FILE, {})
    assert result.returncode != 0
    for variable in SECRET_ENV:
        assert f"required variable {variable} is missing a value" in result.stderr


def test_compose_rejects_a_typo(compose_check: Path, tmp_path: Path) -> None:
    broken = COMPOSE_FILE.read_text().replace("  kafka:\n    image:", "  kafka:\n    imgae:", 1)
    assert broken != COMPOSE_FILE.read_text()
    (tmp_path / "docker-compose.yaml").write_text(broken)
    result = load(compose_check, tmp_path / "docker-compose.yaml", SECRET_ENV)
    assert result.returncode != 0
    assert "services.kafka" in result.stderr and "imgae" in result.stderr
