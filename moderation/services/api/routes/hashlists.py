"""`/v1/hashlists`: known-bad image hash lists kept in the database (scope `admin`).

Lists protect every tenant, so only admins read and add to them here; a moderator adds a removed
post's images to an existing list with its decision (`add_images_to_hashlist`). Workers reload
the lists every `images.hashlist_reload_seconds`, beside the lists in `images.hashlist_dir`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import (
    HashEntriesAdded,
    HashEntriesIn,
    HashListPublic,
    HashListsPublic,
)
from moderation.images.hashlists import (
    LIST_NAME_PATTERN,
    HashEntry,
    HashKind,
    HashList,
    HashListError,
)
from moderation.services.api.deps import AdminKey, StateDep
from moderation.services.api.routes.errors import ApiError

router = APIRouter(prefix="/v1", tags=["hashlists"])

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `admin` scope"},
}
ListName = Annotated[str, Path(pattern=LIST_NAME_PATTERN.pattern, description="the list's name")]


def _summaries(engine: Engine) -> list[crud.HashListSummary]:
    with Session(engine) as session:
        return crud.hashlist_summaries(session)


def _add(engine: Engine, hashlist: HashList, actor: str) -> tuple[int, int]:
    with Session(engine) as session:
        added = crud.add_hash_entries(session, hashlist=hashlist, actor=actor)
        total = crud.hashlist_size(session, name=hashlist.name)
    return added, total


@router.get(
    "/hashlists",
    response_model=HashListsPublic,
    summary="The image hash lists kept in the database",
    responses=AUTH_ERRORS,
)
async def list_hashlists(state: StateDep, _principal: AdminKey) -> HashListsPublic:
    rows = await run_in_threadpool(_summaries, state.engine)
    return HashListsPublic(items=[HashListPublic(**row._asdict()) for row in rows])


@router.post(
    "/hashlists/{name}/entries",
    status_code=201,
    response_model=HashEntriesAdded,
    summary="Add known-bad image hashes to a list (creating it)",
    responses={
        **AUTH_ERRORS,
        409: {"description": "the list exists with another category"},
        422: {"description": "a malformed hash, a safe category, a bad list name"},
    },
)
async def add_entries(
    name: ListName, body: HashEntriesIn, state: StateDep, principal: AdminKey
) -> JSONResponse:
    """Each entry is a PDQ hash, or the SHA-256 or MD5 of a file as uploaded; a repeat adds
    nothing. Audited `hashlist.add`; workers match them after their next reload."""
    try:
        hashlist = HashList(
            name,
            body.category,
            tuple(HashEntry(HashKind(e.kind), e.hash, e.note) for e in body.entries),
        )
    except HashListError as error:
        raise ApiError(
            422,
            f"invalid request: {error}",
            errors=[{"field": "body", "message": str(error), "type": "hashlist"}],
        ) from None
    try:
        added, total = await run_in_threadpool(_add, state.engine, hashlist, principal.actor)
    except crud.CategoryConflict as error:
        raise ApiError(409, str(error)) from None
    answer = HashEntriesAdded(name=name, category=body.category, added=added, entries=total)
    return JSONResponse(answer.model_dump(mode="json"), status_code=201)
