"""What the classifier agent may look up: an author's recent verdicts and similar past decisions.

Read-only. The database-backed `SqlDecisionLog` goes through `crud`; precedents are the recent
human decisions most similar to the post (character n-gram cosine, robust to spelling tricks),
ranked in memory over a pool that is refreshed at most every `POOL_TTL_SECONDS`. The review API
shows the same precedents to moderators.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from moderation.db import crud
from moderation.events import DEFAULT_TENANT

if TYPE_CHECKING:
    from sqlalchemy import Engine

POOL_TTL_SECONDS = 30.0
MIN_SIMILARITY = 0.2


@dataclass(frozen=True)
class Precedent:
    post_id: str
    text: str
    label: str
    decision: str
    note: str | None
    similarity: float
    # The decided post's tenant: callers that see only some tenants filter on it.
    tenant: str = DEFAULT_TENANT


class DecisionLog(Protocol):
    """The agent's read-only view of the decision log."""

    async def author_verdicts(
        self, author_id: str, *, limit: int, exclude_post_id: str
    ) -> list[crud.AuthorVerdict]: ...

    async def precedents(self, text: str, *, limit: int) -> list[Precedent]: ...


@cache
def _vectorizer() -> Any:
    # The one lazy import of scikit-learn: it takes seconds, and the review API, which imports
    # this module, needs it only once a moderator looks at a review with decisions to rank
    # (`SqlDecisionLog` first builds it in a thread, off the event loop).
    from sklearn.feature_extraction.text import HashingVectorizer  # type: ignore[import-untyped]

    return HashingVectorizer(
        analyzer="char_wb", ngram_range=(3, 5), n_features=2**18, alternate_sign=False, norm="l2"
    )


def rank_precedents(
    text: str, decisions: Sequence[crud.DecidedPost], *, limit: int, matrix: Any = None
) -> list[Precedent]:
    """The `limit` decisions most similar to `text` (cosine ≥ MIN_SIMILARITY), best first."""
    if not decisions:
        return []
    vectorizer = _vectorizer()
    pool = matrix if matrix is not None else vectorizer.transform([d.text for d in decisions])
    similarities = np.asarray((pool @ vectorizer.transform([text]).T).todense()).ravel()
    best = np.argsort(-similarities, kind="stable")[:limit]
    return [
        Precedent(
            post_id=decisions[i].post_id,
            text=decisions[i].text,
            label=decisions[i].label,
            decision=decisions[i].decision,
            note=decisions[i].note,
            similarity=round(float(similarities[i]), 3),
            tenant=decisions[i].tenant,
        )
        for i in best
        if similarities[i] >= MIN_SIMILARITY
    ]


class SqlDecisionLog:
    """The decision log in the read model (PostgreSQL, or SQLite in the demo)."""

    def __init__(self, engine: Engine, *, pool_size: int) -> None:
        self.engine = engine
        self.pool_size = pool_size
        self._pool: tuple[float, list[crud.DecidedPost], Any] | None = None
        self._pool_lock = asyncio.Lock()

    async def author_verdicts(
        self, author_id: str, *, limit: int, exclude_post_id: str
    ) -> list[crud.AuthorVerdict]:
        from sqlmodel import Session

        def query() -> list[crud.AuthorVerdict]:
            with Session(self.engine) as session:
                return crud.list_author_verdicts(
                    session, author_id=author_id, limit=limit, exclude_post_id=exclude_post_id
                )

        return await asyncio.to_thread(query)

    async def precedents(self, text: str, *, limit: int) -> list[Precedent]:
        decisions, matrix = await self._decision_pool()
        return rank_precedents(text, decisions, limit=limit, matrix=matrix)

    async def _decision_pool(self) -> tuple[list[crud.DecidedPost], Any]:
        async with self._pool_lock:
            if self._pool is None or time.monotonic() - self._pool[0] > POOL_TTL_SECONDS:
                decisions, matrix = await asyncio.to_thread(self._load_pool)
                self._pool = (time.monotonic(), decisions, matrix)
            return self._pool[1], self._pool[2]

    def _load_pool(self) -> tuple[list[crud.DecidedPost], Any]:
        """The latest human decisions and their vectors (blocking: run it in a thread)."""
        from sqlmodel import Session

        with Session(self.engine) as session:
            decisions = crud.list_human_decisions(session, limit=self.pool_size)
        matrix = _vectorizer().transform([d.text for d in decisions]) if decisions else None
        return decisions, matrix
