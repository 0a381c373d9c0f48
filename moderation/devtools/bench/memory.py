"""Memory of the pipeline's processes under load (`moderation bench --soak`, and RSS in `bench`).

`RssSampler` samples, in a background thread, the resident memory of named processes: each
process with its children summed (the API's image-decoder processes, PostgreSQL's backends) and
the process alone. Beside RSS it records PSS (proportional set size): summed RSS counts a shared
page once per process that maps it, so PostgreSQL's tree "grows" as each backend touches more of
the shared buffers although nothing is allocated; PSS splits each shared page among its mappers
and so sums honestly. The growth verdict is taken on PSS (RSS where PSS cannot be read).

`run_soak` offers posts at a fixed rate for minutes and asks of each service whether its memory
grows without bound: a least-squares slope over the second half of the soak (after start-up,
warm-up and the first GCs), projected over that half, against a threshold (`growth_verdict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from moderation.devtools import stack
from moderation.devtools.bench.e2e import (
    bench_services,
    prepare_run,
    saturate,
    submit_at_rate,
    wait_recorded,
)
from moderation.devtools.bench.report import RESULTS_DIR, machine_info, write_result
from moderation.devtools.stack.kafka import delete_topics
from moderation.settings import Settings

MIB = 1024 * 1024

# A service's memory is "bounded" when its projected growth over the second half of the soak
# stays under max(GROWTH_FLOOR_MIB, GROWTH_FRACTION x its memory). The floor absorbs what is not
# a leak: allocator arenas and caches settling, a JVM heap's GC sawtooth, connection pools
# filling; 5 % scales that allowance for big processes (Kafka's JVM, ~600 MiB) whose GC cycles
# alone move tens of MiB. A real per-post leak is far above it: 100 bytes kept per post at
# 1,000 posts/s is ~5.7 MiB a minute, ~29 MiB over the second half of a 10-minute soak.
GROWTH_FLOOR_MIB = 10.0
GROWTH_FRACTION = 0.05


class SoakError(RuntimeError):
    """The soak lost or doubled posts (the results file is written before this is raised)."""


@dataclass(frozen=True)
class ProcessMemory:
    """One sample of one service, in MiB; None where the process has gone."""

    rss: float | None  # the process and its children
    self_rss: float | None  # the process alone
    pss: float | None  # the process and its children, shared pages split among their mappers


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and its children, recursively (raises psutil.Error when `pid` is gone)."""
    root = psutil.Process(pid)
    with contextlib.suppress(psutil.Error):
        return [root, *root.children(recursive=True)]
    return [root]


def process_memory(pid: int) -> ProcessMemory:
    """RSS and PSS of `pid` and its children; children that exit while being read are skipped,
    a root that has exited gives Nones."""
    try:
        processes = process_tree(pid)
        self_rss = processes[0].memory_info().rss
    except psutil.Error:
        return ProcessMemory(None, None, None)
    rss = pss = 0
    pss_readable = True
    for process in processes:
        try:
            rss += process.memory_info().rss
        except psutil.Error:
            continue  # exited since it was listed
        if pss_readable:
            try:
                pss += process.memory_full_info().pss
            except psutil.AccessDenied:
                pss_readable = False
            except psutil.Error:
                continue
    return ProcessMemory(rss / MIB, self_rss / MIB, pss / MIB if pss_readable else None)


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope of the least-squares line through the points (0 for fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def growth_verdict(
    times_s: Sequence[float],
    values_mib: Sequence[float],
    *,
    floor_mib: float = GROWTH_FLOOR_MIB,
    fraction: float = GROWTH_FRACTION,
) -> dict[str, Any]:
    """Whether a memory series (the window to judge, e.g. the soak's second half) is bounded.

    bounded = slope x window length < max(floor_mib, fraction x median memory); None with fewer
    than three samples (a line through two points says nothing about noise).
    """
    points = len(values_mib)
    ordered = sorted(values_mib)
    median = ordered[points // 2] if ordered else 0.0
    threshold = max(floor_mib, fraction * median)
    if points < 3:
        return {
            "samples": points,
            "slope_mib_per_min": None,
            "projected_mib": None,
            "threshold_mib": round(threshold, 1),
            "bounded": None,
        }
    slope_per_s = least_squares_slope(times_s, values_mib)
    projected = slope_per_s * (max(times_s) - min(times_s))
    return {
        "samples": points,
        "slope_mib_per_min": round(slope_per_s * 60, 3),
        "projected_mib": round(projected, 1),
        "threshold_mib": round(threshold, 1),
        "bounded": projected < threshold,
    }


class RssSampler:
    """Samples the memory of named processes every `interval` seconds in a background thread.

    Usage (the bench's phases)::

        with RssSampler(services.pids() | stack_pids(settings), interval=1.0) as sampler:
            sampler.mark("idle")
            with sampler.window("saturation"):
                ...  # the load
        memory = sampler.summary()  # per service: idle_mib, peak_mib["saturation"], last_mib

    A process that exits is sampled as None from then on; nothing raises.
    """

    def __init__(self, pids: Mapping[str, int], interval: float = 5.0) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.samples: list[tuple[float, dict[str, ProcessMemory]]] = []
        self.marks: dict[str, float] = {}
        self.windows: dict[str, list[float]] = {}
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def sample(self) -> tuple[float, dict[str, ProcessMemory]]:
        """Take one sample now (it joins the series)."""
        at = self.elapsed()
        taken = {name: process_memory(pid) for name, pid in self.pids.items()}
        with self._lock:
            self.samples.append((at, taken))
            self.samples.sort(key=lambda item: item[0])
        return at, taken

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.sample()
            self._stopping.wait(self.interval)

    def start(self) -> RssSampler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, with one last sample."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
            self.sample()

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def mark(self, label: str) -> None:
        """A labelled snapshot, taken now (e.g. "idle" before the load)."""
        self.marks[label] = self.sample()[0]

    def begin(self, label: str) -> None:
        """Open the labelled window `label` (its peak is reported), with a sample."""
        self.windows[label] = [self.sample()[0]]

    def end(self, label: str) -> None:
        """Close the window `label`, with a sample."""
        self.windows[label] = [self.windows[label][0], self.sample()[0]]

    @contextlib.contextmanager
    def window(self, label: str) -> Iterator[None]:
        self.begin(label)
        try:
            yield
        finally:
            self.end(label)

    def _values(
        self, name: str, field: str, start: float = 0.0, end: float = float("inf")
    ) -> list[tuple[float, float]]:
        with self._lock:
            points = [
                (at, getattr(taken[name], field))
                for at, taken in self.samples
                if start <= at <= end
            ]
        return [(at, value) for at, value in points if value is not None]

    def growth(self, name: str, start: float, end: float) -> dict[str, Any]:
        """`growth_verdict` of `name`'s PSS (RSS where PSS is unreadable) over [start, end]."""
        measure = "pss" if self._values(name, "pss", start, end) else "rss"
        points = self._values(name, measure, start, end)
        verdict = growth_verdict([at for at, _ in points], [value for _, value in points])
        return {"measure": measure, **verdict}

    def _figures(self, name: str, field: str) -> dict[str, Any]:
        """`name`'s `field` at each mark, its peak in each window, its max and its last value."""
        points = self._values(name, field)
        by_time = dict(points)
        marks = {label: _round(by_time.get(at)) for label, at in self.marks.items()}
        peaks: dict[str, float | None] = {}
        for label, bounds in self.windows.items():
            last = bounds[1] if len(bounds) == 2 else float("inf")  # open: up to now
            inside = [value for at, value in points if bounds[0] <= at <= last]
            peaks[label] = round(max(inside), 1) if inside else None
        return {
            "idle_mib": marks.get("idle"),
            "marks_mib": marks,
            "peak_mib": peaks,
            "max_mib": round(max(value for _, value in points), 1) if points else None,
            "last_mib": round(points[-1][1], 1) if points else None,
        }

    def summary(self) -> dict[str, Any]:
        """Per service: pid; RSS (tree) at each mark ("idle"), its peak in each window, its max
        and last; the same for PSS under "pss"; and the series (seconds since creation)."""
        with self._lock:
            samples = list(self.samples)
        services: dict[str, Any] = {}
        for name, pid in self.pids.items():
            services[name] = {
                "pid": pid,
                **self._figures(name, "rss"),
                "pss": self._figures(name, "pss"),
                "series": {
                    "t_s": [round(at, 1) for at, _ in samples],
                    "rss_mib": [_round(taken[name].rss) for _, taken in samples],
                    "self_rss_mib": [_round(taken[name].self_rss) for _, taken in samples],
                    "pss_mib": [_round(taken[name].pss) for _, taken in samples],
                },
            }
        return {
            "interval_s": self.interval,
            "marks_s": {label: round(at, 1) for label, at in self.marks.items()},
            "windows_s": {
                label: [round(at, 1) for at in bounds] for label, bounds in self.windows.items()
            },
            "services": services,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def stack_pids(settings: Settings) -> dict[str, int]:
    """The pids of the stack's Kafka broker and PostgreSQL postmaster (its backends are its
    children, so a tree sample covers them)."""
    rows = stack.status(settings, ["kafka", "postgres"])
    return {row.name: row.pid for row in rows if row.pid is not None}


async def _offer(
    settings: Settings,
    api_key: str,
    run: str,
    sampler: RssSampler,
    *,
    rate: int,
    minutes: float,
    warmup_posts: int,
    chunk_seconds: float,
    console: Console,
) -> tuple[str, list[str], dict[str, Any]]:
    """Warm up (waited for), mark idle, then offer `rate` posts/s for `minutes` in chunks."""
    base_url = f"http://127.0.0.1:{settings.api.port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    author = f"bench-{run}-soak"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        warm_author = f"bench-{run}-warmup"
        warm_ids = await saturate(client, warm_author, warmup_posts, 1)
        warmup = await asyncio.to_thread(wait_recorded, settings, warm_author, warm_ids, 300)
        await asyncio.sleep(2 * sampler.interval)  # let the services settle: idle, not draining
        sampler.mark("idle")
        total = minutes * 60
        ids: list[str] = []
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[posts]:,} posts"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"soak at {rate} posts/s", total=total, posts=0)
            sampler.begin("soak")
            done = 0.0
            while done < total:
                # Chunks: submit_at_rate keeps its requests until the end; the generator's own
                # memory must stay flat, and the bar moves.
                chunk = min(chunk_seconds, total - done)
                ids.extend(await submit_at_rate(client, author, rate, chunk))
                done += chunk
                progress.update(task, completed=done, posts=len(ids))
            sampler.end("soak")
    return author, ids, warmup


def run_soak(
    settings: Settings,
    *,
    rate: int = 1_000,
    minutes: float = 10.0,
    interval: float = 5.0,
    warmup_posts: int = 500,
    chunk_seconds: float = 30.0,
    plot_path: Path = RESULTS_DIR / "soak-rss.png",
    console: Console,
) -> dict[str, Any]:
    """A soak: `rate` posts/s for `minutes` through the stack, memory sampled every `interval`
    seconds; raises SoakError (after writing the results) if a post was lost or doubled."""
    run, run_settings, api_key = prepare_run(settings)
    result: dict[str, Any] = {
        "run": run,
        "machine": machine_info(),
        "started_at": datetime.now().astimezone().isoformat(),
        "offered_posts_per_second": rate,
        "minutes": minutes,
        "threshold": {
            "floor_mib": GROWTH_FLOOR_MIB,
            "fraction": GROWTH_FRACTION,
            "window": "second half of the soak",
        },
    }
    services = bench_services(run_settings)
    try:
        services.start("recorder", "worker", "api", timeout=600)
        with RssSampler(services.pids() | stack_pids(settings), interval=interval) as sampler:
            console.print(f"[bold]soak: {rate} posts/s for {minutes:g} min[/bold]")
            author, ids, warmup = asyncio.run(
                _offer(
                    run_settings,
                    api_key,
                    run,
                    sampler,
                    rate=rate,
                    minutes=minutes,
                    warmup_posts=warmup_posts,
                    chunk_seconds=chunk_seconds,
                    console=console,
                )
            )
            console.print(f"[bold]waiting for {len(ids):,} verdict rows[/bold]")
            soak = wait_recorded(run_settings, author, ids, max(300.0, minutes * 60))
            sampler.mark("drained")
        start, end = sampler.windows["soak"]
        result["warmup"] = {"posts": warmup["posts"], "lost": warmup["lost"]}
        result["soak"] = soak
        result["memory"] = sampler.summary()
        result["growth"] = {
            name: sampler.growth(name, (start + end) / 2, end) for name in sampler.pids
        }
    finally:
        services.stop()
        asyncio.run(delete_topics(run_settings))
    result["plot"] = str(plot_soak(result, plot_path))
    result["results_file"] = str(write_result(result, f"bench-soak-{{stamp}}-{run}.json"))
    if soak["lost"] or soak["doubled"]:
        raise SoakError(
            f"soak {run}: {soak['lost']} posts lost, {soak['doubled']} doubled of "
            f"{soak['posts']} (see {result['results_file']})"
        )
    return result


def plot_soak(result: dict[str, Any], path: Path) -> Path:
    """RSS (solid) and PSS (dashed) of each service over time, one panel each; the soak shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory = result["memory"]
    services = memory["services"]
    figure, axes = plt.subplots(
        len(services), 1, sharex=True, squeeze=False, figsize=(9, 2.2 * len(services))
    )
    soak = memory["windows_s"].get("soak")
    for axis, (name, data) in zip(axes[:, 0], services.items(), strict=True):
        minutes = [at / 60 for at in data["series"]["t_s"]]
        rss = [float("nan") if v is None else v for v in data["series"]["rss_mib"]]
        pss = [float("nan") if v is None else v for v in data["series"]["pss_mib"]]
        axis.plot(minutes, rss, label="RSS (tree)")
        axis.plot(minutes, pss, linestyle="--", label="PSS (tree)")
        if soak and len(soak) == 2:
            axis.axvspan(soak[0] / 60, soak[1] / 60, alpha=0.1, color="grey")
        growth = result.get("growth", {}).get(name, {})
        verdict = {True: "bounded", False: "GROWS", None: "?"}[growth.get("bounded")]
        axis.set_title(f"{name}: {verdict}", fontsize=9, loc="left")
        axis.set_ylabel("MiB")
        axis.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("minutes (soak shaded)")
    figure.suptitle(f"soak {result['run']}: {result['offered_posts_per_second']} posts/s offered")
    figure.tight_layout()
    path.parent.mkdir(exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_soak(result: dict[str, Any], console: Console) -> None:
    soak = result["soak"]
    title = (
        f"moderation bench --soak {result['run']}: {soak['posts']:,} posts at "
        f"{result['offered_posts_per_second']}/s offered for {result['minutes']:g} min "
        f"({result['machine']['cpus']} cpus)"
    )
    # Narrow enough for 80 columns (a pipe or a CI log): two-line headers, the rule below.
    table = Table(
        title=title,
        caption=f"MiB; verdict on PSS over the soak's second half: bounded when the projected "
        f"growth < max({GROWTH_FLOOR_MIB:g} MiB, {GROWTH_FRACTION:.0%} of the service)",
    )
    headers = ("service", "RSS\nidle", "RSS\npeak", "PSS\nidle", "PSS\npeak", "MiB/\nmin",
               "growth", "limit", "verdict")  # fmt: skip
    for column in headers:
        table.add_column(column, justify="left" if column in ("service", "verdict") else "right")
    verdicts = {True: "bounded", False: "[red]GROWS[/red]", None: "too few"}
    for name, data in result["memory"]["services"].items():
        growth = result["growth"][name]
        verdict = verdicts[growth["bounded"]]
        if growth["measure"] != "pss":
            verdict += f" ({growth['measure']})"
        table.add_row(
            name,
            _fmt(data["idle_mib"]),
            _fmt(data["peak_mib"].get("soak")),
            _fmt(data["pss"]["idle_mib"]),
            _fmt(data["pss"]["peak_mib"].get("soak")),
            _fmt(growth["slope_mib_per_min"], ".2f"),
            _fmt(growth["projected_mib"]),
            _fmt(growth["threshold_mib"]),
            verdict,
        )
    console.print(table)
    lat = soak["latency_ms"]
    console.print(
        f"lost {soak['lost']}, doubled {soak['doubled']}; {soak['posts_per_second']:,.0f} posts/s "
        f"recorded; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms"
    )
    console.print(f"[dim]written to {result.get('results_file', '-')} and {result['plot']}[/dim]")


def render_memory(memory: dict[str, Any], console: Console, *, window: str) -> None:
    """A table of `RssSampler.summary()`: each service's memory at the "idle" mark and at its
    peak in `window` (e.g. "saturation"), RSS (process and children) and PSS, in MiB."""
    table = Table(title=f"memory (MiB): idle and peak during {window}")
    for column in (
        "service",
        "RSS idle",
        f"RSS peak ({window})",
        "PSS idle",
        f"PSS peak ({window})",
    ):
        table.add_column(column, justify="left" if column == "service" else "right")
    for name, data in memory["services"].items():
        table.add_row(
            name,
            _fmt(data["idle_mib"]),
            _fmt(data["peak_mib"].get(window)),
            _fmt(data["pss"]["idle_mib"]),
            _fmt(data["pss"]["peak_mib"].get(window)),
        )
    console.print(table)


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)
