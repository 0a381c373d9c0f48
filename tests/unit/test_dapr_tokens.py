"""The Dapr API tokens: the review service refuses calls without daprd's app token, every client
of daprd sends the API token, and the local stack generates both outside git."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dapr.conf import settings as sdk_settings
from pydantic import SecretStr

import jobs.schedule
from moderation.devtools.stack.dapr import stack_tokens, with_stack_tokens
from moderation.devtools.stack.services import service_env
from moderation.services.api.workflows import DaprReviewWorkflows
from moderation.services.review.app import SUBSCRIPTION_ROUTE, build_app
from moderation.services.sidecar.tokens import api_token_headers, use_api_token
from moderation.settings import DaprSettings, Settings, StackSettings

APP_TOKEN = "app-token-from-daprd"


def with_tokens(api: str | None = None, app: str | None = None, **settings: Any) -> Settings:
    dapr = DaprSettings(
        api_token=SecretStr(api) if api else None, app_token=SecretStr(app) if app else None
    )
    return Settings(dapr=dapr, **settings)


@pytest.fixture
def sdk_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's process-wide token, restored after the test."""
    monkeypatch.setattr(sdk_settings, "DAPR_API_TOKEN", None)


@pytest.fixture
async def review_service(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[httpx.AsyncClient]:
    """The review service's routes (no lifespan: nothing here reaches Dapr)."""

    class Child:
        pid = 4242

    monkeypatch.setattr(jobs.schedule, "launch_nightly", lambda settings: Child())
    app = build_app(with_tokens(app=APP_TOKEN))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://review") as http:
        yield http


# --- the app side: only daprd may call the review service -------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/dapr/subscribe"),
        ("POST", SUBSCRIPTION_ROUTE),
        ("POST", "/job/nightly"),
        ("GET", "/openapi.json"),
    ],
)
async def test_dapr_routes_refuse_calls_without_the_app_token(
    review_service: httpx.AsyncClient, method: str, path: str
) -> None:
    missing = await review_service.request(method, path, content=b"{}")
    wrong = await review_service.request(
        method, path, content=b"{}", headers={"dapr-api-token": "guess"}
    )

    assert missing.status_code == 401
    assert missing.json() == {"detail": "missing dapr-api-token header"}
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": "wrong dapr-api-token"}


async def test_daprd_with_the_app_token_is_served(review_service: httpx.AsyncClient) -> None:
    headers = {"dapr-api-token": APP_TOKEN}

    subscriptions = await review_service.get("/dapr/subscribe", headers=headers)
    job = await review_service.post("/job/nightly", headers=headers)

    assert subscriptions.status_code == 200
    assert subscriptions.json()[0]["route"] == SUBSCRIPTION_ROUTE
    assert job.json() == {"job": "nightly", "pid": 4242}


async def test_probes_and_metrics_need_no_token(review_service: httpx.AsyncClient) -> None:
    assert (await review_service.get("/healthz")).status_code == 200
    assert (await review_service.get("/metrics")).status_code == 200
    assert (await review_service.get("/readyz")).status_code == 503  # not started: not ready


def test_the_review_service_refuses_to_start_without_an_app_token_in_production() -> None:
    production = with_tokens(
        environment="production",
        db={"password": "from-a-vault"},
        llm={"api_key": "from-a-vault"},
        kafka={"username": "review", "password": "from-strimzi"},
    )
    with pytest.raises(ValueError, match="MODERATION_DAPR__APP_TOKEN"):
        build_app(production)
    build_app(with_tokens())  # development: allowed, with a warning


def test_tokens_default_to_dapr_s_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_API_TOKEN", "from-the-sidecar-injector")
    monkeypatch.setenv("APP_API_TOKEN", "from-a-secret")
    dapr = Settings(dapr=DaprSettings()).dapr
    assert dapr.api_token is not None and dapr.app_token is not None
    assert dapr.api_token.get_secret_value() == "from-the-sidecar-injector"
    assert dapr.app_token.get_secret_value() == "from-a-secret"

    monkeypatch.setenv("MODERATION_DAPR__API_TOKEN", "ours")
    explicit = Settings().dapr.api_token
    assert explicit is not None and explicit.get_secret_value() == "ours"
    assert "from-a-secret" not in Settings().model_dump_json()  # masked like every secret


# --- the client side: every caller of daprd sends the API token ----------------------------


def test_the_sdk_is_told_the_api_token(sdk_token: None) -> None:
    use_api_token(with_tokens())
    assert sdk_settings.DAPR_API_TOKEN is None  # no token: the SDK keeps what it had

    use_api_token(with_tokens(api="s3cret"))

    assert sdk_settings.DAPR_API_TOKEN == "s3cret"


def test_the_review_api_gateway_sends_the_api_token(sdk_token: None) -> None:
    gateway = DaprReviewWorkflows.from_settings(with_tokens(api="s3cret"))

    client = gateway._workflow_client()  # the channel connects lazily: no daprd needed

    assert sdk_settings.DAPR_API_TOKEN == "s3cret"
    client.close()


def test_the_jobs_api_call_sends_the_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict[str, Any] = {}

    def post(url: str, **kwargs: Any) -> httpx.Response:
        sent.update(url=url, **kwargs)
        return httpx.Response(204)

    monkeypatch.setattr(httpx, "post", post)

    jobs.schedule.schedule_nightly(with_tokens(api="s3cret"))

    assert sent["url"].endswith("/v1.0-alpha1/jobs/nightly")
    assert sent["headers"] == {"dapr-api-token": "s3cret"}
    assert api_token_headers(with_tokens()) == {}


# --- the local stack: tokens generated once, outside git --------------------------------


def test_the_stack_generates_its_tokens_once_private_and_shares_them(tmp_path: Path) -> None:
    settings = Settings(stack=StackSettings(state_dir=tmp_path))

    tokens = stack_tokens(settings)

    assert set(tokens) == {"DAPR_API_TOKEN", "APP_API_TOKEN"}
    assert tokens["DAPR_API_TOKEN"] != tokens["APP_API_TOKEN"]
    assert all(len(token) >= 43 for token in tokens.values())  # 256 bits, base64url
    for name in ("api-token", "app-token"):
        assert stat.S_IMODE((tmp_path / "dapr" / name).stat().st_mode) == 0o600
    assert stack_tokens(settings) == tokens  # the same on every call: daprd keeps its own
    assert service_env(settings).items() >= tokens.items()  # the services the stack starts
    filled = with_stack_tokens(settings).dapr
    assert filled.api_token is not None and filled.app_token is not None
    assert filled.api_token.get_secret_value() == tokens["DAPR_API_TOKEN"]
    assert filled.app_token.get_secret_value() == tokens["APP_API_TOKEN"]


def test_configured_tokens_win_and_production_never_uses_the_stack_s(tmp_path: Path) -> None:
    state = StackSettings(state_dir=tmp_path)
    configured = with_tokens(api="mine", app="theirs", stack=state)

    assert stack_tokens(configured) == {"DAPR_API_TOKEN": "mine", "APP_API_TOKEN": "theirs"}
    assert not (tmp_path / "dapr").exists()
    production = with_tokens(
        environment="production",
        db={"password": "from-a-vault"},
        llm={"api_key": "from-a-vault"},
        kafka={"username": "review", "password": "from-strimzi"},
        stack=state,
    )
    assert with_stack_tokens(production).dapr.api_token is None
