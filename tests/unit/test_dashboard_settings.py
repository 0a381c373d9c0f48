"""The dashboard runs on its own settings section: a production pod needs no secret (issue 11,
finding 4). The full settings refuse to start there without the database password and the LLM
key; the dashboard uses neither, so it must not read them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from hitl_dashboard import session
from hitl_dashboard.settings import DashboardProcessSettings, get_dashboard_settings
from moderation import cli
from moderation.settings import Settings, get_settings

# What k8s/base/dashboard.yaml and the compose service give the dashboard: no secret at all.
DASHBOARD_ENV = {
    "MODERATION_ENVIRONMENT": "production",
    "MODERATION_DASHBOARD__API_URL": "http://api:8000",
    "MODERATION_DASHBOARD__SESSION_MINUTES": "20",
    "MODERATION_WORKER__SERVICE_HOST": "0.0.0.0",
}


@pytest.fixture
def production_without_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (
        "MODERATION_DB__PASSWORD",
        "MODERATION_LLM__API_KEY",
        "MODERATION_DB__URL_OVERRIDE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in DASHBOARD_ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    get_dashboard_settings.cache_clear()
    yield
    get_settings.cache_clear()
    get_dashboard_settings.cache_clear()


@pytest.mark.usefixtures("production_without_secrets")
def test_the_full_settings_would_refuse_the_dashboard_pod() -> None:
    with pytest.raises(ValidationError, match="MODERATION_DB__PASSWORD"):
        Settings()


@pytest.mark.usefixtures("production_without_secrets")
def test_the_dashboard_settings_load_without_secrets() -> None:
    settings = DashboardProcessSettings()

    assert settings.environment == "production"
    assert settings.dashboard.api_url == "http://api:8000"
    assert settings.worker.service_host == "0.0.0.0"
    assert session.idle_limit_seconds() == 20 * 60.0
    # It has no field that could hold a secret.
    assert set(DashboardProcessSettings.model_fields) == {"environment", "dashboard", "worker"}


@pytest.mark.usefixtures("production_without_secrets")
def test_moderation_dashboard_starts_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda _path, argv: started.append(argv))

    result = CliRunner().invoke(cli.app, ["dashboard"])

    assert result.exit_code == 0, result.output
    [argv] = started
    assert argv[argv.index("--server.port") + 1] == "8501"
    assert argv[argv.index("--server.address") + 1] == "0.0.0.0"
