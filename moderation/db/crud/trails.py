"""A post's moderation trail as people and agents read it (the API, the MCP server)."""

from __future__ import annotations

from sqlmodel import Session

from moderation.actors import actor_display
from moderation.db.crud._tenants import Tenants, sees
from moderation.db.crud.api_keys import api_key_names
from moderation.db.crud.reads import get_post, get_post_trail
from moderation.db.schemas.posts import DecisionOut, PostTrail, ReviewOut, VerdictOut
from moderation.events import ImageRef


def post_trail(session: Session, *, post_id: str, tenants: Tenants = None) -> PostTrail | None:
    """The post's status, verdicts, reviews and decisions; None when nothing is known of it, or
    when it is not a post of `tenants` (None: every tenant; see `_tenants.py`)."""
    if tenants is not None:
        post = get_post(session, post_id=post_id)
        if not sees(tenants, post.tenant if post is not None else None):
            return None
    post, verdicts, reviews, decisions = get_post_trail(session, post_id=post_id)
    if post is None and not (verdicts or reviews or decisions):
        return None
    actors = [r.claimed_by for r in reviews] + [r.decided_by for r in reviews]
    actors += [d.moderator_id for d in decisions]
    names = api_key_names(session, actors=actors)
    return PostTrail(
        post_id=post_id,
        status=str(post.status) if post is not None else "pending",
        author_id=post.author_id if post is not None else None,
        external_id=post.external_id if post is not None else None,
        text=post.text if post is not None else None,
        submitted_at=post.submitted_at if post is not None else None,
        images=[ImageRef.model_validate(image) for image in post.images] if post else [],
        verdicts=[VerdictOut.model_validate(v) for v in verdicts],
        reviews=[
            ReviewOut.model_validate(r).model_copy(
                update={
                    "claimed_by_display": actor_display(r.claimed_by, names),
                    "decided_by_display": actor_display(r.decided_by, names),
                }
            )
            for r in reviews
        ],
        decisions=[
            DecisionOut.model_validate(d).model_copy(
                update={"moderator_display": actor_display(d.moderator_id, names)}
            )
            for d in decisions
        ],
    )
