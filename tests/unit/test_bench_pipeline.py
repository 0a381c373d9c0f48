"""The pipeline bench's own logic: what set a phase's pace, repeated runs, the loud failure on a
lost or doubled post, CPU per post and py-spy's collapsed stacks (the stack runs in
tests/integration/test_commands.py::test_bench_json_smoke)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from moderation.devtools.bench.e2e import PostsLostOrDoubled
from moderation.devtools.bench.pipeline import (
    _relay_summary,
    _repeated,
    check_phases,
    limit_of,
    spread,
)
from moderation.devtools.bench.profile import CpuMeter, package_of, top_costs


def phase(rate: float, p99: float = 10.0, *, lost: int = 0, doubled: int = 0) -> dict[str, Any]:
    return {
        "posts": 100,
        "posts_per_second": rate,
        "seconds": 1.0,
        "lost": lost,
        "doubled": doubled,
        "latency_ms": {"p50": 1.0, "p95": 5.0, "p99": p99, "max": p99},
    }


def test_a_fixed_rate_that_was_offered_is_the_pipelines_to_keep() -> None:
    summary = phase(1_000)
    verdict = limit_of(
        summary, submitted=10_000, submit_seconds=10.0, generator_cpu=2.0, offered=1_000
    )
    assert verdict["limit"] == "pipeline"
    assert verdict["generator"] == {
        "submitted_per_second": 1000.0,
        "submit_seconds": 10.0,
        "cpu_share_of_a_core": 0.2,
    }


def test_a_rate_not_offered_blames_the_busy_generator_or_else_the_api() -> None:
    summary = phase(500)
    busy = limit_of(summary, submitted=5_000, submit_seconds=10.0, generator_cpu=9.5, offered=1_000)
    idle = limit_of(summary, submitted=5_000, submit_seconds=10.0, generator_cpu=1.0, offered=1_000)
    assert (busy["limit"], idle["limit"]) == ("load generator", "ingest API")


def test_saturation_is_the_pipelines_only_when_a_backlog_built_up() -> None:
    backlog = {**phase(5_000), "seconds": 10.0}
    kept_up = {**phase(5_000), "seconds": 5.2}
    assert (
        limit_of(backlog, submitted=50_000, submit_seconds=5.0, generator_cpu=1.0, offered=None)[
            "limit"
        ]
        == "pipeline"
    )
    assert (
        limit_of(kept_up, submitted=50_000, submit_seconds=5.0, generator_cpu=1.0, offered=None)[
            "limit"
        ]
        == "ingest API"
    )
    assert (
        limit_of(kept_up, submitted=50_000, submit_seconds=5.0, generator_cpu=4.5, offered=None)[
            "limit"
        ]
        == "load generator"
    )


def test_repeated_runs_report_the_median_run_and_the_spread() -> None:
    runs = [phase(6_000, 90), phase(4_000, 300), phase(5_000, 120)]
    summary = _repeated(runs)
    assert summary["posts_per_second"] == 5_000 and summary["latency_ms"]["p99"] == 120
    assert summary["posts_per_second_spread"] == {"min": 4000, "median": 5000, "max": 6000}
    assert summary["p99_ms_spread"] == {"min": 90, "median": 120, "max": 300}
    assert summary["runs"] == runs
    assert spread([3.0, 1.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}


def test_the_pipeline_is_reported_as_a_share_of_the_relay_ceiling() -> None:
    saturation = _repeated([phase(4_000), phase(5_000)])
    relay = _relay_summary([phase(10_000), phase(8_000), phase(12_000)], saturation)
    assert relay["posts_per_second_spread"]["median"] == 10_000
    # Medians of the runs on both sides (with an even count, the mean of the middle two).
    assert relay["pipeline_share_of_ceiling"] == 0.45


def result_with(**phases: dict[str, Any]) -> dict[str, Any]:
    fixed, saturation = phases.get("fixed", phase(1)), phases.get("saturation", phase(1))
    return {
        "startup": {"cold": phases.get("cold", phase(1))},
        "end_to_end": {"fixed_rate": _repeated([fixed]), "saturation": _repeated([saturation])},
        "relay": {"runs": [phases.get("relay", phase(1))]},
    }


def test_a_lost_or_doubled_post_in_any_phase_fails_the_bench_naming_it() -> None:
    check_phases(result_with())
    for name, label in (
        ("cold", "start-up"),
        ("fixed", "fixed_rate run 1"),
        ("saturation", "saturation run 1"),
        ("relay", "relay run 1"),
    ):
        with pytest.raises(PostsLostOrDoubled, match=f"{label}: lost 1, doubled 0"):
            check_phases(result_with(**{name: phase(1, lost=1)}))
    with pytest.raises(PostsLostOrDoubled, match="doubled 2"):
        check_phases(result_with(saturation=phase(1, doubled=2)))


def test_cpu_per_post_counts_the_processes_and_their_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"])
    meter = CpuMeter({"child": child.pid, "self": os.getpid()})
    meter.start()
    sum(i * i for i in range(1_000_000))
    child.wait()
    spent = meter.stop()
    assert spent["self"] > 0 and spent["bench"] > 0
    figures = meter.per_post(1_000, 1.0)
    assert figures["cpu_us_per_post"]["self"] == pytest.approx(spent["self"] * 1_000, rel=0.01)
    assert figures["cpu_us_per_post_total"] == pytest.approx(
        sum(figures["cpu_us_per_post"].values()), abs=0.5
    )
    assert meter.per_post(0, 1.0) == {}


def test_collapsed_stacks_become_self_inclusive_and_package_shares() -> None:
    run = "run (/p/moderation/services/worker/app.py:10)"
    decide = "decide (/p/moderation/classifier/decide.py:5)"
    send = "send (/v/lib/python3.11/site-packages/aiokafka/producer/producer.py:3)"
    lines = [
        f"{run};{decide} 60\n",
        f"{run};{send} 30\n",
        f"{run} 10\n",
        "garbage\n",
    ]
    costs = top_costs(lines)
    assert costs["samples"] == 100
    assert costs["self"][0] == {"name": "decide (moderation.classifier.decide)", "share": 0.6}
    assert costs["inclusive"][0] == {"name": "run (moderation.services.worker)", "share": 1.0}
    packages = {item["name"]: item["share"] for item in costs["packages"]}
    assert packages == {
        "moderation.classifier.decide": 0.6,
        "aiokafka": 0.3,
        "moderation.services.worker": 0.1,
    }
    assert package_of("/usr/lib/python3.11/asyncio/base_events.py") == "base_events"
    assert package_of("") == "native"
