"""One engine per process, created from settings (PostgreSQL, or SQLite for the embedded demo)."""

from __future__ import annotations

from sqlalchemy import Engine, event
from sqlmodel import SQLModel, create_engine

from moderation.db import models  # noqa: F401 - registers the tables on SQLModel.metadata
from moderation.settings import Settings


def make_engine(settings: Settings, *, url: str | None = None) -> Engine:
    url = url or settings.db.url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        return engine
    return create_engine(
        url,
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.pool_overflow,
        pool_pre_ping=True,
    )


def create_tables(engine: Engine) -> None:
    """Create missing tables (idempotent). Migrations arrive when the schema first changes."""
    SQLModel.metadata.create_all(engine)
