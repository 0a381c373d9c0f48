"""The nightly retraining's data merge and promotion rule (pure logic, no model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from jobs.retrain import (
    SplitScore,
    build_training_set,
    decide_promotion,
    latest_human_labels,
    sign_test_p,
)
from moderation.settings import NightlySettings

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def decisions(*rows: tuple[str, str, str, int]) -> pd.DataFrame:
    """(post_id, text, label, minutes after T0) rows as load_decisions returns them."""
    return pd.DataFrame(
        {
            "post_id": [r[0] for r in rows],
            "text": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "decided_at": [T0 + timedelta(minutes=r[3]) for r in rows],
        }
    )


def test_the_latest_decision_on_a_post_and_on_a_text_wins() -> None:
    frame = decisions(
        ("p1", "Win a prize now", "spam", 1),
        ("p1", "Win a prize now", "safe", 5),  # the appeal re-decided it
        ("p2", "WIN a prize, now!", "spam", 3),  # the same text as p1 once normalised
        ("p3", "hello there", "safe", 2),
    )
    latest = latest_human_labels(frame)
    assert sorted(zip(latest["post_id"], latest["label"], strict=True)) == [
        ("p1", "safe"),
        ("p3", "safe"),
    ]


def test_human_labels_replace_base_labels_and_the_newest_are_held_out() -> None:
    base_train = [
        {"text": "Win a prize now", "label": "safe"},
        {"text": "see you tomorrow", "label": "safe"},
    ]
    base_validation = [{"text": "ok thanks", "label": "safe"}]
    gold = [{"text": "gold post only", "label": "spam"}]
    frame = decisions(
        ("p1", "Win a prize now", "spam", 1),
        ("p2", "gold post only", "spam", 2),
        ("p3", "crypto recovery agent on telegram", "spam", 3),
        ("p4", "thanks coach for the 10k plan", "safe", 4),
        ("p5", "my mentor doubled my savings, dm her", "spam", 5),
    )
    training = build_training_set(base_train, base_validation, gold, frame, time_split_fraction=0.4)

    assert training.time_split == [
        {"text": "thanks coach for the 10k plan", "label": "safe"},
        {"text": "my mentor doubled my savings, dm her", "label": "spam"},
    ]
    texts = {r["text"]: r["label"] for r in training.train}
    assert texts["Win a prize now"] == "spam"  # the human label, not the base one
    assert "gold post only" not in texts  # never train on gold
    assert "thanks coach for the 10k plan" not in texts  # held out
    assert training.human_trained == 2 and training.human_held_out == 2
    assert training.base_replaced == 1 and training.gold_excluded == 1
    assert sorted(training.frame["source"].value_counts().items()) == [("base", 1), ("human", 2)]
    assert training.frame["decided_at"].dt.tz is not None


def test_no_decisions_leave_the_base_data_as_it_is() -> None:
    base = [{"text": "a", "label": "safe"}, {"text": "b", "label": "spam"}]
    empty = decisions().astype({"post_id": str, "text": str, "label": str})
    training = build_training_set(base, [], [], empty, time_split_fraction=0.2)
    assert training.train == base and training.time_split == []


def score(macro: float, outcomes: dict[str, tuple[int, int]]) -> SplitScore:
    """A split where each category has (right, wrong) posts, in that order."""
    labels = [c for c, (right, wrong) in outcomes.items() for _ in range(right + wrong)]
    correct = [i < right for c, (right, wrong) in outcomes.items() for i in range(right + wrong)]
    support = {c: right + wrong for c, (right, wrong) in outcomes.items()}
    return SplitScore(
        posts=len(labels),
        macro_f1=macro,
        f1=dict.fromkeys(outcomes),
        recall={c: right / (right + wrong) for c, (right, wrong) in outcomes.items()},
        support=support,
        labels=tuple(labels),
        correct=tuple(correct),
    )


RULES = NightlySettings(tolerance=0.02, min_gain=0.005, min_category_support=10)


def test_a_better_challenger_without_regressions_is_promoted() -> None:
    champion = {"gold": score(0.60, {"spam": (40, 10), "safe": (45, 5)})}
    challenger = {"gold": score(0.64, {"spam": (48, 2), "safe": (45, 5)})}
    decision = decide_promotion(champion, challenger, RULES)
    assert decision.promote, decision.reasons
    assert decision.regressions == []


def test_a_significant_loss_on_one_category_blocks_promotion() -> None:
    # hate: the champion gets 18 of 20 right, the challenger only the first 10 of those.
    champion = {"gold": score(0.60, {"spam": (40, 10), "hate": (18, 2)})}
    challenger = {"gold": score(0.70, {"spam": (50, 0), "hate": (10, 10)})}
    decision = decide_promotion(champion, challenger, RULES)
    assert not decision.promote
    assert decision.regressions == [
        "gold/hate: 8 of 20 posts lost, 0 gained (net 40.0% > 2.0%, beyond noise)"
    ]


def test_a_loss_within_noise_is_not_a_regression() -> None:
    # One hate post of 20 goes wrong: 5 % > the 2 % tolerance, but by chance one time in two.
    champion = {"gold": score(0.60, {"spam": (40, 10), "hate": (18, 2)})}
    challenger = {"gold": score(0.70, {"spam": (50, 0), "hate": (17, 3)})}
    decision = decide_promotion(champion, challenger, RULES)
    assert decision.regressions == [] and decision.promote


def test_small_categories_are_not_compared_and_small_gains_are_not_enough() -> None:
    champion = {"t": score(0.600, {"spam": (40, 10), "hate": (3, 0)})}
    challenger = {"t": score(0.603, {"spam": (40, 10), "hate": (0, 3)})}
    decision = decide_promotion(champion, challenger, RULES)
    assert decision.regressions == []  # hate has 3 examples, under min_category_support
    assert not decision.promote  # +0.003 is under min_gain
    assert "less than +0.005" in decision.reasons[0]


def test_overall_is_the_mean_over_splits() -> None:
    champion = {
        "gold": score(0.60, {"spam": (40, 10)}),
        "time_split": score(0.20, {"spam": (4, 16)}),
    }
    challenger = {
        "gold": score(0.60, {"spam": (40, 10)}),
        "time_split": score(0.90, {"spam": (18, 2)}),
    }
    decision = decide_promotion(champion, challenger, RULES)
    assert decision.champion_overall == 0.40
    assert decision.challenger_overall == 0.75
    assert decision.promote


def test_the_noise_test_is_exact_at_a_few_changed_posts() -> None:
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(1, 0) == 0.5
    assert sign_test_p(3, 0) == 0.125  # the normal approximation called this beyond noise
    assert sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(8, 0) == 1 / 256
    assert sign_test_p(6, 1) == 8 / 128
    # Three of 87 violence posts lost, none gained: 3.4 % > 2 %, but not beyond noise.
    champion = {"gold": score(0.60, {"spam": (40, 10), "violence": (80, 7)})}
    challenger = {"gold": score(0.70, {"spam": (50, 0), "violence": (77, 10)})}
    assert decide_promotion(champion, challenger, RULES).promote
    # Six lost: p = 1/64, a regression.
    challenger = {"gold": score(0.70, {"spam": (50, 0), "violence": (74, 13)})}
    assert decide_promotion(champion, challenger, RULES).regressions
