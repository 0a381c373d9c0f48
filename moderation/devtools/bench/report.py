"""What both benchmarks share: the machine they ran on, latency percentiles, the results file."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from moderation.settings import PROJECT_ROOT

RESULTS_DIR = PROJECT_ROOT / "bench-results"


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def latency_percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of latencies in milliseconds (nearest rank; zeros when empty)."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 2)}


def write_result(result: dict[str, Any], name: str) -> Path:
    """Write `result` into bench-results/; `{stamp}` in `name` becomes the local date and time."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")  # noqa: DTZ005 - a local file name
    path = RESULTS_DIR / name.format(stamp=stamp)
    path.write_text(json.dumps(result, indent=2))
    return path
