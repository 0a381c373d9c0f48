"""Can stage 1 read this text? A post it cannot read is never allowed on its word.

The fast model learned from English posts of up to a few hundred characters. Faced with words it
never saw, its scores fall back to the prior, which is "safe": a threat written in Japanese,
Arabic or Hinglish came out as P(safe) 0.83-0.95 and was allowed. So before stage 1 allows a
post, three rules ask whether the model could read it (`assess`); any that fires makes the post
uncertain (the agent, else a human), names itself in the verdict's signals, and never removes:

- `language:<code>`: CLD2 (`pycld2`, compiled, ~2 us per post) reliably detects a language
  outside `readability.supported_languages`, and the text's words are not mostly known to the
  model (short English posts are sometimes "detected" as Latin or Scots);
- `unfamiliar-words`: more than `readability.max_unfamiliar_share` of the text's words (runs of
  two or more letters) never occurred in two training texts (`FastModel.vocabulary`), for texts
  of at least `readability.min_words` words: transliterated or code-mixed text that CLD2 cannot
  name (Hinglish, Russian in Latin letters), and languages the model never saw;
- `length`: the text is longer than `readability.length_factor` times the 99.9th percentile of
  the training texts' lengths (`FastModel.training_length`).

The rules only ever withhold an allow; they are measured on the gold split in `data/README.md`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import pycld2  # type: ignore[import-untyped]

from moderation.settings import ReadabilitySettings

UNFAMILIAR_WORDS = "unfamiliar-words"
LENGTH = "length"
LANGUAGE_PREFIX = "language:"
LABEL_PREFIX = "unreadable:"

# Words as the vocabulary counts them: runs of two or more letters (a CJK run counts as one).
_WORD = re.compile(r"[^\W\d_]{2,}")
# Below this share of unknown words a detected foreign language is taken for noise.
_FOREIGN_LANGUAGE_MIN_UNFAMILIAR = 0.3


@dataclass(frozen=True)
class Readability:
    """What stops the model from reading a text: the rules that fired, sorted."""

    signals: tuple[str, ...] = ()

    @property
    def readable(self) -> bool:
        return not self.signals

    def labels(self) -> list[str]:
        """The verdict-event labels, e.g. `["unreadable:language:ja"]`."""
        return [LABEL_PREFIX + signal for signal in self.signals]


READABLE = Readability()


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (what `FastModel.vocabulary` holds)."""
    return _WORD.findall(text.lower())


def unfamiliar_share(text: str, vocabulary: Collection[str]) -> tuple[float, int]:
    """(share of the text's words not in `vocabulary`, number of words)."""
    found = words(text)
    if not found:
        return 0.0, 0
    return sum(1 for word in found if word not in vocabulary) / len(found), len(found)


def detected_language(text: str) -> str | None:
    """The language CLD2 reliably detects (ISO 639-1 where it has one), else None."""
    try:
        reliable, _, details = pycld2.detect(text)[:3]
    except pycld2.error:  # e.g. text that is not valid UTF-8 once encoded (lone surrogates)
        return None
    code = str(details[0][1]) if details else "un"
    return code if reliable and code not in ("un", "xxx") else None


def assess(
    text: str,
    settings: ReadabilitySettings,
    *,
    vocabulary: Collection[str] | None,
    training_length: int | None,
) -> Readability:
    """Which readability rules `text` fails (module docstring); `READABLE` when none."""
    signals: list[str] = []
    share, count = unfamiliar_share(text, vocabulary) if vocabulary else (1.0, 0)
    # CLD2 only where the language rule can fire: most posts' words are known.
    language = detected_language(text) if share >= _FOREIGN_LANGUAGE_MIN_UNFAMILIAR else None
    if language is not None and language not in settings.supported_languages:
        signals.append(LANGUAGE_PREFIX + language)
    if vocabulary and count >= settings.min_words and share > settings.max_unfamiliar_share:
        signals.append(UNFAMILIAR_WORDS)
    if training_length and len(text) > settings.length_factor * training_length:
        signals.append(LENGTH)
    return Readability(tuple(sorted(signals))) if signals else READABLE
