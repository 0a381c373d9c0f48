"""`stack up` twice is harmless; `stack status` reports every real component healthy."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moderation.cli import app
from moderation.devtools import stack
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.settings import Settings

pytestmark = pytest.mark.integration


def test_second_start_changes_nothing(dapr: DaprRuntime, settings: Settings) -> None:
    stack.up(settings)  # what `make test` already did; a no-op when everything runs
    before = {row.name: row.pid for row in stack.status(settings)}
    stack.up(settings)
    after = stack.status(settings)
    assert {row.name: row.pid for row in after} == before
    assert all(row.healthy for row in after), [row for row in after if not row.healthy]


def test_status_command_reports_each_component_with_memory(dapr: DaprRuntime) -> None:
    result = CliRunner().invoke(app, ["stack", "status", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    names = {row["name"] for row in rows}
    assert names == {
        "kafka",
        "postgres",
        "zipkin",
        "dapr-sentry",
        "dapr-placement",
        "dapr-scheduler",
        "daprd-review-service",
        "llm-server",
        "llm-adapter",
    }
    assert all(row["healthy"] and row["rss_mib"] > 0 for row in rows)
