"""Registry rows are not trusted, and the worker's role cannot change them (issue 11, finding 3).

On the stack's PostgreSQL, in a database of its own with the service roles' grants
(`moderation.db.roles`): the worker's role reads the registry and nothing more, and a worker
following the registry through that role keeps serving its model when the owner's registry names
a tampered artifact or one outside the artifact store.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError
from sqlmodel import Session

from moderation.classifier.artifacts import artifact_digest
from moderation.classifier.fast.model import MODEL_FILE, FastModel
from moderation.classifier.fast.training import train_fast_model
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import ModelStatus
from moderation.db.roles import SERVICE_ROLES
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.services.worker.app import WorkerState
from moderation.services.worker.registry_watch import RegistryWatch
from moderation.settings import Settings
from tests.unit.test_fast_model import synthetic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry_settings(
    settings: Settings, postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    name = f"moderation_artifacts_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    postgres.ensure_service_roles()
    postgres.grant_service_roles(name)
    yield settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"name": name}),
            "models": settings.models.model_copy(
                update={"artifact_dir": tmp_path_factory.mktemp("models"), "reload_seconds": 60}
            ),
        }
    )
    postgres.drop_database(name)


@pytest.fixture(scope="module")
def owner(registry_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(registry_settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def as_worker(registry_settings: Settings) -> Iterator[Engine]:
    """An engine that logs in as the worker's role, as the worker does in production."""
    db = registry_settings.db.model_copy(update={"user": SERVICE_ROLES["worker"]})
    engine = make_engine(registry_settings.model_copy(update={"db": db}))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_fast_model(synthetic(10, seed=21), synthetic(4, seed=22), progress=False)
    return model.save(tmp_path_factory.mktemp("trained"))


def put(settings: Settings, trained: Path, version: str, *, where: Path | None = None) -> Path:
    """A copy of the trained artifact as `version`, in the store unless `where`."""
    target = (where or settings.models.artifact_dir / "fast") / version
    shutil.copytree(trained, target)
    metadata = (target / "metadata.json").read_text()
    model = FastModel.load(trained)
    (target / "metadata.json").write_text(metadata.replace(model.version, version))
    return target


def promote(engine: Engine, version: str, uri: Path | str, digest: str) -> None:
    with Session(engine) as session:
        crud.register_model_version(
            session,
            kind="fast",
            version=version,
            artifact_uri=str(uri),
            artifact_sha256=digest,
            metrics={},
            status=ModelStatus.CHAMPION,
        )


def refusals() -> float:
    labels = {"kind": "fast", "outcome": "refused"}
    return REGISTRY.get_sample_value("moderation_worker_model_reloads_total", labels) or 0.0


def insufficient_privilege(error: ProgrammingError) -> bool:
    return isinstance(error.orig, psycopg.errors.InsufficientPrivilege)


def test_the_worker_role_reads_the_registry_and_cannot_write_anything(
    owner: Engine, as_worker: Engine, registry_settings: Settings, trained: Path
) -> None:
    path = put(registry_settings, trained, "fast-role-check")
    promote(owner, "fast-role-check", path, artifact_digest(path))
    with Session(as_worker) as session:
        assert crud.get_champion(session, kind="fast") is not None
        assert crud.list_human_decisions(session, limit=5) == []  # the agent's precedents
    forbidden = [
        "UPDATE model_versions SET artifact_uri = '/tmp/evil', artifact_sha256 = NULL",
        "INSERT INTO model_versions (kind, version, status, artifact_uri, metrics, created_at) "
        "VALUES ('fast', 'evil', 'champion', '/tmp/evil', '{}', now())",
        "DELETE FROM model_versions",
        "INSERT INTO decisions (event_id, review_id, post_id, label, decision, moderator_id, "
        "decided_at) VALUES ('e', 'r', 'p', 'spam', 'remove', 'm', now())",
        "UPDATE posts SET status = 'allowed'",
        "SELECT * FROM api_keys",
        "CREATE TABLE evil (id int)",
    ]
    for statement in forbidden:
        with as_worker.connect() as connection, pytest.raises(ProgrammingError) as refused:
            connection.execute(text(statement))
        assert insufficient_privilege(refused.value), statement


async def test_a_tampered_or_escaping_champion_leaves_the_old_model_serving(
    owner: Engine, as_worker: Engine, registry_settings: Settings, trained: Path, tmp_path: Path
) -> None:
    good = put(registry_settings, trained, "fast-good")
    promote(owner, "fast-good", good, artifact_digest(good))
    state = WorkerState()
    watch = RegistryWatch(as_worker, registry_settings, serve=state.serve)
    await watch.start(lambda: pytest.fail("the champion should have loaded"))
    await watch.stop()  # polled by hand below
    assert state.scorer is not None and state.scorer.version == "fast-good"

    # Weights changed after the digest was registered.
    tampered = put(registry_settings, trained, "fast-tampered")
    digest = artifact_digest(tampered)
    weights = bytearray((tampered / MODEL_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (tampered / MODEL_FILE).write_bytes(bytes(weights))
    before = refusals()
    promote(owner, "fast-tampered", tampered, digest)
    await watch.poll()
    assert state.scorer.version == "fast-good"
    assert refusals() == before + 1

    # A path outside the store, with the digest of what lies there.
    outside = put(registry_settings, trained, "fast-outside", where=tmp_path)
    promote(owner, "fast-outside", outside, artifact_digest(outside))
    await watch.poll()
    assert state.scorer.version == "fast-good"
    assert refusals() == before + 2

    # A good artifact promoted next is followed: the refusals stopped nothing.
    fixed = put(registry_settings, trained, "fast-next")
    promote(owner, "fast-next", fixed, artifact_digest(fixed))
    await watch.poll()
    assert state.scorer.version == "fast-next"


async def test_a_worker_on_an_empty_registry_serves_the_base_and_still_follows(
    registry_settings: Settings, trained: Path, postgres: PostgresCluster
) -> None:
    """The worker's role may not register its base model; it serves it and keeps following."""
    name = f"{registry_settings.db.name}_empty"
    postgres.create_database(name)
    try:
        postgres.grant_service_roles(name)
        db = registry_settings.db.model_copy(update={"name": name})
        settings = registry_settings.model_copy(update={"db": db})
        owner = make_engine(settings)
        as_worker = make_engine(
            settings.model_copy(update={"db": db.model_copy(update={"user": "moderation_worker"})})
        )
        base = FastModel.load(put(settings, trained, "fast-base-empty"))
        state = WorkerState()
        watch = RegistryWatch(as_worker, settings, serve=state.serve)
        await watch.start(lambda: base)
        await watch.stop()
        assert state.scorer is base
        with Session(owner) as session:
            assert crud.get_champion(session, kind="fast") is None  # not registered: no grant

        promoted = put(settings, trained, "fast-promoted-empty")
        promote(owner, "fast-promoted-empty", promoted, artifact_digest(promoted))
        await watch.poll()
        assert state.scorer is not None and state.scorer.version == "fast-promoted-empty"
        owner.dispose()
        as_worker.dispose()
    finally:
        postgres.drop_database(name)


def test_an_older_registry_gains_the_digest_column(
    registry_settings: Settings, postgres: PostgresCluster
) -> None:
    name = f"{registry_settings.db.name}_old"
    postgres.create_database(name)
    engine = make_engine(registry_settings, url=registry_settings.db.url_for(name))
    try:
        create_tables(engine)
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE model_versions DROP COLUMN artifact_sha256"))
            connection.execute(
                text(
                    "INSERT INTO model_versions (kind, version, status, artifact_uri, metrics, "
                    "created_at) VALUES ('fast', 'fast-old', 'champion', '/m/fast-old', '{}', "
                    "now())"
                )
            )
        create_tables(engine)
        with Session(engine) as session:
            row = crud.get_champion(session, kind="fast")
        assert row is not None and row.artifact_sha256 is None  # refused by loaders until set
    finally:
        engine.dispose()
        postgres.drop_database(name)
