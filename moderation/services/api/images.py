"""The API's side of images: checking, sanitizing and storing a post's images before the post is
accepted, and reading stored images back for moderators.

Each image is decoded in a killable process under `images.decode_timeout_seconds`
(`images/pool.py`), re-encoded without metadata, hashed and put in the object store; the post's
event then carries `ImageRef`s, never bytes. A refused image answers 4xx naming the image and the
reason, and the post is not published; images already stored for it stay (content-addressed,
shared by every post that has them). A busy decoder or an unreachable store is a 503.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Sequence
from typing import Any

from fastapi.concurrency import run_in_threadpool

from moderation.db.schemas.posts import ImageIn
from moderation.events import ImageRef
from moderation.images.intake import ImageRejected, check_count
from moderation.images.pool import DecodePool, DecoderBusy, DecoderFailed
from moderation.images.store import ImageNotFound, ImageStore, make_store
from moderation.services.api.routes.errors import ApiError
from moderation.settings import ImageSettings

log = logging.getLogger(__name__)


class ImageUnavailable(Exception):
    """The decoders or the store cannot take the image now (a 503, the upload is not at fault)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageIntake:
    """Decoders and the store of one API process; both start on the first image."""

    def __init__(self, settings: ImageSettings) -> None:
        self.settings = settings
        self._pool: DecodePool | None = None
        self._store: ImageStore | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> DecodePool:
        with self._lock:
            if self._pool is None:
                self._pool = DecodePool.from_settings(self.settings)
            return self._pool

    @property
    def store(self) -> ImageStore:
        with self._lock:
            if self._store is None:
                self._store = make_store(self.settings)
            return self._store

    async def accept(self, images: Sequence[ImageIn]) -> list[ImageRef]:
        """The post's images, checked, sanitized, hashed and stored, in order.

        Raises:
            ApiError: 413, 415 or 422 naming the image (`images[<i>]`) and what is wrong.
            ImageUnavailable: the decoders are saturated or the store cannot be reached.
        """
        if not self.settings.enabled:
            message = "this deployment does not accept images (images.enabled is off)"
            raise ApiError(
                422,
                f"invalid request: images: {message}",
                errors=[{"field": "images", "message": message, "type": "images_disabled"}],
            )
        try:
            check_count(len(images), self.settings)
        except ImageRejected as error:
            raise _refusal("images", error) from None
        refs = []
        for index, image in enumerate(images):
            field = f"images[{index}]"
            try:
                data = base64.b64decode(image.data_base64, validate=True)
            except (binascii.Error, ValueError):
                message = "data_base64 is not valid base64 (standard alphabet, padded)"
                raise ApiError(
                    422,
                    f"invalid request: {field}.data_base64: {message}",
                    errors=[
                        {"field": f"{field}.data_base64", "message": message, "type": "base64"}
                    ],
                ) from None
            try:
                prepared = await self.pool.prepare_async(data)
            except ImageRejected as error:
                raise _refusal(field, error) from None
            except (DecoderBusy, DecoderFailed) as error:
                raise ImageUnavailable(f"image decoders: {error}") from error
            try:
                uri = await run_in_threadpool(self.store.put, prepared.data, prepared.content_type)
            except Exception as error:  # the store's own errors (OSError, botocore's, ...)
                log.warning("image store unavailable: %r", error)
                raise ImageUnavailable(f"image store: {type(error).__name__}") from error
            refs.append(prepared.image_ref(uri))
        return refs

    async def read(self, sha256: str) -> bytes | None:
        """A stored image's bytes; None when the store does not have it.

        Raises:
            ImageUnavailable: the store cannot be reached.
        """
        try:
            return await run_in_threadpool(self.store.get, sha256)
        except ImageNotFound:
            return None
        except Exception as error:
            raise ImageUnavailable(f"image store: {type(error).__name__}") from error

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()


def _refusal(field: str, error: ImageRejected) -> ApiError:
    errors: list[dict[str, Any]] = [
        {"field": field, "message": error.message, "type": error.code.value}
    ]
    return ApiError(error.http_status, f"{field}: {error.message}", errors=errors)


def max_submit_body_bytes(max_text_body: int, settings: ImageSettings) -> int:
    """The largest `POST /v1/posts` body: the text post's limit and `max_per_post` images of
    `max_bytes` each, base64-encoded (4 characters per 3 bytes, padded)."""
    encoded = 4 * -(-settings.max_bytes // 3)
    return max_text_body + settings.max_per_post * (encoded + 64)
