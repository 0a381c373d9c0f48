"""Double review through the real stack: Kafka, PostgreSQL, daprd + placement + scheduler, and
the worker, recorder, review service and API as processes, with every review double-reviewed
(`MODERATION_REVIEW__DOUBLE_REVIEW_SHARE=1`).

A first judgement is a vote: the review's Dapr workflow keeps waiting and nothing is published.
A second, agreeing judgement decides the review through its workflow; a disagreeing one waits
for a third moderator, whose decision is the one published. The metrics overview then pairs
the judgements (Cohen's kappa per category), counting only the tenant of the test's keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from functools import partial

import pytest
from dapr.ext.workflow import WorkflowStatus
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.models import AuditLog, HumanDecision
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import PostSubmitted, review_id_for
from moderation.settings import Settings
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)
from tests.integration.test_bulk_decisions_real import published_decisions, tasks_created
from tests.integration.test_review_flow import api, workflow_status

pytestmark = pytest.mark.integration

SPAM = {"label": "spam", "decision": "remove"}
SAFE = {"label": "safe", "decision": "allow"}


@pytest.fixture(scope="module")
def double_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "double") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def services(
    double_settings: Settings, dapr: DaprRuntime, postgres: PostgresCluster
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        double_settings,
        extra_env={
            "MODERATION_AGENT__ENABLED": "false",
            "MODERATION_REVIEW__DOUBLE_REVIEW_SHARE": "1.0",
            **STAGE_ONE_DECIDES_NOTHING,
        },
    )
    with running_services(running, "recorder", "worker", "api", "review", dapr=dapr):
        yield running


def judge(settings: Settings, key: str, review_id: str, body: dict[str, str]) -> tuple[int, str]:
    """Claim the review and give a judgement: (HTTP status, the answer's `status`)."""
    with api(settings, key) as client:
        claimed = client.post(f"/v1/reviews/{review_id}/claim")
        assert claimed.status_code == 200, claimed.text
        response = client.post(f"/v1/reviews/{review_id}/decision", json=body)
    assert response.status_code in (200, 202), response.text
    return response.status_code, str(response.json()["status"])


def completed(settings: Settings, review_id: str) -> bool:
    return workflow_status(settings, review_id) == WorkflowStatus.COMPLETED


def decision_of(engine: Engine, review_id: str) -> HumanDecision | None:
    with Session(engine) as session:
        return session.exec(
            select(HumanDecision).where(col(HumanDecision.review_id) == review_id)
        ).first()


@pytest.mark.timeout(600)
async def test_two_judgements_decide_a_review_and_a_disagreement_waits_for_a_third(
    services: PipelineServices, double_settings: Settings, read_model: Engine
) -> None:
    tenant = f"dbl-{uuid.uuid4().hex[:8]}"
    plaintext, actor = {}, {}
    with Session(read_model) as session:
        for name in ("alice", "bob", "carol"):
            key, row = crud.create_api_key(
                session, name=f"{name}-{tenant}", scopes=["moderate"], tenant=tenant
            )
            plaintext[name], actor[name] = key, f"key:{row.id}"
    posts = [
        PostSubmitted(post_id=uuid.uuid4().hex, text=f"offer {i}", author_id="a", tenant=tenant)
        for i in range(2)
    ]
    agreed, disputed = (review_id_for(post.post_id) for post in posts)
    await produce(double_settings, posts)
    await asyncio.to_thread(
        wait_for, partial(tasks_created, read_model, [agreed, disputed]), 180, "review tasks"
    )

    # First judgements: votes. The workflows keep waiting; nothing is recorded.
    for review_id in (agreed, disputed):
        assert judge(double_settings, plaintext["alice"], review_id, SPAM) == (
            200,
            "awaiting_second_review",
        )
    with api(double_settings, plaintext["alice"]) as client:
        refused = client.post(f"/v1/reviews/{agreed}/claim")
    assert refused.status_code == 409 and "another moderator" in refused.json()["detail"]

    # Bob agrees on one (it is decided) and disagrees on the other (it waits for a third).
    assert judge(double_settings, plaintext["bob"], agreed, SPAM) == (202, "accepted")
    assert judge(double_settings, plaintext["bob"], disputed, SAFE) == (200, "awaiting_tie_break")
    assert workflow_status(double_settings, disputed) == WorkflowStatus.RUNNING
    assert judge(double_settings, plaintext["carol"], disputed, SPAM) == (202, "accepted")

    published = await published_decisions(double_settings, {agreed, disputed}, within=180)
    assert published[agreed]["moderator_id"] == actor["bob"]
    assert published[disputed]["moderator_id"] == actor["carol"]
    for review_id in (agreed, disputed):
        decided = await asyncio.to_thread(
            wait_for, partial(decision_of, read_model, review_id), 120, "the decision row"
        )
        assert decided.label == "spam"
        assert await asyncio.to_thread(
            wait_for, partial(completed, double_settings, review_id), 120, "workflow completed"
        )
    with Session(read_model) as session:
        votes = session.exec(
            select(AuditLog.entity_id, AuditLog.actor).where(
                col(AuditLog.action) == "review.vote",
                col(AuditLog.entity_id).in_([agreed, disputed]),
            )
        ).all()
    assert sorted(votes) == sorted(
        [(agreed, actor["alice"]), (disputed, actor["alice"]), (disputed, actor["bob"])]
    )

    # Reviewer agreement: two pairs, one agreed; the key's tenant only.
    with api(double_settings, plaintext["carol"]) as client:
        overview = client.get("/v1/metrics/overview").json()
    # (The reviews' category is stage 1's primary category of each post.)
    assert sum(row["pairs"] for row in overview["reviewer_agreement"]) == 2
    total = overview["reviewer_agreement_total"]
    assert (total["pairs"], total["agreed"], total["awaiting_second"]) == (2, 1, 0)
    assert total["observed_agreement"] == 0.5
    # Rater one said spam twice; rater two spam and safe: chance agreement 0.5, kappa 0.
    assert total["kappa"] == 0.0
