"""Versioned training snapshots: a frame as Parquet, named by a hash of its content.

The same rows give the same file name, so a rerun of a night (after a crash half-way) finds the
snapshot it already wrote and writes nothing; a snapshot is written to a temporary file and
renamed, so a reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

VERSION_CHARS = 16


@dataclass(frozen=True)
class Snapshot:
    """A training snapshot on disk: `directory/training-<version>.parquet`."""

    path: Path
    version: str
    rows: int


def snapshot_version(frame: pd.DataFrame) -> str:
    """A short sha256 of the frame's column names, dtypes and values, in row order.

    The index is not part of the content (it is not written either).
    """
    digest = hashlib.sha256()
    schema = [[str(name), str(dtype)] for name, dtype in frame.dtypes.items()]
    digest.update(json.dumps(schema).encode())
    # One 64-bit hash per row over every column's value (pandas' stable, keyed hash).
    rows = pd.util.hash_pandas_object(frame, index=False)
    digest.update(rows.to_numpy(dtype="<u8").tobytes())
    return digest.hexdigest()[:VERSION_CHARS]


def write_snapshot(frame: pd.DataFrame, directory: Path) -> Snapshot:
    """Write `frame` as `directory/training-<version>.parquet` unless that file exists.

    Args:
        frame: the training rows, in the order they should be read back (the order is part of
            the version). Columns with the same dtypes come back from `read_snapshot`.
        directory: created when missing.
    """
    version = snapshot_version(frame)
    path = directory / f"training-{version}.parquet"
    snapshot = Snapshot(path=path, version=version, rows=len(frame))
    if path.exists():
        return snapshot
    directory.mkdir(parents=True, exist_ok=True)
    # A unique name beside the target (same file system: the rename is atomic), created with
    # the usual permissions (mkstemp's 0600 would hide the snapshot from the dashboard's user).
    temporary = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with temporary.open("xb") as handle:
            frame.to_parquet(handle, engine="pyarrow", index=False)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return snapshot


def read_snapshot(path: Path) -> pd.DataFrame:
    """The frame a snapshot holds, with the dtypes it was written with."""
    return pd.read_parquet(path, engine="pyarrow")
