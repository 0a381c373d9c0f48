"""`/v1/audit`: the audit trail (scope `moderate`), as pages of JSON and as a CSV export.

Who did what, when, to which entity, with the state before and after, newest first. A key reads
the entries of the tenants it sees; global entries (live configuration, API keys) only when it
sees every tenant. Filters are exact matches, `since` and `until` inclusive.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.actors import actor_display
from moderation.db import crud
from moderation.db.models import AuditLog
from moderation.db.schemas import AuditEntryPublic, AuditPagePublic
from moderation.services.api.deps import ModerateKey, StateDep
from moderation.services.api.routes.errors import ApiError

router = APIRouter(prefix="/v1", tags=["audit"])

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# Inside the databases' 64-bit OFFSET (beyond it a query fails: a 500).
MAX_OFFSET = 1_000_000_000
CSV_DEFAULT_LIMIT = 100_000
CSV_MAX_LIMIT = 1_000_000
CSV_COLUMNS = (
    "at",
    "actor",
    "actor_display",
    "action",
    "entity",
    "entity_id",
    "tenant",
    "before",
    "after",
    "id",
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `moderate` scope"},
    422: {"description": "a filter is malformed (a time that is not ISO 8601, since > until)"},
}


async def audit_filter(
    principal: ModerateKey,
    actor: Annotated[
        str | None, Query(max_length=256, description="who: `key:<id>`, or a service's name")
    ] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="e.g. `review.decide`, `config.set`")
    ] = None,
    entity: Annotated[
        str | None, Query(max_length=32, description="e.g. `review`, `config`")
    ] = None,
    entity_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[
        datetime | None,
        Query(description="entries at or after this time (ISO 8601; UTC if no offset)"),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="entries at or before this time (ISO 8601)")
    ] = None,
) -> crud.AuditFilter:
    """The filters of a request, narrowed to the tenants the key sees."""
    where = crud.AuditFilter(
        tenants=principal.tenants,
        actor=actor or None,
        action=action or None,
        entity=entity or None,
        entity_id=entity_id or None,
        since=since,
        until=until,
    )
    if since is not None and until is not None and _aware(since) > _aware(until):
        raise ApiError(
            422,
            "invalid request: since is after until",
            errors=[{"field": "query since", "message": "must not be after until"}],
        )
    return where


def _aware(moment: datetime) -> datetime:
    # As the database compares them: a time without an offset is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


AuditFilterDep = Annotated[crud.AuditFilter, Depends(audit_filter)]


def _key_names(session: Session, rows: list[AuditLog]) -> dict[int, str]:
    return crud.api_key_names(session, actors=[row.actor for row in rows])


def _public(row: AuditLog, names: dict[int, str]) -> AuditEntryPublic:
    if row.id is None:
        raise ValueError("an audit entry without an id was returned by the database")
    return AuditEntryPublic(
        id=row.id,
        at=row.at,
        actor=row.actor,
        actor_display=actor_display(row.actor, names) or row.actor,
        action=row.action,
        entity=row.entity,
        entity_id=row.entity_id,
        tenant=row.tenant,
        before=row.before,
        after=row.after,
    )


def _page(
    engine: Engine, where: crud.AuditFilter, limit: int, offset: int
) -> tuple[list[AuditEntryPublic], int]:
    with Session(engine) as session:
        rows, total = crud.list_audit(session, where=where, limit=limit, offset=offset)
        names = _key_names(session, rows)
    return [_public(row, names) for row in rows], total


@router.get(
    "/audit",
    response_model=AuditPagePublic,
    summary="The audit trail, newest first: who did what, when, before and after",
    responses=RESPONSES,
)
async def list_audit(
    state: StateDep,
    where: AuditFilterDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditPagePublic:
    """A page of the entries matching the filters, and how many match in all."""
    items, total = await run_in_threadpool(_page, state.engine, where, limit, offset)
    return AuditPagePublic(items=items, total=total, limit=limit, offset=offset)


def csv_cell(value: object) -> str:
    """A cell as text; one that starts like a formula is quoted, as a spreadsheet would run it
    (CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_chunks(engine: Engine, where: crud.AuditFilter, limit: int) -> Iterator[str]:
    """The header, then the rows a thousand at a time (Starlette runs it in its thread pool)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    with Session(engine) as session:
        for rows in crud.iter_audit(session, where=where, limit=limit):
            names = _key_names(session, rows)
            buffer.seek(0)
            buffer.truncate()
            for row in rows:
                writer.writerow(
                    csv_cell(value)
                    for value in (
                        row.at,
                        row.actor,
                        actor_display(row.actor, names),
                        row.action,
                        row.entity,
                        row.entity_id,
                        row.tenant,
                        row.before,
                        row.after,
                        row.id,
                    )
                )
            yield buffer.getvalue()


@router.get(
    "/audit.csv",
    summary="The audit trail as CSV, newest first, with the same filters",
    response_class=StreamingResponse,
    responses={
        **RESPONSES,
        200: {"content": {"text/csv": {}}, "description": ", ".join(CSV_COLUMNS)},
    },
)
async def export_audit(
    state: StateDep,
    where: AuditFilterDep,
    limit: Annotated[int, Query(ge=1, le=CSV_MAX_LIMIT)] = CSV_DEFAULT_LIMIT,
) -> StreamingResponse:
    """Every matching entry (the latest `limit`), streamed; `before` and `after` as JSON."""
    return StreamingResponse(
        _csv_chunks(state.engine, where, limit),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )
