"""One cell of `moderation bench --scaling` on the real stack: 2 partitions, 2 worker processes.

Both worker processes must have scored posts (Kafka gave each a partition of the run's topic)
and no post may be lost or recorded twice.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.classifier.fast.store import ensure_fast_model
from moderation.db import crud
from moderation.devtools.bench.scaling import Cell, Load, check_cells, run_cell
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.services.worker.registry_watch import register_champion
from moderation.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_two_workers_share_two_partitions_and_lose_nothing(
    settings: Settings,
    kafka: KafkaBroker,
    postgres: PostgresCluster,
    read_model: Engine,
    unique: str,
) -> None:
    # Registering models is the nightly's job: the worker's role may only read the registry.
    register_champion(
        read_model, ensure_fast_model(settings, progress=False), settings, keep_existing=True
    )
    with Session(read_model) as session:
        api_key, _ = crud.create_api_key(
            session, name=f"it-scaling-{unique}", scopes=["submit", "read"]
        )

    cell = Cell(partitions=2, workers=2, length=50)
    load = Load(rate=200, seconds=2.0, saturation_posts=2_000, warmup_posts=200)
    figures = run_cell(settings, f"it{unique}", api_key, cell, load)

    assert figures["name"] == "2 partitions × 2 workers × 50 chars"
    assert figures["saturation"]["posts"] == 2_000
    assert figures["fixed_rate"]["posts"] == 400
    assert figures["fixed_rate"]["accepted_posts_per_second"] == 200
    assert figures["saturation"]["posts_per_second"] > 0
    for phase in ("warmup", "fixed_rate", "saturation"):
        assert figures[phase]["lost"] == 0, phase
        assert figures[phase]["doubled"] == 0, phase
    check_cells([figures])
    # Each process scored posts: the group split the two partitions between them.
    assert set(figures["worker_posts"]) == {"worker", "worker-2"}
    assert all(count > 0 for count in figures["worker_posts"].values()), figures["worker_posts"]
    # Every post was scored (a redelivery after a rebalance may score one twice).
    assert sum(figures["worker_posts"].values()) >= 200 + 400 + 2_000
