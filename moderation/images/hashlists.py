"""Hash lists of known images, one category each, and the matcher that checks an image.

A list is a file `<hashlist_dir>/<category>/<name>.csv`: the directory names the category
(`moderation.taxonomy.Category`, never `safe`), the file name (without `.csv`) names the list,
and the verdict of a match names it too. The file is CSV with the header `kind,hash,note`:

    kind,hash,note
    pdq,f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22,from the 2026-12 export
    md5,d41d8cd98f00b204e9800998ecf8427e,
    sha256,e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855,

`kind` is `pdq` (64 hex digits), `md5` (32) or `sha256` (64); hex in either case; `note` is
free text, may be empty. Why not ThreatExchange's PDQ files: they hold PDQ only (one hash, and
sometimes a quality, per line), while a platform's lists mix exact hashes of known files with
perceptual ones; one CSV with a `kind` column holds all three, and a spreadsheet or Python's
`csv` writes it. Importing a ThreatExchange PDQ export is a one-line transformation.

Exact hashes match first (the original upload's SHA-256 and MD5, and the stored bytes'
SHA-256), then PDQ within `pdq_threshold` bits when the image's PDQ quality reaches
`pdq_min_quality` (below it PDQ's authors call the hash unreliable). A match says which list,
which category, which kind of hash and how far: what to do with it is the caller's decision.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moderation.events import ImageRef
from moderation.images.hashes import PackedPdq, pack_pdq, pdq_distances
from moderation.taxonomy import Category

if TYPE_CHECKING:
    from moderation.settings import ImageSettings

HEADER = ("kind", "hash", "note")
LIST_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_NOTE_CHARS = 500


class HashKind(StrEnum):
    SHA256 = "sha256"
    MD5 = "md5"
    PDQ = "pdq"


_HEX_DIGITS = {HashKind.SHA256: 64, HashKind.MD5: 32, HashKind.PDQ: 64}
_HEX = re.compile(r"^[0-9a-f]+$")


class HashListError(ValueError):
    """A hash list that cannot be used, and where (file and line) it went wrong."""


def normalise_hash(kind: HashKind, value: str) -> str:
    """`value` as lower-case hex, or `HashListError` naming what is wrong with it."""
    hexed = value.strip().lower()
    digits = _HEX_DIGITS[kind]
    if len(hexed) != digits or not _HEX.match(hexed):
        raise HashListError(f"{value!r} is not a {kind} hash ({digits} hex digits)")
    return hexed


@dataclass(frozen=True)
class HashEntry:
    kind: HashKind
    hash: str
    note: str = ""


@dataclass(frozen=True)
class HashList:
    """A named list of known-bad hashes of one category (validated when built)."""

    name: str
    category: Category
    entries: tuple[HashEntry, ...] = ()

    def __post_init__(self) -> None:
        if not LIST_NAME_PATTERN.match(self.name):
            raise HashListError(
                f"{self.name!r} is not a list name (letters, digits, _ . -; at most 64)"
            )
        if self.category is Category.SAFE:
            raise HashListError(f"list {self.name!r}: a hash list cannot be of category `safe`")
        normalised = []
        for entry in self.entries:
            if len(entry.note) > MAX_NOTE_CHARS:
                raise HashListError(f"list {self.name!r}: a note over {MAX_NOTE_CHARS} characters")
            normalised.append(
                HashEntry(entry.kind, normalise_hash(entry.kind, entry.hash), entry.note)
            )
        object.__setattr__(self, "entries", tuple(normalised))

    @classmethod
    def of(
        cls,
        name: str,
        category: Category,
        *,
        pdq: Iterable[str] = (),
        md5: Iterable[str] = (),
        sha256: Iterable[str] = (),
    ) -> HashList:
        """A list built in memory from plain hashes (no notes)."""
        entries = [HashEntry(HashKind.PDQ, value) for value in pdq]
        entries += [HashEntry(HashKind.MD5, value) for value in md5]
        entries += [HashEntry(HashKind.SHA256, value) for value in sha256]
        return cls(name=name, category=category, entries=tuple(entries))

    def hashes(self, kind: HashKind) -> list[str]:
        return [entry.hash for entry in self.entries if entry.kind is kind]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        for entry in self.entries:
            writer.writerow((entry.kind.value, entry.hash, entry.note))
        return out.getvalue()


def parse_hashlist(text: str, *, name: str, category: Category, source: str = "") -> HashList:
    """A list from its CSV text; errors name `source` (the file) and the line."""
    where = source or f"list {name!r}"
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(cell.strip().lower() for cell in header) != HEADER:
        raise HashListError(f"{where}: the first line must be the header `kind,hash,note`")
    entries = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) not in (2, 3):
            raise HashListError(f"{where} line {line}: {len(row)} fields, expected kind,hash,note")
        kind_text = row[0].strip().lower()
        try:
            kind = HashKind(kind_text)
        except ValueError:
            raise HashListError(
                f"{where} line {line}: kind {row[0]!r} is not one of pdq, md5, sha256"
            ) from None
        try:
            value = normalise_hash(kind, row[1])
        except HashListError as error:
            raise HashListError(f"{where} line {line}: {error}") from None
        entries.append(HashEntry(kind, value, row[2].strip() if len(row) == 3 else ""))
    try:
        return HashList(name=name, category=category, entries=tuple(entries))
    except HashListError as error:
        raise HashListError(f"{where}: {error}") from None


def _category_of(directory: Path) -> Category:
    try:
        category = Category(directory.name)
    except ValueError:
        allowed = ", ".join(c.value for c in Category if c is not Category.SAFE)
        raise HashListError(f"{directory}: not a category directory (one of: {allowed})") from None
    return category


def read_hashlist(path: Path) -> HashList:
    """The list in `<dir>/<category>/<name>.csv`."""
    category = _category_of(path.parent)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise HashListError(f"{path}: cannot be read: {error}") from error
    return parse_hashlist(text, name=path.stem, category=category, source=str(path))


def load_hashlists(directory: Path) -> list[HashList]:
    """Every list under `directory` (`<category>/<name>.csv`), sorted by category and name.

    A missing directory is an error (a mistyped path must not mean "no lists"); an existing,
    empty one holds no lists. Files other than `*.csv` (a README) are ignored.
    """
    if not directory.is_dir():
        raise HashListError(f"{directory}: the hash list directory does not exist")
    lists: list[HashList] = []
    seen: dict[str, Path] = {}
    for child in sorted(directory.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        _category_of(child)
        for path in sorted(child.glob("*.csv")):
            hashlist = read_hashlist(path)
            if hashlist.name in seen:
                raise HashListError(
                    f"{path}: list name {hashlist.name!r} is also {seen[hashlist.name]} "
                    "(a verdict names its list: names must be unique)"
                )
            seen[hashlist.name] = path
            lists.append(hashlist)
    return lists


def write_hashlist(directory: Path, hashlist: HashList) -> Path:
    """Write (or replace) `hashlist` under `directory`, atomically (temp file, rename)."""
    target_dir = directory / hashlist.category.value
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{hashlist.name}.csv"
    fd, temp = tempfile.mkstemp(dir=target_dir, prefix=".tmp-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(hashlist.to_csv())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class HashMatch:
    """An image found on a list."""

    list_name: str
    category: Category
    kind: HashKind
    distance: int  # bits (PDQ); 0 for exact hashes
    hash: str  # the list's hash that matched
    note: str = ""


class HashMatcher:
    """Matches images against hash lists (immutable once built; swap it to reload).

    PDQ hashes of every list sit in one (n, 4) uint64 array: one XOR and popcount pass over it
    per image.
    """

    def __init__(
        self, lists: Iterable[HashList], *, pdq_threshold: int = 31, min_quality: int = 50
    ) -> None:
        self.lists = tuple(lists)
        self.pdq_threshold = pdq_threshold
        self.min_quality = min_quality
        self._exact: dict[HashKind, dict[str, tuple[HashList, HashEntry]]] = {
            HashKind.SHA256: {},
            HashKind.MD5: {},
        }
        owners: list[tuple[HashList, HashEntry]] = []
        for hashlist in self.lists:
            for entry in hashlist.entries:
                if entry.kind is HashKind.PDQ:
                    owners.append((hashlist, entry))
                else:
                    # The first list to name a hash wins (lists are in a stable order).
                    self._exact[entry.kind].setdefault(entry.hash, (hashlist, entry))
        self._pdq_owners = owners
        self._pdq: PackedPdq = pack_pdq([entry.hash for _, entry in owners])

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> HashMatcher:
        """The lists under `settings.hashlist_dir`, matched with the settings' PDQ limits."""
        return cls(
            load_hashlists(settings.hashlist_dir),
            pdq_threshold=settings.pdq_threshold,
            min_quality=settings.pdq_min_quality,
        )

    @property
    def pdq_count(self) -> int:
        return len(self._pdq_owners)

    def match(self, image: ImageRef) -> HashMatch | None:
        """The best match of `image`: an exact one first, else the nearest PDQ; None if none."""
        exact = self._match_exact(image)
        if exact is not None:
            return exact
        return self._match_pdq(image.pdq, image.pdq_quality)

    def _match_exact(self, image: ImageRef) -> HashMatch | None:
        candidates = (
            (HashKind.SHA256, image.original_sha256),
            (HashKind.SHA256, image.sha256),
            (HashKind.MD5, image.original_md5),
        )
        for kind, value in candidates:
            found = self._exact[kind].get(value)
            if found is not None:
                hashlist, entry = found
                return HashMatch(hashlist.name, hashlist.category, kind, 0, entry.hash, entry.note)
        return None

    def _match_pdq(self, pdq: str, quality: int) -> HashMatch | None:
        if quality < self.min_quality or not self._pdq_owners:
            return None
        distances = pdq_distances(pdq, self._pdq)
        nearest = int(np.argmin(distances))
        distance = int(distances[nearest])
        if distance > self.pdq_threshold:
            return None
        hashlist, entry = self._pdq_owners[nearest]
        return HashMatch(
            hashlist.name, hashlist.category, HashKind.PDQ, distance, entry.hash, entry.note
        )
