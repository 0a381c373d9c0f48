"""Model files read straight from an installed, pinned package, each checked against its sha256.

Stage 1 reads two packages' files this way (`embedding.py`, `offensive.py`): nothing is
downloaded at run time, the package's own import (with its side effects) is never run, and a
file that is not the pinned one is refused before it is parsed or unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path


def pinned_definition(name: str, digests: Mapping[str, str]) -> str:
    """`name;file=sha256,...`: what a model fingerprint records of the pinned files."""
    pinned = ",".join(f"{file}={digest}" for file, digest in sorted(digests.items()))
    return f"{name};{pinned}"


def package_dir(module: str, requirement: str, error: type[Exception]) -> Path:
    """The installed directory of `module`; `error` names `requirement` when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{module} is not installed: it needs {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))


def checked_digest(
    path: Path, digests: Mapping[str, str], requirement: str, error: type[Exception]
) -> str:
    """The sha256 of `path`, which must be the one pinned for its name; else `error`."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as problem:
        raise error(f"cannot read {path}: {problem}") from None
    if digest != digests[path.name]:
        raise error(f"{path} has sha256 {digest}, not the one pinned for {requirement}")
    return digest
