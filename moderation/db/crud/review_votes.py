"""Double review: a share of reviews judged by two moderators, and how often they agree.

`review.double_review_share` picks reviews by a hash of their id, so every API replica picks the
same ones without storing a choice. On a picked review the first moderator's judgement is a
*vote*: recorded here, the claim released, the review left open; that moderator may not claim it
again (`crud.reviews.voted_on`). A second moderator who agrees decides the review the usual way (the
`decisions` row is the second judgement); one who disagrees adds vote 2, and a third moderator's
decision settles it. Reviewer agreement pairs vote 1 with the second judgement per review
category and reports Cohen's kappa (agreement beyond what the two moderators' label frequencies
would give by chance).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Session

from moderation.db.crud._sql import DECISIONS, REVIEW_VOTES, REVIEWS, _utc
from moderation.db.crud._tenants import Tenants, post_visible
from moderation.db.crud.reviews import _audit_review, get_review
from moderation.db.models import ReviewStatus
from moderation.db.schemas import ReviewerAgreementPublic
from moderation.events import ReviewDecided
from moderation.taxonomy import Category


def is_double_reviewed(review_id: str, share: float) -> bool:
    """Whether `review_id` is one of the `share` of reviews two moderators judge.

    A hash, not a random draw: the same review is picked on every replica and every retry.
    """
    if share <= 0.0:
        return False
    digest = hashlib.sha256(review_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def has_voted(session: Session, *, review_id: str, moderator: str) -> bool:
    """Whether `moderator` gave a vote on the review (and so may not claim it again)."""
    found = session.execute(
        sa.select(REVIEW_VOTES.c.id).where(
            REVIEW_VOTES.c.review_id == review_id, REVIEW_VOTES.c.moderator_id == moderator
        )
    ).first()
    return found is not None


class VoteOutcome(StrEnum):
    """What `cast_vote` did with a moderator's judgement."""

    FINAL = "final"  # nothing written: the judgement decides the review (`begin_decision`)
    AWAITING_SECOND = "awaiting_second_review"  # vote 1 recorded
    AWAITING_TIE_BREAK = "awaiting_tie_break"  # vote 2 recorded: the two disagree
    NOT_FOUND = "not_found"
    ALREADY_DECIDED = "already_decided"
    NOT_CLAIMER = "not_claimer"


def cast_vote(
    session: Session, *, decision: ReviewDecided, share: float, is_admin: bool
) -> VoteOutcome:
    """Record `decision` as a vote when its review needs another judgement, else say FINAL.

    FINAL when the review is not double-reviewed and has no vote, when it has one vote and
    `decision` agrees with it (same label and decision), when it already has two (the tie-break),
    and for an admin deciding a review they do not hold (an override). Otherwise the vote is
    inserted, the caller's claim released and the change audited (`review.vote`) in one
    transaction, conditional on the caller still holding the claim.
    """
    review_id, moderator = decision.review_id, decision.moderator_id
    at = _utc(decision.occurred_at)
    view = get_review(session, review_id=review_id, now=at)
    if view is None:
        return VoteOutcome.NOT_FOUND
    if view.status is ReviewStatus.DECIDED:
        return VoteOutcome.ALREADY_DECIDED
    holds = view.status is ReviewStatus.CLAIMED and view.review.claimed_by == moderator
    if not holds:
        return VoteOutcome.FINAL if is_admin else VoteOutcome.NOT_CLAIMER
    votes = session.execute(
        sa.select(REVIEW_VOTES.c.label, REVIEW_VOTES.c.decision)
        .where(REVIEW_VOTES.c.review_id == review_id)
        .order_by(REVIEW_VOTES.c.ordinal)
    ).all()
    judgement = (decision.label.value, decision.decision.value)
    if not votes:
        if not is_double_reviewed(review_id, share):
            return VoteOutcome.FINAL
        outcome = VoteOutcome.AWAITING_SECOND
    elif len(votes) == 1 and tuple(votes[0]) != judgement:
        outcome = VoteOutcome.AWAITING_TIE_BREAK
    else:
        return VoteOutcome.FINAL
    released = session.execute(
        sa.update(REVIEWS)
        .where(
            REVIEWS.c.review_id == review_id,
            REVIEWS.c.status != ReviewStatus.DECIDED,
            REVIEWS.c.claimed_by == moderator,
        )
        .values(
            claimed_by=None,
            claim_expires_at=None,
            status=sa.case(
                (REVIEWS.c.escalated_at.is_not(None), ReviewStatus.ESCALATED.value),
                else_=ReviewStatus.PENDING.value,
            ),
            updated_at=at,
        )
        .returning(REVIEWS.c.id)
    ).first()
    if released is None:
        session.rollback()
        return VoteOutcome.NOT_CLAIMER
    ordinal = len(votes) + 1
    session.execute(
        sa.insert(REVIEW_VOTES).values(
            event_id=decision.event_id,
            review_id=review_id,
            post_id=decision.post_id,
            ordinal=ordinal,
            moderator_id=moderator,
            label=decision.label.value,
            decision=decision.decision.value,
            note=decision.note,
            voted_at=at,
        )
    )
    _audit_review(
        session,
        actor=moderator,
        action="review.vote",
        before=view,
        after={
            "status": "open",
            "claimed_by": None,
            "vote_event_id": decision.event_id,
            "ordinal": ordinal,
            "label": decision.label.value,
            "decision": decision.decision.value,
            "note": decision.note,
            "awaiting": outcome.value,
        },
        at=at,
    )
    session.commit()
    return outcome


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels: (p_o - p_e) / (1 - p_e).

    None without pairs, and when chance alone gives full agreement (p_e = 1: both raters used
    one and the same label), where kappa is undefined.
    """
    total = len(pairs)
    if total == 0:
        return None
    observed = sum(first == second for first, second in pairs) / total
    firsts = Counter(first for first, _ in pairs)
    seconds = Counter(second for _, second in pairs)
    expected = sum(firsts[label] * seconds[label] for label in firsts) / total**2
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _agreement(
    category: str, pairs: Sequence[tuple[str, str]], awaiting: int
) -> ReviewerAgreementPublic:
    agreed = sum(first == second for first, second in pairs)
    return ReviewerAgreementPublic(
        category=category,
        pairs=len(pairs),
        agreed=agreed,
        observed_agreement=agreed / len(pairs) if pairs else None,
        kappa=cohen_kappa(pairs),
        awaiting_second=awaiting,
    )


def reviewer_agreement(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tenants: Tenants = None,
) -> tuple[list[ReviewerAgreementPublic], ReviewerAgreementPublic | None]:
    """Pairs of independent judgements per review category (first votes cast from `since` up
    to `until`), on the posts of `tenants` (None: every tenant).

    Returns:
        (per category in taxonomy order, every category together; None without first votes).
    """
    first = REVIEW_VOTES.alias("first_vote")
    second = REVIEW_VOTES.alias("second_vote")
    # The review's last decision: on a double-reviewed review, the one that ended it.
    decided = (
        sa.select(DECISIONS.c.label)
        .where(DECISIONS.c.review_id == first.c.review_id)
        .order_by(DECISIONS.c.decided_at.desc(), DECISIONS.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    filters = [first.c.ordinal == 1, *post_visible(first.c.post_id, tenants)]
    if since is not None:
        filters.append(first.c.voted_at >= _utc(since))
    if until is not None:
        filters.append(first.c.voted_at < _utc(until))
    rows = session.execute(
        sa.select(REVIEWS.c.category, first.c.label, sa.func.coalesce(second.c.label, decided))
        .select_from(first)
        .join(REVIEWS, REVIEWS.c.review_id == first.c.review_id)
        .outerjoin(second, sa.and_(second.c.review_id == first.c.review_id, second.c.ordinal == 2))
        .where(*filters)
    ).all()
    if not rows:
        return [], None
    pairs: dict[str, list[tuple[str, str]]] = {}
    awaiting: Counter[str] = Counter()
    for category, first_label, second_label in rows:
        if second_label is None:
            awaiting[str(category)] += 1
        else:
            pairs.setdefault(str(category), []).append((str(first_label), str(second_label)))
    order = {c.value: rank for rank, c in enumerate(Category)}
    categories = sorted(set(pairs) | set(awaiting), key=lambda c: (order.get(c, len(order)), c))
    per_category = [_agreement(c, pairs.get(c, []), awaiting[c]) for c in categories]
    every = [pair for c in categories for pair in pairs.get(c, [])]
    return per_category, _agreement("all", every, sum(awaiting.values()))
