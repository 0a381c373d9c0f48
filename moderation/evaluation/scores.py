"""Evaluate a model on a labelled JSONL dataset (the `moderation eval` command).

Per category: precision, recall and F1 of the argmax prediction against the label. Flagged vs
safe: a post is flagged when its argmax prediction is not `safe` (precision, recall, F1), and
AUPRC ranks posts by the flagged score 1 − P(safe). Calibration per column: Brier score and
expected calibration error. Plus the confusion matrix (rows: labels, columns: predictions,
taxonomy order), support counts and predict throughput.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from moderation.taxonomy import CATEGORIES, Category

FLAGGED_RULE = "flagged when the argmax prediction is not safe"
FLAGGED_SCORE = "1 - P(safe)"


class ProbabilisticModel(Protocol):
    """What `evaluate` needs: calibrated probabilities, columns in `CATEGORIES` order."""

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[Any]: ...


class CategoryMetrics(BaseModel):
    """Precision/recall/F1 of one category; None where undefined.

    Precision is None when nothing was predicted in the category, recall and F1 are None when
    no post carries its label; a labelled category that is never predicted has F1 0.
    """

    precision: float | None = Field(description="of posts predicted in this category")
    recall: float | None = Field(description="of posts labelled with this category")
    f1: float | None
    support: int = Field(description="posts labelled with this category")
    predicted: int = Field(description="posts predicted in this category")
    brier: float = Field(description="mean squared error of this column's probability")
    ece: float = Field(
        description="expected calibration error of this column (10 equal-width bins)"
    )


class FlaggedMetrics(BaseModel):
    """Violating (any category but safe) versus safe."""

    rule: str = Field(default=FLAGGED_RULE, description="how P/R/F1 decide 'flagged'")
    score: str = Field(default=FLAGGED_SCORE, description="the ranking score of AUPRC")
    precision: float | None
    recall: float | None
    f1: float | None
    auprc: float | None = Field(description="average precision of the flagged score")
    support_flagged: int
    support_safe: int


class EvalReport(BaseModel):
    """The result of `evaluate`; `moderation eval --json` prints it as one JSON object."""

    model_version: str | None
    posts: int
    categories: list[Category] = Field(default_factory=lambda: list(CATEGORIES))
    per_category: dict[Category, CategoryMetrics] = Field(description="in taxonomy order")
    macro_f1: float | None = Field(description="mean F1 over categories with support")
    accuracy: float
    flagged: FlaggedMetrics
    confusion_matrix: list[list[int]] = Field(
        description="rows: labels, columns: argmax predictions, both in `categories` order"
    )
    throughput_posts_per_second: float | None = Field(
        description="predict_proba over the dataset, batches of 500, one process "
        "(None where only the scores were asked for)"
    )


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    """Harmonic mean; 0 when something was to be found and nothing was (recall 0)."""
    if recall is None:
        return None
    if precision is None or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def average_precision(scores: npt.NDArray[Any], positives: npt.NDArray[Any]) -> float | None:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    AP = sum over thresholds of (R_n - R_(n-1)) * P_n; tied scores form one threshold.
    None when there is no positive.
    """
    y = np.asarray(positives, dtype=bool)
    total = int(y.sum())
    if total == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    hits = np.cumsum(y[order])
    # The last index of each run of equal scores is where a threshold cuts.
    cuts = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_positives = hits[cuts]
    precision = true_positives / (cuts + 1)
    recall = true_positives / total
    previous = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - previous) * precision))


def calibration_error(
    probabilities: npt.NDArray[Any], outcomes: npt.NDArray[Any], bins: int = 10
) -> float:
    """Expected calibration error: the support-weighted gap between mean probability and the
    observed frequency, over `bins` equal-width probability bins."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(
        np.bincount(which, weights=p, minlength=bins)
        - np.bincount(which, weights=y, minlength=bins)
    )
    return float(gaps.sum() / max(1, counts.sum()))


def measure_throughput(
    model: ProbabilisticModel,
    texts: Sequence[str],
    *,
    batch_size: int = 500,
    min_seconds: float = 1.0,
) -> float:
    """Posts per second of `model.predict_proba` over `texts` in batches of `batch_size`.

    Repeats the pass until `min_seconds` have elapsed so small sets give a stable number. The
    fast model's work (numpy, scipy sparse products) runs on one core; pin BLAS/OpenMP threads
    to 1 (`OMP_NUM_THREADS=1`) for a per-core figure with other models.
    """
    if len(texts) == 0:
        raise ValueError("no texts to measure")
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    model.predict_proba(batches[0])  # warm-up: first-call allocations are not throughput
    posts = 0
    started = time.perf_counter()
    while True:
        for batch in batches:
            model.predict_proba(batch)
        posts += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return posts / elapsed


def evaluate(model: ProbabilisticModel, records: Sequence[Mapping[str, str]]) -> EvalReport:
    """Score `records` (`{"text", "label"}`) with `model` and compute the report."""
    if not records:
        raise ValueError("no records to evaluate")
    texts = [str(record["text"]) for record in records]
    report = score_probabilities(
        model.predict_proba(texts), records, model_version=getattr(model, "version", None)
    )
    report.throughput_posts_per_second = round(measure_throughput(model, texts), 1)
    return report


def score_probabilities(
    probabilities: npt.ArrayLike,
    records: Sequence[Mapping[str, str]],
    *,
    model_version: str | None,
) -> EvalReport:
    """The report of `evaluate` from probabilities already computed (no throughput)."""
    if not records:
        raise ValueError("no records to evaluate")
    labels = np.array([CATEGORIES.index(Category(record["label"])) for record in records])
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(records), len(CATEGORIES)):
        raise ValueError(
            f"predict_proba returned shape {probabilities.shape}, "
            f"expected ({len(records)}, {len(CATEGORIES)})"
        )
    predictions = probabilities.argmax(axis=1)
    size = len(CATEGORIES)
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)

    per_category: dict[Category, CategoryMetrics] = {}
    for index, category in enumerate(CATEGORIES):
        hits = int(confusion[index, index])
        support = int(confusion[index].sum())
        predicted = int(confusion[:, index].sum())
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        column = probabilities[:, index]
        is_category = labels == index
        per_category[category] = CategoryMetrics(
            precision=precision,
            recall=recall,
            f1=_f1(precision, recall),
            support=support,
            predicted=predicted,
            brier=float(np.mean((column - is_category) ** 2)),
            ece=calibration_error(column, is_category),
        )
    f1_scores = [m.f1 for m in per_category.values() if m.f1 is not None]

    safe = CATEGORIES.index(Category.SAFE)
    flagged_true = labels != safe
    flagged_predicted = predictions != safe
    true_positives = int(np.sum(flagged_true & flagged_predicted))
    flagged_precision = _ratio(true_positives, int(flagged_predicted.sum()))
    flagged_recall = _ratio(true_positives, int(flagged_true.sum()))

    return EvalReport(
        model_version=model_version,
        posts=len(records),
        per_category=per_category,
        macro_f1=float(np.mean(f1_scores)) if f1_scores else None,
        accuracy=float(np.mean(predictions == labels)),
        flagged=FlaggedMetrics(
            precision=flagged_precision,
            recall=flagged_recall,
            f1=_f1(flagged_precision, flagged_recall),
            auprc=average_precision(1.0 - probabilities[:, safe], flagged_true),
            support_flagged=int(flagged_true.sum()),
            support_safe=int((~flagged_true).sum()),
        ),
        confusion_matrix=confusion.tolist(),
        throughput_posts_per_second=None,
    )


def load_jsonl_dataset(path: Path) -> list[dict[str, str]]:
    """Read `{"text", "label"}` lines; raise ValueError naming the line of the first bad one.

    Blank lines are skipped; other keys on a line are ignored.
    """
    allowed = ", ".join(c.value for c in CATEGORIES)
    records: list[dict[str, str]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object with text and label")
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: `text` must be a non-empty string")
            if not isinstance(label, str) or label not in {c.value for c in CATEGORIES}:
                raise ValueError(f"{where}: `label` {label!r} is not one of: {allowed}")
            records.append({"text": text, "label": label})
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_report(report: EvalReport, console: Console) -> None:
    """Print the report as rich tables."""
    title = f"fast model {report.model_version}" if report.model_version else "model"
    table = Table(title=f"{title}: {report.posts} posts")
    for column in ("category", "precision", "recall", "F1", "support", "predicted", "Brier", "ECE"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for category, metrics in report.per_category.items():
        table.add_row(
            category.value,
            _number(metrics.precision),
            _number(metrics.recall),
            _number(metrics.f1),
            str(metrics.support),
            str(metrics.predicted),
            _number(metrics.brier),
            _number(metrics.ece),
        )
    table.add_section()
    table.add_row("macro F1", "", "", _number(report.macro_f1))
    table.add_row("accuracy", "", "", _number(report.accuracy), str(report.posts))
    console.print(table)

    flagged = report.flagged
    summary = Table(title=f"flagged vs safe ({flagged.rule}; AUPRC ranks by {flagged.score})")
    for column in ("precision", "recall", "F1", "AUPRC", "flagged", "safe"):
        summary.add_column(column, justify="right")
    summary.add_row(
        _number(flagged.precision),
        _number(flagged.recall),
        _number(flagged.f1),
        _number(flagged.auprc),
        str(flagged.support_flagged),
        str(flagged.support_safe),
    )
    console.print(summary)

    matrix = Table(title="confusion matrix (rows: label, columns: prediction)")
    matrix.add_column("label \\ predicted")
    for category in report.categories:
        matrix.add_column(category.value, justify="right")
    for category, row in zip(report.categories, report.confusion_matrix, strict=True):
        matrix.add_row(category.value, *(str(count) if count else "·" for count in row))
    console.print(matrix)
    if report.throughput_posts_per_second is not None:
        speed = report.throughput_posts_per_second
        console.print(f"throughput: {speed:,.0f} posts/s (predict_proba)")
