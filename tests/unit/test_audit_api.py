"""`/v1/audit` and `/v1/audit.csv` on SQLite: filters, paging, the CSV body, tenant visibility,
and the tenant that claims, decisions and appeals record."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from moderation.actors import LEGACY_MARK
from moderation.db import crud
from moderation.db.engine import upgrade_schema
from moderation.db.models import ApiKey, AuditLog
from moderation.events import ModerationVerdict, PostSubmitted, ReviewRequested, utc_now
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.api.routes.audit import CSV_COLUMNS
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class NoWorkflows:
    async def raise_decision(self, review_id: str, payload: dict[str, Any]) -> None:
        raise AssertionError("no decision is raised in these tests")

    async def close(self) -> None:
        return None


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine, workflows=NoWorkflows())


def make_key(
    engine: Engine,
    *scopes: str,
    name: str,
    tenant: str = "default",
    granted: list[str] | None = None,
) -> tuple[dict[str, str], str]:
    """The key's headers and the actor it is recorded as (`key:<id>`)."""
    with Session(engine) as session:
        plaintext, key = crud.create_api_key(
            session, name=name, scopes=list(scopes), tenant=tenant, granted_tenants=granted
        )
    return {"Authorization": f"Bearer {plaintext}"}, f"key:{key.id}"


def audit(
    engine: Engine,
    *,
    actor: str,
    action: str,
    entity_id: str,
    minutes: int,
    tenant: str | None = "default",
    entity: str = "review",
) -> None:
    with Session(engine) as session:
        crud.append_audit(
            session,
            actor=actor,
            action=action,
            entity=entity,
            entity_id=entity_id,
            before={"status": "pending"},
            after={"status": "claimed", "note": "=HYPERLINK(1)"},
            tenant=tenant,
            at=START + timedelta(minutes=minutes),
        )


@pytest.fixture
def seeded(engine: Engine) -> dict[str, Any]:
    """Five entries of two tenants and one global: alice's three, bob's one, a config change."""
    alice, alice_actor = make_key(engine, "moderate", name="alice")
    _, bob_actor = make_key(engine, "moderate", name="bob", tenant="acme")
    audit(engine, actor=alice_actor, action="review.claim", entity_id="review-a", minutes=0)
    audit(engine, actor=alice_actor, action="review.decide", entity_id="review-a", minutes=5)
    audit(engine, actor=alice_actor, action="review.claim", entity_id="review-b", minutes=10)
    audit(
        engine,
        actor=bob_actor,
        action="review.claim",
        entity_id="review-c",
        minutes=15,
        tenant="acme",
    )
    audit(
        engine,
        actor="admin-cli",
        action="config.set",
        entity="config",
        entity_id="thresholds",
        minutes=20,
        tenant=None,
    )
    admin, _ = make_key(engine, "admin", name="root")
    return {"alice": alice, "alice_actor": alice_actor, "bob_actor": bob_actor, "admin": admin}


async def test_admin_reads_every_entry_newest_first_with_names_and_states(
    client: httpx.AsyncClient, seeded: dict[str, Any]
) -> None:
    response = await client.get("/v1/audit", headers=seeded["admin"])
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == 5
    assert [item["action"] for item in page["items"]] == [
        "config.set",
        "review.claim",
        "review.claim",
        "review.decide",
        "review.claim",
    ]
    newest_review = page["items"][1]
    assert newest_review["actor"] == seeded["bob_actor"]
    assert newest_review["actor_display"] == f"bob ({seeded['bob_actor']})"
    assert newest_review["tenant"] == "acme"
    assert newest_review["before"] == {"status": "pending"}
    assert newest_review["after"]["status"] == "claimed"
    assert page["items"][0]["tenant"] is None
    assert page["items"][0]["actor_display"] == f"admin-cli ({LEGACY_MARK})"


async def test_filters_narrow_the_selection(
    client: httpx.AsyncClient, seeded: dict[str, Any]
) -> None:
    admin = seeded["admin"]

    async def actions(**params: str) -> list[tuple[str, str]]:
        response = await client.get("/v1/audit", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return [(item["action"], item["entity_id"]) for item in response.json()["items"]]

    assert await actions(actor=seeded["alice_actor"]) == [
        ("review.claim", "review-b"),
        ("review.decide", "review-a"),
        ("review.claim", "review-a"),
    ]
    assert await actions(action="review.decide") == [("review.decide", "review-a")]
    assert await actions(entity="config") == [("config.set", "thresholds")]
    assert await actions(entity_id="review-a") == [
        ("review.decide", "review-a"),
        ("review.claim", "review-a"),
    ]
    window = {
        "since": (START + timedelta(minutes=5)).isoformat(),
        "until": (START + timedelta(minutes=15)).isoformat(),
    }
    assert await actions(**window) == [
        ("review.claim", "review-c"),
        ("review.claim", "review-b"),
        ("review.decide", "review-a"),
    ]
    # A time without an offset is UTC.
    assert await actions(since="2026-03-01T12:16:00") == [("config.set", "thresholds")]
    assert await actions(action="review.claim", actor=seeded["alice_actor"]) == [
        ("review.claim", "review-b"),
        ("review.claim", "review-a"),
    ]
    assert await actions(action="no.such.action") == []


async def test_pages_are_newest_first_and_count_every_match(
    client: httpx.AsyncClient, seeded: dict[str, Any]
) -> None:
    first = (await client.get("/v1/audit", params={"limit": 2}, headers=seeded["admin"])).json()
    second = (
        await client.get("/v1/audit", params={"limit": 2, "offset": 2}, headers=seeded["admin"])
    ).json()
    third = (
        await client.get("/v1/audit", params={"limit": 2, "offset": 4}, headers=seeded["admin"])
    ).json()
    assert (first["total"], second["total"], third["total"]) == (5, 5, 5)
    ids = [item["id"] for page in (first, second, third) for item in page["items"]]
    assert len(ids) == len(set(ids)) == 5
    times = [item["at"] for page in (first, second, third) for item in page["items"]]
    assert times == sorted(times, reverse=True)
    assert (second["limit"], second["offset"]) == (2, 2)


async def test_a_key_sees_its_tenants_entries_and_global_ones_only_when_it_sees_all(
    client: httpx.AsyncClient, engine: Engine, seeded: dict[str, Any]
) -> None:
    async def entity_ids(headers: dict[str, str]) -> list[str]:
        response = await client.get("/v1/audit", headers=headers)
        assert response.status_code == 200, response.text
        return [item["entity_id"] for item in response.json()["items"]]

    # A `default` moderator: its tenant's reviews, no global change, nothing of acme.
    assert await entity_ids(seeded["alice"]) == ["review-b", "review-a", "review-a"]
    acme, _ = make_key(engine, "moderate", name="acme-mod", tenant="acme")
    assert await entity_ids(acme) == ["review-c"]
    both, _ = make_key(engine, "moderate", name="both", tenant="acme", granted=["default"])
    assert await entity_ids(both) == ["review-c", "review-b", "review-a", "review-a"]
    every, _ = make_key(engine, "moderate", name="every", granted=["*"])
    assert "thresholds" in await entity_ids(every)
    # The CSV answers the same rows.
    response = await client.get("/v1/audit.csv", headers=acme)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["entity_id"] for row in rows] == ["review-c"]


async def test_the_audit_needs_the_moderate_scope(
    client: httpx.AsyncClient, engine: Engine, seeded: dict[str, Any]
) -> None:
    reader, _ = make_key(engine, "read", "submit", name="reader")
    for path in ("/v1/audit", "/v1/audit.csv"):
        assert (await client.get(path)).status_code == 401
        refused = await client.get(path, headers=reader)
        assert refused.status_code == 403
        assert "moderate" in refused.json()["detail"]


async def test_a_bad_time_or_window_is_a_422_naming_the_field(
    client: httpx.AsyncClient, seeded: dict[str, Any]
) -> None:
    for path in ("/v1/audit", "/v1/audit.csv"):
        response = await client.get(path, params={"since": "yesterday"}, headers=seeded["admin"])
        assert response.status_code == 422, response.text
        body = response.json()
        assert [error["field"] for error in body["errors"]] == ["query since"]
        backwards = await client.get(
            path,
            params={"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"},
            headers=seeded["admin"],
        )
        assert backwards.status_code == 422
        assert "since is after until" in backwards.json()["detail"]
        assert backwards.json()["errors"][0]["field"] == "query since"
    too_many = await client.get("/v1/audit", params={"limit": 10_000}, headers=seeded["admin"])
    assert too_many.status_code == 422


async def test_the_csv_has_a_header_every_match_and_no_formula(
    client: httpx.AsyncClient, seeded: dict[str, Any]
) -> None:
    response = await client.get(
        "/v1/audit.csv", params={"action": "review.claim"}, headers=seeded["admin"]
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "audit.csv" in response.headers["content-disposition"]
    lines = response.text.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["entity_id"] for row in rows] == ["review-c", "review-b", "review-a"]
    first = rows[0]
    assert first["actor_display"] == f"bob ({seeded['bob_actor']})"
    assert first["tenant"] == "acme"
    assert json.loads(first["before"]) == {"status": "pending"}
    # A JSON object starts with `{`: the formula-looking note inside cannot run.
    assert json.loads(first["after"])["note"] == "=HYPERLINK(1)"
    assert datetime.fromisoformat(first["at"]) == START + timedelta(minutes=15)
    limited = await client.get("/v1/audit.csv", params={"limit": 1}, headers=seeded["admin"])
    assert len(list(csv.DictReader(io.StringIO(limited.text)))) == 1


async def test_the_csv_streams_past_one_chunk(
    client: httpx.AsyncClient, engine: Engine, seeded: dict[str, Any]
) -> None:
    with Session(engine) as session:
        for number in range(2_100):
            session.add(
                AuditLog(
                    actor=seeded["alice_actor"],
                    action="review.claim",
                    entity="review",
                    entity_id=f"bulk-{number}",
                    tenant="default",
                )
            )
        session.commit()
    response = await client.get(
        "/v1/audit.csv", params={"entity_id": "bulk-7"}, headers=seeded["alice"]
    )
    assert [row["entity_id"] for row in csv.DictReader(io.StringIO(response.text))] == ["bulk-7"]
    everything = await client.get("/v1/audit.csv", headers=seeded["alice"])
    rows = list(csv.DictReader(io.StringIO(everything.text)))
    assert len(rows) == 2_100 + 3
    assert all(row["actor_display"] == f"alice ({seeded['alice_actor']})" for row in rows)


def model_verdict(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REVIEW,
        scores=dict.fromkeys(CATEGORIES, 0.1),
        primary_category=Category.SPAM,
        confidence=0.5,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=1.0,
    )


def seed_post_review(engine: Engine, post_id: str, tenant: str) -> str:
    submitted = PostSubmitted(post_id=post_id, text="buy now", author_id="a-1", tenant=tenant)
    request = ReviewRequested(post_id=post_id, reason="uncertain", verdict=model_verdict(post_id))
    with Session(engine) as session:
        crud.record_events(session, events=[submitted, request])
    return request.review_id


async def test_claims_and_appeals_record_the_posts_tenant(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    review_id = seed_post_review(engine, "p-acme", "acme")
    moderator, actor = make_key(engine, "moderate", name="acme-mod", tenant="acme")
    with Session(engine) as session:
        crud.claim_review(
            session, review_id=review_id, moderator=actor, now=utc_now(), claim_seconds=60
        )
        appeal = ReviewRequested(
            post_id="p-acme",
            reason="appeal",
            review_id="review-p-acme-2",
            verdict=model_verdict("p-acme"),
        )
        crud.record_appeal(session, event=appeal, actor="key:999")
    with Session(engine) as session:
        entries = session.exec(select(AuditLog).order_by(AuditLog.id)).all()  # type: ignore[arg-type]
    assert [(entry.action, entry.tenant) for entry in entries] == [
        ("review.claim", "acme"),
        ("review.appeal", "acme"),
    ]
    response = await client.get("/v1/audit", headers=moderator)
    assert [item["action"] for item in response.json()["items"]] == [
        "review.appeal",
        "review.claim",
    ]
    other, _ = make_key(engine, "moderate", name="default-mod")
    assert (await client.get("/v1/audit", headers=other)).json()["total"] == 0


def test_the_upgrade_adds_the_tenant_and_backfills_review_entries(engine: Engine) -> None:
    review_id = seed_post_review(engine, "p-old", "acme")
    with Session(engine) as session:
        crud.append_audit(
            session,
            actor="key:1",
            action="review.claim",
            entity="review",
            entity_id=review_id,
            before=None,
            after=None,
        )
        crud.append_audit(
            session,
            actor="cli",
            action="config.set",
            entity="config",
            entity_id="thresholds",
            before=None,
            after=None,
        )
    # An audit table from before issue 15: without the column.
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX IF EXISTS ix_audit_log_tenant"))
        connection.execute(text("ALTER TABLE audit_log DROP COLUMN tenant"))
    upgrade_schema(engine)
    upgrade_schema(engine)  # idempotent
    with Session(engine) as session:
        tenants = {row.action: row.tenant for row in session.exec(select(AuditLog)).all()}
        assert session.exec(select(ApiKey)).all() == []
    assert tenants == {"review.claim": "acme", "config.set": None}
