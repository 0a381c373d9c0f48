"""Artifacts the model registry names: confined to their store and checked against a digest.

A `model_versions` row is data: whoever can write it chooses `artifact_uri`. Before a worker or
the nightly reads what a row names, `confine` refuses a path that does not resolve (symlinks
followed) to a directory inside the configured store, and `check_digest` refuses files whose
SHA-256 (`artifact_digest`, over every file of the directory in a canonical order) is not the one
registered with the row. The files are read once into memory and parsed from those bytes, so what
was checked is what is loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

RefusalReason = Literal["outside", "digest", "format"]

# One artifact is read into memory to be checked and parsed: the fast model is ~10 MB, a LoRA
# adapter of a small model a few MB. Anything far larger is not an artifact of ours.
MAX_ARTIFACT_BYTES = 1 << 30
# Versions the canonical form, so a change to it cannot match an older digest by accident.
_DIGEST_DOMAIN = b"moderation-artifact-sha256-v1\n"


class ArtifactRefused(ValueError):
    """An artifact that must not be loaded: outside its store, of the wrong digest or format."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


def confine(uri: str, store: Path) -> Path:
    """The directory `uri` names, resolved, when it lies inside `store`.

    `uri` is a path or a `file://` URI, absolute or relative to `store`. The path is refused
    when it has a `..` component, another scheme, or resolves (symlinks followed) outside
    `store` or to `store` itself. A path inside `store` that does not exist is returned: reading
    it fails as any missing file does.

    Raises:
        ArtifactRefused: with reason `outside`.
    """
    raw = uri.removeprefix("file://")
    if not raw or "\x00" in raw or "://" in raw:
        raise ArtifactRefused("outside", f"artifact uri {uri!r} is not a path in the store")
    path = Path(raw)
    if ".." in path.parts:
        raise ArtifactRefused("outside", f"artifact uri {uri!r} has a '..' component")
    root = store.resolve()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ArtifactRefused("outside", f"artifact uri {uri!r} is outside the store {root}")
    return resolved


def read_artifact(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, by its relative POSIX path.

    Symbolic links and special files are refused (they could name what lies outside the store);
    files are opened without following links, so a link swapped in meanwhile is refused too.

    Raises:
        ArtifactRefused: reason `outside`, for a link or a special file.
        OSError: when `directory` or a file cannot be read.
        ValueError: when the files exceed `MAX_ARTIFACT_BYTES`.
    """
    files: dict[str, bytes] = {}
    total = 0
    pending = [(directory, "")]
    if directory.is_symlink() or not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not an artifact directory")
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_symlink():
                    raise ArtifactRefused("outside", f"{directory}: {name} is a symbolic link")
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), name + "/"))
                    continue
                content = _read_regular(Path(entry.path), name, directory)
                total += len(content)
                if total > MAX_ARTIFACT_BYTES:
                    raise ValueError(f"{directory} holds more than {MAX_ARTIFACT_BYTES} bytes")
                files[name] = content
    return files


def _read_regular(path: Path, name: str, directory: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if path.is_symlink():
            raise ArtifactRefused("outside", f"{directory}: {name} is a symbolic link") from error
        raise
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ArtifactRefused("outside", f"{directory}: {name} is not a regular file")
        return handle.read(MAX_ARTIFACT_BYTES + 1)


def digest_of(files: Mapping[str, bytes]) -> str:
    """SHA-256 over `(relative path, SHA-256 of the content)` of every file, sorted by path."""
    digest = hashlib.sha256(_DIGEST_DOMAIN)
    for name in sorted(files):
        # A path never holds NUL and the inner digest has a fixed length: the form is unambiguous.
        digest.update(name.encode() + b"\x00" + hashlib.sha256(files[name]).hexdigest().encode())
        digest.update(b"\n")
    return digest.hexdigest()


def artifact_digest(directory: Path) -> str:
    """The digest the registry stores for the artifact in `directory` (see `digest_of`)."""
    return digest_of(read_artifact(directory))


def check_digest(files: Mapping[str, bytes], expected: str | None, *, where: str) -> None:
    """Refuse `files` unless their digest is `expected`.

    Raises:
        ArtifactRefused: reason `digest`, also when no digest was registered.
    """
    if not expected:
        raise ArtifactRefused("digest", f"{where}: the registry holds no digest for it")
    actual = digest_of(files)
    if not hmac.compare_digest(actual, expected.strip().lower()):
        raise ArtifactRefused(
            "digest", f"{where}: sha256 {actual} is not the registered {expected}"
        )


def load_checked(uri: str, store: Path, expected: str | None) -> tuple[Path, dict[str, bytes]]:
    """The files of the artifact `uri` names, confined to `store` and checked against `expected`.

    Raises:
        ArtifactRefused: outside the store, a link inside it, or a digest that does not match.
        OSError: when it cannot be read.
    """
    directory = confine(uri, store)
    files = read_artifact(directory)
    check_digest(files, expected, where=str(directory))
    return directory, files
