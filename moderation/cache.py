"""The on-disk artifact cache: entries built once, atomically, and the console that reports it.

Runtime code (the fast model, the injection detector, the dataset they are trained on) and the
dev tooling (`devtools/stack`) both fill cache entries on first use; this module is what they
share, so that the runtime never imports the dev tooling.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from rich.console import Console

# Progress goes to stderr: stdout stays free for a command's own output (`--json`).
console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Print how long a setup step took, or that it failed."""
    started = time.monotonic()
    console.print(f"[dim]…[/dim] {label}")
    try:
        yield
    except BaseException:
        console.print(f"[red]✗[/red] {label} [dim]({time.monotonic() - started:.1f}s)[/dim]")
        raise
    console.print(f"[green]✓[/green] {label} [dim]({time.monotonic() - started:.1f}s)[/dim]")


def cache_entry(root: Path, key: str, build: Callable[[Path], None]) -> Path:
    """Return the cache entry `root/key`, building it first if it is absent.

    `build` fills a temporary sibling directory that is renamed into place only when it
    returns, so an interrupted download or build never leaves a half-written entry behind.
    Two processes filling the same entry at once both succeed: the first rename wins.
    """
    final = root / key
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        build(staging)
        try:
            staging.rename(final)
        except OSError:
            # Another process filled the same entry first; it holds the same content.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def copy_entry(source: Path, root: Path) -> Path:
    """`root/<source's name>`, a copy of the directory `source` made atomically if absent."""
    return cache_entry(root, source.name, lambda staging: _copy_into(source, staging))


def _copy_into(source: Path, staging: Path) -> None:
    shutil.copytree(source, staging, dirs_exist_ok=True)


def newest_artifact(
    store: Path, pattern: str, *, metadata_file: str, model_file: str, wanted: Mapping[str, object]
) -> Path | None:
    """The newest artifact directory in `store` (matching `pattern`) whose metadata holds every
    `wanted` key with its value and whose model file exists; None when there is none.

    Metadata that cannot be read or parsed is skipped: a half-deleted artifact is not a match.
    """
    matches: list[tuple[str, Path]] = []
    for metadata_path in store.glob(f"{pattern}/{metadata_file}"):
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(metadata, dict)
            and all(metadata.get(key) == value for key, value in wanted.items())
            and (metadata_path.parent / model_file).is_file()
        ):
            matches.append((str(metadata.get("trained_at")), metadata_path.parent))
    return max(matches)[1] if matches else None
