"""`moderation eval --images DIR`: the image stage on a labelled image dataset.

`DIR/labels.csv` has the header `file,label`: a file name under `DIR` and its category
(`moderation.taxonomy`). Each image goes the way a post's image goes: checked and sanitized
(`images.intake.prepare`, the API's limits), hashed, matched against the configured hash lists,
scored by the nudity detector, and judged by stage 1's image rules (`classifier.image_stage`:
a list hit or a detector score from `nudity.remove_score` removes, a score from
`nudity.review_score` or anything else goes on to the agent or a human; an image is never
allowed on stage 1's word). Per label the report counts removals, their categories, the images
sent on, the images refused at intake and the detector's scores; for `safe` images a removal is a
false positive.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from moderation.classifier.decide import Outcome
from moderation.classifier.image_stage import (
    ImageFindings,
    ImageJudge,
    apply_images,
    image_thresholds,
)
from moderation.events import PostSubmitted
from moderation.images.intake import ImageLimits, ImageRejected, prepare
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision


class ImageLabelReport(BaseModel):
    label: str
    images: int
    removed: int
    removed_as: dict[str, int] = Field(description="removals by the category they named")
    sent_on: int = Field(description="to the agent or a human (never allowed by stage 1)")
    refused: int = Field(description="refused at intake (limits, corrupt)")
    hash_matched: int
    detector_max: float | None
    false_positives: int | None = Field(description="safe images removed (safe label only)")


class ImageEvaluation(BaseModel):
    dataset: str
    images: int
    per_label: list[ImageLabelReport]
    refusals: dict[str, str] = Field(description="file: why intake refused it")


def read_labels(directory: Path) -> list[tuple[Path, Category]]:
    """The (image path, label) rows of `directory/labels.csv`.

    Raises:
        ValueError: a missing file, header, image or an unknown label, naming it.
    """
    labels = directory / "labels.csv"
    if not labels.is_file():
        raise ValueError(f"{labels}: missing (a CSV with the header file,label)")
    rows = []
    with labels.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != ["file", "label"]:
            raise ValueError(f"{labels}: the header must be file,label, not {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            path = directory / row["file"]
            if not path.is_file():
                raise ValueError(f"{labels}:{line}: no image {path}")
            try:
                rows.append((path, Category(row["label"])))
            except ValueError:
                raise ValueError(f"{labels}:{line}: unknown label {row['label']!r}") from None
    return rows


def evaluate_images(directory: Path, settings: Settings, judge: ImageJudge) -> ImageEvaluation:
    """Run each labelled image through intake and the image stage; count per label."""
    rows = read_labels(directory)
    limits = ImageLimits.from_settings(settings.images)
    thresholds = image_thresholds(settings)
    neutral = Outcome(Decision.REVIEW, Category.SAFE, 0.0, "image evaluation", uncertain=True)
    zero = dict.fromkeys(CATEGORIES, 0.0)
    counts: dict[Category, Counter[str]] = {}
    removed_as: dict[Category, Counter[str]] = {}
    scores: dict[Category, list[float]] = {}
    refusals: dict[str, str] = {}
    for index, (path, label) in enumerate(rows):
        tally = counts.setdefault(label, Counter())
        tally["images"] += 1
        try:
            prepared = prepare(path.read_bytes(), limits)
        except ImageRejected as error:
            tally["refused"] += 1
            refusals[path.name] = f"{error.code.value}: {error.message}"
            continue
        ref = prepared.image_ref(judge.store.put(prepared.data, prepared.content_type))
        post = PostSubmitted(post_id=f"eval-{index}", text="-", author_id="eval", images=[ref])
        [found] = judge.judge([post])
        findings = found or ImageFindings()
        if findings.nudity is not None:
            scores.setdefault(label, []).append(findings.nudity)
        outcome, _, _ = apply_images(neutral, dict(zero), findings, thresholds)
        if findings.hit is not None:
            tally["hash_matched"] += 1
        if outcome.decision is Decision.REMOVE:
            tally["removed"] += 1
            removed_as.setdefault(label, Counter())[outcome.primary_category.value] += 1
        else:
            tally["sent_on"] += 1
    per_label = [
        ImageLabelReport(
            label=label.value,
            images=tally["images"],
            removed=tally["removed"],
            removed_as=dict(removed_as.get(label, Counter())),
            sent_on=tally["sent_on"],
            refused=tally["refused"],
            hash_matched=tally["hash_matched"],
            detector_max=round(max(scores[label]), 4) if scores.get(label) else None,
            false_positives=tally["removed"] if label is Category.SAFE else None,
        )
        for label, tally in sorted(counts.items(), key=lambda item: CATEGORIES.index(item[0]))
    ]
    return ImageEvaluation(
        dataset=str(directory), images=len(rows), per_label=per_label, refusals=refusals
    )


def render_image_evaluation(result: ImageEvaluation, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"Image stage on {result.dataset} ({result.images} images)")
    for column in ("label", "images", "removed", "as", "sent on", "refused", "hash", "max score"):
        table.add_column(column, justify="left" if column in ("label", "as") else "right")
    for row in result.per_label:
        table.add_row(
            row.label,
            str(row.images),
            str(row.removed),
            ", ".join(f"{k} {v}" for k, v in row.removed_as.items()) or "–",
            str(row.sent_on),
            str(row.refused),
            str(row.hash_matched),
            "–" if row.detector_max is None else f"{row.detector_max:.2f}",
        )
    console.print(table)
    for name, reason in result.refusals.items():
        console.print(f"refused {name}: {reason}")
