"""`moderation eval --cascade`: routing and aggregation over stage 1 and the agent.

The agent here is a fake for logic only (no model, no Agents SDK run): it answers by keyword, so
the tests check how `evaluate_cascade` routes and counts what the real `first_stage`,
`second_stage` and `combine` make of its answers. The real agent runs against the LLM server
in `moderation eval --cascade` itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderation import cli
from moderation.classifier.agent import AgentVerdict
from moderation.classifier.cascade import AgentFallback, AgentJudgement, AgentStage, first_stage
from moderation.classifier.fast import store as fast_store
from moderation.classifier.injection.screen import InjectionScreen
from moderation.devtools import demo
from moderation.evaluation import cascade as evaluation_cascade
from moderation.evaluation.cascade import Route, evaluate_cascade, final_routes
from moderation.events import PostSubmitted
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision
from tests.scripted_llm import ScriptedModel, ScriptedProvider, allow_json, remove_json
from tests.unit.test_bench_agent import KeywordScorer


class FakeAgent(AgentStage):
    """A fake agent stage for logic only: answers by keyword instead of running a model.

    `allow-me` allows, `remove-me` removes as spam, `contradict-me` decides remove on safe
    scores (the combined outcome sends it to review), `fail-me` is an unavailable endpoint,
    `crash-me` an unexpected error.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, ScriptedProvider(ScriptedModel([])), None)
        self.model_name = "fake-agent"
        self.judged: list[str] = []

    async def judge(
        self, post: PostSubmitted, stage1_scores: Mapping[Category, float], screen: InjectionScreen
    ) -> AgentJudgement:
        self.judged.append(post.text)
        if "fail-me" in post.text:
            raise AgentFallback("http_503", "scripted")
        if "crash-me" in post.text:
            raise RuntimeError("scripted")
        if "allow-me" in post.text:
            answer = allow_json()
        elif "contradict-me" in post.text:
            answer = json.dumps(json.loads(allow_json()) | {"decision": "remove"})
        else:
            answer = remove_json(Category.SPAM)
        verdict = AgentVerdict.model_validate_json(answer)
        return AgentJudgement(verdict, (), repaired=False, model_name=self.model_name)


RECORDS = [
    {"text": "clear-safe: lovely weather at the lake today", "label": "safe"},
    {"text": "clear-spam: win a free gift card now", "label": "spam"},
    {"text": "clear-safe: a scam the fast model missed", "label": "spam"},  # violating allowed
    {"text": "allow-me: a thank-you note to my neighbour", "label": "safe"},
    {"text": "allow-me: a threat the agent missed", "label": "violence"},  # violating allowed
    {"text": "remove-me: cheap pills at my shop", "label": "spam"},
    {"text": "remove-me: a bake sale flyer", "label": "safe"},  # safe removed
    {"text": "contradict-me: is this fine?", "label": "safe"},
    {"text": "fail-me: buy followers here", "label": "spam"},
    {"text": "crash-me: hello there", "label": "safe"},
]


def test_every_post_ends_in_one_route_and_errors_are_counted_per_label() -> None:
    settings = Settings()
    agent = FakeAgent(settings)

    result = evaluate_cascade(KeywordScorer(), RECORDS, settings, agent=agent)

    assert len(agent.judged) == 7  # every uncertain post, and only those
    assert result.posts == 10 and result.violating_posts == 5 and result.safe_posts == 5
    stage1 = result.stage1
    assert (stage1.allowed, stage1.removed, stage1.to_agent, stage1.review) == (2, 1, 7, 0)
    assert (stage1.violating_allowed, stage1.safe_removed) == (1, 0)
    final = result.final
    assert (final.allowed, final.removed, final.review, final.agent_unavailable) == (4, 3, 1, 2)
    assert final.to_agent == 0
    assert (final.violating_allowed, final.safe_removed) == (2, 1)
    assert result.to_humans == 3
    assert result.agent.model == "fake-agent"
    assert result.agent.sent == 7 and result.agent.answered == 5
    assert result.agent.decisions == {Decision.ALLOW: 2, Decision.REMOVE: 2, Decision.REVIEW: 1}
    assert result.agent.unavailable == {"RuntimeError": 1, "http_503": 1}


def test_an_unavailable_agent_is_never_counted_as_an_allow() -> None:
    settings = Settings()
    records = [{"text": f"fail-me: allow-me {i}", "label": "safe"} for i in range(3)]

    result = evaluate_cascade(KeywordScorer(), records, settings, agent=FakeAgent(settings))

    assert result.final.allowed == 0
    assert result.final.agent_unavailable == 3
    assert result.to_humans == 3
    assert result.agent.unavailable == {"http_503": 3}


def test_final_scores_are_the_agents_where_it_answered_else_stage_ones() -> None:
    settings = Settings()
    records = [
        {"text": "remove-me: cheap pills", "label": "spam"},  # stage 1 unsure, agent: spam
        {"text": "fail-me: cheap pills", "label": "spam"},  # no verdict: stage 1's scores
    ]

    result = evaluate_cascade(KeywordScorer(), records, settings, agent=FakeAgent(settings))

    report = result.final_scores
    assert report.model_version == "keywords-1 + agent fake-agent"
    safe, spam = CATEGORIES.index(Category.SAFE), CATEGORIES.index(Category.SPAM)
    assert report.confusion_matrix[spam][spam] == 1  # the agent's combined scores: spam
    assert report.confusion_matrix[spam][safe] == 1  # stage 1's: P(safe) 0.5 > P(spam) 0.4


def test_a_post_sent_on_without_an_agent_result_is_an_error() -> None:
    settings = Settings()
    first = first_stage(
        [PostSubmitted(post_id="p1", author_id="a", text="unsure")],
        KeywordScorer(),
        settings,
        agent_enabled=True,
    )
    with pytest.raises(ValueError, match="no agent result for p1"):
        final_routes(first, {})
    assert final_routes(first, {"p1": (None, None)}) == (
        [Route.TO_AGENT],
        [Route.AGENT_UNAVAILABLE],
    )


def test_cli_eval_cascade_limit_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings()
    dataset = tmp_path / "posts.jsonl"
    dataset.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    agent = FakeAgent(settings)
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    monkeypatch.setattr(fast_store, "ensure_fast_model", lambda s, progress: KeywordScorer())
    monkeypatch.setattr(evaluation_cascade, "create_agent_stage", lambda s: (agent, close))
    monkeypatch.setattr(demo, "llm_endpoint_answers", lambda s: True)
    runner = CliRunner()

    args = ["eval", "--cascade", "--dataset", str(dataset), "--limit", "5", "--json"]
    answer = runner.invoke(cli.app, args)

    assert answer.exit_code == 0, answer.output
    output = json.loads(answer.stdout)
    assert output["posts"] == 5  # the fast model's report, on the first 5 rows
    assert output["cascade"]["posts"] == 5
    assert output["cascade"]["final"]["allowed"] == 4
    assert output["cascade"]["agent"]["sent"] == 2
    assert closed == [True]
    shown = runner.invoke(cli.app, args[:-1])
    assert shown.exit_code == 0, shown.output
    assert "cascade (final)" in shown.stdout and "violating allowed" in shown.stdout
    assert runner.invoke(cli.app, ["eval", "--limit", "5"]).exit_code == 1
    assert runner.invoke(cli.app, ["eval", "--cascade", "--loso"]).exit_code == 1
