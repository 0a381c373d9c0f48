"""Identity between sidecars on the real runtime: Dapr Sentry issues every daprd a SPIFFE
identity, sidecar-to-sidecar calls are mTLS, and each app's access-control policy refuses
callers it does not name (the agent service accepts only the worker's app id)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from moderation.devtools.stack.dapr import LOOPBACK, WORKER_APP_ID, DaprRuntime, stack_tokens
from moderation.settings import Settings

pytestmark = pytest.mark.integration


class _Pong(BaseHTTPRequestHandler):
    """Stands in for the agent service's app: answers every GET it is invoked with."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - its signature
        pass


@pytest.fixture
def agent_and_worker_sidecars(dapr: DaprRuntime) -> Iterator[DaprRuntime]:
    """The agent service's daprd (app channel to a stand-in app) and the worker's daprd."""
    app = HTTPServer((LOOPBACK, 0), _Pong)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    for app_name in ("agent", "worker"):
        dapr.stop_sidecar(app=app_name)
    dapr.start_sidecar(app_port=app.server_port, app="agent")
    dapr.start_sidecar(app="worker")
    yield dapr
    for app_name in ("agent", "worker"):
        dapr.stop_sidecar(app=app_name)
    app.shutdown()


def _invoke_agent_service(dapr: DaprRuntime, settings: Settings, caller: str) -> httpx.Response:
    """Service invocation of the agent service's app, through the `caller` app's daprd."""
    port = dapr.sidecars[caller].http_port
    target = settings.agent_service.app_id
    return httpx.get(
        f"http://{LOOPBACK}:{port}/v1.0/invoke/{target}/method/ping",
        headers={"dapr-api-token": stack_tokens(settings)["DAPR_API_TOKEN"]},
        timeout=30,
    )


def test_only_the_worker_s_app_id_may_call_the_agent_service(
    agent_and_worker_sidecars: DaprRuntime, settings: Settings
) -> None:
    dapr = agent_and_worker_sidecars
    assert dapr.sidecars["worker"].app_id == WORKER_APP_ID

    allowed = _invoke_agent_service(dapr, settings, "worker")
    assert allowed.status_code == 200, allowed.text
    assert allowed.text == "pong"

    refused = _invoke_agent_service(dapr, settings, "review")
    assert refused.status_code == 403, refused.text
    # The policy judged the caller by the identity Sentry issued it, proven over mTLS.
    caller = f"spiffe://{settings.dapr.trust_domain}/ns/default/{settings.dapr.app_id}"
    assert "access control policy has denied access" in refused.text
    assert caller in refused.text


def test_sentry_signed_every_running_daprd_s_identity(
    agent_and_worker_sidecars: DaprRuntime, settings: Settings
) -> None:
    metrics = httpx.get(
        f"http://{LOOPBACK}:{settings.dapr.sentry_metrics_port}/metrics", timeout=10
    ).text
    signed = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("dapr_sentry_cert_sign_success_total")
    ]
    # review, agent and worker daprds, placement and scheduler: at least one each since start.
    assert signed and sum(signed) >= 3, metrics[:2000]
    for app_name in ("review", "agent", "worker"):
        log = last_start(agent_and_worker_sidecars, app_name)
        assert "Security is initialized successfully" in log
        assert "mTLS is disabled" not in log


def last_start(dapr: DaprRuntime, app: str) -> str:
    """The daprd's log since it last started (the log file is appended across starts)."""
    log = dapr.daprds[app].log_file.read_text(errors="replace")
    return log.rsplit("Starting Dapr Runtime", 1)[-1]
