"""Fixtures for tests against the real local stack.

Each fixture starts its component if it is not running (idempotent, as `make stack-up` does),
so a missing component fails the test loudly instead of skipping it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from moderation.db.engine import create_tables, make_engine
from moderation.devtools.stack.dapr import DaprRuntime, with_stack_tokens
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.llm import LLMServer
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.services.sidecar.tokens import use_api_token
from moderation.settings import Settings, get_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings, with the local daprd's tokens; in-process Dapr SDK clients send its API
    token (daprd refuses calls without it)."""
    with_tokens = with_stack_tokens(get_settings())
    use_api_token(with_tokens)
    return with_tokens


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> KafkaBroker:
    broker = KafkaBroker(settings)
    broker.install()
    broker.start()
    return broker


@pytest.fixture(scope="session")
def postgres(settings: Settings) -> PostgresCluster:
    cluster = PostgresCluster(settings)
    cluster.install()
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def dapr(
    settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster
) -> Iterator[DaprRuntime]:
    runtime = DaprRuntime(settings)
    runtime.install()
    runtime.start()
    yield runtime
    # A test may have crashed the sidecar; leave it running for the next test and `stack down`.
    runtime.start_sidecar()


@pytest.fixture(scope="session")
def llm(settings: Settings) -> LLMServer:
    server = LLMServer(settings)
    server.install()
    server.start()
    return server


@pytest.fixture(scope="module")
def read_model(settings: Settings, postgres: PostgresCluster) -> Iterator[Engine]:
    """An engine on the read model (tables created), one per test module."""
    engine = make_engine(settings)
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def unique() -> str:
    """A short unique suffix so reruns never collide on topics, groups or keys."""
    return uuid.uuid4().hex[:10]
