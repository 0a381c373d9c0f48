"""Stage 1 on posts with images (`classifier/image_stage.py`): a hash-list hit removes at once,
the nudity detector removes only at a very high score, and an image post is never allowed by
stage 1 alone; the text-only agent never allows one either."""

from __future__ import annotations

import pytest

from moderation.classifier.cascade import IMAGES_UNSEEN_SIGNAL, combine, first_stage
from moderation.classifier.image_stage import (
    UNREAD_IMAGES_SIGNAL,
    HashHit,
    ImageFindings,
)
from moderation.classifier.injection.screen import CLEAN
from moderation.events import PostSubmitted
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision
from tests.image_samples import image_ref
from tests.unit.test_bench_agent import KeywordScorer
from tests.unit.test_cascade import answer as cascade_answer


def post(text: str, post_id: str, *, images: int = 1) -> PostSubmitted:
    refs = [image_ref(f"{post_id}-{i}") for i in range(images)]
    return PostSubmitted(post_id=post_id, text=text, author_id="a", images=refs)


def test_a_hash_list_hit_removes_the_post_at_once_whatever_its_text() -> None:
    hit = HashHit("ncmec-sample", Category.SEXUAL_MINORS, "pdq", 12, image_index=1)
    [item] = first_stage(
        [post("clear-safe holiday photos", "p1", images=2)],
        KeywordScorer(),
        Settings(),
        agent_enabled=True,
        images=[ImageFindings(hit=hit)],
    )
    verdict = item.verdict
    assert verdict.decision is Decision.REMOVE
    assert verdict.primary_category is Category.SEXUAL_MINORS
    assert "image:hash-match:ncmec-sample:pdq" in verdict.signals
    assert "image 2 is on hash list 'ncmec-sample' (pdq, distance 12)" in (verdict.rationale or "")
    assert not item.to_agent and item.review is None


@pytest.mark.parametrize(
    ("score", "decision", "to_human"),
    [(0.95, Decision.REMOVE, False), (0.7, Decision.REVIEW, True), (0.1, Decision.REVIEW, True)],
)
def test_the_detector_removes_only_at_a_very_high_score(
    score: float, decision: Decision, to_human: bool
) -> None:
    [item] = first_stage(
        [post("clear-safe beach day", "p2")],
        KeywordScorer(),
        Settings(),
        agent_enabled=False,
        images=[ImageFindings(nudity=score, nudity_image=0, detector="nudenet-320n:abc")],
    )
    assert item.verdict.decision is decision
    assert "image:detector:nudenet-320n:abc" in item.verdict.signals  # what produced the score
    assert f"image:nudity:{score:.2f}" in item.verdict.signals
    assert item.verdict.scores[Category.SEXUAL] >= score
    assert (item.review is not None) is to_human
    if decision is Decision.REVIEW:
        assert UNREAD_IMAGES_SIGNAL in item.verdict.signals


def test_an_image_post_is_never_allowed_by_stage_1_and_a_text_post_still_is() -> None:
    with_image, text_only = first_stage(
        [post("clear-safe cat picture", "p3"), post("clear-safe cat picture", "p4", images=0)],
        KeywordScorer(),
        Settings(),
        agent_enabled=True,
        images=[None, None],
    )
    assert text_only.verdict.decision is Decision.ALLOW
    assert with_image.verdict.decision is Decision.REVIEW
    assert with_image.to_agent
    assert UNREAD_IMAGES_SIGNAL in with_image.verdict.signals
    assert "stage 1 does not read images" in (with_image.verdict.rationale or "")


def test_a_clear_text_removal_stays_a_removal_with_images() -> None:
    [item] = first_stage(
        [post("clear-spam buy now", "p5")],
        KeywordScorer(),
        Settings(),
        agent_enabled=True,
        images=[ImageFindings(nudity=0.02, nudity_image=0)],
    )
    assert item.verdict.decision is Decision.REMOVE


def test_the_text_only_agent_never_allows_a_post_with_images() -> None:
    safe = dict.fromkeys(CATEGORIES, 0.0) | {Category.SAFE: 0.99}
    answer = cascade_answer(Decision.ALLOW, Category.SAFE, safe=0.99)
    _, seen = combine(safe, answer, CLEAN, Settings())
    assert seen.decision is Decision.ALLOW
    _, unseen = combine(safe, answer, CLEAN, Settings(), images_unseen=True)
    assert unseen.decision is Decision.REVIEW
    assert "did not see the post's images" in unseen.reason
    assert IMAGES_UNSEEN_SIGNAL == "images-unseen"
