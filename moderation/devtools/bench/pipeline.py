"""The pipeline benchmark (`moderation bench`): throughput and latency against the local stack.

Phases, each on its own fresh topics (`bench-<run>.*`) so runs never see each other's backlog:
1. fast model: posts/s of `predict_proba` on one core;
2. start-up: `warmup_posts` through the cold pipeline (group joins, connections, caches),
   reported apart: the measured phases run on a warm pipeline;
3. end to end, `repeat` times: at a fixed offered rate (posts submitted through the API's batch
   endpoint at `rate` posts/s; latency = verdict row recorded in PostgreSQL − post submitted),
   then at saturation (as fast as the API takes them; throughput = posts / (last verdict row −
   first submission)); each says what set its pace (`limit_of`), and the CPU each process spent
   per post (`profile.CpuMeter`); `--profile` runs py-spy on the services during the first
   saturation;
4. ingest only (worker and recorder stopped): single-post requests and batch requests;
5. the relay ceiling (`relay`): the same posts through the same broker by a bare aiokafka relay
   and `COPY`; the pipeline's saturation throughput is reported as a share of it.
RSS per process (services, Kafka, PostgreSQL) is sampled throughout (`memory.RssSampler`).
A phase that lost or doubled a post fails the run, after the JSON is written.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from moderation.devtools.bench.e2e import (
    PostsLostOrDoubled,
    bench_services,
    bench_text,
    prepare_run,
    saturate,
    submit_at_rate,
    wait_recorded,
)
from moderation.devtools.bench.loadgen import measure_ingest
from moderation.devtools.bench.memory import RssSampler, render_memory, stack_pids
from moderation.devtools.bench.profile import CpuMeter, Profiler, summarize_profiles
from moderation.devtools.bench.relay import measure_relay
from moderation.devtools.bench.report import (
    RESULTS_DIR,
    machine_info,
    write_result,
)
from moderation.devtools.stack.kafka import delete_topics
from moderation.devtools.stack.services import PipelineServices
from moderation.settings import Settings

# The services `--profile` samples with py-spy.
PROFILED = ("api", "worker", "recorder")


def measure_model(settings: Settings, posts: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.evaluation.scores import measure_throughput

    model = ensure_fast_model(settings, progress=True)
    texts = [bench_text(i) for i in range(posts)]
    with threadpool_limits(limits=1):
        per_second = measure_throughput(model, texts)
    return {"model_version": model.version, "posts": posts, "posts_per_second_one_core": per_second}


# The generator is "the limit" when this process used this share of a core while submitting.
GENERATOR_BUSY_SHARE = 0.85
# Saturation: the pipeline kept up with the submissions when its last verdict came this much
# after the submissions' own span (then the ingest side, not the pipeline, set the pace).
KEPT_UP_RATIO = 1.15


def _cpu_now() -> float:
    times = os.times()
    return times.user + times.system


def limit_of(
    summary: dict[str, Any],
    *,
    submitted: int,
    submit_seconds: float,
    generator_cpu: float,
    offered: float | None,
) -> dict[str, Any]:
    """What set the pace of a phase: the pipeline, the ingest API, or this load generator.

    At a fixed rate the question is whether the offered rate was offered: if the submissions
    fell behind it, the generator (busy) or the API (answering slowly) was the limit. At
    saturation, a pipeline that recorded the last verdict soon after the last submission kept
    up: the ingest side set the pace, and the figure is a floor of what the pipeline can do.
    """
    achieved = submitted / submit_seconds if submit_seconds else 0.0
    busy = generator_cpu / submit_seconds if submit_seconds else 0.0
    ingest_side = "load generator" if busy >= GENERATOR_BUSY_SHARE else "ingest API"
    if offered is not None:
        limit = ingest_side if achieved < 0.95 * offered else "pipeline"
    else:
        kept_up = summary["seconds"] <= submit_seconds * KEPT_UP_RATIO + 0.5
        limit = ingest_side if kept_up else "pipeline"
    return {
        "limit": limit,
        "generator": {
            "submitted_per_second": round(achieved, 1),
            "submit_seconds": round(submit_seconds, 3),
            "cpu_share_of_a_core": round(busy, 2),
        },
    }


async def _phase(
    settings: Settings,
    api_key: str,
    author: str,
    *,
    rate: int | None = None,
    seconds: float = 0.0,
    posts: int = 0,
    length: int | None = None,
    meter: CpuMeter | None = None,
) -> dict[str, Any]:
    """One end-to-end phase: submit (at `rate` for `seconds`, or `posts` as fast as the API
    takes them), wait for every verdict row, and say what set the pace."""
    base_url = f"http://127.0.0.1:{settings.api.port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    if meter is not None:
        meter.start()
    cpu, started = _cpu_now(), time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        if rate is not None:
            ids = await submit_at_rate(client, author, rate, seconds, length)
        else:
            ids = await saturate(client, author, posts, 4, length)
    submit_seconds, generator_cpu = time.perf_counter() - started, _cpu_now() - cpu
    summary = await asyncio.to_thread(wait_recorded, settings, author, ids, 600)
    if meter is not None:
        meter.stop()
        summary["cpu"] = meter.per_post(len(ids), summary["seconds"])
    if rate is not None:
        summary["offered_posts_per_second"] = rate
    return summary | limit_of(
        summary,
        submitted=len(ids),
        submit_seconds=submit_seconds,
        generator_cpu=generator_cpu,
        offered=rate,
    )


def spread(values: Sequence[float]) -> dict[str, float]:
    """min, median and max of the repeated runs' values."""
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


def _repeated(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run's figures (by throughput), every run, and the spread across them."""
    ordered = sorted(runs, key=lambda run: run["posts_per_second"])
    median = ordered[(len(ordered) - 1) // 2]
    return median | {
        "runs": runs,
        "posts_per_second_spread": spread([run["posts_per_second"] for run in runs]),
        "p99_ms_spread": spread([run["latency_ms"]["p99"] for run in runs]),
    }


def check_phases(result: dict[str, Any]) -> None:
    """Raise `PostsLostOrDoubled` naming every phase that lost or doubled a post."""
    phases: list[tuple[str, dict[str, Any]]] = [("start-up", result["startup"]["cold"])]
    for name in ("fixed_rate", "saturation"):
        phases += [
            (f"{name} run {i + 1}", run) for i, run in enumerate(result["end_to_end"][name]["runs"])
        ]
    phases += [
        (f"relay run {i + 1}", run) for i, run in enumerate(result.get("relay", {}).get("runs", []))
    ]
    bad = [
        f"{name}: lost {phase['lost']}, doubled {phase['doubled']}"
        for name, phase in phases
        if phase["lost"] or phase["doubled"]
    ]
    if bad:
        raise PostsLostOrDoubled("; ".join(bad))


def run_bench(
    settings: Settings,
    *,
    model_posts: int = 50_000,
    rate: int = 1_000,
    seconds: float = 10.0,
    saturation_posts: int = 50_000,
    single_requests: int = 10_000,
    batch_posts: int = 100_000,
    repeat: int = 1,
    warmup_posts: int = 5_000,
    relay: bool = True,
    profile: bool = False,
    native: bool = False,
    console: Console,
) -> dict[str, Any]:
    """The pipeline benchmark (module docstring); `check_phases` on the result says whether a
    phase lost or doubled a post (the CLI exits 1 then, after printing everything)."""
    run, run_settings, api_key = prepare_run(settings)
    result: dict[str, Any] = {
        "run": run,
        "machine": machine_info(),
        "started_at": datetime.now().astimezone().isoformat(),
        "repeat": repeat,
    }
    console.print("[bold]1/5 fast model throughput[/bold]")
    result["model"] = measure_model(settings, model_posts)

    services = bench_services(run_settings)
    sampler: RssSampler | None = None
    try:
        started = time.perf_counter()
        services.start("recorder", "worker", "api", timeout=600)
        result["startup"] = {"services_seconds": round(time.perf_counter() - started, 1)}
        pids = services.pids() | stack_pids(settings)
        sampler = RssSampler(pids, interval=1.0).start()
        # The first posts pay for group joins, connections and cold caches: measured apart.
        console.print(f"[bold]2/5 start-up: {warmup_posts} posts on a cold pipeline[/bold]")
        result["startup"]["cold"] = asyncio.run(
            _phase(run_settings, api_key, f"bench-{run}-cold", posts=warmup_posts)
        )
        sampler.mark("idle")
        rounds: dict[str, list[dict[str, Any]]] = {"fixed_rate": [], "saturation": []}
        for index in range(repeat):
            console.print(
                f"[bold]3/5 end to end, run {index + 1}/{repeat}: {rate} posts/s "
                "offered, then saturation[/bold]"
            )
            rounds["fixed_rate"].append(
                asyncio.run(
                    _phase(
                        run_settings,
                        api_key,
                        f"bench-{run}-fixed-{index}",
                        rate=rate,
                        seconds=seconds,
                        meter=CpuMeter(pids),
                    )
                )
            )
            profiler = _profiler(services, run, native) if profile and index == 0 else None
            with sampler.window("saturation"):
                if profiler is not None:
                    profiler.start()
                rounds["saturation"].append(
                    asyncio.run(
                        _phase(
                            run_settings,
                            api_key,
                            f"bench-{run}-saturation-{index}",
                            posts=saturation_posts,
                            meter=CpuMeter(pids),
                        )
                    )
                )
                if profiler is not None:
                    result["profile"] = summarize_profiles(profiler.stop())
        result["end_to_end"] = {name: _repeated(runs) for name, runs in rounds.items()}
        services.stop("worker", "recorder")
        console.print("[bold]4/5 ingest (api only)[/bold]")
        result["ingest"] = _ingest(settings, api_key, single_requests, batch_posts)
        services.stop()
        sampler.stop()
        result["memory"] = sampler.summary()
        if relay:
            console.print("[bold]5/5 relay ceiling: the same posts, a bare relay and COPY[/bold]")
            runs = [
                measure_relay(run_settings, posts=saturation_posts, console=console)
                for _ in range(repeat)
            ]
            result["relay"] = _relay_summary(runs, result["end_to_end"]["saturation"])
    finally:
        if sampler is not None:
            sampler.stop()
        services.stop()
        asyncio.run(delete_topics(run_settings))
    result["results_file"] = str(write_result(result, f"bench-{{stamp}}-{run}.json"))
    return result


def _profiler(services: PipelineServices, run: str, native: bool) -> Profiler:
    pids = {name: pid for name, pid in services.pids().items() if name in PROFILED}
    return Profiler(pids, RESULTS_DIR / f"profile-{run}", native=native)


def _ingest(
    settings: Settings, api_key: str, single_requests: int, batch_posts: int
) -> dict[str, Any]:
    base_url = f"http://127.0.0.1:{settings.api.port}"
    # Many small requests need many connections in flight; batches of 1,000 need few (more
    # would only queue behind Kafka's acknowledgements and time out as 503s).
    single = asyncio.run(
        measure_ingest(
            base_url, api_key, single_requests=single_requests, batch_posts=0, concurrency=32
        )
    )
    batch = asyncio.run(
        measure_ingest(base_url, api_key, single_requests=0, batch_posts=batch_posts, concurrency=4)
    )
    return {
        "single": {**single["single"], "concurrency": 32} if "single" in single else {},
        "batch": {**batch["batch"], "concurrency": 4} if "batch" in batch else {},
    }


def _relay_summary(runs: list[dict[str, Any]], saturation: dict[str, Any]) -> dict[str, Any]:
    """The relay's runs, their spread, and the pipeline's median as a share of their median."""
    ceiling = statistics.median(run["posts_per_second"] for run in runs)
    pipeline = saturation["posts_per_second_spread"]["median"]
    return {
        "runs": runs,
        "posts_per_second_spread": spread([run["posts_per_second"] for run in runs]),
        "pipeline_share_of_ceiling": round(pipeline / ceiling, 3) if ceiling else None,
    }


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"moderation bench {result['run']} ({result['machine']['cpus']} cpus, "
        f"{result['repeat']} run(s) per phase: the median run, min-max across runs)"
    )
    for column in ("measure", "posts/s", "p50 ms", "p95 ms", "p99 ms", "notes"):
        table.add_column(column)
    model = result["model"]
    table.add_row(
        "fast model, one core",
        f"{model['posts_per_second_one_core']:,.0f}",
        "",
        "",
        "",
        model["model_version"],
    )
    cold = result["startup"]["cold"]
    table.add_row(
        "start-up (cold pipeline)",
        f"{cold['posts_per_second']:,.0f}",
        *_latencies(cold),
        f"{cold['posts']} posts; services up in {result['startup']['services_seconds']} s",
    )
    relay = result.get("relay")
    for name in ("fixed_rate", "saturation"):
        e2e = result["end_to_end"][name]
        rates = e2e["posts_per_second_spread"]
        note = f"{e2e['posts']} posts, lost {e2e['lost']}, limit: {e2e['limit']}"
        if name == "fixed_rate":
            note += f", offered {e2e['offered_posts_per_second']}/s"
        elif relay and relay["pipeline_share_of_ceiling"] is not None:
            note += f", {relay['pipeline_share_of_ceiling']:.0%} of the relay ceiling"
        throughput = f"{e2e['posts_per_second']:,.0f} ({rates['min']:,.0f}-{rates['max']:,.0f})"
        table.add_row(f"end to end, {name.replace('_', ' ')}", throughput, *_latencies(e2e), note)
    if relay:
        runs = relay["runs"]
        median = sorted(runs, key=lambda run: run["posts_per_second"])[(len(runs) - 1) // 2]
        rates = relay["posts_per_second_spread"]
        table.add_row(
            "relay ceiling (bare aiokafka + COPY)",
            f"{rates['median']:,.0f} ({rates['min']:,.0f}-{rates['max']:,.0f})",
            *_latencies(median),
            f"{median['posts']} posts, lost {median['lost']}",
        )
    for name in ("single", "batch"):
        phase = result["ingest"].get(name)
        if phase:
            table.add_row(
                f"ingest, {name} requests",
                f"{phase['posts_per_second']:,.0f}",
                *_latencies(phase),
                f"statuses {phase['statuses']}",
            )
    console.print(table)
    cpu = result["end_to_end"]["saturation"].get("cpu")
    if cpu:
        costs = ", ".join(
            f"{name} {micros:,.0f}" for name, micros in cpu["cpu_us_per_post"].items()
        )
        console.print(
            f"CPU per post at saturation (µs): {costs}; total {cpu['cpu_us_per_post_total']:,.0f}"
        )
    render_memory(result["memory"], console, window="saturation")
    console.print(f"[dim]written to {result['results_file']}[/dim]")


def _latencies(phase: dict[str, Any]) -> tuple[str, str, str]:
    latency = phase["latency_ms"]
    return str(latency["p50"]), str(latency["p95"]), str(latency["p99"])
