"""Strikes and the enforcement ladder, derived by the recorder's projection (SQLite), and the
enforcement policy's validation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.db.models import AuthorAction, Strike
from moderation.events import (
    ActionKind,
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    utc_now,
)
from moderation.policy import POLICY_DIR, EnforcementPolicy, load_enforcement, parse_enforcement
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

POLICY = load_enforcement()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'strikes.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


def post(post_id: str, author: str = "a1", tenant: str = "default") -> PostSubmitted:
    return PostSubmitted(post_id=post_id, text=f"text {post_id}", author_id=author, tenant=tenant)


def verdict(
    post_id: str,
    decision: Decision = Decision.REMOVE,
    category: Category = Category.SPAM,
    stage: Stage = Stage.MODEL,
) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=decision,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=category,
        confidence=0.9,
        stage=stage,
        model_version=f"{stage.value}-1",
        policy_version="v1",
        latency_ms=1.0,
    )


def decided(post_id: str, decision: Decision, label: Category = Category.SPAM) -> ReviewDecided:
    return ReviewDecided(
        post_id=post_id,
        label=Category.SAFE if decision is Decision.ALLOW else label,
        decision=decision,
        moderator_id="key:1",
    )


def record(engine: Engine, *events: Event, enforcement: EnforcementPolicy | None = POLICY) -> None:
    with Session(engine) as session:
        crud.record_events(session, events=list(events), enforcement=enforcement)


def strikes(engine: Engine, author: str = "a1") -> list[Strike]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Strike).where(Strike.author_id == author).order_by(col(Strike.id))
            ).all()
        )


def actions(engine: Engine, author: str = "a1") -> list[AuthorAction]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(AuthorAction)
                .where(AuthorAction.author_id == author)
                .order_by(col(AuthorAction.id))
            ).all()
        )


def kinds(engine: Engine, author: str = "a1") -> list[str]:
    return [a.action for a in actions(engine, author)]


# --- the policy ------------------------------------------------------------------------------


def test_the_shipped_policy_is_valid_and_covers_every_violation() -> None:
    assert POLICY.version == "e1"
    for category in CATEGORIES[1:]:
        name, severity = POLICY.severity_of(category.value)
        assert name in POLICY.severities and severity.expiry_days > 0
    assert [s.strikes for s in POLICY.ladder] == sorted(s.strikes for s in POLICY.ladder)


def _policy_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((POLICY_DIR / "enforcement.yaml").read_text())
    return data


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["categories"].pop("hate"), "no severity for hate"),
        (lambda d: d["categories"].update(spam="mild"), "unknown severity mild"),
        (lambda d: d["categories"].update(safe="low"), "`safe` is not a violation"),
        (lambda d: d["ladder"].reverse(), "strictly increasing"),
        (lambda d: d["ladder"][2].pop("days"), "action suspend needs `days`"),
        (lambda d: d["ladder"][0].update(days=3), "action warn takes no `days`"),
        (lambda d: d["ladder"][0].update(action="shame"), "ladder.0.action"),
        (lambda d: d["severities"]["low"].update(weight=-1), "severities.low.weight"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_problem(change: Any, problem: str) -> None:
    data = _policy_data()
    change(data)
    with pytest.raises(ValueError, match="invalid enforcement policy") as error:
        parse_enforcement(data, source="test.yaml")
    assert problem in str(error.value)


def test_ladder_maths() -> None:
    assert [POLICY.step_for(points) for points in range(7)] == [-1, 0, 1, 2, 2, 3, 3]
    assert POLICY.threshold_of(ActionKind.SUSPEND, 7) == 3
    assert POLICY.threshold_of(ActionKind.SUSPEND, 8) is None


# --- strikes ---------------------------------------------------------------------------------


def test_an_automated_removal_gives_one_strike_and_a_warning(engine: Engine) -> None:
    removal = verdict("p1")
    record(engine, post("p1"), removal)
    [strike] = strikes(engine)
    assert (strike.post_id, strike.category, strike.severity, strike.weight) == (
        "p1",
        "spam",
        "low",
        1,
    )
    assert strike.cause_event_id == removal.event_id
    assert strike.expires_at - strike.issued_at == timedelta(days=30)
    [warn] = actions(engine)
    assert (warn.action, warn.threshold, warn.active_strikes) == ("warn", 1, 1)
    assert warn.strike_ids == [strike.id] and warn.post_id == "p1" and not warn.published


def test_allowed_posts_and_other_stages_take_no_strike(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1", Decision.ALLOW), post("p2"))
    record(engine, verdict("p2", Decision.REVIEW))
    assert strikes(engine) == [] and actions(engine) == []


def test_a_post_counts_once_whatever_its_stages_say(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1"))
    record(engine, verdict("p1", stage=Stage.AGENT))  # another stage removes it too
    record(engine, decided("p1", Decision.REMOVE))  # and a moderator
    record(engine, decided("p1", Decision.REMOVE))  # twice
    assert len(strikes(engine)) == 1
    assert kinds(engine) == ["warn"]


def test_n_removals_climb_the_ladder(engine: Engine) -> None:
    for number in range(1, 6):
        record(engine, post(f"p{number}"), verdict(f"p{number}"))
    assert kinds(engine) == ["warn", "rate_limit", "suspend", "ban"]
    suspend = actions(engine)[2]
    assert suspend.days == 7 and suspend.until is not None
    assert suspend.until - suspend.created_at == timedelta(days=7)
    assert len(suspend.strike_ids) == 3
    ban = actions(engine)[3]
    assert ban.until is None and ban.active_strikes == 5


def test_a_prolific_authors_strikes_are_read_only_up_to_the_ladders_top(engine: Engine) -> None:
    from sqlalchemy import event

    from moderation.db.crud.strikes import _active_points

    # A spam account: 40 removals in batches, then a few more, one batch each.
    for start in range(0, 40, 10):
        events: list[Event] = []
        for number in range(start, start + 10):
            events += [post(f"p{number}"), verdict(f"p{number}")]
        record(engine, *events)
    assert kinds(engine) == ["warn", "rate_limit", "suspend", "ban"]
    now = utc_now()
    with Session(engine) as session:
        assert _active_points(session, "default", "a1", now) == 40
        assert _active_points(session, "default", "a1", now, cap=5) == 5
        first_two = [s.id for s in strikes(engine)[:2] if s.id is not None]
        assert _active_points(session, "default", "a1", now, excluding=first_two) == 38
    # Further removals take strikes but read at most the top's worth of the others' rows.
    fetched: list[int] = []

    def count_rows(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "sum(" in statement.lower():
            fetched.append(statement.upper().count("LIMIT"))

    event.listen(engine, "after_cursor_execute", count_rows)
    try:
        record(engine, post("p40"), verdict("p40"), post("p41"), verdict("p41"))
    finally:
        event.remove(engine, "after_cursor_execute", count_rows)
    assert fetched == [1]  # one capped sum, no uncapped one
    assert len(strikes(engine)) == 42
    assert kinds(engine) == ["warn", "rate_limit", "suspend", "ban"]  # banned already: no step


def test_a_heavy_strike_jumps_to_the_step_it_reaches(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1", category=Category.SEXUAL_MINORS))
    assert kinds(engine) == ["ban"]


def test_a_support_strike_weighs_nothing(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1", category=Category.SELF_HARM))
    [strike] = strikes(engine)
    assert strike.severity == "support" and strike.weight == 0
    assert actions(engine) == []


def test_the_event_order_does_not_matter(engine: Engine) -> None:
    # The verdict before the post (different topics), the decision before both.
    record(engine, verdict("p1"))
    assert strikes(engine) == []
    record(engine, post("p1"))
    assert len(strikes(engine)) == 1


def test_a_batch_replayed_changes_nothing(engine: Engine) -> None:
    events = [post("p1"), verdict("p1"), post("p2"), verdict("p2")]
    record(engine, *events)
    record(engine, *events)
    assert len(strikes(engine)) == 2 and kinds(engine) == ["warn", "rate_limit"]


def test_other_writers_leave_strikes_to_the_recorder(engine: Engine) -> None:
    remove = decided("p1", Decision.REMOVE)
    record(engine, post("p1"), enforcement=None)
    record(engine, remove, enforcement=None)  # the review workflow's persist activity
    assert strikes(engine) == []
    record(engine, remove)  # the recorder reads the same decision back from Kafka
    [strike] = strikes(engine)
    assert strike.cause_event_id == remove.event_id


def test_authors_are_per_tenant(engine: Engine) -> None:
    record(engine, post("p1", tenant="t1"), verdict("p1"), post("p2", tenant="t2"), verdict("p2"))
    by_tenant = {a.tenant: a.action for a in actions(engine)}
    assert by_tenant == {"t1": "warn", "t2": "warn"}


def test_an_expired_strike_no_longer_counts(engine: Engine) -> None:
    old = verdict("p1").model_copy(update={"occurred_at": utc_now() - timedelta(days=31)})
    record(engine, post("p1"), old)
    [strike] = strikes(engine)
    assert actions(engine) == []  # expired (30 days) when recorded: nothing to climb
    record(engine, post("p2"), verdict("p2"))
    assert kinds(engine) == ["warn"]
    with Session(engine) as session:
        assert crud.strike_state(strike, utc_now()) == "expired"
        rows = crud.get_author(session, tenant="default", author_id="a1", limit=10, offset=0)
    assert rows is not None
    standing = crud.author_standing(rows.strikes, rows.actions, utc_now())
    assert (standing.status, standing.active_strikes) == ("warned", 1)


# --- overturns and reversals ------------------------------------------------------------------


def test_an_allowed_review_of_an_automated_removal_overturns_its_strike(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1"))
    allow = decided("p1", Decision.ALLOW)
    record(engine, allow)
    [strike] = strikes(engine)
    assert strike.overturned_by == allow.event_id and strike.overturned_at is not None
    warn, reverse = actions(engine)
    assert (warn.action, warn.reversed_by) == ("warn", reverse.action_id)
    assert (reverse.action, reverse.reverses, reverse.post_id) == (
        "reverse",
        warn.action_id,
        "p1",
    )
    assert reverse.active_strikes == 0


def test_an_overturned_appeal_reverses_the_action_it_caused(engine: Engine) -> None:
    for number in range(1, 4):
        record(
            engine,
            post(f"p{number}"),
            verdict(f"p{number}"),
            decided(f"p{number}", Decision.REMOVE),
        )
    assert kinds(engine) == ["warn", "rate_limit", "suspend"]
    # The appeal of p3's removal is allowed: 2 points left, the suspension no longer holds,
    # the rate limit and the warning still do.
    record(engine, decided("p3", Decision.ALLOW))
    rows = actions(engine)
    reversals = [a for a in rows if a.action == "reverse"]
    suspend = next(a for a in rows if a.action == "suspend")
    assert [r.reverses for r in reversals] == [suspend.action_id]
    assert suspend.reversed_by == reversals[0].action_id
    assert all(a.reversed_by is None for a in rows if a.action in ("warn", "rate_limit"))
    with Session(engine) as session:
        author = crud.get_author(session, tenant="default", author_id="a1", limit=10, offset=0)
    assert author is not None
    standing = crud.author_standing(author.strikes, author.actions, utc_now())
    assert (standing.status, standing.active_strikes) == ("rate_limited", 2)


def test_an_overturn_keeps_actions_the_other_strikes_still_reach(engine: Engine) -> None:
    for number in range(1, 4):
        record(engine, post(f"p{number}"), verdict(f"p{number}"))
    # p1's strike counted for every action; without it 2 points remain.
    record(engine, decided("p1", Decision.ALLOW))
    reversed_kinds = {a.action for a in actions(engine) if a.reversed_by is not None}
    assert reversed_kinds == {"suspend"}


def test_a_removal_after_an_overturn_counts_again(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1"))
    record(engine, decided("p1", Decision.ALLOW))
    again = decided("p1", Decision.REMOVE)
    record(engine, again)
    [strike] = strikes(engine)
    assert strike.overturned_at is None and strike.cause_event_id == again.event_id
    assert kinds(engine) == ["warn", "reverse", "warn"]


# --- the outbox -------------------------------------------------------------------------------


def test_the_outbox_lists_actions_until_they_are_marked_published(engine: Engine) -> None:
    record(engine, post("p1"), verdict("p1"), post("p2"), verdict("p2"))
    with Session(engine) as session:
        pending = crud.unpublished_author_actions(session)
        assert [a.action for a in pending] == ["warn", "rate_limit"]
        event = crud.author_actioned_event(pending[1])
        assert event.event_id == pending[1].event_id and event.post_id == "p2"
        assert (event.tenant, event.author_id, event.action, event.days) == (
            "default",
            "a1",
            ActionKind.RATE_LIMIT,
            1,
        )
        assert (
            crud.mark_author_actions_published(session, ids=[pending[0].id or 0], now=utc_now())
            == 1
        )
    with Session(engine) as session:
        assert [a.action for a in crud.unpublished_author_actions(session)] == ["rate_limit"]
