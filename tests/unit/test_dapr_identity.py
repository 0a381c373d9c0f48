"""Identity between sidecars in the local stack: Sentry's flags reach placement, scheduler and
every daprd, and each app's daprd gets an access-control policy that refuses every caller but
the app ids allowed to invoke it."""

from __future__ import annotations

from pathlib import Path

import yaml

from moderation.devtools.stack.dapr import (
    API_APP_ID,
    CONFIG_FILE,
    WORKER_APP_ID,
    DaprRuntime,
    access_control,
    sidecar_specs,
)
from moderation.settings import DaprSettings, Settings, StackSettings


def runtime(tmp_path: Path, *, mtls: bool = True) -> DaprRuntime:
    settings = Settings(
        dapr=DaprSettings(mtls=mtls), stack=StackSettings(state_dir=tmp_path / "state")
    )
    return DaprRuntime(settings)


def test_only_the_worker_may_invoke_the_agent_service_and_only_the_api_the_review_service() -> None:
    specs = sidecar_specs(Settings())
    assert specs["agent"].allowed_callers == (WORKER_APP_ID,)
    assert specs["review"].allowed_callers == (API_APP_ID,)
    # Nobody invokes the worker (its daprd has no app channel).
    assert specs["worker"].allowed_callers == ()


def test_an_access_policy_denies_by_default_and_allows_named_callers_in_the_trust_domain() -> None:
    policy = access_control(sidecar_specs(Settings())["agent"], "public")
    assert policy["defaultAction"] == "deny"
    assert policy["trustDomain"] == "public"
    assert policy["policies"] == [
        {
            "appId": WORKER_APP_ID,
            "defaultAction": "allow",
            "trustDomain": "public",
            "namespace": "default",
        }
    ]


def test_each_daprd_config_is_the_shared_one_plus_its_own_policy(tmp_path: Path) -> None:
    dapr = runtime(tmp_path)
    shared = yaml.safe_load(CONFIG_FILE.read_text())
    agent = yaml.safe_load(dapr.sidecar_config("agent").read_text())
    review = yaml.safe_load(dapr.sidecar_config("review").read_text())
    for config in (agent, review):
        # Tracing and metrics stay whatever the shared file says.
        assert config["spec"]["tracing"] == shared["spec"]["tracing"]
        assert config["spec"]["metric"] == shared["spec"]["metric"]
    assert agent["metadata"]["name"] != review["metadata"]["name"]
    assert [p["appId"] for p in agent["spec"]["accessControl"]["policies"]] == [WORKER_APP_ID]
    assert [p["appId"] for p in review["spec"]["accessControl"]["policies"]] == [API_APP_ID]


def test_placement_and_scheduler_take_their_identity_from_sentry(tmp_path: Path) -> None:
    dapr = runtime(tmp_path)
    flags = dapr._control_plane_mtls()
    assert flags["tls-enabled"] == "true"
    assert flags["trust-anchors-file"] == dapr.trust_anchors_file
    assert flags["sentry-address"] == f"127.0.0.1:{dapr.dapr.sentry_port}"
    assert runtime(tmp_path, mtls=False)._control_plane_mtls() == {}


def test_apps_with_workflows_purge_finished_runs_after_their_retention(tmp_path: Path) -> None:
    dapr = runtime(tmp_path)
    agent = yaml.safe_load(dapr.sidecar_config("agent").read_text())
    review = yaml.safe_load(dapr.sidecar_config("review").read_text())
    worker = yaml.safe_load(dapr.sidecar_config("worker").read_text())
    hours = dapr.settings.agent_service.workflow_retention_hours
    assert agent["spec"]["workflow"] == {
        "stateRetentionPolicy": {"anyTerminal": f"{round(hours * 3600)}s"}
    }
    review_hours = dapr.settings.review.workflow_retention_hours
    assert review["spec"]["workflow"]["stateRetentionPolicy"]["anyTerminal"] == (
        f"{round(review_hours * 3600)}s"
    )
    assert "workflow" not in worker["spec"]  # it runs no workflows
