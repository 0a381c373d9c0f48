"""Hidden text in a post: encoded blobs and scrambled words, decoded for the screen to read again.

Only blobs found by a regex are decoded (base64, hex, percent-encoding, HTML entities), at most
`MAX_BLOBS` per post, and only what decodes to readable text is kept. A post holding a trigger
word in rot13 ("vtaber") or reversed ("erongi") is unscrambled whole; the trigger words are
data, in `rule_tables/disguises.yaml`. Candidates are found on the NFKC text: case matters for
base64.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import urllib.parse
from collections.abc import Iterator
from itertools import islice

from moderation.classifier.injection.rules import DISGUISES

_MIN_BLOB = 16  # characters: 12 bytes of base64, 8 of hex
# Base64 (standard or URL-safe; contiguous hex is a subset of its alphabet).
_BASE64 = re.compile(rf"(?<![A-Za-z0-9+/=_\\-])[A-Za-z0-9+/_-]{{{_MIN_BLOB},}}={{0,2}}")
_OTHER_BLOB = re.compile(
    r"(?P<hexsep>(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :,-]){7,}[0-9A-Fa-f]{2}(?![0-9A-Fa-f]))"
    r"|(?P<hexesc>(?:(?:\\x|0x)[0-9A-Fa-f]{2}[ ,]?){6,})"
    r"|(?P<pct>(?:%[0-9A-Fa-f]{2}){6,})"
    r"|(?P<ent>(?:&#(?:x[0-9A-Fa-f]+|\d+);){6,})"
)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_NOT_HEX = re.compile(r"\\x|0x|[^0-9A-Fa-f]")
# Readable base64 or hex is hidden text on its own; percent-encoding and entities occur in
# ordinary links, so they count only when what they hide is an injection.
HIDDEN_TEXT_KINDS = frozenset({"b64", "hexsep", "hexesc"})

# rot13 and reversed forms of trigger words: nonsense in any language.
_ROT13_WORDS = frozenset(
    [codecs.encode(word, "rot13") for word in DISGUISES.rot13_triggers] + DISGUISES.rot13_markers
)
_REVERSED_WORDS = frozenset(word[::-1] for word in DISGUISES.reversed_triggers)

# Cheap hints that a post may hold a blob at all: scanning for the blobs themselves is slow.
_LONG_RUN = re.compile(rf"[A-Za-z0-9+/_-]{{{_MIN_BLOB}}}")
_PERCENT_HINT = re.compile(r"%[0-9A-Fa-f]{2}%")
_HEX_PAIRS_HINT = re.compile(
    r"[ ,:-][0-9A-Fa-f]{2}[ ,:-]{1,2}[0-9A-Fa-f]{2}[ ,:-]{1,2}[0-9A-Fa-f]{2}[ ,:-]"
)
MAX_BLOBS = 8  # decoded per post: a post of a thousand blobs must not cost a thousand decodes

_MIN_DECODED = 12


def _readable(data: bytes) -> str | None:
    """The bytes as text when they read as text (UTF-8, printable, mostly letters)."""
    if len(data) < _MIN_DECODED:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(1 for char in text if char.isprintable() or char in "\n\r\t")
    wordy = sum(1 for char in text if char.isalpha() or char == " ")
    if printable < 0.95 * len(text) or wordy < 0.6 * len(text):
        return None
    return text


def _decode_blob(kind: str, blob: str) -> str | None:
    """Decode one candidate blob; None when it is not encoded text."""
    try:
        if kind == "b64":
            stripped = blob.rstrip("=")
            if len(stripped) % 2 == 0 and all(char in _HEX_DIGITS for char in stripped):
                decoded = _readable(bytes.fromhex(stripped))
                if decoded is not None:
                    return decoded
            if len(stripped) % 4 == 1:
                stripped = stripped[:-1]
            padded = stripped + "=" * (-len(stripped) % 4)
            if "-" in padded or "_" in padded:
                return _readable(base64.urlsafe_b64decode(padded))
            return _readable(base64.b64decode(padded))
        if kind in ("hexsep", "hexesc"):
            return _readable(bytes.fromhex(_NOT_HEX.sub("", blob)))
        if kind == "pct":
            return _readable(urllib.parse.unquote_to_bytes(blob))
        if kind == "ent":
            return _readable(html.unescape(blob).encode("utf-8"))
    except (binascii.Error, ValueError):
        return None
    return None


def _blobs(raw: str) -> Iterator[tuple[str, str]]:
    """Candidate encoded blobs of the text, as (kind, blob)."""
    if _LONG_RUN.search(raw):
        for match in _BASE64.finditer(raw):
            yield "b64", match.group()
    if (
        "&#" in raw
        or "\\x" in raw
        or "0x" in raw
        or ("%" in raw and _PERCENT_HINT.search(raw))
        or _HEX_PAIRS_HINT.search(raw)
    ):
        for match in _OTHER_BLOB.finditer(raw):
            if match.lastgroup is not None:
                yield match.lastgroup, match.group()


def decoded_blobs(raw: str) -> Iterator[tuple[str, str]]:
    """The readable text hidden in the first `MAX_BLOBS` candidate blobs, as (kind, text)."""
    for kind, blob in islice(_blobs(raw), MAX_BLOBS):
        decoded = _decode_blob(kind, blob)
        if decoded is not None:
            yield kind, decoded


def unscrambled(normalised: str, words: list[str]) -> list[str]:
    """The text in rot13 and reversed, each only when its words hold a scrambled trigger."""
    texts = []
    if not _ROT13_WORDS.isdisjoint(words):
        texts.append(codecs.encode(normalised, "rot13"))
    if not _REVERSED_WORDS.isdisjoint(words):
        texts.append(normalised[::-1])
    return texts
