"""The soak's memory logic: slope and growth verdict on synthetic series, and the RSS sampler on
real processes (this test process and a child `sleep`)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from moderation.devtools.bench.memory import (
    MIB,
    RssSampler,
    growth_verdict,
    least_squares_slope,
    plot_soak,
    process_memory,
    render_memory,
    render_soak,
)

# Ten minutes sampled every 5 s; the verdict is taken on the second half (5 minutes).
HALF = [300.0 + 5.0 * i for i in range(61)]


def test_slope_of_a_line_is_its_gradient() -> None:
    assert least_squares_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert least_squares_slope([5], [1]) == 0.0
    assert least_squares_slope([2, 2, 2], [1, 2, 3]) == 0.0


def test_flat_series_is_bounded() -> None:
    verdict = growth_verdict(HALF, [120.0] * len(HALF))
    assert verdict["bounded"] is True
    assert verdict["slope_mib_per_min"] == 0.0
    assert verdict["threshold_mib"] == 10.0  # the floor: 5 % of 120 MiB is less


def test_noisy_flat_series_is_bounded() -> None:
    rng = random.Random(7)
    noisy = [200.0 + rng.uniform(-8.0, 8.0) for _ in HALF]
    verdict = growth_verdict(HALF, noisy)
    assert verdict["bounded"] is True
    assert abs(verdict["projected_mib"]) < 10.0


def test_gc_sawtooth_of_a_big_heap_is_bounded() -> None:
    # A JVM-like 600 MiB process whose heap climbs 30 MiB and is collected every minute.
    sawtooth = [600.0 + 30.0 * ((t % 60.0) / 60.0) for t in HALF]
    verdict = growth_verdict(HALF, sawtooth)
    assert verdict["threshold_mib"] == pytest.approx(30.0, abs=1.0)  # 5 % of ~615 MiB
    assert verdict["bounded"] is True


def test_leaking_series_is_not_bounded() -> None:
    # 100 bytes kept per post at 1,000 posts/s: ~5.7 MiB a minute, with noise on top.
    rng = random.Random(3)
    leak = [150.0 + 5.7 * (t / 60.0) + rng.uniform(-4.0, 4.0) for t in HALF]
    verdict = growth_verdict(HALF, leak)
    assert verdict["slope_mib_per_min"] == pytest.approx(5.7, abs=0.5)
    assert verdict["projected_mib"] > verdict["threshold_mib"]
    assert verdict["bounded"] is False


def test_too_few_samples_give_no_verdict() -> None:
    verdict = growth_verdict([0.0, 5.0], [100.0, 300.0])
    assert verdict["bounded"] is None
    assert verdict["slope_mib_per_min"] is None


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])  # noqa: S607 - coreutils' sleep, from PATH
    yield child
    child.kill()
    child.wait()


def _wait_resident(pid: int) -> float:
    """The child's RSS in MiB once `sleep` is loaded and asleep (steady across two reads)."""
    deadline = time.monotonic() + 5
    previous = -1
    while time.monotonic() < deadline:
        process = psutil.Process(pid)
        rss = process.memory_info().rss
        if process.name() == "sleep" and rss == previous and rss > 0:
            return rss / MIB
        previous = rss
        time.sleep(0.1)
    raise AssertionError("the sleep child never started")


def test_tree_sum_counts_the_child(sleeper: subprocess.Popen[bytes]) -> None:
    child_mib = _wait_resident(sleeper.pid)
    memory = process_memory(os.getpid())
    assert memory.rss is not None and memory.self_rss is not None and memory.pss is not None
    assert memory.self_rss > 10  # a Python process with pytest loaded
    # Other tests may have left children of this process: the child is at least counted.
    assert memory.rss - memory.self_rss >= 0.9 * child_mib
    alone = process_memory(sleeper.pid)
    assert alone.rss == alone.self_rss == pytest.approx(child_mib, rel=0.5)


def test_tree_sum_is_the_parent_plus_its_children() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])  # noqa: S607
    try:
        deadline = time.monotonic() + 5
        while not psutil.Process(shell.pid).children() and time.monotonic() < deadline:
            time.sleep(0.02)
        (child,) = psutil.Process(shell.pid).children()
        child_mib = _wait_resident(child.pid)
        memory = process_memory(shell.pid)
        shell_mib = psutil.Process(shell.pid).memory_info().rss / MIB
    finally:
        for process in psutil.Process(shell.pid).children():
            process.kill()
        shell.kill()
        shell.wait()
    assert memory.self_rss == pytest.approx(shell_mib, rel=0.2)
    assert memory.rss == pytest.approx(shell_mib + child_mib, rel=0.2)
    assert memory.pss is not None and memory.rss is not None
    assert 0 < memory.pss <= memory.rss


def test_gone_process_reads_as_none() -> None:
    child = subprocess.Popen(["true"])  # noqa: S607
    child.wait()
    memory = process_memory(child.pid)
    assert (memory.rss, memory.self_rss, memory.pss) == (None, None, None)


def test_sampler_survives_an_exit_and_reports_marks_and_peaks(
    sleeper: subprocess.Popen[bytes],
) -> None:
    _wait_resident(sleeper.pid)
    sampler = RssSampler({"tests": os.getpid(), "sleep": sleeper.pid}, interval=0.05)
    with sampler:
        sampler.mark("idle")
        with sampler.window("load"):
            ballast = bytearray(b"\x01") * (80 * MIB)  # written, hence resident
            time.sleep(0.3)
        del ballast
        sleeper.kill()
        sleeper.wait()
        time.sleep(0.3)  # samples after the child's exit
    summary = sampler.summary()

    tests, sleep = summary["services"]["tests"], summary["services"]["sleep"]
    assert tests["peak_mib"]["load"] >= tests["idle_mib"] + 60
    assert tests["last_mib"] is not None and tests["last_mib"] > 10
    series = sleep["series"]["rss_mib"]
    assert len(series) == len(tests["series"]["t_s"]) >= 8
    assert series[0] is not None and series[-1] is None  # alive, then gone: no exception
    assert sleep["last_mib"] == pytest.approx(series[0], rel=0.5)  # its last alive sample
    assert summary["marks_s"]["idle"] <= summary["windows_s"]["load"][0]
    growth = sampler.growth("sleep", 0.0, float("inf"))
    assert growth["measure"] == "pss" and growth["samples"] >= 3


def _synthetic_result(tmp_path: Path) -> dict[str, object]:
    t_s = [float(t) for t in range(0, 60, 5)]
    services = {
        name: {
            "pid": 1,
            "idle_mib": base,
            "marks_mib": {"idle": base},
            "peak_mib": {"soak": base + 5},
            "max_mib": base + 5,
            "last_mib": base,
            "pss": {"idle_mib": base - 1, "peak_mib": {"soak": base + 2}, "last_mib": base - 1},
            "series": {
                "t_s": t_s,
                "rss_mib": [base] * len(t_s),
                "self_rss_mib": [base] * len(t_s),
                "pss_mib": [None if t > 50 else base - 1 for t in t_s],
            },
        }
        for name, base in (("api", 150.0), ("kafka", 600.0))
    }
    growth = {name: {"measure": "pss", **growth_verdict(t_s, [1.0] * 12)} for name in services}
    return {
        "run": "abc",
        "machine": {"cpus": 2},
        "offered_posts_per_second": 200,
        "minutes": 1.0,
        "soak": {"posts": 12_000, "lost": 0, "doubled": 0, "posts_per_second": 199.5,
                 "latency_ms": {"p50": 40.0, "p95": 90.0, "p99": 120.0, "max": 300.0}},
        "memory": {"windows_s": {"soak": [5.0, 55.0]}, "services": services},
        "growth": growth,
        "plot": str(tmp_path / "soak-rss.png"),
        "results_file": str(tmp_path / "bench-soak.json"),
    }  # fmt: skip


def test_plot_and_table_of_a_result(tmp_path: Path) -> None:
    result = _synthetic_result(tmp_path)
    path = plot_soak(result, tmp_path / "soak-rss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = io.StringIO()
    render_soak(result, Console(file=out, width=160))
    text = out.getvalue()
    assert "api" in text and "kafka" in text and "bounded" in text and "GROWS" not in text
    assert "lost 0, doubled 0" in text


def test_memory_table_of_a_sampler_summary() -> None:
    sampler = RssSampler({"tests": os.getpid()}, interval=60.0)
    sampler.mark("idle")
    with sampler.window("saturation"):
        pass
    out = io.StringIO()
    render_memory(sampler.summary(), Console(file=out, width=160), window="saturation")
    row = next(line for line in out.getvalue().splitlines() if "tests" in line)
    figures = [cell.strip() for cell in row.strip("│ ").split("│")[1:]]
    assert len(figures) == 4 and all(float(cell) > 10 for cell in figures)
