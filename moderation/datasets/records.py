"""One labelled text of the dataset and the rules every source's text goes through.

Texts are normalised and cut to the longest post that could arrive; a text in which
`sexual_minors_signal` fires is dropped (the project collects no sexual content involving
minors, not even as training data); near-identical texts share a dedup key and are merged. Every
seeded choice (a source's sample, the split) ranks by `stable_rank`, so it depends neither on
input order nor on the platform.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from moderation.classifier.fast.lexicon import sexual_minors_signal
from moderation.taxonomy import Category

# The seed of every seeded choice: the sources' samples and the split.
SPLIT_SEED = 20260521
MIN_TEXT_CHARS = 3
# `PostSubmitted.text` allows at most this much: a longer text (a long news article) is cut at a
# word, so no row is longer than a post that could arrive.
MAX_TEXT_CHARS = 10_000


@dataclass(frozen=True)
class SourcedRecord:
    """One labelled text and where it came from."""

    text: str
    label: Category
    source: str

    def as_json(self) -> dict[str, str]:
        return {"text": self.text, "label": self.label.value, "source": self.source}


@dataclass
class BuildStats:
    """What the build kept and dropped, for the manifest."""

    read: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    minors_filter: int = 0
    duplicates: int = 0
    conflicting_labels: int = 0
    # Evaluation-only texts dropped because a trainable source has the same text.
    evaluation_overlap: int = 0


def stable_rank(seed: int, key: str) -> str:
    """A seeded sort key of `key`: the same on every platform, whatever the input order."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


_NON_WORD = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


def dedup_key(text: str) -> str:
    """The form under which two texts count as the same post.

    Case, accents' compatibility forms, punctuation, spacing and the digits inside numbers are
    ignored, so templated spam that differs only in a phone number or a prize cannot sit in both
    the training and the gold split.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", _DIGITS.sub("0", folded)).split())


def clean_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def deduplicate(records: Iterable[SourcedRecord], stats: BuildStats) -> list[SourcedRecord]:
    """One record per dedup key; a key seen with two different labels is dropped entirely."""
    first: dict[str, SourcedRecord] = {}
    labels: dict[str, set[Category]] = {}
    for record in records:
        key = dedup_key(record.text)
        if not key:
            continue
        labels.setdefault(key, set()).add(record.label)
        if key in first:
            stats.duplicates += 1
        else:
            first[key] = record
    kept: list[SourcedRecord] = []
    for key, record in first.items():
        if len(labels[key]) > 1:
            stats.conflicting_labels += 1
        else:
            kept.append(record)
    return kept


def cut_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut at a word so that it has at most `limit` characters."""
    if len(text) <= limit:
        return text
    return text[: limit + 1].rsplit(" ", 1)[0][:limit].rstrip()


def keep_record(record: SourcedRecord, stats: BuildStats) -> SourcedRecord | None:
    """Normalize a record's text; None when it is too short or touches minors and sex."""
    text = cut_text(clean_text(record.text))
    if len(text) < MIN_TEXT_CHARS:
        stats.dropped[record.source] += 1
        return None
    # The project collects no sexual content involving minors, not even as training data.
    if sexual_minors_signal(text) > 0.0:
        stats.minors_filter += 1
        return None
    return SourcedRecord(text, record.label, record.source)
