"""Hash list files: the format, loading, writing, and errors that say where and what."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderation.images.hashlists import (
    HashEntry,
    HashKind,
    HashList,
    HashListError,
    HashMatcher,
    load_hashlists,
    parse_hashlist,
    read_hashlist,
    write_hashlist,
)
from moderation.settings import ImageSettings
from moderation.taxonomy import Category

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_directory_of_lists_loads_with_categories_from_directories(tmp_path: Path) -> None:
    write(
        tmp_path / "violence" / "gore-export.csv",
        f"kind,hash,note\npdq,{PDQ.upper()},from an export\n\nmd5,{MD5},\n",
    )
    write(tmp_path / "spam" / "scam-banners.csv", f"kind,hash,note\nsha256,{SHA}\n")
    write(tmp_path / "README.md", "not a list")
    write(tmp_path / "spam" / "notes.txt", "not a list either")
    lists = load_hashlists(tmp_path)
    assert [(hl.name, hl.category) for hl in lists] == [
        ("scam-banners", Category.SPAM),
        ("gore-export", Category.VIOLENCE),
    ]
    gore = lists[1]
    assert gore.hashes(HashKind.PDQ) == [PDQ]  # normalised to lower case
    assert gore.hashes(HashKind.MD5) == [MD5]
    assert gore.entries[0].note == "from an export"


def test_a_written_list_reads_back_the_same(tmp_path: Path) -> None:
    original = HashList(
        name="removed-by-humans",
        category=Category.HATE,
        entries=(HashEntry(HashKind.PDQ, PDQ, 'note, with "quotes"'), HashEntry(HashKind.MD5, MD5)),
    )
    path = write_hashlist(tmp_path, original)
    assert path == tmp_path / "hate" / "removed-by-humans.csv"
    assert read_hashlist(path) == original
    assert load_hashlists(tmp_path) == [original]
    assert [p.name for p in (tmp_path / "hate").iterdir()] == ["removed-by-humans.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hash,kind\n", "the first line must be the header `kind,hash,note`"),
        ("", "the first line must be the header"),
        (f"kind,hash,note\npdq,{PDQ}\nphash,{PDQ}\n", "line 3: kind 'phash' is not one of"),
        ("kind,hash,note\nmd5,abc\n", "line 2: 'abc' is not a md5 hash (32 hex digits)"),
        (f"kind,hash,note\npdq,{PDQ[:-1]}x\n", "line 2: "),
        (f"kind,hash,note\nsha256,{MD5}\n", "is not a sha256 hash (64 hex digits)"),
        ("kind,hash,note\npdq\n", "line 2: 1 fields, expected kind,hash,note"),
    ],
)
def test_a_bad_file_names_the_file_the_line_and_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path / "sexual" / "bad.csv", text)
    with pytest.raises(HashListError) as caught:
        load_hashlists(tmp_path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_a_directory_that_is_not_a_category_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "nudity" / "list.csv", "kind,hash,note\n")
    with pytest.raises(HashListError, match=r"nudity: not a category directory \(one of: spam"):
        load_hashlists(tmp_path)


def test_the_safe_category_cannot_hold_a_list(tmp_path: Path) -> None:
    write(tmp_path / "safe" / "list.csv", "kind,hash,note\n")
    with pytest.raises(HashListError, match="cannot be of category `safe`"):
        load_hashlists(tmp_path)


def test_list_names_are_unique_across_categories(tmp_path: Path) -> None:
    write(tmp_path / "spam" / "shared.csv", "kind,hash,note\n")
    write(tmp_path / "hate" / "shared.csv", "kind,hash,note\n")
    with pytest.raises(HashListError, match="names must be unique"):
        load_hashlists(tmp_path)


def test_a_missing_directory_is_an_error_not_an_empty_set(tmp_path: Path) -> None:
    with pytest.raises(HashListError, match="does not exist"):
        load_hashlists(tmp_path / "hashlsts")
    assert load_hashlists(tmp_path) == []


def test_lists_built_in_memory_are_validated() -> None:
    with pytest.raises(HashListError, match="is not a list name"):
        HashList.of("../escape", Category.SPAM)
    with pytest.raises(HashListError, match="is not a pdq hash"):
        HashList.of("ok", Category.SPAM, pdq=["00"])
    built = HashList.of("ok", Category.SPAM, pdq=[PDQ], md5=[MD5.upper()], sha256=[SHA])
    assert built.hashes(HashKind.MD5) == [MD5]
    assert parse_hashlist(built.to_csv(), name="ok", category=Category.SPAM) == built


def test_the_shipped_hash_list_directory_loads() -> None:
    directory = ImageSettings().hashlist_dir
    assert directory.is_dir()
    load_hashlists(directory)


def test_a_matcher_loads_the_settings_directory(tmp_path: Path) -> None:
    write(tmp_path / "illicit" / "partner.csv", f"kind,hash,note\npdq,{PDQ}\nmd5,{MD5}\n")
    matcher = HashMatcher.from_settings(
        ImageSettings(hashlist_dir=tmp_path, pdq_threshold=20, pdq_min_quality=60)
    )
    assert (matcher.pdq_count, matcher.pdq_threshold, matcher.min_quality) == (1, 20, 60)
    assert [hl.name for hl in matcher.lists] == ["partner"]
