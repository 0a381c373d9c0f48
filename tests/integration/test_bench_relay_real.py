"""The raw-relay ceiling against the real Kafka (SASL/SCRAM, ACLs) and PostgreSQL: 2,000 posts
through load → relay process → copy process, each recorded exactly once, and nothing left behind
(its two topics and its table are gone afterwards, also when the run fails midway)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import Engine, text

from moderation.db.engine import make_engine
from moderation.devtools.bench import relay
from moderation.devtools.bench.relay import measure_relay
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import isolated_settings
from moderation.kafka_auth import ADMIN, aiokafka_auth
from moderation.settings import Settings

pytestmark = pytest.mark.integration
POSTS = 2_000


async def _topics(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **aiokafka_auth(settings, ADMIN)
    )
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _table_exists(settings: Settings, table: str) -> bool:
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar()
    finally:
        engine.dispose()
    return found is not None


@pytest.mark.timeout(90)
def test_every_post_is_relayed_and_recorded_once_and_nothing_is_left_behind(
    settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster, unique: str
) -> None:
    run_settings = isolated_settings(settings, f"it-relay-{unique}")

    result = measure_relay(run_settings, posts=POSTS, length=200)

    assert (result["posts"], result["rows"]) == (POSTS, POSTS)
    assert (result["lost"], result["doubled"], result["altered"]) == (0, 0, 0)
    assert result["partitions"] == settings.kafka.partitions
    assert result["posts_per_second"] > 0
    assert 0 < result["seconds"] < 60
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert result["load_seconds"] > 0

    inbound, outbound = result["topics"]
    assert inbound.startswith(f"it-relay-{unique}.")
    assert outbound.startswith(f"it-relay-{unique}.")
    assert not {inbound, outbound} & asyncio.run(_topics(settings))
    assert result["table"].startswith("bench_relay_it_relay_")
    assert _table_exists(settings, result["table"]) is False


@pytest.mark.timeout(90)
def test_a_failure_midway_stops_the_stages_and_leaves_nothing_behind(
    settings: Settings,
    kafka: KafkaBroker,
    postgres: PostgresCluster,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stages are running and the posts sent when the wait fails: the processes end, the
    topics and the table go, and the error is the one raised."""
    run_settings = isolated_settings(settings, f"it-relay-{unique}")
    seen: list[relay.RelayNames] = []
    started: list[relay._Stages] = []
    real_names, real_stages = relay.relay_names, relay._Stages

    def names(settings: Settings, nonce: str) -> relay.RelayNames:
        seen.append(real_names(settings, nonce))
        return seen[-1]

    def stages(settings: Settings, names: relay.RelayNames) -> relay._Stages:
        started.append(real_stages(settings, names))
        return started[-1]

    def fail(engine: Engine, table: str, *args: object) -> None:
        assert relay._count(engine, table) >= 0  # the table exists while the stages run
        raise RuntimeError("the wait broke")

    monkeypatch.setattr(relay, "relay_names", names)
    monkeypatch.setattr(relay, "_Stages", stages)
    monkeypatch.setattr(relay, "_wait_recorded", fail)

    with pytest.raises(RuntimeError, match="the wait broke"):
        measure_relay(run_settings, posts=200)

    [named], [processes] = seen, started
    assert all(p.exitcode is not None for p in processes.processes.values())
    assert not {named.inbound, named.outbound} & asyncio.run(_topics(settings))
    assert _table_exists(settings, named.table) is False
