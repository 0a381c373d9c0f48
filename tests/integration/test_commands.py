"""The README's commands, run as a user runs them (docs that run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.llm import LLMServer
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.settings import PROJECT_ROOT, Settings
from moderation.taxonomy import CATEGORIES

pytestmark = pytest.mark.integration

SAMPLES = PROJECT_ROOT / "data" / "samples.jsonl"


def moderation(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "moderation.cli", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_dataset_build_script_writes_its_splits() -> None:
    result = subprocess.run(  # noqa: S603 - the README's command
        [sys.executable, "data/build_dataset.py"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from moderation.datasets.build import gold_split_path

    gold = gold_split_path()
    manifest = json.loads((gold.parent / "manifest.json").read_text())
    assert {"train.jsonl", "validation.jsonl", "gold.jsonl"} <= {
        p.name for p in gold.parent.iterdir()
    }
    assert manifest["sources"]


@pytest.mark.timeout(900)
def test_demo_prints_a_verdict_for_every_sample(llm: LLMServer, settings: Settings) -> None:
    """With the local LLM up, the demo sends its uncertain samples to the classifier agent."""
    # The local CPU model answers about 25 tokens/s and the agent's calls are serial: its
    # uncertain samples take 8 minutes on 2 cores (measured), near the default 600 s.
    result = moderation("demo", timeout=840)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [line for line in SAMPLES.read_text().splitlines() if line.strip()]
    assert f"{len(samples)} posts through the worker and recorder handlers" in result.stdout
    assert "missing" not in result.stdout
    assert f"classifier agent: {settings.llm.model}" in result.stdout
    assert re.search(r"│ agent\s+│", result.stdout), "no row decided at the agent stage"
    for decision in ("allow", "remove", "review"):
        assert decision in result.stdout


@pytest.mark.timeout(900)
def test_eval_json_reports_every_category(tmp_path: Path) -> None:
    from moderation.datasets.build import gold_split_path

    result = moderation("eval", "--dataset", str(gold_split_path()), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report["per_category"]) >= {
        c.value for c in CATEGORIES if c.value != "sexual_minors"
    }
    assert 0.0 < report["flagged"]["auprc"] <= 1.0
    assert report["throughput_posts_per_second"] > 0


@pytest.mark.timeout(900)
def test_eval_leave_one_source_out_writes_the_model_card(tmp_path: Path) -> None:
    """`moderation eval --loso --model-card` (data/README.md): one held-out model per source."""
    card = tmp_path / "MODEL_CARD.md"
    result = moderation("eval", "--json", "--loso", "--model-card", str(card), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    held_out = report["leave_one_source_out"]
    sources = {row["source"] for row in held_out["sources"]}
    assert sources and not any(source.startswith("project") for source in sources)
    for row in held_out["sources"]:
        # A source with safe rows only has no flagged F1 (nothing to flag): None, not 0.
        f1 = row["flagged"]["f1"]
        assert row["rows"] > 0 and (f1 is None or 0.0 <= f1 <= 1.0)
    assert any(row["flagged"]["f1"] is not None for row in held_out["sources"])
    text = card.read_text()
    assert "Leave-one-source-out" in text or "leave-one-source-out" in text
    assert all(source in text for source in sources)


def test_eval_rejects_a_bad_dataset_with_the_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "safe"}\n{"text": "x", "label": "not-a-label"}\n')
    result = moderation("eval", "--dataset", str(bad))
    assert result.returncode != 0
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "line 2" in message and "'not-a-label' is not one of" in message


@pytest.mark.timeout(900)
def test_bench_json_smoke(
    kafka: KafkaBroker, postgres: PostgresCluster, settings: Settings
) -> None:
    """A short bench run: the JSON has every phase and nothing was lost (numbers: `make bench`)."""
    result = moderation(
        "bench", "--json", "--rate", "200", "--seconds", "2", "--saturation-posts", "2000",
        "--single-requests", "300", "--batch-posts", "3000", "--repeat", "2",
        "--warmup-posts", "300",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["model"]["posts_per_second_one_core"] > 0
    cold = report["startup"]["cold"]
    assert cold["posts"] == cold["verdict_rows"] == 300 and cold["lost"] == cold["doubled"] == 0
    for phase in ("fixed_rate", "saturation"):
        e2e = report["end_to_end"][phase]
        assert len(e2e["runs"]) == 2
        assert all(run["lost"] == run["doubled"] == 0 for run in e2e["runs"])
        assert e2e["latency_ms"]["p99"] > 0
        spread = e2e["posts_per_second_spread"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
        assert e2e["limit"] in {"pipeline", "ingest API", "load generator"}
        # The CPU the services, Kafka and PostgreSQL spent per post, measured from /proc.
        cpu = e2e["cpu"]["cpu_us_per_post"]
        assert {"api", "worker", "recorder", "kafka", "postgres"} <= set(cpu)
        assert cpu["worker"] > 0 and cpu["postgres"] > 0
    relay = report["relay"]
    assert [run["lost"] + run["doubled"] for run in relay["runs"]] == [0, 0]
    assert relay["pipeline_share_of_ceiling"] > 0
    memory = report["memory"]["services"]
    for name in ("api", "worker", "recorder", "kafka", "postgres"):
        assert memory[name]["idle_mib"] > 0 and memory[name]["peak_mib"]["saturation"] > 0
    assert report["ingest"]["single"]["posts_accepted"] == 300
    assert report["ingest"]["batch"]["posts_accepted"] == 3000
