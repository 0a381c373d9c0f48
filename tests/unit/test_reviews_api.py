"""The review API on SQLite, with a fake workflow gateway and the in-memory publisher."""

from __future__ import annotations

import asyncio
import csv
import io
import threading
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from sqlmodel import Session, select

from moderation.db import crud
from moderation.db.models import ApiKey, PostStatus, ReviewStatus
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
    utc_now,
)
from moderation.policy import load_policy
from moderation.services.api import build_app
from moderation.services.api.deps import get_workflows
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.api.security import principal_of
from moderation.services.api.workflows import DaprReviewWorkflows, WorkflowUnavailable
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers

REVIEW_TOPIC = "review.requested"


class FakeWorkflows:
    """Records the decisions raised; `available = False` simulates an unreachable daprd."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, dict[str, Any]]] = []
        self.available = True
        self.closed = 0

    async def raise_decision(self, review_id: str, payload: dict[str, Any]) -> None:
        if not self.available:
            raise WorkflowUnavailable("dapr unreachable: simulated outage")
        self.raised.append((review_id, payload))

    async def close(self) -> None:
        self.closed += 1


@pytest.fixture
def workflows() -> FakeWorkflows:
    return FakeWorkflows()


@pytest.fixture
def app(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, workflows: FakeWorkflows
) -> FastAPI:
    app = build_app(settings, publisher=publisher, engine=engine)
    # The way a test (or another deployment) swaps the Dapr gateway.
    app.dependency_overrides[get_workflows] = lambda: workflows
    return app


def make_key(engine: Engine, *scopes: str, name: str) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name=name, scopes=list(scopes))
    return {"Authorization": f"Bearer {plaintext}"}


def who(engine: Engine, name: str) -> str:
    """How claims, decisions and the audit record the (only) key called `name`: its id."""
    with Session(engine) as session:
        [key] = session.exec(select(ApiKey).where(ApiKey.name == name)).all()
    return f"key:{key.id}"


@pytest.fixture
def alice(engine: Engine) -> dict[str, str]:
    return make_key(engine, "moderate", name="alice")


@pytest.fixture
def bob(engine: Engine) -> dict[str, str]:
    return make_key(engine, "moderate", name="bob")


@pytest.fixture
def admin(engine: Engine) -> dict[str, str]:
    return make_key(engine, "admin", name="root")


@pytest.fixture
def submitter(engine: Engine) -> dict[str, str]:
    return make_key(engine, "submit", name="forum")


def verdict(
    post_id: str,
    *,
    decision: Decision = Decision.REVIEW,
    category: Category = Category.SPAM,
    stage: Stage = Stage.MODEL,
) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=decision,
        scores={**dict.fromkeys(CATEGORIES, 0.02), category: 0.55},
        primary_category=category,
        confidence=0.55,
        stage=stage,
        model_version="fast-test" if stage is Stage.MODEL else "agent-test",
        policy_version="v1",
        rationale="borderline" if stage is Stage.AGENT else None,
        latency_ms=3.0,
    )


def seed_review(
    engine: Engine,
    post_id: str,
    *,
    text: str | None = None,
    priority: ReviewPriority = ReviewPriority.NORMAL,
    category: Category = Category.SPAM,
    age_minutes: float = 0.0,
) -> str:
    """A recorded post with a model verdict and an open review; returns the review id."""
    request = ReviewRequested(
        post_id=post_id,
        occurred_at=utc_now() - timedelta(minutes=age_minutes),
        reason="uncertain",
        priority=priority,
        verdict=verdict(post_id, category=category),
    )
    submitted = PostSubmitted(
        post_id=post_id, text=text or f"text of {post_id}", author_id="author-1"
    )
    with Session(engine) as session:
        crud.record_events(session, events=[submitted, request.verdict, request])
    return request.review_id


def record_decision(
    engine: Engine,
    post_id: str,
    *,
    decision: Decision = Decision.REMOVE,
    review_id: str | None = None,
    note: str | None = None,
    at: datetime | None = None,
) -> ReviewDecided:
    """What the review workflow's persist activity does with a decision."""
    event = ReviewDecided(
        review_id=review_id or f"review-{post_id}",
        post_id=post_id,
        label=Category.SAFE if decision is Decision.ALLOW else Category.SPAM,
        decision=decision,
        moderator_id="carol",
        note=note,
        overrode=Decision.REVIEW,
        occurred_at=at or utc_now(),
    )
    with Session(engine) as session:
        crud.record_human_decision(session, event=event)
    return event


def audit(engine: Engine, review_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    with Session(engine) as session:
        entries = crud_helpers.list_audit(session, entity="review", entity_id=review_id)
    return [(entry.action, entry.actor, entry.after) for entry in entries]


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str)
    return body["detail"]


DECISION = {"label": "spam", "decision": "remove", "note": "obvious link farm"}


# --- listing and reading -----------------------------------------------------------------------


async def test_queue_is_ordered_by_priority_then_age_and_filters(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str]
) -> None:
    seed_review(engine, "normal-new", age_minutes=1)
    seed_review(engine, "normal-old", age_minutes=30)
    seed_review(engine, "low-old", priority=ReviewPriority.LOW, age_minutes=90)
    seed_review(engine, "urgent", priority=ReviewPriority.URGENT, category=Category.SELF_HARM)
    seed_review(engine, "high", priority=ReviewPriority.HIGH, category=Category.HATE)

    everything = await client.get("/v1/reviews", headers=alice)

    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert [item["post_id"] for item in body["items"]] == [
        "urgent",
        "high",
        "normal-old",
        "normal-new",
        "low-old",
    ]
    assert (body["total"], body["limit"], body["offset"]) == (5, 50, 0)
    # Each review names its post's tenant (the dashboard reads the author in it).
    assert {item["tenant"] for item in body["items"]} == {"default"}

    page = (await client.get("/v1/reviews?limit=2&offset=1", headers=alice)).json()
    assert [item["post_id"] for item in page["items"]] == ["high", "normal-old"]
    assert page["total"] == 5
    by_priority = (await client.get("/v1/reviews?priority=normal", headers=alice)).json()
    assert [item["post_id"] for item in by_priority["items"]] == ["normal-old", "normal-new"]
    by_category = (await client.get("/v1/reviews?category=hate", headers=alice)).json()
    assert [item["post_id"] for item in by_category["items"]] == ["high"]

    await client.post("/v1/reviews/review-high/claim", headers=alice)
    claimed = (await client.get("/v1/reviews?status=claimed", headers=alice)).json()
    pending = (await client.get("/v1/reviews?status=pending", headers=alice)).json()
    assert [item["post_id"] for item in claimed["items"]] == ["high"]
    assert pending["total"] == 4


@pytest.mark.parametrize(
    "query", ["status=open", "priority=asap", "category=nonsense", "limit=0", "offset=-1"]
)
async def test_bad_queue_filters_are_422(
    client: httpx.AsyncClient, alice: dict[str, str], query: str
) -> None:
    response = await client.get(f"/v1/reviews?{query}", headers=alice)

    assert response.status_code == 422
    assert detail(response).startswith("invalid request: query ")


async def test_a_review_shows_the_post_suggestion_policy_and_precedents(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str]
) -> None:
    seed_review(engine, "earlier", text="buy cheap pills at pharma-deals dot com")
    record_decision(engine, "earlier", note="pharma spam")
    seed_review(engine, "unrelated", text="what a lovely sunset over the lake tonight")
    record_decision(engine, "unrelated", decision=Decision.ALLOW)
    review_id = seed_review(engine, "p1", text="buy cheap pills at pharma-deal dot net")
    with Session(engine) as session:  # the agent's verdict outranks the model's
        crud_helpers.record_verdict(session, event=verdict("p1", stage=Stage.AGENT))

    response = await client.get(f"/v1/reviews/{review_id}", headers=alice)

    assert response.status_code == 200, response.text
    review = response.json()
    assert review["review_id"] == "review-p1" and review["post_id"] == "p1"
    assert review["text"] == "buy cheap pills at pharma-deal dot net"
    assert (review["author_id"], review["status"], review["priority"]) == (
        "author-1",
        "pending",
        "normal",
    )
    assert (review["category"], review["reason"]) == ("spam", "uncertain")
    assert review["appeal_of"] is None
    suggestion = review["suggestion"]
    assert (suggestion["stage"], suggestion["decision"], suggestion["rationale"]) == (
        "agent",
        "review",
        "borderline",
    )
    assert suggestion["scores"]["spam"] == 0.55 and set(suggestion["scores"]) == set(CATEGORIES)
    assert (suggestion["model_version"], suggestion["policy_version"]) == ("agent-test", "v1")
    assert review["policy_section"] == load_policy("v1").sections[Category.SPAM]
    [precedent] = review["precedents"]  # the sunset is not similar enough
    assert (precedent["post_id"], precedent["label"], precedent["decision"]) == (
        "earlier",
        "spam",
        "remove",
    )
    assert precedent["note"] == "pharma spam" and precedent["similarity"] > 0.5


async def test_unknown_review_is_404(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    for response in (
        await client.get("/v1/reviews/nope", headers=alice),
        await client.post("/v1/reviews/nope/claim", headers=alice),
        await client.post("/v1/reviews/nope/decision", json=DECISION, headers=alice),
    ):
        assert response.status_code == 404
        assert detail(response) == "review 'nope' not found"


# --- claims --------------------------------------------------------------------------------------


async def test_claim_locks_the_review_for_the_claim_time(
    client: httpx.AsyncClient,
    engine: Engine,
    alice: dict[str, str],
    bob: dict[str, str],
    settings: Settings,
) -> None:
    review_id = seed_review(engine, "p1")
    before = utc_now()

    claimed = await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)

    assert claimed.status_code == 200, claimed.text
    body = claimed.json()
    assert (body["status"], body["claimed_by"]) == ("claimed", who(engine, "alice"))
    expires = datetime.fromisoformat(body["claim_expires_at"])
    window = timedelta(seconds=settings.review.claim_seconds)
    assert before + window <= expires <= utc_now() + window

    refused = await client.post(f"/v1/reviews/{review_id}/claim", headers=bob)
    assert refused.status_code == 409
    holder = f"alice ({who(engine, 'alice')})"
    assert detail(refused).startswith(f"review '{review_id}' is claimed by '{holder}' until ")

    again = await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)
    assert again.status_code == 200
    assert datetime.fromisoformat(again.json()["claim_expires_at"]) > expires  # extended
    [(action, actor, after), _] = audit(engine, review_id)
    assert (action, actor) == ("review.claim", who(engine, "alice"))
    assert after is not None and after["claimed_by"] == who(engine, "alice")
    assert after["automated_verdict"]["decision"] == "review"
    assert after["policy_version"] == "v1"


async def test_a_lapsed_claim_is_pending_and_claimable_by_another_moderator(
    client: httpx.AsyncClient, engine: Engine, bob: dict[str, str]
) -> None:
    review_id = seed_review(engine, "p1")
    with Session(engine) as session:
        crud.claim_review(
            session,
            review_id=review_id,
            moderator="alice",
            now=utc_now() - timedelta(minutes=10),
            claim_seconds=60,
        )

    listed = (await client.get(f"/v1/reviews/{review_id}", headers=bob)).json()
    claimed = await client.post(f"/v1/reviews/{review_id}/claim", headers=bob)

    assert (listed["status"], listed["claimed_by"]) == ("pending", None)
    assert claimed.status_code == 200
    assert claimed.json()["claimed_by"] == who(engine, "bob")


async def test_claim_next_takes_the_most_urgent_oldest_claimable_review(
    client: httpx.AsyncClient,
    engine: Engine,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    seed_review(engine, "old", age_minutes=60)
    seed_review(engine, "hot", priority=ReviewPriority.HIGH, age_minutes=1)
    seed_review(engine, "hot-spam", priority=ReviewPriority.HIGH, category=Category.HATE)

    first = await client.post("/v1/reviews/claim-next", headers=alice)
    mine_again = await client.post("/v1/reviews/claim-next", headers=alice)
    second = await client.post("/v1/reviews/claim-next", headers=bob)
    hate = await client.post("/v1/reviews/claim-next?category=hate", headers=bob)
    third = await client.post("/v1/reviews/claim-next", headers=admin)
    dan = make_key(engine, "moderate", name="dan")
    none_left = await client.post("/v1/reviews/claim-next", headers=dan)

    assert first.status_code == 200, first.text
    assert (first.json()["post_id"], first.json()["claimed_by"]) == ("hot", who(engine, "alice"))
    assert mine_again.json()["post_id"] == "hot"  # your own claim comes back, extended
    assert (second.json()["post_id"], second.json()["claimed_by"]) == (
        "hot-spam",
        who(engine, "bob"),
    )
    assert hate.json()["post_id"] == "hot-spam"  # still bob's own claim
    assert (third.json()["post_id"], third.json()["claimed_by"]) == ("old", who(engine, "root"))
    assert none_left.status_code == 204 and none_left.content == b""


async def test_two_moderators_racing_for_a_review_through_the_api_get_one_winner(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str], bob: dict[str, str]
) -> None:
    review_id = seed_review(engine, "p1")

    responses = await asyncio.gather(
        client.post(f"/v1/reviews/{review_id}/claim", headers=alice),
        client.post(f"/v1/reviews/{review_id}/claim", headers=bob),
    )

    assert sorted(response.status_code for response in responses) == [200, 409]


def test_racing_claims_on_sqlite_threads_have_exactly_one_winner(engine: Engine) -> None:
    moderators = [f"mod-{n}" for n in range(4)]
    for round_number in range(10):
        review_id = seed_review(engine, f"race-{round_number}")
        barrier = threading.Barrier(len(moderators))
        winners: list[str] = []
        errors: list[BaseException] = []

        def claim(
            moderator: str,
            review_id: str = review_id,
            barrier: threading.Barrier = barrier,
            winners: list[str] = winners,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                with Session(engine) as session:
                    barrier.wait()
                    claimed = crud.claim_review(
                        session,
                        review_id=review_id,
                        moderator=moderator,
                        now=utc_now(),
                        claim_seconds=300,
                    )
                if claimed is not None:
                    winners.append(moderator)
            except BaseException as error:  # reported below: a thread must not swallow it
                errors.append(error)

        threads = [threading.Thread(target=claim, args=(m,)) for m in moderators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert len(winners) == 1
        with Session(engine) as session:
            view = crud.get_review(session, review_id=review_id, now=utc_now())
        assert view is not None and view.review.claimed_by == winners[0]


# --- decisions -----------------------------------------------------------------------------------


async def test_a_decision_is_handed_to_the_workflow_and_audited(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    alice: dict[str, str],
) -> None:
    review_id = seed_review(engine, "p1")
    await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)

    response = await client.post(f"/v1/reviews/{review_id}/decision", json=DECISION, headers=alice)

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["review_id"], body["status"]) == (review_id, "accepted")
    [(instance_id, payload)] = workflows.raised
    assert instance_id == review_id
    decided = ReviewDecided.model_validate(payload)  # what the workflow will validate
    assert decided.event_id == body["event_id"]
    assert (decided.review_id, decided.post_id, decided.moderator_id) == (
        review_id,
        "p1",
        who(engine, "alice"),
    )
    assert (decided.label, decided.decision, decided.note) == (
        Category.SPAM,
        Decision.REMOVE,
        "obvious link farm",
    )
    assert decided.overrode is Decision.REVIEW
    review = (await client.get(f"/v1/reviews/{review_id}", headers=alice)).json()
    assert (review["status"], review["decided_by"]) == ("decided", who(engine, "alice"))
    [claim, decide] = audit(engine, review_id)
    assert (claim[0], decide[0], decide[1]) == (
        "review.claim",
        "review.decide",
        who(engine, "alice"),
    )
    after = decide[2]
    assert after is not None
    assert (after["label"], after["decision"], after["overrode"]) == ("spam", "remove", "review")
    assert after["decision_event_id"] == decided.event_id
    assert after["automated_verdict"]["model_version"] == "fast-test"
    assert after["policy_version"] == "v1"

    # The workflow's persist activity records it; the post is decided.
    with Session(engine) as session:
        assert crud.record_human_decision(session, event=decided) is True
        trail = crud.get_post_trail(session, post_id="p1")
    assert trail.post is not None and trail.post.status is PostStatus.DECIDED
    assert [(d.review_id, d.overrode) for d in trail.decisions] == [(review_id, "review")]


async def test_a_second_decision_is_409(
    client: httpx.AsyncClient, engine: Engine, workflows: FakeWorkflows, alice: dict[str, str]
) -> None:
    review_id = seed_review(engine, "p1")
    await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)
    first = await client.post(f"/v1/reviews/{review_id}/decision", json=DECISION, headers=alice)

    second = await client.post(f"/v1/reviews/{review_id}/decision", json=DECISION, headers=alice)
    claim = await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)

    assert first.status_code == 202
    assert second.status_code == 409
    assert detail(second) == f"review '{review_id}' is already decided"
    assert claim.status_code == 409
    assert len(workflows.raised) == 1


async def test_only_the_claimer_or_an_admin_may_decide(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    claimed = seed_review(engine, "claimed")
    unclaimed = seed_review(engine, "unclaimed")
    await client.post(f"/v1/reviews/{claimed}/claim", headers=alice)

    by_bob = await client.post(f"/v1/reviews/{claimed}/decision", json=DECISION, headers=bob)
    without_claim = await client.post(
        f"/v1/reviews/{unclaimed}/decision", json=DECISION, headers=bob
    )
    by_admin = await client.post(f"/v1/reviews/{claimed}/decision", json=DECISION, headers=admin)

    assert by_bob.status_code == without_claim.status_code == 403
    assert detail(by_bob) == (
        f"'bob ({who(engine, 'bob')})' does not hold the claim on review '{claimed}': "
        "claim it first"
    )
    assert by_admin.status_code == 202, by_admin.text
    [(_, payload)] = workflows.raised
    assert payload["moderator_id"] == who(engine, "root")
    [_, decide] = audit(engine, claimed)
    assert decide[2] is not None and decide[2]["as_admin"] is True


async def test_two_keys_with_the_same_name_are_two_moderators(
    client: httpx.AsyncClient, engine: Engine, workflows: FakeWorkflows
) -> None:
    """Issue 11, finding 7: the moderator was the key's name, which is not unique, so a second
    key named alike could decide (and extend) the first one's claim, and the audit showed one
    moderator. Identity is now the key id, shown with the name."""
    with Session(engine) as session:
        first_plain, first_row = crud.create_api_key(session, name="sam", scopes=["moderate"])
        second_plain, second_row = crud.create_api_key(session, name="sam", scopes=["moderate"])
        first, second = principal_of(first_row), principal_of(second_row)
    first_key = {"Authorization": f"Bearer {first_plain}"}
    second_key = {"Authorization": f"Bearer {second_plain}"}
    review_id = seed_review(engine, "twins")

    assert (await client.post(f"/v1/reviews/{review_id}/claim", headers=first_key)).is_success
    stolen_claim = await client.post(f"/v1/reviews/{review_id}/claim", headers=second_key)
    stolen_decision = await client.post(
        f"/v1/reviews/{review_id}/decision", json=DECISION, headers=second_key
    )

    assert stolen_claim.status_code == 409, stolen_claim.text
    assert f"claimed by 'sam (key:{first.key_id})'" in detail(stolen_claim)
    assert stolen_decision.status_code == 403, stolen_decision.text
    assert workflows.raised == []
    review = (await client.get(f"/v1/reviews/{review_id}", headers=second_key)).json()
    assert (review["claimed_by"], review["claimed_by_display"]) == (
        f"key:{first.key_id}",
        f"sam (key:{first.key_id})",
    )

    decided = await client.post(
        f"/v1/reviews/{review_id}/decision", json=DECISION, headers=first_key
    )
    assert decided.status_code == 202, decided.text
    [(_, payload)] = workflows.raised
    assert payload["moderator_id"] == f"key:{first.key_id}"
    other_review = seed_review(engine, "twins-2")
    assert (await client.post(f"/v1/reviews/{other_review}/claim", headers=second_key)).is_success
    actors = [actor for _, actor, _ in audit(engine, review_id) + audit(engine, other_review)]
    assert actors == [f"key:{first.key_id}", f"key:{first.key_id}", f"key:{second.key_id}"]
    assert first.key_id != second.key_id
    review = (await client.get(f"/v1/reviews/{review_id}", headers=first_key)).json()
    assert (review["decided_by"], review["decided_by_display"]) == (
        f"key:{first.key_id}",
        f"sam (key:{first.key_id})",
    )


async def test_unreachable_workflow_is_503_and_the_review_stays_undecided(
    client: httpx.AsyncClient,
    internal_client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    alice: dict[str, str],
    bob: dict[str, str],
) -> None:
    review_id = seed_review(engine, "p1")
    await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)
    workflows.available = False

    refused = await client.post(f"/v1/reviews/{review_id}/decision", json=DECISION, headers=alice)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "simulated outage" in detail(refused)
    review = (await client.get(f"/v1/reviews/{review_id}", headers=alice)).json()
    assert (review["status"], review["claimed_by"], review["decided_by"]) == (
        "claimed",
        who(engine, "alice"),
        None,
    )
    assert (await client.post(f"/v1/reviews/{review_id}/claim", headers=bob)).status_code == 409
    assert [action for action, _, _ in audit(engine, review_id)] == [
        "review.claim",
        "review.decide",
        "review.decide.revert",
    ]
    metrics = (await internal_client.get("/metrics")).text
    assert 'moderation_api_unavailable_responses_total{endpoint="decision",reason="dapr"} 1.0' in (
        metrics
    )

    workflows.available = True
    retried = await client.post(f"/v1/reviews/{review_id}/decision", json=DECISION, headers=alice)
    assert retried.status_code == 202
    assert [instance for instance, _ in workflows.raised] == [review_id]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"label": "spammy", "decision": "remove"}, "label: Input should be 'safe'"),
        ({"label": "spam", "decision": "review"}, "decision: Input should be 'allow' or 'remove'"),
        ({"label": "spam"}, "decision: field required"),
        ({"label": "safe", "decision": "allow", "note": "x" * 2_001}, "note: too long: 2,001"),
        ({"label": "safe", "decision": "allow", "by": "me"}, "by: unknown field"),
        ({"label": "spam", "decision": "allow"}, "an allowed post is labelled safe"),
        ({"label": "safe", "decision": "remove"}, "remove needs the violated category"),
    ],
)
async def test_bad_decision_body_is_422_and_nothing_is_decided(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    alice: dict[str, str],
    body: dict[str, Any],
    expected: str,
) -> None:
    review_id = seed_review(engine, "p1")
    await client.post(f"/v1/reviews/{review_id}/claim", headers=alice)

    response = await client.post(f"/v1/reviews/{review_id}/decision", json=body, headers=alice)

    assert response.status_code == 422
    assert expected in detail(response)
    assert workflows.raised == []
    with Session(engine) as session:
        view = crud.get_review(session, review_id=review_id, now=utc_now())
    assert view is not None and view.status is ReviewStatus.CLAIMED  # still alice's to decide


# --- stats and the decision log ------------------------------------------------------------------


async def test_stats_count_the_queue_and_the_last_day(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str]
) -> None:
    now = utc_now()
    seed_review(engine, "pending-1")
    seed_review(engine, "pending-2", age_minutes=60 * 30)  # created before the window
    escalated = seed_review(engine, "escalated")
    claimed = seed_review(engine, "claimed")
    with Session(engine) as session:
        assert crud.escalate_review(session, review_id=escalated, now=now) == "high"
        crud.claim_review(session, review_id=claimed, moderator="bob", now=now, claim_seconds=60)
    # Decided: created 10 and 30 minutes ago, decided now: 20 minutes' handling on average.
    seed_review(engine, "removed", age_minutes=10)
    seed_review(engine, "allowed", age_minutes=30)
    record_decision(engine, "removed", at=now)
    record_decision(engine, "allowed", decision=Decision.ALLOW, at=now)

    response = await client.get("/v1/reviews/stats", headers=alice)

    assert response.status_code == 200, response.text
    stats = response.json()
    assert (stats["pending"], stats["escalated"], stats["claimed"]) == (2, 1, 1)
    assert (stats["inbound_24h"], stats["actioned_24h"]) == (5, 2)
    assert stats["action_rate"] == 0.5
    assert stats["avg_handling_seconds"] == pytest.approx(20 * 60, abs=5)


async def test_stats_of_an_empty_queue(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    stats = (await client.get("/v1/reviews/stats", headers=alice)).json()

    assert stats == {
        "pending": 0,
        "escalated": 0,
        "claimed": 0,
        "inbound_24h": 0,
        "actioned_24h": 0,
        "action_rate": None,
        "avg_handling_seconds": None,
    }


async def test_decision_log_exports_as_csv(
    client: httpx.AsyncClient, engine: Engine, alice: dict[str, str]
) -> None:
    seed_review(engine, "p1")
    seed_review(engine, "p2")
    first = record_decision(engine, "p1", note="=HYPERLINK(evil)", at=utc_now())
    second = record_decision(engine, "p2", decision=Decision.ALLOW, at=utc_now())

    response = await client.get("/v1/decisions.csv", headers=alice)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="decisions.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "decided_at",
        "review_id",
        "post_id",
        "label",
        "decision",
        "moderator",
        "note",
        "overrode",
        "policy_version",
        "moderator_display",
    ]
    assert [row["post_id"] for row in rows] == ["p2", "p1"]  # newest first
    latest, earlier = rows
    assert datetime.fromisoformat(latest["decided_at"]) == second.occurred_at
    assert (latest["review_id"], latest["decision"], latest["moderator"]) == (
        "review-p2",
        "allow",
        "carol",
    )
    assert latest["moderator_display"] == "carol (name only, recorded before key ids)"
    assert (latest["note"], latest["overrode"], latest["policy_version"]) == ("", "review", "v1")
    assert earlier["note"] == "'=HYPERLINK(evil)"  # never a formula in a spreadsheet
    assert datetime.fromisoformat(earlier["decided_at"]) == first.occurred_at
    limited = await client.get("/v1/decisions.csv?limit=1", headers=alice)
    assert len(limited.text.strip().splitlines()) == 2


# --- appeals -------------------------------------------------------------------------------------


def appealed_requests(publisher: InMemoryPublisher) -> list[ReviewRequested]:
    return [ReviewRequested.model_validate_json(v) for v in publisher.values(REVIEW_TOPIC)]


async def test_an_appeal_reopens_a_decided_post_as_a_high_priority_review(
    client: httpx.AsyncClient,
    engine: Engine,
    publisher: InMemoryPublisher,
    submitter: dict[str, str],
    alice: dict[str, str],
) -> None:
    seed_review(engine, "p1")
    decision = record_decision(engine, "p1")

    response = await client.post(
        "/v1/posts/p1/appeal", json={"reason": "it is a real pharmacy"}, headers=submitter
    )

    assert response.status_code == 202, response.text
    assert response.json() == {
        "review_id": "review-p1-appeal-1",
        "post_id": "p1",
        "appeal_of": decision.event_id,
        "status": "accepted",
    }
    [(topic, key, _)] = publisher.records
    [request] = appealed_requests(publisher)
    assert (topic, key) == (REVIEW_TOPIC, b"p1")
    assert (request.review_id, request.priority, request.appeal_of) == (
        "review-p1-appeal-1",
        ReviewPriority.HIGH,
        decision.event_id,
    )
    assert request.reason == "appeal of remove (spam): it is a real pharmacy"
    assert (request.verdict.stage, request.verdict.model_version) == (Stage.MODEL, "fast-test")
    with Session(engine) as session:
        recorded = crud.latest_automated_verdict(session, post_id="p1")
    assert recorded is not None and request.verdict.event_id == recorded.event_id

    # Recorded at once: the post is in review again and the appeal is in the queue.
    trail = (await client.get("/v1/posts/p1", headers=make_key(engine, "read", name="r"))).json()
    assert trail["status"] == "in_review"
    assert [r["review_id"] for r in trail["reviews"]] == ["review-p1", "review-p1-appeal-1"]
    queued = (await client.get("/v1/reviews/review-p1-appeal-1", headers=alice)).json()
    assert (queued["priority"], queued["appeal_of"]) == ("high", decision.event_id)
    [(action, actor, after)] = audit(engine, "review-p1-appeal-1")
    assert (action, actor) == ("review.appeal", who(engine, "forum"))
    assert after is not None and after["appeal_of"] == decision.event_id
    assert after["policy_version"] == "v1"

    again = await client.post("/v1/posts/p1/appeal", json={"reason": "again"}, headers=submitter)
    assert again.status_code == 409
    assert "already has an open appeal ('review-p1-appeal-1')" in detail(again)

    # Decided again, the post can be appealed once more, under a new review id.
    record_decision(engine, "p1", review_id="review-p1-appeal-1", decision=Decision.ALLOW)
    with Session(engine) as session:
        post = crud.get_post(session, post_id="p1")
        assert post is not None and post.status is PostStatus.DECIDED
    third = await client.post("/v1/posts/p1/appeal", json={"reason": "still"}, headers=submitter)
    assert third.status_code == 202
    assert third.json()["review_id"] == "review-p1-appeal-2"


async def test_an_appeal_needs_a_decided_post(
    client: httpx.AsyncClient,
    engine: Engine,
    publisher: InMemoryPublisher,
    submitter: dict[str, str],
) -> None:
    seed_review(engine, "p1")

    undecided = await client.post("/v1/posts/p1/appeal", json={"reason": "r"}, headers=submitter)
    unknown = await client.post("/v1/posts/nope/appeal", json={"reason": "r"}, headers=submitter)
    empty = await client.post("/v1/posts/p1/appeal", json={"reason": ""}, headers=submitter)

    assert undecided.status_code == 409
    assert detail(undecided) == "post 'p1' has no human decision to appeal yet"
    assert unknown.status_code == 404
    assert empty.status_code == 422
    assert publisher.records == []


async def test_an_appeal_while_kafka_is_down_is_503_and_records_nothing(
    client: httpx.AsyncClient,
    engine: Engine,
    publisher: InMemoryPublisher,
    submitter: dict[str, str],
) -> None:
    seed_review(engine, "p1")
    record_decision(engine, "p1")
    publisher.available = False

    response = await client.post("/v1/posts/p1/appeal", json={"reason": "r"}, headers=submitter)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    with Session(engine) as session:
        assert crud.open_appeal_for(session, post_id="p1") is None
        assert crud.count_appeals(session, post_id="p1") == 0


# --- authentication and scopes on every endpoint --------------------------------------------

# (method, path, body, the scope it needs)
PROTECTED: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/reviews", None, "moderate"),
    ("GET", "/v1/reviews/stats", None, "moderate"),
    ("GET", "/v1/reviews/groups", None, "moderate"),
    ("POST", "/v1/reviews/claim-next", None, "moderate"),
    ("GET", "/v1/reviews/review-p1", None, "moderate"),
    ("POST", "/v1/reviews/review-p1/claim", None, "moderate"),
    ("POST", "/v1/reviews/review-p1/decision", DECISION, "moderate"),
    ("POST", "/v1/reviews/bulk-decision", {**DECISION, "review_ids": ["review-p1"]}, "moderate"),
    ("GET", "/v1/decisions.csv", None, "moderate"),
    ("POST", "/v1/posts/p1/appeal", {"reason": "unfair"}, "submit"),
    ("POST", "/v1/authors/a1/actions/act-1/appeal", {"reason": "unfair"}, "submit"),
]
ROUTE_TEMPLATES = {
    "/v1/reviews/review-p1": "/v1/reviews/{review_id}",
    "/v1/reviews/review-p1/claim": "/v1/reviews/{review_id}/claim",
    "/v1/reviews/review-p1/decision": "/v1/reviews/{review_id}/decision",
    "/v1/posts/p1/appeal": "/v1/posts/{post_id}/appeal",
    "/v1/authors/a1/actions/act-1/appeal": "/v1/authors/{author_id}/actions/{action_id}/appeal",
}


def test_the_auth_table_covers_every_review_endpoint(app: FastAPI) -> None:
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        and (route.path.startswith(("/v1/reviews", "/v1/decisions")) or "appeal" in route.path)
        for method in route.methods
    }
    covered = {(method, ROUTE_TEMPLATES.get(path, path)) for method, path, _, _ in PROTECTED}
    assert served == covered


@pytest.mark.parametrize(("method", "path", "body", "scope"), PROTECTED)
async def test_every_review_endpoint_is_401_without_a_key_and_403_without_the_scope(
    client: httpx.AsyncClient,
    engine: Engine,
    workflows: FakeWorkflows,
    publisher: InMemoryPublisher,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    scope: str,
) -> None:
    seed_review(engine, "p1")
    record_decision(engine, "p1")
    other_scopes = [s for s in ("submit", "read", "moderate") if s != scope]
    wrong_key = make_key(engine, *other_scopes, name="wrong")
    bad_key = {"Authorization": "Bearer mod_000000000000_nope"}

    missing = await client.request(method, path, json=body)
    unknown = await client.request(method, path, json=body, headers=bad_key)
    forbidden = await client.request(method, path, json=body, headers=wrong_key)

    assert missing.status_code == unknown.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in detail(missing)
    assert forbidden.status_code == 403
    assert detail(forbidden).startswith(f"API key 'wrong' lacks scope '{scope}'")
    assert workflows.raised == [] and publisher.records == []
    with Session(engine) as session:
        assert crud_helpers.list_audit(session, entity="review") == []


async def test_auth_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/reviews/r/decision", json={"label": 5})

    assert response.status_code == 401


# --- the Dapr gateway ---------------------------------------------------------------------------


async def test_a_gateway_given_to_create_app_is_used_and_closed_once(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, alice: dict[str, str]
) -> None:
    gateway = FakeWorkflows()
    app = build_app(settings, publisher=publisher, engine=engine, workflows=gateway)
    review_id = seed_review(engine, "p1")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            await http.post(f"/v1/reviews/{review_id}/claim", headers=alice)
            response = await http.post(
                f"/v1/reviews/{review_id}/decision", json=DECISION, headers=alice
            )
        assert gateway.closed == 0

    assert response.status_code == 202
    assert [instance for instance, _ in gateway.raised] == [review_id]
    assert gateway.closed == 1


async def test_dapr_gateway_reports_an_unreachable_sidecar_as_unavailable() -> None:
    # Nothing listens on port 9 (discard) here: the connection is refused at once.
    gateway = DaprReviewWorkflows(host="127.0.0.1", port=9, event_name="decision", timeout=5.0)
    try:
        with pytest.raises(WorkflowUnavailable, match="refused the decision"):
            await gateway.raise_decision("review-p1", {"decision": "allow"})
    finally:
        await gateway.close()


class _State:
    def __init__(self, status: str) -> None:
        self.runtime_status = type("Status", (), {"name": status})()


class _Client:
    """Stands in for `DaprWorkflowClient`: a known instance state, and the events raised."""

    def __init__(self, state: _State | None) -> None:
        self.state = state
        self.raised: list[tuple[str, str, Any]] = []

    def get_workflow_state(self, instance_id: str, *, fetch_payloads: bool) -> _State | None:
        return self.state

    def raise_workflow_event(self, instance_id: str, event_name: str, *, data: Any) -> None:
        self.raised.append((instance_id, event_name, data))

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("state", "error"),
    [
        (_State("RUNNING"), None),
        (None, "is not running yet"),
        (_State("COMPLETED"), "has finished \\(completed\\)"),
    ],
)
async def test_dapr_gateway_raises_only_to_a_running_workflow(
    state: _State | None, error: str | None
) -> None:
    gateway = DaprReviewWorkflows(host="127.0.0.1", port=9, event_name="decision")
    client = _Client(state)
    gateway._client = client

    if error is None:
        await gateway.raise_decision("review-p1", {"decision": "allow"})
        assert client.raised == [("review-p1", "decision", {"decision": "allow"})]
    else:
        with pytest.raises(WorkflowUnavailable, match=error):
            await gateway.raise_decision("review-p1", {"decision": "allow"})
        assert client.raised == []


def test_review_status_values_are_the_documented_ones() -> None:
    assert [status.value for status in ReviewStatus] == [
        "pending",
        "claimed",
        "escalated",
        "decided",
    ]
