"""How fast the agent stage ran: run timings, Prometheus counter deltas, throughput and latency."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY

from moderation.classifier.agent import AgentVerdict
from moderation.classifier.cascade import AgentStage
from moderation.classifier.injection.screen import InjectionScreen
from moderation.devtools.bench.report import latency_percentiles
from moderation.events import PostSubmitted
from moderation.taxonomy import Category


def counter_values(name: str, label: str) -> dict[str, float]:
    """The current value of every child of the counter `name` (with `_total`), by `label`."""
    values: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and label in sample.labels:
                values[sample.labels[label]] = sample.value
    return values


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    """What each child of a counter gained (children that gained nothing are left out)."""
    gained = {key: round(value - before.get(key, 0.0)) for key, value in after.items()}
    return {key: value for key, value in sorted(gained.items()) if value}


@dataclass
class CounterSnapshot:
    """The agent's and the model provider's counters at one moment."""

    llm_calls: dict[str, float]
    tool_calls: dict[str, float]
    repairs: float

    @classmethod
    def take(cls) -> CounterSnapshot:
        return cls(
            llm_calls=counter_values("moderation_llm_calls_total", "outcome"),
            tool_calls=counter_values("moderation_agent_tool_calls_total", "tool"),
            repairs=REGISTRY.get_sample_value("moderation_agent_repairs_total") or 0.0,
        )


def _mean_ms(latencies_ms: Sequence[float]) -> float:
    return round(sum(latencies_ms) / len(latencies_ms), 2) if latencies_ms else 0.0


def agent_performance(
    *,
    posts: int,
    wall_seconds: float,
    answered_seconds: Sequence[float],
    failed_seconds: Sequence[float],
    before: CounterSnapshot,
    after: CounterSnapshot,
) -> dict[str, Any]:
    """Throughput over the phase's wall time, latency per run, model and tool calls per run.

    `posts` went through the agent stage (fallbacks included); `answered_seconds` and
    `failed_seconds` are the durations of the runs that gave a verdict and of those that started
    but gave none (timeout, errors, invalid output). Circuit-open fallbacks start no run.
    Throughput and latency are the answered runs'; the Agents SDK counts tool calls only for
    answered runs, model calls for every run.
    """
    llm_calls = counter_delta(before.llm_calls, after.llm_calls)
    tool_calls = counter_delta(before.tool_calls, after.tool_calls)
    answered = len(answered_seconds)
    started = answered + len(failed_seconds)
    answered_ms = [seconds * 1000 for seconds in answered_seconds]
    failed_ms = [seconds * 1000 for seconds in failed_seconds]

    def rate(count: int, per: float) -> float:
        return round(per * count / wall_seconds, 4 if per == 1 else 2) if wall_seconds else 0.0

    def ratio(total: float, count: int) -> float | None:
        return round(total / count, 2) if count else None

    return {
        "posts": posts,
        "runs_started": started,
        "runs_answered": answered,
        "runs_failed": len(failed_seconds),
        "wall_seconds": round(wall_seconds, 3),
        "answered_per_second": rate(answered, 1),
        "answered_per_minute": rate(answered, 60),
        "posts_per_minute": rate(posts, 60),
        "latency_ms": {"mean": _mean_ms(answered_ms), **latency_percentiles(answered_ms)},
        "failed_run_ms": {
            "mean": _mean_ms(failed_ms),
            "max": round(max(failed_ms, default=0.0), 2),
        },
        "llm_calls": llm_calls,
        "llm_calls_per_started_run": ratio(sum(llm_calls.values()), started),
        "tool_calls": tool_calls,
        "tool_calls_per_answered_run": ratio(sum(tool_calls.values()), answered),
        "repairs": round(after.repairs - before.repairs),
    }


class TimedAgentStage(AgentStage):
    """The agent stage, timing each run from the moment it holds a slot until it ends.

    Waiting for a slot is left out (a chunk holds more posts than slots). Runs that fail, time
    out or are cancelled are timed apart from those that answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered_seconds: list[float] = []
        self.failed_seconds: list[float] = []

    async def _run(
        self,
        post: PostSubmitted,
        stage1_scores: Mapping[Category, float],
        screen: InjectionScreen,
        model_name: str,
    ) -> tuple[AgentVerdict, tuple[str, ...], bool, bool]:
        started = time.perf_counter()
        try:
            answer = await super()._run(post, stage1_scores, screen, model_name)
        except BaseException:
            self.failed_seconds.append(time.perf_counter() - started)
            raise
        self.answered_seconds.append(time.perf_counter() - started)
        return answer
