"""From calibrated probabilities to a decision (ARCHITECTURE.md, "Taxonomy and decisions").

Order of the rules, first match wins:
1. an always-review category (`sexual_minors`, `self_harm`) whose probability reaches
   `review_floor` goes to a human, whatever else the model says;
2. `remove` when a violating category reaches its remove threshold (the most probable one is the
   primary category);
3. `allow` when P(safe) reaches the allow threshold;
4. otherwise the post is uncertain: stage 2 (the agent, when it lands) or a human decides; its
   primary category is the most probable one, `safe` included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moderation.events import ReviewPriority
from moderation.settings import ThresholdSettings
from moderation.taxonomy import VIOLATING, Category, Decision

URGENT_CATEGORIES = frozenset({Category.SEXUAL_MINORS})


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    primary_category: Category
    confidence: float
    reason: str
    uncertain: bool = False
    priority: ReviewPriority = ReviewPriority.NORMAL


def decide(scores: Mapping[Category, float], thresholds: ThresholdSettings) -> Outcome:
    """Apply the thresholds to one post's calibrated per-category probabilities."""
    for category in thresholds.always_review:
        probability = scores[category]
        if probability >= thresholds.review_floor:
            return Outcome(
                decision=Decision.REVIEW,
                primary_category=category,
                confidence=probability,
                reason=f"always-review category {category.value} at {probability:.2f}",
                priority=(
                    ReviewPriority.URGENT if category in URGENT_CATEGORIES else ReviewPriority.HIGH
                ),
            )

    top_violation = max(VIOLATING, key=lambda category: scores[category])
    top_probability = scores[top_violation]
    if top_probability >= thresholds.remove[top_violation]:
        return Outcome(
            decision=Decision.REMOVE,
            primary_category=top_violation,
            confidence=top_probability,
            reason=f"{top_violation.value} at {top_probability:.2f}",
        )
    # A lower-probability category may still pass its own (lower) threshold.
    passing = [c for c in VIOLATING if scores[c] >= thresholds.remove[c]]
    if passing:
        category = max(passing, key=lambda c: scores[c])
        return Outcome(
            decision=Decision.REMOVE,
            primary_category=category,
            confidence=scores[category],
            reason=f"{category.value} at {scores[category]:.2f}",
        )

    safe = scores[Category.SAFE]
    if safe >= thresholds.allow:
        return Outcome(
            decision=Decision.ALLOW,
            primary_category=Category.SAFE,
            confidence=safe,
            reason=f"safe at {safe:.2f}",
        )

    # The most probable category names an uncertain post: a reviewer shown "violence" for a post
    # the model thinks is most likely safe would be primed toward removal.
    return Outcome(
        decision=Decision.REVIEW,
        primary_category=Category.SAFE if safe >= top_probability else top_violation,
        confidence=max(safe, top_probability),
        reason=(
            f"uncertain: safe at {safe:.2f}, {top_violation.value} at {top_probability:.2f}; "
            "no threshold passed"
        ),
        uncertain=True,
    )
