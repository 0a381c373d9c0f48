"""Can stage 1 read this text? A post it cannot read is never allowed on its word.

The fast model learned from English posts of up to a few hundred characters. Faced with words it
never saw, its scores fall back to the prior, which is "safe": a threat written in Japanese,
Arabic or Hinglish came out as P(safe) 0.83-0.95 and was allowed. So before stage 1 allows a
post, four rules ask whether the model could read it (`assess`); any that fires makes the post
uncertain (the agent, else a human), names itself in the verdict's signals, and never removes:

- `language:<code>`: CLD2 (`pycld2`, compiled, ~2 us per post) reliably detects a language
  outside `readability.supported_languages`, and the text's words are not mostly known to the
  model (short English posts are sometimes "detected" as Latin or Scots);
- `unfamiliar-words`: more than `readability.max_unfamiliar_share` of the text's words (runs of
  two or more letters) never occurred in two training texts (`FastModel.vocabulary`), for texts
  of at least `readability.min_words` words: transliterated or code-mixed text that CLD2 cannot
  name (Hinglish, Russian in Latin letters), and languages the model never saw;
- `length`: the text is longer than `readability.length_factor` times the 99.9th percentile of
  the training texts' lengths (`FastModel.training_length`);
- `disguised-words`: a word is written so that a person still reads it but the model's byte
  n-grams do not (`disguised`): Latin words with Cyrillic, Greek or Armenian look-alike letters
  ("ѕhооt"), letters split by invisible characters, combining marks stacked on Latin letters
  (strike-through, "Zalgo"), letters spaced out or split by punctuation or emoji ("k i l l",
  "k🔪i🔪l🔪l"), fullwidth, mathematical or enclosed letters ("ｋｉｌｌ"), letters written as
  percent escapes or character references ("%6B%69%6C%6C"), and leetspeak that spells a word
  the model knows ("k1ll", "h4tes"). The disguised word is simply missing from
  what the model reads: "I will ѕhооt every teacher ..." came out P(safe) 0.96. One disguised
  word is enough, as in a real post: the rest of it is written to look harmless.

A fifth rule needs the model itself, so `cascade.first_stage` applies it with `passages` and
`diluted`: `passage:<category>`, a text of at least `readability.passage_check_chars`
characters that the model would allow as a whole, but one of whose sentences, read alone, it
finds more likely `<category>` than safe. The model reads a long text as one bag of n-grams and
one mean vector, so a threat in the middle of an essay is diluted by the sentences around it:
a short violating post set inside a long safe text of the gold split was allowed 69 % of the
time, and 36 % with this rule, which kept 89 % of the long safe texts' allows (`data/MODEL_CARD.md`,
"Long texts"; `moderation eval --loso` measures it again for every model).

The rules only ever withhold an allow; they are measured on the gold split in `data/README.md`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import pycld2  # type: ignore[import-untyped]

from moderation.settings import ReadabilitySettings
from moderation.taxonomy import VIOLATING, Category

UNFAMILIAR_WORDS = "unfamiliar-words"
LENGTH = "length"
DISGUISED_WORDS = "disguised-words"
PASSAGE_PREFIX = "passage:"
LANGUAGE_PREFIX = "language:"
LABEL_PREFIX = "unreadable:"

# Words as the vocabulary counts them: runs of two or more letters (a CJK run counts as one).
_WORD = re.compile(r"[^\W\d_]{2,}")
# Below this share of unknown words a detected foreign language is taken for noise.
_FOREIGN_LANGUAGE_MIN_UNFAMILIAR = 0.3

# Sentence ends: `.`, `!`, `?` or `…` before white space, or a line break.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|\s*\n\s*")
# Shorter pieces join the next one: a salutation or "Ok." is not read alone.
_MIN_PASSAGE_CHARS = 40

# --- disguised words (`disguised`). Each pattern starts with a character class that ordinary
# text rarely contains (the regex engine skips to it quickly) and has no nested repetition over
# the same characters: linear in the text's length, a few microseconds a post.

# A Cyrillic, Greek or Armenian letter next to a Latin one inside a word: a look-alike ("ѕhооt"),
# never a real word of either script. Greek mu is left out: "5μm" and "μg" are units.
_LOOKALIKE = "\u0370-\u03bb\u03bd-\u03ff\u0400-\u052f\u0531-\u058f"
_MIXED_SCRIPT = re.compile(f"[{_LOOKALIKE}](?:(?<=[a-zA-Z].)|(?=[a-zA-Z]))")
# Invisible characters between two Latin letters: zero-width space, non-joiner and joiner,
# direction marks, word joiner, invisible operators, byte order mark, soft hyphen. Between the
# letters of other scripts the joiners shape ordinary text (Persian, Devanagari).
_INVISIBLE = "\u200b-\u200f\u2060-\u2064\ufeff\u00ad"
_SPLIT_BY_INVISIBLE = re.compile(f"[{_INVISIBLE}](?<=[a-zA-Z].)[{_INVISIBLE}]*[a-zA-Z]")
# Combining marks on a Latin letter that do not compose with it into one character: strike-through,
# overlays, stacks. The accented letters of real languages compose (NFC), even when typed as a
# letter and a mark; the text is not normalised as a whole (reordering a long run of marks of
# different classes costs quadratic time), each letter is checked with its first mark.
_MARKS = "\u0300-\u036f\u0489\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_MARK = re.compile(f"[{_MARKS}]")
_MARKED_LATIN = re.compile(f"[a-zA-Z][{_MARKS}]")
# Fullwidth Latin letters, circled letters, mathematical alphanumerics, squared letters.
_STYLED_LETTER = re.compile(
    "[\uff21-\uff3a\uff41-\uff5a\u24b6-\u24e9\U0001d400-\U0001d7ff\U0001f130-\U0001f189]"
)
# Marked or styled letters count from this many on: a lone "ⓘ" is an icon, one stray mark a typo.
_MIN_MARKED_OR_STYLED = 3
# Four or more single letters split by spaces, punctuation or emoji: "k i l l", "k.i.l.l",
# "k🔪i🔪l🔪l" (an emoji may carry its variation selector, U+FE0F). The hint, two single letters
# between separators, is found in any such run and is cheap to look for.
_SEPARATOR = " .\\-_*|/·•+~\ufe0f\u2190-\u21ff\u2300-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff"
_SPACED_HINT = re.compile(f"[{_SEPARATOR}][a-zA-Z][{_SEPARATOR}]{{1,3}}[a-zA-Z][{_SEPARATOR}]")
_SPACED_LETTERS = re.compile(
    rf"(?<![^\W\d_])(?:[a-zA-Z][{_SEPARATOR}]{{1,3}}){{3,}}[a-zA-Z](?![^\W\d_])"
)
# ASCII letters written as percent escapes ("%6B%69%6C%6C") or numeric character references
# ("&#107;&#105;"): links and pages escape what a URL or markup cannot hold (spaces, accented and
# non-Latin letters), never a plain letter. Four such letters spell a word.
_ESCAPED_LETTER = re.compile(
    r"%(?:4[1-9a-fA-F]|5[0-9aA]|6[1-9a-fA-F]|7[0-9aA])"
    r"|&#(?:x(?:4[1-9a-fA-F]|5[0-9aA]|6[1-9a-fA-F]|7[0-9aA])|6[5-9]|[7-9][0-9]|1[01][0-9]|12[0-2]);"
)
_MIN_ESCAPED_LETTERS = 4
# Leetspeak: a digit or symbol between two letters ("k1ll", "w0rthl3ss") or leading three
# letters ("3nds"; not "@": "@tom" is a mention, not "atom"). It is a disguise when the word it
# spells is known to the model and the word as written is not: "mp3s", "4chan" or "covid19"
# spell nothing.
_LEET_CHARS = "0134578@$"
_LEET_CANDIDATE = re.compile(
    rf"[{_LEET_CHARS}](?:(?<=[a-zA-Z].)(?=[a-zA-Z])|(?<![\w@$].)(?=[a-zA-Z]{{3}}))"
)
_LEET_TOKEN = re.compile(r"[a-z0-9@$]{3,}")
_LEET_INSIDE = re.compile(rf"[a-z][{_LEET_CHARS}]+[a-z]|^[0134578$][a-z]{{3}}")
_LEET = str.maketrans(_LEET_CHARS, "oieastbas")


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


def disguised(text: str, vocabulary: Collection[str] | None = None) -> bool:
    """True when `text` disguises a word from the model (module docstring, `disguised-words`).

    Leetspeak needs `vocabulary` (the word it spells must be known); the other disguises do not.
    """
    if _SPACED_HINT.search(text) and _SPACED_LETTERS.search(text):
        return True
    if vocabulary and _LEET_CANDIDATE.search(text) and _spells_known_word(text, vocabulary):
        return True
    if ("%" in text or "&#" in text) and len(_ESCAPED_LETTER.findall(text)) >= _MIN_ESCAPED_LETTERS:
        return True
    if text.isascii():
        return False
    if _MIXED_SCRIPT.search(text) or _SPLIT_BY_INVISIBLE.search(text):
        return True
    if len(_STYLED_LETTER.findall(text)) >= _MIN_MARKED_OR_STYLED:
        return True
    return _MARK.search(text) is not None and _marked_letters(text) >= _MIN_MARKED_OR_STYLED


def _marked_letters(text: str) -> int:
    """Latin letters carrying a mark they do not compose with (up to `_MIN_MARKED_OR_STYLED`)."""
    count = 0
    for match in _MARKED_LATIN.finditer(text):
        if len(unicodedata.normalize("NFC", match.group())) == 2:
            count += 1
            if count >= _MIN_MARKED_OR_STYLED:
                break
    return count


def _spells_known_word(text: str, vocabulary: Collection[str]) -> bool:
    """A leetspeak word of `text` spells a word the model knows (and is not one as written)."""
    for token in _LEET_TOKEN.findall(text.lower()):
        if _LEET_INSIDE.search(token):
            spelled = token.translate(_LEET)
            if spelled.isalpha() and spelled in vocabulary and token not in vocabulary:
                return True
    return False


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
    if disguised(text, vocabulary):
        signals.append(DISGUISED_WORDS)
    return Readability(tuple(sorted(signals))) if signals else READABLE


def sentences(text: str) -> list[str]:
    """`text` cut after `.`, `!`, `?` or `…` before white space, and at line breaks."""
    return [piece for piece in _SENTENCE_BREAK.split(text) if piece]


def passages(text: str, limit: int) -> list[str]:
    """The sentences of `text` (short ones joined to the next), at most `limit` of them."""
    found: list[str] = []
    pending = ""
    for piece in sentences(text):
        pending = f"{pending} {piece}".strip() if pending else piece.strip()
        if len(pending) >= _MIN_PASSAGE_CHARS:
            found.append(pending)
            pending = ""
            if len(found) == limit:
                return found
    if pending:
        found.append(pending)
    return found


def diluted(passage_scores: Sequence[Mapping[Category, float]]) -> Category | None:
    """The violating category one passage is read as more likely than safe (the most
    probable such one), or None; spam is left out: a link in an essay is not a threat."""
    worst: tuple[float, Category] | None = None
    for scores in passage_scores:
        safe = scores[Category.SAFE]
        for category in VIOLATING:
            if category is not Category.SPAM and scores[category] > safe:
                if worst is None or scores[category] > worst[0]:
                    worst = (scores[category], category)
    return worst[1] if worst is not None else None
