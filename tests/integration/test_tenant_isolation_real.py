"""The tenant-isolation table (`tests/unit/test_tenant_isolation.py`) on the real PostgreSQL.

The same cases, on the read model the stack runs: the tenant filters are SQL (IN subqueries over
`posts.tenant`), and PostgreSQL is where they must hold. Every world has its own tenant names, so
the rows of other tests on the shared database never count. Publishing and the review workflow
stay in-process fakes: these cases are about what a key may read, not about delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import Engine

from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings
from tests.unit.test_tenant_isolation import (
    TENANT_CASES,
    World,
    build_isolation_app,
    build_world,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def world(read_model: Engine, unique: str) -> World:
    return build_world(read_model, InMemoryPublisher(), suffix=unique)


@pytest.fixture
async def client(settings: Settings, world: World) -> AsyncIterator[httpx.AsyncClient]:
    app = build_isolation_app(settings, world)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


def test_the_read_model_is_postgresql(read_model: Engine) -> None:
    assert read_model.dialect.name == "postgresql"


@pytest.mark.parametrize("route", sorted(TENANT_CASES), ids=lambda route: " ".join(route))
async def test_a_key_never_sees_another_tenants_things_on_postgresql(
    route: tuple[str, str], client: httpx.AsyncClient, world: World
) -> None:
    await TENANT_CASES[route].check(client, world)
