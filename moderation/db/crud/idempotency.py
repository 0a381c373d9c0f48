"""Idempotency keys of the submit API: the first post id bound to a key wins."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, select

from moderation.db.crud._sql import IDEMPOTENCY_KEYS, _insert_ignore
from moderation.db.models import IdempotencyKey
from moderation.events import utc_now


def claim_idempotency_key(session: Session, *, key: str, post_id: str) -> tuple[str, bool]:
    """Bind `key` to `post_id` unless it is bound already.

    Returns:
        The post id bound to the key (the earlier one when the key was claimed before) and
        whether that post was already published.

    Raises:
        ValueError: for a key longer than the column (300 characters).
    """
    if len(key) > 300:
        raise ValueError("idempotency key longer than 300 characters")
    row = {"key": key, "post_id": post_id, "published": False, "created_at": utc_now()}
    _insert_ignore(session, IDEMPOTENCY_KEYS, [row], ["key"])
    session.commit()
    claimed = session.exec(
        select(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    ).one()
    return claimed.post_id, claimed.published


def mark_published(session: Session, *, key: str) -> None:
    """Record that the post bound to `key` was acknowledged by Kafka."""
    session.exec(
        sa.update(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key).values(published=True)
    )
    session.commit()
