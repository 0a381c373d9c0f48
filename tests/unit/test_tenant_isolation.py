"""Tenant isolation over every `/v1` route, table-driven.

`TENANT_CASES` holds one case per route of `build_app(...)` (method and path template). Each case
builds on a fresh `World` (tenant A and tenant B, each with posts, reviews and keys of every
scope), calls its route with tenant A's key for something of tenant B and asserts 404 (or, for
lists and aggregates, that B's items are absent and the counts exclude them), and calls it with
tenant B's own key to show the same thing is there (so no case passes by finding nothing).
Routes that hold no tenant data (the live configuration, API-key administration) say so and
check their scope gate instead.

`test_every_v1_route_has_a_case` fails for a route without a case, so a new route must come with
one; `PENDING_OTHER_HELPERS` only names whose routes are expected to add theirs. The same table
runs on PostgreSQL in `tests/integration/test_tenant_isolation_real.py`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import (
    WorkflowApp,
    WorkflowHistoryPublic,
    WorkflowInstancePublic,
    WorkflowInstancesPublic,
    WorkflowStatus,
)
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewDecided,
    ReviewPriority,
    ReviewRequested,
    utc_now,
)
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.sidecar.history import InstanceNotFound
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.unit.test_reviews_api import FakeWorkflows

SCOPES = ("submit", "read", "moderate", "admin")
# Similar texts: tenant B's decision would be a precedent on tenant A's review if leaked.
CRUISE = "win a free cruise now, click the link"


# --- the world every case starts from ----------------------------------------------------------


class TenantWorkflowHistory:
    """Workflow instances in memory (`deps.WorkflowHistoryDep`), named as the services name them."""

    def __init__(self) -> None:
        self.instances: dict[WorkflowApp, list[WorkflowInstancePublic]] = {
            WorkflowApp.AGENT: [],
            WorkflowApp.REVIEW: [],
        }

    def add(self, app: WorkflowApp, instance_id: str) -> None:
        now = datetime.now(UTC)
        self.instances[app].insert(
            0,
            WorkflowInstancePublic(
                app=app,
                instance_id=instance_id,
                workflow="review" if app is WorkflowApp.REVIEW else "classifier_agent",
                status=WorkflowStatus.RUNNING,
                created_at=now,
                updated_at=now,
            ),
        )

    async def list_instances(self, app: WorkflowApp, *, limit: int) -> WorkflowInstancesPublic:
        items = self.instances[app][:limit]
        return WorkflowInstancesPublic(
            app=app, items=items, scanned=len(self.instances[app]), complete=True
        )

    async def history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic:
        for item in self.instances[app]:
            if item.instance_id == instance_id:
                return WorkflowHistoryPublic(instance=item, steps=[])
        raise InstanceNotFound(instance_id)

    async def close(self) -> None:
        return None


@dataclass
class TenantData:
    """One tenant's keys (by scope) and posts."""

    name: str
    keys: dict[str, dict[str, str]]
    open_post: str  # a post with an open review
    decided_post: str = ""  # a post a moderator decided (tenant B only)

    def key(self, scope: str) -> dict[str, str]:
        return self.keys[scope]

    @property
    def open_review(self) -> str:
        return f"review-{self.open_post}"

    @property
    def agent_instance(self) -> str:
        return f"agent-{self.open_post}-v1"


@dataclass
class World:
    """Tenant A (one open review) and tenant B (one open review, one decided post)."""

    engine: Engine
    publisher: InMemoryPublisher
    history: TenantWorkflowHistory
    a: TenantData
    b: TenantData
    admin: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def _verdict(post_id: str) -> ModerationVerdict:
    return ModerationVerdict(
        post_id=post_id,
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.02), Category.SPAM: 0.55},
        primary_category=Category.SPAM,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=3.0,
    )


def _seed_open(session: Session, post_id: str, tenant: str, text: str) -> None:
    post = PostSubmitted(post_id=post_id, text=text, author_id=f"author-{tenant}", tenant=tenant)
    verdict = _verdict(post_id)
    request = ReviewRequested(
        post_id=post_id, reason="uncertain", priority=ReviewPriority.NORMAL, verdict=verdict
    )
    crud.record_events(session, events=[post, verdict, request])


def _keys(session: Session, tenant: str, suffix: str) -> dict[str, dict[str, str]]:
    keys = {}
    for scope in ("submit", "read", "moderate"):
        plaintext, _ = crud.create_api_key(
            session, name=f"{tenant}-{scope}-{suffix}", scopes=[scope], tenant=tenant
        )
        keys[scope] = {"Authorization": f"Bearer {plaintext}"}
    return keys


def build_world(engine: Engine, publisher: InMemoryPublisher, *, suffix: str = "") -> World:
    """Both tenants' data and keys (names made unique by `suffix` on a shared database)."""
    suffix = suffix or uuid.uuid4().hex[:8]
    tenant_a, tenant_b = f"ta-{suffix}", f"tb-{suffix}"
    history = TenantWorkflowHistory()
    with Session(engine) as session:
        a = TenantData(tenant_a, _keys(session, tenant_a, suffix), f"a-open-{suffix}")
        b = TenantData(
            tenant_b, _keys(session, tenant_b, suffix), f"b-open-{suffix}", f"b-done-{suffix}"
        )
        admin_key, _ = crud.create_api_key(session, name=f"root-{suffix}", scopes=["admin"])
        _seed_open(session, a.open_post, tenant_a, CRUISE + " today")
        _seed_open(session, b.open_post, tenant_b, CRUISE + " please")
        _seed_open(session, b.decided_post, tenant_b, CRUISE)
        crud.record_human_decision(
            session,
            event=ReviewDecided(
                review_id=f"review-{b.decided_post}",
                post_id=b.decided_post,
                label=Category.SPAM,
                decision=Decision.REMOVE,
                moderator_id="key:0",
                overrode=Decision.REVIEW,
                occurred_at=utc_now(),
            ),
        )
    for tenant in (a, b):
        history.add(WorkflowApp.REVIEW, tenant.open_review)
        history.add(WorkflowApp.AGENT, tenant.agent_instance)
    return World(engine, publisher, history, a, b, {"Authorization": f"Bearer {admin_key}"})


def build_isolation_app(settings: Settings, world: World) -> FastAPI:
    return build_app(
        settings,
        publisher=world.publisher,
        engine=world.engine,
        workflows=FakeWorkflows(),
        workflow_history=world.history,
    )


# --- how cases check -----------------------------------------------------------------------------

Check = Callable[[httpx.AsyncClient, World], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    """How one route keeps tenants apart: `check` runs tenant A's and tenant B's calls."""

    check: Check
    why: str


def hidden(
    method: str,
    url: Callable[[World], str],
    scope: str,
    *,
    ok: int = 200,
    body: dict[str, Any] | None = None,
    before_b: Check | None = None,
) -> Check:
    """Tenant A's `scope` key gets 404 for tenant B's thing; tenant B's own key gets `ok`."""

    async def check(client: httpx.AsyncClient, world: World) -> None:
        target = url(world)
        foreign = await client.request(method, target, headers=world.a.key(scope), json=body)
        assert foreign.status_code == 404, (target, foreign.status_code, foreign.text)
        assert CRUISE not in foreign.text
        if before_b is not None:
            await before_b(client, world)
        own = await client.request(method, target, headers=world.b.key(scope), json=body)
        assert own.status_code == ok, (target, own.status_code, own.text)

    return check


async def _b_claims_its_review(client: httpx.AsyncClient, world: World) -> None:
    claimed = await client.post(
        f"/v1/reviews/{world.b.open_review}/claim", headers=world.b.key("moderate")
    )
    assert claimed.status_code == 200, claimed.text


def _published_tenants(world: World) -> dict[str, str]:
    events = [json.loads(value) for _topic, _key, value in world.publisher.records]
    return {event["post_id"]: event["tenant"] for event in events if "tenant" in event}


async def _submit_one(client: httpx.AsyncClient, world: World) -> None:
    """Each key's post is its own tenant's; B's external id gives tenant A nothing of B's."""
    post = {"text": "hello", "author_id": "u-1", "external_id": "shared-external-id"}
    own = await client.post("/v1/posts", json=post, headers=world.b.key("submit"))
    foreign = await client.post("/v1/posts", json=post, headers=world.a.key("submit"))
    assert (own.status_code, foreign.status_code) == (202, 202), (own.text, foreign.text)
    b_post, a_post = own.json()["post_id"], foreign.json()["post_id"]
    assert a_post != b_post and "Idempotent-Replayed" not in foreign.headers
    assert _published_tenants(world) == {b_post: world.b.name, a_post: world.a.name}


async def _submit_batch(client: httpx.AsyncClient, world: World) -> None:
    batch = {"posts": [{"text": "hi", "author_id": "u-1", "external_id": "shared-batch-id"}]}
    own = await client.post("/v1/posts:batch", json=batch, headers=world.b.key("submit"))
    foreign = await client.post("/v1/posts:batch", json=batch, headers=world.a.key("submit"))
    assert (own.status_code, foreign.status_code) == (202, 202), (own.text, foreign.text)
    [b_result], [a_result] = own.json()["results"], foreign.json()["results"]
    assert a_result["post_id"] != b_result["post_id"]
    assert _published_tenants(world) == {
        b_result["post_id"]: world.b.name,
        a_result["post_id"]: world.a.name,
    }


async def _review_queue(client: httpx.AsyncClient, world: World) -> None:
    for tenant in (world.a, world.b):
        page = await client.get("/v1/reviews?limit=200", headers=tenant.key("moderate"))
        assert page.status_code == 200, page.text
        body = page.json()
        assert [item["post_id"] for item in body["items"]] == [tenant.open_post]
        assert body["total"] == 1
    # The decided review is B's too: with its status filter, B sees it and A does not.
    for tenant, expected in ((world.a, 0), (world.b, 1)):
        decided = await client.get("/v1/reviews?status=decided", headers=tenant.key("moderate"))
        assert decided.json()["total"] == expected


async def _review_stats(client: httpx.AsyncClient, world: World) -> None:
    for tenant, actioned in ((world.a, 0), (world.b, 1)):
        stats = await client.get("/v1/reviews/stats", headers=tenant.key("moderate"))
        assert stats.status_code == 200, stats.text
        body = stats.json()
        assert (body["pending"], body["inbound_24h"], body["actioned_24h"]) == (
            1,
            1 + actioned,
            actioned,
        ), body


async def _review_groups(client: httpx.AsyncClient, world: World) -> None:
    # Each tenant has one open review (in the default group): A's count would be 2 if leaked.
    for tenant in (world.a, world.b):
        answer = await client.get("/v1/reviews/groups", headers=tenant.key("moderate"))
        assert answer.status_code == 200, answer.text
        assert [(g["name"], g["open"]) for g in answer.json()["items"]] == [("general", 1)]


async def _claim_next(client: httpx.AsyncClient, world: World) -> None:
    first = await client.post("/v1/reviews/claim-next", headers=world.a.key("moderate"))
    assert first.status_code == 200 and first.json()["post_id"] == world.a.open_post
    # A holds its own review (claiming again extends it); B's open review is not A's to take.
    again = await client.post("/v1/reviews/claim-next", headers=world.a.key("moderate"))
    assert again.status_code == 200 and again.json()["post_id"] == world.a.open_post
    other = await _other_moderator_of_a(world)
    assert (await client.post("/v1/reviews/claim-next", headers=other)).status_code == 204
    own = await client.post("/v1/reviews/claim-next", headers=world.b.key("moderate"))
    assert own.status_code == 200 and own.json()["post_id"] == world.b.open_post


async def _other_moderator_of_a(world: World) -> dict[str, str]:
    with Session(world.engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name="a-moderator-2", scopes=["moderate"], tenant=world.a.name
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def _bulk_decision(client: httpx.AsyncClient, world: World) -> None:
    decision = {"label": "spam", "decision": "remove", "note": "link farm"}
    url, a_key = "/v1/reviews/bulk-decision", world.a.key("moderate")
    author_b = f"author-{world.b.name}"
    listed = await client.post(
        url, json={**decision, "review_ids": [world.b.open_review]}, headers=a_key
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["outcomes"] == [
        {
            "review_id": world.b.open_review,
            "outcome": "skipped",
            "reason": f"review '{world.b.open_review}' not found",
            "event_id": None,
        }
    ]
    by_author = await client.post(url, json={**decision, "author_id": author_b}, headers=a_key)
    assert by_author.json()["outcomes"] == []
    named = {**decision, "author_id": author_b, "tenant": world.b.name}
    assert (await client.post(url, json=named, headers=a_key)).status_code == 404
    own = await client.post(url, json=named, headers=world.b.key("moderate"))
    assert [(o["review_id"], o["outcome"]) for o in own.json()["outcomes"]] == [
        (world.b.open_review, "decided")
    ]


async def _get_review(client: httpx.AsyncClient, world: World) -> None:
    await hidden("GET", lambda w: f"/v1/reviews/{w.b.open_review}", "moderate")(client, world)
    # Precedents come only from the tenants the key sees: B's decision is one for B's review,
    # and never for A's (same text).
    own = await client.get(f"/v1/reviews/{world.b.open_review}", headers=world.b.key("moderate"))
    assert [p["post_id"] for p in own.json()["precedents"]] == [world.b.decided_post]
    mine = await client.get(f"/v1/reviews/{world.a.open_review}", headers=world.a.key("moderate"))
    assert mine.status_code == 200 and mine.json()["precedents"] == []


async def _decisions_csv(client: httpx.AsyncClient, world: World) -> None:
    for tenant, expected in ((world.a, []), (world.b, [world.b.decided_post])):
        answer = await client.get("/v1/decisions.csv", headers=tenant.key("moderate"))
        assert answer.status_code == 200, answer.text
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert [row["post_id"] for row in rows] == expected


async def _metrics_overview(client: httpx.AsyncClient, world: World) -> None:
    for tenant, posts, humans in ((world.a, 1, 0), (world.b, 2, 1)):
        answer = await client.get("/v1/metrics/overview?hours=2", headers=tenant.key("moderate"))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["to_humans"]["posts"] == posts, body["to_humans"]
        assert sum(bucket["posts"] for bucket in body["throughput"]) == posts
        assert sum(row["count"] for row in body["decision_mix"] if row["stage"] == "model") == posts
        assert (
            sum(row["count"] for row in body["decision_mix"] if row["stage"] == "human") == humans
        )
        assert body["agreement_total"]["decisions"] == humans
        assert (body["queue"]["pending"], body["queue"]["actioned_24h"]) == (1, humans)
        assert sum(row["decided"] for row in body["queue"]["moderators"]) == humans


async def _workflows(client: httpx.AsyncClient, world: World) -> None:
    for app in ("review", "agent"):
        for tenant in (world.a, world.b):
            answer = await client.get(f"/v1/workflows?app={app}", headers=tenant.key("moderate"))
            assert answer.status_code == 200, answer.text
            ids = [item["instance_id"] for item in answer.json()["items"]]
            mine = tenant.open_review if app == "review" else tenant.agent_instance
            assert ids == [mine]
        everything = await client.get(f"/v1/workflows?app={app}", headers=world.admin)
        assert len(everything.json()["items"]) == 2


async def _workflow(client: httpx.AsyncClient, world: World) -> None:
    await hidden("GET", lambda w: f"/v1/workflows/review/{w.b.open_review}", "moderate")(
        client, world
    )
    await hidden("GET", lambda w: f"/v1/workflows/agent/{w.b.agent_instance}", "moderate")(
        client, world
    )


async def _config(client: httpx.AsyncClient, world: World) -> None:
    answers = [
        await client.get("/v1/config", headers=tenant.key("moderate"))
        for tenant in (world.a, world.b)
    ]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert (await client.get("/v1/config", headers=world.a.key("read"))).status_code == 403


def admin_only(method: str, url: Callable[[World], str], body: dict[str, Any] | None) -> Check:
    """A platform-wide route: every non-admin key (of any tenant) is refused with 403."""

    async def check(client: httpx.AsyncClient, world: World) -> None:
        for tenant in (world.a, world.b):
            for scope in ("submit", "read", "moderate"):
                answer = await client.request(
                    method, url(world), headers=tenant.key(scope), json=body
                )
                assert answer.status_code == 403, (scope, answer.text)

    return check


async def _admin_list_keys(client: httpx.AsyncClient, world: World) -> None:
    await admin_only("GET", lambda w: "/v1/admin/keys", None)(client, world)
    listed = await client.get("/v1/admin/keys", headers=world.admin)
    tenants = {key["tenant"] for key in listed.json()["items"]}
    assert {world.a.name, world.b.name} <= tenants


async def _admin_create_key(client: httpx.AsyncClient, world: World) -> None:
    body = {"name": "b-reader", "scopes": ["read"], "tenant": world.b.name}
    await admin_only("POST", lambda w: "/v1/admin/keys", body)(client, world)
    created = await client.post("/v1/admin/keys", json=body, headers=world.admin)
    assert created.status_code == 201, created.text
    # The new key is tenant B's: it reads B's post, not A's.
    reader = {"Authorization": f"Bearer {created.json()['api_key']}"}
    own = await client.get(f"/v1/posts/{world.b.open_post}", headers=reader)
    foreign = await client.get(f"/v1/posts/{world.a.open_post}", headers=reader)
    assert (own.status_code, foreign.status_code) == (200, 404)


HASHES = {"category": "violence", "entries": [{"kind": "md5", "hash": "d" * 32}]}


async def _hashlists_list(client: httpx.AsyncClient, world: World) -> None:
    await admin_only("GET", lambda w: "/v1/hashlists", None)(client, world)
    listed = await client.get("/v1/hashlists", headers=world.admin)
    assert listed.status_code == 200, listed.text


async def _hashlists_add(client: httpx.AsyncClient, world: World) -> None:
    url = f"/v1/hashlists/list-{world.a.name}/entries"
    await admin_only("POST", lambda w: url, HASHES)(client, world)
    added = await client.post(url, json=HASHES, headers=world.admin)
    assert added.status_code == 201, added.text


async def _admin_revoke_key(client: httpx.AsyncClient, world: World) -> None:
    key_id = await _key_id(client, world, world.b.name, "moderate")
    url = f"/v1/admin/keys/{key_id}/revoke"
    await admin_only("POST", lambda w: url, None)(client, world)
    revoked = await client.post(url, headers=world.admin)
    assert revoked.status_code == 200, revoked.text


async def _key_id(client: httpx.AsyncClient, world: World, tenant: str, scope: str) -> int:
    listed = (await client.get("/v1/admin/keys", headers=world.admin)).json()["items"]
    [key] = [k for k in listed if k["tenant"] == tenant and k["scopes"] == [scope]]
    return int(key["id"])


async def _put_config(client: httpx.AsyncClient, world: World) -> None:
    # Only the scope gate is exercised: a real write would change the shared configuration.
    await admin_only("PUT", lambda w: "/v1/config/thresholds.remove.spam", {"value": 0.9})(
        client, world
    )


# ----------------------------------------------------------------------------------------------
# THE TABLE: one case per `/v1` route (method, path template). A new route adds its case here.
# ----------------------------------------------------------------------------------------------
# Authors and reports (issue 15, part 2 and 3): B's decided post gets its strike as the recorder
# derives it, so B's author has a standing action.
def _b_author(world: World) -> str:
    """B's author, with the strike and action the recorder derives for B's removed post."""
    from moderation.policy import load_enforcement

    if "b_action" not in world.extra:
        with Session(world.engine) as session:
            crud.apply_enforcement(
                session, post_ids=[world.b.decided_post], policy=load_enforcement(), now=utc_now()
            )
            session.commit()
            rows = crud.get_author(
                session, tenant=world.b.name, author_id=f"author-{world.b.name}", limit=1, offset=0
            )
        assert rows is not None and rows.actions, "B's removed post should give its author a strike"
        world.extra["b_action"] = rows.actions[0].action_id
    return f"author-{world.b.name}"


async def _author(client: httpx.AsyncClient, world: World) -> None:
    url = f"/v1/authors/{_b_author(world)}"
    for query in ("", f"?tenant={world.b.name}"):
        for scope in ("read", "moderate"):
            foreign = await client.get(url + query, headers=world.a.key(scope))
            assert foreign.status_code == 404, (url + query, foreign.status_code, foreign.text)
            assert CRUISE not in foreign.text
    own = await client.get(url, headers=world.b.key("read"))
    assert own.status_code == 200, own.text
    assert [s["post_id"] for s in own.json()["strikes"]] == [world.b.decided_post]


async def _author_appeal(client: httpx.AsyncClient, world: World) -> None:
    author = _b_author(world)
    check = hidden(
        "POST",
        lambda w: f"/v1/authors/{author}/actions/{w.extra['b_action']}/appeal",
        "submit",
        ok=202,
        body={"reason": "it was a joke"},
    )
    await check(client, world)


async def _report(client: httpx.AsyncClient, world: World) -> None:
    keys = {}
    with Session(world.engine) as session:
        for tenant in (world.a, world.b):
            plaintext, _ = crud.create_api_key(
                session, name=f"{tenant.name}-report", scopes=["report"], tenant=tenant.name
            )
            keys[tenant.name] = {"Authorization": f"Bearer {plaintext}"}
    report = {"post_id": world.b.open_post, "reason": "spam", "reporter_id": "user-1"}
    foreign = await client.post("/v1/reports", json=report, headers=keys[world.a.name])
    assert foreign.status_code == 404, foreign.text
    own = await client.post("/v1/reports", json=report, headers=keys[world.b.name])
    assert own.status_code == 201, own.text


# Outbound webhooks (issue 15, part 1): B's endpoint, with one delivery in its log.
def _b_webhook(world: World) -> tuple[str, str]:
    """Tenant B's webhook endpoint and one of its deliveries (created once per world)."""
    if "b_webhook" not in world.extra:
        with Session(world.engine) as session:
            endpoint = crud.create_webhook_endpoint(
                session,
                tenant=world.b.name,
                owner_key_id=None,
                url="https://93.184.216.34/hooks",
                event_types=["post.verdict"],
                secret="whsec_" + "A" * 44,
                actor="test",
            )
            now = utc_now()
            crud.insert_webhook_deliveries(
                session,
                deliveries=[
                    crud.NewDelivery(
                        endpoint_id=endpoint.id,
                        event_id=f"event-{world.b.open_post}",
                        event_type="post.verdict",
                        payload={"type": "post.verdict", "data": {"post_id": world.b.open_post}},
                        created_at=now,
                        expires_at=now,
                    )
                ],
            )
            [delivery], _ = crud.list_webhook_deliveries(
                session, endpoint_id=endpoint.id, limit=1, offset=0
            )
        world.extra["b_webhook"] = (endpoint.id, delivery.id)
    found: tuple[str, str] = world.extra["b_webhook"]
    return found


def _webhook_url(suffix: str = "") -> Callable[[World], str]:
    def url(world: World) -> str:
        endpoint_id, delivery_id = _b_webhook(world)
        return f"/v1/webhooks/{endpoint_id}{suffix.format(delivery_id=delivery_id)}"

    return url


async def _list_webhooks(client: httpx.AsyncClient, world: World) -> None:
    endpoint_id, _ = _b_webhook(world)
    foreign = await client.get("/v1/webhooks", headers=world.a.key("read"))
    own = await client.get("/v1/webhooks", headers=world.b.key("read"))
    assert (foreign.status_code, own.status_code) == (200, 200)
    assert foreign.json()["items"] == []
    assert [item["id"] for item in own.json()["items"]] == [endpoint_id]


async def _register_webhook(client: httpx.AsyncClient, world: World) -> None:
    """An endpoint is the registering key's tenant's: the other tenant never sees it."""
    body = {"url": "https://93.184.216.34/a-hooks", "event_types": ["post.verdict"]}
    created = await client.post("/v1/webhooks", json=body, headers=world.a.key("read"))
    assert created.status_code == 201, created.text
    assert created.json()["tenant"] == world.a.name
    endpoint_id = created.json()["id"]
    for tenant, status in ((world.b, 404), (world.a, 200)):
        answer = await client.get(f"/v1/webhooks/{endpoint_id}", headers=tenant.key("read"))
        assert answer.status_code == status, answer.text
    listed = await client.get("/v1/webhooks", headers=world.b.key("read"))
    assert endpoint_id not in {item["id"] for item in listed.json()["items"]}


# The audit trail (issue 15, part 4): entries about a post's review carry its tenant; global ones
# (live configuration, keys) have none and are read only by keys that see every tenant.
async def _audit_entries(client: httpx.AsyncClient, world: World, path: str) -> None:
    for tenant in (world.a, world.b):
        claimed = await client.post(
            f"/v1/reviews/{tenant.open_review}/claim", headers=tenant.key("moderate")
        )
        assert claimed.status_code == 200, claimed.text
    with Session(world.engine) as session:
        crud.append_audit(
            session,
            actor="admin-cli",
            action="config.set",
            entity="config",
            entity_id=f"thresholds-{world.a.name}",
            before=None,
            after={"value": "0.7"},
        )
    ours = [f"thresholds-{world.a.name}", world.b.open_review, world.a.open_review]

    async def entity_ids(headers: dict[str, str]) -> list[str]:
        answer = await client.get(path, headers=headers)
        assert answer.status_code == 200, answer.text
        if path.endswith(".csv"):
            return [row["entity_id"] for row in csv.DictReader(io.StringIO(answer.text))]
        return [item["entity_id"] for item in answer.json()["items"]]

    assert await entity_ids(world.a.key("moderate")) == [world.a.open_review]
    assert await entity_ids(world.b.key("moderate")) == [world.b.open_review]
    # The admin sees every tenant, and the global entry (a shared database holds others too).
    assert [found for found in await entity_ids(world.admin) if found in ours] == ours


def _audit(path: str) -> Check:
    async def check(client: httpx.AsyncClient, world: World) -> None:
        await _audit_entries(client, world, path)

    return check


# Images (issue 16): an image is served only to a key that sees a post carrying it.
async def _image(client: httpx.AsyncClient, world: World) -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 90)).save(out, format="PNG")
    body = {
        "text": CRUISE,
        "author_id": "b-author",
        "images": [{"data_base64": base64.b64encode(out.getvalue()).decode()}],
    }
    submitted = await client.post("/v1/posts", json=body, headers=world.b.key("submit"))
    assert submitted.status_code == 202, submitted.text
    _topic, _key, value = world.publisher.records[-1]
    event = PostSubmitted.model_validate_json(value)
    with Session(world.engine) as session:
        crud.record_events(session, events=[event])
    url = f"/v1/images/{event.images[0].sha256}"
    foreign = await client.get(url, headers=world.a.key("moderate"))
    assert foreign.status_code == 404, foreign.text
    own = await client.get(url, headers=world.b.key("moderate"))
    assert own.status_code == 200, own.text


TENANT_CASES: dict[tuple[str, str], Case] = {
    ("GET", "/v1/images/{sha256}"): Case(_image, "an image is its posts' tenants'"),
    ("POST", "/v1/posts"): Case(
        _submit_one, "a post is the submitting key's tenant's; external ids are per key"
    ),
    ("POST", "/v1/posts:batch"): Case(
        _submit_batch, "each post is the submitting key's tenant's; external ids are per key"
    ),
    ("GET", "/v1/posts/{post_id}"): Case(
        hidden("GET", lambda w: f"/v1/posts/{w.b.open_post}", "read"), "another tenant's post"
    ),
    ("POST", "/v1/posts/{post_id}/appeal"): Case(
        hidden(
            "POST",
            lambda w: f"/v1/posts/{w.b.decided_post}/appeal",
            "submit",
            ok=202,
            body={"reason": "it was a joke"},
        ),
        "another tenant's post cannot be appealed",
    ),
    ("GET", "/v1/authors/{author_id}"): Case(
        _author, "an author is (tenant, id): another tenant's author does not exist"
    ),
    ("POST", "/v1/authors/{author_id}/actions/{action_id}/appeal"): Case(
        _author_appeal, "another tenant's action cannot be appealed"
    ),
    ("POST", "/v1/reports"): Case(_report, "another tenant's post cannot be reported"),
    ("GET", "/v1/reviews"): Case(_review_queue, "the queue lists and counts own tenants only"),
    ("GET", "/v1/reviews/stats"): Case(_review_stats, "queue numbers count own tenants only"),
    ("GET", "/v1/reviews/groups"): Case(_review_groups, "open reviews per group: own tenants"),
    ("POST", "/v1/reviews/claim-next"): Case(_claim_next, "never claims another tenant's review"),
    ("GET", "/v1/reviews/{review_id}"): Case(
        _get_review, "another tenant's review; precedents only from own tenants"
    ),
    ("POST", "/v1/reviews/{review_id}/claim"): Case(
        hidden("POST", lambda w: f"/v1/reviews/{w.b.open_review}/claim", "moderate"),
        "another tenant's review cannot be claimed",
    ),
    ("POST", "/v1/reviews/bulk-decision"): Case(
        _bulk_decision, "another tenant's reviews and authors are neither listed nor decided"
    ),
    ("POST", "/v1/reviews/{review_id}/decision"): Case(
        hidden(
            "POST",
            lambda w: f"/v1/reviews/{w.b.open_review}/decision",
            "moderate",
            ok=202,
            body={"label": "spam", "decision": "remove", "note": "link farm"},
            before_b=_b_claims_its_review,
        ),
        "another tenant's review cannot be decided",
    ),
    ("GET", "/v1/decisions.csv"): Case(_decisions_csv, "the export holds own tenants' decisions"),
    ("GET", "/v1/metrics/overview"): Case(
        _metrics_overview, "posts, verdicts, decisions and the queue count own tenants only"
    ),
    ("GET", "/v1/config"): Case(_config, "platform-wide: no tenant data, the same for everyone"),
    ("PUT", "/v1/config/{key}"): Case(_put_config, "platform-wide: admin only"),
    ("GET", "/v1/workflows"): Case(_workflows, "instances of other tenants' posts are left out"),
    ("GET", "/v1/workflows/{app}/{instance_id}"): Case(
        _workflow, "an instance of another tenant's post"
    ),
    ("GET", "/v1/admin/keys"): Case(_admin_list_keys, "platform-wide: admin only"),
    ("GET", "/v1/hashlists"): Case(_hashlists_list, "lists protect every tenant: admin only"),
    ("POST", "/v1/hashlists/{name}/entries"): Case(
        _hashlists_add, "lists protect every tenant: admin only"
    ),
    ("POST", "/v1/admin/keys"): Case(_admin_create_key, "platform-wide: admin only"),
    ("POST", "/v1/admin/keys/{key_id}/revoke"): Case(
        _admin_revoke_key, "platform-wide: admin only"
    ),
    ("GET", "/v1/audit"): Case(
        _audit("/v1/audit"), "own tenants' entries; global ones only for all-tenant keys"
    ),
    ("GET", "/v1/audit.csv"): Case(
        _audit("/v1/audit.csv"), "the export holds own tenants' entries only"
    ),
    ("POST", "/v1/webhooks"): Case(_register_webhook, "an endpoint is the registering tenant's"),
    ("GET", "/v1/webhooks"): Case(_list_webhooks, "lists own tenants' endpoints only"),
    ("GET", "/v1/webhooks/{endpoint_id}"): Case(
        hidden("GET", _webhook_url(), "read"), "another tenant's endpoint"
    ),
    ("DELETE", "/v1/webhooks/{endpoint_id}"): Case(
        hidden("DELETE", _webhook_url(), "read", ok=204),
        "another tenant's endpoint cannot be deleted",
    ),
    ("POST", "/v1/webhooks/{endpoint_id}/rotate-secret"): Case(
        hidden("POST", _webhook_url("/rotate-secret"), "read"),
        "another tenant's secret cannot be rotated (nor read)",
    ),
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries"): Case(
        hidden("GET", _webhook_url("/deliveries"), "read"),
        "another tenant's delivery log",
    ),
    ("POST", "/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"): Case(
        hidden("POST", _webhook_url("/deliveries/{delivery_id}/redeliver"), "read"),
        "another tenant's delivery cannot be sent again",
    ),
}

# Path prefixes of routes other helpers own (issue 15). A route under one of them that exists
# without a case in `TENANT_CASES` fails `test_every_v1_route_has_a_case` like any other; this
# only says whose case is missing.
PENDING_OTHER_HELPERS = frozenset({"/v1/authors", "/v1/reports"})


def v1_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path template) the app serves under `/v1`."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/")
        for method in route.methods
    }


def test_every_v1_route_has_a_case() -> None:
    routes = v1_routes(build_app(Settings()))
    missing = sorted(routes - TENANT_CASES.keys())
    pending = [route for route in missing if route[1].startswith(tuple(PENDING_OTHER_HELPERS))]
    unowned = [route for route in missing if route not in pending]
    stale = sorted(TENANT_CASES.keys() - routes)
    assert not (missing or stale), (
        f"routes without a tenant-isolation case: {unowned}; "
        f"routes of other helpers (PENDING_OTHER_HELPERS) still without a case: {pending}; "
        f"cases for routes that do not exist: {stale}"
    )


# --- running the table -------------------------------------------------------------------------


@pytest.fixture
def world(engine: Engine, publisher: InMemoryPublisher) -> World:
    return build_world(engine, publisher)


@pytest.fixture
def app(settings: Settings, world: World) -> FastAPI:
    return build_isolation_app(settings, world)


@pytest.mark.parametrize("route", sorted(TENANT_CASES), ids=lambda route: " ".join(route))
async def test_a_key_never_sees_another_tenants_things(
    route: tuple[str, str], client: httpx.AsyncClient, world: World
) -> None:
    await TENANT_CASES[route].check(client, world)


# --- beyond the table: grants, the MCP server, instance ids --------------------------------------


async def test_a_moderator_sees_the_tenants_granted_to_it(
    client: httpx.AsyncClient, world: World
) -> None:
    with Session(world.engine) as session:
        granted, _ = crud.create_api_key(
            session,
            name="a-and-b",
            scopes=["moderate"],
            tenant=world.a.name,
            granted_tenants=[world.b.name],
        )
        everyone, _ = crud.create_api_key(
            session, name="all", scopes=["moderate"], tenant=world.a.name, granted_tenants=["*"]
        )
        _seed_open(session, f"default-open-{uuid.uuid4().hex[:6]}", "default", "hello")

    async def queue(plaintext: str) -> set[str]:
        headers = {"Authorization": f"Bearer {plaintext}"}
        page = await client.get("/v1/reviews", headers=headers)
        assert page.status_code == 200, page.text
        return {item["post_id"] for item in page.json()["items"]}

    both = {world.a.open_post, world.b.open_post}
    assert await queue(granted) == both
    all_tenants = await queue(everyone)
    assert both < all_tenants and len(all_tenants) == 3
    # A grant does not widen a `read` key: only `moderate` keys work across tenants.
    with pytest.raises(ValueError, match="moderate"):
        with Session(world.engine) as session:
            crud.create_api_key(
                session, name="r", scopes=["read"], tenant=world.a.name, granted_tenants=["*"]
            )


async def test_the_mcp_post_trail_is_the_keys_tenants_only(world: World) -> None:
    from moderation.mcp_client import ToolError, mcp_tools
    from tests.unit.test_mcp_server import URL, served

    async with served(world.engine) as transport:
        for tenant, foreign in ((world.a, world.b), (world.b, world.a)):
            token = world_plaintext(tenant.key("read"))
            async with mcp_tools(URL, token, transport) as tools:
                own = await tools.call("get_post_trail", post_id=tenant.open_post)
                assert own["post_id"] == tenant.open_post
                with pytest.raises(ToolError, match="not found"):
                    await tools.call("get_post_trail", post_id=foreign.open_post)


def world_plaintext(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_instance_ids_name_their_posts_even_with_dashes(engine: Engine) -> None:
    with Session(engine) as session:
        for post_id, tenant in (("p-1", "one"), ("p", "two"), ("q-2-x", "three")):
            crud.record_events(
                session,
                events=[PostSubmitted(post_id=post_id, text="t", author_id="a", tenant=tenant)],
            )
        found = crud.workflow_instance_tenants(
            session,
            instance_ids=[
                "agent-p-1-v1",  # p-1 wins over its prefix p
                "agent-p-v1",
                "review-q-2-x",
                "review-q-2-x-appeal-1",
                "agent-unknown-v1",
                "elsewhere-p-1",
            ],
        )
    assert found == {
        "agent-p-1-v1": "one",
        "agent-p-v1": "two",
        "review-q-2-x": "three",
        "review-q-2-x-appeal-1": "three",
    }
