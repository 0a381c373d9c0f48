"""Reads of an author (tenant, author_id): posts, verdicts, strikes, actions and standing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._sql import _utc
from moderation.db.crud.strikes import is_active
from moderation.db.models import AuthorAction, Post, Strike, Verdict
from moderation.events import ActionKind

# The order actions weigh in an author's standing, heaviest first.
_STANDING_ORDER = (ActionKind.BAN, ActionKind.SUSPEND, ActionKind.RATE_LIMIT, ActionKind.WARN)


class Standing(NamedTuple):
    """Where an author stands at a moment: the heaviest action in force, if any."""

    status: str  # good | warned | rate_limited | suspended | banned
    until: datetime | None
    action_id: str | None
    active_strikes: int  # weighted


class AuthorRows(NamedTuple):
    """An author's recorded history (one page of posts, every strike and action)."""

    tenant: str
    author_id: str
    post_count: int
    posts: list[Post]
    verdicts: list[Verdict]
    strikes: list[Strike]
    actions: list[AuthorAction]


def strike_state(strike: Strike, now: datetime) -> str:
    """active, expired or overturned."""
    if strike.overturned_at is not None:
        return "overturned"
    return "active" if is_active(strike, now) else "expired"


def author_standing(
    strikes: Sequence[Strike], actions: Sequence[AuthorAction], now: datetime
) -> Standing:
    """The heaviest action in force at `now`: a ban; a suspension or rate limit until it ends;
    a warning while the author has active strike points. Reversed actions are not in force."""
    points = sum(s.weight for s in strikes if is_active(s, now))
    in_force: dict[ActionKind, AuthorAction] = {}
    for action in actions:
        if action.action == ActionKind.REVERSE.value or action.reversed_by is not None:
            continue
        kind = ActionKind(action.action)
        if action.until is not None and _utc(action.until) <= _utc(now):
            continue
        if kind is ActionKind.WARN and points == 0:
            continue
        current = in_force.get(kind)
        if current is None or _until_key(action) > _until_key(current):
            in_force[kind] = action
    for kind in _STANDING_ORDER:
        found = in_force.get(kind)
        if found is not None:
            status = (
                "warned"
                if kind is ActionKind.WARN
                else {
                    ActionKind.BAN: "banned",
                    ActionKind.SUSPEND: "suspended",
                    ActionKind.RATE_LIMIT: "rate_limited",
                }[kind]
            )
            return Standing(status, found.until, found.action_id, points)
    return Standing("good", None, None, points)


def _until_key(action: AuthorAction) -> datetime:
    return _utc(action.until) if action.until is not None else _utc(action.created_at)


def get_author(
    session: Session, *, tenant: str, author_id: str, limit: int, offset: int
) -> AuthorRows | None:
    """The author's posts (newest first, one page) with their verdicts, and every strike and
    action; None when the author has no post in `tenant`."""
    in_tenant = (col(Post.tenant) == tenant, col(Post.author_id) == author_id)
    count = int(session.exec(select(sa.func.count()).select_from(Post).where(*in_tenant)).one())
    if count == 0:
        return None
    posts = list(
        session.exec(
            select(Post)
            .where(*in_tenant)
            .order_by(col(Post.submitted_at).desc(), col(Post.id).desc())
            .limit(limit)
            .offset(offset)
        ).all()
    )
    post_ids = [post.id for post in posts]
    verdicts = (
        list(
            session.exec(
                select(Verdict)
                .where(col(Verdict.post_id).in_(post_ids))
                .order_by(col(Verdict.occurred_at).desc(), col(Verdict.id).desc())
            ).all()
        )
        if post_ids
        else []
    )
    strikes = list(
        session.exec(
            select(Strike)
            .where(Strike.tenant == tenant, Strike.author_id == author_id)
            .order_by(col(Strike.issued_at).desc(), col(Strike.id).desc())
        ).all()
    )
    actions = list(
        session.exec(
            select(AuthorAction)
            .where(AuthorAction.tenant == tenant, AuthorAction.author_id == author_id)
            .order_by(col(AuthorAction.id).desc())
        ).all()
    )
    return AuthorRows(tenant, author_id, count, posts, verdicts, strikes, actions)


def get_author_action(
    session: Session, *, tenant: str, author_id: str, action_id: str
) -> AuthorAction | None:
    """One of the author's actions, or None."""
    return session.exec(
        select(AuthorAction).where(
            AuthorAction.action_id == action_id,
            AuthorAction.tenant == tenant,
            AuthorAction.author_id == author_id,
        )
    ).first()


def strikes_by_id(session: Session, *, ids: Sequence[int]) -> list[Strike]:
    """The strikes of `ids`, latest issued first."""
    if not ids:
        return []
    return list(
        session.exec(
            select(Strike)
            .where(col(Strike.id).in_(list(ids)))
            .order_by(col(Strike.issued_at).desc(), col(Strike.id).desc())
        ).all()
    )
