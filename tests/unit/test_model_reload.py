"""Workers follow the model registry without a restart
(`moderation.services.worker.registry_watch`).

Real fast-model artifacts in tmp dirs (one tiny model trained per module, copied under other
versions: only the version matters here), a SQLite registry, the worker's handler on the
in-memory broker, and a scripted LLM for the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agents import Model
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.classifier.artifacts import artifact_digest
from moderation.classifier.cascade import AgentStage
from moderation.classifier.fast.model import METADATA_FILE, MODEL_FILE, FastModel
from moderation.classifier.fast.training import train_fast_model
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import ModelStatus
from moderation.events import ModerationVerdict, PostSubmitted
from moderation.services.worker.app import Worker, WorkerState, create_broker
from moderation.services.worker.registry_watch import RegistryWatch
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Stage
from tests.scripted_llm import ScriptedModel, ScriptedProvider, remove_json
from tests.unit.test_fast_model import synthetic

LORA = "moderation-lora-v2"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_fast_model(synthetic(10, seed=11), synthetic(4, seed=12), progress=False)
    return model.save(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def reload_settings(tmp_path: Path) -> Settings:
    settings = Settings()
    return settings.model_copy(
        update={
            "models": settings.models.model_copy(
                update={"artifact_dir": tmp_path / "models", "reload_seconds": 0.05}
            )
        }
    )


@pytest.fixture
def engine(tmp_path: Path, reload_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(reload_settings, url=f"sqlite:///{tmp_path / 'registry.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def artifact(trained: Path, reload_settings: Settings) -> Callable[[str], Path]:
    """A copy of the trained artifact saved as `version` in the artifact store."""

    def copy(version: str) -> Path:
        target = reload_settings.models.artifact_dir / "fast" / version
        shutil.copytree(trained, target)
        metadata = json.loads((target / METADATA_FILE).read_text())
        (target / METADATA_FILE).write_text(json.dumps(metadata | {"version": version}))
        return target

    return copy


@pytest.fixture
def worker() -> Worker:
    """The worker's router (the handler, its publishers) and the models it serves."""
    return Worker(Settings())


@pytest.fixture
def kafka_broker(worker: Worker) -> KafkaBroker:
    return create_broker(worker)


@pytest.fixture
def served(worker: Worker) -> Iterator[WorkerState]:
    """The worker's own state (the handler reads it), emptied afterwards."""
    yield worker.state
    worker.state.scorer = None
    worker.state.agent = None


def watching(state: WorkerState, engine: Engine, settings: Settings) -> RegistryWatch:
    """A registry watch serving into `state`, as the worker's start-up builds it."""
    return RegistryWatch(engine, settings, serve=state.serve, agent=state.agent)


def promote(
    engine: Engine,
    version: str,
    uri: Path | str,
    *,
    kind: str = "fast",
    digest: str | None = None,
) -> None:
    """Register `version` as champion, with the digest of the files at `uri` unless `digest`."""
    path = Path(str(uri).removeprefix("file://"))
    if digest is None and (path / METADATA_FILE).is_file():
        digest = artifact_digest(path)
    with Session(engine) as session:
        crud.register_model_version(
            session,
            kind=kind,
            version=version,
            artifact_uri=str(uri),
            artifact_sha256=digest,
            metrics={},
            status=ModelStatus.CHAMPION,
        )


def champion(engine: Engine, kind: str = "fast") -> str | None:
    with Session(engine) as session:
        model = crud.get_champion(session, kind=kind)
        return model.version if model is not None else None


def no_base() -> FastModel:
    raise AssertionError("the base model was built although the registry has a champion")


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def reloads(kind: str, outcome: str) -> float:
    return metric("moderation_worker_model_reloads_total", kind=kind, outcome=outcome) or 0.0


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while not condition():  # noqa: ASYNC110 - the watch offers no event to wait on
            await asyncio.sleep(0.01)


async def verdicts_for(
    worker: Worker, kafka_broker: KafkaBroker, *texts: str
) -> list[ModerationVerdict]:
    """One batch through the worker's handler; the verdicts it published."""
    topic = worker.settings.kafka.topics.posts_submitted
    async with TestKafkaBroker(kafka_broker) as broker:
        for number, text in enumerate(texts):
            post = PostSubmitted(post_id=f"p{number}", text=text, author_id="u1")
            await broker.publish(post.model_dump_json().encode(), topic=topic, key=post.key())
        return [
            ModerationVerdict.model_validate(call.args[0])
            for call in worker.verdict_publisher.mock.call_args_list
        ]


# --- start-up ----------------------------------------------------------------------------------


async def test_start_up_serves_the_registry_champion(
    engine: Engine, reload_settings: Settings, artifact: Callable[[str], Path]
) -> None:
    promote(engine, "fast-champion", f"file://{artifact('fast-champion')}")
    state = WorkerState()
    watch = watching(state, engine, reload_settings)
    await watch.start(no_base)
    await watch.stop()

    assert state.scorer is not None and state.scorer.version == "fast-champion"
    assert champion(engine) == "fast-champion"
    assert metric("moderation_worker_model_info", kind="fast", version="fast-champion") == 1


async def test_start_up_with_an_empty_registry_serves_and_registers_the_base(
    engine: Engine, reload_settings: Settings, artifact: Callable[[str], Path]
) -> None:
    base = FastModel.load(artifact("fast-base"))
    state = WorkerState()
    watch = watching(state, engine, reload_settings)
    await watch.start(lambda: base)
    await watch.stop()

    assert state.scorer is base
    with Session(engine) as session:
        registered = crud.get_champion(session, kind="fast")
    assert registered is not None and registered.version == "fast-base"
    # Where the artifact store keeps it: another worker can load it from there.
    assert FastModel.load(Path(registered.artifact_uri)).version == "fast-base"


async def test_start_up_never_demotes_a_champion_even_one_it_cannot_load(
    engine: Engine, reload_settings: Settings, artifact: Callable[[str], Path], tmp_path: Path
) -> None:
    promote(engine, "fast-broken", reload_settings.models.artifact_dir / "fast" / "missing")
    base = FastModel.load(artifact("fast-base"))
    failed = reloads("fast", "failed")
    state = WorkerState()
    watch = watching(state, engine, reload_settings)
    await watch.start(lambda: base)
    await watch.stop()

    assert state.scorer is base  # still scoring
    assert champion(engine) == "fast-broken"  # and the nightly's choice stands
    assert reloads("fast", "failed") == failed + 1


# --- following promotions ------------------------------------------------------------------------


async def test_a_promoted_champion_is_served_from_the_next_batch(
    engine: Engine,
    reload_settings: Settings,
    artifact: Callable[[str], Path],
    worker: Worker,
    served: WorkerState,
    kafka_broker: KafkaBroker,
) -> None:
    promote(engine, "fast-old", artifact("fast-old"))
    watch = watching(served, engine, reload_settings)
    await watch.start(no_base)
    try:
        before = await verdicts_for(worker, kafka_broker, "lovely morning at the park")
        loaded = reloads("fast", "loaded")

        promote(engine, "fast-new", artifact("fast-new"))  # the nightly promotes
        await wait_until(lambda: served.scorer is not None and served.scorer.version == "fast-new")
        after = await verdicts_for(worker, kafka_broker, "lovely morning at the park")
    finally:
        await watch.stop()

    assert [v.model_version for v in before] == ["fast-old"]
    assert [v.model_version for v in after] == ["fast-new"]
    assert reloads("fast", "loaded") == loaded + 1
    assert metric("moderation_worker_model_info", kind="fast", version="fast-new") == 1
    assert metric("moderation_worker_model_info", kind="fast", version="fast-old") is None


async def polled_by_hand(
    engine: Engine, settings: Settings, good: Path
) -> tuple[WorkerState, RegistryWatch]:
    """A watch serving the champion `fast-good` (at `good`), stopped: tests call `poll()`."""
    promote(engine, "fast-good", good)
    state = WorkerState()
    watch = watching(state, engine, settings)
    await watch.start(no_base)
    await watch.stop()
    return state, watch


async def test_a_champion_that_does_not_load_leaves_the_old_model_serving(
    engine: Engine,
    reload_settings: Settings,
    artifact: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state, watch = await polled_by_hand(engine, reload_settings, artifact("fast-good"))
    broken = reload_settings.models.artifact_dir / "fast" / "broken"
    broken.mkdir()
    (broken / METADATA_FILE).write_text("{not json")
    promote(engine, "fast-broken", broken, digest=artifact_digest(broken))
    failed = reloads("fast", "failed")

    with caplog.at_level(logging.ERROR, logger="moderation.services.worker.registry_watch"):
        for _ in range(3):
            await watch.poll()

    assert state.scorer is not None and state.scorer.version == "fast-good"
    assert reloads("fast", "failed") == failed + 3  # retried at every poll...
    assert len([r for r in caplog.records if "fast-broken" in r.getMessage()]) == 1  # logged once
    assert metric("moderation_worker_model_info", kind="fast", version="fast-good") == 1

    # Once the artifact is fixed (and registered with its digest), the next poll serves it.
    shutil.rmtree(broken)
    shutil.copytree(artifact("fast-broken"), broken)
    with Session(engine) as session:
        row = crud.get_champion(session, kind="fast")
        assert row is not None
        row.artifact_sha256 = artifact_digest(broken)
        session.add(row)
        session.commit()
    await watch.poll()
    assert state.scorer.version == "fast-broken"


# --- registry rows are not trusted (issue 11) ---------------------------------------------------


def _tampered(artifact: Callable[[str], Path], version: str) -> tuple[Path, str]:
    """An artifact whose weights changed after its digest was taken."""
    path = artifact(version)
    digest = artifact_digest(path)
    weights = bytearray((path / MODEL_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (path / MODEL_FILE).write_bytes(bytes(weights))
    return path, digest


@pytest.mark.parametrize(
    "case", ["tampered", "no-digest", "outside", "dot-dot", "symlink-out", "pickle"]
)
async def test_a_champion_the_registry_may_not_vouch_for_is_refused_and_the_old_model_serves(
    case: str,
    engine: Engine,
    reload_settings: Settings,
    artifact: Callable[[str], Path],
    trained: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state, watch = await polled_by_hand(engine, reload_settings, artifact("fast-good"))
    store = reload_settings.models.artifact_dir / "fast"
    outside = tmp_path / "outside" / "fast-evil"
    shutil.copytree(trained, outside)
    if case == "tampered":
        path, digest = _tampered(artifact, "fast-evil")
        promote(engine, "fast-evil", path, digest=digest)
    elif case == "no-digest":
        promote(engine, "fast-evil", artifact("fast-evil"), digest="")
    elif case == "outside":  # a good digest does not make a path outside the store acceptable
        promote(engine, "fast-evil", outside)
    elif case == "dot-dot":
        promote(engine, "fast-evil", f"{store}/../../outside/fast-evil", digest="")
    elif case == "symlink-out":
        (store / "fast-evil").symlink_to(outside)
        promote(engine, "fast-evil", store / "fast-evil", digest=artifact_digest(outside))
    else:  # a format-1 artifact: a pickle, with a digest that matches
        path = artifact("fast-evil")
        metadata = json.loads((path / METADATA_FILE).read_text())
        (path / "model.joblib").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
        metadata |= {"format": 1, "files": {"model": "model.joblib"}}
        (path / METADATA_FILE).write_text(json.dumps(metadata))
        promote(engine, "fast-evil", path)
    refused = reloads("fast", "refused")

    with caplog.at_level(logging.ERROR, logger="moderation.services.worker.registry_watch"):
        for _ in range(2):
            await watch.poll()

    assert state.scorer is not None and state.scorer.version == "fast-good"
    assert reloads("fast", "refused") == refused + 2
    [logged] = [r.getMessage() for r in caplog.records if "fast-evil" in r.getMessage()]
    assert "REFUSED" in logged and "serving the current model" in logged
    assert metric("moderation_worker_model_info", kind="fast", version="fast-good") == 1


async def test_with_the_registry_down_the_worker_keeps_serving_then_catches_up(
    engine: Engine,
    reload_settings: Settings,
    artifact: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = make_engine(reload_settings, url=f"sqlite:///{tmp_path / 'no-such-dir' / 'r.db'}")
    base = FastModel.load(artifact("fast-base"))
    state = WorkerState()
    watch = watching(state, down, reload_settings)
    with caplog.at_level(logging.WARNING, logger="moderation.services.worker.registry_watch"):
        await watch.start(lambda: base)
        await watch.stop()
        for _ in range(3):
            await watch.poll()
    assert state.scorer is base
    [logged] = [r for r in caplog.records if r.name == "moderation.services.worker.registry_watch"]
    assert "not reachable" in logged.getMessage()

    # The registry answers again: the base model is registered, as no champion exists...
    watch.engine = engine
    await watch.poll()
    assert champion(engine) == "fast-base"
    # ...and a later promotion is followed.
    promote(engine, "fast-next", artifact("fast-next"))
    await watch.poll()
    assert state.scorer is not None and state.scorer.version == "fast-next"
    down.dispose()


# --- the agent's LoRA adapter --------------------------------------------------------------------


@dataclass
class NamingProvider(ScriptedProvider):
    """A scripted model that records the model names the runs asked for."""

    names: list[str | None] = field(default_factory=list)

    def get_model(self, model_name: str | None) -> Model:
        self.names.append(model_name)
        return super().get_model(model_name)


class Uncertain:
    """A stage-1 scorer that leaves every post to the agent."""

    version = "fast-uncertain"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        out = np.full((len(texts), len(CATEGORIES)), 0.2)
        out[:, CATEGORIES.index(Category.SAFE)] = 0.4
        return out


async def agent_versions(worker: Worker, kafka_broker: KafkaBroker) -> list[str]:
    verdicts = await verdicts_for(worker, kafka_broker, "hmm")
    return [v.model_version for v in verdicts if v.stage is Stage.AGENT]


async def test_the_agent_lora_champion_names_the_agents_model(
    engine: Engine,
    reload_settings: Settings,
    worker: Worker,
    served: WorkerState,
    kafka_broker: KafkaBroker,
) -> None:
    base_name = worker.settings.llm.model
    provider = NamingProvider(ScriptedModel([remove_json(Category.SPAM)]))
    served.scorer = Uncertain()
    served.agent = AgentStage(worker.settings, provider, None)
    watch = watching(served, engine, reload_settings)  # polled by hand
    await watch.poll()
    assert await agent_versions(worker, kafka_broker) == [base_name]

    promote(engine, LORA, "/models/lora/v2", kind="agent-lora")
    await watch.poll()
    assert await agent_versions(worker, kafka_broker) == [LORA]
    assert provider.names[-1] == LORA  # the name vLLM selects the adapter by
    assert metric("moderation_worker_model_info", kind="agent", version=LORA) == 1

    # No agent-lora champion any more: back to the base model.
    with Session(engine) as session:
        adapter = crud.get_champion(session, kind="agent-lora")
        assert adapter is not None
        adapter.status = ModelStatus.RETIRED
        session.add(adapter)
        session.commit()
    await watch.poll()
    assert await agent_versions(worker, kafka_broker) == [base_name]
    assert provider.names[-1] == base_name
    assert metric("moderation_worker_model_info", kind="agent", version=LORA) is None


async def test_an_agent_run_keeps_the_model_name_it_started_with(
    worker: Worker, served: WorkerState, kafka_broker: KafkaBroker
) -> None:
    """A promotion during a run: its verdict names the model that answered it."""

    def promoted_meanwhile() -> str:
        assert served.agent is not None
        served.agent.model_name = LORA
        return remove_json(Category.SPAM)

    served.scorer = Uncertain()
    model = ScriptedModel([promoted_meanwhile])
    served.agent = AgentStage(worker.settings, ScriptedProvider(model), None)
    assert await agent_versions(worker, kafka_broker) == [worker.settings.llm.model]
    assert await agent_versions(worker, kafka_broker) == [LORA]
