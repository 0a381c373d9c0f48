"""The metrics overview (`crud.metrics_overview`, `GET /v1/metrics/overview`) on SQLite.

One small hand-made read model, rows inserted with SQLModel, with every number worked out by
hand in the comments.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.models import (
    AuditLog,
    HumanDecision,
    JobRun,
    ModelStatus,
    ModelVersion,
    Post,
    Review,
    ReviewStatus,
    Verdict,
)
from moderation.events import utc_now
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings

NOW = datetime(2026, 11, 21, 12, 30, tzinfo=UTC)


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 11, 21, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as db_session:
        yield db_session


def key(engine: Engine, *scopes: str) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name="-".join(scopes), scopes=list(scopes))
    return {"Authorization": f"Bearer {plaintext}"}


def add_post(session: Session, post_id: str, submitted: datetime) -> None:
    session.add(Post(id=post_id, text=f"text of {post_id}", author_id="u1", submitted_at=submitted))


def add_verdict(
    session: Session,
    post_id: str,
    *,
    occurred: datetime,
    decision: str,
    category: str,
    latency_ms: float,
    stage: str = "model",
    recorded_after: timedelta = timedelta(seconds=1),
) -> None:
    session.add(
        Verdict(
            post_id=post_id,
            event_id=f"{stage}-{post_id}",
            stage=stage,
            decision=decision,
            primary_category=category,
            confidence=0.6,
            scores={category: 0.6},
            model_version=f"{stage}-1",
            policy_version="v1",
            latency_ms=latency_ms,
            occurred_at=occurred,
            recorded_at=occurred + recorded_after,
        )
    )


def add_review(session: Session, post_id: str, created: datetime, **fields: Any) -> None:
    session.add(
        Review(
            review_id=fields.pop("review_id", f"review-{post_id}"),
            post_id=post_id,
            reason="uncertain",
            category="spam",
            created_at=created,
            updated_at=created,
            **fields,
        )
    )


def add_decision(
    session: Session, post_id: str, *, moderator: str, label: str, decision: str, when: datetime
) -> None:
    session.add(
        HumanDecision(
            event_id=f"decision-{post_id}",
            review_id=f"review-{post_id}",
            post_id=post_id,
            label=label,
            decision=decision,
            moderator_id=moderator,
            decided_at=when,
        )
    )


def add_claim(session: Session, post_id: str, moderator: str, when: datetime) -> None:
    session.add(
        AuditLog(
            actor=moderator,
            action="review.claim",
            entity="review",
            entity_id=f"review-{post_id}",
            at=when,
        )
    )


def seed(session: Session) -> None:
    """Seven posts in the window 10:00-13:00 (buckets 10:00, 11:00, 12:00), one before it.

    post  submitted  model verdict (latency)      review / decision
    p1    10:10      allow safe (10)              an appeal review, pending (not "sent")
    p6    10:20      review violence (20)         escalated at 10:50
    p2    11:05      review spam (30), agent      alice claims 11:25:05, decides spam 11:35:05
                     review spam (2000)
    p3    11:20      remove spam (40)             -
    p7    11:40      review harassment (50)       alice claims 11:41:05 (lapsed); bob claims
                                                  11:50:05 and 11:54:05, decides safe 11:55:05
    p4    12:05      review hate (60)             pending
    p5    12:10      review spam (70)             claimed by bob until 12:35
    ghost -          allow safe (80), 12:15       its post is not recorded
    old   08:00      allow safe (999), 08:00      before the window
    """
    rows = [
        ("p1", at(10, 10), "allow", "safe", 10),
        ("p6", at(10, 20), "review", "violence", 20),
        ("p2", at(11, 5), "review", "spam", 30),
        ("p3", at(11, 20), "remove", "spam", 40),
        ("p7", at(11, 40), "review", "harassment", 50),
        ("p4", at(12, 5), "review", "hate", 60),
        ("p5", at(12, 10), "review", "spam", 70),
        ("old", at(8, 0), "allow", "safe", 999),
    ]
    for post_id, submitted, decision, category, latency in rows:
        add_post(session, post_id, submitted)
        # Verdict one second after submission, recorded one second later: end to end 2 s.
        add_verdict(
            session,
            post_id,
            occurred=submitted + timedelta(seconds=1),
            decision=decision,
            category=category,
            latency_ms=latency,
        )
    add_verdict(
        session, "ghost", occurred=at(12, 15), decision="allow", category="safe", latency_ms=80
    )
    # The agent's verdict on p2: 3 s after submission, recorded 1 s later (end to end 4 s).
    add_verdict(
        session,
        "p2",
        stage="agent",
        occurred=at(11, 5, 3),
        decision="review",
        category="spam",
        latency_ms=2000,
    )
    add_review(session, "p6", at(10, 20, 5), status=ReviewStatus.ESCALATED,
               escalated_at=at(10, 50))  # fmt: skip
    add_review(
        session,
        "p2",
        at(11, 5, 5),
        status=ReviewStatus.DECIDED,
        decided_at=at(11, 35, 5),
        decided_by="alice",
    )
    add_review(
        session,
        "p7",
        at(11, 40, 5),
        status=ReviewStatus.DECIDED,
        decided_at=at(11, 55, 5),
        decided_by="bob",
    )
    add_review(session, "p4", at(12, 5, 5))
    add_review(
        session,
        "p5",
        at(12, 10, 5),
        status=ReviewStatus.CLAIMED,
        claimed_by="bob",
        claim_expires_at=at(12, 35),
    )
    add_review(session, "p1", at(12, 20), review_id="review-p1-appeal-1", appeal_of="evt-1")
    add_decision(session, "p2", moderator="alice", label="spam", decision="remove",
                 when=at(11, 35, 5))  # fmt: skip
    add_decision(session, "p7", moderator="bob", label="safe", decision="allow",
                 when=at(11, 55, 5))  # fmt: skip
    add_claim(session, "p2", "alice", at(11, 25, 5))
    add_claim(session, "p7", "alice", at(11, 41, 5))
    add_claim(session, "p7", "bob", at(11, 50, 5))
    add_claim(session, "p7", "bob", at(11, 54, 5))
    session.commit()


def seed_registry(session: Session) -> None:
    session.add_all(
        [
            ModelVersion(
                kind="fast",
                version="fast-base",
                status=ModelStatus.RETIRED,
                artifact_uri="/m/base",
                metrics={"split": "validation", "macro_f1": 0.61, "accuracy": 0.8},
                created_at=at(1, 0),
            ),
            ModelVersion(
                kind="fast",
                version="fast-n1",
                status=ModelStatus.CHAMPION,
                artifact_uri="/m/n1",
                metrics={
                    "run_id": 3,
                    "scores": {"gold": {"macro_f1": 0.64}, "time_split": {"macro_f1": 0.58}},
                    "decision": {"promote": True},
                },
                created_at=at(2, 0),
            ),
            ModelVersion(
                kind="agent-lora",
                version="lora-1",
                status=ModelStatus.CHALLENGER,
                artifact_uri="/m/lora",
                metrics={"eval_loss": 1.25, "run_id": 3},
                created_at=at(3, 0),
            ),
            JobRun(
                job="nightly",
                status="succeeded",
                started_at=at(2, 0),
                finished_at=at(2, 5),
                counts={"decisions_in_window": 40},
                details={"promoted": True},
            ),
            JobRun(
                job="nightly",
                status="failed",
                started_at=at(3, 0),
                finished_at=at(3, 0, 30),
                details={"error": "RuntimeError: boom"},
            ),
            JobRun(job="nightly", status="running", started_at=at(4, 0)),
        ]
    )
    session.commit()


def overview(session: Session, **kwargs: Any) -> Any:
    return crud.metrics_overview(session, now=NOW, hours=2, bucket_minutes=60, **kwargs)


# --- crud ---------------------------------------------------------------------------------------


def test_window_is_whole_aligned_buckets() -> None:
    window = crud.metrics_window(now=NOW, hours=2, bucket_minutes=60)

    assert (window.since, window.end) == (at(10, 0), at(13, 0))
    assert window.last - window.first + 1 == 3
    with pytest.raises(ValueError, match="at most 2000"):
        crud.metrics_window(now=NOW, hours=24 * 90, bucket_minutes=1)
    with pytest.raises(ValueError, match="positive"):
        crud.metrics_window(now=NOW, hours=0, bucket_minutes=60)


def test_throughput_counts_posts_verdicts_decisions_and_reviews_per_bucket(
    session: Session,
) -> None:
    seed(session)

    result = overview(session)

    assert result.window.since == at(10, 0) and result.window.until == NOW
    assert [
        (b.start.hour, b.posts, b.verdicts, b.decisions, b.sent_to_humans, b.share_to_humans)
        for b in result.throughput
    ] == [
        (10, 2, {"model": 2, "agent": 0}, 0, 1, 0.5),  # p1 (an appeal only), p6
        (11, 3, {"model": 3, "agent": 1}, 2, 2, 0.6667),  # p2, p3, p7; p3 not sent
        (12, 2, {"model": 3, "agent": 0}, 0, 2, 1.0),  # p4, p5 (+ the ghost's verdict)
    ]
    assert (result.to_humans.posts, result.to_humans.sent_to_humans) == (7, 5)
    assert result.to_humans.share == 0.7143


def test_latency_percentiles_per_bucket_and_window(session: Session) -> None:
    seed(session)

    result = overview(session)

    whole = {(p.stage, p.measure): p for p in result.latency_window}
    model = whole["model", "verdict"]
    # 10, 20, ..., 80 (the ghost counts; the post from 08:00 does not): linear interpolation.
    assert (model.count, model.p50_ms, model.p95_ms, model.p99_ms) == (8, 45.0, 76.5, 79.3)
    e2e = whole["model", "end_to_end"]
    assert (e2e.count, e2e.p50_ms, e2e.p99_ms) == (7, 2000.0, 2000.0)  # no post, no e2e
    assert (whole["agent", "verdict"].p50_ms, whole["agent", "end_to_end"].p50_ms) == (
        2000.0,
        4000.0,
    )
    assert [p.stage for p in result.latency_window] == ["model", "model", "agent", "agent"]
    first = [p for p in result.latency if p.start == at(10, 0) and p.measure == "verdict"]
    assert [(p.stage, p.count, p.p50_ms, p.p95_ms) for p in first] == [("model", 2, 15.0, 19.5)]
    assert [p.start.hour for p in result.latency if p.start is not None] == sorted(
        p.start.hour for p in result.latency if p.start is not None
    )
    sample = result.latency_sample
    assert (sample.rows, sample.cap, sample.truncated) == (9, crud.METRICS_ROW_CAP, False)
    assert sample.oldest == at(10, 10, 1)


def test_latency_reads_only_the_newest_rows_up_to_the_cap(session: Session) -> None:
    seed(session)

    result = overview(session, row_cap=3)

    sample = result.latency_sample
    assert (sample.rows, sample.cap, sample.truncated) == (3, 3, True)
    assert sample.oldest == at(12, 5, 1)  # ghost 12:15, p5 12:10:01, p4 12:05:01
    model = next(p for p in result.latency_window if p.measure == "verdict")
    assert (model.count, model.p50_ms) == (3, 70.0)
    assert sum(b.posts for b in result.throughput) == 7  # counts are never capped


def test_decision_and_category_mix_by_stage(session: Session) -> None:
    seed(session)

    result = overview(session)

    assert [(m.stage, m.decision, m.count) for m in result.decision_mix] == [
        ("model", "allow", 2),
        ("model", "remove", 1),
        ("model", "review", 5),
        ("agent", "review", 1),
        ("human", "allow", 1),
        ("human", "remove", 1),
    ]
    assert [(m.stage, m.category, m.count) for m in result.category_mix] == [
        ("model", "safe", 2),
        ("model", "spam", 3),
        ("model", "harassment", 1),
        ("model", "hate", 1),
        ("model", "violence", 1),
        ("agent", "spam", 1),
        ("human", "safe", 1),
        ("human", "spam", 1),
    ]


def test_agreement_compares_each_stage_with_the_human_label(session: Session) -> None:
    seed(session)

    result = overview(session)

    # p7: the model said harassment, the human safe; p2: model and agent said spam, as the human.
    assert [
        (a.label, a.decisions, a.model_compared, a.model_agreed, a.agent_compared, a.agent_agreed)
        for a in result.agreement
    ] == [("safe", 1, 1, 0, 0, 0), ("spam", 1, 1, 1, 1, 1)]
    total = result.agreement_total
    assert (total.label, total.decisions, total.model_agreement, total.agent_agreement) == (
        "all",
        2,
        0.5,
        1.0,
    )


def test_queue_counts_oldest_waiting_review_and_load_per_moderator(session: Session) -> None:
    seed(session)

    queue = overview(session).queue

    # Pending: p4 and p1's appeal; escalated: p6; claimed: p5 (bob's claim is live at 12:30).
    assert (queue.pending, queue.escalated, queue.claimed) == (2, 1, 1)
    assert (queue.inbound_24h, queue.actioned_24h, queue.action_rate) == (6, 2, 0.5)
    assert queue.avg_handling_seconds == 1350.0  # (30 min + 15 min) / 2
    assert queue.oldest_pending_at == at(10, 20, 5)  # escalated p6 still waits for someone
    assert queue.oldest_pending_age_seconds == 2 * 3600 + 9 * 60 + 55
    # Handling runs from the decider's own first claim: alice's lapsed claim of p7 is not bob's.
    assert [
        (m.moderator, m.decided, m.mean_handling_seconds, m.mean_time_to_decision_seconds)
        for m in queue.moderators
    ] == [("alice", 1, 600.0, 1800.0), ("bob", 1, 300.0, 900.0)]


def test_model_versions_and_job_runs(session: Session) -> None:
    seed_registry(session)

    result = overview(session)

    assert [
        (
            m.kind,
            m.version,
            m.status,
            m.gold_macro_f1,
            m.time_split_macro_f1,
            m.validation_macro_f1,
            m.eval_loss,
            m.promoted,
            m.run_id,
        )
        for m in result.model_versions
    ] == [
        ("fast", "fast-base", "retired", None, None, 0.61, None, None, None),
        ("fast", "fast-n1", "champion", 0.64, 0.58, None, None, True, 3),
        ("agent-lora", "lora-1", "challenger", None, None, None, 1.25, None, 3),
    ]
    assert [(r.status, r.duration_seconds, r.promoted, r.error) for r in result.job_runs] == [
        ("running", None, None, None),
        ("failed", 30.0, None, "RuntimeError: boom"),
        ("succeeded", 300.0, True, None),
    ]
    assert result.job_runs[2].counts == {"decisions_in_window": 40}


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({}, (None, None, None, None, None, None)),
        ({"validation": {"macro_f1": 0.7}}, (None, None, 0.7, None, None, None)),
        ({"split": "test", "macro_f1": 0.7}, (None, None, None, None, None, None)),
        (
            {"scores": "garbage", "decision": {"promote": "yes"}, "run_id": True},
            (None, None, None, None, None, None),
        ),
        ({"scores": {"gold": {"macro_f1": "0.9"}}, "eval_loss": float("inf")}, (None,) * 6),
        ([1, 2], (None,) * 6),
    ],
)
def test_model_scores_tolerate_any_shape(metrics: Any, expected: tuple[Any, ...]) -> None:
    assert tuple(crud.model_scores(metrics)) == expected


def test_an_empty_read_model_gives_zeros_and_nulls(session: Session) -> None:
    result = overview(session)

    assert len(result.throughput) == 3
    assert all(b.posts == 0 and b.share_to_humans is None for b in result.throughput)
    assert result.latency == result.latency_window == []
    assert result.latency_sample.rows == 0 and result.latency_sample.oldest is None
    assert result.decision_mix == result.category_mix == result.agreement == []
    assert result.agreement_total.decisions == 0
    assert result.agreement_total.model_agreement is None
    assert result.to_humans.share is None
    assert result.queue.oldest_pending_at is None and result.queue.moderators == []
    assert result.model_versions == result.job_runs == []


# --- the API ------------------------------------------------------------------------------------


async def test_overview_endpoint_answers_moderators_and_admins(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    now = utc_now()
    with Session(engine) as session:
        add_post(session, "recent", now - timedelta(minutes=10))
        add_verdict(
            session,
            "recent",
            occurred=now - timedelta(minutes=10),
            decision="allow",
            category="safe",
            latency_ms=12.0,
        )
        session.commit()
        seed_registry(session)

    for headers in (key(engine, "moderate"), key(engine, "admin")):
        response = await client.get(
            "/v1/metrics/overview", params={"hours": 1, "bucket_minutes": 5}, headers=headers
        )
        assert response.status_code == 200, response.text
    body = response.json()
    assert body["window"]["bucket_minutes"] == 5
    assert len(body["throughput"]) == 13  # 1 h of 5-minute buckets, the first one partial
    assert sum(b["posts"] for b in body["throughput"]) == 1
    assert body["latency_window"][0] | {"start": None} == {
        "start": None,
        "stage": "model",
        "measure": "verdict",
        "count": 1,
        "p50_ms": 12.0,
        "p95_ms": 12.0,
        "p99_ms": 12.0,
    }
    assert [m["version"] for m in body["model_versions"]] == ["fast-base", "fast-n1", "lora-1"]
    assert set(body) == {
        "window",
        "throughput",
        "latency",
        "latency_window",
        "latency_sample",
        "decision_mix",
        "category_mix",
        "to_humans",
        "agreement",
        "agreement_total",
        "reviewer_agreement",
        "reviewer_agreement_total",
        "queue",
        "model_versions",
        "job_runs",
    }


async def test_overview_endpoint_defaults_to_a_day_of_hours(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    response = await client.get("/v1/metrics/overview", headers=key(engine, "moderate"))

    assert response.status_code == 200, response.text
    assert response.json()["window"] | {"since": None, "until": None} == {
        "since": None,
        "until": None,
        "hours": 24.0,
        "bucket_minutes": 60,
    }
    assert len(response.json()["throughput"]) == 25


async def test_overview_endpoint_needs_the_moderate_scope(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    missing = await client.get("/v1/metrics/overview")
    forbidden = await client.get("/v1/metrics/overview", headers=key(engine, "submit", "read"))

    assert missing.status_code == 401
    assert forbidden.status_code == 403
    assert "lacks scope 'moderate'" in forbidden.json()["detail"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hours": 24 * 90, "bucket_minutes": 1}, "at most 2000"),
        ({"hours": 0}, "query hours"),
        ({"bucket_minutes": 0}, "query bucket_minutes"),
        ({"hours": 24 * 91}, "query hours"),
    ],
)
async def test_overview_endpoint_refuses_bad_windows(
    client: httpx.AsyncClient, engine: Engine, params: dict[str, Any], message: str
) -> None:
    response = await client.get(
        "/v1/metrics/overview", params=params, headers=key(engine, "moderate")
    )

    assert response.status_code == 422
    assert message in response.json()["detail"]
