"""Strikes against authors and the enforcement ladder's actions: derived, never set.

The recorder calls `apply_enforcement` in the transaction that records a batch (after the post
statuses are refreshed, under the same PostgreSQL advisory lock), for every post the batch
touched. Like the post status, a post's strike is a function of the rows present, so events may
arrive in any order, twice, or through another writer first (the review workflow records a
decision before the recorder reads it back from Kafka):

- a post whose latest human decision is `remove`, or without a human decision whose most
  authoritative automated verdict is `remove`, holds one strike (unique on tenant, author,
  post: a post counts once whatever its stages said); category from that decision or verdict,
  severity, weight and expiry from the enforcement policy (`data/policy/enforcement.yaml`);
- a post that no longer warrants its strike (a human `allow`: the review of an automated removal,
  or an appeal overturning a remove) has it overturned (`overturned_by`: that event's id); a
  later `remove` reinstates it.

Then the ladder, per author whose strikes changed, over the *active* strikes (not expired, not
overturned), each counted by its weight ("points"): a new strike that lifts the points to a
higher step takes that step's action (the highest step reached; a step is taken once per
crossing); an overturn reverses every standing action that counted the overturned strike and
whose threshold the remaining points no longer reach (a `reverse` row naming it). Expiry only
stops a strike from counting: it reverses nothing.

`author_actions` doubles as the outbox of `AuthorActioned` (`unpublished_author_actions`,
`mark_author_actions_published`): the recorder publishes after commit.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from moderation.db.crud._post_status import _in_ids
from moderation.db.crud._sql import DECISIONS, POSTS, VERDICTS, _chunks, _dialect, _utc
from moderation.db.crud.reads import latest_automated_verdicts
from moderation.db.models import AuthorAction, HumanDecision, Strike
from moderation.events import ActionKind, AuthorActioned
from moderation.policy import EnforcementPolicy
from moderation.taxonomy import Decision

STRIKES = Strike.__table__  # type: ignore[attr-defined]
AUTHOR_ACTIONS = AuthorAction.__table__  # type: ignore[attr-defined]

AuthorKey = tuple[str, str]  # (tenant, author_id)


@dataclass(frozen=True)
class _Wanted:
    """What a post's facts say about its strike."""

    strike: bool
    category: str
    cause_event_id: str
    at: datetime


@dataclass
class _AuthorChanges:
    new: list[Strike] = field(default_factory=list)
    overturned: list[Strike] = field(default_factory=list)


def new_id() -> str:
    return uuid.uuid4().hex


def is_active(strike: Strike, now: datetime) -> bool:
    """Counted on the ladder: not overturned, not expired at `now`."""
    return strike.overturned_at is None and _utc(strike.expires_at) > _utc(now)


def _candidates(session: Session, post_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(post_id, tenant, author_id) of the posts that have, or may need, a strike: a remove
    verdict, a human decision or a strike. One query per chunk; most posts have none."""
    removed = sa.exists().where(
        VERDICTS.c.post_id == POSTS.c.id, VERDICTS.c.decision == Decision.REMOVE.value
    )
    decided = sa.exists().where(DECISIONS.c.post_id == POSTS.c.id)
    struck = sa.exists().where(STRIKES.c.post_id == POSTS.c.id)
    statement = sa.select(POSTS.c.id, POSTS.c.tenant, POSTS.c.author_id).where(
        _in_ids(POSTS.c.id, _dialect(session)), sa.or_(removed, decided, struck)
    )
    found: list[tuple[str, str, str]] = []
    for chunk in _chunks(sorted(set(post_ids))):
        rows = session.execute(statement, {"post_ids": list(chunk)}).all()
        found.extend((row[0], row[1], row[2]) for row in rows)
    return found


def _latest_decisions(session: Session, post_ids: Sequence[str]) -> dict[str, HumanDecision]:
    latest: dict[str, HumanDecision] = {}
    for chunk in _chunks(list(post_ids)):
        rows = session.exec(
            select(HumanDecision)
            .where(col(HumanDecision.post_id).in_(list(chunk)))
            .order_by(col(HumanDecision.decided_at).desc(), col(HumanDecision.id).desc())
        ).all()
        for decision in rows:
            latest.setdefault(decision.post_id, decision)
    return latest


def _wanted(session: Session, post_ids: Sequence[str]) -> dict[str, _Wanted]:
    """Per post: whether it should hold a strike, and the fact that says so."""
    decisions = _latest_decisions(session, post_ids)
    verdicts = latest_automated_verdicts(session, post_ids=post_ids)
    wanted: dict[str, _Wanted] = {}
    for post_id in post_ids:
        decision = decisions.get(post_id)
        if decision is not None:
            wanted[post_id] = _Wanted(
                decision.decision == Decision.REMOVE.value,
                decision.label,
                decision.event_id,
                decision.decided_at,
            )
            continue
        verdict = verdicts.get(post_id)
        if verdict is not None:
            wanted[post_id] = _Wanted(
                verdict.decision == Decision.REMOVE.value,
                verdict.primary_category,
                verdict.event_id,
                verdict.occurred_at,
            )
    return wanted


def removing_event(session: Session, *, post_id: str) -> str | None:
    """The event id of the decision or verdict that has the post removed now, or None."""
    fact = _wanted(session, [post_id]).get(post_id)
    return fact.cause_event_id if fact is not None and fact.strike else None


def apply_enforcement(
    session: Session, *, post_ids: Sequence[str], policy: EnforcementPolicy, now: datetime
) -> int:
    """Bring the strikes of `post_ids` in line with their facts, then run the ladder for every
    author whose strikes changed (the caller commits).

    Returns:
        How many action rows (actions and reversals) were added.
    """
    candidates = _candidates(session, post_ids)
    if not candidates:
        return 0
    ids = [post_id for post_id, _, _ in candidates]
    wanted = _wanted(session, ids)
    existing: dict[str, Strike] = {}
    for chunk in _chunks(ids):
        for row in session.exec(select(Strike).where(col(Strike.post_id).in_(list(chunk)))):
            existing[row.post_id] = row
    changes: dict[AuthorKey, _AuthorChanges] = defaultdict(_AuthorChanges)
    for post_id, tenant, author_id in candidates:
        fact = wanted.get(post_id)
        strike = existing.get(post_id)
        if fact is None:
            continue
        author = (tenant, author_id)
        if fact.strike:
            severity_name, severity = policy.severity_of(fact.category)
            issued = _utc(fact.at)
            if strike is None:
                strike = Strike(
                    tenant=tenant,
                    author_id=author_id,
                    post_id=post_id,
                    category=fact.category,
                    severity=severity_name,
                    weight=severity.weight,
                    policy_version=policy.version,
                    cause_event_id=fact.cause_event_id,
                    issued_at=issued,
                    expires_at=issued + timedelta(days=severity.expiry_days),
                )
            elif strike.overturned_at is not None:
                # Removed again after an overturn (a later decision): the strike counts again.
                strike.overturned_at = None
                strike.overturned_by = None
                strike.cause_event_id = fact.cause_event_id
                strike.issued_at = issued
                strike.expires_at = issued + timedelta(days=severity.expiry_days)
            else:
                continue
            session.add(strike)
            changes[author].new.append(strike)
        elif strike is not None and strike.overturned_at is None:
            strike.overturned_at = _utc(now)
            strike.overturned_by = fact.cause_event_id
            session.add(strike)
            changes[author].overturned.append(strike)
    if not changes:
        return 0
    session.flush()  # strike ids, for the actions that name them
    added = 0
    for (tenant, author_id), change in changes.items():
        added += _run_ladder(
            session, tenant=tenant, author_id=author_id, change=change, policy=policy, now=now
        )
    return added


def _active_filter(tenant: str, author_id: str, now: datetime) -> sa.ColumnElement[bool]:
    """The author's strikes that count at `now`: not overturned, not expired."""
    return sa.and_(
        STRIKES.c.tenant == tenant,
        STRIKES.c.author_id == author_id,
        STRIKES.c.overturned_at.is_(None),
        STRIKES.c.expires_at > _utc(now),
    )


def _active_points(
    session: Session,
    tenant: str,
    author_id: str,
    now: datetime,
    *,
    excluding: Sequence[int] = (),
    cap: int | None = None,
) -> int:
    """The points of the author's active strikes, `excluding` left out, summed in the database.

    With `cap`, at most `cap` weighing strikes are read, so the sum is exact below `cap` and at
    least `cap` otherwise: enough for the ladder, whose steps stop at its top threshold. A
    prolific author's strikes (a spam account's thousands) are then never all read again on
    every batch, in Python or in the database.
    """
    weights = sa.select(STRIKES.c.weight).where(
        _active_filter(tenant, author_id, now), STRIKES.c.weight > 0
    )
    if excluding:
        weights = weights.where(STRIKES.c.id.not_in(list(excluding)))
    if cap is not None:
        weights = weights.limit(cap)
    inner = weights.subquery()
    total = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(inner.c.weight), 0))
    ).scalar_one()
    return int(total)


def _active_strike_ids(
    session: Session, tenant: str, author_id: str, now: datetime, *, excluding: set[int]
) -> list[int]:
    """The ids of the author's active strikes in the order they were issued, `excluding` left
    out (read only when an action is taken: the action names the strikes it counted)."""
    rows = session.execute(
        sa.select(STRIKES.c.id)
        .where(_active_filter(tenant, author_id, now))
        .order_by(STRIKES.c.issued_at, STRIKES.c.id)
    ).all()
    return [row[0] for row in rows if row[0] not in excluding]


def _run_ladder(
    session: Session,
    *,
    tenant: str,
    author_id: str,
    change: _AuthorChanges,
    policy: EnforcementPolicy,
    now: datetime,
) -> int:
    # Climb one new strike at a time, in the order they were issued: each crossing acts.
    # A new strike recorded late, already expired, no longer counts.
    climbing = [
        s
        for s in sorted(change.new, key=lambda s: (_utc(s.issued_at), s.id or 0))
        if is_active(s, now)
    ]
    new_ids = [s.id for s in climbing if s.id is not None]
    added = 0
    if change.overturned:
        # Rare (a human overturned a removal): the exact points, for the reversals' records.
        added += _reverse_for_overturns(
            session,
            tenant=tenant,
            author_id=author_id,
            overturned=change.overturned,
            points=_active_points(session, tenant, author_id, now),
            policy=policy,
            now=now,
        )
    # The other strikes' points, read up to the ladder's top: past it no step is crossed.
    top = policy.ladder[-1].strikes
    points = _active_points(session, tenant, author_id, now, excluding=new_ids, cap=top)
    earlier: list[int] | None = None  # the other active strikes' ids, read at the first action
    for position, strike in enumerate(climbing):
        before = policy.step_for(points)
        points += strike.weight
        reached = policy.step_for(points)
        if reached <= before:
            continue
        if earlier is None:
            earlier = _active_strike_ids(session, tenant, author_id, now, excluding=set(new_ids))
        counted = earlier + [s.id for s in climbing[: position + 1] if s.id is not None]
        step = policy.ladder[reached]
        until = _utc(now) + timedelta(days=step.days) if step.days is not None else None
        reason = (
            f"{points} active strike point(s) reached {step.strikes}: post {strike.post_id} "
            f"removed as {strike.category} ({strike.severity})"
        )
        session.add(
            AuthorAction(
                action_id=new_id(),
                event_id=new_id(),
                tenant=tenant,
                author_id=author_id,
                post_id=strike.post_id,
                action=step.action.value,
                days=step.days,
                until=until,
                reason=reason,
                threshold=step.strikes,
                active_strikes=points,
                strike_ids=counted,
                policy_version=policy.version,
                created_at=_utc(now),
            )
        )
        added += 1
    return added


def _reverse_for_overturns(
    session: Session,
    *,
    tenant: str,
    author_id: str,
    overturned: Sequence[Strike],
    points: int,
    policy: EnforcementPolicy,
    now: datetime,
) -> int:
    """Reverse the standing actions that counted an overturned strike and whose threshold the
    remaining active points no longer reach."""
    gone = {s.id: s for s in overturned}
    standing = session.exec(
        select(AuthorAction)
        .where(
            AuthorAction.tenant == tenant,
            AuthorAction.author_id == author_id,
            AuthorAction.action != ActionKind.REVERSE.value,
            col(AuthorAction.reversed_by).is_(None),
        )
        .order_by(col(AuthorAction.id))
    ).all()
    added = 0
    for action in standing:
        hit = [gone[i] for i in action.strike_ids if i in gone]
        if not hit:
            continue
        threshold = action.threshold
        if threshold is None:
            threshold = policy.threshold_of(ActionKind(action.action), action.days)
        if threshold is not None and points >= threshold:
            continue  # the other active strikes still reach it
        strike = hit[-1]
        reversal = AuthorAction(
            action_id=new_id(),
            event_id=new_id(),
            tenant=tenant,
            author_id=author_id,
            post_id=strike.post_id,
            action=ActionKind.REVERSE.value,
            reason=(
                f"strike on post {strike.post_id} overturned by {strike.overturned_by}: "
                f"{points} active strike point(s), below {threshold} for {action.action}"
            ),
            threshold=threshold,
            active_strikes=points,
            strike_ids=[s.id for s in hit if s.id is not None],
            reverses=action.action_id,
            policy_version=policy.version,
            created_at=_utc(now),
        )
        action.reversed_by = reversal.action_id
        session.add(action)
        session.add(reversal)
        added += 1
    return added


# --- the outbox of AuthorActioned ----------------------------------------------------------


def unpublished_author_actions(session: Session, *, limit: int = 500) -> list[AuthorAction]:
    """Actions not yet published to Kafka, oldest first."""
    return list(
        session.exec(
            select(AuthorAction)
            .where(AuthorAction.published == False)  # noqa: E712 - SQL, not Python truthiness
            .order_by(col(AuthorAction.id))
            .limit(limit)
        ).all()
    )


def mark_author_actions_published(session: Session, *, ids: Sequence[int], now: datetime) -> int:
    """Mark actions published (after Kafka acknowledged them); commits. Returns the count."""
    count = 0
    for start in range(0, len(ids), 5_000):
        chunk = list(ids[start : start + 5_000])
        result = session.execute(
            sa.update(AUTHOR_ACTIONS)
            .where(AUTHOR_ACTIONS.c.id.in_(list(chunk)), AUTHOR_ACTIONS.c.published.is_(False))
            .values(published=True, published_at=_utc(now))
            .returning(AUTHOR_ACTIONS.c.id)
        )
        count += len(result.all())
    session.commit()
    return count


def author_actioned_event(action: AuthorAction) -> AuthorActioned:
    """The `AuthorActioned` event of an action row (its stable event id, its cause post)."""
    return AuthorActioned(
        event_id=action.event_id,
        occurred_at=_utc(action.created_at),
        post_id=action.post_id,
        tenant=action.tenant,
        author_id=action.author_id,
        action=ActionKind(action.action),
        action_id=action.action_id,
        days=action.days,
        until=_utc(action.until) if action.until is not None else None,
        active_strikes=action.active_strikes,
        reason=action.reason,
        reverses=action.reverses,
        policy_version=action.policy_version,
    )
