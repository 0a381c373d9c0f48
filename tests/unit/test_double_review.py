"""Double review and reviewer agreement (issue 15): a share of reviews judged by two moderators,
a third one settling a disagreement, and Cohen's kappa per category on the metrics overview.

On SQLite with the fake workflow gateway of `test_reviews_api`; the review workflow's persist
activity (`crud.record_human_decision`) is run by hand where a decision must be recorded. The
real-stack path is `tests/integration/test_double_review_real.py`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sklearn.metrics import cohen_kappa_score  # type: ignore[import-untyped]
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import ReviewStatus
from moderation.events import ReviewDecided
from moderation.services.api import build_app
from moderation.services.api.deps import get_workflows
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings
from moderation.taxonomy import Category
from tests.unit.test_bulk_reviews_api import actions, review, seed
from tests.unit.test_reviews_api import FakeWorkflows, make_key

REMOVE_SPAM = {"label": "spam", "decision": "remove", "note": "first-judgement-note"}
REMOVE_HARASSMENT = {"label": "harassment", "decision": "remove"}
ALLOW = {"label": "safe", "decision": "allow"}


@pytest.fixture
def settings() -> Settings:
    settings = Settings()
    settings.review.double_review_share = 1.0  # every review: the flow is what is tested
    return settings


@pytest.fixture
def workflows() -> FakeWorkflows:
    return FakeWorkflows()


@pytest.fixture
def app(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, workflows: FakeWorkflows
) -> Iterator[FastAPI]:
    app = build_app(settings, publisher=publisher, engine=engine)
    app.dependency_overrides[get_workflows] = lambda: workflows
    yield app


@pytest.fixture
def keys(engine: Engine) -> dict[str, dict[str, str]]:
    names = ("alice", "bob", "carol")
    keys = {name: make_key(engine, "moderate", name=name) for name in names}
    keys["root"] = make_key(engine, "admin", name="root")
    return keys


async def decide(
    client: httpx.AsyncClient, review_id: str, key: dict[str, str], body: dict[str, Any]
) -> httpx.Response:
    claimed = await client.post(f"/v1/reviews/{review_id}/claim", headers=key)
    assert claimed.status_code == 200, claimed.text
    return await client.post(f"/v1/reviews/{review_id}/decision", headers=key, json=body)


def persist(engine: Engine, workflows: FakeWorkflows) -> None:
    """What the review workflow does with each decision raised to it: record it."""
    with Session(engine) as session:
        for _review_id, payload in workflows.raised:
            crud.record_human_decision(session, event=ReviewDecided.model_validate(payload))


# --- which reviews: a hash of the review id ----------------------------------------------------


def test_the_share_of_double_reviewed_reviews_follows_the_setting_and_is_stable() -> None:
    ids = [f"review-post-{i}" for i in range(20_000)]
    assert not any(crud.is_double_reviewed(review_id, 0.0) for review_id in ids)
    assert all(crud.is_double_reviewed(review_id, 1.0) for review_id in ids)
    picked = [review_id for review_id in ids if crud.is_double_reviewed(review_id, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    # The same reviews on every call (every replica, every retry), and nested as the share grows.
    assert picked == [review_id for review_id in ids if crud.is_double_reviewed(review_id, 0.1)]
    assert all(crud.is_double_reviewed(review_id, 0.2) for review_id in picked)


# --- Cohen's kappa -----------------------------------------------------------------------------


def test_kappa_matches_scikit_learn_on_random_raters() -> None:
    rng = random.Random(7)
    labels = ["safe", "spam", "harassment", "violence"]
    for _ in range(50):
        size = rng.randint(2, 60)
        first = [rng.choice(labels) for _ in range(size)]
        # A second rater who mostly agrees, so kappa spans low to high values.
        agree = rng.random()
        second = [a if rng.random() < agree else rng.choice(labels) for a in first]
        expected = cohen_kappa_score(first, second)
        got = crud.cohen_kappa(list(zip(first, second, strict=True)))
        if expected != expected:  # sklearn's nan: chance explains everything
            assert got is None
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_kappa_of_a_textbook_example_and_the_undefined_cases() -> None:
    # Two raters, 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no (Wikipedia's example).
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert crud.cohen_kappa(pairs) == pytest.approx(0.4)
    assert crud.cohen_kappa([]) is None
    assert crud.cohen_kappa([("spam", "spam")] * 5) is None  # one label only: undefined
    assert crud.cohen_kappa([("spam", "safe"), ("safe", "spam")]) == pytest.approx(-1.0)


# --- the flow through the API ------------------------------------------------------------------


async def test_two_agreeing_moderators_decide_a_review_the_first_one_only_votes(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "p1")
    first = await decide(client, review_id, keys["alice"], REMOVE_SPAM)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "awaiting_second_review"
    assert workflows.raised == []  # nothing decided yet
    view = review(engine, review_id)
    assert view.status is ReviewStatus.PENDING and view.review.claimed_by is None
    shown = await client.get(f"/v1/reviews/{review_id}", headers=keys["bob"])
    assert shown.json()["votes"] == 1
    assert "first-judgement-note" not in shown.text  # blind: the first judgement is not shown

    # The first moderator may not take it again, by id or from the queue.
    again = await client.post(f"/v1/reviews/{review_id}/claim", headers=keys["alice"])
    assert again.status_code == 409
    assert "another moderator" in again.json()["detail"]
    nothing = await client.post("/v1/reviews/claim-next", headers=keys["alice"])
    assert nothing.status_code == 204

    second = await decide(client, review_id, keys["bob"], REMOVE_SPAM)
    assert second.status_code == 202, second.text
    assert second.json()["status"] == "accepted"
    [(raised_id, payload)] = workflows.raised
    assert raised_id == review_id and payload["label"] == "spam"
    assert review(engine, review_id).status is ReviewStatus.DECIDED
    assert actions(engine, review_id) == [
        "review.claim",
        "review.vote",
        "review.claim",
        "review.decide",
    ]


async def test_a_disagreement_waits_for_a_third_moderator_who_settles_it(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "p2")
    assert (await decide(client, review_id, keys["alice"], REMOVE_SPAM)).status_code == 200
    second = await decide(client, review_id, keys["bob"], ALLOW)
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "awaiting_tie_break"
    assert workflows.raised == []
    for voter in ("alice", "bob"):
        refused = await client.post(f"/v1/reviews/{review_id}/claim", headers=keys[voter])
        assert refused.status_code == 409
    shown = await client.get(f"/v1/reviews/{review_id}", headers=keys["carol"])
    assert shown.json()["votes"] == 2
    third = await decide(client, review_id, keys["carol"], REMOVE_HARASSMENT)
    assert third.status_code == 202, third.text
    [(_, payload)] = workflows.raised
    assert payload["label"] == "harassment"  # the tie-break is the decision


async def test_a_label_disagreement_with_the_same_decision_is_still_a_disagreement(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "p3")
    await decide(client, review_id, keys["alice"], REMOVE_SPAM)
    second = await decide(client, review_id, keys["bob"], REMOVE_HARASSMENT)
    assert second.json()["status"] == "awaiting_tie_break"
    assert workflows.raised == []


async def test_an_admin_deciding_a_review_they_do_not_hold_overrides_the_double_review(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "p4")
    await decide(client, review_id, keys["alice"], REMOVE_SPAM)
    override = await client.post(
        f"/v1/reviews/{review_id}/decision", headers=keys["root"], json=ALLOW
    )
    assert override.status_code == 202, override.text
    assert len(workflows.raised) == 1
    assert review(engine, review_id).status is ReviewStatus.DECIDED


async def test_a_vote_without_the_claim_is_refused_and_records_nothing(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "p5")
    claimed = await client.post(f"/v1/reviews/{review_id}/claim", headers=keys["alice"])
    assert claimed.status_code == 200
    refused = await client.post(
        f"/v1/reviews/{review_id}/decision", headers=keys["bob"], json=REMOVE_SPAM
    )
    assert refused.status_code == 403
    assert review(engine, review_id).votes == 0
    assert "review.vote" not in actions(engine, review_id)


async def test_a_bulk_decision_on_double_reviewed_reviews_votes_on_each(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_ids = [seed(engine, f"bulk-{i}") for i in range(3)]
    response = await client.post(
        "/v1/reviews/bulk-decision",
        headers=keys["alice"],
        json={**REMOVE_SPAM, "review_ids": review_ids},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["decided"], body["voted"], body["skipped"]) == (0, 3, 0)
    assert {o["outcome"] for o in body["outcomes"]} == {"voted"}
    assert workflows.raised == []
    assert all(review(engine, review_id).votes == 1 for review_id in review_ids)


async def test_without_double_review_a_decision_is_final_at_once(
    client: httpx.AsyncClient,
    engine: Engine,
    settings: Settings,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    settings.review.double_review_share = 0.0
    review_id = seed(engine, "p6")
    response = await decide(client, review_id, keys["alice"], REMOVE_SPAM)
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    assert len(workflows.raised) == 1


# --- reviewer agreement on the metrics overview --------------------------------------------------


async def test_the_metrics_overview_reports_kappa_per_category(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    # Spam reviews: alice's vote, then bob's judgement (agreeing ones end the review).
    spam_pairs = [
        (REMOVE_SPAM, REMOVE_SPAM),
        (REMOVE_SPAM, REMOVE_SPAM),
        (REMOVE_SPAM, ALLOW),
        (ALLOW, ALLOW),
        (ALLOW, REMOVE_SPAM),
        (ALLOW, ALLOW),
    ]
    for i, (first, second) in enumerate(spam_pairs):
        review_id = seed(engine, f"spam-{i}")
        assert (await decide(client, review_id, keys["alice"], first)).status_code == 200
        await decide(client, review_id, keys["bob"], second)
    harassment = seed(engine, "harass-0", category=Category.HARASSMENT)
    await decide(client, harassment, keys["alice"], REMOVE_HARASSMENT)
    await decide(client, harassment, keys["bob"], REMOVE_HARASSMENT)
    waiting = seed(engine, "harass-1", category=Category.HARASSMENT)
    await decide(client, waiting, keys["alice"], REMOVE_HARASSMENT)
    persist(engine, workflows)

    response = await client.get("/v1/metrics/overview", headers=keys["carol"])
    assert response.status_code == 200, response.text
    overview = response.json()
    by_category = {row["category"]: row for row in overview["reviewer_agreement"]}
    assert list(by_category) == ["spam", "harassment"]  # taxonomy order
    spam = by_category["spam"]
    labels = [(a["label"], b["label"]) for a, b in spam_pairs]
    assert (spam["pairs"], spam["agreed"], spam["awaiting_second"]) == (6, 4, 0)
    assert spam["kappa"] == pytest.approx(cohen_kappa_score(*zip(*labels, strict=True)))
    harass = by_category["harassment"]
    assert (harass["pairs"], harass["agreed"], harass["awaiting_second"]) == (1, 1, 1)
    assert harass["kappa"] is None  # one label only
    total = overview["reviewer_agreement_total"]
    assert (total["pairs"], total["agreed"], total["awaiting_second"]) == (7, 5, 1)


async def test_reviewer_agreement_counts_only_the_tenants_the_key_sees(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "other-tenant", tenant="acme")
    root = keys["root"]
    claimed = await client.post(f"/v1/reviews/{review_id}/claim", headers=root)
    assert claimed.status_code == 200
    voted = await client.post(f"/v1/reviews/{review_id}/decision", headers=root, json=ALLOW)
    assert voted.json()["status"] == "awaiting_second_review"
    seen_by_admin = (await client.get("/v1/metrics/overview", headers=root)).json()
    assert seen_by_admin["reviewer_agreement_total"]["awaiting_second"] == 1
    seen_by_default = (await client.get("/v1/metrics/overview", headers=keys["alice"])).json()
    assert seen_by_default["reviewer_agreement"] == []
    assert seen_by_default["reviewer_agreement_total"] is None


async def test_an_unreachable_workflow_on_the_deciding_judgement_reopens_and_keeps_the_vote(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    keys: dict[str, dict[str, str]],
) -> None:
    review_id = seed(engine, "p7")
    await decide(client, review_id, keys["alice"], REMOVE_SPAM)
    workflows.available = False
    refused = await decide(client, review_id, keys["bob"], REMOVE_SPAM)
    assert refused.status_code == 503
    view = review(engine, review_id)
    assert view.status is ReviewStatus.CLAIMED and view.votes == 1  # bob's again, alice's vote kept
    workflows.available = True
    retried = await client.post(
        f"/v1/reviews/{review_id}/decision", headers=keys["bob"], json=REMOVE_SPAM
    )
    assert retried.status_code == 202, retried.text
    assert len(workflows.raised) == 1
