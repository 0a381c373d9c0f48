"""`moderation bench --soak` against the real stack, shortened: every service's memory is
sampled (api, worker, recorder, Kafka, PostgreSQL) and every post gets exactly one verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from moderation.devtools.bench.memory import run_soak
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.settings import Settings

pytestmark = pytest.mark.integration

SERVICES = ("api", "worker", "recorder", "kafka", "postgres")


@pytest.mark.timeout(300)
def test_short_soak_samples_every_service_and_loses_nothing(
    settings: Settings, kafka: KafkaBroker, postgres: PostgresCluster, tmp_path: Path
) -> None:
    result = run_soak(
        settings,
        rate=200,
        minutes=0.3,
        interval=1.0,
        warmup_posts=200,
        chunk_seconds=9.0,
        plot_path=tmp_path / "soak-rss.png",
        console=Console(stderr=True),
    )
    written = json.loads(Path(result["results_file"]).read_text())

    soak = written["soak"]
    assert soak["posts"] == 200 * 18
    assert soak["lost"] == 0 and soak["doubled"] == 0
    assert soak["verdict_rows"] == soak["posts"]
    services = written["memory"]["services"]
    assert set(services) == set(SERVICES)
    for name in SERVICES:
        memory = services[name]
        assert memory["pid"] > 0
        assert memory["idle_mib"] > 0, name
        assert memory["peak_mib"]["soak"] >= memory["idle_mib"] * 0.5, name
        assert memory["last_mib"] > 0, name
        assert len(memory["series"]["t_s"]) >= 18, name
        growth = written["growth"][name]
        assert growth["samples"] >= 3, name
        assert growth["bounded"] in (True, False), name
    # PostgreSQL's backends are the postmaster's children: the tree is more than the postmaster.
    postgres_series = services["postgres"]["series"]
    assert max(postgres_series["rss_mib"]) > max(postgres_series["self_rss_mib"])
    assert Path(written["plot"]).read_bytes()[:4] == b"\x89PNG"
