"""Retrain the fast model with the moderators' labels, evaluate it against the champion, decide.

Training data: the base training split plus every human decision. A human label wins over the
base label of the same text (same `dedup_key`), and the latest decision on a post wins (an
appeal re-decides it). The newest `time_split_fraction` of the decisions is held out as the
time split: the challenger never trains on it, and both models are scored on it, on the gold
split and on the out-of-source set (the dataset's evaluation-only sources, text from elsewhere
that no model ever trains on: the same out-of-source view as `moderation eval --loso`). Texts of
the gold split are never trained on, whoever labelled them.

Promotion rule (`decide_promotion`): the challenger's overall score (the mean of its macro F1 on
the gold split, the time split and the out-of-source set) must beat the champion's by
`min_gain`, and on each split no category with at least `min_category_support` examples may
regress. Both models see the same
posts, so a category is compared post by post: `lost` are its posts the champion got right and
the challenger gets wrong, `gained` the reverse. It regresses when the net loss is more than
`tolerance` of its support *and* beyond retraining noise (McNemar's exact test, one-sided 95 %:
of the `lost + gained` posts that changed, `lost` or more would go one way by chance with
probability under 0.05; `sign_test_p`). Per-category F1 alone is too noisy for this: retraining
on the same data in another order moves the F1 of a 20-post category by 0.05. The exact test,
not its normal approximation: at a few changed posts the approximation called 3 lost and 0
gained "beyond noise" (3 > 1.645 * sqrt(3)), which happens by chance one time in eight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from jobs.feedback import latest_per_post
from moderation.datasets.records import dedup_key
from moderation.evaluation.scores import EvalReport, score_probabilities
from moderation.settings import NightlySettings
from moderation.taxonomy import CATEGORIES

Record = dict[str, str]


@dataclass(frozen=True)
class TrainingSet:
    """What the challenger trains on and what both models are scored on."""

    train: list[Record]
    validation: list[Record]
    time_split: list[Record]
    # One row per training record: text, label, source (base / human), post_id, decided_at.
    frame: pd.DataFrame
    human_trained: int
    human_held_out: int
    base_replaced: int = 0
    gold_excluded: int = 0


def latest_human_labels(decisions: pd.DataFrame) -> pd.DataFrame:
    """One row per post (its latest decision), then one per text (the latest post wins)."""
    if decisions.empty:
        return decisions.assign(key=pd.Series(dtype=str))
    latest = latest_per_post(decisions)
    keyed = latest.assign(key=latest["text"].map(dedup_key))
    return keyed[keyed["key"] != ""].drop_duplicates("key", keep="last")


def build_training_set(
    base_train: Sequence[Mapping[str, str]],
    base_validation: Sequence[Mapping[str, str]],
    gold: Sequence[Mapping[str, str]],
    decisions: pd.DataFrame,
    *,
    time_split_fraction: float,
) -> TrainingSet:
    """Merge the base split with the human labels (see the module docstring)."""
    human = latest_human_labels(decisions)
    held_out_count = int(round(len(human) * time_split_fraction)) if len(human) >= 2 else 0
    held_out = human.iloc[len(human) - held_out_count :] if held_out_count else human.iloc[:0]
    trainable = human.iloc[: len(human) - held_out_count]
    gold_keys = {dedup_key(record["text"]) for record in gold}
    in_gold = trainable["key"].isin(gold_keys)
    trainable = trainable[~in_gold]

    human_keys = set(human["key"])
    base_kept = [dict(r) for r in base_train if dedup_key(r["text"]) not in human_keys]
    human_records = [
        {"text": str(text), "label": str(label)}
        for text, label in zip(trainable["text"], trainable["label"], strict=True)
    ]
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "text": [r["text"] for r in base_kept],
                    "label": [r["label"] for r in base_kept],
                    "source": "base",
                    "post_id": None,
                    "decided_at": pd.NaT,
                }
            ),
            pd.DataFrame(
                {
                    "text": trainable["text"].astype(str).tolist(),
                    "label": trainable["label"].astype(str).tolist(),
                    "source": "human",
                    "post_id": trainable["post_id"].astype(str).tolist(),
                    "decided_at": pd.to_datetime(trainable["decided_at"], utc=True).tolist(),
                }
            ),
        ],
        ignore_index=True,
    )
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    return TrainingSet(
        train=base_kept + human_records,
        validation=[dict(r) for r in base_validation if dedup_key(r["text"]) not in human_keys],
        time_split=[
            {"text": str(text), "label": str(label)}
            for text, label in zip(held_out["text"], held_out["label"], strict=True)
        ],
        frame=frame,
        human_trained=len(human_records),
        human_held_out=len(held_out),
        base_replaced=len(base_train) - len(base_kept),
        gold_excluded=int(in_gold.sum()),
    )


# One-sided significance level of McNemar's exact test in the promotion rule.
REGRESSION_ALPHA = 0.05


def sign_test_p(lost: int, gained: int) -> float:
    """P(`lost` or more of the `lost + gained` changed posts go wrong, each way equally likely)."""
    changed = lost + gained
    tail: int = sum(math.comb(changed, k) for k in range(lost, changed + 1))
    return tail / (1 << changed)


@dataclass(frozen=True)
class SplitScore:
    """The numbers of one model on one split that the promotion rule reads."""

    posts: int
    macro_f1: float | None
    f1: dict[str, float | None]
    recall: dict[str, float | None]
    support: dict[str, int]
    # Per post, in the split's order: its label and whether the model's argmax matched it.
    labels: tuple[str, ...] = ()
    correct: tuple[bool, ...] = ()

    @classmethod
    def of(cls, report: EvalReport, labels: Sequence[str], predicted: Sequence[str]) -> SplitScore:
        return cls(
            posts=report.posts,
            macro_f1=report.macro_f1,
            f1={c.value: m.f1 for c, m in report.per_category.items()},
            recall={c.value: m.recall for c, m in report.per_category.items()},
            support={c.value: m.support for c, m in report.per_category.items()},
            labels=tuple(labels),
            correct=tuple(p == label for p, label in zip(predicted, labels, strict=True)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "macro_f1": self.macro_f1,
            "f1": self.f1,
            "recall": self.recall,
            "support": self.support,
        }


def score_splits(
    model: Any, splits: Mapping[str, Sequence[Mapping[str, str]]]
) -> dict[str, SplitScore]:
    """`SplitScore` of `model` on every non-empty split, by split name."""
    scores = {}
    for name, records in splits.items():
        if not records:
            continue
        # One model call per split: the report and the per-post outcomes share it.
        probabilities = model.predict_proba([str(record["text"]) for record in records])
        report = score_probabilities(probabilities, records, model_version=model.version)
        predicted = [CATEGORIES[i].value for i in probabilities.argmax(axis=1)]
        labels = [str(record["label"]) for record in records]
        scores[name] = SplitScore.of(report, labels, predicted)
    return scores


def paired_changes(before: SplitScore, after: SplitScore, category: str) -> tuple[int, int]:
    """(lost, gained): posts of `category` that went from right to wrong, and wrong to right."""
    lost = gained = 0
    for label, was, now in zip(before.labels, before.correct, after.correct, strict=True):
        if label == category and was != now:
            lost, gained = (lost + 1, gained) if was else (lost, gained + 1)
    return lost, gained


def overall(scores: Mapping[str, SplitScore]) -> float | None:
    """The mean macro F1 over the splits that have one."""
    values = [s.macro_f1 for s in scores.values() if s.macro_f1 is not None]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    champion_overall: float | None
    challenger_overall: float | None
    reasons: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "champion_overall": self.champion_overall,
            "challenger_overall": self.challenger_overall,
            "reasons": self.reasons,
            "regressions": self.regressions,
        }


def decide_promotion(
    champion: Mapping[str, SplitScore],
    challenger: Mapping[str, SplitScore],
    rules: NightlySettings,
) -> PromotionDecision:
    """Apply the promotion rule of the module docstring; every reason is spelled out."""
    champion_overall, challenger_overall = overall(champion), overall(challenger)
    regressions = []
    for split, theirs in challenger.items():
        ours = champion[split]
        for category, support in theirs.support.items():
            if support < rules.min_category_support:
                continue
            lost, gained = paired_changes(ours, theirs, category)
            net = lost - gained
            if net > rules.tolerance * support and sign_test_p(lost, gained) < REGRESSION_ALPHA:
                regressions.append(
                    f"{split}/{category}: {lost} of {support} posts lost, {gained} gained "
                    f"(net {net / support:.1%} > {rules.tolerance:.1%}, beyond noise)"
                )
    reasons = []
    if challenger_overall is None or champion_overall is None:
        reasons.append("no split to compare on")
        better = False
    else:
        better = challenger_overall >= champion_overall + rules.min_gain
        reasons.append(
            f"overall {champion_overall:.4f} -> {challenger_overall:.4f} "
            f"({'at least' if better else 'less than'} +{rules.min_gain:.3f})"
        )
    if regressions:
        reasons.append(f"{len(regressions)} category regression(s) beyond the tolerance")
    return PromotionDecision(
        promote=better and not regressions,
        champion_overall=champion_overall,
        challenger_overall=challenger_overall,
        reasons=reasons,
        regressions=regressions,
    )
