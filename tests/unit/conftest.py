"""Fixtures shared by the API tests: settings, a SQLite engine, the in-memory publisher, and an
HTTP client on the test module's own `app` fixture (with the app's lifespan started)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from moderation.db.engine import create_tables, make_engine
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def engine(tmp_path: Path, settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings, url=f"sqlite:///{tmp_path / 'api.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


@pytest.fixture
def internal_client(app: FastAPI, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """An HTTP client on the app's internal listener (readiness, metrics), lifespan started."""
    from moderation.services.api.internal import create_internal_app

    transport = httpx.ASGITransport(app=create_internal_app(app))
    return httpx.AsyncClient(transport=transport, base_url="http://api-internal")
