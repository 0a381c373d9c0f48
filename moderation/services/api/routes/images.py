"""`GET /v1/images/{sha256}`: a stored image of a post, for moderators (scope `moderate`).

The image is served only to a key that sees a post carrying it (an image of another tenant's
post is 404, as if unknown); the dashboard blurs it until the moderator asks to see it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.events import SHA256_HEX
from moderation.images.intake import sniff_format
from moderation.services.api.deps import ModerateKey, StateDep
from moderation.services.api.images import ImageUnavailable
from moderation.services.api.routes.errors import ApiError, unavailable_response

router = APIRouter(prefix="/v1", tags=["images"])

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}},
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `moderate` scope"},
    404: {"description": "no post the key sees has this image"},
    503: {"description": "the image store cannot be reached"},
}


def _visible(engine: Engine, sha256: str, tenants: frozenset[str] | None) -> bool:
    with Session(engine) as session:
        return crud.image_visible(session, sha256=sha256, tenants=tenants)


@router.get(
    "/images/{sha256}",
    response_class=Response,
    summary="A post's stored image (sanitized: no metadata)",
    responses=RESPONSES,
)
async def get_image(
    sha256: Annotated[str, Path(pattern=SHA256_HEX, description="ImageRef.sha256")],
    state: StateDep,
    principal: ModerateKey,
) -> Response:
    """The image's bytes as stored, for a key that sees a post carrying it."""
    if not await run_in_threadpool(_visible, state.engine, sha256, principal.tenants):
        raise ApiError(404, f"image '{sha256}' not found")
    try:
        data = await state.images.read(sha256)
    except ImageUnavailable as error:
        return unavailable_response(error.reason)
    if data is None:
        raise ApiError(404, f"image '{sha256}' is not in the store")
    kind = sniff_format(data) or ""
    return Response(
        data,
        media_type=CONTENT_TYPES.get(kind, "application/octet-stream"),
        headers={
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "inline",
        },
    )
