"""The crud module on SQLite: projections, derived status, reviews, keys, registry, audit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import ApiKey, ModelStatus, PostStatus, ReviewStatus
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
    review_id_for,
    utc_now,
)
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests import crud_helpers

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'crud.db'}")
    create_tables(engine)
    with Session(engine) as db_session:
        yield db_session
    engine.dispose()


def post(post_id: str, text: str = "hello") -> PostSubmitted:
    return PostSubmitted(post_id=post_id, text=text, author_id="u1", metadata={"lang": "en"})


def verdict(
    post_id: str,
    decision: Decision,
    *,
    stage: Stage = Stage.MODEL,
    model_version: str = "fast-1",
    at: datetime = T0,
) -> ModerationVerdict:
    scores = dict.fromkeys(CATEGORIES, 0.05)
    return ModerationVerdict(
        post_id=post_id,
        occurred_at=at,
        decision=decision,
        scores=scores,
        primary_category=Category.SAFE,
        confidence=0.9,
        stage=stage,
        model_version=model_version,
        policy_version="v1",
        latency_ms=3.0,
    )


def review(post_id: str) -> ReviewRequested:
    return ReviewRequested(
        post_id=post_id, reason="uncertain", verdict=verdict(post_id, Decision.REVIEW)
    )


def decided(post_id: str, decision: Decision = Decision.REMOVE) -> ReviewDecided:
    return ReviewDecided(
        post_id=post_id, label=Category.SPAM, decision=decision, moderator_id="mod-1"
    )


def status(session: Session, post_id: str) -> PostStatus:
    found = crud.get_post(session, post_id=post_id)
    assert found is not None
    session.refresh(found)
    return found.status


# --- idempotent projections ------------------------------------------------------------------


def test_recording_a_post_twice_keeps_one_row(session: Session) -> None:
    assert crud_helpers.record_post_submitted(session, event=post("p1")) is True
    assert crud_helpers.record_post_submitted(session, event=post("p1", text="other")) is False
    stored = crud.get_post(session, post_id="p1")
    assert stored is not None
    assert (stored.text, stored.author_id, stored.metadata_) == ("hello", "u1", {"lang": "en"})
    assert stored.status is PostStatus.PENDING
    assert crud_helpers.count_posts(session) == 1


def test_a_batch_writes_each_table_once_and_counts_duplicates(session: Session) -> None:
    events = [post("p1"), post("p1"), verdict("p1", Decision.ALLOW), post("p2")]
    first = crud.record_events(session, events=events)
    again = crud.record_events(session, events=events)

    assert first.received == {"posts": 3, "verdicts": 1, "reviews": 0, "decisions": 0}
    assert first.inserted == {"posts": 2, "verdicts": 1, "reviews": 0, "decisions": 0}
    assert first.duplicates == 1
    assert sum(again.inserted.values()) == 0
    assert again.duplicates == 4
    assert crud_helpers.count_posts(session) == 2
    assert crud_helpers.count_verdicts(session) == 1


def test_one_verdict_per_post_stage_and_model_version(session: Session) -> None:
    assert crud_helpers.record_verdict(session, event=verdict("p1", Decision.ALLOW)) is True
    # A redelivered verdict has a new event id but the same natural key.
    assert crud_helpers.record_verdict(session, event=verdict("p1", Decision.ALLOW)) is False
    assert crud_helpers.record_verdict(
        session, event=verdict("p1", Decision.ALLOW, model_version="fast-2")
    )
    assert crud_helpers.record_verdict(
        session, event=verdict("p1", Decision.ALLOW, stage=Stage.AGENT)
    )

    assert crud_helpers.count_verdicts(session, post_ids=["p1"]) == 3
    assert crud_helpers.count_verdicts(session, post_ids=["p1"], stage=Stage.MODEL) == 2
    assert crud_helpers.count_verdicts(session, stage="agent") == 1
    assert crud_helpers.verdicts_per_post(session, stage=Stage.MODEL) == {"p1": 2}
    assert crud_helpers.verdicts_per_post(session, post_ids=["nope"]) == {}
    assert [v.model_version for v in crud_helpers.list_verdicts(session, stage=Stage.MODEL)] == [
        "fast-1",
        "fast-2",
    ]


def test_reviews_one_per_post_and_decisions_append_only(session: Session) -> None:
    assert crud.record_review_requested(session, event=review("p1")) is True
    assert crud.record_review_requested(session, event=review("p1")) is False
    first, second = decided("p1"), decided("p1", Decision.ALLOW)
    assert crud_helpers.record_review_decided(session, event=first) is True
    assert crud_helpers.record_review_decided(session, event=first) is False
    assert crud_helpers.record_review_decided(session, event=second) is True

    trail = crud.get_post_trail(session, post_id="p1")
    assert trail.post is None  # the post itself has not arrived
    assert [r.category for r in trail.reviews] == ["safe"]
    assert [d.event_id for d in trail.decisions] == [first.event_id, second.event_id]


def test_record_events_refuses_an_event_without_a_table(session: Session) -> None:
    from moderation.events import Event

    with pytest.raises(TypeError, match="no table records"):
        crud.record_events(session, events=[Event(post_id="p1")])


# --- derived status --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Decision.ALLOW, PostStatus.ALLOWED),
        (Decision.REMOVE, PostStatus.REMOVED),
        (Decision.REVIEW, PostStatus.IN_REVIEW),
    ],
)
def test_a_model_verdict_sets_the_status(
    session: Session, decision: Decision, expected: PostStatus
) -> None:
    crud_helpers.record_post_submitted(session, event=post("p1"))
    crud_helpers.record_verdict(session, event=verdict("p1", decision))
    assert status(session, "p1") is expected


def test_a_verdict_that_arrives_before_its_post_still_sets_the_status(session: Session) -> None:
    crud_helpers.record_verdict(session, event=verdict("p1", Decision.REMOVE))
    assert crud.get_post(session, post_id="p1") is None
    crud_helpers.record_post_submitted(session, event=post("p1"))
    assert status(session, "p1") is PostStatus.REMOVED


def test_post_and_verdict_in_one_batch_in_either_order(session: Session) -> None:
    crud.record_events(session, events=[verdict("a", Decision.ALLOW), post("a")])
    crud.record_events(session, events=[post("b"), verdict("b", Decision.REMOVE)])
    assert status(session, "a") is PostStatus.ALLOWED
    assert status(session, "b") is PostStatus.REMOVED


@pytest.mark.parametrize("agent_first", [False, True])
def test_the_agent_verdict_outranks_the_model_verdict(session: Session, agent_first: bool) -> None:
    model = verdict("p1", Decision.REVIEW, at=T0 + timedelta(seconds=5))
    agent = verdict("p1", Decision.ALLOW, stage=Stage.AGENT, model_version="agent-1", at=T0)
    crud_helpers.record_post_submitted(session, event=post("p1"))
    for event in [agent, model] if agent_first else [model, agent]:
        crud_helpers.record_verdict(session, event=event)
    assert status(session, "p1") is PostStatus.ALLOWED


def test_the_latest_verdict_of_a_stage_wins(session: Session) -> None:
    crud_helpers.record_post_submitted(session, event=post("p1"))
    later = verdict("p1", Decision.REMOVE, model_version="fast-2", at=T0 + timedelta(minutes=1))
    crud_helpers.record_verdict(session, event=later)
    crud_helpers.record_verdict(session, event=verdict("p1", Decision.ALLOW, at=T0))  # late arrival
    assert status(session, "p1") is PostStatus.REMOVED


def test_a_review_request_alone_means_in_review(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])
    assert status(session, "p1") is PostStatus.IN_REVIEW


def test_a_human_decision_is_final(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), verdict("p1", Decision.REVIEW), review("p1")])
    crud_helpers.record_review_decided(session, event=decided("p1"))
    assert status(session, "p1") is PostStatus.DECIDED
    trail = crud.get_post_trail(session, post_id="p1")
    assert [r.status for r in trail.reviews] == [ReviewStatus.DECIDED]

    # A later automated verdict never moves a decided post back.
    late = verdict("p1", Decision.ALLOW, stage=Stage.AGENT, model_version="agent-1")
    crud_helpers.record_verdict(session, event=late)
    assert status(session, "p1") is PostStatus.DECIDED


def test_a_decision_before_its_review_and_post_still_decides_both(session: Session) -> None:
    crud_helpers.record_review_decided(session, event=decided("p1"))
    crud.record_review_requested(session, event=review("p1"))
    crud_helpers.record_post_submitted(session, event=post("p1"))
    assert status(session, "p1") is PostStatus.DECIDED
    trail = crud.get_post_trail(session, post_id="p1")
    assert [r.status for r in trail.reviews] == [ReviewStatus.DECIDED]


def test_a_human_stage_verdict_decides(session: Session) -> None:
    crud_helpers.record_post_submitted(session, event=post("p1"))
    crud_helpers.record_verdict(
        session, event=verdict("p1", Decision.ALLOW, stage=Stage.HUMAN, model_version="mod-1")
    )
    assert status(session, "p1") is PostStatus.DECIDED
    assert crud_helpers.count_posts(session, status=PostStatus.DECIDED) == 1
    assert crud_helpers.count_posts(session, post_ids=["p1", "p2"], status=PostStatus.PENDING) == 0


def test_post_trail_lists_everything_in_order(session: Session) -> None:
    crud.record_events(
        session,
        events=[
            post("p1"),
            verdict("p1", Decision.REVIEW, at=T0),
            verdict(
                "p1", Decision.REVIEW, stage=Stage.AGENT, model_version="a", at=T0 + timedelta(1)
            ),
            review("p1"),
            decided("p1"),
        ],
    )
    trail = crud.get_post_trail(session, post_id="p1")
    assert trail.post is not None and trail.post.id == "p1"
    assert [v.stage for v in trail.verdicts] == ["model", "agent"]
    assert len(trail.reviews) == 1 and len(trail.decisions) == 1
    post_row, verdicts, reviews, decisions = trail  # unpacks like a tuple
    assert post_row is trail.post and verdicts and reviews and decisions


# --- API keys --------------------------------------------------------------------------------


def test_api_key_create_and_authenticate(session: Session) -> None:
    plaintext, api_key = crud.create_api_key(session, name="ci", scopes=["read", "submit", "read"])
    scheme, prefix, secret = plaintext.split("_", 2)
    assert (scheme, prefix) == ("mod", api_key.prefix)
    assert len(secret) >= 32
    assert api_key.scopes == ["read", "submit"]
    stored = session.exec(select(ApiKey)).one()
    assert plaintext not in (stored.key_hash, stored.prefix)  # only a hash is at rest

    found = crud.authenticate_api_key(session, key=plaintext)
    assert found is not None and found.id == api_key.id


@pytest.mark.parametrize(
    "mangle",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),  # wrong secret
        lambda key: "mod_000000000000_" + key.split("_", 2)[2],  # unknown prefix
        lambda key: key.replace("mod_", "xyz_", 1),  # wrong scheme
        lambda key: "",
        lambda key: "mod_",
        lambda key: key + "x" * 300,
    ],
)
def test_api_key_rejects_anything_else(session: Session, mangle: object) -> None:
    plaintext, _ = crud.create_api_key(session, name="ci", scopes=["read"])
    assert callable(mangle)
    assert crud.authenticate_api_key(session, key=mangle(plaintext)) is None


def test_a_revoked_key_no_longer_authenticates(session: Session) -> None:
    plaintext, api_key = crud.create_api_key(session, name="ci", scopes=["admin"])
    assert crud.revoke_api_key(session, prefix=api_key.prefix) is True
    assert crud.revoke_api_key(session, prefix=api_key.prefix) is False
    assert crud.authenticate_api_key(session, key=plaintext) is None


def test_unknown_scopes_are_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="unknown scopes"):
        crud.create_api_key(session, name="ci", scopes=["read", "root"])


# --- idempotency keys ------------------------------------------------------------------------


def test_idempotency_key_binds_the_first_post_id(session: Session) -> None:
    assert crud.claim_idempotency_key(session, key="k1", post_id="p1") == ("p1", False)
    # A retry (even proposing a new id) gets the first id back; nothing was published yet.
    assert crud.claim_idempotency_key(session, key="k1", post_id="p2") == ("p1", False)
    crud.mark_published(session, key="k1")
    assert crud.claim_idempotency_key(session, key="k1", post_id="p3") == ("p1", True)
    assert crud.claim_idempotency_key(session, key="k2", post_id="p4") == ("p4", False)


def test_idempotency_key_length_is_checked(session: Session) -> None:
    with pytest.raises(ValueError, match="300"):
        crud.claim_idempotency_key(session, key="k" * 301, post_id="p1")


# --- model registry, audit, job runs ---------------------------------------------------------


def test_registry_has_one_champion_per_kind(session: Session) -> None:
    challenger = crud.register_model_version(
        session, kind="fast", version="v1", artifact_uri="file:///m/v1", metrics={"f1": 0.8}
    )
    assert challenger.status is ModelStatus.CHALLENGER
    assert crud.get_champion(session, kind="fast") is None

    crud.register_model_version(
        session,
        kind="fast",
        version="v2",
        artifact_uri="file:///m/v2",
        metrics={"f1": 0.9},
        status=ModelStatus.CHAMPION,
    )
    crud.register_model_version(
        session,
        kind="agent-lora",
        version="l1",
        artifact_uri="file:///l/1",
        metrics={},
        status=ModelStatus.CHAMPION,
    )
    champion = crud.get_champion(session, kind="fast")
    assert champion is not None and champion.version == "v2"

    promoted = crud.promote_model_version(session, kind="fast", version="v1")
    assert promoted.status is ModelStatus.CHAMPION
    statuses = {m.version: m.status for m in crud_helpers.list_model_versions(session, kind="fast")}
    assert statuses == {"v1": ModelStatus.CHAMPION, "v2": ModelStatus.RETIRED}
    other = crud.get_champion(session, kind="agent-lora")
    assert other is not None and other.version == "l1"

    # Registering a known version again is a no-op that returns it.
    again = crud.register_model_version(
        session, kind="fast", version="v1", artifact_uri="ignored", metrics={}
    )
    assert (again.id, again.status, again.artifact_uri) == (
        challenger.id,
        ModelStatus.CHAMPION,
        "file:///m/v1",
    )
    with pytest.raises(LookupError):
        crud.promote_model_version(session, kind="fast", version="v9")


def test_audit_entries_keep_json_states(session: Session) -> None:
    entry = crud.append_audit(
        session,
        actor="admin@example",
        action="model.promote",
        entity="model_version",
        entity_id="fast:v2",
        before={"status": ModelStatus.CHALLENGER, "at": T0},
        after={"status": ModelStatus.CHAMPION},
    )
    assert entry.id is not None
    assert entry.before == {"status": "challenger", "at": "2026-11-21T12:00:00Z"}
    assert entry.after == {"status": "champion"}


def test_job_runs_start_and_finish(session: Session) -> None:
    run = crud.start_job_run(session, job="nightly", details={"since": T0})
    assert run.status == "running" and run.id is not None
    done = crud.finish_job_run(
        session, run_id=run.id, status="succeeded", counts={"rows": 3}, details={"model": "v2"}
    )
    assert (done.status, done.counts) == ("succeeded", {"rows": 3})
    assert done.details == {"since": "2026-11-21T12:00:00Z", "model": "v2"}
    assert done.finished_at is not None
    with pytest.raises(LookupError):
        crud.finish_job_run(session, run_id=999, status="failed")


def test_post_statuses_of_recorded_posts(session: Session) -> None:
    crud.record_events(session, events=[post("a"), post("b"), verdict("b", Decision.REMOVE)])
    assert crud_helpers.post_statuses(session, post_ids=["a", "b", "missing"]) == {
        "a": PostStatus.PENDING,
        "b": PostStatus.REMOVED,
    }


def test_benchmark_progress_reads_count_an_authors_verdicts(session: Session) -> None:
    other = PostSubmitted(post_id="x1", text="hi", author_id="someone-else")
    crud.record_events(
        session,
        events=[
            post("b1"),
            post("b2"),
            other,
            verdict("b1", Decision.ALLOW),
            verdict("x1", Decision.ALLOW),
        ],
    )
    assert crud.count_author_verdicts(session, author_id="u1", stage=Stage.MODEL) == 1
    timings = crud.verdict_timings(session, author_id="u1", stage=Stage.MODEL)
    assert [post_id for post_id, _, _ in timings] == ["b1"]
    _, submitted, recorded = timings[0]
    assert submitted.tzinfo is not None and recorded >= submitted
    assert crud.count_author_verdicts(session, author_id="u1", stage=Stage.AGENT) == 0


# --- reviews: appeals, claims, decisions, escalation, the schema upgrade ------------------------


def appeal(post_id: str, number: int, appeal_of: str) -> ReviewRequested:
    return ReviewRequested(
        review_id=review_id_for(post_id, number),
        post_id=post_id,
        reason="appeal",
        priority=ReviewPriority.HIGH,
        verdict=verdict(post_id, Decision.REVIEW),
        appeal_of=appeal_of,
    )


def decided_review(post_id: str, review_id: str, at: datetime = T0) -> ReviewDecided:
    return ReviewDecided(
        review_id=review_id,
        post_id=post_id,
        label=Category.SPAM,
        decision=Decision.ALLOW,
        moderator_id="mod-2",
        occurred_at=at,
    )


def review_status(session: Session, review_id: str) -> ReviewStatus:
    view = crud.get_review(session, review_id=review_id, now=utc_now())
    assert view is not None
    return view.status


def test_an_open_appeal_puts_a_decided_post_back_in_review(session: Session) -> None:
    first = decided("p1")
    crud.record_events(session, events=[post("p1"), verdict("p1", Decision.REVIEW), review("p1")])
    crud_helpers.record_review_decided(session, event=first)
    assert status(session, "p1") is PostStatus.DECIDED

    assert crud.record_review_requested(session, event=appeal("p1", 1, first.event_id)) is True
    assert status(session, "p1") is PostStatus.IN_REVIEW
    # The earlier decision does not close the appeal: it closes only the review it names.
    assert review_status(session, "review-p1-appeal-1") is ReviewStatus.PENDING
    assert review_status(session, "review-p1") is ReviewStatus.DECIDED
    open_appeal = crud.open_appeal_for(session, post_id="p1")
    assert open_appeal is not None and open_appeal.appeal_of == first.event_id

    second = decided_review("p1", "review-p1-appeal-1", at=utc_now())
    crud.record_human_decision(session, event=second)
    assert status(session, "p1") is PostStatus.DECIDED
    assert review_status(session, "review-p1-appeal-1") is ReviewStatus.DECIDED
    assert crud.open_appeal_for(session, post_id="p1") is None
    assert crud.count_appeals(session, post_id="p1") == 1
    latest = crud.latest_decision(session, post_id="p1")
    assert latest is not None and latest.review_id == "review-p1-appeal-1"


def test_the_api_deciding_an_appeal_refreshes_the_post_status(session: Session) -> None:
    first = decided("p1")
    crud.record_events(session, events=[post("p1"), review("p1"), first])
    crud.record_review_requested(session, event=appeal("p1", 1, first.event_id))
    crud.claim_review(
        session, review_id="review-p1-appeal-1", moderator="mod-2", now=T0, claim_seconds=60
    )
    decision = decided_review("p1", "review-p1-appeal-1", at=T0 + timedelta(seconds=10))

    assert crud.begin_decision(session, decision=decision, is_admin=False) is (
        crud.DecisionStart.STARTED
    )
    assert status(session, "p1") is PostStatus.DECIDED  # the first decision stands meanwhile

    assert crud.revert_decision(session, decision=decision, reason="dapr down") is True
    assert status(session, "p1") is PostStatus.IN_REVIEW


def test_begin_decision_tells_why_it_did_not_start(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])
    by_mod = decided_review("p1", "review-p1")
    missing = decided_review("p1", "review-nope")

    assert crud.begin_decision(session, decision=missing, is_admin=True) is (
        crud.DecisionStart.NOT_FOUND
    )
    assert crud.begin_decision(session, decision=by_mod, is_admin=False) is (
        crud.DecisionStart.NOT_CLAIMER
    )
    assert crud.begin_decision(session, decision=by_mod, is_admin=True) is (
        crud.DecisionStart.STARTED
    )
    assert crud.begin_decision(session, decision=by_mod, is_admin=True) is (
        crud.DecisionStart.ALREADY_DECIDED
    )


def test_revert_undoes_only_that_attempt_and_never_a_recorded_decision(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])
    crud.claim_review(session, review_id="review-p1", moderator="mod-2", now=T0, claim_seconds=60)
    attempt = decided_review("p1", "review-p1", at=T0 + timedelta(seconds=1))
    other = decided_review("p1", "review-p1", at=T0 + timedelta(seconds=2))
    crud.begin_decision(session, decision=attempt, is_admin=False)

    assert crud.revert_decision(session, decision=other, reason="not this one") is False
    crud.record_human_decision(session, event=attempt)  # the workflow recorded it after all
    assert crud.revert_decision(session, decision=attempt, reason="too late") is False
    assert review_status(session, "review-p1") is ReviewStatus.DECIDED


def test_a_reverted_claimless_decision_goes_back_to_pending_or_escalated(
    session: Session,
) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])
    crud.escalate_review(session, review_id="review-p1", now=T0)
    attempt = decided_review("p1", "review-p1", at=utc_now())
    crud.begin_decision(session, decision=attempt, is_admin=True)

    assert crud.revert_decision(session, decision=attempt, reason="dapr down") is True
    assert review_status(session, "review-p1") is ReviewStatus.ESCALATED


def test_escalation_raises_the_priority_one_step_until_decided(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])
    crud.claim_review(session, review_id="review-p1", moderator="m", now=T0, claim_seconds=60)

    steps = [crud.escalate_review(session, review_id="review-p1", now=T0) for _ in range(3)]

    assert steps == ["high", "urgent", "urgent"]
    view = crud.get_review(session, review_id="review-p1", now=T0)
    assert view is not None and view.status is ReviewStatus.CLAIMED  # the claim holds
    later = crud.get_review(session, review_id="review-p1", now=T0 + timedelta(minutes=5))
    assert later is not None and later.status is ReviewStatus.ESCALATED
    crud.record_human_decision(session, event=decided_review("p1", "review-p1"))
    assert crud.escalate_review(session, review_id="review-p1", now=T0) is None
    assert crud.escalate_review(session, review_id="review-nope", now=T0) is None
    actions = [entry.action for entry in crud_helpers.list_audit(session, entity_id="review-p1")]
    assert actions == ["review.claim", "review.escalate", "review.escalate", "review.escalate"]


def test_create_review_task_is_idempotent_and_sets_the_sla_once(session: Session) -> None:
    request = review("p1")
    crud.record_review_requested(session, event=request)  # the recorder was first

    first = crud.create_review_task(session, event=request, sla_due_at=T0)
    again = crud.create_review_task(session, event=request, sla_due_at=T0 + timedelta(hours=1))

    assert first.review_id == again.review_id == "review-p1"
    assert first.sla_due_at == again.sla_due_at == T0
    assert crud.list_reviews(session, now=T0)[1] == 1


def test_record_human_decision_is_idempotent_and_closes_its_review(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])
    decision = decided_review("p1", "review-p1", at=T0)

    assert crud.record_human_decision(session, event=decision) is True
    assert crud.record_human_decision(session, event=decision) is False
    view = crud.get_review(session, review_id="review-p1", now=T0)
    assert view is not None
    assert (view.status, view.review.decided_by, view.review.decided_at) == (
        ReviewStatus.DECIDED,
        "mod-2",
        T0,
    )


def test_claims_are_exclusive_until_they_lapse(session: Session) -> None:
    crud.record_events(session, events=[post("p1"), review("p1")])

    def claim(moderator: str, at: datetime) -> crud.ReviewView | None:
        return crud.claim_review(
            session, review_id="review-p1", moderator=moderator, now=at, claim_seconds=60
        )

    assert claim("a", T0) is not None
    assert claim("b", T0 + timedelta(seconds=59)) is None
    extended = claim("a", T0 + timedelta(seconds=30))
    assert extended is not None and extended.review.claim_expires_at == T0 + timedelta(seconds=90)
    assert claim("b", T0 + timedelta(seconds=89)) is None
    taken = claim("b", T0 + timedelta(seconds=90))
    assert taken is not None and taken.review.claimed_by == "b"
    assert claim("c", T0) is None  # b's claim is live at that time
    assert (
        crud.claim_review(session, review_id="nope", moderator="a", now=T0, claim_seconds=60)
        is None
    )


def test_old_decision_events_without_review_ids_close_the_first_review(session: Session) -> None:
    legacy = ReviewDecided(
        post_id="p1", label=Category.SPAM, decision=Decision.REMOVE, moderator_id="m"
    )
    assert legacy.review_id == ""
    crud.record_events(session, events=[post("p1"), review("p1"), legacy])

    [row] = crud.get_post_trail(session, post_id="p1").decisions
    assert row.review_id == "review-p1"
    assert review_status(session, "review-p1") is ReviewStatus.DECIDED


def test_the_automated_verdict_is_the_agents_over_the_models(session: Session) -> None:
    crud.record_events(
        session,
        events=[
            verdict("p1", Decision.REVIEW, at=T0 + timedelta(minutes=1)),
            verdict("p1", Decision.ALLOW, stage=Stage.AGENT, model_version="agent-1", at=T0),
            verdict("p1", Decision.REMOVE, stage=Stage.HUMAN, model_version="mod", at=T0),
            verdict("p2", Decision.REMOVE),
        ],
    )

    found = crud.latest_automated_verdicts(session, post_ids=["p1", "p2", "p3"])

    assert {post_id: v.stage for post_id, v in found.items()} == {"p1": "agent", "p2": "model"}
    assert crud.latest_automated_verdict(session, post_id="p3") is None


def test_upgrade_schema_brings_an_old_review_table_up_to_date(tmp_path: Path) -> None:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'old.db'}")
    old_schema = [
        """CREATE TABLE reviews (id INTEGER PRIMARY KEY, post_id VARCHAR(64) NOT NULL UNIQUE,
        status VARCHAR(16) NOT NULL, priority VARCHAR(16) NOT NULL, reason VARCHAR NOT NULL,
        category VARCHAR(32) NOT NULL, claimed_by VARCHAR, claim_expires_at DATETIME,
        sla_due_at DATETIME, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)""",
        "CREATE INDEX ix_reviews_status ON reviews (status)",
        "CREATE INDEX ix_reviews_priority ON reviews (priority)",
        "CREATE INDEX ix_reviews_category ON reviews (category)",
        """CREATE TABLE decisions (id INTEGER PRIMARY KEY, event_id VARCHAR(64) NOT NULL UNIQUE,
        post_id VARCHAR(64) NOT NULL, label VARCHAR(32) NOT NULL, decision VARCHAR(16) NOT NULL,
        moderator_id VARCHAR NOT NULL, note VARCHAR, decided_at DATETIME NOT NULL)""",
        """INSERT INTO reviews VALUES (1, 'p1', 'decided', 'normal', 'uncertain', 'spam', NULL,
        NULL, NULL, '2026-11-21 12:00:00.000000', '2026-11-21 12:00:00.000000')""",
        """INSERT INTO decisions VALUES (1, 'e1', 'p1', 'spam', 'remove', 'm', NULL,
        '2026-11-21 12:05:00.000000')""",
    ]
    with engine.begin() as connection:
        for statement in old_schema:
            connection.exec_driver_sql(statement)

    create_tables(engine)
    create_tables(engine)  # idempotent

    with Session(engine) as session:
        [old] = crud.get_post_trail(session, post_id="p1").reviews
        assert (old.review_id, old.status, old.created_at) == ("review-p1", "decided", T0)
        [decision] = crud.get_post_trail(session, post_id="p1").decisions
        assert (decision.review_id, decision.overrode) == ("review-p1", None)
        # post_id is no longer unique: an appeal of the same post gets its own review.
        assert crud.record_review_requested(session, event=appeal("p1", 1, "e1")) is True
        assert crud.record_review_requested(session, event=appeal("p1", 1, "e1")) is False
        assert crud.count_appeals(session, post_id="p1") == 1
    engine.dispose()
