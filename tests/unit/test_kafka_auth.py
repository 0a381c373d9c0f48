"""Kafka credentials and grants per service principal (the broker side: tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faststream.security import SASLScram512
from pydantic import SecretStr, ValidationError

from moderation.kafka_auth import (
    PRINCIPALS,
    acl_grants,
    aiokafka_auth,
    credentials,
    faststream_security,
    stack_password,
)
from moderation.settings import KafkaSettings, Settings, StackSettings


def local(tmp_path: Path, **kafka: object) -> Settings:
    return Settings(
        stack=StackSettings(state_dir=tmp_path),
        kafka=KafkaSettings.model_validate(kafka),
    )


def test_in_development_each_principal_has_its_own_stack_password(tmp_path: Path) -> None:
    settings = local(tmp_path)
    passwords = {principal: stack_password(settings, principal) for principal in PRINCIPALS}
    assert len(set(passwords.values())) == len(PRINCIPALS)
    assert stack_password(settings, "worker") == passwords["worker"]  # stable across calls
    path = tmp_path / "kafka" / "credentials" / "worker"
    assert path.stat().st_mode & 0o777 == 0o600

    found = credentials(settings, "worker")
    assert found is not None and (found.username, found.password) == ("worker", passwords["worker"])
    auth = aiokafka_auth(settings, "worker")
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "worker"
    security = faststream_security(settings, "worker")
    assert isinstance(security, SASLScram512) and security.username == "worker"


def test_configured_credentials_win_over_the_principal_asked_for(tmp_path: Path) -> None:
    settings = local(tmp_path, username="svc-worker", password=SecretStr("s3cret-from-strimzi"))
    found = credentials(settings, "worker")
    assert found is not None and (found.username, found.password) == (
        "svc-worker",
        "s3cret-from-strimzi",
    )
    assert not (tmp_path / "kafka").exists()  # nothing generated


def test_plaintext_means_no_credentials_and_is_development_only(tmp_path: Path) -> None:
    settings = local(tmp_path, security_protocol="PLAINTEXT")
    assert credentials(settings, "api") is None
    assert aiokafka_auth(settings, "api") == {}
    assert faststream_security(settings, "api") is None


def production(**kafka: object) -> Settings:
    return Settings.model_validate(
        {
            "environment": "production",
            "db": {"password": "a-real-db-password-1"},
            "llm": {"api_key": "a-real-llm-key-1"},
            "dapr": {"api_token": "a-real-dapr-token-1", "app_token": "a-real-app-token-1"},
            "kafka": kafka,
        }
    )


def test_a_deployed_service_must_authenticate_to_kafka() -> None:
    with pytest.raises(ValidationError, match="MODERATION_KAFKA__USERNAME"):
        production()
    with pytest.raises(ValidationError, match="PLAINTEXT"):
        production(security_protocol="PLAINTEXT", username="api", password="a-real-password-1")
    with pytest.raises(ValidationError, match="MODERATION_KAFKA__PASSWORD"):
        production(security_protocol="SASL_SSL", username="api", password="changeme")
    settings = production(security_protocol="SASL_SSL", username="api", password="a-real-pw-1")
    auth = aiokafka_auth(settings, "worker")
    assert auth["sasl_plain_username"] == "api"
    assert auth["ssl_context"] is not None  # TLS in production


def test_only_the_rightful_services_may_write_each_topic() -> None:
    settings = Settings()
    topics = settings.kafka.topics
    writers = {
        topic: {p for p, grants in acl_grants(settings).items() if topic in grants.write}
        for topic in topics.main_topics()
    }
    assert writers == {
        topics.posts_submitted: {"api"},
        topics.verdicts: {"worker", "agent"},  # stage 1's verdicts, and the agent's
        # Appeals, stage 1's review requests, and the agent's.
        topics.review_requested: {"api", "worker", "agent"},
        topics.review_decisions: {"review"},  # a human decision comes from the review service
        topics.review_escalated: {"review"},
        topics.agent_requested: {"worker"},  # only the worker hands posts to the agent
        # Strikes, actions and report outcomes are projections the recorder writes and announces.
        topics.authors_actioned: {"recorder"},
        topics.reports_resolved: {"recorder"},
    }
    groups = [group for grants in acl_grants(settings).values() for group in grants.groups]
    assert len(groups) == len(set(groups))  # no two services share a consumer group
