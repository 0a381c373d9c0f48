"""The human decisions the nightly job learns from, with the verdicts each moderator saw."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from moderation.db.crud._sql import DECISIONS, POSTS, REVIEWS, VERDICTS, _utc
from moderation.taxonomy import Stage

# The automated stages a moderator's decision is compared with.
_FEEDBACK_STAGES: tuple[Stage, ...] = (Stage.MODEL, Stage.AGENT)


class FeedbackDecision(NamedTuple):
    """One human decision with its post, its review's `appeal_of`, and per automated stage
    (`model_*`, `agent_*`) the latest verdict recorded at or before the decision (None when
    the stage gave none, or the post or review is not recorded yet)."""

    event_id: str
    review_id: str
    post_id: str
    text: str | None
    author_id: str | None
    label: str
    decision: str
    moderator_id: str
    note: str | None
    decided_at: datetime
    appeal_of: str | None
    model_decision: str | None
    model_category: str | None
    model_confidence: float | None
    model_version: str | None
    model_scores: dict[str, Any] | None
    agent_decision: str | None
    agent_category: str | None
    agent_confidence: float | None
    agent_version: str | None


def _feedback_query(*, since: datetime | None, until: datetime) -> sa.Select[tuple[object, ...]]:
    window = [DECISIONS.c.decided_at <= _utc(until)]
    if since is not None:
        window.append(DECISIONS.c.decided_at > _utc(since))
    # Per decision and stage, the latest verdict that existed when the moderator decided: the
    # one the moderator saw (a later re-scoring of the post is not what they judged).
    ranked = (
        sa.select(
            DECISIONS.c.id.label("decision_row"),
            VERDICTS.c.stage,
            VERDICTS.c.decision,
            VERDICTS.c.primary_category,
            VERDICTS.c.confidence,
            VERDICTS.c.model_version,
            VERDICTS.c.scores,
            sa.func.row_number()
            .over(
                partition_by=(DECISIONS.c.id, VERDICTS.c.stage),
                order_by=(VERDICTS.c.occurred_at.desc(), VERDICTS.c.id.desc()),
            )
            .label("recency"),
        )
        .select_from(
            DECISIONS.join(
                VERDICTS,
                sa.and_(
                    VERDICTS.c.post_id == DECISIONS.c.post_id,
                    VERDICTS.c.occurred_at <= DECISIONS.c.decided_at,
                ),
            )
        )
        .where(*window, VERDICTS.c.stage.in_([stage.value for stage in _FEEDBACK_STAGES]))
        .cte("ranked")
    )
    model = ranked.alias("model_verdict")
    agent = ranked.alias("agent_verdict")

    def latest(verdict: sa.FromClause, stage: Stage) -> sa.ColumnElement[bool]:
        return sa.and_(
            verdict.c.decision_row == DECISIONS.c.id,
            verdict.c.stage == stage.value,
            verdict.c.recency == 1,
        )

    return (
        sa.select(
            DECISIONS.c.event_id,
            DECISIONS.c.review_id,
            DECISIONS.c.post_id,
            POSTS.c.text,
            POSTS.c.author_id,
            DECISIONS.c.label,
            DECISIONS.c.decision,
            DECISIONS.c.moderator_id,
            DECISIONS.c.note,
            DECISIONS.c.decided_at,
            REVIEWS.c.appeal_of,
            model.c.decision.label("model_decision"),
            model.c.primary_category.label("model_category"),
            model.c.confidence.label("model_confidence"),
            model.c.model_version.label("model_version"),
            model.c.scores.label("model_scores"),
            agent.c.decision.label("agent_decision"),
            agent.c.primary_category.label("agent_category"),
            agent.c.confidence.label("agent_confidence"),
            agent.c.model_version.label("agent_version"),
        )
        .select_from(DECISIONS)
        # Outer joins: a decision counts even when its post or review is not recorded yet.
        .outerjoin(POSTS, POSTS.c.id == DECISIONS.c.post_id)
        .outerjoin(REVIEWS, REVIEWS.c.review_id == DECISIONS.c.review_id)
        .outerjoin(model, latest(model, Stage.MODEL))
        .outerjoin(agent, latest(agent, Stage.AGENT))
        .where(*window)
        .order_by(DECISIONS.c.decided_at, DECISIONS.c.id)
    )


def list_feedback_decisions(
    session: Session, *, until: datetime, since: datetime | None = None
) -> list[FeedbackDecision]:
    """The human decisions with `since < decided_at <= until`, oldest first.

    One row per decision (an appeal's decision is a row of its own).

    Args:
        until: the window's end, included.
        since: the window's start, excluded; None reads every decision up to `until`.
    """
    rows = session.execute(_feedback_query(since=since, until=until)).all()
    return [FeedbackDecision(*row) for row in rows]
