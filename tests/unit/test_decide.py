from __future__ import annotations

import pytest

from moderation.classifier.decide import decide
from moderation.events import ReviewPriority
from moderation.settings import ThresholdSettings
from moderation.taxonomy import CATEGORIES, Category, Decision


def scores(**overrides: float) -> dict[Category, float]:
    base = dict.fromkeys(CATEGORIES, 0.01)
    base.update({Category(name): value for name, value in overrides.items()})
    return base


THRESHOLDS = ThresholdSettings()


def test_clear_violation_is_removed_with_its_category() -> None:
    outcome = decide(scores(safe=0.02, spam=0.97), THRESHOLDS)
    assert (outcome.decision, outcome.primary_category) == (Decision.REMOVE, Category.SPAM)
    assert outcome.confidence == pytest.approx(0.97)


def test_clearly_safe_is_allowed() -> None:
    outcome = decide(scores(safe=0.95), THRESHOLDS)
    assert (outcome.decision, outcome.primary_category) == (Decision.ALLOW, Category.SAFE)


def test_nothing_passing_a_threshold_is_uncertain_review() -> None:
    outcome = decide(scores(safe=0.35, harassment=0.60), THRESHOLDS)
    assert outcome.decision is Decision.REVIEW
    assert outcome.uncertain
    assert outcome.primary_category is Category.HARASSMENT


def test_an_uncertain_post_most_likely_safe_is_named_safe() -> None:
    """Issue 12: the reviewer is not told "harassment" when the model's best guess is safe."""
    outcome = decide(scores(safe=0.55, harassment=0.40), THRESHOLDS)
    assert (outcome.decision, outcome.uncertain) == (Decision.REVIEW, True)
    assert outcome.primary_category is Category.SAFE


@pytest.mark.parametrize(
    ("category", "priority"),
    [(Category.SEXUAL_MINORS, ReviewPriority.URGENT), (Category.SELF_HARM, ReviewPriority.HIGH)],
)
def test_always_review_categories_reach_a_human_even_when_safe_is_high(
    category: Category, priority: ReviewPriority
) -> None:
    outcome = decide(scores(safe=0.99, **{category.value: 0.35}), THRESHOLDS)
    assert outcome.decision is Decision.REVIEW
    assert outcome.primary_category is category
    assert outcome.priority is priority
    assert not outcome.uncertain


def test_always_review_wins_over_remove() -> None:
    outcome = decide(scores(self_harm=0.9, violence=0.95), THRESHOLDS)
    assert (outcome.decision, outcome.primary_category) == (Decision.REVIEW, Category.SELF_HARM)


def test_per_category_thresholds_apply_to_a_lower_probability_category() -> None:
    strict_spam = THRESHOLDS.model_copy(
        update={"remove": {**THRESHOLDS.remove, Category.SPAM: 0.99, Category.ILLICIT: 0.5}}
    )
    outcome = decide(scores(spam=0.9, illicit=0.6), strict_spam)
    assert (outcome.decision, outcome.primary_category) == (Decision.REMOVE, Category.ILLICIT)
