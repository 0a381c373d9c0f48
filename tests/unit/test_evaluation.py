from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from rich.console import Console

from moderation.evaluation.scores import (
    EvalReport,
    average_precision,
    calibration_error,
    evaluate,
    load_jsonl_dataset,
    render_report,
    score_probabilities,
)
from moderation.taxonomy import CATEGORIES, Category


class TableModel:
    """A model whose probabilities are written by hand, one row per known text."""

    version = "table-1"

    def __init__(self, rows: dict[str, dict[Category, float]]) -> None:
        self.rows = rows

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        out = np.zeros((len(texts), len(CATEGORIES)))
        for i, text in enumerate(texts):
            for category, probability in self.rows[text].items():
                out[i, CATEGORIES.index(category)] = probability
        return out


S, SP, HA, HT = Category.SAFE, Category.SPAM, Category.HARASSMENT, Category.HATE
# text -> (label, probabilities); predictions are the argmax.
EXAMPLE: dict[str, tuple[Category, dict[Category, float]]] = {
    "a": (S, {S: 0.9}),  # safe -> safe
    "b": (S, {S: 0.4, SP: 0.6}),  # safe -> spam (a false flag)
    "c": (SP, {S: 0.1, SP: 0.8}),  # spam -> spam
    "d": (SP, {S: 0.7, SP: 0.2}),  # spam -> safe (a miss)
    "e": (HT, {S: 0.2, HT: 0.6, HA: 0.3}),  # hate -> hate
    "f": (HA, {S: 0.3, HT: 0.5, HA: 0.4}),  # harassment -> hate
}


@pytest.fixture(scope="module")
def report() -> EvalReport:
    model = TableModel({text: row for text, (_, row) in EXAMPLE.items()})
    records = [{"text": text, "label": label.value} for text, (label, _) in EXAMPLE.items()]
    return evaluate(model, records)


def test_per_category_metrics_of_a_hand_made_example(report: EvalReport) -> None:
    metrics = report.per_category
    assert list(metrics) == list(CATEGORIES)
    assert (metrics[S].precision, metrics[S].recall, metrics[S].f1) == (0.5, 0.5, 0.5)
    assert (metrics[SP].precision, metrics[SP].recall, metrics[SP].f1) == (0.5, 0.5, 0.5)
    assert metrics[HT].precision == 0.5 and metrics[HT].recall == 1.0
    assert metrics[HT].f1 == pytest.approx(2 / 3)
    # Labelled but never predicted: precision undefined, recall and F1 zero.
    assert (metrics[HA].precision, metrics[HA].recall, metrics[HA].f1) == (None, 0.0, 0.0)
    # Neither labelled nor predicted: nothing is defined.
    assert metrics[Category.VIOLENCE].model_dump(include={"precision", "recall", "f1"}) == {
        "precision": None,
        "recall": None,
        "f1": None,
    }
    assert [metrics[c].support for c in (S, SP, HA, HT)] == [2, 2, 1, 1]
    assert [metrics[c].predicted for c in (S, SP, HA, HT)] == [2, 2, 0, 2]
    assert report.macro_f1 == pytest.approx((0.5 + 0.5 + 0.0 + 2 / 3) / 4)
    assert report.accuracy == 0.5
    # P(safe) is .9 .4 .1 .7 .2 .3 for labels safe safe spam spam hate harassment.
    assert metrics[S].brier == pytest.approx((0.01 + 0.36 + 0.01 + 0.49 + 0.04 + 0.09) / 6)
    assert report.posts == 6
    assert report.model_version == "table-1"


def test_flagged_vs_safe_and_auprc(report: EvalReport) -> None:
    flagged = report.flagged
    # Truly flagged: c d e f; predicted flagged: b c e f.
    assert (flagged.precision, flagged.recall, flagged.f1) == (0.75, 0.75, 0.75)
    assert (flagged.support_flagged, flagged.support_safe) == (4, 2)
    # 1 - P(safe) ranks c e f b d a: precision at each positive is 1, 1, 1, 4/5.
    assert flagged.auprc == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    assert flagged.score == "1 - P(safe)"


def test_confusion_matrix_rows_are_labels_columns_predictions(report: EvalReport) -> None:
    matrix = np.array(report.confusion_matrix)
    assert matrix.shape == (9, 9)
    index = CATEGORIES.index
    assert matrix[index(S), index(S)] == 1 and matrix[index(S), index(SP)] == 1
    assert matrix[index(SP), index(S)] == 1 and matrix[index(SP), index(SP)] == 1
    assert matrix[index(HT), index(HT)] == 1
    assert matrix[index(HA), index(HT)] == 1
    assert matrix.sum() == 6
    assert report.throughput_posts_per_second is not None
    assert report.throughput_posts_per_second > 0


def test_average_precision_handles_ties_and_no_positives() -> None:
    # One threshold for four tied scores: AP is the prevalence.
    assert average_precision(np.array([0.5] * 4), np.array([1, 0, 1, 0])) == 0.5
    assert average_precision(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert average_precision(np.array([0.9, 0.1]), np.array([0, 1])) == 0.5
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 0])) is None


def test_calibration_error() -> None:
    # Half of the posts at 0.5 are positive: perfectly calibrated.
    assert calibration_error(np.array([0.5, 0.5]), np.array([1, 0])) == 0.0
    # Always 0.9, never positive: a gap of 0.9.
    assert calibration_error(np.array([0.9, 0.9, 0.9]), np.array([0, 0, 0])) == pytest.approx(0.9)
    # Two bins: 0.1 with 0 of 2 positive (gap 0.1), 1.0 with 1 of 2 (gap 0.5): weighted 0.3.
    probabilities = np.array([0.1, 0.1, 1.0, 1.0])
    assert calibration_error(probabilities, np.array([0, 0, 1, 0])) == pytest.approx(0.3)


def test_report_is_one_json_object_and_renders(report: EvalReport) -> None:
    payload = json.loads(report.model_dump_json())
    assert isinstance(payload, dict)
    assert payload["categories"] == [c.value for c in CATEGORIES]
    assert list(payload["per_category"]) == [c.value for c in CATEGORIES]
    assert EvalReport.model_validate(payload) == report
    console = Console(record=True, width=160)
    render_report(report, console)
    text = console.export_text()
    for heading in ("harassment", "flagged vs safe", "confusion matrix", "posts/s"):
        assert heading in text


def test_load_jsonl_dataset_reads_text_and_label(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    lines = [
        json.dumps({"text": "hello", "label": "safe", "source": "ignored"}),
        "",
        json.dumps({"text": "win cash", "label": "spam"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    assert load_jsonl_dataset(path) == [
        {"text": "hello", "label": "safe"},
        {"text": "win cash", "label": "spam"},
    ]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["text", "label"]', "line 2: expected an object"),
        ('{"text": "", "label": "safe"}', "line 2: `text` must be a non-empty string"),
        ('{"text": 3, "label": "safe"}', "line 2: `text` must be a non-empty string"),
        ('{"text": "hi", "label": "rude"}', "line 2: `label` 'rude' is not one of: safe, spam"),
        ('{"text": "hi"}', "line 2: `label` None is not one of"),
    ],
)
def test_bad_jsonl_line_names_its_number(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "safe"}) + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_jsonl_dataset(path)


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        load_jsonl_dataset(path)


def test_scores_from_probabilities_match_evaluate_without_a_throughput(
    report: EvalReport,
) -> None:
    model = TableModel({text: row for text, (_, row) in EXAMPLE.items()})
    records = [{"text": text, "label": label.value} for text, (label, _) in EXAMPLE.items()]
    probabilities = model.predict_proba([record["text"] for record in records])
    scored = score_probabilities(probabilities, records, model_version=model.version)
    assert scored.throughput_posts_per_second is None
    assert scored.model_dump(exclude={"throughput_posts_per_second"}) == report.model_dump(
        exclude={"throughput_posts_per_second"}
    )
