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
        "agent.requested",
        "authors.actioned",
        "reports.resolved",
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
    with pytest.raises(ValidationError, match="MODERATION_KAFKA__USERNAME"):
        Settings()  # a deployed service authenticates to Kafka as its own principal
    monkeypatch.setenv("MODERATION_KAFKA__USERNAME", "api")
    monkeypatch.setenv("MODERATION_KAFKA__PASSWORD", "from-strimzi")
    assert Settings().environment == "production"


VAULT = {
    "db": {"password": "from-a-vault"},
    "llm": {"api_key": "from-a-vault-too"},
    "kafka": {"username": "api", "password": "from-strimzi"},
}


def deployed(environment: str, **sections: dict[str, str]) -> Settings:
    return Settings.model_validate({"environment": environment, **sections})


@pytest.mark.parametrize("environment", ["production", "test"])
def test_deployed_environments_refuse_the_development_password_in_a_whole_url(
    environment: str,
) -> None:
    """Issue 11, finding 8: `db.url_override` carried the development password past the check,
    and `environment=test` skipped the checks altogether."""
    url = "postgresql+psycopg://moderation:moderation-dev@db:5432/moderation"
    with pytest.raises(ValidationError, match="MODERATION_DB__URL_OVERRIDE"):
        deployed(
            environment,
            db={**VAULT["db"], "url_override": url},
            llm=VAULT["llm"],
            kafka=VAULT["kafka"],
        )
    # The field's own default is refused even when a whole URL is given (Dapr's DSN uses it).
    with pytest.raises(ValidationError, match="MODERATION_DB__PASSWORD"):
        deployed(environment, db={"url_override": url.replace("-dev", "-x1")})
    vaulted = url.replace("moderation-dev", "from%2Fa%2Fvault")
    settings = deployed(
        environment,
        db={**VAULT["db"], "url_override": vaulted},
        llm=VAULT["llm"],
        kafka=VAULT["kafka"],
    )
    assert settings.db.url == vaulted


@pytest.mark.parametrize(
    ("section", "field", "env"),
    [
        ("dapr", "api_token", "MODERATION_DAPR__API_TOKEN"),
        ("dapr", "app_token", "MODERATION_DAPR__APP_TOKEN"),
        ("llm", "api_key", "MODERATION_LLM__API_KEY"),
        ("db", "password", "MODERATION_DB__PASSWORD"),
        ("kafka", "password", "MODERATION_KAFKA__PASSWORD"),
    ],
)
@pytest.mark.parametrize("value", ["changeme", "", "moderation-dev", "local-llm", " Placeholder "])
def test_production_refuses_placeholder_values_of_every_secret(
    section: str, field: str, env: str, value: str
) -> None:
    sections: dict[str, dict[str, str]] = {k: dict(v) for k, v in VAULT.items()}
    sections.setdefault(section, {})[field] = value
    with pytest.raises(ValidationError, match=env):
        deployed("production", **sections)
    deployed("development", **sections)


def test_every_secret_field_is_checked() -> None:
    """A secret added to any section (Kafka credentials, a key pepper) is covered: the check
    walks every SecretStr of the tree."""
    from pydantic import BaseModel, SecretStr

    from moderation.secret_checks import development_secrets

    class Kafka(BaseModel):
        sasl_password: SecretStr = SecretStr("kafka-dev")

    class Tree(BaseModel):
        kafka: Kafka = Kafka()

    assert development_secrets(Tree(), refused=frozenset()) == ["MODERATION_KAFKA__SASL_PASSWORD"]
    vaulted = Tree(kafka=Kafka(sasl_password=SecretStr("from-a-vault")))
    assert development_secrets(vaulted, refused=frozenset()) == []


def test_secrets_are_masked_when_dumped() -> None:
    dumped = Settings().model_dump_json()
    assert "moderation-dev" not in dumped
    assert "**********" in dumped


def test_dapr_state_store_dsn_is_libpq_form() -> None:
    dsn = Settings().db.libpq_dsn("dapr_state")
    assert "dbname=dapr_state" in dsn
    assert "port=55432" in dsn
