"""`moderation bench --scaling` without the stack: the plot, the lost/doubled check of the cell
loop, the cells' settings, the worker replicas and the per-process post counts (the run itself:
tests/integration/test_bench_scaling_real.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from rich.console import Console

from moderation.devtools.bench import report, scaling
from moderation.devtools.bench.e2e import PostsLostOrDoubled
from moderation.devtools.bench.scaling import (
    Cell,
    Load,
    cell_settings,
    check_cells,
    plot_scaling,
    posts_scored,
    scaling_figure,
)
from moderation.devtools.stack.services import PipelineServices
from moderation.settings import Settings


def phase(lost: int = 0, doubled: int = 0, p99: float = 100.0, rate: float = 1000.0
          ) -> dict[str, Any]:  # fmt: skip
    return {
        "posts": 100,
        "lost": lost,
        "doubled": doubled,
        "posts_per_second": rate,
        "latency_ms": {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99, "max": p99},
        "offered_posts_per_second": 1000,
    }


def cell(partitions: int, workers: int, length: int, **faults: int) -> dict[str, Any]:
    return {
        "name": Cell(partitions, workers, length).name,
        "partitions": partitions,
        "workers": workers,
        "length": length,
        "warmup": phase(),
        "fixed_rate": phase(**faults, p99=50.0 * partitions + length / 10),
        "saturation": phase(rate=1000.0 * partitions / (1 + length / 1000)),
        "worker_posts": {"worker": 60.0, **({"worker-2": 40.0} if workers == 2 else {})},
    }


def synthetic_result() -> dict[str, Any]:
    return {
        "run": "abc",
        "machine": {"cpus": 2},
        "cells": [cell(p, w, n) for n in (50, 5000) for w in (1, 2) for p in (1, 2, 4)],
        "results_file": "bench-results/x.json",
    }


def test_the_figure_has_a_line_per_workers_and_length_in_both_panels() -> None:
    figure = scaling_figure(synthetic_result())
    throughput, latency = figure.axes
    assert "2 CPUs" in figure.get_suptitle()
    for axes in (throughput, latency):
        lines = axes.get_lines()
        assert len(lines) == 4
        assert all(np.asarray(line.get_xdata()).tolist() == [1, 2, 4] for line in lines)
        assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title()
        legend = axes.get_legend()
        assert legend is not None and len(legend.get_texts()) == 4
    labels = [line.get_label() for line in throughput.get_lines()]
    assert labels == [
        "1 worker, 50 chars",
        "1 worker, 5000 chars",
        "2 workers, 50 chars",
        "2 workers, 5000 chars",
    ]
    # The throughput line of 1 worker × 50 chars is that series' saturation figures, in order.
    first = np.asarray(throughput.get_lines()[0].get_ydata()).tolist()
    assert first == [1000.0 / 1.05 * p for p in (1, 2, 4)]
    assert np.asarray(latency.get_lines()[0].get_ydata()).tolist() == [55.0, 105.0, 205.0]


def test_plot_scaling_writes_a_png(tmp_path: Path) -> None:
    path = plot_scaling(synthetic_result(), tmp_path / "deeper" / "scaling.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_check_cells_names_each_cell_and_phase_that_lost_or_doubled() -> None:
    check_cells([cell(1, 1, 50), cell(2, 2, 5000)])  # clean: no exception
    with pytest.raises(PostsLostOrDoubled) as raised:
        check_cells([cell(1, 1, 50), cell(2, 2, 5000, lost=3), cell(4, 1, 50, doubled=1)])
    message = str(raised.value)
    assert "2 partitions × 2 workers × 5000 chars, fixed_rate: lost 3, doubled 0" in message
    assert "4 partitions × 1 worker × 50 chars, fixed_rate: lost 0, doubled 1" in message
    assert "1 partitions × 1 worker × 50 chars" not in message


def test_the_run_measures_every_cell_writes_the_json_then_fails_on_a_lost_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[Cell, Load]] = []

    def fake_run_cell(settings: Settings, run: str, api_key: str, one: Cell, load: Load
                      ) -> dict[str, Any]:  # fmt: skip
        ran.append((one, load))
        lost = 2 if (one.partitions, one.workers, one.length) == (2, 1, 5000) else 0
        return cell(one.partitions, one.workers, one.length, lost=lost)

    async def no_topics(settings: Settings) -> None:
        return None

    monkeypatch.setattr(scaling, "prepare_run", lambda s: ("run1", s, "key"))
    monkeypatch.setattr(scaling, "delete_topics", no_topics)
    monkeypatch.setattr(scaling, "run_cell", fake_run_cell)
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    with pytest.raises(PostsLostOrDoubled, match=r"2 partitions × 1 worker × 5000 chars"):
        scaling.run_scaling(
            Settings(),
            partitions=(1, 2),
            saturation_posts=100,
            long_saturation_posts=30,
            rate=50,
            long_rate=20,
            console=Console(quiet=True),
            plot_path=tmp_path / "scaling.png",
        )
    assert len(ran) == 2 * 2 * 2  # the faulty cell did not stop the others
    loads = {one.length: load for one, load in ran}
    assert loads[50] == Load(rate=50, seconds=6.0, saturation_posts=100, warmup_posts=300)
    assert loads[5000] == Load(rate=20, seconds=6.0, saturation_posts=30, warmup_posts=300)
    (written,) = tmp_path.glob("bench-scaling-*.json")
    result = json.loads(written.read_text())
    assert len(result["cells"]) == 8
    assert result["plot_file"] == str(tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_a_cell_has_its_own_topics_partitions_and_groups() -> None:
    settings = Settings()
    one = cell_settings(settings, "r1", Cell(partitions=4, workers=2, length=50))
    assert one.kafka.partitions == 4
    assert one.kafka.topics.posts_submitted == "bench-r1-p4w2l50.posts.submitted"
    assert one.worker.classifier_group == "bench-r1-p4w2l50-classifier"
    assert not one.agent.enabled


def test_worker_replicas_share_the_group_on_their_own_ports() -> None:
    settings = Settings()
    plain = PipelineServices(settings)
    assert "worker-2" not in plain.processes
    services = PipelineServices(settings, {"X": "1"}, worker_replicas=3)
    ports = {name: services.specs[name].port for name in ("worker", "worker-2", "worker-3")}
    assert len(set(ports.values())) == 3
    assert ports["worker"] == settings.worker.classifier_health_port
    worker, replica = services.processes["worker"], services.processes["worker-3"]
    assert replica.argv == worker.argv
    assert replica.env["MODERATION_WORKER__CLASSIFIER_HEALTH_PORT"] == str(ports["worker-3"])
    assert replica.env["MODERATION_DB__USER"] == worker.env["MODERATION_DB__USER"]
    assert replica.env["MODERATION_WORKER__CLASSIFIER_GROUP"] == settings.worker.classifier_group
    assert replica.env["X"] == "1"
    assert replica.pid_file != worker.pid_file


def test_posts_scored_sums_the_worker_counter_of_one_process() -> None:
    registry = CollectorRegistry()
    posts = Counter("moderation_worker_posts_total", "", ["stage", "decision"], registry=registry)
    posts.labels("model", "allow").inc(7)
    posts.labels("model", "remove").inc(3)
    Counter("moderation_worker_dead_letters_total", "", registry=registry).inc(5)
    assert posts_scored(generate_latest(registry).decode()) == 10.0


def test_the_table_has_a_row_per_cell_with_the_split_between_workers() -> None:
    console = Console(record=True, width=200)
    scaling.render_scaling(synthetic_result(), console)
    text = console.export_text()
    assert text.count("60 / 40") == 6  # the six two-worker cells
    assert "bench-results/x.json" in text
