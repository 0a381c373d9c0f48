"""API-key administration: `/v1/admin/keys` (list, create, revoke; audited) and the CLI's
`api-keys list` and `api-keys revoke`, on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from moderation.db import crud
from moderation.db.engine import make_engine
from moderation.db.models import ApiKey
from moderation.db.schemas.keys import ScopeName
from moderation.services.api import build_app
from moderation.services.api.cli import app as api_keys_cli
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.api.security import KeyCache, Principal
from moderation.settings import Settings, get_settings
from tests import crud_helpers
from tests.unit.test_reviews_api import FakeWorkflows


@pytest.fixture
def app(settings: Settings, publisher: InMemoryPublisher, engine: Engine) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine, workflows=FakeWorkflows())


def make_key(engine: Engine, *scopes: str, name: str, tenant: str = "default") -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name=name, scopes=scopes, tenant=tenant)
    return {"Authorization": f"Bearer {plaintext}"}


def key_id_of(engine: Engine, name: str) -> int:
    with Session(engine) as session:
        [key] = [k for k in crud.list_api_keys(session) if k.name == name]
    assert key.id is not None
    return key.id


@pytest.fixture
def admin(engine: Engine) -> dict[str, str]:
    return make_key(engine, "admin", name="root")


AuditRow = tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]


def audit_entries(engine: Engine, key_id: int) -> list[AuditRow]:
    with Session(engine) as session:
        entries = crud_helpers.list_audit(
            session, entity=crud.AUDIT_ENTITY_API_KEY, entity_id=str(key_id)
        )
    return [(e.action, e.actor, e.before, e.after) for e in entries]


def test_the_schema_scopes_are_the_stored_scopes() -> None:
    assert set(get_args(ScopeName)) == crud.API_SCOPES


# --- the API -------------------------------------------------------------------------------------


async def test_an_admin_creates_a_tenant_key_shown_once_and_audited(
    client: httpx.AsyncClient, engine: Engine, admin: dict[str, str]
) -> None:
    body = {
        "name": "forum-b moderators",
        "scopes": ["moderate"],
        "tenant": "forum-b",
        "granted_tenants": ["forum-c"],
    }
    created = await client.post("/v1/admin/keys", json=body, headers=admin)

    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    answer = created.json()
    plaintext, key = answer["api_key"], answer["key"]
    assert plaintext.startswith(f"mod_{key['prefix']}_")
    assert (key["name"], key["scopes"], key["tenant"], key["granted_tenants"]) == (
        "forum-b moderators",
        ["moderate"],
        "forum-b",
        ["forum-c"],
    )
    assert key["revoked_at"] is None and "key_hash" not in key
    # The key works, with its tenant and grants.
    with Session(engine) as session:
        stored = crud.authenticate_api_key(session, key=plaintext)
    assert stored is not None and stored.tenant == "forum-b"
    # Audited by the admin key, with the key's state and never its secret or hash.
    [(action, actor, before, after)] = audit_entries(engine, key["id"])
    assert (action, actor, before) == ("api_key.create", f"key:{key_id_of(engine, 'root')}", None)
    assert after is not None and after["tenant"] == "forum-b" and after["prefix"] == key["prefix"]
    text = json.dumps(after)
    assert plaintext not in text and stored.key_hash not in text and "key_hash" not in after
    # The list shows it too, without secrets.
    listed = await client.get("/v1/admin/keys", headers=admin)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [item["name"] for item in items] == ["root", "forum-b moderators"]
    assert all("key_hash" not in item for item in items)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["read"], "tenant": "Forum B"}, "tenant"),
        ({"name": "x", "scopes": ["moderate"], "granted_tenants": ["a b"]}, "granted_tenants"),
        ({"name": "", "scopes": ["read"]}, "name"),
    ],
)
async def test_a_bad_scope_tenant_or_name_is_422_naming_it(
    client: httpx.AsyncClient,
    engine: Engine,
    admin: dict[str, str],
    body: dict[str, object],
    field: str,
) -> None:
    answer = await client.post("/v1/admin/keys", json=body, headers=admin)

    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"]
    with Session(engine) as session:
        assert [k.name for k in crud.list_api_keys(session)] == ["root"]  # nothing half-made


async def test_grants_on_a_key_without_moderate_are_422(
    client: httpx.AsyncClient, engine: Engine, admin: dict[str, str]
) -> None:
    body = {"name": "x", "scopes": ["read"], "tenant": "a", "granted_tenants": ["b"]}
    answer = await client.post("/v1/admin/keys", json=body, headers=admin)

    assert answer.status_code == 422, answer.text
    assert "moderate" in answer.json()["detail"]
    with Session(engine) as session:
        assert len(crud.list_api_keys(session)) == 1
        assert crud_helpers.list_audit(session, entity=crud.AUDIT_ENTITY_API_KEY) == []


@pytest.mark.parametrize("scope", ["submit", "read", "moderate", "report"])
async def test_only_admin_keys_administer_keys(
    client: httpx.AsyncClient, engine: Engine, admin: dict[str, str], scope: str
) -> None:
    headers = make_key(engine, scope, name=f"a-{scope}")
    root = key_id_of(engine, "root")

    answers = [
        await client.get("/v1/admin/keys", headers=headers),
        await client.post(
            "/v1/admin/keys", json={"name": "x", "scopes": ["admin"]}, headers=headers
        ),
        await client.post(f"/v1/admin/keys/{root}/revoke", headers=headers),
    ]

    assert [answer.status_code for answer in answers] == [403, 403, 403]
    assert all("admin" in answer.json()["detail"] for answer in answers)
    assert (await client.get("/v1/posts/x", headers=admin)).status_code == 404  # root still works


async def test_a_revoked_key_is_refused_at_once_and_the_revocation_audited(
    client: httpx.AsyncClient, engine: Engine, admin: dict[str, str]
) -> None:
    reader = make_key(engine, "read", name="reader")
    # Used once, so this process has it cached for `CACHE_TTL_SECONDS`.
    assert (await client.get("/v1/posts/nope", headers=reader)).status_code == 404
    key_id = key_id_of(engine, "reader")

    revoked = await client.post(f"/v1/admin/keys/{key_id}/revoke", headers=admin)

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    refused = await client.get("/v1/posts/nope", headers=reader)
    assert refused.status_code == 401, refused.text
    [(action, actor, before, after)] = audit_entries(engine, key_id)
    assert (action, actor) == ("api_key.revoke", f"key:{key_id_of(engine, 'root')}")
    assert before is not None and before["revoked_at"] is None
    assert after is not None and after["revoked_at"] is not None
    # Twice is 409; an unknown key 404; neither is audited.
    again = await client.post(f"/v1/admin/keys/{key_id}/revoke", headers=admin)
    unknown = await client.post("/v1/admin/keys/999999/revoke", headers=admin)
    assert (again.status_code, unknown.status_code) == (409, 404)
    assert "already revoked" in again.json()["detail"]
    assert len(audit_entries(engine, key_id)) == 1


def test_the_key_cache_forgets_only_the_revoked_key() -> None:
    cache = KeyCache()
    one = Principal(key_id=1, name="one", scopes=frozenset({"read"}))
    two = Principal(key_id=2, name="two", scopes=frozenset({"read"}))
    cache.put("d1", one)
    cache.put("d1-again", one)  # the same key presented in another form
    cache.put("d2", two)

    cache.forget_key(1)

    assert cache.get("d1") == (False, None) and cache.get("d1-again") == (False, None)
    assert cache.get("d2") == (True, two)
    cache.forget_key(1)  # nothing left to forget: no error


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("MODERATION_DB__URL_OVERRIDE", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COLUMNS", "250")  # rich lays the table out for this width
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _stored_keys(settings: Settings) -> list[ApiKey]:
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            return crud.list_api_keys(session)
    finally:
        engine.dispose()


def test_cli_lists_keys_with_tenants_and_revokes_one(cli_settings: Settings) -> None:
    runner = CliRunner()
    for args in (
        ["create", "--name", "forum-a", "--scopes", "submit,read", "--tenant", "forum-a"],
        ["create", "--name", "[bold]mods[/bold]", "--scopes", "moderate", "--tenant", "forum-a",
         "--grant-tenants", "forum-b,forum-c"],
    ):  # fmt: skip
        created = runner.invoke(api_keys_cli, args)
        assert created.exit_code == 0, created.output
    first, second = _stored_keys(cli_settings)

    listed = runner.invoke(api_keys_cli, ["list"])

    assert listed.exit_code == 0, listed.output
    out = listed.stdout
    assert "API keys (2)" in out
    assert "forum-b, forum-c" in out and "read, submit" in out and first.prefix in out
    assert "[bold]mods[/bold]" in out  # a name is shown as text, never as markup

    revoked = runner.invoke(api_keys_cli, ["revoke", str(first.id)])
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked API key {first.id}" in revoked.stderr
    [after, _] = _stored_keys(cli_settings)
    assert after.revoked_at is not None
    again = runner.invoke(api_keys_cli, ["revoke", str(first.id)])
    unknown = runner.invoke(api_keys_cli, ["revoke", "4242"])
    assert (again.exit_code, unknown.exit_code) == (1, 1)
    assert "already revoked" in again.stderr and "no API key with id 4242" in unknown.stderr
    relisted = runner.invoke(api_keys_cli, ["list"]).stdout
    assert relisted.count(" UTC") == 3  # two created, one revoked
    # Created and revoked from the CLI, audited as `cli`.
    engine = make_engine(cli_settings)
    try:
        with Session(engine) as session:
            entries = crud_helpers.list_audit(session, entity=crud.AUDIT_ENTITY_API_KEY)
    finally:
        engine.dispose()
    assert [(e.action, e.actor, e.entity_id) for e in entries] == [
        ("api_key.create", "cli", str(first.id)),
        ("api_key.create", "cli", str(second.id)),
        ("api_key.revoke", "cli", str(first.id)),
    ]


def test_cli_refuses_grants_on_a_key_without_moderate(cli_settings: Settings) -> None:
    result = CliRunner().invoke(
        api_keys_cli, ["create", "--name", "x", "--scopes", "read", "--grant-tenants", "b"]
    )

    assert result.exit_code == 2
    assert "moderate" in result.stderr
    assert _stored_keys(cli_settings) == []
