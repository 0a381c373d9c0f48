"""`moderation bench --images` runs end to end on a few images (the real hashing and pool)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderation.cli import app
from moderation.devtools.bench import images as images_bench
from moderation.devtools.bench import report


def test_the_images_bench_measures_every_phase_and_gets_every_match_right(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(images_bench, "MEGAPIXEL", 100_000)  # small photos: a quick test
    result = images_bench.run_images_bench(images=16, list_size=200)
    assert set(result["phases"]) == {
        "hash_match",
        "hash_match_full_resolution",
        "prepare_match",
        "pool_match",
        "match_only",
    }
    for phase in result["phases"].values():
        assert phase["images_per_s"] > 0
        assert phase["wrong_match_outcomes"] == 0
    assert result["pdq_hashes_listed"] == 200 + 4
    written = json.loads(Path(result["results_file"]).read_text())
    assert written["phases"]["hash_match"]["images"] == 16


def test_the_cli_runs_the_images_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(*, images: int, console: object) -> dict[str, object]:
        calls.append(images)
        return {"benchmark": "images"}

    monkeypatch.setattr(images_bench, "run_images_bench", fake)
    outcome = CliRunner().invoke(app, ["bench", "--images", "--image-count", "50", "--json"])
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.output) == {"benchmark": "images"}
    assert calls == [50]
