"""The text the injection rules read: a post with its disguises undone.

`normalise` gives the form every rule matches: NFKC, invisible characters dropped (Unicode tag
characters decoded), homoglyphs mapped to Latin in words that are otherwise Latin, casefolded,
horizontal whitespace collapsed (newlines are kept: role labels at the start of a line matter).
`despace` and `leet_variants` give the variants the screen also tries on posts that look spaced
out ("i g n o r e") or written in leetspeak ("1gn0r3"). The tables (homoglyphs, leetspeak, the
trigger stems of spaced-out text) are data, in `rule_tables/disguises.yaml`.

All of it is bounded and linear in the text's length: the screen runs on every post.
"""

from __future__ import annotations

import re
import unicodedata

from moderation.classifier.injection.rules import DISGUISES


def _invisible_class() -> str:
    """A regex character class of format (Cf) characters and other invisibles."""
    invisible = [cp for cp in range(0x10000) if unicodedata.category(chr(cp)) == "Cf"]
    # Invisible or blank characters that are not Cf: combining grapheme joiner, Hangul fillers,
    # Mongolian free variation selectors, variation selectors, musical format controls.
    invisible += [0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0, *range(0x180B, 0x1810)]
    invisible += [*range(0xFE00, 0xFE10), *range(0x1D173, 0x1D17B), *range(0xE0100, 0xE01F0)]
    invisible += [0xE0000, 0xE0001, 0xE007F]
    ranges: list[list[int]] = []
    for cp in sorted(set(invisible)):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(
        re.escape(chr(lo)) + ("-" + re.escape(chr(hi)) if hi > lo else "") for lo, hi in ranges
    )


# A regex, not `str.translate`: translating through a large table costs tens of microseconds
# per non-ASCII post, while scanning for a character class costs almost nothing.
_INVISIBLE = re.compile(f"[{_invisible_class()}]")
# Tag characters mirror ASCII and render as nothing: "ASCII smuggling" hides instructions that
# a model still reads, so they are decoded instead of dropped.
_TAG = re.compile("[\U000e0020-\U000e007e]+")
# A long run of them is hidden text, whatever it says.
TAG_RUN = re.compile("[\U000e0020-\U000e007e]{8,}")


def _untag(match: re.Match[str]) -> str:
    return "".join(chr(ord(char) - 0xE0000) for char in match.group())


# NFKC can turn one character into up to 18 (U+FDFA) and casefolding one into 3, so the text the
# rules read is capped: the work per post stays linear in a bounded length. Text cut by the cap
# was built to grow under normalisation, which is itself obfuscation.
MAX_SCREENED_CHARS = 20_000
# Text that needs NFKC is normalised this many characters at a time, and no further than the
# cap: normalising all of 10,000 U+FDFA would cost ~65 ms and 180,000 characters.
_NFKC_CHUNK = 1_000
# Nothing composes with the character before an ASCII character or whitespace: a safe cut.
_SAFE_CUT = re.compile(r"[\x00-\x7f\s][^\x00-\x7f\s]*\Z")


def _nfkc(text: str) -> str:
    """NFKC of the text, or of as much of it as yields `MAX_SCREENED_CHARS` characters."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    parts: list[str] = []
    produced = 0
    start = 0
    while start < len(text) and produced <= MAX_SCREENED_CHARS:
        end = start + _NFKC_CHUNK
        if end < len(text):
            # Cut before the last safe character of the chunk (when it has one); a long run with
            # no ASCII at all is cut where it is, at worst leaving one pair uncomposed.
            cut = _SAFE_CUT.search(text, start + 1, end)
            if cut is not None:
                end = cut.start()
        part = unicodedata.normalize("NFKC", text[start:end])
        parts.append(part)
        produced += len(part)
        start = end
    return "".join(parts)


def visible_text(text: str) -> str:
    """NFKC (bounded, see `_nfkc`), tag characters decoded, other invisible characters dropped."""
    text = _nfkc(text)
    if _TAG.search(text):
        text = _TAG.sub(_untag, text)
    if _INVISIBLE.search(text):
        text = _INVISIBLE.sub("", text)
    return text


# Typographic quotes are not obfuscation: both the plain and the normalised text map them.
_QUOTES = (("\u2018", "'"), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"'))

# Lower-case look-alikes of Latin letters (inputs are casefolded first), mapped only in words made
# of Latin letters and these characters, so real Russian or Greek words are left alone.
_HOMOGLYPHS = DISGUISES.homoglyph_map()
_HOMOGLYPH_TABLE = str.maketrans(_HOMOGLYPHS)
_HOMOGLYPH_CHARS = "".join(_HOMOGLYPHS)
# Found with a one-character class and mapped word by word: a `\w*[...]\w*` pattern would
# backtrack over every position of a long word (quadratic: seconds for one 10,000-letter word).
_HOMOGLYPH_CHAR = re.compile(f"[{_HOMOGLYPH_CHARS}]")
WORD_RUN = re.compile(r"\w+")
_LATIN_OR_HOMOGLYPH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_" + _HOMOGLYPH_CHARS)


_LEET = str.maketrans(DISGUISES.leet)
# Led by the digit class so the regex engine skips quickly to the few digits of a post.
_LEET_CANDIDATE = re.compile(r"[0134578@$](?:(?<=[a-z].)(?=[a-z])|(?<![\w@$].)(?=[a-z]{3}))")

# Runs of single letters split by spaces, punctuation or emoji: "i g n o r e", "i.g.n.o.r.e",
# "i-g-n-o-r-e", "i🙂g🙂n🙂o🙂r🙂e" (symbol and pictograph blocks; variation selectors and
# joiners are already dropped as invisible). One character class, so runs stay linear.
_SEPARATOR = " .\\-_*|/·•+~\u2190-\u21ff\u2300-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff"
_SPACED_RUN = re.compile(rf"(?<!\w)(?:[a-z][{_SEPARATOR}]{{1,3}}){{3,}}[a-z](?!\w)")
_SPACED_HINT = re.compile(rf"[{_SEPARATOR}](?:[a-z][{_SEPARATOR}]{{1,3}}){{3}}[a-z]")
_SPACED_SEP = re.compile(f"[{_SEPARATOR}]+")
_SPACED_TRIGGER = re.compile("|".join(re.escape(stem) for stem in DISGUISES.spaced_triggers))


def collapse(folded: str) -> str:
    """Collapse whitespace within lines and drop blank lines; line breaks are kept."""
    if "\n" not in folded and "\r" not in folded:
        return " ".join(folded.split())
    lines = (" ".join(line.split()) for line in folded.splitlines())
    return "\n".join(line for line in lines if line)


def _fold_case(text: str) -> str:
    folded = text.casefold()
    if not folded.isascii():
        # Typographic quotes are not obfuscation: "let’s" is "let's" in both forms.
        for curly, straight in _QUOTES:
            if curly in folded:
                folded = folded.replace(curly, straight)
    return folded


def plain_form(text: str) -> str:
    """Casefolded and collapsed, but no Unicode normalisation: what a post says undisguised."""
    return collapse(_fold_case(text))


def _map_homoglyph_word(match: re.Match[str]) -> str:
    word = match.group()
    # A word of Latin letters and look-alikes only: the look-alikes are disguise.
    if _LATIN_OR_HOMOGLYPH.issuperset(word) and _HOMOGLYPH_CHAR.search(word):
        return word.translate(_HOMOGLYPH_TABLE)
    return word


def fold(visible: str) -> str:
    """Casefolded, homoglyphs mapped (input: `visible_text`); whitespace left as it is."""
    if visible.isascii():
        # The common case: nothing to fold but case.
        return visible.casefold()
    folded = _fold_case(visible)
    if _HOMOGLYPH_CHAR.search(folded):
        folded = WORD_RUN.sub(_map_homoglyph_word, folded)
    return folded


def normalise(text: str) -> str:
    """The text the patterns match: NFKC, invisibles dropped, homoglyphs mapped, casefolded,
    whitespace collapsed within lines."""
    return collapse(fold(text if text.isascii() else visible_text(text)))


def looks_spaced(normalised: str) -> bool:
    """True when the normalised text has a run of letters split by separators."""
    return _SPACED_HINT.search(" " + normalised) is not None


def despace(folded: str) -> tuple[str, bool]:
    """Join spaced-out letters; True when a joined run spells a trigger word.

    Works on the folded text before whitespace is collapsed: the wider gaps between spaced-out
    words are what separates them.
    """
    trigger = False

    def join(match: re.Match[str]) -> str:
        nonlocal trigger
        run = match.group()
        gaps = [len(gap) for gap in _SPACED_SEP.findall(run)]
        narrow = min(gaps)
        # Wider gaps than the narrowest separate words: "i g n o r e   a l l".
        words = [
            "".join(_SPACED_SEP.split(part))
            for part in re.split(rf"[{_SEPARATOR}]{{{narrow + 1},}}", run)
        ]
        joined = " ".join(words)
        if _SPACED_TRIGGER.search(joined.replace(" ", "")):
            trigger = True
        return joined

    return collapse(_SPACED_RUN.sub(join, folded)), trigger


def leet_variants(normalised: str) -> set[str]:
    """The normalised text read as leetspeak (with "1" as "i", and as "l"); none when it has no
    digit or symbol inside or before a word."""
    if not _LEET_CANDIDATE.search(normalised):
        return set()
    return {normalised.translate(_LEET), normalised.replace("1", "l").translate(_LEET)}
