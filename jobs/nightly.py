"""The nightly feedback loop: aggregate, snapshot, retrain, evaluate, promote, fine-tune, report.

One run covers the human decisions since the last successful run (its window). Runs never
overlap: a run holds a PostgreSQL advisory lock (a file lock on SQLite) for its whole length,
and a run that finds the lock taken records itself as `skipped`. A run that died half-way is
marked `abandoned` by the next one, which covers the same window again; nothing is duplicated
because every output is keyed by its content (the Parquet snapshot, the model version, the
adapter name) and the registry is idempotent on kind + version.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine
from sqlmodel import Session

from jobs.feedback import load_decisions, summarize
from jobs.hash_export import export_removed_image_hashes
from jobs.report import render_feedback
from jobs.retrain import (
    PromotionDecision,
    SplitScore,
    TrainingSet,
    build_training_set,
    decide_promotion,
    score_splits,
)
from jobs.snapshot import Snapshot, write_snapshot
from moderation.cache import console, step
from moderation.classifier.artifacts import ArtifactRefused, artifact_digest
from moderation.classifier.fast.model import FastModel
from moderation.classifier.fast.store import ensure_fast_model
from moderation.classifier.fast.training import train_fast_model
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import JobRun
from moderation.events import utc_now
from moderation.services.worker.registry_watch import (
    Champion,
    fast_store,
    load_champion,
    register_champion,
)
from moderation.settings import Settings

logger = logging.getLogger(__name__)

JOB = "nightly"
FAST = "fast"
# Any constant works; it only has to be the same for every nightly run on this database.
ADVISORY_LOCK_KEY = 0x6E696768746C79  # "nightly"


@dataclass(frozen=True)
class BaseData:
    """The fast model's base splits (the cached dataset; tests pass small ones)."""

    train: list[dict[str, str]]
    validation: list[dict[str, str]]
    gold: list[dict[str, str]]
    # Rows of sources no model trains on (`dataset.EVALUATION_ONLY`): the out-of-source view.
    out_of_source: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings) -> BaseData:
        from moderation.datasets.build import build_dataset, load_split

        directory = build_dataset(settings.stack.cache_dir)
        return cls(
            train=load_split(directory, "train"),
            validation=load_split(directory, "validation"),
            gold=load_split(directory, "gold"),
            out_of_source=load_split(directory, "evaluation_only"),
        )


@dataclass
class NightlyResult:
    run_id: int
    status: str  # succeeded | skipped | failed
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# --- no overlap -----------------------------------------------------------------------------------


@contextmanager
def exclusive_run(engine: Engine, lock_file: Path) -> Iterator[bool]:
    """Yield True while this process holds the nightly lock, False when another one does.

    PostgreSQL: a session advisory lock on a connection held for the run; it goes away with
    the connection, so a killed run never leaves a stale lock. SQLite (the embedded demo): an
    exclusive `flock` on `lock_file`, released by the kernel when the process dies.
    """
    if engine.dialect.name == "postgresql":
        # A session bound to one connection: the lock lives as long as that connection.
        with engine.connect() as connection, Session(connection) as session:
            acquired = crud.try_advisory_lock(session, key=ADVISORY_LOCK_KEY)
            try:
                yield acquired
            finally:
                if acquired:
                    crud.release_advisory_lock(session, key=ADVISORY_LOCK_KEY)
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- windows --------------------------------------------------------------------------------------


def _window_bound(run: JobRun | None, key: str) -> datetime | None:
    value = run.details.get(key) if run is not None else None
    return datetime.fromisoformat(value) if value else None


def abandon_dead_runs(session: Session) -> list[int]:
    """Mark runs still `running` as `abandoned`; only called while holding the lock."""
    dead = crud.list_job_runs(session, job=JOB, status="running")
    for run in dead:
        crud.finish_job_run(
            session,
            run_id=run.id or 0,
            status="abandoned",
            details={"abandoned_at": utc_now().isoformat()},
        )
    return [run.id or 0 for run in dead]


# --- the steps ------------------------------------------------------------------------------------


def champion_model(settings: Settings, engine: Engine) -> FastModel:
    """The fast champion of the registry; the base model (registered as champion) if none.

    The champion is loaded as workers load it: from inside the artifact store, with the digest
    the registry holds. A champion refused for that (outside the store, another digest, a
    format-1 pickle, or a row from before digests) is replaced by the base model, loudly: the
    comparison must not run on an artifact nobody can vouch for.
    """
    with Session(engine) as session:
        row = crud.get_champion(session, kind=FAST)
    if row is not None:
        champion = Champion(row.version, row.artifact_uri, row.artifact_sha256)
        try:
            return load_champion(champion, fast_store(settings))
        except ArtifactRefused as refused:
            logger.error(
                "the fast champion %s is REFUSED (%s): %s; the base model replaces it",
                row.version,
                refused.reason,
                refused,
            )
            console.print(
                f"[red]nightly: fast champion {row.version} refused ({refused.reason}); "
                "the base model replaces it[/red]"
            )
    model = ensure_fast_model(settings, progress=True)
    register_champion(engine, model, settings)
    return model


@dataclass(frozen=True)
class Retraining:
    training: TrainingSet
    snapshot: Snapshot
    champion: FastModel
    challenger: FastModel
    champion_scores: dict[str, SplitScore]
    challenger_scores: dict[str, SplitScore]
    decision: PromotionDecision


def retrain(
    settings: Settings,
    engine: Engine,
    base: BaseData,
    decisions: pd.DataFrame,
    *,
    run_id: int,
    progress: bool,
) -> Retraining:
    """Train a challenger on base + human labels, score both models, apply the promotion rule."""
    rules = settings.nightly
    with step("nightly: merge human labels into the training data"):
        training = build_training_set(
            base.train,
            base.validation,
            base.gold,
            decisions,
            time_split_fraction=rules.time_split_fraction,
        )
    with step("nightly: write the training snapshot (Parquet)"):
        snapshot = write_snapshot(training.frame, rules.output_dir / "snapshots")
    champion = champion_model(settings, engine)
    challenger = train_fast_model(training.train, training.validation, progress=progress)
    challenger_path = challenger.save(fast_store(settings))
    splits: Mapping[str, Sequence[dict[str, str]]] = {
        "gold": base.gold,
        "time_split": training.time_split,
        "out_of_source": base.out_of_source,
    }
    with step("nightly: evaluate champion and challenger on gold, time split, out of source"):
        champion_scores = score_splits(champion, splits)
        challenger_scores = score_splits(challenger, splits)
    decision = decide_promotion(champion_scores, challenger_scores, rules)
    if challenger.version == champion.version:
        decision = PromotionDecision(
            promote=False,
            champion_overall=decision.champion_overall,
            challenger_overall=decision.challenger_overall,
            reasons=["the challenger is the champion (same data and configuration)"],
        )
    metrics = {
        "run_id": run_id,
        "snapshot": snapshot.version,
        "training_records": len(training.train),
        "human_trained": training.human_trained,
        "human_held_out": training.human_held_out,
        "scores": {name: score.as_dict() for name, score in challenger_scores.items()},
        "champion": champion.version,
        "champion_scores": {name: score.as_dict() for name, score in champion_scores.items()},
        "decision": decision.as_dict(),
    }
    with Session(engine) as session:
        if challenger.version != champion.version:
            crud.register_model_version(
                session,
                kind=FAST,
                version=challenger.version,
                artifact_uri=str(challenger_path),
                artifact_sha256=artifact_digest(challenger_path),
                metrics=metrics,
            )
        if decision.promote:
            crud.promote_model_version(session, kind=FAST, version=challenger.version)
    return Retraining(
        training=training,
        snapshot=snapshot,
        champion=champion,
        challenger=challenger,
        champion_scores=champion_scores,
        challenger_scores=challenger_scores,
        decision=decision,
    )


# --- the report -----------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_models(retraining: Retraining) -> str:
    """The Markdown section on the challenger, the champion and the promotion decision."""
    lines = [
        "## Fast model: challenger against champion",
        "",
        f"- Champion: `{retraining.champion.version}`",
        f"- Challenger: `{retraining.challenger.version}`, trained on "
        f"{len(retraining.training.train):,} records ({retraining.training.human_trained:,} "
        f"human labels; {retraining.training.human_held_out:,} newest held out as the time split)",
        f"- Training snapshot: `{retraining.snapshot.path.name}` "
        f"({retraining.snapshot.rows:,} rows)",
        f"- Decision: **{'promoted' if retraining.decision.promote else 'not promoted'}** — "
        + "; ".join(retraining.decision.reasons),
        "",
    ]
    for regression in retraining.decision.regressions:
        lines.append(f"  - regression: {regression}")
    for split, challenger in retraining.challenger_scores.items():
        champion = retraining.champion_scores[split]
        lines += [
            "",
            f"### {split} ({challenger.posts:,} posts)",
            "",
            "| category | support | champion F1 | challenger F1 | champion recall "
            "| challenger recall |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for category, support in challenger.support.items():
            if support == 0:
                continue
            lines.append(
                f"| {category} | {support} | {_number(champion.f1[category])} "
                f"| {_number(challenger.f1[category])} | {_number(champion.recall[category])} "
                f"| {_number(challenger.recall[category])} |"
            )
        lines.append(
            f"| **macro F1** | | {_number(champion.macro_f1)} | {_number(challenger.macro_f1)} "
            "| | |"
        )
    return "\n".join(lines) + "\n"


# --- the run --------------------------------------------------------------------------------------


def run_nightly(
    settings: Settings,
    *,
    engine: Engine | None = None,
    base: BaseData | None = None,
    lora: bool | None = None,
    progress: bool = True,
) -> NightlyResult:
    """One nightly run (see the module docstring); returns how it ended.

    `lora` overrides `settings.nightly.lora.enabled`. Raises what a failing step raised, after
    recording the run as `failed`.
    """
    owned = engine is None
    engine = engine or make_engine(settings)
    try:
        create_tables(engine)
        with exclusive_run(engine, settings.nightly.output_dir / ".nightly.lock") as acquired:
            if not acquired:
                return _record_skipped(engine)
            return _run_locked(settings, engine, base, lora, progress)
    finally:
        if owned:
            engine.dispose()


def _record_skipped(engine: Engine) -> NightlyResult:
    reason = "another nightly run holds the lock"
    with Session(engine) as session:
        run = crud.start_job_run(session, job=JOB, details={"reason": reason})
        crud.finish_job_run(session, run_id=run.id or 0, status="skipped")
    console.print(f"[yellow]nightly skipped:[/yellow] {reason}")
    return NightlyResult(run_id=run.id or 0, status="skipped", details={"reason": reason})


def _run_locked(
    settings: Settings,
    engine: Engine,
    base: BaseData | None,
    lora: bool | None,
    progress: bool,
) -> NightlyResult:
    now = utc_now()
    with Session(engine) as session:
        abandoned = abandon_dead_runs(session)
        succeeded = crud.list_job_runs(session, job=JOB, status="succeeded")
        last = succeeded[0] if succeeded else None
        since = _window_bound(last, "window_end")
        previous_since = _window_bound(last, "window_start")
        window = {
            "window_start": since.isoformat() if since else None,
            "window_end": now.isoformat(),
            "abandoned_runs": abandoned,
        }
        run = crud.start_job_run(session, job=JOB, details=window)
    run_id = run.id or 0
    counts: dict[str, Any] = {}
    details: dict[str, Any] = dict(window)
    try:
        report_dir = settings.nightly.output_dir / "reports" / f"run-{run_id}"
        report_dir.mkdir(parents=True, exist_ok=True)
        with step("nightly: aggregate the human decisions (pandas)"):
            current = load_decisions(engine, since=since, until=now)
            previous = (
                load_decisions(engine, since=previous_since, until=since)
                if since is not None
                else current.iloc[:0]
            )
            summary = summarize(current, previous, hardest=settings.nightly.hardest_examples)
            sections = [
                f"# Nightly run {run_id}\n\nWindow: {window['window_start'] or 'the beginning'}"
                f" → {window['window_end']}\n",
                render_feedback(summary, report_dir),
            ]
        counts["decisions_in_window"] = len(current)
        with step("nightly: export the hashes of images humans removed (shareable lists)"):
            hashlists = settings.nightly.output_dir / "hashlists"
            exported = export_removed_image_hashes(engine, hashlists, until=now)
        counts["removed_images_listed"] = sum(exported.values())
        details["hashlists"] = {"dir": str(hashlists), "images": exported}
        if len(current) < settings.nightly.min_new_decisions:
            details["retrain"] = (
                f"skipped: {len(current)} new decision(s), fewer than "
                f"{settings.nightly.min_new_decisions}"
            )
            sections.append(f"## Models\n\nNo retraining: {details['retrain']}.\n")
        else:
            all_decisions = load_decisions(engine, until=now)
            counts["decisions_total"] = len(all_decisions)
            retraining = retrain(
                settings,
                engine,
                base or BaseData.load(settings),
                all_decisions,
                run_id=run_id,
                progress=progress,
            )
            counts |= {
                "training_records": len(retraining.training.train),
                "human_trained": retraining.training.human_trained,
                "human_held_out": retraining.training.human_held_out,
            }
            details |= {
                "champion_version": retraining.champion.version,
                "challenger_version": retraining.challenger.version,
                "promoted": retraining.decision.promote,
                "decision": retraining.decision.as_dict(),
                "snapshot": str(retraining.snapshot.path),
                "scores": {
                    "champion": {k: v.as_dict() for k, v in retraining.champion_scores.items()},
                    "challenger": {k: v.as_dict() for k, v in retraining.challenger_scores.items()},
                },
            }
            sections.append(render_models(retraining))
            if settings.nightly.lora.enabled if lora is None else lora:
                details["lora"], lora_section = _fine_tune(settings, engine, all_decisions, run_id)
                sections.append(lora_section)
        report = report_dir / "report.md"
        report.write_text("\n".join(sections), encoding="utf-8")
        details["report"] = str(report)
    except BaseException as error:
        with Session(engine) as session:
            crud.finish_job_run(
                session,
                run_id=run_id,
                status="failed",
                counts=counts,
                details=details | {"error": f"{type(error).__name__}: {error}"[:2_000]},
            )
        raise
    with Session(engine) as session:
        crud.finish_job_run(
            session, run_id=run_id, status="succeeded", counts=counts, details=details
        )
    console.print(f"[green]✓[/green] nightly run {run_id} succeeded; report: {details['report']}")
    return NightlyResult(run_id=run_id, status="succeeded", counts=counts, details=details)


def _fine_tune(
    settings: Settings, engine: Engine, decisions: pd.DataFrame, run_id: int
) -> tuple[dict[str, Any], str]:
    # Imported here: only the LoRA step needs it.
    from jobs.lora import run_lora

    result = run_lora(settings, engine, decisions, run_id=run_id, progress=True)
    return result.as_dict(), result.render()
