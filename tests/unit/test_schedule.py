"""The local nightly schedule's trigger endpoint and the Kubernetes CronJob's safety settings.

The Dapr Jobs API path itself (daprd → scheduler → the review service) runs for real in
tests/integration/test_nightly.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

import jobs.schedule
from jobs.schedule import JOB_NAME, job_router
from moderation.settings import PROJECT_ROOT, NightlySettings, Settings


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    calls: list[Settings] = []

    class Child:
        pid = 4242

    def launch(settings: Settings) -> Child:
        calls.append(settings)
        return Child()

    monkeypatch.setattr(jobs.schedule, "launch_nightly", launch)
    return calls


def test_a_trigger_of_the_nightly_job_starts_a_run(launched: list[Settings]) -> None:
    app = FastAPI()
    app.include_router(job_router(Settings()))
    with TestClient(app) as client:
        assert client.post(f"/job/{JOB_NAME}").json() == {"job": JOB_NAME, "pid": 4242}
        assert client.post(f"/job/{JOB_NAME}-once").status_code == 200
        unknown = client.post("/job/backup")
    assert unknown.status_code == 404 and "backup" in unknown.json()["detail"]
    assert len(launched) == 2


def test_launch_nightly_runs_the_cli_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: dict[str, Any] = {}

    class FakePopen:
        pid = 7

        def __init__(self, argv: list[str], **kwargs: Any) -> None:
            started.update(argv=argv, **kwargs)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    settings = Settings(nightly=NightlySettings(output_dir=tmp_path))
    child = jobs.schedule.launch_nightly(settings)
    assert child.pid == 7
    assert started["argv"][-3:] == ["-m", "moderation.cli", "nightly"]
    assert started["start_new_session"] is True
    assert (tmp_path / "nightly.log").exists()


def test_the_cronjob_never_overlaps_runs() -> None:
    manifest = yaml.safe_load((PROJECT_ROOT / "k8s/base/nightly-cronjob.yaml").read_text())
    assert manifest["kind"] == "CronJob"
    spec = manifest["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == "nightly"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Secrets by reference only.
    for variable in container["env"]:
        if "PASSWORD" in variable["name"] or "API_KEY" in variable["name"]:
            assert "secretKeyRef" in variable["valueFrom"]


def test_a_nightly_launched_by_a_service_logs_in_as_the_nightly_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The review service's role may not write the registry; the job it starts must not
    inherit it (issue 11: one database role per service)."""
    monkeypatch.setenv("MODERATION_DB__USER", "moderation_review")
    as_review = Settings.model_validate({"db": {"user": "moderation_review"}})
    assert jobs.schedule.nightly_env(as_review)["MODERATION_DB__USER"] == "moderation_nightly"
    monkeypatch.setenv("MODERATION_DB__USER", "moderation")
    as_owner = Settings.model_validate({"db": {"user": "moderation"}})
    assert jobs.schedule.nightly_env(as_owner)["MODERATION_DB__USER"] == "moderation"
