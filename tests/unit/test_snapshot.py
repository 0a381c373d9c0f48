"""Training snapshots: Parquet round trip, content addressing, idempotent and atomic writes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from jobs.snapshot import read_snapshot, snapshot_version, write_snapshot


def training_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": ["hello there", "buy cheap pills", "pipe | and\nnewline"],
            "label": ["safe", "spam", "safe"],
            "source": ["base", "human", "human"],
            "decided_at": pd.Series(
                [
                    None,
                    datetime(2026, 11, 21, 3, tzinfo=UTC),
                    datetime(2026, 11, 21, 4, tzinfo=UTC),
                ],
                dtype="datetime64[us, UTC]",
            ),
            "post_id": [None, "p1", "p2"],
        }
    ).astype({"text": "str", "label": "str", "source": "str", "post_id": "str"})


def test_round_trip_keeps_values_and_dtypes(tmp_path: Path) -> None:
    frame = training_frame()

    snapshot = write_snapshot(frame, tmp_path / "snapshots")

    assert snapshot.rows == 3
    assert snapshot.path == tmp_path / "snapshots" / f"training-{snapshot.version}.parquet"
    pd.testing.assert_frame_equal(read_snapshot(snapshot.path), frame)


def test_version_is_the_content(tmp_path: Path) -> None:
    frame = training_frame()
    version = snapshot_version(frame)

    # Same content, another index or another object: same version.
    assert snapshot_version(frame.copy().set_axis([10, 11, 12])) == version
    # Any value, column name, dtype or the row order changes it.
    changed = frame.copy()
    changed.loc[1, "label"] = "safe"
    assert snapshot_version(changed) != version
    assert snapshot_version(frame.rename(columns={"source": "origin"})) != version
    assert snapshot_version(frame.astype({"source": "category"})) != version
    assert snapshot_version(frame.iloc[::-1]) != version
    assert write_snapshot(changed, tmp_path).path != write_snapshot(frame, tmp_path).path


def test_rewriting_the_same_content_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_snapshot(training_frame(), tmp_path)
    written = first.path.stat()

    def no_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing snapshot was written again")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_write)
    again = write_snapshot(training_frame(), tmp_path)

    assert again == first
    assert again.path.stat().st_mtime_ns == written.st_mtime_ns
    assert list(tmp_path.iterdir()) == [first.path]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: pd.DataFrame, handle: object, **kwargs: object) -> None:
        assert hasattr(handle, "write")
        handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(training_frame(), tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_empty_frame(tmp_path: Path) -> None:
    empty = training_frame().iloc[:0]

    snapshot = write_snapshot(empty, tmp_path)

    assert snapshot.rows == 0
    pd.testing.assert_frame_equal(read_snapshot(snapshot.path), empty.reset_index(drop=True))
