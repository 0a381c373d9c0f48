"""Which tenant things without a tenant column belong to: their post's.

Dapr workflow instances are named after what they work on (`services/agent/workflow.py`:
`agent-<post_id>-<policy_version>`; the review workflow: the review id, `review-<post_id>` with
an optional `-appeal-<n>` or `-report-<n>`), so their tenant is the tenant of that post.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session

from moderation.db.crud._sql import POSTS, REVIEWS, _chunks

INSTANCE_PREFIXES = ("agent-", "review-")


def _post_candidates(instance_id: str) -> list[str]:
    """The post ids an instance id may name: `<prefix><post_id>[-<suffix>]`, where the post id
    and the suffix may both hold a '-' (the longest recorded one wins)."""
    for prefix in INSTANCE_PREFIXES:
        if instance_id.startswith(prefix):
            rest = instance_id[len(prefix) :]
            cuts = [rest[:index] for index, char in enumerate(rest) if char == "-" and index > 0]
            return [*cuts, rest] if rest else []
    return []


def workflow_instance_tenants(session: Session, *, instance_ids: Sequence[str]) -> dict[str, str]:
    """instance id → the tenant of the post it works on, for the instances whose review (by
    its id) or post (by the id's parts) is recorded; the others are absent: no key restricted
    to some tenants sees them."""
    ids = list(dict.fromkeys(instance_ids))
    found: dict[str, str] = {}
    for chunk in _chunks(ids):
        rows = session.execute(
            sa.select(REVIEWS.c.review_id, POSTS.c.tenant)
            .join(POSTS, POSTS.c.id == REVIEWS.c.post_id)
            .where(REVIEWS.c.review_id.in_(list(chunk)))
        ).all()
        found.update({str(review_id): str(tenant) for review_id, tenant in rows})
    candidates = {
        instance_id: _post_candidates(instance_id)
        for instance_id in ids
        if instance_id not in found
    }
    post_ids = sorted({post_id for names in candidates.values() for post_id in names})
    tenants: dict[str, str] = {}
    for chunk in _chunks(post_ids):
        rows = session.execute(
            sa.select(POSTS.c.id, POSTS.c.tenant).where(POSTS.c.id.in_(list(chunk)))
        ).all()
        tenants.update({str(post_id): str(tenant) for post_id, tenant in rows})
    for instance_id, names in candidates.items():
        # The longest recorded candidate: a post id with a '-' wins over its own prefix.
        known = [name for name in names if name in tenants]
        if known:
            found[instance_id] = tenants[max(known, key=len)]
    return found
