"""The feedback loop on the real stack: a drift, moderators label it, the nightly learns it.

A scam wave the fast model misses (`tests/drift_posts.py`) flows through Kafka to the review
queue; moderators label every post through the review API (Dapr workflows record the decisions);
the Dapr Jobs API triggers the nightly in the review service, which retrains, evaluates and
promotes; the running worker switches to the new model without a restart. The test runs in a
database of its own, so the promotion does not reach the other tests' workers.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from jobs.retrain import decide_promotion, score_splits
from jobs.schedule import schedule_nightly
from moderation.classifier.fast.model import FastModel
from moderation.classifier.fast.store import ensure_fast_model
from moderation.datasets.build import build_dataset, load_split
from moderation.datasets.records import dedup_key
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import HumanDecision, JobRun, Review, Verdict
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker, delete_topics, ensure_topics
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices, isolated_settings
from moderation.events import PostSubmitted, review_id_for
from moderation.services.worker.registry_watch import register_champion
from moderation.settings import PROJECT_ROOT, Settings
from tests.drift_posts import lookalike_safe, scam_wave
from tests.integration.streams import STAGE_ONE_DECIDES_NOTHING, produce, running_services, wait_for

pytestmark = pytest.mark.integration

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SCAMS, LOOKALIKES, HELD_OUT = 240, 60, 150


@pytest.fixture(scope="module")
def drift_settings(
    settings: Settings,
    kafka: KafkaBroker,
    postgres: PostgresCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    run = uuid.uuid4().hex[:8]
    isolated = isolated_settings(settings, f"drift-{run}")
    isolated = isolated.model_copy(
        update={
            "db": isolated.db.model_copy(update={"name": f"moderation_drift_{run}"}),
            "models": isolated.models.model_copy(update={"reload_seconds": 1.0}),
            "nightly": isolated.nightly.model_copy(
                update={"output_dir": tmp_path_factory.mktemp("nightly")}
            ),
        }
    )
    postgres.create_database(isolated.db.name)
    asyncio.run(ensure_topics(isolated))
    yield isolated
    asyncio.run(delete_topics(isolated))
    postgres.drop_database(isolated.db.name)


@pytest.fixture(scope="module")
def engine(drift_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(drift_settings)
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def services(
    drift_settings: Settings, engine: Engine, dapr: DaprRuntime
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        drift_settings,
        extra_env={
            # Every post reaches a moderator (a QA sample of everything, in effect).
            "MODERATION_AGENT__ENABLED": "false",
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_DB__NAME": drift_settings.db.name,
            "MODERATION_MODELS__RELOAD_SECONDS": str(drift_settings.models.reload_seconds),
            "MODERATION_NIGHTLY__OUTPUT_DIR": str(drift_settings.nightly.output_dir),
        },
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


def champion_version(engine: Engine) -> str | None:
    with Session(engine) as session:
        champion = crud.get_champion(session, kind="fast")
    return champion.version if champion else None


def count(engine: Engine, query: object) -> int:
    with Session(engine) as session:
        return int(session.exec(query).one())  # type: ignore[call-overload]


def decide(settings: Settings, key: str, review_id: str, label: str) -> None:
    """One moderator's work on one review: claim it, then decide it (retried on a 503)."""
    headers = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{settings.api.port}/v1/reviews/{review_id}"
    with httpx.Client(headers=headers, timeout=30) as client:
        claimed = client.post(f"{base}/claim")
        assert claimed.status_code == 200, claimed.text
        body = {"label": label, "decision": "allow" if label == "safe" else "remove"}
        for _ in range(20):
            response = client.post(f"{base}/decision", json=body)
            if response.status_code != 503:
                break
        assert response.status_code == 202, response.text


def recall(model: FastModel, texts: list[str], label: str) -> float:
    scores = score_splits(model, {"s": [{"text": t, "label": label} for t in texts]})["s"]
    value = scores.recall[label]
    assert value is not None
    return value


@pytest.mark.timeout(1500)
async def test_a_scam_wave_is_labelled_learned_promoted_and_served_without_a_restart(
    services: PipelineServices, drift_settings: Settings, engine: Engine
) -> None:
    # The worker's database role may not write the registry (issue 11): it serves the base
    # model unregistered, and registering it is the nightly's job, done here as its first run.
    base = await asyncio.to_thread(ensure_fast_model, drift_settings, progress=False)
    await asyncio.to_thread(register_champion, engine, base, drift_settings, keep_existing=True)
    base_version = champion_version(engine)
    assert base_version == base.version
    worker_pid = services.processes["worker"].pid()
    labelled = [(text, "spam") for text in scam_wave(SCAMS, seed=1)]
    labelled += [(text, "safe") for text in lookalike_safe(LOOKALIKES, seed=2)]
    random.Random(3).shuffle(labelled)
    posts = [
        PostSubmitted(post_id=uuid.uuid4().hex, text=text, author_id=f"wave-{i % 37}")
        for i, (text, _) in enumerate(labelled)
    ]
    truth = {review_id_for(p.post_id): label for p, (_, label) in zip(posts, labelled, strict=True)}
    await produce(drift_settings, posts)
    ready_reviews = (
        select(func.count()).select_from(Review).where(col(Review.sla_due_at).isnot(None))
    )
    await asyncio.to_thread(
        wait_for,
        lambda: count(engine, ready_reviews) >= len(posts),
        600,
        f"{len(posts)} review tasks",
    )

    with Session(engine) as session:
        key, _ = crud.create_api_key(
            session, name=f"drift-mod-{uuid.uuid4().hex[:6]}", scopes=["moderate"]
        )

    # One moderator, one review after another, in the order of the wave: the decision times,
    # hence the time split and the challenger, are the same on every run. (With parallel
    # moderators the order varies, and so does the SGD fit: once in CI the challenger lost 3 of
    # the 19 gold self-harm posts and the promotion rule refused it.)
    def moderate_all() -> None:
        for review_id, label in truth.items():
            decide(drift_settings, key, review_id, label)

    await asyncio.to_thread(moderate_all)
    decided = select(func.count()).select_from(HumanDecision)
    await asyncio.to_thread(
        wait_for, lambda: count(engine, decided) >= len(posts), 300, "decisions recorded"
    )

    # The nightly, as the local schedule runs it: the Dapr Jobs API triggers the review service.
    schedule_nightly(drift_settings, name=f"nightly-{uuid.uuid4().hex[:6]}", due_time="1s")

    def finished_run() -> JobRun | None:
        with Session(engine) as session:
            run = session.exec(
                select(JobRun).where(JobRun.job == "nightly").order_by(col(JobRun.id).desc())
            ).first()
        return run if run is not None and run.status != "running" else None

    run = await asyncio.to_thread(wait_for, finished_run, 600, "the nightly run")
    assert run.status == "succeeded", run.details
    assert run.details["promoted"], run.details["decision"]
    new_version = run.details["challenger_version"]
    assert champion_version(engine) == new_version != base_version

    # The running worker switches without a restart (it polls the registry every second)...
    def worker_serves(version: str) -> bool:
        port = drift_settings.worker.classifier_health_port
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return f'moderation_worker_model_info{{kind="fast",version="{version}"}} 1.0' in metrics

    await asyncio.to_thread(wait_for, lambda: worker_serves(new_version), 60, "worker reload")
    assert services.processes["worker"].pid() == worker_pid  # the same process throughout
    # ...and the next post's verdict carries the new version.
    probe = PostSubmitted(post_id=uuid.uuid4().hex, text="hello after the nightly", author_id="p")
    await produce(drift_settings, [probe])

    def probe_version() -> str | None:
        with Session(engine) as session:
            verdict = session.exec(select(Verdict).where(Verdict.post_id == probe.post_id)).first()
        return verdict.model_version if verdict else None

    assert await asyncio.to_thread(wait_for, probe_version, 60, "probe verdict") == new_version

    # Before and after, on a held-out sample of the new kind and on the gold split.
    artifacts = drift_settings.models.artifact_dir / "fast"
    before, after = (
        FastModel.load(artifacts / base_version),
        FastModel.load(artifacts / new_version),
    )
    trained = {dedup_key(text) for text, _ in labelled}
    held_out = [t for t in scam_wave(HELD_OUT + 50, seed=99) if dedup_key(t) not in trained]
    held_out = held_out[:HELD_OUT]
    assert len(held_out) == HELD_OUT
    recall_before, recall_after = recall(before, held_out, "spam"), recall(after, held_out, "spam")
    gold = load_split(build_dataset(drift_settings.stack.cache_dir), "gold")
    gold_before = score_splits(before, {"gold": gold})
    gold_after = score_splits(after, {"gold": gold})
    gold_rule = decide_promotion(gold_before, gold_after, drift_settings.nightly)
    numbers = {
        "labelled": {"scam": SCAMS, "safe_lookalikes": LOOKALIKES},
        "models": {"before": base_version, "after": new_version},
        "held_out_scam_recall": {"before": recall_before, "after": recall_after, "posts": HELD_OUT},
        "gold_macro_f1": {
            "before": gold_before["gold"].macro_f1,
            "after": gold_after["gold"].macro_f1,
        },
        "gold_f1": {"before": gold_before["gold"].f1, "after": gold_after["gold"].f1},
        "gold_regressions": gold_rule.regressions,
        "tolerance": drift_settings.nightly.tolerance,
        "nightly": {"counts": run.counts, "decision": run.details["decision"]},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "drift-loop.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))  # noqa: T201 - the numbers the issue asks to report

    assert recall_after >= recall_before + 0.10, numbers
    assert gold_rule.regressions == [], numbers
    report = await asyncio.to_thread(Path(run.details["report"]).read_text)
    assert "**promoted**" in report
