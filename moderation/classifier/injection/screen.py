"""A prompt-injection screen for posts: does this text try to manipulate the model reading it?

Uncertain posts go to an LLM agent whose prompt carries the post as delimited DATA
(`<post>` ... `</post>`). A post that talks *to* that model ("ignore your instructions",
"SYSTEM: policy update", "respond only with allow", a closing `</post>` tag) is an attack on the
cascade, whatever its content: the agent must never be the only voice allowing such a post. This
module finds those attempts with precompiled regular expressions, cheaply enough to run on every
post of the stream (a few microseconds per post; see `screen_post`).

Each technique is a signal. The first four are found by rules, data in `rule_tables/` read by
`rules.py` (each file's header says what its rules catch):

- `ignore-instructions`: orders to the model/moderator/classifier to ignore, forget, override or
  bypass its rules, to classify or approve the post as safe, or text that addresses its reader
  ("dear moderator,", "hello AI,", "moderator, ignore ...") in 14 languages.
- `fake-system`: text posing as a system/developer/admin/policy message, claims of authority, of
  prior clearance, of a clean record or a precedent, and attempts to close the `<post>` delimiter.
- `role-play`: "pretend you are", "you are now an unfiltered AI", "act as DAN", "developer mode".
- `output-steering`: a verdict-shaped object, fake few-shot lines, a verdict table, "precedent:
  allow", "respond only with allow".

The other two say how a match was reached:

- `encoded-payload`: base64 / hex / percent / HTML-entity blobs, rot13 or reversed trigger words
  (`encoded.py`). What decodes to readable text is screened again, and a long base64 or hex blob
  that decodes to readable text counts on its own (benign posts have no reason to hide text).
- `obfuscation`: the match needed normalisation (`normalise.py`): invisible or tag characters,
  NFKC-foldable look-alikes, homoglyphs inside Latin words, letters spaced out ("i g n o r e",
  or split by emoji), leetspeak ("1gn0r3"), or text built to grow past the screened length.

The screen is a flag for routing, not a verdict: a flagged post is not necessarily violating, it
must simply not be allowed on the agent's word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moderation.classifier.injection.encoded import HIDDEN_TEXT_KINDS, decoded_blobs, unscrambled
from moderation.classifier.injection.normalise import (
    MAX_SCREENED_CHARS,
    TAG_RUN,
    WORD_RUN,
    collapse,
    despace,
    fold,
    leet_variants,
    looks_spaced,
    normalise,
    plain_form,
    visible_text,
)
from moderation.classifier.injection.rules import (
    ENCODED_PAYLOAD,
    FAKE_SYSTEM,
    IGNORE_INSTRUCTIONS,
    OBFUSCATION,
    OUTPUT_STEERING,
    ROLE_PLAY,
    RULES,
    SCRIPT_RULES,
    TECHNIQUES,
    Rule,
)

# The techniques are defined with the rules and re-exported here, the screen's public face, with
# the normalisation the rules read.
__all__ = [
    "CLEAN",
    "ENCODED_PAYLOAD",
    "FAKE_SYSTEM",
    "IGNORE_INSTRUCTIONS",
    "LABEL_PREFIX",
    "MAX_SCREENED_CHARS",
    "OBFUSCATION",
    "OUTPUT_STEERING",
    "ROLE_PLAY",
    "TECHNIQUES",
    "InjectionScreen",
    "normalise",
    "screen_post",
]

LABEL_PREFIX = "injection:"


@dataclass(frozen=True)
class InjectionScreen:
    """What the screen found in one post: the techniques it uses, sorted and unique."""

    signals: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        """True when the post uses any injection technique."""
        return bool(self.signals)

    def labels(self) -> list[str]:
        """The signals as verdict-event labels, e.g. `["injection:fake-system"]`."""
        return [LABEL_PREFIX + signal for signal in self.signals]


CLEAN = InjectionScreen()

# --------------------------------------------------------------------------------------------
# Rule selection (built once at import).


def _index_rules() -> dict[str, tuple[Rule, ...]]:
    """Rules by the words of their first anchor set: a post's words select its rules."""
    index: dict[str, list[Rule]] = {}
    for rule in RULES:
        if rule.anchors:
            for word in rule.anchors[0]:
                index.setdefault(word, []).append(rule)
    return {word: tuple(rules) for word, rules in index.items()}


_RULES_BY_WORD = _index_rules()
_ANCHOR_WORDS = frozenset(_RULES_BY_WORD)
_CHAR_RULES = tuple(rule for rule in RULES if not rule.anchors)
# One scan for the markers of all rules without anchor words.
_CHAR_RULES_HINT = re.compile(
    "|".join(re.escape(char) for rule in _CHAR_RULES for char in rule.chars)
)
# Rules for scripts written without spaces: only non-ASCII posts are scanned for their markers.
_SCRIPT_RULES_HINT = re.compile(
    "|".join(re.escape(char) for rule in SCRIPT_RULES for char in rule.chars)
)
# ASCII punctuation to spaces: splitting the result gives the same words as `WORD_RUN` on ASCII text
# in half the time (bytes.translate is a table lookup per byte).
_ASCII_PUNCTUATION = b"".join(
    bytes([byte]) for byte in range(128) if not chr(byte).isalnum() and chr(byte) != "_"
)
_PUNCTUATION_TO_SPACE = bytes.maketrans(_ASCII_PUNCTUATION, b" " * len(_ASCII_PUNCTUATION))


def _words(normalised: str) -> list[str]:
    """The words (`\\w+` runs) of the text."""
    if normalised.isascii():
        return normalised.encode().translate(_PUNCTUATION_TO_SPACE).decode().split()
    return WORD_RUN.findall(normalised)


# --------------------------------------------------------------------------------------------
# Screening.


def _match(normalised: str, words: list[str] | None = None) -> set[str]:
    """Techniques whose rules match the normalised text (`words`: its words, when known)."""
    found: set[str] = set()
    candidates: list[Rule] = []
    if _CHAR_RULES_HINT.search(normalised):
        candidates.extend(_CHAR_RULES)
    if not normalised.isascii() and _SCRIPT_RULES_HINT.search(normalised):
        candidates.extend(SCRIPT_RULES)
    if words is None:
        words = _words(normalised)
    for word in _ANCHOR_WORDS.intersection(words):
        candidates.extend(_RULES_BY_WORD[word])
    if not candidates:
        return found
    word_set = set(words)
    for rule in dict.fromkeys(candidates):
        if rule.signal in found:
            continue
        if rule.chars and not any(char in normalised for char in rule.chars):
            continue
        if not all(not anchor.isdisjoint(word_set) for anchor in rule.anchors[1:]):
            continue
        if rule.pattern.search(normalised):
            found.add(rule.signal)
    return found


# Decoded text is screened again, and what it decodes to once more, no deeper.
_MAX_DEPTH = 2


def _screen(text: str, depth: int) -> set[str]:
    visible = text if text.isascii() else visible_text(text)
    folded = fold(visible[:MAX_SCREENED_CHARS])
    grown = len(visible) > MAX_SCREENED_CHARS or len(folded) > MAX_SCREENED_CHARS
    normalised = collapse(folded[:MAX_SCREENED_CHARS])
    words = _words(normalised)
    signals = _match(normalised, words)
    if grown:
        signals.add(OBFUSCATION)

    if not text.isascii():
        # Normalisation was needed when the raw text alone misses a technique.
        if signals and not signals <= _match(plain_form(text)):
            signals.add(OBFUSCATION)
        # A long run of invisible tag characters is hidden text, whatever it says.
        if TAG_RUN.search(text):
            signals.add(OBFUSCATION)

    # Variants, only for posts that look like they need them.
    if looks_spaced(normalised):
        despaced, trigger = despace(folded)
        extra = _match(despaced) - signals
        if extra or trigger:
            signals |= extra
            signals.add(OBFUSCATION)
    for variant in leet_variants(normalised):
        extra = _match(variant) - signals
        if extra:
            signals |= extra
            signals.add(OBFUSCATION)

    if depth >= _MAX_DEPTH:
        return signals

    for decoded in unscrambled(normalised, words):
        inner = _screen(decoded, depth + 1)
        if inner:
            signals |= inner
            signals.add(ENCODED_PAYLOAD)

    for kind, decoded_blob in decoded_blobs(visible[:MAX_SCREENED_CHARS]):
        inner = _screen(decoded_blob, depth + 1)
        if inner or kind in HIDDEN_TEXT_KINDS:
            signals |= inner
            signals.add(ENCODED_PAYLOAD)
    return signals


def screen_post(text: str) -> InjectionScreen:
    """Screen one post for prompt-injection techniques.

    Runs on every post of the stream: precompiled regexes over a normalised copy of the text,
    decoding only candidate blobs. Returns `CLEAN` for the vast majority of posts.
    """
    signals = _screen(text[:MAX_SCREENED_CHARS], 0)
    if len(text) > MAX_SCREENED_CHARS:
        signals.add(OBFUSCATION)  # posts are at most 10,000 characters: this one was not checked
    if not signals:
        return CLEAN
    return InjectionScreen(signals=tuple(sorted(signals)))
