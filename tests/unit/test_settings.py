from __future__ import annotations

import pytest
from pydantic import ValidationError

from moderation.settings import Settings


def test_nested_sections_read_from_prefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_KAFKA__PORT", "19092")
    monkeypatch.setenv("MODERATION_KAFKA__TOPICS__POSTS_SUBMITTED", "tenant-a.posts.submitted")
    monkeypatch.setenv("MODERATION_DB__PORT", "6543")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.kafka.topics.posts_submitted == "tenant-a.posts.submitted"
    assert settings.db.url.endswith("@127.0.0.1:6543/moderation")


def test_every_topic_has_a_dead_letter_topic() -> None:
    topics = Settings().kafka.topics
    assert topics.main_topics() == [
        "posts.submitted",
        "moderation.verdicts",
        "review.requested",
        "review.decisions",
        "review.escalated",
    ]
    assert [t for t in topics.all_topics() if t.endswith(".dlq")] == [
        t + ".dlq" for t in topics.main_topics()
    ]


def test_production_refuses_development_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="MODERATION_DB__PASSWORD"):
        Settings()
    monkeypatch.setenv("MODERATION_DB__PASSWORD", "s3cret-from-a-vault")
    with pytest.raises(ValidationError, match="MODERATION_LLM__API_KEY"):
        Settings()
    monkeypatch.setenv("MODERATION_LLM__API_KEY", "vllm-token")
    assert Settings().environment == "production"


def test_secrets_are_masked_when_dumped() -> None:
    dumped = Settings().model_dump_json()
    assert "moderation-dev" not in dumped
    assert "**********" in dumped


def test_dapr_state_store_dsn_is_libpq_form() -> None:
    dsn = Settings().db.libpq_dsn("dapr_state")
    assert "dbname=dapr_state" in dsn
    assert "port=55432" in dsn
