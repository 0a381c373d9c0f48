"""Stage 1 on a post's images: known-bad hash lists first, then the nudity detector.

A post's images are judged from what its event carries (`events.ImageRef`: hashes and the
store address) and, for the detector, the stored bytes. What follows for the post:

- an image on a hash list removes the post at once, in the list's category, whatever its text
  says: the fastest path in the pipeline, and no moderator has to look at the image;
- a detector score at or above `nudity.remove_score` removes it as `sexual`;
- otherwise stage 1 never allows it on its own: the text model does not read images and the
  detector reads one category, so an allow is withheld (`unreadable:images`) and the post goes to
  the agent or to a human; a detector score at or above `nudity.review_score` says why.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from PIL import Image

from moderation.classifier.decide import Outcome
from moderation.classifier.nudity import NudityDetector, load_nudity_detector
from moderation.events import PostSubmitted, ReviewPriority
from moderation.images.hashlists import HashList, HashListError, HashMatcher, load_hashlists
from moderation.images.store import ImageNotFound, ImageStore, make_store
from moderation.settings import Settings
from moderation.taxonomy import Category, Decision

logger = logging.getLogger(__name__)

# Signals a verdict carries about the post's images.
HASH_MATCH_PREFIX = "image:hash-match:"  # + `<list>:<kind>`
NUDITY_PREFIX = "image:nudity:"  # + the detector's highest score, 2 decimals
UNREAD_IMAGES_SIGNAL = "unreadable:images"
DETECTOR_PREFIX = "image:detector:"  # + the detector's model version (what produced the score)


@dataclass(frozen=True)
class HashHit:
    """An image of the post on a known-bad hash list."""

    list_name: str
    category: Category
    kind: str  # sha256 | md5 | pdq
    distance: int  # PDQ's Hamming distance; 0 for an exact hash
    image_index: int


@dataclass(frozen=True)
class ImageFindings:
    """What stage 1 found in one post's images."""

    hit: HashHit | None = None
    nudity: float | None = None  # the detector's highest score over the images; None: not run
    nudity_image: int | None = None  # which image scored it
    detector: str | None = None  # the detector's model version, when it ran


@dataclass(frozen=True)
class ImageThresholds:
    remove_score: float
    review_score: float


def image_thresholds(settings: Settings) -> ImageThresholds:
    """The detector's thresholds (`settings.nudity`)."""
    return ImageThresholds(settings.nudity.remove_score, settings.nudity.review_score)


def apply_images(
    outcome: Outcome,
    scores: dict[Category, float],
    findings: ImageFindings,
    thresholds: ImageThresholds,
) -> tuple[Outcome, dict[Category, float], list[str]]:
    """The outcome, scores and signals of a post with images, given stage 1's text outcome."""
    if findings.hit is not None:
        hit = findings.hit
        matched_signal = f"{HASH_MATCH_PREFIX}{hit.list_name}:{hit.kind}"
        reason = (
            f"image {hit.image_index + 1} is on hash list '{hit.list_name}' ({hit.kind}"
            + (f", distance {hit.distance}" if hit.kind == "pdq" else "")
            + f"): removed as {hit.category.value}"
        )
        matched = Outcome(
            decision=Decision.REMOVE,
            primary_category=hit.category,
            confidence=1.0,
            reason=reason,
        )
        return matched, {**scores, hit.category: 1.0}, [matched_signal]
    signals: list[str] = []
    if findings.nudity is not None:
        score = round(findings.nudity, 6)
        signals.append(f"{NUDITY_PREFIX}{score:.2f}")
        if findings.detector is not None:
            signals.append(f"{DETECTOR_PREFIX}{findings.detector}")
        scores = {**scores, Category.SEXUAL: max(scores[Category.SEXUAL], score)}
        which = (findings.nudity_image or 0) + 1
        if score >= thresholds.remove_score:
            detected = Outcome(
                decision=Decision.REMOVE,
                primary_category=Category.SEXUAL,
                confidence=score,
                reason=f"nudity detector {score:.2f} on image {which} (remove at "
                f"{thresholds.remove_score:.2f})",
            )
            return detected, scores, signals
        if score >= thresholds.review_score and outcome.decision is not Decision.REMOVE:
            return (
                replace(
                    outcome,
                    decision=Decision.REVIEW,
                    primary_category=Category.SEXUAL,
                    confidence=score,
                    uncertain=True,
                    reason=f"nudity detector {score:.2f} on image {which}; {outcome.reason}",
                    priority=ReviewPriority.HIGH,
                ),
                scores,
                [*signals, UNREAD_IMAGES_SIGNAL],
            )
    # Whatever the text decided, stage 1 did not read these images: the agent and the
    # moderator are told so, and an allow is withheld.
    signals.append(UNREAD_IMAGES_SIGNAL)
    if outcome.decision is Decision.ALLOW:
        outcome = replace(
            outcome,
            decision=Decision.REVIEW,
            uncertain=True,
            reason=f"{outcome.reason}; allow withheld: stage 1 does not read images",
        )
    return outcome, scores, signals


class ImageJudge:
    """Finds, for a batch's posts, what the image stage needs: hash-list hits and the
    detector's scores (the stored bytes are read only for posts no list matched).

    Args:
        settings: the lists' directory, PDQ threshold, reload period; the store; the detector.
        database_lists: reads the lists kept in the database (None: files only).
        detector: the nudity detector; None runs hash matching alone.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ImageStore,
        detector: NudityDetector | None,
        database_lists: Callable[[], list[HashList]] | None = None,
    ) -> None:
        self.settings = settings.images
        self.store = store
        self.detector = detector
        self.database_lists = database_lists
        self.matcher = HashMatcher([])
        self.loaded_at = -math.inf
        self.reload()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, database_lists: Callable[[], list[HashList]] | None = None
    ) -> ImageJudge:
        """The configured store, the detector when enabled, the lists loaded."""
        detector = load_nudity_detector(settings.nudity) if settings.nudity.enabled else None
        return cls(
            settings,
            store=make_store(settings.images),
            detector=detector,
            database_lists=database_lists,
        )

    def reload(self) -> None:
        """Build the matcher again from the lists' files and the database's lists. A list that
        cannot be read keeps the matcher as it was (logged), so a bad edit never drops them all."""
        images = self.settings
        self.loaded_at = time.monotonic()
        try:
            lists = load_hashlists(images.hashlist_dir) if images.hashlist_dir.is_dir() else []
            if self.database_lists is not None:
                lists += self.database_lists()
            # A name in a file and in the database: the verdict must name one list.
            names = [hashlist.name for hashlist in lists]
            if len(set(names)) != len(names):
                raise HashListError(f"hash list names repeat: {sorted(names)}")
        except Exception:
            logger.exception("hash lists not reloaded; the previous ones stay in use")
            return
        self.matcher = HashMatcher(
            lists, pdq_threshold=images.pdq_threshold, min_quality=images.pdq_min_quality
        )

    def reload_if_due(self) -> None:
        if time.monotonic() - self.loaded_at >= self.settings.hashlist_reload_seconds:
            self.reload()

    def hits(self, post: PostSubmitted) -> HashHit | None:
        """The post's first image on a list (exact hashes before PDQ, per image)."""
        for index, image in enumerate(post.images):
            found = self.matcher.match(image)
            if found is not None:
                kind = found.kind.value
                return HashHit(found.list_name, found.category, kind, found.distance, index)
        return None

    def _detect(self, post: PostSubmitted) -> ImageFindings:
        """The detector's highest score over the post's images (blocking: a thread's work)."""
        assert self.detector is not None
        pictures = []
        for image in post.images:
            try:
                data = self.store.get(image.sha256)
            except ImageNotFound:
                logger.warning("post %s: image %s not in the store", post.post_id, image.sha256)
                continue
            with Image.open(io.BytesIO(data)) as opened:
                pictures.append(opened.convert("RGB"))
        if not pictures:
            return ImageFindings()
        results = self.detector.detect_batch(pictures)
        best = max(range(len(results)), key=lambda i: results[i].score)
        return ImageFindings(
            nudity=results[best].score,
            nudity_image=best,
            detector=self.detector.model_version,
        )

    def judge(self, posts: Sequence[PostSubmitted]) -> list[ImageFindings | None]:
        """Per post: None without images, else what the hash lists and the detector found."""
        self.reload_if_due()
        findings: list[ImageFindings | None] = []
        for post in posts:
            if not post.images:
                findings.append(None)
                continue
            hit = self.hits(post)
            if hit is not None:
                findings.append(ImageFindings(hit=hit))
            elif self.detector is not None:
                findings.append(self._detect(post))
            else:
                findings.append(ImageFindings())
        return findings
