"""How the agent service reaches its model: by default through its daprd's service invocation of
an HTTPEndpoint (so Dapr's resiliency policy times and breaks every call), directly, or through
the Conversation API."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import SecretStr

from moderation.devtools.stack.dapr import COMPONENTS_DIR, DaprRuntime
from moderation.llm.dapr_conversation import DaprConversationProvider
from moderation.llm.provider import (
    ChatCompletionsProvider,
    create_client,
    endpoint_origin,
    invocation_base_url,
)
from moderation.services.agent.app import model_provider
from moderation.settings import AgentServiceSettings, DaprSettings, Settings, StackSettings


def test_the_server_s_path_is_kept_behind_daprd_s_invoke_prefix() -> None:
    dapr = "http://127.0.0.1:3510"
    assert (
        invocation_base_url("http://vllm:8000/v1", dapr, "agent-llm-http")
        == "http://127.0.0.1:3510/v1.0/invoke/agent-llm-http/method/v1"
    )
    assert (
        invocation_base_url("http://127.0.0.1:8011/v1/", dapr + "/", "x")
        == "http://127.0.0.1:3510/v1.0/invoke/x/method/v1"
    )
    assert endpoint_origin("https://llm.example:8443/openai/v1") == "https://llm.example:8443"


def test_through_dapr_the_client_sends_daprd_s_token_and_the_server_s_key() -> None:
    settings = Settings()
    client = create_client(settings.llm, via_dapr="http://d/v1.0/invoke/e/method/v1",
                           dapr_token="daprd-token")  # fmt: skip
    assert str(client.base_url).rstrip("/") == "http://d/v1.0/invoke/e/method/v1"
    assert client.default_headers["dapr-api-token"] == "daprd-token"
    assert client.api_key == settings.llm.api_key.get_secret_value()
    direct = create_client(settings.llm)
    assert "dapr-api-token" not in direct.default_headers


def test_the_agent_service_calls_its_model_through_daprd_by_default() -> None:
    settings = Settings(dapr=DaprSettings(api_token=SecretStr("t")))
    assert settings.agent_service.llm_route == "dapr-invocation"
    provider = model_provider(settings)
    assert isinstance(provider, ChatCompletionsProvider)
    service = settings.agent_service
    expected = f"http://127.0.0.1:{service.dapr_http_port}/v1.0/invoke/{service.llm_http_endpoint}"
    assert str(provider.client.base_url).startswith(expected)
    direct = model_provider(
        settings.model_copy(update={"agent_service": AgentServiceSettings(llm_route="direct")})
    )
    assert isinstance(direct, ChatCompletionsProvider)
    assert str(direct.client.base_url).rstrip("/") == settings.llm.base_url
    conversation = model_provider(
        settings.model_copy(
            update={"agent_service": AgentServiceSettings(llm_route="dapr-conversation")}
        )
    )
    assert isinstance(conversation, DaprConversationProvider)


def test_the_agent_s_daprd_gets_an_endpoint_for_the_server_it_is_pointed_at(
    tmp_path: Path,
) -> None:
    dapr = DaprRuntime(Settings(stack=StackSettings(state_dir=tmp_path)))
    directory = dapr.llm_endpoint("http://127.0.0.1:40123/v1")
    endpoint = yaml.safe_load((directory / "llm-endpoint.yaml").read_text())
    assert endpoint["kind"] == "HTTPEndpoint"
    assert endpoint["metadata"]["name"] == "agent-llm-http"
    assert endpoint["spec"]["baseUrl"] == "http://127.0.0.1:40123"
    assert endpoint["scopes"] == ["agent-service"]
    # Its calls run under the endpoint's resiliency target: the call's timeout, no retry (the
    # workflow retries; a sidecar retry racing the client's timeout pays twice), no breaker
    # (the agent's own tells a caller that went away from a failing server).
    resiliency = yaml.safe_load((COMPONENTS_DIR / "resiliency.yaml").read_text())
    target = resiliency["spec"]["targets"]["apps"]["agent-llm-http"]
    assert target == {"timeout": "llmCall"}
    assert resiliency["spec"]["policies"]["timeouts"]["llmCall"] == "60s"
