"""The ingest API on SQLite with an in-memory publisher: 202s, idempotency, errors, auth, trail."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, event
from sqlmodel import Session
from typer.testing import CliRunner

from moderation.db import crud
from moderation.db.engine import make_engine
from moderation.devtools.bench.loadgen import measure_ingest
from moderation.events import ModerationVerdict, PostSubmitted
from moderation.services.api import build_app
from moderation.services.api.cli import app as api_keys_cli
from moderation.services.api.publisher import InMemoryPublisher, KafkaPublisher, PublishUnavailable
from moderation.services.api.routes.submit_lane import SubmitFastLane
from moderation.settings import Settings, get_settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

TOPIC = "posts.submitted"


@pytest.fixture(params=["fast-lane", "fastapi-route"])
def app(
    request: pytest.FixtureRequest,
    settings: Settings,
    publisher: InMemoryPublisher,
    engine: Engine,
) -> FastAPI:
    """The app as served, and without the submit fast lane (the FastAPI route answers)."""
    app = build_app(settings, publisher=publisher, engine=engine)
    if request.param == "fastapi-route":
        lane: object = SubmitFastLane
        app.user_middleware = [m for m in app.user_middleware if m.cls is not lane]
    return app


def make_key(engine: Engine, *scopes: str, name: str = "tester") -> str:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name=name, scopes=list(scopes))
    return plaintext


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def submit_key(engine: Engine) -> str:
    return make_key(engine, "submit", name="submitter")


@pytest.fixture
def read_key(engine: Engine) -> str:
    return make_key(engine, "read", name="reader")


def published(publisher: InMemoryPublisher) -> list[PostSubmitted]:
    return [PostSubmitted.model_validate_json(value) for value in publisher.values(TOPIC)]


def post_body(text: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"text": text, "author_id": "user-1", **extra}


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str)
    return body["detail"]


# --- the 202 path -----------------------------------------------------------------------------


async def test_post_is_accepted_after_publishing_the_event(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    response = await client.post(
        "/v1/posts",
        json=post_body("Cafe\u0301 tonight?", external_id=None, metadata={"lang": "en"}),
        headers=auth(submit_key),
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert response.headers["location"] == f"/v1/posts/{body['post_id']}"
    [(topic, key, _)] = publisher.records
    [submitted] = published(publisher)
    assert topic == TOPIC and key == body["post_id"].encode() == submitted.key()
    assert submitted.post_id == body["post_id"]
    assert submitted.text == "Café tonight?"  # NFC: one code point for é
    assert submitted.author_id == "user-1" and submitted.metadata == {"lang": "en"}


async def test_text_is_measured_after_nfc_normalization(
    client: httpx.AsyncClient, submit_key: str
) -> None:
    decomposed = "e\u0301" * 10_000  # 20,000 code points, 10,000 once composed
    assert len(unicodedata.normalize("NFC", decomposed)) == 10_000

    response = await client.post("/v1/posts", json=post_body(decomposed), headers=auth(submit_key))

    assert response.status_code == 202, response.text


async def test_x_api_key_header_and_admin_scope_are_accepted(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    admin = make_key(engine, "admin")

    response = await client.post("/v1/posts", json=post_body(), headers={"X-API-Key": admin})

    assert response.status_code == 202, response.text


async def test_single_post_without_idempotency_never_touches_the_database(
    client: httpx.AsyncClient, engine: Engine, submit_key: str
) -> None:
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *args: checkouts.append(args))
    first = await client.post("/v1/posts", json=post_body(), headers=auth(submit_key))
    assert first.status_code == 202
    assert len(checkouts) == 1  # the key lookup, cached from now on

    for _ in range(5):
        response = await client.post("/v1/posts", json=post_body(), headers=auth(submit_key))
        assert response.status_code == 202

    assert len(checkouts) == 1


# --- idempotency ------------------------------------------------------------------------------


async def test_same_external_id_returns_same_post_and_publishes_once(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    body = post_body(external_id="forum-post-17")

    first = await client.post("/v1/posts", json=body, headers=auth(submit_key))
    again = await client.post("/v1/posts", json=body, headers=auth(submit_key))

    assert first.status_code == again.status_code == 202
    assert first.json()["post_id"] == again.json()["post_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert [p.external_id for p in published(publisher)] == ["forum-post-17"]


async def test_idempotency_key_header_returns_same_post(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    headers = {**auth(submit_key), "Idempotency-Key": "retry-token-1"}

    first = await client.post("/v1/posts", json=post_body(), headers=headers)
    again = await client.post("/v1/posts", json=post_body(), headers=headers)
    other = await client.post(
        "/v1/posts", json=post_body(), headers={**auth(submit_key), "Idempotency-Key": "token-2"}
    )

    assert first.json()["post_id"] == again.json()["post_id"] != other.json()["post_id"]
    assert len(publisher.records) == 2


async def test_external_id_is_scoped_to_the_api_key(
    client: httpx.AsyncClient, engine: Engine, publisher: InMemoryPublisher, submit_key: str
) -> None:
    other_key = make_key(engine, "submit", name="another-tenant")
    body = post_body(external_id="42")

    mine = await client.post("/v1/posts", json=body, headers=auth(submit_key))
    theirs = await client.post("/v1/posts", json=body, headers=auth(other_key))

    assert mine.json()["post_id"] != theirs.json()["post_id"]
    assert len(publisher.records) == 2


async def test_claimed_but_unpublished_key_is_published_on_retry(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    body = post_body(external_id="during-outage")
    publisher.available = False
    refused = await client.post("/v1/posts", json=body, headers=auth(submit_key))
    assert refused.status_code == 503
    assert publisher.records == []

    publisher.available = True
    accepted = await client.post("/v1/posts", json=body, headers=auth(submit_key))
    replay = await client.post("/v1/posts", json=body, headers=auth(submit_key))

    assert accepted.status_code == replay.status_code == 202
    assert accepted.json()["post_id"] == replay.json()["post_id"]
    [submitted] = published(publisher)
    assert submitted.post_id == accepted.json()["post_id"]


# --- Kafka unavailable --------------------------------------------------------------------------


async def test_unacknowledged_post_gets_503_with_retry_after(
    client: httpx.AsyncClient,
    internal_client: httpx.AsyncClient,
    publisher: InMemoryPublisher,
    submit_key: str,
) -> None:
    publisher.available = False

    response = await client.post("/v1/posts", json=post_body(), headers=auth(submit_key))

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "kafka unreachable" in detail(response)
    # The client library's error (broker addresses, internals) stays in the log (issue 11).
    assert "simulated outage" not in response.text
    batch = await client.post(
        "/v1/posts:batch", json={"posts": [post_body()]}, headers=auth(submit_key)
    )
    assert batch.status_code == 503 and "simulated outage" not in batch.text
    metrics = (await internal_client.get("/metrics")).text
    assert 'moderation_api_unavailable_responses_total{endpoint="single",reason="kafka"} 1.0' in (
        metrics
    )


async def test_kafka_publisher_answers_unavailable_when_the_broker_is_unreachable() -> None:
    # Nothing listens on port 9 (discard) here: the connection is refused at once.
    publisher = KafkaPublisher("127.0.0.1:9", timeout=2.0)
    await publisher.start()
    try:
        started = time.monotonic()
        with pytest.raises(PublishUnavailable, match="kafka unreachable"):
            await publisher.publish(TOPIC, b"key", b"value")
        # Found unreachable at start-up: refused at once, not after the 2 s timeout.
        assert time.monotonic() - started < 1.0
        [outcome] = await publisher.publish_many(TOPIC, [(b"key", b"value")])
        assert isinstance(outcome, PublishUnavailable)
        with pytest.raises(PublishUnavailable):
            await publisher.ping()
    finally:
        await publisher.close()


# --- bad input: each 4xx says what is wrong ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "status", "expected"),
    [
        (b'{"text": "hi", "author_id": ', 400, "malformed JSON body: EOF while parsing"),
        (b"not json at all", 400, "malformed JSON body: expected ident at line 1 column 2"),
        (b"", 400, "request body is empty"),
        (b'{"author_id": "u"}', 422, "text: field required"),
        (b'{"text": "hi"}', 422, "author_id: field required"),
        (b'{"text": "", "author_id": "u"}', 422, "text: must not be empty"),
        (b'{"text": "   ", "author_id": "u"}', 422, "text: text must contain at least one"),
        (b'{"text": 5, "author_id": "u"}', 422, "text: Input should be a valid string (got num"),
        (b'{"text": "hi", "author_id": "u", "txt": 1}', 422, "txt: unknown field"),
        (b"[1, 2]", 422, "expected a JSON object"),
    ],
)
async def test_bad_body_is_rejected_with_a_clear_message(
    client: httpx.AsyncClient, submit_key: str, content: bytes, status: int, expected: str
) -> None:
    headers = {**auth(submit_key), "Content-Type": "application/json"}

    response = await client.post("/v1/posts", content=content, headers=headers)

    assert response.status_code == status, response.text
    assert expected in detail(response)


async def test_text_of_10001_characters_is_rejected_naming_the_limit(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    response = await client.post(
        "/v1/posts", json=post_body("x" * 10_001), headers=auth(submit_key)
    )

    assert response.status_code == 422
    assert detail(response) == (
        "invalid request: text: too long: 10,001 characters; the limit is 10,000"
    )
    assert response.json()["errors"] == [
        {
            "field": "text",
            "message": "too long: 10,001 characters; the limit is 10,000",
            "type": "string_too_long",
        }
    ]
    assert publisher.records == []


async def test_text_of_exactly_10000_characters_is_accepted(
    client: httpx.AsyncClient, submit_key: str
) -> None:
    response = await client.post(
        "/v1/posts", json=post_body("x" * 10_000), headers=auth(submit_key)
    )

    assert response.status_code == 202


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, submit_key: str, content_type: str | None
) -> None:
    headers = auth(submit_key)
    if content_type:
        headers["Content-Type"] = content_type

    response = await client.post(
        "/v1/posts", content=json.dumps(post_body()).encode(), headers=headers
    )

    assert response.status_code == 415
    assert detail(response).startswith("Content-Type must be application/json (got ")


async def test_overlong_idempotency_key_is_400(client: httpx.AsyncClient, submit_key: str) -> None:
    headers = {**auth(submit_key), "Idempotency-Key": "k" * 257}

    response = await client.post("/v1/posts", json=post_body(), headers=headers)

    assert response.status_code == 400
    assert "Idempotency-Key must be 1 to 256 characters" in detail(response)


async def test_unknown_route_and_method_say_so(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v2/nothing")
    wrong_method = await client.delete("/v1/posts")

    assert missing.status_code == 404 and "no such endpoint: GET /v2/nothing" in detail(missing)
    assert wrong_method.status_code == 405 and "DELETE is not allowed" in detail(wrong_method)


# --- authentication and scopes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer mod_abc_wrong"}, "invalid API key: unknown or revoked"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "must be 'Bearer <api key>'"),
        ({"X-API-Key": "not-a-key"}, "invalid API key"),
    ],
)
async def test_missing_or_unknown_key_is_401(
    client: httpx.AsyncClient,
    publisher: InMemoryPublisher,
    headers: dict[str, str],
    expected: str,
) -> None:
    response = await client.post("/v1/posts", json=post_body(), headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert expected in detail(response)
    assert publisher.records == []


async def test_revoked_key_is_401(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine
) -> None:
    key = make_key(engine, "submit")
    with Session(engine) as session:
        assert crud.revoke_api_key(session, prefix=key.split("_")[1])
    app = build_app(settings, publisher=publisher, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            response = await http.post("/v1/posts", json=post_body(), headers=auth(key))

    assert response.status_code == 401


async def test_missing_scope_is_403_naming_it(
    client: httpx.AsyncClient, read_key: str, submit_key: str
) -> None:
    submit_with_read_key = await client.post("/v1/posts", json=post_body(), headers=auth(read_key))
    read_with_submit_key = await client.get("/v1/posts/abc", headers=auth(submit_key))

    assert submit_with_read_key.status_code == 403
    assert detail(submit_with_read_key) == ("API key 'reader' lacks scope 'submit' (it has: read)")
    assert read_with_submit_key.status_code == 403
    assert "lacks scope 'read'" in detail(read_with_submit_key)


async def test_auth_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/posts", content=b"{broken", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 401


# --- batch ----------------------------------------------------------------------------------------


async def test_batch_answers_per_item_in_order_and_publishes_only_valid_posts(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    posts: list[Any] = [
        post_body("first"),
        {"text": "", "author_id": "u"},
        "not an object",
        post_body("x" * 10_001),
        post_body("last", external_id="ext-1"),
    ]

    response = await client.post("/v1/posts:batch", json={"posts": posts}, headers=auth(submit_key))

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"], body["unavailable"]) == (2, 3, 0)
    results = body["results"]
    assert [result["index"] for result in results] == [0, 1, 2, 3, 4]
    assert results[0]["status"] == results[4]["status"] == "accepted"
    assert results[1]["error"]["message"] == "posts[1].text: must not be empty"
    assert results[2]["error"]["message"] == "posts[2]: expected a JSON object, got string"
    assert (
        "posts[3].text: too long: 10,001 characters; the limit is 10,000"
        in (results[3]["error"]["message"])
    )
    assert all(results[i]["error"]["code"] == "invalid" for i in (1, 2, 3))
    assert [p.post_id for p in published(publisher)] == [
        results[0]["post_id"],
        results[4]["post_id"],
    ]
    assert [p.text for p in published(publisher)] == ["first", "last"]


async def test_batch_of_1000_is_accepted_and_1001_is_413(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    thousand = {"posts": [post_body(f"post {i}") for i in range(1_000)]}
    too_many = {"posts": [post_body(f"post {i}") for i in range(1_001)]}

    accepted = await client.post("/v1/posts:batch", json=thousand, headers=auth(submit_key))
    refused = await client.post("/v1/posts:batch", json=too_many, headers=auth(submit_key))

    assert accepted.status_code == 202 and accepted.json()["accepted"] == 1_000
    assert len({result["post_id"] for result in accepted.json()["results"]}) == 1_000
    assert refused.status_code == 413
    assert detail(refused) == "batch has 1,001 posts; the limit is 1,000 per request"
    assert len(publisher.records) == 1_000


@pytest.mark.parametrize(
    ("payload", "status", "expected"),
    [
        ({"posts": []}, 422, "posts: the batch is empty; send 1 to 1,000 posts"),
        ({"posts": "many"}, 422, "posts: Input should be a valid array (got string)"),
        ({"items": []}, 422, "posts: field required"),
        ({"posts": [{"text": ""}]}, 422, "no post in the batch is valid"),
    ],
)
async def test_bad_batch_envelope_is_rejected(
    client: httpx.AsyncClient, submit_key: str, payload: Any, status: int, expected: str
) -> None:
    response = await client.post("/v1/posts:batch", json=payload, headers=auth(submit_key))

    assert response.status_code == status, response.text
    assert expected in detail(response)


async def test_batch_repeated_external_id_is_one_post_published_once(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    posts = [post_body("a", external_id="dup"), post_body("b"), post_body("a", external_id="dup")]

    first = await client.post("/v1/posts:batch", json={"posts": posts}, headers=auth(submit_key))
    again = await client.post("/v1/posts:batch", json={"posts": posts}, headers=auth(submit_key))

    results = first.json()["results"]
    assert results[0]["post_id"] == results[2]["post_id"] != results[1]["post_id"]
    assert again.json()["results"][0]["post_id"] == results[0]["post_id"]
    assert [p.text for p in published(publisher)] == ["a", "b", "b"]


async def test_batch_during_outage_is_503_listing_unacknowledged_posts(
    client: httpx.AsyncClient, publisher: InMemoryPublisher, submit_key: str
) -> None:
    publisher.available = False
    posts = [post_body("a"), {"text": "", "author_id": "u"}]

    response = await client.post("/v1/posts:batch", json={"posts": posts}, headers=auth(submit_key))

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert (body["accepted"], body["rejected"], body["unavailable"]) == (0, 1, 1)
    assert body["results"][0]["error"]["code"] == "unavailable"
    assert "post_id" not in body["results"][0]
    assert body["results"][1]["error"]["code"] == "invalid"


async def test_batch_refuses_an_idempotency_key_header(
    client: httpx.AsyncClient, submit_key: str
) -> None:
    headers = {**auth(submit_key), "Idempotency-Key": "x"}

    response = await client.post("/v1/posts:batch", json={"posts": [post_body()]}, headers=headers)

    assert response.status_code == 400
    assert "set external_id on each post" in detail(response)


# --- reading a post's trail ---------------------------------------------------------------------


async def test_get_post_returns_status_and_verdicts(
    client: httpx.AsyncClient, engine: Engine, read_key: str
) -> None:
    submitted = PostSubmitted(post_id="p-1", text="buy cheap pills", author_id="u-9")
    verdict = ModerationVerdict(
        post_id="p-1",
        decision=Decision.REMOVE,
        scores={**dict.fromkeys(CATEGORIES, 0.01), Category.SPAM: 0.97},
        primary_category=Category.SPAM,
        confidence=0.97,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=4.2,
    )
    with Session(engine) as session:
        crud.record_events(session, events=[submitted, verdict])

    response = await client.get("/v1/posts/p-1", headers=auth(read_key))

    assert response.status_code == 200, response.text
    trail = response.json()
    assert trail["post_id"] == "p-1" and trail["status"] == "removed"
    assert trail["text"] == "buy cheap pills" and trail["author_id"] == "u-9"
    [only] = trail["verdicts"]
    assert (only["decision"], only["primary_category"], only["stage"]) == (
        "remove",
        "spam",
        "model",
    )
    assert trail["reviews"] == [] and trail["decisions"] == []


async def test_get_unknown_post_is_404(client: httpx.AsyncClient, read_key: str) -> None:
    response = await client.get("/v1/posts/nope", headers=auth(read_key))

    assert response.status_code == 404
    assert "post 'nope' not found" in detail(response)


# --- probes, metrics, lifespan ------------------------------------------------------------------


async def test_health_ready_and_metrics(
    client: httpx.AsyncClient,
    internal_client: httpx.AsyncClient,
    publisher: InMemoryPublisher,
    submit_key: str,
) -> None:
    await client.post(
        "/v1/posts:batch", json={"posts": [post_body()] * 3}, headers=auth(submit_key)
    )

    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await internal_client.get("/healthz")).json() == {"status": "ok"}
    ready = await internal_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"kafka": "ok", "database": "ok"}
    metrics = (await internal_client.get("/metrics")).text
    assert 'moderation_api_posts_ingested_total{endpoint="batch"} 3.0' in metrics
    assert "moderation_api_batch_size_bucket" in metrics
    assert "moderation_api_publish_latency_seconds_bucket" in metrics

    publisher.available = False
    not_ready = await internal_client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["failing"] == ["kafka"]
    assert "simulated outage" in not_ready.json()["checks"]["kafka"]


async def test_the_public_port_has_no_readiness_detail_and_no_metrics(
    client: httpx.AsyncClient, publisher: InMemoryPublisher
) -> None:
    """Issue 11, finding 8: /readyz (live round trips, internal error text) and /metrics were
    served on the public port; they are on the internal listener only."""
    publisher.available = False

    for path in ("/readyz", "/metrics"):
        response = await client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "simulated outage" not in response.text
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    document = (await client.get("/openapi.json")).json()
    assert {"/readyz", "/metrics"}.isdisjoint(document["paths"])


async def test_the_internal_listener_is_not_ready_before_the_lifespan(app: FastAPI) -> None:
    from moderation.services.api.internal import create_internal_app

    transport = httpx.ASGITransport(app=create_internal_app(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://internal") as internal:
        starting = await internal.get("/readyz")
        assert (starting.status_code, starting.json()) == (503, {"status": "starting"})
        assert (await internal.get("/metrics")).status_code == 200


async def test_lifespan_starts_and_closes_the_publisher_once(
    app: FastAPI, publisher: InMemoryPublisher
) -> None:
    async with app.router.lifespan_context(app):
        assert (publisher.started, publisher.closed) == (1, 0)
    assert (publisher.started, publisher.closed) == (1, 1)


# --- the api-keys CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("MODERATION_DB__URL_OVERRIDE", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_cli_creates_a_key_printed_once(cli_settings: Settings) -> None:
    result = CliRunner().invoke(
        api_keys_cli, ["create", "--name", "forum", "--scopes", "submit,read"]
    )

    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("mod_")
    engine = make_engine(cli_settings)
    try:
        with Session(engine) as session:
            api_key = crud.authenticate_api_key(session, key=key)
    finally:
        engine.dispose()
    assert api_key is not None
    assert api_key.name == "forum" and sorted(api_key.scopes) == ["read", "submit"]


def test_cli_refuses_an_unknown_scope(cli_settings: Settings) -> None:
    result = CliRunner().invoke(api_keys_cli, ["create", "--name", "x", "--scopes", "root"])

    assert result.exit_code == 2
    assert "unknown scope" in result.stderr


# --- the load generator, against the app served by uvicorn ------------------------------------


async def test_measure_ingest_counts_accepted_posts_over_real_http(
    app: FastAPI, publisher: InMemoryPublisher, submit_key: str
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
                await asyncio.sleep(0.01)
        report = await measure_ingest(
            f"http://127.0.0.1:{port}",
            submit_key,
            single_requests=50,
            batch_posts=250,
            concurrency=4,
            batch_size=100,
        )
    finally:
        server.should_exit = True
        await serving
        listener.close()

    assert report["single"]["statuses"] == {"202": 50}
    assert report["single"]["posts_accepted"] == 50
    assert report["batch"]["requests"] == 3
    assert report["batch"]["posts_accepted"] == 250
    assert report["batch"]["posts_per_second"] > 0
    assert len(publisher.records) == 300
