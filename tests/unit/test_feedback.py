"""The nightly aggregation on SQLite: one window of decisions, and numbers computed by hand."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from jobs.feedback import (
    CATEGORY_NAMES,
    DECISION_COLUMNS,
    PSI_EPSILON,
    FeedbackCounts,
    load_decisions,
    summarize,
)
from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.events import (
    Event,
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewRequested,
    review_id_for,
)
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(), url=f"sqlite:///{tmp_path / 'feedback.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


def record(engine: Engine, *events: Event) -> None:
    with Session(engine) as session:
        crud.record_events(session, events=list(events))


def post(post_id: str, text: str = "some text") -> PostSubmitted:
    return PostSubmitted(post_id=post_id, text=text, author_id=f"author-{post_id}")


def verdict(
    post_id: str,
    decision: Decision,
    category: Category,
    confidence: float,
    *,
    stage: Stage = Stage.MODEL,
    version: str = "fast-1",
    at: datetime = T0 - 60 * MINUTE,
) -> ModerationVerdict:
    scores = dict.fromkeys(CATEGORIES, 0.0) | {category: confidence}
    return ModerationVerdict(
        post_id=post_id,
        occurred_at=at,
        decision=decision,
        scores=scores,
        primary_category=category,
        confidence=confidence,
        stage=stage,
        model_version=version,
        policy_version="v1",
        latency_ms=1.0,
    )


def decided(
    post_id: str,
    label: Category,
    decision: Decision,
    at: datetime,
    *,
    moderator: str = "mod-1",
    review_id: str = "",
    note: str | None = None,
) -> ReviewDecided:
    return ReviewDecided(
        post_id=post_id,
        occurred_at=at,
        review_id=review_id,
        label=label,
        decision=decision,
        moderator_id=moderator,
        note=note,
    )


SAFE, SPAM, HARASSMENT, HATE = Category.SAFE, Category.SPAM, Category.HARASSMENT, Category.HATE
ALLOW, REMOVE, REVIEW = Decision.ALLOW, Decision.REMOVE, Decision.REVIEW


@pytest.fixture
def scenario(engine: Engine) -> Engine:
    """Two windows: previous = (-inf, T0], current = (T0, T0 + 1h].

    Current window, each post's last decision (model stage / agent stage):
        p1 spam/remove       model spam/remove .95 (a later re-scoring as hate is ignored)
        p2 spam/remove       model safe/allow .90 (an older spam verdict is superseded),
                             agent spam/remove .80
        p3 safe/allow        model harassment/review .60, agent safe/allow .70
        p4 harassment/remove model harassment/review .55, agent hate/remove .85
        p5 safe/allow        no verdict, post not recorded
        p6 safe/allow        appeal of spam/remove; model spam/remove .99
    Previous window: p7 spam (exactly at T0), p8 safe.
    """
    first_p6 = decided("p6", SPAM, REMOVE, T0 + 10 * MINUTE)
    appeal = ReviewRequested(
        post_id="p6",
        review_id=review_id_for("p6", 1),
        reason="appeal: not spam",
        verdict=verdict("p6", REMOVE, SPAM, 0.99),
        appeal_of=first_p6.event_id,
    )
    record(
        engine,
        *(post(post_id) for post_id in ("p1", "p2", "p3", "p4", "p6", "p7", "p8")),
        verdict("p1", REMOVE, SPAM, 0.95),
        verdict("p1", REMOVE, HATE, 0.97, version="fast-2", at=UNTIL + 60 * MINUTE),
        verdict("p2", REMOVE, SPAM, 0.97, version="fast-0", at=T0 - 120 * MINUTE),
        verdict("p2", ALLOW, SAFE, 0.90),
        verdict("p2", REMOVE, SPAM, 0.80, stage=Stage.AGENT, version="agent-1"),
        verdict("p3", REVIEW, HARASSMENT, 0.60),
        verdict("p3", ALLOW, SAFE, 0.70, stage=Stage.AGENT, version="agent-1"),
        verdict("p4", REVIEW, HARASSMENT, 0.55),
        verdict("p4", REMOVE, HATE, 0.85, stage=Stage.AGENT, version="agent-1"),
        verdict("p6", REMOVE, SPAM, 0.99),
        appeal,
        decided("p1", SPAM, REMOVE, UNTIL, note="link farm"),
        decided("p2", SPAM, REMOVE, T0 + 5 * MINUTE),
        decided("p3", SAFE, ALLOW, T0 + 6 * MINUTE),
        decided("p4", HARASSMENT, REMOVE, T0 + 7 * MINUTE, moderator="mod-2"),
        decided("p5", SAFE, ALLOW, T0 + 8 * MINUTE),
        first_p6,
        decided("p6", SAFE, ALLOW, T0 + 30 * MINUTE, moderator="mod-2", review_id=appeal.review_id),
        decided("p7", SPAM, REMOVE, T0),
        decided("p8", SAFE, ALLOW, T0 - 30 * MINUTE),
    )
    return engine


def rows_by(frame: pd.DataFrame, key: str) -> dict[str, list[Any]]:
    """The frame's rows as lists of their other columns' values, by the value of `key`."""
    return {str(name): row.tolist() for name, row in frame.set_index(key).iterrows()}


def test_load_decisions_window_bounds_and_columns(scenario: Engine) -> None:
    current = load_decisions(scenario, since=T0, until=UNTIL)
    previous = load_decisions(scenario, until=T0)

    assert list(current.columns) == list(DECISION_COLUMNS)
    # since is excluded (p7 at T0 is previous), until is included (p1 at UNTIL is current).
    assert current["post_id"].tolist() == ["p2", "p3", "p4", "p5", "p6", "p6", "p1"]
    assert previous["post_id"].tolist() == ["p8", "p7"]
    assert str(current["decided_at"].dtype) == "datetime64[us, UTC]"
    assert current["decided_at"].iloc[-1] == pd.Timestamp(UNTIL)


def test_load_decisions_joins_posts_reviews_and_the_verdicts_seen(scenario: Engine) -> None:
    rows = load_decisions(scenario, since=T0, until=UNTIL).set_index("event_id", drop=False)
    by_post = rows.drop_duplicates("post_id", keep="last").set_index("post_id")

    p1 = by_post.loc["p1"]
    assert (p1["text"], p1["author_id"], p1["note"]) == ("some text", "author-p1", "link farm")
    # The re-scoring after the decision is not what the moderator saw.
    assert (p1["model_category"], p1["model_version"]) == ("spam", "fast-1")
    assert p1["model_scores"]["spam"] == pytest.approx(0.95)
    assert pd.isna(p1["agent_decision"]) and pd.isna(p1["agent_confidence"])
    # The latest model verdict before the decision wins over an older one.
    p2 = by_post.loc["p2"]
    assert (p2["model_category"], p2["model_version"], p2["model_confidence"]) == (
        "safe",
        "fast-1",
        0.9,
    )
    assert (p2["agent_decision"], p2["agent_category"], p2["agent_version"]) == (
        "remove",
        "spam",
        "agent-1",
    )
    # A decision whose post and verdicts are not recorded still counts.
    p5 = by_post.loc["p5"]
    assert pd.isna(p5["text"]) and pd.isna(p5["model_decision"]) and p5["model_scores"] is None
    # Only the appeal's decision names the decision it disputed.
    p6 = rows[rows["post_id"] == "p6"]
    assert pd.isna(p6["appeal_of"].iloc[0])
    assert p6["appeal_of"].iloc[1] == p6["event_id"].iloc[0]


def test_load_decisions_compares_in_utc(scenario: Engine) -> None:
    plus_two = timezone(timedelta(hours=2))
    shifted = load_decisions(
        scenario, since=T0.astimezone(plus_two), until=UNTIL.astimezone(plus_two)
    )
    assert (
        shifted["event_id"].tolist()
        == load_decisions(scenario, since=T0, until=UNTIL)["event_id"].tolist()
    )


def test_summary_numbers_by_hand(scenario: Engine) -> None:
    current = load_decisions(scenario, since=T0, until=UNTIL)
    previous = load_decisions(scenario, until=T0)

    summary = summarize(current, previous, hardest=3)

    assert summary.counts == FeedbackCounts(
        decisions=7, posts=6, moderators=2, removals=4, appeals=1
    )

    assert summary.by_category["label"].tolist() == CATEGORY_NAMES
    assert list(summary.by_category.columns) == [
        "label",
        "n",
        "judged",
        "category_agreement",
        "decision_agreement",
        "deferred",
    ]
    by_category = rows_by(summary.by_category, "label")
    # safe: p3 (model harassment/review), p5 (no verdict), p6 (model spam/remove).
    assert by_category["safe"] == [3, 2, 0.0, 0.0, 0.5]
    # spam: p1 agrees on both, p2 on neither.
    assert by_category["spam"] == [2, 2, 0.5, 0.5, 0.0]
    # harassment: p4, right category but deferred to review.
    assert by_category["harassment"] == [1, 1, 1.0, 0.0, 1.0]
    nan = math.nan
    assert by_category["hate"] == pytest.approx([0, 0, nan, nan, nan], nan_ok=True)

    by_stage = rows_by(summary.by_stage, "stage")
    assert by_stage["model"] == pytest.approx([5, 2 / 5, 1 / 5, 2 / 5])
    assert by_stage["agent"] == pytest.approx([3, 2 / 3, 1.0, 0.0])

    confusion = summary.confusion
    assert confusion.index.tolist() == CATEGORY_NAMES
    assert confusion.columns.tolist() == CATEGORY_NAMES
    assert (confusion.index.name, confusion.columns.name) == ("label", "model_category")
    assert int(confusion.to_numpy().sum()) == 5
    assert confusion.loc["spam", "spam"] == 1  # p1
    assert confusion.loc["spam", "safe"] == 1  # p2
    assert confusion.loc["safe", "harassment"] == 1  # p3
    assert confusion.loc["harassment", "harassment"] == 1  # p4
    assert confusion.loc["safe", "spam"] == 1  # p6

    # Mix: current spam 2/6, safe 3/6, harassment 1/6; previous spam 1/2, safe 1/2.
    drift = rows_by(summary.drift, "label")
    assert drift["spam"] == pytest.approx([2, 1, 1 / 3, 1 / 2, -1 / 6])
    assert drift["harassment"] == pytest.approx([1, 0, 1 / 6, 0.0, 1 / 6])
    assert drift["hate"] == pytest.approx([0, 0, 0.0, 0.0, 0.0])
    assert summary.drift_tvd == pytest.approx(1 / 6)
    expected_psi = (1 / 3 - 1 / 2) * math.log((1 / 3) / (1 / 2)) + (1 / 6 - PSI_EPSILON) * math.log(
        (1 / 6) / PSI_EPSILON
    )
    assert summary.drift_psi == pytest.approx(expected_psi)

    hardest = summary.hardest
    assert list(hardest.columns) == [
        "post_id",
        "text",
        "label",
        "predicted_category",
        "confidence",
        "stage",
    ]
    assert hardest[["post_id", "stage", "label", "predicted_category"]].values.tolist() == [
        ["p6", "model", "safe", "spam"],
        ["p2", "model", "spam", "safe"],
        ["p4", "agent", "harassment", "hate"],
    ]
    assert hardest["confidence"].tolist() == pytest.approx([0.99, 0.90, 0.85])


def test_hardest_text_is_truncated(engine: Engine) -> None:
    record(
        engine,
        post("long", "x" * 500),
        verdict("long", REMOVE, SPAM, 0.9),
        decided("long", SAFE, ALLOW, T0 + MINUTE),
    )
    current = load_decisions(engine, since=T0, until=UNTIL)

    text = summarize(current, current.iloc[:0], hardest=5).hardest["text"].iloc[0]

    assert len(text) == 200 and text.endswith("…")


def test_empty_windows(engine: Engine) -> None:
    empty = load_decisions(engine, since=T0, until=UNTIL)
    assert list(empty.columns) == list(DECISION_COLUMNS) and empty.empty
    assert {name: str(dtype) for name, dtype in empty.dtypes.items()} == DECISION_COLUMNS

    summary = summarize(empty, empty, hardest=10)

    assert summary.counts == FeedbackCounts(0, 0, 0, 0, 0)
    assert summary.by_category["n"].sum() == 0
    assert summary.by_category["category_agreement"].isna().all()
    assert summary.by_stage["n"].tolist() == [0, 0]
    assert summary.by_stage[["category_agreement", "decision_agreement"]].isna().all().all()
    assert summary.confusion.shape == (len(CATEGORIES), len(CATEGORIES))
    assert int(summary.confusion.to_numpy().sum()) == 0
    assert summary.drift["current_share"].isna().all()
    assert summary.drift_tvd is None and summary.drift_psi is None
    assert summary.hardest.empty
    assert list(summary.hardest.columns) == [
        "post_id",
        "text",
        "label",
        "predicted_category",
        "confidence",
        "stage",
    ]


def test_first_night_has_no_drift_but_a_mix(scenario: Engine) -> None:
    current = load_decisions(scenario, since=T0, until=UNTIL)

    summary = summarize(current, current.iloc[:0], hardest=3)

    assert summary.drift_tvd is None and summary.drift_psi is None
    assert rows_by(summary.drift, "label")["safe"][2] == pytest.approx(0.5)  # current share
    assert summary.drift["previous_share"].isna().all()
