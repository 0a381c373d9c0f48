"""The API's edge limits: rate limits per key and per client address, body sizes, CORS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.services.api import build_app
from moderation.services.api.images import max_submit_body_bytes
from moderation.services.api.limits import Buckets, TokenBucket, retry_after
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.api.routes.submit_lane import SubmitFastLane
from moderation.settings import ApiSettings, ImageSettings, Settings


def settings_with(**api: Any) -> Settings:
    # Images off: these tests are about the text routes' own limits (with images on, a post's
    # body may hold them: `test_the_submit_limit_grows_by_the_images_a_post_may_carry`).
    return Settings(api=ApiSettings(**api), images=ImageSettings(enabled=False))


def make_key(engine: Engine, *scopes: str, name: str) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name=name, scopes=list(scopes))
    return {"Authorization": f"Bearer {plaintext}"}


def post_body(text: str = "hello") -> dict[str, Any]:
    return {"text": text, "author_id": "u-1"}


AppFactory = Callable[..., FastAPI]


@pytest.fixture(params=["fast-lane", "fastapi-route"])
def make_app(
    request: pytest.FixtureRequest, publisher: InMemoryPublisher, engine: Engine
) -> AppFactory:
    """`make_app(**api_settings)`: the app as served, or without its submit fast lane."""

    def build(**api: Any) -> FastAPI:
        app = build_app(settings_with(**api), publisher=publisher, engine=engine)
        if request.param == "fastapi-route":
            lane: object = SubmitFastLane
            app.user_middleware = [m for m in app.user_middleware if m.cls is not lane]
        return app

    return build


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[FastAPI], Any]]:
    """`await serve(app)`: an HTTP client on the app with its lifespan started."""
    stack: list[Any] = []

    async def start(app: FastAPI) -> httpx.AsyncClient:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        stack.append((lifespan, http))
        return http

    yield start
    for lifespan, http in reversed(stack):
        await http.aclose()
        await lifespan.__aexit__(None, None, None)


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body["detail"], str)
    return body["detail"]


# --- the token bucket ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = Buckets(per_minute=60, burst=3, clock=clock)

    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(1.0)  # one a second: a token in 1 s
    assert buckets.take("other") == 0.0  # every name has its own bucket
    clock.now += 1.0
    assert buckets.take("k") == 0.0
    assert buckets.take("k", 3) == pytest.approx(3.0)  # refused: nothing taken
    clock.now += 3.0
    assert buckets.take("k", 3) == 0.0


def test_bucket_spend_may_empty_it_and_zero_per_minute_is_no_limit() -> None:
    clock = Clock()
    buckets = Buckets(per_minute=60, burst=2, clock=clock)
    buckets.spend("k", 5)
    assert buckets.wait("k") == pytest.approx(1.0)
    assert buckets.wait("never-seen") == 0.0

    unlimited = Buckets(per_minute=0, burst=1, clock=clock)
    assert all(unlimited.take("k", 1_000) == 0.0 for _ in range(100))


def test_full_buckets_are_forgotten_when_there_are_too_many() -> None:
    clock = Clock()
    buckets = Buckets(per_minute=60, burst=1, clock=clock, max_entries=3)
    for name in "abc":
        buckets.take(name)
    clock.now += 10  # all full again
    buckets.take("d")
    assert buckets.take("d") > 0  # d's bucket survived the pruning that made room for it


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert [retry_after(s) for s in (0.001, 0.5, 1.0, 1.2, 59.9)] == [1, 1, 1, 2, 60]
    assert TokenBucket(1, 1, 0, 0).take(1, 0.25) == pytest.approx(0.75)


# --- rate limits through the API ------------------------------------------------------------


async def test_a_key_over_its_post_budget_gets_429_with_retry_after(
    make_app: AppFactory, serve: Any, engine: Engine, publisher: InMemoryPublisher
) -> None:
    http = await serve(make_app(rate_limit_per_minute=60, rate_limit_burst=2, max_batch=2))
    key = make_key(engine, "submit", name="forum")
    other = make_key(engine, "submit", name="another-forum")

    answers = [await http.post("/v1/posts", json=post_body(), headers=key) for _ in range(3)]

    assert [r.status_code for r in answers] == [202, 202, 429]
    refused = answers[2]
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {
        "detail": "API key 'forum' is over its rate limit of posts (60/min, bursts of 2); "
        "retry in 1s"
    }
    assert len(publisher.records) == 2
    # Another key has its own budget.
    assert (await http.post("/v1/posts", json=post_body(), headers=other)).status_code == 202


async def test_a_batch_costs_its_posts(make_app: AppFactory, serve: Any, engine: Engine) -> None:
    http = await serve(make_app(rate_limit_per_minute=60, rate_limit_burst=5, max_batch=5))
    key = make_key(engine, "submit", name="forum")

    four = await http.post("/v1/posts:batch", json={"posts": [post_body()] * 4}, headers=key)
    two = await http.post("/v1/posts:batch", json={"posts": [post_body()] * 2}, headers=key)
    one = await http.post("/v1/posts", json=post_body(), headers=key)

    assert four.status_code == 202
    assert two.status_code == 429  # one post left, two asked for
    assert "rate limit of posts" in detail(two) and two.headers["retry-after"] == "1"
    assert one.status_code == 429  # the refused batch still paid for its request


async def test_the_burst_always_fits_a_full_batch(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    http = await serve(make_app(rate_limit_per_minute=60, rate_limit_burst=1, max_batch=10))
    key = make_key(engine, "submit", name="forum")

    batch = await http.post("/v1/posts:batch", json={"posts": [post_body()] * 10}, headers=key)

    assert batch.status_code == 202, batch.text


async def test_other_requests_have_their_own_budget(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    http = await serve(
        make_app(
            rate_limit_per_minute=60,
            rate_limit_burst=1,
            max_batch=1,
            request_rate_limit_per_minute=60,
            request_rate_limit_burst=2,
        )
    )
    key = make_key(engine, "submit", "read", "moderate", name="all-round")

    reads = [await http.get("/v1/reviews/stats", headers=key) for _ in range(2)]
    submitted = await http.post("/v1/posts", json=post_body(), headers=key)
    over = await http.get("/v1/posts/nope", headers=key)

    assert [r.status_code for r in reads] == [200, 200]
    assert submitted.status_code == 202  # reads did not spend the post budget
    assert over.status_code == 429
    assert "rate limit of requests (60/min, bursts of 2)" in detail(over)


async def test_rejected_keys_are_not_charged_and_limits_can_be_off(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    http = await serve(make_app(rate_limit_per_minute=0, request_rate_limit_per_minute=0))
    key = make_key(engine, "read", name="reader")

    for _ in range(50):
        assert (await http.post("/v1/posts", json=post_body(), headers=key)).status_code == 403
        assert (await http.get("/v1/posts/nope", headers=key)).status_code == 404


async def test_failed_key_checks_are_limited_per_client_but_known_keys_still_work(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    http = await serve(make_app(auth_failure_limit_per_minute=60, auth_failure_burst=3))
    good = make_key(engine, "submit", name="forum")
    assert (await http.post("/v1/posts", json=post_body(), headers=good)).status_code == 202

    guesses = [
        await http.post(
            "/v1/posts", json=post_body(), headers={"Authorization": f"Bearer mod_x_{n}"}
        )
        for n in range(5)
    ]

    assert [r.status_code for r in guesses] == [401, 401, 401, 429, 429]
    assert guesses[3].headers["retry-after"] == "1"
    assert "too many failed API key checks from 127.0.0.1" in detail(guesses[3])
    # The valid key is known (cached): it is not held up by the noise from its address.
    assert (await http.post("/v1/posts", json=post_body(), headers=good)).status_code == 202


def peer(app: FastAPI, host: str) -> httpx.AsyncClient:
    """A client of `app` whose socket address is `host` (start the lifespan with `serve`)."""
    transport = httpx.ASGITransport(app=app, client=(host, 40_000))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def forget_valid_keys(app: FastAPI) -> None:
    """What the key cache's TTL does with time: the next request looks the key up again."""
    app.state.api.key_cache.clear()


async def test_behind_a_trusted_proxy_failures_count_for_the_forwarded_client(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    """Issue 11, finding 6: behind the ingress every client had the proxy's address, so one
    client's bad keys locked everyone out. A trusted proxy's X-Forwarded-For now names the
    client (the right-most entry that is not a trusted proxy)."""
    app = make_app(auth_failure_burst=3, trusted_proxies=["10.0.0.0/8"])
    await serve(app)
    ingress = peer(app, "10.1.2.3")
    good = make_key(engine, "submit", name="forum")
    attacker = {"X-Forwarded-For": "198.51.100.1, 203.0.113.66, 10.0.0.9"}

    guesses = [
        await ingress.post("/v1/posts", json=post_body(), headers=bearer(f"mod_x{n}_y") | attacker)
        for n in range(4)
    ]
    # The spoofable left part is ignored: the client is the address the proxy saw.
    assert [r.status_code for r in guesses] == [401, 401, 401, 429]
    assert "too many failed API key checks from 203.0.113.66" in detail(guesses[3])

    other_client = {"X-Forwarded-For": "192.0.2.7"}
    accepted = await ingress.post("/v1/posts", json=post_body(), headers=good | other_client)
    assert accepted.status_code == 202, accepted.text


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    app = make_app(auth_failure_burst=2)  # no trusted proxies: the default
    await serve(app)
    attacker = peer(app, "198.51.100.1")

    guesses = [
        await attacker.post(
            "/v1/posts",
            json=post_body(),
            headers=bearer(f"mod_x{n}_y") | {"X-Forwarded-For": f"192.0.2.{n}"},
        )
        for n in range(3)
    ]

    assert [r.status_code for r in guesses] == [401, 401, 429]
    assert "from 198.51.100.1" in detail(guesses[2])
    victim = peer(app, "192.0.2.1")
    good = make_key(engine, "submit", name="forum")
    assert (await victim.post("/v1/posts", json=post_body(), headers=good)).status_code == 202


async def test_guessing_one_key_s_secret_is_limited_across_addresses(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    """Finding 6: a key's prefix (`mod_<prefix>_<secret>`) has its own failure budget, so
    spreading guesses of one key's secret over many addresses does not get past it."""
    app = make_app(key_failure_limit_per_minute=60, key_failure_burst=3)
    await serve(app)
    good = make_key(engine, "submit", name="forum")
    prefix = good["Authorization"].split("_")[1]

    guesses = [
        await peer(app, f"203.0.113.{n}").post(
            "/v1/posts", json=post_body(), headers=bearer(f"mod_{prefix}_guess{n}")
        )
        for n in range(5)
    ]

    assert [r.status_code for r in guesses] == [401, 401, 401, 429, 429]
    assert "too many failed checks of this API key" in detail(guesses[3])
    # Other keys' checks from those addresses are not affected.
    other = make_key(engine, "submit", name="other")
    assert (
        await peer(app, "203.0.113.1").post("/v1/posts", json=post_body(), headers=other)
    ).status_code == 202


async def test_a_flood_from_a_shared_address_does_not_lock_out_keys_known_valid(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    """Finding 6: the dashboard's server (or a NAT) is one address for many people; bad keys
    from it must not lock out the moderators whose keys authenticated before."""
    app = make_app(auth_failure_burst=3)
    await serve(app)
    dashboard = peer(app, "10.9.9.9")
    moderator = make_key(engine, "submit", name="moderator")
    assert (await dashboard.post("/v1/posts", json=post_body(), headers=moderator)).is_success

    flood = [
        await dashboard.post("/v1/posts", json=post_body(), headers=bearer(f"mod_r{n}_s"))
        for n in range(6)
    ]
    forget_valid_keys(app)  # the cached lookup ran out: the key is checked again

    assert [r.status_code for r in flood][-1] == 429
    again = await dashboard.post("/v1/posts", json=post_body(), headers=moderator)
    assert again.status_code == 202, again.text


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert ApiSettings(trusted_proxies=[" 10.0.0.0/8", "::1"]).trusted_proxies == [
        "10.0.0.0/8",
        "::1",
    ]
    for bad in ("*", "ingress.local", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="not an IP address or CIDR"):
            ApiSettings(trusted_proxies=[bad])


# --- request bodies ---------------------------------------------------------------------------


async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    make_app: AppFactory, serve: Any, engine: Engine, publisher: InMemoryPublisher
) -> None:
    http = await serve(make_app(max_body_bytes=1_000))
    key = make_key(engine, "submit", name="forum")
    body = json.dumps(post_body("x" * 2_000)).encode()

    response = await http.post(
        "/v1/posts", content=body, headers={**key, "Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json() == {"detail": "request body too large: the limit is 1,000 bytes"}
    assert publisher.records == []


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/posts", json.dumps(post_body("x" * 2_000))),
        ("/v1/posts:batch", json.dumps({"posts": [post_body("x" * 2_000)]})),
        ("/v1/reviews/r-1/decision", json.dumps({"label": "spam", "note": "x" * 2_000})),
        ("/v1/posts/p-1/appeal", json.dumps({"reason": "x" * 2_000})),
    ],
)
async def test_a_chunked_body_is_counted_and_refused_past_the_limit(
    make_app: AppFactory, serve: Any, engine: Engine, path: str, content: str
) -> None:
    http = await serve(make_app(max_body_bytes=1_000, max_batch_body_bytes=1_000))
    key = make_key(engine, "admin", name="root")

    async def chunks() -> AsyncIterator[bytes]:
        data = content.encode()
        for start in range(0, len(data), 300):
            yield data[start : start + 300]

    # No Content-Length: httpx streams it with Transfer-Encoding: chunked.
    response = await http.post(
        path, content=chunks(), headers={**key, "Content-Type": "application/json"}
    )

    assert response.status_code == 413, response.text
    assert detail(response) == "request body too large: the limit is 1,000 bytes"


async def test_a_batch_has_its_own_larger_limit(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    http = await serve(make_app(max_body_bytes=1_000, max_batch_body_bytes=100_000))
    key = make_key(engine, "submit", name="forum")
    posts = {"posts": [post_body("x" * 500) for _ in range(10)]}

    batch = await http.post("/v1/posts:batch", json=posts, headers=key)
    single = await http.post("/v1/posts", json=post_body("x" * 2_000), headers=key)

    assert batch.status_code == 202, batch.text
    assert single.status_code == 413


async def test_the_submit_limit_grows_by_the_images_a_post_may_carry(
    serve: Any, engine: Engine, publisher: InMemoryPublisher
) -> None:
    images = ImageSettings(max_per_post=2, max_bytes=3_000)
    app = build_app(
        Settings(api=ApiSettings(max_body_bytes=1_000), images=images),
        publisher=publisher,
        engine=engine,
    )
    http = await serve(app)
    key = make_key(engine, "submit", name="forum")
    limit = max_submit_body_bytes(1_000, images)
    assert limit == 1_000 + 2 * (4_000 + 64)  # two base64 images of 3,000 bytes, and slack
    too_big = await http.post("/v1/posts", json=post_body("x" * (limit + 10)), headers=key)
    assert too_big.status_code == 413
    assert detail(too_big) == f"request body too large: the limit is {limit:,} bytes"
    # The other routes keep their own limit.
    appeal = await http.post("/v1/posts/p-1/appeal", json={"reason": "x" * 2_000}, headers=key)
    assert appeal.status_code == 413


def test_the_default_batch_limit_fits_the_largest_legal_batch() -> None:
    api = ApiSettings()
    # Every character escaped by the JSON encoder (\uXXXX: 6 bytes), the other fields at length.
    post = {
        "text": "\u00e9" * api.max_text_chars,
        "author_id": "a" * 128,
        "external_id": "e" * 256,
        "metadata": {"lang": "fr"},
    }
    largest = len(json.dumps({"posts": [post] * api.max_batch}, ensure_ascii=True).encode())

    assert largest <= api.max_batch_body_bytes
    assert len(json.dumps(post, ensure_ascii=True).encode()) <= api.max_body_bytes


# --- CORS ----------------------------------------------------------------------------------------


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_cors_is_off_by_default(make_app: AppFactory, serve: Any, engine: Engine) -> None:
    http = await serve(make_app())
    key = make_key(engine, "submit", name="forum")

    answer = await http.options("/v1/posts", headers=preflight("https://evil.example"))
    posted = await http.post(
        "/v1/posts", json=post_body(), headers={**key, "Origin": "https://evil.example"}
    )

    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in posted.headers


async def test_cors_allows_only_the_listed_origins_without_credentials(
    make_app: AppFactory, serve: Any, engine: Engine
) -> None:
    http = await serve(make_app(cors_origins=["https://mod.example"]))
    key = make_key(engine, "submit", name="forum")

    allowed = await http.options("/v1/posts", headers=preflight("https://mod.example"))
    unknown = await http.options("/v1/posts", headers=preflight("https://evil.example"))
    posted = await http.post(
        "/v1/posts", json=post_body(), headers={**key, "Origin": "https://mod.example"}
    )

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://mod.example"
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in unknown.headers
    assert posted.status_code == 202
    assert posted.headers["access-control-allow-origin"] == "https://mod.example"
    assert "retry-after" in posted.headers["access-control-expose-headers"].lower()


# --- the document -----------------------------------------------------------------------------


@pytest.fixture
def document() -> Iterator[dict[str, Any]]:
    yield build_app(Settings()).openapi()


def test_every_v1_operation_documents_429_and_the_error_body(document: dict[str, Any]) -> None:
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in methods.items()
    ]
    assert operations
    for path, method, operation in operations:
        responses = operation["responses"]
        assert "Retry-After" in responses["429"]["headers"], (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
        if "requestBody" in operation:
            assert {"400", "413", "422"} <= set(responses), (method, path)
