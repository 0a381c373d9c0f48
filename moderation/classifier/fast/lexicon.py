"""The lexicon signals under the fast model's always-review categories.

Both values sit above the review floor and below the remove threshold, so on their own they can
only send a post to a human: `sexual_minors` has no training data by design (see
`data/README.md`) and its column is `sexual_minors_signal` (minor-age terms near sexual terms);
the `self_harm` column is the larger of the learned probability and `self_harm_signal`
(first-person statements of intent). The dataset build uses `sexual_minors_signal` too, to drop
every text it fires on, so this module imports nothing of the project's.
"""

from __future__ import annotations

import bisect
import re

# --- sexual_minors: a lexicon signal, never a learned score ---------------------------------------

_MINOR_TERMS = re.compile(
    r"\b(child|children|kids?|minors?|under-?age|pre-?teens?|teens?|teenagers?|schoolgirls?|"
    r"schoolboys?|juveniles?|toddlers?|infants?|bab(?:y|ies)|little (?:girl|boy)s?|"
    r"young (?:girl|boy)s?|(?:1[0-7]|[1-9])[ -]?(?:yo|y/o|years?[ -]old))\b",
    re.IGNORECASE,
)
_SEXUAL_TERMS = re.compile(
    r"\b(sex|sexual\w*|sexy|porn\w*|nudes?|naked|nudity|erotic\w*|explicit|lewd|fondl\w*|"
    r"genital\w*|penis|vagina|orgasm\w*|masturbat\w*|intercourse|molest\w*|groom(?:ing|ed|s)?|"
    r"seduc\w*|aroused|horny)\b",
    re.IGNORECASE,
)
# Every term of the two patterns contains one of these stems (a cheap pre-check).
_MINOR_STEMS = (
    "child", "kid", "minor", "age", "teen", "school", "juvenile", "toddler", "infant", "bab",
    "girl", "boy", "yo", "y/o", "year",
)  # fmt: skip
_SEXUAL_STEMS = (
    "sex", "porn", "nud", "naked", "erotic", "explicit", "lewd", "fondl", "genital", "penis",
    "vagina", "orgasm", "masturbat", "intercourse", "molest", "groom", "seduc", "aroused", "horny",
)  # fmt: skip
_WORD = re.compile(r"\w+")
# Terms this many words apart or closer count as "near".
NEAR_WORDS = 8
# Both levels pass the default review floor (0.30) and stay under every remove threshold (0.85):
# the lexicon alone can route a post to a human, never remove it. "Sex education for teens"
# reaches review too; that is the price of a conservative signal.
SIGNAL_NEAR = 0.7
SIGNAL_SAME_POST = 0.4


def _has_stem(lowered: str) -> bool:
    # Plain loops over substring checks: the cheapest pre-check in CPython (no generator).
    for stem in _SEXUAL_STEMS:
        if stem in lowered:
            break
    else:
        return False
    for stem in _MINOR_STEMS:
        if stem in lowered:
            return True
    return False


def sexual_minors_signal(text: str) -> float:
    """A conservative review trigger for sexual content involving minors, in [0, 1].

    Returns `SIGNAL_NEAR` when a minor-age term and a sexual term occur within `NEAR_WORDS`
    words of each other, `SIGNAL_SAME_POST` when both occur farther apart, and 0 otherwise.
    It is a lexicon, not a calibrated probability; the always-review rule acts on it.
    """
    if not _has_stem(text.lower()):
        return 0.0
    minors = [m.start() for m in _MINOR_TERMS.finditer(text)]
    if not minors:
        return 0.0
    sexual = [m.start() for m in _SEXUAL_TERMS.finditer(text)]
    if not sexual:
        return 0.0
    # Distances in words, not characters: the index of the word each match starts in.
    word_starts = [m.start() for m in _WORD.finditer(text)]
    minor_words = [bisect.bisect_left(word_starts, offset) for offset in minors]
    sexual_words = [bisect.bisect_left(word_starts, offset) for offset in sexual]
    near = any(_has_neighbour(sexual_words, word) for word in minor_words)
    return SIGNAL_NEAR if near else SIGNAL_SAME_POST


def _has_neighbour(sorted_words: list[int], word: int) -> bool:
    """Whether a word index within `NEAR_WORDS` of `word` is in the sorted list.

    A bisection, not a scan of every pair: a post of thousands of terms stays linear-ish.
    """
    at = bisect.bisect_left(sorted_words, word - NEAR_WORDS)
    return at < len(sorted_words) and sorted_words[at] <= word + NEAR_WORDS


# --- self_harm intent: a lexicon safety net under the learned score ------------------------------

# First-person statements of intent of the kind suicide-prevention guidance lists as warning
# signs. The training data has only third-person questions ("How can I ...?") for self_harm, so
# the learned score misses them; policy says self-harm intent always reaches a human. Phrases
# that are common in harmless contexts ("I hurt myself playing football") are left out.
_SELF_HARM_INTENT = re.compile(
    r"\b(?:kill(?:ing)? myself|end(?:ing)? (?:it all|my (?:own )?life)|take my (?:own )?life|"
    r"(?:want|wanted|wanna) to die|wanna die|wish (?:i|i'?d) (?:was|were|had) (?:dead|died)|"
    r"better off dead|(?:don'?t|do not) want to (?:be here|live|wake up)|no reason to live|"
    r"harm(?:ing)? myself|suicidal|commit(?:ting)? suicide)\b",
    re.IGNORECASE,
)
_SELF_HARM_STEMS = (
    "myself",
    "life",
    "die",
    "dead",
    "want to",
    "reason to live",
    "suicid",
    "it all",
)
# Above the review floor (0.30), below the remove threshold (0.85): review, never removal.
SELF_HARM_SIGNAL = 0.5


def self_harm_signal(text: str) -> float:
    """`SELF_HARM_SIGNAL` when a post states self-harm intent in the first person, else 0.

    A lexicon, not a calibrated probability: the model's `self_harm` column is the larger of
    its learned probability and this signal, so the always-review rule sees such posts.
    """
    lowered = text.lower()
    # A cheap pre-check, as for sexual_minors_signal: every phrase contains one of these.
    for stem in _SELF_HARM_STEMS:
        if stem in lowered:
            break
    else:
        return 0.0
    return SELF_HARM_SIGNAL if _SELF_HARM_INTENT.search(lowered) else 0.0
