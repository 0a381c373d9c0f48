"""The model registry and the job runs as the metrics dashboard shows them.

Registered versions with the scores their metrics hold (`model_scores` reads every shape the
registry keeps), and the latest job runs.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from sqlmodel import Session, col, select

from moderation.db.crud._sql import _utc
from moderation.db.models import JobRun, ModelVersion
from moderation.db.schemas import JobRunPublic, ModelVersionMetricsPublic

MODEL_VERSIONS_SHOWN = 200
JOB_RUNS_SHOWN = 20


class ModelScores(NamedTuple):
    """The scores a registry entry's `metrics` holds (None when absent or not a number)."""

    gold_macro_f1: float | None
    time_split_macro_f1: float | None
    validation_macro_f1: float | None
    eval_loss: float | None
    promoted: bool | None
    run_id: int | None


def _at(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def model_scores(metrics: Any) -> ModelScores:
    """Read the scores of the shapes the registry holds, tolerating anything else.

    - nightly challenger: `scores.<split>.macro_f1` (gold, time_split), `decision.promote`,
      `run_id`;
    - base model (the worker's training report): `{"split": "validation", "macro_f1": ...}`, or
      `validation.macro_f1`;
    - LoRA adapter: `eval_loss`, `run_id`.
    """
    validation = _finite(_at(metrics, "validation", "macro_f1"))
    if validation is None and _at(metrics, "split") == "validation":
        validation = _finite(_at(metrics, "macro_f1"))
    promoted = _at(metrics, "decision", "promote")
    run_id = _at(metrics, "run_id")
    return ModelScores(
        gold_macro_f1=_finite(_at(metrics, "scores", "gold", "macro_f1")),
        time_split_macro_f1=_finite(_at(metrics, "scores", "time_split", "macro_f1")),
        validation_macro_f1=validation,
        eval_loss=_finite(_at(metrics, "eval_loss")),
        promoted=promoted if isinstance(promoted, bool) else None,
        run_id=run_id if isinstance(run_id, int) and not isinstance(run_id, bool) else None,
    )


def model_version_metrics(
    session: Session, *, limit: int = MODEL_VERSIONS_SHOWN
) -> list[ModelVersionMetricsPublic]:
    """The newest `limit` registered versions of every kind with their scores, oldest first."""
    models = session.exec(
        select(ModelVersion)
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        .limit(limit)
    ).all()
    return [
        ModelVersionMetricsPublic(
            kind=model.kind,
            version=model.version,
            status=model.status,
            created_at=model.created_at,
            **model_scores(model.metrics)._asdict(),
        )
        for model in reversed(models)
    ]


def recent_job_runs(session: Session, *, limit: int = JOB_RUNS_SHOWN) -> list[JobRunPublic]:
    """The newest `limit` job runs (every job), newest first."""
    runs = session.exec(
        select(JobRun).order_by(col(JobRun.started_at).desc(), col(JobRun.id).desc()).limit(limit)
    ).all()
    public = []
    for run in runs:
        promoted = run.details.get("promoted")
        error = run.details.get("error")
        finished = run.finished_at
        public.append(
            JobRunPublic(
                id=run.id or 0,
                job=run.job,
                status=run.status,
                started_at=run.started_at,
                finished_at=finished,
                duration_seconds=(
                    round((_utc(finished) - _utc(run.started_at)).total_seconds(), 3)
                    if finished is not None
                    else None
                ),
                counts=run.counts,
                promoted=promoted if isinstance(promoted, bool) else None,
                error=str(error)[:500] if error else None,
            )
        )
    return public
