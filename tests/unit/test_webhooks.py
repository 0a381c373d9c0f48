"""Outbound webhooks: signatures, target checks (SSRF), backoff, and the `/v1/webhooks` API.

The delivery loop and the consumer are in test_webhook_dispatcher.py; the whole path against
the real Kafka and PostgreSQL in tests/integration/test_webhooks_real.py.
"""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from standardwebhooks import Webhook, WebhookVerificationError

from moderation.db import crud
from moderation.db.models import AuditLog, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from moderation.events import utc_now
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.webhooks.delivery import backoff_bound, payload_body, retry_delay
from moderation.settings import Settings, WebhookSettings
from moderation.webhooks import (
    EVENT_TYPES,
    TargetRefused,
    new_secret,
    parse_target,
    refusal,
    resolve_target,
    signature_headers,
)

PUBLIC_IP = "93.184.216.34"
PUBLIC_URL = f"https://{PUBLIC_IP}/hooks/moderation"


# --- signatures ----------------------------------------------------------------------------


def test_a_signed_delivery_verifies_with_the_standard_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = payload_body({"type": "post.verdict", "data": {"post_id": "p1", "text": "héllo"}})
    headers = signature_headers(
        delivery_id="msg_1", body=body, signing_secrets=[secret], at=utc_now()
    )
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {
        "type": "post.verdict",
        "data": {"post_id": "p1", "text": "héllo"},
    }
    # Another secret, another body, another id: refused.
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"p1", b"p2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers | {"webhook-id": "msg_2"})


def test_a_replayed_signature_is_refused_by_its_timestamp() -> None:
    secret = new_secret()
    body = b'{"type":"post.verdict"}'
    old = utc_now() - timedelta(minutes=10)
    replayed = signature_headers(delivery_id="msg_1", body=body, signing_secrets=[secret], at=old)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, replayed)
    # A timestamp moved forward without a new signature does not verify either.
    forged = replayed | {"webhook-timestamp": str(int(utc_now().timestamp()))}
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(body, forged)


def test_during_a_rotation_both_secrets_sign_and_each_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"review.decided"}'
    headers = signature_headers(
        delivery_id="msg_9", body=body, signing_secrets=[new, old], at=utc_now()
    )
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (old, new):
        Webhook(secret).verify(body, headers)
    with pytest.raises(ValueError, match="at least one"):
        signature_headers(delivery_id="m", body=body, signing_secrets=[], at=utc_now())


def test_the_previous_secret_signs_only_until_its_overlap_ends() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    endpoint = WebhookEndpoint(
        id="whk_1",
        url=PUBLIC_URL,
        secret="whsec_new",
        previous_secret="whsec_old",
        previous_secret_expires_at=now + timedelta(hours=24),
    )
    assert crud.signing_secrets(endpoint, at=now) == ["whsec_new", "whsec_old"]
    assert crud.signing_secrets(endpoint, at=now + timedelta(hours=24)) == ["whsec_new"]
    endpoint.previous_secret_expires_at = None
    assert crud.signing_secrets(endpoint, at=now) == ["whsec_new"]


# --- targets (SSRF) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example/x", "must be https"),
        ("http://hooks.example/x", "must be https"),
        ("https://user:pw@hooks.example/x", "credentials"),
        ("https://hooks.example/x#frag", "fragment"),
        ("https:///x", "no host"),
        ("https://hooks.example:99999/x", "not a valid URL"),
        ("https://hooks.example/" + "a" * 2_100, "longer than"),
    ],
)
def test_malformed_or_plain_http_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(TargetRefused, match=message):
        parse_target(url, require_https=True)


def test_http_is_allowed_only_when_https_is_not_required() -> None:
    assert parse_target("http://hooks.example/x", require_https=False).hostname == "hooks.example"
    assert WebhookSettings().https_required("development") is False
    assert WebhookSettings().https_required("production") is True
    assert WebhookSettings(require_https=True).https_required("development") is True


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
    ],
)
async def test_private_and_special_addresses_are_refused(address: str, reason: str) -> None:
    found = refusal(ipaddress.ip_address(address))
    assert found is not None and found.startswith(reason), found
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(TargetRefused, match="refused"):
        await resolve_target(f"https://{host}/hook", require_https=True, allow_private=False)
    # Allowed only by the explicit setting.
    _, addresses = await resolve_target(
        f"https://{host}/hook", require_https=True, allow_private=True
    )
    assert str(addresses[0]) == str(ipaddress.ip_address(address))


async def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    answers = {
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "inside.example": ["10.0.0.7"],
        "mixed.example": ["93.184.216.34", "192.168.0.10"],
        "v6inside.example": ["fd12:3456::1"],
        "nothing.example": [],
    }

    async def resolver(host: str, port: int) -> list[str]:
        assert port == 443
        if host not in answers:
            raise OSError("Name or service not known")
        return answers[host]

    parts, addresses = await resolve_target(
        "https://public.example/h", require_https=True, allow_private=False, resolver=resolver
    )
    assert parts.hostname == "public.example" and len(addresses) == 2
    for host in ("inside.example", "mixed.example", "v6inside.example"):
        with pytest.raises(TargetRefused, match=f"{host}.*resolves to a"):
            await resolve_target(
                f"https://{host}/h", require_https=True, allow_private=False, resolver=resolver
            )
    for host in ("nothing.example", "unknown.example"):
        with pytest.raises(TargetRefused, match="does not resolve"):
            await resolve_target(
                f"https://{host}/h", require_https=True, allow_private=False, resolver=resolver
            )


# --- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_from_its_base_to_its_cap_with_full_jitter() -> None:
    config = WebhookSettings(backoff_base_seconds=5, backoff_cap_seconds=3_600)
    bounds = [backoff_bound(n, config) for n in range(1, 12)]
    assert bounds[:6] == [5, 10, 20, 40, 80, 160]
    assert bounds[-1] == 3_600 and max(bounds) == 3_600
    assert backoff_bound(10_000, config) == 3_600  # no overflow however many attempts
    rng = random.Random(7)
    for attempt in (1, 3, 8, 20):
        delays = [retry_delay(attempt, config, rng) for _ in range(2_000)]
        bound = backoff_bound(attempt, config)
        assert all(0 <= delay <= bound for delay in delays)
        # Full jitter: spread over the whole range, not clustered at the bound.
        assert min(delays) < bound * 0.05 and max(delays) > bound * 0.95


# --- the API -------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return Settings(webhooks=WebhookSettings(require_https=True, max_endpoints_per_tenant=3))


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine)


def make_key(engine: Engine, *scopes: str, tenant: str = "default", name: str = "k") -> Any:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name=name, scopes=list(scopes), tenant=tenant)
    return {"Authorization": f"Bearer {plaintext}"}


def count(engine: Engine, model: type[Any]) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


async def register(
    client: httpx.AsyncClient, key: Any, events: list[str] | None = None
) -> dict[str, Any]:
    answer = await client.post(
        "/v1/webhooks",
        json={"url": PUBLIC_URL, "event_types": events or ["post.verdict"]},
        headers=key,
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_register_shows_the_secret_once_and_lists_without_it(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    key = make_key(engine, "read", tenant="acme")
    created = await register(client, key, ["post.verdict", "review.decided"])
    assert created["id"].startswith("whk_") and created["tenant"] == "acme"
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["post.verdict", "review.decided"]
    listed = (await client.get("/v1/webhooks", headers=key)).json()["items"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert "secret" not in listed[0]
    one = await client.get(f"/v1/webhooks/{created['id']}", headers=key)
    assert one.status_code == 200 and "secret" not in one.json()
    # Audited with the tenant, never with the secret.
    with Session(engine) as session:
        [entry] = session.exec(select(AuditLog).where(AuditLog.action == "webhook.create")).all()
    assert entry.tenant == "acme" and entry.entity_id == created["id"]
    assert created["secret"] not in str(entry.after)


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"url": "http://93.184.216.34/h", "event_types": ["post.verdict"]}, 422, "https"),
        ({"url": "https://127.0.0.1/h", "event_types": ["post.verdict"]}, 422, "loopback"),
        ({"url": "https://10.0.0.5/h", "event_types": ["post.verdict"]}, 422, "private"),
        ({"url": "https://[::1]/h", "event_types": ["post.verdict"]}, 422, "loopback"),
        ({"url": "https://169.254.169.254/", "event_types": ["post.verdict"]}, 422, "link-local"),
        ({"url": "https://localhost:8443/h", "event_types": ["post.verdict"]}, 422, "loopback"),
        ({"url": "not a url", "event_types": ["post.verdict"]}, 422, "https"),
        ({"url": PUBLIC_URL, "event_types": []}, 422, "event_types"),
        ({"url": PUBLIC_URL, "event_types": ["post.deleted"]}, 422, "event_types"),
        ({"url": PUBLIC_URL, "event_types": ["post.verdict", "post.verdict"]}, 422, "once"),
        ({"url": PUBLIC_URL, "event_types": ["post.verdict"], "secret": "x"}, 422, "unknown"),
        ({"event_types": ["post.verdict"]}, 422, "url"),
    ],
)
async def test_bad_registrations_get_a_clear_4xx_and_record_nothing(
    client: httpx.AsyncClient, engine: Engine, body: dict[str, Any], status: int, names: str
) -> None:
    key = make_key(engine, "read")
    answer = await client.post("/v1/webhooks", json=body, headers=key)
    assert answer.status_code == status, answer.text
    assert names in answer.json()["detail"]
    assert count(engine, WebhookEndpoint) == 0
    with Session(engine) as session:
        assert session.exec(select(AuditLog).where(AuditLog.entity == "webhook")).all() == []


async def test_keys_without_read_scope_or_key_are_refused(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    submit_only = make_key(engine, "submit")
    body = {"url": PUBLIC_URL, "event_types": ["post.verdict"]}
    assert (await client.post("/v1/webhooks", json=body, headers=submit_only)).status_code == 403
    assert (await client.post("/v1/webhooks", json=body)).status_code == 401
    assert count(engine, WebhookEndpoint) == 0


async def test_a_tenant_may_register_only_so_many_endpoints(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    key = make_key(engine, "read")
    for _ in range(3):
        await register(client, key)
    answer = await client.post(
        "/v1/webhooks", json={"url": PUBLIC_URL, "event_types": ["post.verdict"]}, headers=key
    )
    assert answer.status_code == 409 and "max_endpoints_per_tenant" in answer.json()["detail"]
    assert count(engine, WebhookEndpoint) == 3
    # Another tenant has its own allowance.
    await register(client, make_key(engine, "read", tenant="other"))


async def test_http_urls_and_private_targets_pass_when_the_settings_allow_them(
    publisher: InMemoryPublisher, engine: Engine
) -> None:
    relaxed = Settings(webhooks=WebhookSettings(require_https=False, allow_private_targets=True))
    app = build_app(relaxed, publisher=publisher, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answer = await client.post(
                "/v1/webhooks",
                json={"url": "http://127.0.0.1:9/hook", "event_types": list(EVENT_TYPES)},
                headers=make_key(engine, "read"),
            )
    assert answer.status_code == 201, answer.text


async def test_other_tenants_get_404_on_every_route(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    owner = make_key(engine, "read", tenant="acme")
    stranger = make_key(engine, "read", "moderate", tenant="globex")
    admin = make_key(engine, "admin", tenant="ops")
    created = await register(client, owner)
    endpoint_id = created["id"]
    delivery_id = insert_deliveries(engine, endpoint_id, 1)[0]
    routes = [
        ("GET", f"/v1/webhooks/{endpoint_id}"),
        ("DELETE", f"/v1/webhooks/{endpoint_id}"),
        ("POST", f"/v1/webhooks/{endpoint_id}/rotate-secret"),
        ("GET", f"/v1/webhooks/{endpoint_id}/deliveries"),
        ("POST", f"/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"),
    ]
    for method, path in routes:
        answer = await client.request(method, path, headers=stranger)
        assert answer.status_code == 404, (method, path, answer.text)
        unknown = path.replace(endpoint_id, "whk_unknown")
        assert (await client.request(method, unknown, headers=owner)).status_code == 404
    assert (await client.get("/v1/webhooks", headers=stranger)).json()["items"] == []
    # Nothing changed for the owner; an admin key sees every tenant.
    assert (await client.get(f"/v1/webhooks/{endpoint_id}", headers=owner)).status_code == 200
    assert (await client.get(f"/v1/webhooks/{endpoint_id}", headers=admin)).status_code == 200
    with Session(engine) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None and endpoint.disabled_at is None
        assert endpoint.secret == created["secret"]


async def test_rotation_returns_a_new_secret_once_and_keeps_the_old_one_signing(
    client: httpx.AsyncClient, engine: Engine, settings: Settings
) -> None:
    key = make_key(engine, "read")
    created = await register(client, key)
    answer = await client.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=key)
    assert answer.status_code == 200, answer.text
    rotated = answer.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    expected = utc_now() + timedelta(hours=settings.webhooks.rotation_overlap_hours)
    assert abs((until - expected).total_seconds()) < 60
    shown = (await client.get(f"/v1/webhooks/{created['id']}", headers=key)).json()
    assert "secret" not in shown and shown["previous_secret_expires_at"] is not None
    with Session(engine) as session:
        endpoint = session.get(WebhookEndpoint, created["id"])
        assert endpoint is not None
        signing = crud.signing_secrets(endpoint, at=utc_now())
    assert signing == [rotated["secret"], created["secret"]]
    body = b'{"type":"post.verdict"}'
    headers = signature_headers(
        delivery_id="msg_r", body=body, signing_secrets=signing, at=utc_now()
    )
    Webhook(created["secret"]).verify(body, headers)  # receivers not switched yet
    Webhook(rotated["secret"]).verify(body, headers)  # receivers already switched


def insert_deliveries(engine: Engine, endpoint_id: str, n: int, *, start: int = 0) -> list[str]:
    now = utc_now()
    with Session(engine) as session:
        crud.insert_webhook_deliveries(
            session,
            deliveries=[
                crud.NewDelivery(
                    endpoint_id=endpoint_id,
                    event_id=f"event-{start + i}",
                    event_type="post.verdict",
                    payload={"type": "post.verdict", "data": {"n": start + i}},
                    created_at=now + timedelta(milliseconds=start + i),
                    expires_at=now + timedelta(hours=24),
                )
                for i in range(n)
            ],
        )
        rows = session.exec(
            select(WebhookDelivery.id, WebhookDelivery.event_id).where(
                WebhookDelivery.endpoint_id == endpoint_id
            )
        ).all()
    by_event = {event_id: delivery_id for delivery_id, event_id in rows}
    return [by_event[f"event-{start + i}"] for i in range(n)]


async def test_the_delivery_log_is_paged_newest_first(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    key = make_key(engine, "read")
    endpoint_id = (await register(client, key))["id"]
    ids = insert_deliveries(engine, endpoint_id, 5)
    # The same events again (a redelivered Kafka batch): nothing new.
    insert_deliveries(engine, endpoint_id, 5)
    page = (
        await client.get(f"/v1/webhooks/{endpoint_id}/deliveries?limit=2&offset=1", headers=key)
    ).json()
    assert page["total"] == 5 and (page["limit"], page["offset"]) == (2, 1)
    assert [item["id"] for item in page["items"]] == [ids[3], ids[2]]
    first = page["items"][0]
    assert first["status"] == "pending" and first["attempts"] == 0
    assert first["payload"] == {"type": "post.verdict", "data": {"n": 3}}
    bad = await client.get(f"/v1/webhooks/{endpoint_id}/deliveries?limit=0", headers=key)
    assert bad.status_code == 422


async def test_redelivery_resets_a_dead_delivery_to_pending_now(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    key = make_key(engine, "read")
    endpoint_id = (await register(client, key))["id"]
    [delivery_id] = insert_deliveries(engine, endpoint_id, 1)
    with Session(engine) as session:
        crud.record_delivery_attempt(
            session,
            delivery_id=delivery_id,
            at=utc_now(),
            succeeded=False,
            status_code=500,
            error="HTTP 500",
            next_attempt_at=None,
        )
    [dead] = (await client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=key)).json()[
        "items"
    ]
    assert (dead["status"], dead["attempts"], dead["last_error"]) == ("dead", 1, "HTTP 500")
    assert dead["next_attempt_at"] is None
    answer = await client.post(
        f"/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver", headers=key
    )
    assert answer.status_code == 200, answer.text
    again = answer.json()
    assert again["id"] == delivery_id  # the same webhook-id: receivers deduplicate
    assert (again["status"], again["attempts"]) == ("pending", 0)
    assert datetime.fromisoformat(again["next_attempt_at"]) <= utc_now()
    assert datetime.fromisoformat(again["expires_at"]) > utc_now() + timedelta(hours=23)
    missing = await client.post(
        f"/v1/webhooks/{endpoint_id}/deliveries/msg_unknown/redeliver", headers=key
    )
    assert missing.status_code == 404


async def test_deleting_an_endpoint_stops_its_deliveries_and_keeps_nothing_visible(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    key = make_key(engine, "read")
    endpoint_id = (await register(client, key))["id"]
    insert_deliveries(engine, endpoint_id, 3)
    assert (await client.delete(f"/v1/webhooks/{endpoint_id}", headers=key)).status_code == 204
    assert (await client.get(f"/v1/webhooks/{endpoint_id}", headers=key)).status_code == 404
    assert (await client.get("/v1/webhooks", headers=key)).json()["items"] == []
    assert (await client.delete(f"/v1/webhooks/{endpoint_id}", headers=key)).status_code == 404
    with Session(engine) as session:
        statuses = session.exec(
            select(WebhookDelivery.status).where(WebhookDelivery.endpoint_id == endpoint_id)
        ).all()
    assert statuses == [DeliveryStatus.DEAD] * 3


def readme_receiver_snippet() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_receiver_verifies_dedupes_and_refuses_replays() -> None:
    secret = new_secret()
    seen: set[str] = set()
    scope: dict[str, Any] = {
        "SECRET": secret,
        "already_seen": seen.__contains__,
        "remember": seen.add,
    }
    exec(readme_receiver_snippet(), scope)  # noqa: S102 - the README's own code
    receive = scope["receive"]
    body = payload_body({"type": "post.verdict", "data": {"post_id": "p1"}})
    headers = signature_headers(
        delivery_id="msg_a", body=body, signing_secrets=[secret], at=utc_now()
    )
    assert receive(body, headers) == {"type": "post.verdict", "data": {"post_id": "p1"}}
    assert receive(body, headers) is None  # the same webhook-id again: deduplicated
    old = signature_headers(
        delivery_id="msg_b", body=body, signing_secrets=[secret], at=utc_now() - timedelta(hours=1)
    )
    assert receive(body, old) is None and "msg_b" not in seen  # replayed late: refused
    forged = signature_headers(
        delivery_id="msg_c", body=body, signing_secrets=[new_secret()], at=utc_now()
    )
    assert receive(body, forged) is None and "msg_c" not in seen


def test_a_runs_isolated_settings_share_no_consumer_group_with_the_stack() -> None:
    """A test or bench run deletes its ACLs afterwards: a group it shared with the stack (the
    dispatcher's `webhooks` once did) would lose its binding for everyone."""
    from moderation.devtools.stack.services import isolated_settings
    from moderation.kafka_auth import acl_grants

    settings = Settings()
    shared_ok = {settings.dapr.app_id, settings.agent_service.app_id}  # kept by delete_acls
    stack = {g for grants in acl_grants(settings).values() for g in grants.groups}
    run = isolated_settings(settings, "run-1")
    mine = {g for grants in acl_grants(run).values() for g in grants.groups}
    assert (stack & mine) - shared_ok == set()
    assert run.webhooks.consumer_group == "run-1-webhooks"
