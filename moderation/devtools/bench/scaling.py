"""How cost grows (`moderation bench --scaling`): the pipeline end to end for partitions × worker
processes × post lengths.

Each cell of the matrix is a run of its own: its topics (`bench-<run>-<cell>.*`, created with the
cell's partition count and deleted afterwards), the recorder, N classifier worker processes in one
consumer group (Kafka splits the partitions between them) and the API. Then, as in the pipeline
bench (`pipeline.py`), latency is the stage-1 verdict row in PostgreSQL minus the submission:

1. warm-up: a few hundred posts through the pipeline and waited for, so the consumer groups'
   joins and the first connections are not measured;
2. fixed rate: posts offered at a rate the stack can take (fewer for long posts), p50/p95/p99;
3. saturation: posts as fast as the API takes them, posts/s from the first submission to the
   last verdict row.

A post lost or recorded twice in any cell fails the run (after the JSON is written): the figures
of a pipeline that drops posts are worth nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from moderation.devtools.bench.e2e import (
    PostsLostOrDoubled,
    bench_services,
    prepare_run,
    saturate,
    submit_at_rate,
    wait_recorded,
)
from moderation.devtools.bench.report import RESULTS_DIR, machine_info, write_result
from moderation.devtools.stack.kafka import delete_topics, ensure_topics
from moderation.devtools.stack.services import (
    PipelineServices,
    isolated_settings,
    worker_replica_specs,
)
from moderation.settings import Settings

# Lengths above this many characters are "long" and get the long posts' (lighter) load.
LONG_CHARS = 500
PHASES = ("warmup", "fixed_rate", "saturation")
PLOT_FILE = "scaling.png"


@dataclass(frozen=True)
class Cell:
    partitions: int
    workers: int
    length: int

    @property
    def name(self) -> str:
        workers = "worker" if self.workers == 1 else "workers"
        return f"{self.partitions} partitions × {self.workers} {workers} × {self.length} chars"

    @property
    def slug(self) -> str:
        return f"p{self.partitions}w{self.workers}l{self.length}"


@dataclass(frozen=True)
class Load:
    """What one cell is offered: the fixed-rate phase and the saturation phase's posts."""

    rate: int
    seconds: float
    saturation_posts: int
    warmup_posts: int


def cell_settings(settings: Settings, run: str, cell: Cell) -> Settings:
    """The cell's own topics (with its partition count) and groups; the agent off, as in the
    pipeline bench (stage 1 is measured)."""
    isolated = isolated_settings(settings, f"bench-{run}-{cell.slug}")
    return isolated.model_copy(
        update={
            "kafka": isolated.kafka.model_copy(update={"partitions": cell.partitions}),
            "agent": isolated.agent.model_copy(update={"enabled": False}),
        }
    )


def posts_scored(metrics_text: str) -> float:
    """`moderation_worker_posts_total` of one worker process (all stages, decisions, categories)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "moderation_worker_posts"
        for sample in family.samples
        if sample.name == "moderation_worker_posts_total"
    )


def worker_posts(services: PipelineServices, names: Sequence[str]) -> dict[str, float]:
    """Posts each worker process scored, from its /metrics (how Kafka split the partitions)."""
    counts = {}
    for name in names:
        port = services.specs[name].port
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        response.raise_for_status()
        counts[name] = posts_scored(response.text)
    return counts


async def _measure(settings: Settings, api_key: str, prefix: str, cell: Cell, load: Load
                   ) -> dict[str, Any]:  # fmt: skip
    base_url = f"http://127.0.0.1:{settings.api.port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:
        author = f"{prefix}-warmup"
        ids = await saturate(client, author, load.warmup_posts, 1, cell.length)
        figures["warmup"] = await asyncio.to_thread(wait_recorded, settings, author, ids, 180)

        author = f"{prefix}-fixed"
        ids = await submit_at_rate(client, author, load.rate, load.seconds, cell.length)
        fixed = await asyncio.to_thread(wait_recorded, settings, author, ids, 300)
        # Accepted may fall short of offered: ticks send whole posts (a multiple of 20 posts/s
        # is exact), and a 503 is refused, not lost.
        figures["fixed_rate"] = fixed | {
            "offered_posts_per_second": load.rate,
            "accepted_posts_per_second": round(len(ids) / load.seconds, 1),
        }

        author = f"{prefix}-saturation"
        ids = await saturate(client, author, load.saturation_posts, 4, cell.length)
        figures["saturation"] = await asyncio.to_thread(wait_recorded, settings, author, ids, 600)
    return figures


def run_cell(settings: Settings, run: str, api_key: str, cell: Cell, load: Load) -> dict[str, Any]:
    """One cell on its own topics and processes, removed afterwards whatever happens."""
    cell_run = cell_settings(settings, run, cell)
    asyncio.run(ensure_topics(cell_run))
    services = bench_services(cell_run, worker_replicas=cell.workers)
    workers = ["worker", *worker_replica_specs(cell_run, cell.workers)]
    started = time.monotonic()
    try:
        services.start("recorder", *workers, "api", timeout=600)
        startup_seconds = round(time.monotonic() - started, 1)
        figures = asyncio.run(_measure(cell_run, api_key, f"bench-{run}-{cell.slug}", cell, load))
        figures["worker_posts"] = worker_posts(services, workers)
    finally:
        services.stop()
        asyncio.run(delete_topics(cell_run))
    return {
        "name": cell.name,
        "partitions": cell.partitions,
        "workers": cell.workers,
        "length": cell.length,
        "startup_seconds": startup_seconds,
        "cell_seconds": round(time.monotonic() - started, 1),
        **figures,
    }


def check_cells(cells: Sequence[dict[str, Any]]) -> None:
    """Raise `PostsLostOrDoubled` naming every cell and phase that lost or doubled a post."""
    faults = [
        f"{cell['name']}, {phase}: lost {cell[phase]['lost']}, doubled {cell[phase]['doubled']}"
        for cell in cells
        for phase in PHASES
        if cell[phase]["lost"] or cell[phase]["doubled"]
    ]
    if faults:
        raise PostsLostOrDoubled("posts lost or doubled in " + "; ".join(faults))


def run_scaling(
    settings: Settings,
    *,
    partitions: Sequence[int] = (1, 2, 4),
    workers: Sequence[int] = (1, 2),
    lengths: Sequence[int] = (50, 5000),
    saturation_posts: int = 20_000,
    long_saturation_posts: int = 5_000,
    rate: int = 1_000,
    long_rate: int = 200,
    seconds: float = 6.0,
    warmup_posts: int = 300,
    console: Console,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """Run the matrix; write the JSON (`bench-scaling-<stamp>.json`) and the plot (`scaling.png`,
    or `plot_path`) into bench-results/. Raises `PostsLostOrDoubled` after writing them."""
    run, run_settings, api_key = prepare_run(settings)
    # prepare_run made topics with the default partition count: each cell makes its own.
    asyncio.run(delete_topics(run_settings))
    short = Load(rate, seconds, saturation_posts, warmup_posts)
    long = Load(long_rate, seconds, long_saturation_posts, warmup_posts)
    result: dict[str, Any] = {
        "run": run,
        "machine": machine_info(),
        "started_at": datetime.now().astimezone().isoformat(),
        "long_chars_above": LONG_CHARS,
        "load": {"short": asdict(short), "long": asdict(long)},
        "cells": [],
    }
    cells = [Cell(p, w, n) for n in lengths for w in workers for p in partitions]
    try:
        for index, cell in enumerate(cells, 1):
            load = long if cell.length > LONG_CHARS else short
            console.print(f"[bold]{index}/{len(cells)} {cell.name}[/bold]")
            result["cells"].append(run_cell(settings, run, api_key, cell, load))
        result["plot_file"] = str(plot_scaling(result, plot_path or RESULTS_DIR / PLOT_FILE))
    finally:
        result["results_file"] = str(write_result(result, "bench-scaling-{stamp}.json"))
    check_cells(result["cells"])
    return result


def _series(result: dict[str, Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """The cells of each (workers, length), by partitions."""
    series: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for cell in result["cells"]:
        series.setdefault((cell["workers"], cell["length"]), []).append(cell)
    return {key: sorted(cells, key=lambda c: c["partitions"]) for key, cells in series.items()}


def scaling_figure(result: dict[str, Any]) -> Figure:
    """Two panels: throughput at saturation and p99 at the fixed rate, against partitions; a line
    per (workers, length)."""
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    throughput, latency = figure.subplots(1, 2)
    lengths = sorted({length for _, length in _series(result)})
    colors = {length: f"C{index}" for index, length in enumerate(lengths)}
    for (workers, length), cells in sorted(_series(result).items()):
        x = [cell["partitions"] for cell in cells]
        label = f"{workers} worker{'s' if workers > 1 else ''}, {length} chars"
        style = {
            "color": colors[length],
            "linestyle": "-" if workers == 1 else "--",
            "marker": "o" if workers == 1 else "s",
            "label": label,
        }
        throughput.plot(x, [c["saturation"]["posts_per_second"] for c in cells], **style)
        offered = sorted({c["fixed_rate"]["offered_posts_per_second"] for c in cells})
        latency.plot(
            x,
            [c["fixed_rate"]["latency_ms"]["p99"] for c in cells],
            **(style | {"label": f"{label} ({'/'.join(map(str, offered))} posts/s)"}),
        )
    partitions = sorted({cell["partitions"] for cell in result["cells"]})
    for axes in (throughput, latency):
        axes.set_xlabel("partitions of posts.submitted and moderation.verdicts")
        axes.set_xticks(partitions)
        axes.set_yscale("log")
        # Plain numbers (400, 1000) rather than 4×10²: the figures are read, not estimated.
        axes.yaxis.set_major_formatter(LogFormatter(base=10))
        axes.yaxis.set_minor_formatter(LogFormatter(base=10, labelOnlyBase=False))
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    throughput.set_ylabel("posts/s at saturation (log)")
    throughput.set_title("end-to-end throughput at saturation")
    latency.set_ylabel("p99 submit → verdict row, ms (log)")
    latency.set_title("p99 latency at a fixed offered rate")
    figure.suptitle(
        f"moderation pipeline: partitions × worker processes × post length "
        f"({result['machine']['cpus']} CPUs)"
    )
    return figure


def plot_scaling(result: dict[str, Any], path: Path) -> Path:
    """Write the two-panel PNG of `result` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scaling_figure(result).savefig(path, dpi=120)
    return path


def render_scaling(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"moderation bench --scaling {result['run']} "
                  f"({result['machine']['cpus']} cpus)")  # fmt: skip
    columns = ("partitions", "workers", "chars", "saturation posts/s", "offered/s", "p50 ms",
               "p95 ms", "p99 ms", "lost", "doubled", "posts per worker")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for cell in result["cells"]:
        fixed, saturated = cell["fixed_rate"], cell["saturation"]
        latency = fixed["latency_ms"]
        table.add_row(
            str(cell["partitions"]),
            str(cell["workers"]),
            str(cell["length"]),
            f"{saturated['posts_per_second']:,.0f}",
            str(fixed["offered_posts_per_second"]),
            str(latency["p50"]),
            str(latency["p95"]),
            str(latency["p99"]),
            str(sum(cell[phase]["lost"] for phase in PHASES)),
            str(sum(cell[phase]["doubled"] for phase in PHASES)),
            " / ".join(f"{count:,.0f}" for count in cell["worker_posts"].values()),
        )
    console.print(table)
    if "plot_file" in result:
        console.print(f"[dim]plot: {result['plot_file']}[/dim]")
    console.print(f"[dim]written to {result['results_file']}[/dim]")
