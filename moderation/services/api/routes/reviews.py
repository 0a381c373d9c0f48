"""`/v1/reviews`: the human review queue (scope `moderate`), and the decision log export.

A moderator lists the queue, claims a review (a lock that runs out after
`settings.review.claim_seconds`; claiming again extends it), and decides it. A decision is
not written as a fact here: the route marks the review decided (a conditional UPDATE, so a
second decision gets 409), audits it, and hands the `ReviewDecided` event to the review's Dapr
workflow, which validates, records and publishes it. When the workflow cannot be reached the
review is reopened and the answer is 503.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.actors import actor_display, actor_key_ids
from moderation.db import crud
from moderation.db.models import ReviewStatus, Verdict
from moderation.db.schemas import (
    LANGUAGE_PATTERN,
    DecisionAccepted,
    DecisionCreate,
    PrecedentPublic,
    ReviewGroupPublic,
    ReviewGroupsPublic,
    ReviewPublic,
    ReviewsPublic,
    ReviewStatsPublic,
    SuggestionPublic,
)
from moderation.events import ImageRef, ReviewDecided, ReviewPriority, utc_now
from moderation.images.hashlists import HashList
from moderation.policy import load_policy
from moderation.precedents import DecisionLog, SqlDecisionLog
from moderation.services.api.deps import ApiState, ModerateKey, StateDep, WorkflowsDep
from moderation.services.api.routes.errors import ApiError, unavailable_response
from moderation.services.api.security import Principal, Scope
from moderation.services.api.workflows import ReviewWorkflows, WorkflowUnavailable
from moderation.services.review.activities import invalid_decision
from moderation.settings import GROUP_PATTERN
from moderation.taxonomy import Category, Decision

router = APIRouter(prefix="/v1", tags=["reviews"])

PRECEDENTS_SHOWN = 3
# Far past any queue, and inside the databases' 64-bit OFFSET (beyond it a query fails: a 500).
MAX_OFFSET = 1_000_000_000
PRECEDENT_POOL = 500
CSV_COLUMNS = (
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
)

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `moderate` scope"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such review"}}
LanguageQuery = Annotated[
    str | None,
    Query(
        pattern=LANGUAGE_PATTERN,
        description="the post's language: its metadata `lang`, else the language stage 1 "
        "found it written in (`unreadable:language:<code>`)",
    ),
]
GroupQuery = Annotated[
    str | None,
    Query(
        pattern=GROUP_PATTERN,
        description="the moderator group the review is routed to (`GET /v1/reviews/groups`); "
        "by default a key with groups gets its groups' reviews, and another group is a 403",
    ),
]


# --- what a review shows besides its row: the policy text and precedents ----------------------


def _policy_section(category: str, version: str) -> str | None:
    try:
        return load_policy(version).sections[Category(category)]
    except (FileNotFoundError, ValueError, KeyError):
        return None  # a category or policy version this release does not know


def _decision_log(state: ApiState) -> DecisionLog:
    if state.decision_log is None:
        state.decision_log = SqlDecisionLog(state.engine, pool_size=PRECEDENT_POOL)
    return state.decision_log


def _suggestion(verdict: Verdict | None) -> SuggestionPublic | None:
    if verdict is None:
        return None
    return SuggestionPublic(
        stage=verdict.stage,
        decision=verdict.decision,
        primary_category=verdict.primary_category,
        confidence=verdict.confidence,
        scores=verdict.scores,
        rationale=verdict.rationale,
        model_version=verdict.model_version,
        policy_version=verdict.policy_version,
        policy_sections=verdict.policy_sections,
        signals=verdict.signals,
    )


async def _precedents(
    state: ApiState, view: crud.ReviewView, tenants: frozenset[str] | None
) -> list[PrecedentPublic]:
    if not view.text:
        return []
    # One more than shown: the post's own earlier decision (an appeal's) is no precedent. A key
    # that sees only some tenants ranks the whole pool and keeps its tenants' decisions.
    limit = PRECEDENTS_SHOWN + 1 if tenants is None else PRECEDENT_POOL
    found = await _decision_log(state).precedents(view.text, limit=limit)
    return [
        PrecedentPublic(
            post_id=p.post_id,
            text=p.text,
            label=p.label,
            decision=p.decision,
            note=p.note,
            similarity=p.similarity,
        )
        for p in found
        if p.post_id != view.review.post_id and (tenants is None or p.tenant in tenants)
    ][:PRECEDENTS_SHOWN]


def _key_names(engine: Engine, actors: list[str | None]) -> dict[int, str]:
    with Session(engine) as session:
        return crud.api_key_names(session, actors=actors)


async def public_reviews(
    state: ApiState, views: Sequence[crud.ReviewView], principal: Principal
) -> list[ReviewPublic]:
    """The API shape of reviews, with suggestion, policy section and precedents (only from
    the tenants `principal` sees)."""
    default_version = state.settings.models.policy_version
    actors = [v.review.claimed_by for v in views] + [v.review.decided_by for v in views]
    names = {}
    if actor_key_ids(actors):
        names = await run_in_threadpool(_key_names, state.engine, actors)
    items = []
    for view in views:
        review, verdict = view.review, view.verdict
        version = verdict.policy_version if verdict is not None else default_version
        claimed_by = review.claimed_by if view.status is ReviewStatus.CLAIMED else None
        items.append(
            ReviewPublic(
                review_id=review.review_id,
                post_id=review.post_id,
                text=view.text,
                author_id=view.author_id,
                tenant=view.tenant,
                group=view.group,
                status=view.status,
                priority=review.priority,
                reason=review.reason,
                category=review.category,
                claimed_by=claimed_by,
                claimed_by_display=actor_display(claimed_by, names),
                claim_expires_at=(
                    review.claim_expires_at if view.status is ReviewStatus.CLAIMED else None
                ),
                sla_due_at=review.sla_due_at,
                escalated_at=review.escalated_at,
                decided_at=review.decided_at,
                decided_by=review.decided_by,
                decided_by_display=actor_display(review.decided_by, names),
                created_at=review.created_at,
                appeal_of=review.appeal_of,
                votes=view.votes,
                images=[ImageRef.model_validate(image) for image in view.images],
                suggestion=_suggestion(verdict),
                policy_section=_policy_section(review.category, version),
                precedents=await _precedents(state, view, principal.tenants),
            )
        )
    return items


async def public_review(
    state: ApiState, view: crud.ReviewView, principal: Principal
) -> ReviewPublic:
    """The API shape of one review."""
    [item] = await public_reviews(state, [view], principal)
    return item


# --- moderator groups: routing, not isolation (README "Routing to moderator groups") ----------


def routing(state: ApiState) -> crud.Routing:
    """The moderator groups the settings configure."""
    return crud.Routing.of(state.settings.review)


def _groups_text(groups: frozenset[str]) -> str:
    return ", ".join(f"'{group}'" for group in sorted(groups))


def group_filter(
    routes: crud.Routing, principal: Principal, group: str | None
) -> frozenset[str] | None:
    """The groups whose reviews the caller lists or claims: `group` when asked for, else the
    key's groups (None: every group).

    Raises:
        ApiError: 422 for a group not configured; 403 for a group the key is not in.
    """
    mine = principal.review_groups
    if group is None:
        return mine
    if group not in routes.names():
        problem = f"unknown moderator group '{group}'"
        configured = ", ".join(f"'{name}'" for name in routes.names())
        raise ApiError(
            422,
            f"{problem}; configured: {configured}",
            errors=[{"field": "group", "message": problem, "type": "value_error"}],
        )
    if mine is not None and group not in mine:
        raise ApiError(
            403,
            f"'{principal.display}' works on moderator group(s) {_groups_text(mine)}, "
            f"not '{group}'",
        )
    return frozenset({group})


# --- database calls (blocking: run in the thread pool) ----------------------------------------


def _list(
    engine: Engine,
    status: ReviewStatus | None,
    category: Category | None,
    priority: ReviewPriority | None,
    limit: int,
    offset: int,
    tenants: frozenset[str] | None,
    language: str | None = None,
    author_id: str | None = None,
    routes: crud.Routing | None = None,
    groups: frozenset[str] | None = None,
) -> tuple[list[crud.ReviewView], int]:
    with Session(engine) as session:
        return crud.list_reviews(
            session,
            now=utc_now(),
            status=status,
            category=category,
            priority=priority,
            limit=limit,
            offset=offset,
            tenants=tenants,
            language=language,
            author_id=author_id,
            routing=routes,
            groups=groups,
        )


def _get(
    engine: Engine,
    review_id: str,
    tenants: frozenset[str] | None,
    routes: crud.Routing | None = None,
) -> crud.ReviewView | None:
    """The review, or None when unknown or of a tenant the caller does not see."""
    with Session(engine) as session:
        return crud.get_review(
            session, review_id=review_id, now=utc_now(), tenants=tenants, routing=routes
        )


def _claim(
    engine: Engine, review_id: str, principal: Principal, seconds: float, routes: crud.Routing
) -> crud.ReviewView:
    """Claim it for the caller (`key:<id>`), or raise 404 (unknown, or of a tenant the caller
    does not see) / 409 / 403 (routed to a group the key is not in) saying why not."""
    moderator, tenants, groups = principal.actor, principal.tenants, principal.review_groups
    with Session(engine) as session:
        now = utc_now()
        claimed = crud.claim_review(
            session,
            review_id=review_id,
            moderator=moderator,
            now=now,
            claim_seconds=seconds,
            tenants=tenants,
            routing=routes,
            groups=groups,
        )
        if claimed is not None:
            return claimed
        current = crud.get_review(
            session, review_id=review_id, now=now, tenants=tenants, routing=routes
        )
        holder = current.review.claimed_by if current is not None else None
        names = crud.api_key_names(session, actors=[holder])
        voted = crud.has_voted(session, review_id=review_id, moderator=moderator)
    if current is None:
        raise _not_found(review_id)
    if current.status is ReviewStatus.DECIDED:
        raise ApiError(409, f"review '{review_id}' is already decided")
    if groups is not None and current.group not in groups:
        raise ApiError(
            403,
            f"review '{review_id}' is routed to moderator group '{current.group}'; "
            f"'{principal.display}' works on {_groups_text(groups)}",
        )
    if voted:
        raise ApiError(
            409,
            f"you already judged review '{review_id}' (double review): another moderator "
            "takes it from here",
        )
    expires = current.review.claim_expires_at
    until = f" until {expires.isoformat()}" if expires is not None else ""
    holder_display = actor_display(holder, names)
    raise ApiError(409, f"review '{review_id}' is claimed by '{holder_display}'{until}")


def _claim_next(
    engine: Engine,
    principal: Principal,
    seconds: float,
    category: Category | None,
    language: str | None = None,
    routes: crud.Routing | None = None,
    groups: frozenset[str] | None = None,
) -> crud.ReviewView | None:
    with Session(engine) as session:
        return crud.claim_next(
            session,
            moderator=principal.actor,
            now=utc_now(),
            claim_seconds=seconds,
            category=category,
            tenants=principal.tenants,
            language=language,
            routing=routes,
            groups=groups,
        )


def _begin(engine: Engine, decision: ReviewDecided, is_admin: bool) -> crud.DecisionStart:
    with Session(engine) as session:
        return crud.begin_decision(session, decision=decision, is_admin=is_admin)


def _vote(
    engine: Engine, decision: ReviewDecided, share: float, is_admin: bool
) -> crud.VoteOutcome:
    with Session(engine) as session:
        return crud.cast_vote(session, decision=decision, share=share, is_admin=is_admin)


def _check_hashlist_target(engine: Engine, view: crud.ReviewView, body: DecisionCreate) -> None:
    """422 (or 409) unless the post's images can go on `add_images_to_hashlist`."""
    name = body.add_images_to_hashlist

    def refuse(message: str, status: int = 422) -> ApiError:
        field = "add_images_to_hashlist"
        return ApiError(
            status,
            f"invalid request: {field}: {message}",
            errors=[{"field": field, "message": message, "type": "hashlist"}],
        )

    if body.decision != "remove":
        raise refuse("only a removal adds a post's images to a hash list")
    if not view.images:
        raise refuse(f"post '{view.review.post_id}' has no images")
    with Session(engine) as session:
        category = crud.list_category(session, name=str(name))
    if category is None:
        raise refuse(
            f"no hash list '{name}': an admin creates it (POST /v1/hashlists/{{name}}/entries)"
        )
    if category != body.label.value:
        raise refuse(
            f"hash list '{name}' is of category '{category}', not '{body.label.value}'", 409
        )


def _list_images(engine: Engine, view: crud.ReviewView, body: DecisionCreate, actor: str) -> int:
    images = [ImageRef.model_validate(image) for image in view.images]
    note = f"post {view.review.post_id}, removed by {actor}"
    hashlist = HashList(
        str(body.add_images_to_hashlist), body.label, tuple(crud.image_entries(images, note))
    )
    with Session(engine) as session:
        return crud.add_hash_entries(session, hashlist=hashlist, actor=actor)


def _revert(engine: Engine, decision: ReviewDecided, reason: str) -> bool:
    with Session(engine) as session:
        return crud.revert_decision(session, decision=decision, reason=reason)


def _stats(engine: Engine, tenants: frozenset[str] | None) -> crud.ReviewStats:
    with Session(engine) as session:
        return crud.review_stats(session, now=utc_now(), tenants=tenants)


def _group_counts(
    engine: Engine, routes: crud.Routing, tenants: frozenset[str] | None
) -> dict[str, int]:
    with Session(engine) as session:
        return crud.open_reviews_by_group(session, routing=routes, tenants=tenants)


def _decision_log_rows(
    engine: Engine, limit: int, tenants: frozenset[str] | None
) -> list[crud.DecisionLogRow]:
    with Session(engine) as session:
        return crud.decision_log(session, limit=limit, tenants=tenants)


def _not_found(review_id: str) -> ApiError:
    return ApiError(404, f"review '{review_id}' not found")


# --- routes (fixed paths before `/reviews/{review_id}`) ----------------------------------------


@router.get(
    "/reviews",
    response_model=ReviewsPublic,
    summary="The review queue: most urgent first, oldest first within a priority",
    responses={
        **AUTH_ERRORS,
        403: {"description": "the key lacks `moderate`, or `group` is not one of its groups"},
        422: {"description": "an invalid filter, or an unknown moderator group"},
    },
)
async def list_reviews(
    state: StateDep,
    principal: ModerateKey,
    status: Annotated[
        ReviewStatus | None, Query(description="effective status: a lapsed claim is pending")
    ] = None,
    category: Category | None = None,
    priority: ReviewPriority | None = None,
    language: LanguageQuery = None,
    author_id: Annotated[
        str | None, Query(min_length=1, max_length=128, description="the posts' author")
    ] = None,
    group: GroupQuery = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ReviewsPublic:
    """A page of reviews matching the filters, and how many match in all (of the tenants the
    key sees; of the key's moderator groups, unless `group` names one of them)."""
    routes = routing(state)
    groups = group_filter(routes, principal, group)
    views, total = await run_in_threadpool(
        _list,
        state.engine,
        status,
        category,
        priority,
        limit,
        offset,
        principal.tenants,
        language,
        author_id,
        routes,
        groups,
    )
    items = await public_reviews(state, views, principal)
    return ReviewsPublic(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/reviews/stats",
    response_model=ReviewStatsPublic,
    summary="Queue statistics (as Bluesky Ozone's)",
    responses=AUTH_ERRORS,
)
async def review_stats(state: StateDep, principal: ModerateKey) -> ReviewStatsPublic:
    """Open reviews by status, and the last 24 hours' inbound, actioned and handling time (of
    the tenants the key sees)."""
    stats = await run_in_threadpool(_stats, state.engine, principal.tenants)
    return ReviewStatsPublic(**stats._asdict())


@router.get(
    "/reviews/groups",
    response_model=ReviewGroupsPublic,
    summary="The moderator groups reviews are routed to, and their open reviews",
    responses=AUTH_ERRORS,
)
async def review_groups(state: StateDep, principal: ModerateKey) -> ReviewGroupsPublic:
    """Every group in routing order (the default group last), with its criteria and its open
    reviews (of the tenants the key sees), and the groups the key works on."""
    routes = routing(state)
    counts = await run_in_threadpool(_group_counts, state.engine, routes, principal.tenants)
    mine = principal.review_groups
    items = [
        ReviewGroupPublic(
            name=group.name,
            categories=[category.value for category in group.categories],
            languages=list(group.languages),
            open=counts[group.name],
            mine=mine is None or group.name in mine,
        )
        for group in routes.groups
    ]
    items.append(
        ReviewGroupPublic(
            name=routes.default,
            categories=[],
            languages=[],
            open=counts[routes.default],
            mine=mine is None or routes.default in mine,
            default=True,
        )
    )
    return ReviewGroupsPublic(items=items, key_groups=sorted(mine) if mine is not None else None)


@router.post(
    "/reviews/claim-next",
    response_model=ReviewPublic,
    summary="Claim the most urgent, oldest claimable review",
    responses={
        **AUTH_ERRORS,
        204: {"description": "nothing to claim"},
        403: {"description": "the key lacks `moderate`, or `group` is not one of its groups"},
        422: {"description": "an unknown moderator group"},
    },
)
async def claim_next_review(
    state: StateDep,
    principal: ModerateKey,
    category: Category | None = None,
    language: LanguageQuery = None,
    group: GroupQuery = None,
) -> ReviewPublic | Response:
    """Claim the next review (your own live claim counts as claimable) of your moderator groups
    (or of `group`, one of them); 204 when none is left."""
    seconds = state.settings.review.claim_seconds
    routes = routing(state)
    groups = group_filter(routes, principal, group)
    view = await run_in_threadpool(
        _claim_next, state.engine, principal, seconds, category, language, routes, groups
    )
    if view is None:
        return Response(status_code=204)
    return await public_review(state, view, principal)


@router.get(
    "/reviews/{review_id}",
    response_model=ReviewPublic,
    summary="One review",
    responses={**AUTH_ERRORS, **NOT_FOUND},
)
async def get_review(review_id: str, state: StateDep, principal: ModerateKey) -> ReviewPublic:
    """The review with the post, the model's suggestion, the policy section and precedents."""
    view = await run_in_threadpool(_get, state.engine, review_id, principal.tenants, routing(state))
    if view is None:
        raise _not_found(review_id)
    return await public_review(state, view, principal)


@router.post(
    "/reviews/{review_id}/claim",
    response_model=ReviewPublic,
    summary="Claim a review (or extend your claim)",
    responses={
        **AUTH_ERRORS,
        **NOT_FOUND,
        403: {
            "description": "the key lacks `moderate`, or the review is routed to a moderator "
            "group the key is not in"
        },
        409: {"description": "another moderator holds a live claim, or it is decided"},
    },
)
async def claim_review(review_id: str, state: StateDep, principal: ModerateKey) -> ReviewPublic:
    """Claim it for `review.claim_seconds`; two moderators racing get one 200 and one 409."""
    seconds = state.settings.review.claim_seconds
    view = await run_in_threadpool(
        _claim, state.engine, review_id, principal, seconds, routing(state)
    )
    return await public_review(state, view, principal)


def _overrode(verdict: Verdict | None) -> Decision | None:
    return Decision(verdict.decision) if verdict is not None else None


def _refusal(review_id: str, outcome: crud.DecisionStart, principal: Principal) -> ApiError:
    if outcome is crud.DecisionStart.NOT_FOUND:
        return _not_found(review_id)
    if outcome is crud.DecisionStart.ALREADY_DECIDED:
        return ApiError(409, f"review '{review_id}' is already decided")
    return ApiError(
        403,
        f"'{principal.display}' does not hold the claim on review '{review_id}': claim it first",
    )


def check_decision(label: Category, decision: str) -> None:
    """422 for a label and decision the review workflow would refuse (its own rule), so they
    never mark a review decided here."""
    probe = ReviewDecided(
        review_id="-", post_id="-", label=label, decision=Decision(decision), moderator_id="-"
    )
    problem = invalid_decision(probe)
    if problem is not None:
        raise ApiError(
            422,
            f"invalid request: {problem}",
            errors=[{"field": "label", "message": problem, "type": "label_mismatch"}],
        )


async def decide(
    state: ApiState,
    workflows: ReviewWorkflows,
    principal: Principal,
    view: crud.ReviewView,
    body: DecisionCreate,
) -> DecisionAccepted:
    """The one way a review is decided (the single and the bulk decision both come here).

    `view` is the review as the caller sees it (tenants checked). On a double-reviewed review
    (`review.double_review_share`) a judgement that does not end it is recorded as a vote and
    the review left open for another moderator (`crud.cast_vote`). Otherwise marks it decided
    (its own transaction, audited `review.decide`), then raises `ReviewDecided` to its
    workflow, which records and publishes it.

    Raises:
        ApiError: 403 (someone else holds the claim), 404, 409 (already decided), 422 (a
            label and decision the workflow would refuse): nothing was recorded.
        WorkflowUnavailable: the workflow could not be told; the review was reopened.
    """
    review_id = view.review.review_id
    if view.status is ReviewStatus.DECIDED:
        raise _refusal(review_id, crud.DecisionStart.ALREADY_DECIDED, principal)
    check_decision(body.label, body.decision)
    decision = ReviewDecided(
        review_id=review_id,
        post_id=view.review.post_id,
        label=body.label,
        decision=Decision(body.decision),
        moderator_id=principal.actor,
        note=body.note,
        overrode=_overrode(view.verdict),
    )
    if body.add_images_to_hashlist is not None:
        await run_in_threadpool(_check_hashlist_target, state.engine, view, body)
    is_admin = principal.allows(Scope.ADMIN)
    share = state.settings.review.double_review_share
    vote = await run_in_threadpool(_vote, state.engine, decision, share, is_admin)
    if vote is crud.VoteOutcome.AWAITING_SECOND:
        return DecisionAccepted(
            review_id=review_id, event_id=decision.event_id, status="awaiting_second_review"
        )
    if vote is crud.VoteOutcome.AWAITING_TIE_BREAK:
        return DecisionAccepted(
            review_id=review_id, event_id=decision.event_id, status="awaiting_tie_break"
        )
    if vote is not crud.VoteOutcome.FINAL:
        raise _refusal(review_id, crud.DecisionStart(vote.value), principal)
    if body.add_images_to_hashlist is not None:
        # Before the decision: a decision that then fails leaves hashes a moderator judged
        # removable listed, which a retry adds again as nothing new.
        await run_in_threadpool(_list_images, state.engine, view, body, principal.actor)
    outcome = await run_in_threadpool(_begin, state.engine, decision, is_admin)
    if outcome is not crud.DecisionStart.STARTED:
        raise _refusal(review_id, outcome, principal)
    try:
        await workflows.raise_decision(review_id, decision.model_dump(mode="json"))
    except WorkflowUnavailable as error:
        await run_in_threadpool(_revert, state.engine, decision, str(error))
        state.metrics.unavailable.labels("decision", "dapr").inc()
        raise
    except Exception as error:
        await run_in_threadpool(_revert, state.engine, decision, repr(error))
        raise
    return DecisionAccepted(review_id=review_id, event_id=decision.event_id)


@router.post(
    "/reviews/{review_id}/decision",
    status_code=202,
    response_model=DecisionAccepted,
    summary="Decide a claimed review",
    responses={
        **AUTH_ERRORS,
        **NOT_FOUND,
        403: {"description": "the key lacks `moderate`, or someone else holds the claim"},
        200: {
            "model": DecisionAccepted,
            "description": "double review: recorded as a vote; the review waits for another "
            "moderator (`status`)",
        },
        409: {"description": "the review is already decided"},
        422: {
            "description": "invalid label, decision or note; allow needs label safe, remove a "
            "violating label"
        },
        503: {"description": "the review's workflow could not be reached; nothing was decided"},
    },
)
async def decide_review(
    review_id: str,
    body: DecisionCreate,
    state: StateDep,
    principal: ModerateKey,
    workflows: WorkflowsDep,
) -> Response:
    """Hand the decision to the review's workflow (202); only the claimer or an admin may.

    The review is marked decided first, so a concurrent second decision gets 409; if the
    workflow cannot be told, it is reopened (claimed by you again) and the answer is 503. A
    review of a tenant the key does not see is 404 (a post's tenant never changes, so this
    check stands for the conditional update below). On a double-reviewed review a judgement
    that does not end it is recorded as a vote (200, `status` says what it waits for), your
    claim released, and the review goes to another moderator.
    """
    view = await run_in_threadpool(_get, state.engine, review_id, principal.tenants)
    if view is None:
        raise _not_found(review_id)
    try:
        accepted = await decide(state, workflows, principal, view, body)
    except WorkflowUnavailable as error:
        return unavailable_response(error.reason)
    status_code = 202 if accepted.status == "accepted" else 200
    return JSONResponse(accepted.model_dump(mode="json"), status_code=status_code)


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    # A cell starting like a formula would run as one in a spreadsheet (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@router.get(
    "/decisions.csv",
    summary="The decision log as CSV, newest first",
    response_class=Response,
    responses={
        **AUTH_ERRORS,
        200: {"content": {"text/csv": {}}, "description": ", ".join(CSV_COLUMNS)},
    },
)
async def export_decisions(
    state: StateDep,
    principal: ModerateKey,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Response:
    """Every human decision (the latest `limit`) with the policy version it was made under, on
    the posts of the tenants the key sees."""
    rows = await run_in_threadpool(_decision_log_rows, state.engine, limit, principal.tenants)
    names = await run_in_threadpool(_key_names, state.engine, [row.moderator for row in rows])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(
        [_csv_cell(value) for value in (*row, actor_display(row.moderator, names))] for row in rows
    )
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="decisions.csv"'},
    )
