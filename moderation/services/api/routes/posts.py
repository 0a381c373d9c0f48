"""`/v1/posts`: submit one post, submit a batch, read a post's moderation trail (appeals:
`routes/appeals.py`).

The submit routes read and validate their JSON body themselves, with the same pydantic models
FastAPI would use (`PostIn.model_validate_json`: one pass in pydantic-core). Measured on the
2-core target, FastAPI's body and dependency machinery cost more CPU than the rest of the request;
doing it here also fixes the order of checks: API key, then content type, then JSON, then fields.
The OpenAPI document still describes the bodies (`openapi_extra`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import (
    MAX_KEY_CHARS,
    BatchEnvelope,
    BatchIn,
    BatchResult,
    PostAccepted,
    PostIn,
    PostTrail,
)
from moderation.events import ImageRef, PostSubmitted
from moderation.services.api.deps import ApiState, ReadKey, SessionDep, SubmitKey
from moderation.services.api.images import ImageUnavailable
from moderation.services.api.publisher import PublishUnavailable
from moderation.services.api.routes.errors import (
    ApiError,
    describe_errors,
    json_error,
    unavailable_response,
)
from moderation.services.api.security import Principal
from moderation.telemetry import tracer

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["posts"])

ModelT = TypeVar("ModelT", bound=BaseModel)


def require_json(content_type: str | None) -> None:
    """Refuse a body that is not JSON.

    Raises:
        ApiError: 415 naming the content type received.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        received = f"'{content_type}'" if content_type else "no Content-Type"
        raise ApiError(415, f"Content-Type must be application/json (got {received})")


def parse_body(body: bytes, model: type[ModelT]) -> ModelT:
    """The JSON `body` as `model`.

    Raises:
        ApiError: 400 when the body is empty or the JSON malformed, 422 when a field is missing
            or out of its limits (each error names the field).
    """
    if not body.strip():
        raise ApiError(400, "request body is empty: send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise body_error(error.errors(include_url=False)) from None


def body_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """400 for malformed JSON, else 422 listing every invalid field."""
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = str((error.get("ctx") or {}).get("error", "invalid JSON"))
            return ApiError(
                400,
                f"malformed JSON body: {reason}",
                errors=[{"field": "body", "message": reason, "type": "json_invalid"}],
            )
    described = describe_errors(errors)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in described)
    return ApiError(422, f"invalid request: {summary}", errors=described)


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
    "description": "retrying with the same key returns the same post_id and publishes nothing",
}
POST_SCHEMA = PostIn.model_json_schema()
BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["posts"],
    "additionalProperties": False,
    "properties": {
        "posts": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1_000,
            "items": POST_SCHEMA,
            "description": "each post is validated on its own; an invalid one gets an error",
        }
    },
}

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Kafka did not acknowledge in time; retry after a while"}
}
SUBMIT_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked API key"},
    403: {"description": "the key lacks the `submit` scope"},
}


def _too_long(text: str, limit: int) -> str:
    return f"too long: {len(text):,} characters; the limit is {limit:,}"


def _check_text_limit(state: ApiState, text: str) -> None:
    # PostIn enforces the schema's maximum; the setting may only lower it.
    limit = state.settings.api.max_text_chars
    if len(text) > limit:
        message = _too_long(text, limit)
        raise ApiError(
            422,
            f"invalid request: text: {message}",
            errors=[{"field": "text", "message": message, "type": "string_too_long"}],
        )


def _event(
    post: PostIn,
    post_id: str,
    principal: Principal,
    *,
    event_id: str | None = None,
    images: Sequence[ImageRef] = (),
) -> PostSubmitted:
    return PostSubmitted(
        event_id=event_id or uuid.uuid4().hex,
        post_id=post_id,
        text=post.text,
        author_id=post.author_id,
        tenant=principal.tenant,
        external_id=post.external_id,
        metadata=post.metadata,
        images=list(images),
    )


def _scoped_key(principal: Principal, external_id: str | None, header: str | None) -> str | None:
    # external_id is the post's identity for its submitter, so it wins over a retry token.
    if external_id is not None:
        return f"{principal.key_id}:ext:{external_id}"
    if header is not None:
        return f"{principal.key_id}:hdr:{header}"
    return None


def _claim(engine: Engine, keys: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    with Session(engine) as session:
        return [crud.claim_idempotency_key(session, key=key, post_id=pid) for key, pid in keys]


def _mark(engine: Engine, keys: Sequence[str]) -> None:
    with Session(engine) as session:
        for key in keys:
            crud.mark_published(session, key=key)


def _accepted(post_id: str, *, replayed: bool = False) -> Response:
    headers = {"Location": f"/v1/posts/{post_id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        content=f'{{"post_id":"{post_id}","status":"accepted"}}',
        status_code=202,
        media_type="application/json",
        headers=headers,
    )


@router.post(
    "/posts",
    status_code=202,
    response_model=PostAccepted,
    summary="Submit one post",
    openapi_extra={**_json_body(POST_SCHEMA), "parameters": [IDEMPOTENCY_HEADER]},
    responses={
        400: {"description": "malformed JSON"},
        **SUBMIT_AUTH_ERRORS,
        415: {"description": "the body is not application/json"},
        422: {"description": "a field is missing or out of its limits"},
        **UNAVAILABLE,
    },
)
async def submit_post(request: Request, principal: SubmitKey) -> Response:
    """Answer 202 with the post id once Kafka acknowledged the PostSubmitted event.

    Without `external_id` or `Idempotency-Key` the database is not touched at all. The app
    serves this path through `SubmitFastLane`, which calls the same `accept_post`.
    """
    body = await request.body()
    return await accept_post(request.app.state.api, principal, request.headers, body)


async def accept_post(
    state: ApiState, principal: Principal, headers: Mapping[str, str], body: bytes
) -> Response:
    """Everything `POST /v1/posts` does once the key is known: validate, claim, publish, answer.

    Raises:
        ApiError: 4xx with the reason (415, 400, 422).
    """
    require_json(headers.get("content-type"))
    post = parse_body(body, PostIn)
    _check_text_limit(state, post.text)
    idempotency_key = headers.get("idempotency-key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY_CHARS:
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters long")
    metrics = state.metrics
    scoped = _scoped_key(principal, post.external_id, idempotency_key)
    post_id = uuid.uuid4().hex
    if scoped is not None:
        [(post_id, published)] = await run_in_threadpool(_claim, state.engine, [(scoped, post_id)])
        if published:
            metrics.idempotent_replays.inc()
            return _accepted(post_id, replayed=True)
    images: list[ImageRef] = []
    if post.images:
        # Checked, sanitized and stored before anything is published (README "Images").
        try:
            images = await state.images.accept(post.images)
        except ImageUnavailable as error:
            metrics.unavailable.labels("single", "images").inc()
            log.warning("submit answered 503: %s", error.reason)
            return unavailable_response(error.reason)
    event = _event(post, post_id, principal, images=images)
    topic = state.settings.kafka.topics.posts_submitted
    started = time.perf_counter()
    try:
        # The post's trace starts here; the publisher puts its context into the Kafka headers.
        with tracer().start_as_current_span(
            "submit post", kind=SpanKind.PRODUCER, attributes={"moderation.post_id": post_id}
        ):
            await state.publisher.publish(topic, event.key(), event.model_dump_json().encode())
    except PublishUnavailable as error:
        metrics.unavailable.labels("single", "kafka").inc()
        log.warning("submit answered 503: %s", error)
        return unavailable_response(error.reason)
    metrics.latency_single.observe(time.perf_counter() - started)
    if scoped is not None:
        await run_in_threadpool(_mark, state.engine, [scoped])
    metrics.ingested_single.inc()
    return _accepted(post_id)


@router.post(
    "/posts:batch",
    status_code=202,
    response_model=BatchResult,
    summary="Submit up to `api.max_batch` posts",
    openapi_extra=_json_body(BATCH_SCHEMA),
    responses={
        400: {"description": "malformed JSON, or an Idempotency-Key header (use external_id)"},
        **SUBMIT_AUTH_ERRORS,
        413: {"description": "more posts than `api.max_batch`, or a larger body than allowed"},
        415: {"description": "the body is not application/json"},
        422: {"description": "the envelope is invalid, or every post is"},
        503: {"description": "some valid posts were not acknowledged; resend those only"},
    },
)
async def submit_batch(request: Request, principal: SubmitKey) -> Response:
    """One result per post, in order: its post id, or why it was refused.

    Valid posts are published concurrently and the answer waits for every acknowledgement:
    202 when all valid posts are in Kafka, 503 (with per-post results) when some are not,
    422 when no post is valid.
    """
    if request.headers.get("idempotency-key") is not None:
        raise ApiError(
            400,
            "Idempotency-Key is not supported on posts:batch; set external_id on each post",
        )
    state: ApiState = request.app.state.api
    limit = state.settings.api.max_batch
    count, valid, results = await _read_batch(request, limit, state.settings.api.max_text_chars)
    # The request paid for one post on arrival (`deps.authenticate`); a batch pays for each post.
    if count > 1:
        state.limits.charge_posts(principal.key_id, principal.name, count - 1)
    metrics = state.metrics
    metrics.batch_size.observe(count)
    rejected = count - len(valid)
    if rejected:
        metrics.rejected_batch.inc(rejected)

    to_publish, claimed_keys, followers = await _assign_ids(state, principal, valid, results)
    topic = state.settings.kafka.topics.posts_submitted
    event_ids = _new_ids(len(to_publish))
    records = []
    for (index, post), event_id in zip(to_publish, event_ids, strict=True):
        event = _event(post, results[index]["post_id"], principal, event_id=event_id)
        records.append((event.key(), event.model_dump_json().encode()))
    started = time.perf_counter()
    with tracer().start_as_current_span(
        "submit posts", kind=SpanKind.PRODUCER, attributes={"moderation.posts": len(records)}
    ):
        outcomes = await state.publisher.publish_many(topic, records) if records else []
    metrics.latency_batch.observe(time.perf_counter() - started)

    published_keys: list[str] = []
    for (index, _post), outcome in zip(to_publish, outcomes, strict=True):
        if outcome is None and (key := claimed_keys.get(index)) is not None:
            published_keys.append(key)
        # A repeated external_id shares the fate of its first occurrence.
        for member in (index, *followers.get(index, ())):
            if outcome is None:
                results[member]["status"] = "accepted"
            else:
                del results[member]["post_id"]
                results[member]["error"] = {"code": "unavailable", "message": outcome.reason}
    if published_keys:
        await run_in_threadpool(_mark, state.engine, published_keys)
    accepted = sum(1 for result in results if result.get("status") == "accepted")
    unavailable = len(valid) - accepted
    metrics.ingested_batch.inc(accepted)
    body = {
        "accepted": accepted,
        "rejected": rejected,
        "unavailable": unavailable,
        "results": results,
    }
    if unavailable:
        metrics.unavailable.labels("batch", "kafka").inc()
        return unavailable_response(
            f"{unavailable} of {len(valid)} valid posts were not acknowledged by Kafka; "
            "resend only the posts whose error code is 'unavailable'",
            body=body,
        )
    if not valid:
        return json_error(422, "no post in the batch is valid; see results", body=body)
    return JSONResponse(body, status_code=202)


def _new_ids(count: int) -> list[str]:
    """`count` random 128-bit ids as hex (as unique as uuid4, without a call per id)."""
    raw = os.urandom(16 * count).hex()
    return [raw[start : start + 32] for start in range(0, 32 * count, 32)]


async def _read_batch(
    request: Request, limit: int, max_chars: int
) -> tuple[int, list[tuple[int, PostIn]], list[dict[str, Any]]]:
    """Parse a batch: the post count, the valid posts by index, and a result slot per post.

    Raises:
        ApiError: 415/400 as `parse_body`; 413 above `limit` posts; 422 for a bad envelope.
    """
    require_json(request.headers.get("content-type"))
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "request body is empty: send a JSON object with 'posts'")
    valid: list[tuple[int, PostIn]]
    try:
        posts = BatchIn.model_validate_json(body).posts
    except ValidationError:
        # Some post (or the envelope) is invalid: validate post by post to say which.
        try:
            items = BatchEnvelope.model_validate_json(body).posts
        except ValidationError as error:
            raise body_error(error.errors(include_url=False)) from None
        _check_count(len(items), limit)
        results: list[dict[str, Any]] = [{"index": index} for index in range(len(items))]
        valid = []
        for index, item in enumerate(items):
            try:
                valid.append((index, PostIn.model_validate(item)))
            except ValidationError as error:
                errors = describe_errors(error.errors(include_url=False), prefix=f"posts[{index}]")
                results[index]["error"] = _item_error("invalid", errors)
        count = len(items)
    else:
        count = len(posts)
        _check_count(count, limit)
        results = [{"index": index} for index in range(count)]
        valid = list(enumerate(posts))
    if any(len(post.text) > max_chars or post.images for _, post in valid):
        kept = []
        for index, post in valid:
            if post.images:
                # Images are checked and stored one post at a time (`POST /v1/posts`).
                field = f"posts[{index}].images"
                message = "images are accepted on POST /v1/posts only, not in a batch"
                results[index]["error"] = _item_error(
                    "invalid", [{"field": field, "message": message, "type": "images_in_batch"}]
                )
            elif len(post.text) > max_chars:
                field = f"posts[{index}].text"
                message = _too_long(post.text, max_chars)
                results[index]["error"] = _item_error(
                    "invalid", [{"field": field, "message": message, "type": "string_too_long"}]
                )
            else:
                kept.append((index, post))
        valid = kept
    return count, valid, results


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise ApiError(413, f"batch has {count:,} posts; the limit is {limit:,} per request")
    if count == 0:
        raise ApiError(422, f"posts: the batch is empty; send 1 to {limit:,} posts")


def _item_error(code: str, errors: list[dict[str, str]]) -> dict[str, Any]:
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return {"code": code, "message": message, "errors": errors}


async def _assign_ids(
    state: ApiState,
    principal: Principal,
    valid: list[tuple[int, PostIn]],
    results: list[dict[str, Any]],
) -> tuple[list[tuple[int, PostIn]], dict[int, str], dict[int, list[int]]]:
    """Give each valid post its id; a post whose external_id was published before is a replay.

    Returns:
        The posts to publish (by index); the idempotency key to mark published, per index; and
        per published index, the later posts of the batch that repeat its external_id.
    """
    to_publish: list[tuple[int, PostIn]] = []
    keyed: list[tuple[int, PostIn, str]] = []
    ids = iter(_new_ids(len(valid)))
    for index, post in valid:
        scoped = _scoped_key(principal, post.external_id, None)
        if scoped is None:
            results[index]["post_id"] = next(ids)
            to_publish.append((index, post))
        else:
            keyed.append((index, post, scoped))
    claimed_keys: dict[int, str] = {}
    followers: dict[int, list[int]] = {}
    if not keyed:
        return to_publish, claimed_keys, followers
    first_of: dict[str, int] = {}
    claims: list[tuple[str, str]] = []
    for index, _post, scoped in keyed:
        if scoped not in first_of:
            first_of[scoped] = index
            claims.append((scoped, next(ids)))
    outcomes = await run_in_threadpool(_claim, state.engine, claims)
    claimed = dict(zip(first_of, outcomes, strict=True))
    for index, post, scoped in keyed:
        post_id, published = claimed[scoped]
        results[index]["post_id"] = post_id
        first = first_of[scoped]
        if published:
            results[index]["status"] = "accepted"
            state.metrics.idempotent_replays.inc()
        elif first == index:
            to_publish.append((index, post))
            claimed_keys[index] = scoped
        else:
            followers.setdefault(first, []).append(index)
    to_publish.sort(key=lambda pair: pair[0])
    return to_publish, claimed_keys, followers


@router.get(
    "/posts/{post_id}",
    response_model=PostTrail,
    summary="A post's status, verdicts, reviews and decisions",
    responses={404: {"description": "no such post (yet) in the read model"}},
)
def get_post(post_id: str, session: SessionDep, principal: ReadKey) -> PostTrail:
    """The post's moderation trail as the recorder stored it.

    Raises:
        ApiError: 404 when the read model knows nothing about the post, or it is another
            tenant's (exactly as if it did not exist).
    """
    trail = crud.post_trail(session, post_id=post_id, tenants=principal.tenants)
    if trail is None:
        raise ApiError(
            404,
            f"post '{post_id}' not found (an accepted post appears once the recorder stored it)",
        )
    return trail
