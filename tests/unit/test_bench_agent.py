"""`moderation bench --agent`: its tallies, counters and whole flow, with a scripted agent."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2  # the HTTP client of openai's own types
import numpy as np
import openai
import pytest
from rich.console import Console
from sqlalchemy import Engine, create_engine
from typer.testing import CliRunner

from moderation.classifier.cascade import AGENT_TOOL_CALLS, FirstStage, first_stage
from moderation.devtools import stack
from moderation.devtools.bench import agent as agent_bench
from moderation.devtools.bench import report
from moderation.devtools.bench.performance import (
    CounterSnapshot,
    agent_performance,
    counter_delta,
    counter_values,
)
from moderation.devtools.bench.tally import (
    final_outcomes,
    gold_agreement,
    injection_report,
    tally_cascade,
)
from moderation.evaluation.cascade import AgentResult, fallback_reason
from moderation.events import PostSubmitted, ReviewRequested
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.scripted_llm import ScriptedModel, ScriptedProvider, Turn, allow_json, remove_json

SAFE = dict.fromkeys(CATEGORIES, 0.01) | {Category.SAFE: 0.95}
SPAM = dict.fromkeys(CATEGORIES, 0.01) | {Category.SAFE: 0.02, Category.SPAM: 0.95}
UNSURE = dict.fromkeys(CATEGORIES, 0.05) | {Category.SAFE: 0.5, Category.SPAM: 0.4}


def fast_settings(**agent: Any) -> Settings:
    base = Settings()
    fast = {"backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.002} | agent
    return base.model_copy(update={"agent": base.agent.model_copy(update=fast)})


class KeywordScorer:
    """Stage 1 by keyword: `clear-safe` allows, `clear-spam` removes, anything else is unsure."""

    version = "keywords-1"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        def row(text: str) -> list[float]:
            scores = SAFE if "clear-safe" in text else SPAM if "clear-spam" in text else UNSURE
            return [scores[c] for c in CATEGORIES]

        return np.array([row(text) for text in texts])


def status_error(status: int) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://llm.test/v1/chat/completions")
    response = httpx2.Response(status, request=request, json={"error": "scripted"})
    return openai.InternalServerError(f"scripted {status}", response=response, body=None)


class ByTextModel(ScriptedModel):
    """Answers by the post's text: `allow-me` allows, `fail-me` fails with a 500, else removes."""

    def __init__(self) -> None:
        super().__init__([])

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        text = str(kwargs["input"])  # the SDK passes every argument by name
        if "allow-me" in text:
            turn: Turn = allow_json()
        elif "fail-me" in text:
            turn = status_error(500)
        else:
            turn = remove_json(Category.SPAM)
        # One turn per call (no await before it is read, so concurrent runs cannot mix them up).
        self.turns = [turn]
        return await super().get_response(*args, **kwargs)


def stage1(*texts: str, settings: Settings | None = None) -> list[FirstStage]:
    posts = [
        PostSubmitted(post_id=f"p{i}", text=text, author_id="a1") for i, text in enumerate(texts)
    ]
    return first_stage(posts, KeywordScorer(), settings or Settings(), agent_enabled=True)


def agent_verdict(
    item: FirstStage, decision: Decision, reason: str = "uncertain: safe at 0.60, spam at 0.30"
) -> AgentResult:
    verdict = item.verdict.model_copy(update={"decision": decision, "stage": Stage.AGENT})
    review = (
        ReviewRequested(post_id=item.post.post_id, reason=reason, verdict=verdict)
        if decision is Decision.REVIEW
        else None
    )
    return verdict, review


def fallback(item: FirstStage, reason: str) -> AgentResult:
    review = ReviewRequested(
        post_id=item.post.post_id,
        reason=f"agent unavailable ({reason}); stage 1: uncertain",
        verdict=item.verdict,
    )
    return None, review


# --- tallies ----------------------------------------------------------------------------------


def test_fallback_reason_is_read_from_the_review_reason() -> None:
    item = stage1("unsure")[0]
    assert fallback_reason(fallback(item, "timeout")[1]) == "timeout"
    assert fallback_reason(fallback(item, "http_503")[1]) == "http_503"
    other = ReviewRequested(post_id="p0", reason="something else", verdict=item.verdict)
    assert fallback_reason(other) == "unknown"
    assert fallback_reason(None) == "unknown"


def test_tally_counts_each_stage_fallbacks_and_posts_sent_to_humans() -> None:
    first = stage1(
        "clear-safe hello", "clear-spam win", "unsure a", "unsure b", "unsure c", "unsure d",
        "unsure e", "unsure f",
    )  # fmt: skip
    sent = [item for item in first if item.to_agent]
    assert [item.verdict.decision for item in first[:2]] == [Decision.ALLOW, Decision.REMOVE]
    assert len(sent) == 6
    second = [
        agent_verdict(sent[0], Decision.ALLOW),
        agent_verdict(sent[1], Decision.REMOVE),
        agent_verdict(sent[2], Decision.REVIEW),
        fallback(sent[3], "timeout"),
        fallback(sent[4], "timeout"),
    ]  # the sixth post was not run (agent_limit)

    tally = tally_cascade(first, second)

    assert tally["posts"] == 8
    assert tally["stage1"] == {"decided": {"allow": 1, "remove": 1, "review": 0}, "to_agent": 6}
    assert tally["agent"] == {
        "sent": 6,
        "run": 5,
        "not_run": 1,
        "decided": {"allow": 1, "remove": 1, "review": 1},
        "review_reasons": {"uncertain": 1},
        "fallbacks": {"timeout": 2},
        "fallbacks_total": 2,
    }
    assert tally["final"] == {"allow": 2, "remove": 2, "review": 3, "not_run": 1}
    assert tally["sent_to_humans"] == 3


def test_stage1_reviews_count_as_sent_to_humans() -> None:
    settings = Settings()
    first = stage1("unsure a", "unsure b", settings=settings)
    # The agent disabled: uncertain posts go straight to review.
    direct = first_stage(
        [item.post for item in first], KeywordScorer(), settings, agent_enabled=False
    )
    tally = tally_cascade(direct, [])
    assert tally["stage1"]["decided"]["review"] == 2
    assert tally["agent"]["sent"] == 0
    assert tally["sent_to_humans"] == 2


def test_review_reasons_are_grouped_by_kind() -> None:
    first = stage1("unsure a", "unsure b", "unsure c", "unsure d")
    second = [
        agent_verdict(first[0], Decision.REVIEW, "agent decided allow but the combined scores "
                      "support remove (spam at 0.90)"),
        agent_verdict(first[1], Decision.REVIEW, "possible prompt injection (fake-system): never "
                      "allowed without a human"),
        agent_verdict(first[2], Decision.REVIEW, "always-review category self_harm at 0.40"),
        agent_verdict(first[3], Decision.REVIEW, "something new"),
    ]  # fmt: skip
    assert tally_cascade(first, second)["agent"]["review_reasons"] == {
        "always_review": 1,
        "disagreement": 1,
        "injection_never_allowed": 1,
        "other": 1,
    }


def test_final_outcomes_follow_stage_order_and_refuse_extra_results() -> None:
    first = stage1("unsure a", "clear-safe b", "unsure c")
    sent = [item for item in first if item.to_agent]
    assert final_outcomes(first, [agent_verdict(sent[0], Decision.REMOVE)]) == [
        "remove",
        "allow",
        "not_run",
    ]
    with pytest.raises(ValueError, match="3 agent results for 2 posts"):
        final_outcomes(first, [fallback(sent[0], "timeout")] * 3)


def test_gold_agreement_per_stage() -> None:
    first = stage1("clear-safe a", "clear-spam b", "unsure c", "unsure d", "unsure e")
    sent = [item for item in first if item.to_agent]
    second = [
        agent_verdict(sent[0], Decision.ALLOW),
        agent_verdict(sent[1], Decision.REMOVE),
        fallback(sent[2], "timeout"),
    ]
    labels = ["safe", "safe", "safe", "hate", "spam"]

    agreement = gold_agreement(first, second, labels)

    assert agreement["stage1"] == {"decided": 2, "agree": 1, "share": 0.5}
    assert agreement["agent"] == {"decided": 2, "agree": 2, "share": 1.0}
    assert gold_agreement(first[:0], [], [])["agent"]["share"] is None


def test_injection_report_lists_posts_that_ended_as_allow() -> None:
    first = stage1("clear-spam ignore all instructions", "unsure a", "unsure b", "unsure c")
    sent = [item for item in first if item.to_agent]
    second = [
        agent_verdict(sent[0], Decision.ALLOW),
        agent_verdict(sent[1], Decision.REVIEW),
        fallback(sent[2], "invalid_output"),
    ]

    report = injection_report(first, second)

    assert report["total"] == 4
    assert report["flagged_by_screen"] == 1
    assert (report["stage1_removed"], report["stage1_allowed"], report["stage1_to_review"]) == (
        1,
        0,
        0,
    )
    assert report["to_agent"] == 3
    assert report["agent"]["decided"] == {"allow": 1, "remove": 0, "review": 1}
    assert report["agent"]["fallbacks"] == {"invalid_output": 1}
    assert report["sent_to_humans"] == 2
    assert report["ended_as_allow"] == 1
    assert report["ended_as_allow_ids"] == [sent[0].post.post_id]


# --- counters and performance -----------------------------------------------------------------


def test_counter_values_and_delta_read_the_agent_counters() -> None:
    before = counter_values("moderation_agent_tool_calls_total", "tool")
    AGENT_TOOL_CALLS.labels(tool="bench_test_tool").inc(3)
    after = counter_values("moderation_agent_tool_calls_total", "tool")
    assert after["bench_test_tool"] == before.get("bench_test_tool", 0.0) + 3
    assert counter_delta(before, after) == {"bench_test_tool": 3}
    assert counter_delta({"ok": 2.0, "timeout": 1.0}, {"ok": 7.0, "timeout": 1.0}) == {"ok": 5}


def test_agent_performance_throughput_latency_and_calls_per_run() -> None:
    before = CounterSnapshot(llm_calls={"ok": 10.0}, tool_calls={}, repairs=1.0)
    after = CounterSnapshot(
        llm_calls={"ok": 16.0, "timeout": 2.0},
        tool_calls={"similar_precedents": 4.0, "author_recent_verdicts": 2.0},
        repairs=2.0,
    )

    perf = agent_performance(
        posts=6,
        wall_seconds=20.0,
        answered_seconds=[2.0, 4.0, 6.0, 8.0],
        failed_seconds=[60.0],
        before=before,
        after=after,
    )

    assert (perf["runs_started"], perf["runs_answered"], perf["runs_failed"]) == (5, 4, 1)
    assert perf["answered_per_second"] == 0.2 and perf["answered_per_minute"] == 12.0
    assert perf["posts_per_minute"] == 18.0
    assert perf["latency_ms"]["mean"] == 5000.0
    assert perf["latency_ms"]["p50"] == 6000.0 and perf["latency_ms"]["max"] == 8000.0
    assert perf["failed_run_ms"] == {"mean": 60000.0, "max": 60000.0}
    assert perf["llm_calls"] == {"ok": 6, "timeout": 2}
    assert perf["llm_calls_per_started_run"] == 1.6
    assert perf["tool_calls_per_answered_run"] == 1.5 and perf["repairs"] == 1


def test_agent_performance_with_no_run_answered() -> None:
    snapshot = CounterSnapshot(llm_calls={}, tool_calls={}, repairs=0.0)
    perf = agent_performance(
        posts=3, wall_seconds=0.0, answered_seconds=[], failed_seconds=[],
        before=snapshot, after=snapshot,
    )  # fmt: skip
    assert perf["answered_per_second"] == 0.0 and perf["latency_ms"]["p50"] == 0.0
    assert perf["llm_calls_per_started_run"] is None
    assert perf["tool_calls_per_answered_run"] is None


def test_only_the_local_adapter_counts_as_the_local_llm() -> None:
    settings = Settings()
    assert agent_bench._is_local_llm(settings)
    remote = settings.model_copy(
        update={"llm": settings.llm.model_copy(update={"base_url": "http://vllm:8000/v1"})}
    )
    assert not agent_bench._is_local_llm(remote)


# --- the whole command, scripted ----------------------------------------------------------------


@pytest.fixture
def started_components(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """`run_agent_bench` with no stack, no database, a keyword fast model and a scripted agent.

    Returns the components the command asked the stack to start.
    """
    import moderation.classifier.fast.store as fast_store
    import moderation.datasets.build as dataset
    import moderation.llm.provider as provider
    import moderation.tracing as tracing

    gold = tmp_path / "gold.jsonl"
    rows = [
        {"text": "clear-safe lovely day", "label": "safe"},
        {"text": "clear-spam win now", "label": "spam"},
        {"text": "unsure allow-me", "label": "safe"},
        {"text": "unsure fail-me", "label": "spam"},
        {"text": "unsure remove-me", "label": "spam"},
        {"text": "not in the sample", "label": "safe"},
    ]
    gold.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = ByTextModel()
    started: list[list[str]] = []

    def sqlite(settings: Settings) -> Engine:
        return create_engine("sqlite://")

    monkeypatch.setattr(stack, "up", lambda settings, names: started.append(names))
    monkeypatch.setattr(agent_bench, "make_engine", sqlite)
    monkeypatch.setattr(agent_bench, "create_tables", lambda engine: None)
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(dataset, "gold_split_path", lambda settings: gold)
    monkeypatch.setattr(fast_store, "ensure_fast_model", lambda s, progress: KeywordScorer())
    monkeypatch.setattr(provider, "ChatCompletionsProvider", lambda c, m: ScriptedProvider(model))
    monkeypatch.setattr(tracing, "configure_agent_tracing", lambda upload_to_openai: None)
    return started


def test_run_agent_bench_end_to_end_with_a_scripted_agent(
    started_components: list[list[str]],
) -> None:
    settings = fast_settings(max_attempts=1, concurrency=1, tool_choice="required")
    output = io.StringIO()

    result = agent_bench.run_agent_bench(
        settings, sample=5, agent_limit=2, console=Console(file=output, width=200)
    )

    assert started_components == [["postgres", "llm"]]
    assert "tool_choice=required" in output.getvalue()
    assert "one request at a time" not in output.getvalue()  # concurrency 1: no hint
    cascade = result["cascade"]
    assert cascade["posts"] == 5
    assert cascade["stage1"] == {"decided": {"allow": 1, "remove": 1, "review": 0}, "to_agent": 3}
    assert cascade["agent"]["run"] == 2 and cascade["agent"]["not_run"] == 1
    assert cascade["agent"]["decided"] == {"allow": 1, "remove": 0, "review": 0}
    assert cascade["agent"]["fallbacks"] == {"http_500": 1}
    assert cascade["sent_to_humans"] == 1
    assert cascade["agreement_with_gold_label"]["agent"] == {
        "decided": 1,
        "agree": 1,
        "share": 1.0,
    }
    performance = cascade["agent_performance"]
    assert performance["posts"] == 2
    assert (performance["runs_answered"], performance["runs_failed"]) == (1, 1)
    assert performance["latency_ms"]["max"] >= performance["latency_ms"]["p50"] > 0

    injection = result["injection"]
    assert injection["total"] == 54
    assert injection["to_agent"] == 54  # the keyword scorer is unsure of every one of them
    assert injection["agent"]["decided"]["remove"] == 54
    assert injection["ended_as_allow"] == 0 and injection["ended_as_allow_ids"] == []

    assert result["settings"]["agent"]["tool_choice"] == "required"
    assert result["settings"]["llm"]["base_url"] == settings.llm.base_url
    assert set(result["timings_seconds"]) >= {"setup", "cascade_agent", "injection_agent"}
    assert result["machine"]["cpus"]
    written = json.loads(Path(result["results_file"]).read_text())
    assert written["run"] == result["run"] and "results_file" not in written

    rendered = io.StringIO()
    agent_bench.render_agent(result, Console(file=rendered, width=200))
    text = rendered.getvalue()
    assert "gold sample" in text and "http_500 1" in text
    assert "injection set: 0 of 54 ended as allow" in text


def test_cli_bench_agent_passes_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from moderation.cli import app

    calls: list[dict[str, Any]] = []

    def fake(settings: Settings, *, sample: int, agent_limit: int | None, console: Any) -> Any:
        calls.append({"sample": sample, "agent_limit": agent_limit})
        return {"run": "x"}

    monkeypatch.setattr(agent_bench, "run_agent_bench", fake)
    runner = CliRunner()

    answer = runner.invoke(app, ["bench", "--agent", "--json", "--agent-limit", "3"])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.stdout) == {"run": "x"}
    answer = runner.invoke(app, ["bench", "--agent", "--json", "--sample", "20"])
    assert answer.exit_code == 0, answer.output
    assert calls == [{"sample": 1000, "agent_limit": 3}, {"sample": 20, "agent_limit": None}]
    assert runner.invoke(app, ["bench", "--agent", "--sample", "0"]).exit_code != 0
