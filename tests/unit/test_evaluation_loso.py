"""Leave-one-source-out: the split, the team-source rule, the report, the cache key, routing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from rich.console import Console

from moderation.classifier.cascade import Scorer
from moderation.classifier.fast.config import DEFAULT_CONFIG
from moderation.classifier.fast.model import FastModel
from moderation.evaluation.loso import (
    CachedHoldoutTrainer,
    HoldoutSplit,
    held_out_sources,
    holdout_cache_key,
    holdout_split,
    leave_one_source_out,
    load_sourced_splits,
    render_loso,
)
from moderation.evaluation.routing import route_records
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category

SAFE, SPAM, HATE = Category.SAFE.value, Category.SPAM.value, Category.HATE.value
EXTERNAL = frozenset({"sms", "toxic"})


def row(text: str, label: str, source: str) -> dict[str, str]:
    return {"text": text, "label": label, "source": source}


# Two external sources and both team-written ones, in every split.
SPLITS: dict[str, list[dict[str, str]]] = {
    "train": [
        row("win a prize now", SPAM, "sms"),
        row("see you at lunch", SAFE, "sms"),
        row("those people are vermin", HATE, "toxic"),
        row("lovely weather for a walk", SAFE, "project"),
        row("i will hurt them all", Category.VIOLENCE.value, "project-seed"),
    ],
    "validation": [
        row("claim your free cash", SPAM, "sms"),
        row("they are subhuman", HATE, "toxic"),
        row("book club on thursday", SAFE, "project-seed"),
    ],
    "gold": [
        row("call now to win", SPAM, "sms"),
        row("running late, sorry", SAFE, "sms"),
        row("that group are vermin too", HATE, "toxic"),
        row("fresh bread at the market", SAFE, "project"),
    ],
}


class KeywordModel:
    """Scores by keyword: 'win'/'free' spam, 'vermin'/'subhuman' hate, else safe."""

    version = "keyword-1"

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[Any]:
        out = np.zeros((len(texts), len(CATEGORIES)))
        for i, text in enumerate(texts):
            if "win" in text or "free" in text:
                out[i, CATEGORIES.index(Category.SPAM)] = 0.95
            elif "vermin" in text or "subhuman" in text:
                out[i, CATEGORIES.index(Category.HATE)] = 0.95
            else:
                out[i, CATEGORIES.index(Category.SAFE)] = 0.95
        return out


class RecordingTrainer:
    """Keeps every split it was asked to train on and returns the keyword model."""

    def __init__(self) -> None:
        self.splits: list[HoldoutSplit] = []

    def __call__(self, split: HoldoutSplit) -> Scorer:
        self.splits.append(split)
        return KeywordModel()


def test_only_external_sources_are_held_out() -> None:
    assert held_out_sources(SPLITS, EXTERNAL) == ["sms", "toxic"]
    # Even when named as external, a team-written source is never held out.
    assert held_out_sources(SPLITS, EXTERNAL | {"project", "project-seed"}) == ["sms", "toxic"]
    with pytest.raises(ValueError, match="never held out"):
        holdout_split(SPLITS, "project-seed")


def test_held_out_rows_never_reach_training() -> None:
    split = holdout_split(SPLITS, "sms")
    sms_texts = {r["text"] for rows in SPLITS.values() for r in rows if r["source"] == "sms"}
    trained_on = {r["text"] for r in split.train + split.validation}
    assert not sms_texts & trained_on
    # Every row of the source is scored, whatever its split.
    assert {r["text"] for r in split.held_out} == sms_texts
    assert split.held_out_by_split == {"train": 2, "validation": 1, "gold": 2}
    # The other sources' train rows train, their validation rows validate, gold is never used.
    assert [r["text"] for r in split.train] == [
        r["text"] for r in SPLITS["train"] if r["source"] != "sms"
    ]
    assert [r["text"] for r in split.validation] == [
        r["text"] for r in SPLITS["validation"] if r["source"] != "sms"
    ]
    gold_texts = {r["text"] for r in SPLITS["gold"]}
    assert not gold_texts & trained_on
    # Team-written rows stay in training.
    assert "lovely weather for a walk" in trained_on


def test_report_has_one_row_per_external_source() -> None:
    trainer = RecordingTrainer()
    report = leave_one_source_out(
        SPLITS, trainer=trainer, settings=Settings(), dataset_fingerprint="f" * 64,
        external=EXTERNAL,
    )  # fmt: skip
    assert [s.source for s in report.sources] == ["sms", "toxic"]
    assert [s.source for s in trainer.splits] == ["sms", "toxic"]
    assert report.never_held_out == ["project", "project-seed"]
    for split in trainer.splits:
        assert all(r["text"] not in {h["text"] for h in split.held_out} for r in split.train)

    sms, toxic = report.sources
    assert sms.rows == 5 and toxic.rows == 3
    # Per-category metrics only for the categories the source has.
    assert set(sms.per_category) == {Category.SAFE, Category.SPAM}
    assert set(toxic.per_category) == {Category.HATE}
    assert sms.flagged.f1 == 1.0 and toxic.flagged.f1 == 1.0
    # The keyword model is sure of every row: spam and hate removed, safe allowed.
    assert sms.routing.removed == pytest.approx(3 / 5)
    assert sms.routing.allowed == pytest.approx(2 / 5)
    assert sms.routing.violating_allowed == 0.0 and sms.routing.safe_removed == 0.0
    assert toxic.routing.safe_removed is None  # no safe row in that source
    assert report.macro.flagged_f1 == 1.0
    assert report.macro.category_f1 == {Category.SAFE: 1.0, Category.SPAM: 1.0, Category.HATE: 1.0}

    console = Console(record=True, width=200)
    render_loso(report, console)
    text = console.export_text()
    assert "sms" in text and "toxic" in text and "macro average" in text


def test_routing_counts_errors_per_label() -> None:
    records = [
        {"text": "see you at lunch", "label": SAFE},
        {"text": "free cash inside", "label": SAFE},  # a safe row removed
        {"text": "quiet sunday", "label": HATE},  # a violating row allowed
        {"text": "those vermin", "label": HATE},
    ]
    routing = route_records(KeywordModel(), records, Settings())
    assert (routing.allowed, routing.removed, routing.sent_on) == (0.5, 0.5, 0.0)
    assert routing.violating_allowed == 0.5 and routing.safe_removed == 0.5
    assert routing.decided == 1.0


def test_cache_key_names_source_and_changes_with_what_shapes_the_model() -> None:
    base = {
        "source": "sms",
        "dataset_fingerprint": "a" * 64,
        "config_fingerprint": "b" * 64,
        "policy_version": "v1",
    }
    key = holdout_cache_key(**base)
    assert key.startswith("sms-")
    for field in ("source", "dataset_fingerprint", "config_fingerprint", "policy_version"):
        assert holdout_cache_key(**(base | {field: base[field] + "x"})) != key


def test_cached_trainer_finds_nothing_in_an_empty_cache(tmp_path: Path) -> None:
    trainer = CachedHoldoutTrainer(tmp_path, "a" * 64, "v1")
    assert trainer.cached("sms") is None
    assert trainer.entry("sms") != trainer.entry("toxic")


def test_load_sourced_splits_keeps_the_source(tmp_path: Path) -> None:
    for name, rows in SPLITS.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_sourced_splits(tmp_path) == SPLITS


def with_evaluation_only() -> dict[str, list[dict[str, str]]]:
    """SPLITS plus rows of a source no model trains on (as `load_sourced_splits` gives them)."""
    return SPLITS | {
        "evaluation_only": [
            row("you absolute clown", Category.HARASSMENT.value, "insults"),
            row("win the argument fairly", SAFE, "insults"),
        ]
    }


def test_an_evaluation_only_source_is_scored_by_a_model_trained_on_every_train_row() -> None:
    splits = with_evaluation_only()
    split = holdout_split(splits, "insults")
    # Nothing is held out of training: every train and validation row, and none of its rows.
    assert split.train == [{"text": r["text"], "label": r["label"]} for r in SPLITS["train"]]
    assert len(split.validation) == len(SPLITS["validation"])
    assert split.held_out_by_split == {"train": 0, "validation": 0, "gold": 0, "evaluation_only": 2}
    # Another source's run never trains on the evaluation-only rows either.
    for source in ("sms", "toxic"):
        trained_on = {r["text"] for r in holdout_split(splits, source).train}
        assert not trained_on & {r["text"] for r in splits["evaluation_only"]}

    trainer = RecordingTrainer()
    report = leave_one_source_out(
        splits, trainer=trainer, settings=Settings(), dataset_fingerprint="f" * 64,
        external=EXTERNAL | {"insults"},
    )  # fmt: skip
    assert [s.source for s in report.sources] == ["insults", "sms", "toxic"]
    insults = report.sources[0]
    assert insults.evaluation_only and insults.rows == 2
    assert not any(s.evaluation_only for s in report.sources[1:])
    assert set(insults.per_category) == {Category.SAFE, Category.HARASSMENT}
    console = Console(record=True, width=200)
    render_loso(report, console)
    assert "insults (evaluation only)" in console.export_text()


def test_load_sourced_splits_adds_the_evaluation_only_rows(tmp_path: Path) -> None:
    for name, rows in with_evaluation_only().items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_sourced_splits(tmp_path) == with_evaluation_only()


def test_the_pinned_evaluation_only_source_is_held_out() -> None:
    from moderation.datasets.sources import evaluation_only_sources
    from moderation.evaluation.loso import external_source_names

    assert evaluation_only_sources() <= external_source_names()


# --- the command --------------------------------------------------------------------------------


def constant_model() -> FastModel:
    """A real FastModel (saves and loads) that says P(safe) 0.9, P(spam) 0.05 for every text."""
    size = 1 << DEFAULT_CONFIG.hash_bits
    return FastModel(
        version="fast-20260101-constant",
        trained_at=datetime(2026, 1, 1, tzinfo=UTC),
        metrics={},
        policy_version="v1",
        # n-grams only: a constant needs no embedding head.
        config=replace(DEFAULT_CONFIG, embedding=""),
        trained_categories=[Category.SAFE, Category.SPAM],
        idf=np.ones(size, dtype=np.float32),
        weights=np.zeros((size, 2), dtype=np.float32),
        intercepts=np.zeros(2, dtype=np.float32),
        platt=np.array([[0.0, 2.1972], [0.0, -2.9444]]),
        data_hash="constant",
    )


def write_dataset(directory: Path) -> None:
    renamed = {"sms": "sms-spam-collection", "toxic": "realtoxicityprompts-scored"}
    for name, rows in SPLITS.items():
        lines = [json.dumps(r | {"source": renamed.get(r["source"], r["source"])}) for r in rows]
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {"fingerprint": "d" * 64, "sources": [], "counts": {}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_eval_loso_json_and_model_card_train_once_then_use_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import moderation.cli as cli
    from moderation.classifier.fast import store as fast_store
    from moderation.datasets import build as dataset

    dataset_dir = tmp_path / "dataset"
    dataset_dir.mkdir()
    write_dataset(dataset_dir)
    settings = Settings()
    settings.stack.cache_dir = tmp_path / "cache"
    trained: list[int] = []

    def train(train: Any, validation: Any, *, progress: bool) -> FastModel:
        trained.append(len(train))
        return constant_model()

    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    monkeypatch.setattr(dataset, "build_dataset", lambda cache_dir: dataset_dir)
    monkeypatch.setattr(dataset, "gold_split_path", lambda s: dataset_dir / "gold.jsonl")
    monkeypatch.setattr(fast_store, "ensure_fast_model", lambda s, progress: constant_model())
    monkeypatch.setattr("moderation.evaluation.loso.train_fast_model", train)

    card = tmp_path / "MODEL_CARD.md"
    args = ["eval", "--json", "--loso", "--model-card", str(card)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    assert output["posts"] == 4  # the usual gold report stays at the top level
    loso = output["leave_one_source_out"]
    assert [s["source"] for s in loso["sources"]] == [
        "realtoxicityprompts-scored",
        "sms-spam-collection",
    ]
    assert loso["never_held_out"] == ["project", "project-seed"]
    assert output["stage1_routing"]["posts"] == 4
    assert trained == [4, 3]  # train rows without each held-out source
    text = card.read_text()
    assert "Leave one source out" in text and "Known weaknesses" in text
    assert "English only" in text
    # Weaknesses come from the numbers: the constant model allows every toxic row.
    assert "auto-allows **100.0%** of realtoxicityprompts-scored's 3 violating rows" in text

    # A rerun loads the held-out models from the cache: no training.
    again = CliRunner().invoke(cli.app, ["eval", "--json", "--loso"])
    assert again.exit_code == 0, again.output
    assert trained == [4, 3]
    assert json.loads(again.stdout)["leave_one_source_out"] == loso


class ReadingModel(KeywordModel):
    """The keyword model with a training vocabulary, so the readability rules apply."""

    vocabulary = frozenset({"see", "you", "at", "lunch"})


def test_routing_counts_allows_withheld_as_unreadable() -> None:
    records = [
        {"text": "see you at lunch", "label": SAFE},
        {"text": "quiet sunday morning walk along the river", "label": SAFE},
    ]
    routing = route_records(ReadingModel(), records, Settings())
    assert routing.allowed == 0.5 and routing.sent_on == 0.5
    assert routing.unreadable == 0.5
