"""The cascade through the real stack: Kafka, PostgreSQL, Dapr, the worker, the recorder and
the agent service (one durable Dapr workflow per uncertain post) as processes, and the real
local LLM server (llama.cpp + SmolLM2-135M) behind a fault-injecting proxy.

The worker runs with thresholds no fast-model score can pass, so every post goes to the agent:
these tests are about stage 2. The model is tiny: they prove the wiring and the safety of every
failure path, not the model's judgement.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.models import Review, Verdict
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.llm import LLMServer
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import PostSubmitted, ReviewDecided
from moderation.settings import Settings
from moderation.taxonomy import Category, Decision, Stage
from tests import crud_helpers
from tests.integration.llm_faults import FaultProxy
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration

INJECTION_POSTS = Path(__file__).resolve().parents[1] / "data" / "injection_posts.jsonl"
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def cascade_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "agent") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def proxy(settings: Settings, llm: LLMServer) -> Iterator[FaultProxy]:
    running = FaultProxy(settings.llm.base_url)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def services(
    cascade_settings: Settings, proxy: FaultProxy, postgres: PostgresCluster, dapr: DaprRuntime
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        cascade_settings,
        extra_env={
            "MODERATION_LLM__BASE_URL": proxy.base_url,
            # Every post is uncertain and goes to the agent.
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_AGENT__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "MODERATION_AGENT__BACKOFF_INITIAL_SECONDS": "0.2",
            "MODERATION_AGENT__BACKOFF_MAX_SECONDS": "1",
            "MODERATION_AGENT__CONCURRENCY": "2",
            # One llama.cpp server on 2 cores answers one request at a time (10-20 s a run).
            "MODERATION_AGENT__TIMEOUT_SECONDS": "300",
            "MODERATION_AGENT__BATCH_DEADLINE_SECONDS": "900",
            # llama.cpp's "auto" lets SmolLM2 skip the tools; "required" makes the first turn
            # call one (the adapter names the first tool), then "auto" as usual.
            "MODERATION_AGENT__TOOL_CHOICE": "required",
            # The fault tests fail many runs in a row; they test retries, not the breaker.
            "MODERATION_AGENT__BREAKER_FAILURES": "1000",
        },
    )
    with running_services(running, "recorder", "worker", "agent", dapr=dapr):
        yield running


def outcomes(
    engine: Engine, post_ids: list[str]
) -> dict[str, tuple[Verdict | None, Review | None]]:
    """post_id → (its agent verdict, its review), for the posts that have either."""
    with Session(engine) as session:
        verdicts = {
            v.post_id: v
            for v in session.exec(
                select(Verdict).where(
                    col(Verdict.post_id).in_(post_ids), col(Verdict.stage) == Stage.AGENT.value
                )
            )
        }
        reviews = {
            r.post_id: r
            for r in session.exec(select(Review).where(col(Review.post_id).in_(post_ids)))
        }
    return {
        post_id: (verdicts.get(post_id), reviews.get(post_id))
        for post_id in post_ids
        if post_id in verdicts or post_id in reviews
    }


def wait_for_outcomes(
    engine: Engine, post_ids: list[str], timeout: float
) -> dict[str, tuple[Verdict | None, Review | None]]:
    """Wait until every post has an agent verdict that is final, or a review."""
    deadline = time.monotonic() + timeout
    found: dict[str, tuple[Verdict | None, Review | None]] = {}
    while time.monotonic() < deadline:
        found = outcomes(engine, post_ids)
        settled = [
            p
            for p, (verdict, review) in found.items()
            if review is not None or (verdict is not None and verdict.decision != "review")
        ]
        if len(settled) == len(post_ids):
            return found
        time.sleep(0.5)
    raise AssertionError(f"{len(found)} of {len(post_ids)} posts settled in {timeout:.0f}s")


def stage1_decisions(engine: Engine, post_ids: list[str]) -> dict[str, str]:
    with Session(engine) as session:
        return {
            v.post_id: v.decision
            for v in crud_helpers.list_verdicts(session, post_ids=post_ids, stage=Stage.MODEL)
        }


def metric_total(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def posts(prefix: str, texts: list[str], author: str) -> list[PostSubmitted]:
    return [
        PostSubmitted(post_id=f"{prefix}-{i}", text=text, author_id=author)
        for i, text in enumerate(texts)
    ]


@pytest.mark.timeout(600)
async def test_uncertain_posts_get_an_agent_verdict_and_the_agent_uses_its_tools(
    services: PipelineServices,
    cascade_settings: Settings,
    proxy: FaultProxy,
    read_model: Engine,
    unique: str,
) -> None:
    author = f"author-{unique}"
    precedent = PostSubmitted(
        post_id=f"prec-{unique}", text="Win a free cruise, call 0900 now", author_id=author
    )
    decided = ReviewDecided(
        post_id=precedent.post_id, label=Category.SPAM, decision=Decision.REMOVE, moderator_id="m1"
    )
    with Session(read_model) as session:
        crud.record_events(session, events=[precedent, decided])
    proxy.set_mode("pass")
    port = cascade_settings.agent_service.service_port
    tool_calls_before = metric_total(port, "moderation_agent_tool_calls_total")
    batch = posts(
        f"ok-{unique}",
        [
            "Win a free cruise today, call 0900 123 to claim your prize",
            "The farmers market moves to Saturday mornings from next week.",
            "Anyone up for a game of chess in the park tomorrow?",
            "Our bakery opens at 7 on Sundays now, see you there!",
        ],
        author,
    )
    await produce(cascade_settings, batch)
    found = await asyncio.to_thread(wait_for_outcomes, read_model, [p.post_id for p in batch], 480)

    # SmolLM2-135M sometimes writes JSON that fails the schema twice: that post goes to review
    # (the fallback under test below); the others carry the agent's verdict.
    verdicts = [verdict for verdict, _ in found.values() if verdict is not None]
    assert verdicts, "no post got an agent verdict"
    for verdict, review in found.values():
        # A review next to an agent verdict is the combination's call (uncertain, always-review
        # category, disagreement); without one, only the tiny model's invalid JSON is expected.
        assert verdict is not None or (
            review is not None and review.reason.startswith("agent unavailable (invalid_output)")
        ), review
    for verdict in verdicts:
        assert verdict.model_version == cascade_settings.llm.model
        assert verdict.policy_version == cascade_settings.models.policy_version
        assert set(verdict.scores) == {c.value for c in Category}
        assert 0.0 <= verdict.confidence <= 1.0
    assert all(d == "review" for d in stage1_decisions(read_model, list(found)).values())
    assert metric_total(port, "moderation_agent_tool_calls_total") > tool_calls_before


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("mode", "reason", "requests_per_post"),
    [
        ("500", "http_500", MAX_ATTEMPTS),
        ("429", "http_429", MAX_ATTEMPTS),
        ("garbage", "invalid_output", 2),
    ],
)
async def test_llm_failures_are_retried_then_reviewed_never_allowed(
    services: PipelineServices,
    cascade_settings: Settings,
    proxy: FaultProxy,
    read_model: Engine,
    unique: str,
    mode: str,
    reason: str,
    requests_per_post: int,
) -> None:
    batch = posts(f"{mode}-{unique}", ["Is this a good deal?", "Meet me at the station."], "f1")
    seen_before = proxy.set_mode(mode)  # type: ignore[arg-type]
    try:
        await produce(cascade_settings, batch)
        found = await asyncio.to_thread(
            wait_for_outcomes, read_model, [p.post_id for p in batch], 240
        )
        seen = proxy.set_mode("pass") - seen_before
    finally:
        proxy.set_mode("pass")

    for post_id, (verdict, review) in found.items():
        assert verdict is None, f"{post_id}: no agent verdict from a failing LLM"
        assert review is not None and review.reason.startswith(f"agent unavailable ({reason})")
    assert set(stage1_decisions(read_model, list(found)).values()) == {"review"}
    # Retried (500, 429) or repaired once (garbage) before giving up, for every post.
    assert seen >= requests_per_post * len(batch)
    with Session(read_model) as session:
        statuses = crud_helpers.post_statuses(session, post_ids=list(found))
    assert set(statuses.values()) == {"in_review"}


@pytest.mark.timeout(600)
async def test_llm_server_stopped_mid_run_sends_posts_to_review_and_loses_none(
    services: PipelineServices,
    cascade_settings: Settings,
    settings: Settings,
    proxy: FaultProxy,
    read_model: Engine,
    unique: str,
) -> None:
    server = LLMServer(settings)
    batch = posts(f"down-{unique}", [f"Selling my old bike, number {i}" for i in range(4)], "d1")
    seen_before = proxy.set_mode("pass")
    await produce(cascade_settings, batch)
    await asyncio.to_thread(
        wait_for, lambda: proxy.chat_requests > seen_before, 120, "the agent's first call"
    )
    server.adapter.stop()  # the endpoint the agent talks to goes away mid-run
    try:
        found = await asyncio.to_thread(
            wait_for_outcomes, read_model, [p.post_id for p in batch], 300
        )
    finally:
        server.start()

    assert len(found) == len(batch), "no post lost"
    unavailable = 0
    for verdict, review in found.values():
        if verdict is None:
            assert review is not None
            assert review.reason.startswith("agent unavailable (http_502)"), review.reason
            unavailable += 1
        # Whatever the agent managed before the stop is a real verdict; nothing else is allowed.
    assert unavailable >= 1


@pytest.mark.timeout(900)
async def test_injection_posts_are_never_allowed(
    services: PipelineServices,
    cascade_settings: Settings,
    proxy: FaultProxy,
    read_model: Engine,
    unique: str,
) -> None:
    """One post per technique reaches the real agent (stage 1 can decide nothing here).

    The whole set runs through the same cascade in `moderation bench --agent` (about 15 s per
    post on this server); every post of it is in the unit tests with a compromised agent.
    """
    every = [json.loads(line) for line in INJECTION_POSTS.read_text().splitlines() if line]
    rows = list({row["technique"]: row for row in reversed(every)}.values())
    batch = [
        PostSubmitted(post_id=f"inj-{unique}-{row['id']}", text=row["text"], author_id="inj")
        for row in rows
    ]
    proxy.set_mode("pass")
    await produce(cascade_settings, batch)
    found = await asyncio.to_thread(wait_for_outcomes, read_model, [p.post_id for p in batch], 1500)

    final = {
        post_id: (verdict.decision if verdict is not None else "review (agent unavailable)")
        for post_id, (verdict, _) in found.items()
    }
    tally = {decision: list(final.values()).count(decision) for decision in set(final.values())}
    print(f"\ninjection sample: {len(rows)} posts through the real agent: {tally}")  # noqa: T201
    assert len(every) >= 30 and len(rows) >= 6
    assert len(found) == len(rows)
    assert [p for p, decision in final.items() if decision == "allow"] == []
    judged = [p for p, (verdict, _) in found.items() if verdict is not None]
    assert judged, "no injection post reached a working agent: the test proved nothing"
