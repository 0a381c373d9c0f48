"""The nightly run on SQLite with a small synthetic base dataset: windows, job_runs, the lock,
promotion, and reruns after a crash (the real-stack version is tests/integration/test_nightly.py).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

import jobs.nightly
from jobs.nightly import BaseData, exclusive_run, run_nightly
from moderation.classifier.artifacts import artifact_digest
from moderation.classifier.fast.training import train_fast_model
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import HumanDecision, JobRun, ModelStatus, ModelVersion, Post, Verdict
from moderation.events import utc_now
from moderation.settings import ModelStoreSettings, NightlySettings, Settings
from tests import crud_helpers
from tests.drift_posts import lookalike_safe, scam_wave
from tests.unit.test_fast_model import synthetic


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        models=ModelStoreSettings(artifact_dir=tmp_path / "models"),
        nightly=NightlySettings(output_dir=tmp_path / "nightly", min_new_decisions=20),
    )


@pytest.fixture
def engine(tmp_path: Path, settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings, url=f"sqlite:///{tmp_path / 'nightly.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def base() -> BaseData:
    return BaseData(
        train=synthetic(40, seed=1),
        validation=synthetic(10, seed=2),
        gold=synthetic(15, seed=3),
        out_of_source=synthetic(10, seed=4),
    )


@pytest.fixture
def champion(settings: Settings, engine: Engine, base: BaseData) -> str:
    """The served model: trained on the base data only and registered as champion."""
    model = train_fast_model(base.train, base.validation, progress=False)
    path = model.save(settings.models.artifact_dir / "fast")
    with Session(engine) as session:
        crud.register_model_version(
            session,
            kind="fast",
            version=model.version,
            artifact_uri=str(path),
            artifact_sha256=artifact_digest(path),
            metrics={},
            status=ModelStatus.CHAMPION,
        )
    return model.version


def add_decisions(engine: Engine, labelled: list[tuple[str, str]]) -> None:
    """Posts and the moderators' decisions on them, one second apart, ending now."""
    start = utc_now() - timedelta(seconds=len(labelled) + 1)
    with Session(engine) as session:
        for index, (text, label) in enumerate(labelled):
            post_id = uuid.uuid4().hex
            at = start + timedelta(seconds=index)
            session.add(Post(id=post_id, text=text, author_id="a", submitted_at=at))
            # What the model said before the moderator looked: safe, fairly sure.
            session.add(
                Verdict(
                    post_id=post_id,
                    event_id=uuid.uuid4().hex,
                    stage="model",
                    decision="review",
                    primary_category="safe",
                    confidence=0.7,
                    scores={"safe": 0.7, "spam": 0.2},
                    model_version="fast-base",
                    policy_version="v1",
                    latency_ms=1.0,
                    occurred_at=at - timedelta(milliseconds=500),
                )
            )
            session.add(
                HumanDecision(
                    event_id=uuid.uuid4().hex,
                    review_id=f"review-{post_id}",
                    post_id=post_id,
                    label=label,
                    decision="allow" if label == "safe" else "remove",
                    moderator_id="mod-a",
                    decided_at=at,
                )
            )
        session.commit()


def drift(spam: int, safe: int) -> list[tuple[str, str]]:
    """The scam wave and its safe look-alikes, as moderators meet them: shuffled."""
    labelled = [(text, "spam") for text in scam_wave(spam, seed=11)]
    labelled += [(text, "safe") for text in lookalike_safe(safe, seed=12)]
    random.Random(13).shuffle(labelled)
    return labelled


def runs(engine: Engine) -> list[JobRun]:
    with Session(engine) as session:
        return list(session.exec(select(JobRun).order_by(col(JobRun.id))).all())


def fast_versions(engine: Engine) -> list[ModelVersion]:
    with Session(engine) as session:
        return crud_helpers.list_model_versions(session, kind="fast")


def test_a_night_without_enough_decisions_reports_and_does_not_retrain(
    settings: Settings, engine: Engine, base: BaseData, champion: str
) -> None:
    add_decisions(engine, [("hello there", "safe")] * 3)
    result = run_nightly(settings, engine=engine, base=base, progress=False)
    assert result.status == "succeeded"
    assert result.counts == {"decisions_in_window": 3, "removed_images_listed": 0}
    assert "fewer than 20" in result.details["retrain"]
    report = Path(result.details["report"]).read_text()
    assert "## Human feedback" in report and "No retraining" in report
    assert [v.version for v in fast_versions(engine)] == [champion]


def test_a_drift_is_learned_promoted_and_recorded(
    settings: Settings, engine: Engine, base: BaseData, champion: str
) -> None:
    add_decisions(engine, drift(120, 30))
    result = run_nightly(settings, engine=engine, base=base, progress=False)

    assert result.status == "succeeded", result.details
    details = result.details
    assert details["champion_version"] == champion
    assert details["promoted"], details["decision"]
    scores = details["scores"]
    # Both models are judged out of source too, on rows no model trains on.
    assert {"gold", "time_split", "out_of_source"} <= scores["challenger"].keys()
    assert (
        scores["champion"]["out_of_source"]["support"]
        == scores["challenger"]["out_of_source"]["support"]
    )
    # The time split holds the newest decisions, mostly the scam wave the champion misses.
    assert scores["challenger"]["time_split"]["recall"]["spam"] > (
        scores["champion"]["time_split"]["recall"]["spam"] + 0.10
    )
    assert result.counts["human_trained"] + result.counts["human_held_out"] == 150
    with Session(engine) as session:
        promoted = crud.get_champion(session, kind="fast")
    assert promoted is not None and promoted.version == details["challenger_version"]
    assert promoted.metrics["decision"]["promote"] is True
    assert Path(details["snapshot"]).is_file()
    report_dir = Path(details["report"]).parent
    assert {"report.md", "confusion.png", "agreement.png", "drift.png"} <= {
        p.name for p in report_dir.iterdir()
    }
    run = runs(engine)[-1]
    assert run.status == "succeeded" and run.finished_at is not None
    assert run.details["challenger_version"] == details["challenger_version"]

    # The next night has no new decision: nothing is retrained, the window moved on.
    again = run_nightly(settings, engine=engine, base=base, progress=False)
    assert again.counts == {"decisions_in_window": 0, "removed_images_listed": 0}
    assert again.details["window_start"] == details["window_end"]


def test_a_run_that_dies_half_way_is_rerun_without_duplicates(
    settings: Settings,
    engine: Engine,
    base: BaseData,
    champion: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_decisions(engine, drift(120, 30))

    def crash(*args: object) -> str:
        raise RuntimeError("killed while writing the report")

    monkeypatch.setattr(jobs.nightly, "render_models", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_nightly(settings, engine=engine, base=base, progress=False)
    failed = runs(engine)[-1]
    assert failed.status == "failed" and "killed" in failed.details["error"]

    monkeypatch.undo()
    result = run_nightly(settings, engine=engine, base=base, progress=False)
    assert result.status == "succeeded"
    # The rerun covered the same window and produced the same challenger, registered once.
    assert result.details["window_start"] is None
    versions = [v.version for v in fast_versions(engine)]
    assert sorted(versions) == sorted({champion, result.details["challenger_version"]})
    snapshots = list((settings.nightly.output_dir / "snapshots").glob("*.parquet"))
    assert len(snapshots) == 1


def test_a_run_left_running_by_a_dead_process_is_marked_abandoned(
    settings: Settings, engine: Engine, base: BaseData, champion: str
) -> None:
    with Session(engine) as session:
        dead = crud.start_job_run(session, job="nightly")
    result = run_nightly(settings, engine=engine, base=base, progress=False)
    assert result.details["abandoned_runs"] == [dead.id]
    assert runs(engine)[0].status == "abandoned"


def test_two_runs_never_overlap(
    settings: Settings, engine: Engine, base: BaseData, champion: str
) -> None:
    lock_file = settings.nightly.output_dir / ".nightly.lock"
    with exclusive_run(engine, lock_file) as first:
        assert first
        result = run_nightly(settings, engine=engine, base=base, progress=False)
    assert result.status == "skipped"
    assert result.details["reason"] == "another nightly run holds the lock"
    assert [run.status for run in runs(engine)] == ["skipped"]
    # Released: the next run goes ahead.
    assert run_nightly(settings, engine=engine, base=base, progress=False).status == "succeeded"


def test_a_champion_that_fails_its_digest_is_replaced_by_the_base_model(
    settings: Settings,
    engine: Engine,
    base: BaseData,
    champion: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Session(engine) as session:
        row = crud.get_champion(session, kind="fast")
        assert row is not None
        row.artifact_sha256 = "0" * 64  # the registry no longer vouches for these files
        session.add(row)
        session.commit()
    fresh = train_fast_model(synthetic(40, seed=7), base.validation, progress=False)
    path = fresh.save(settings.models.artifact_dir / "fast")
    monkeypatch.setattr(jobs.nightly, "ensure_fast_model", lambda *_, **__: fresh)

    with caplog.at_level(logging.ERROR, logger="jobs.nightly"):
        served = jobs.nightly.champion_model(settings, engine)

    assert served is fresh and fresh.version != champion
    assert any("REFUSED (digest)" in r.getMessage() for r in caplog.records)
    with Session(engine) as session:
        now = crud.get_champion(session, kind="fast")
    assert now is not None and now.version == fresh.version
    assert now.artifact_sha256 == artifact_digest(path)
