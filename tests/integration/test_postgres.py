"""The project's own PostgreSQL cluster, through SQLModel."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import JSON, DateTime, MetaData
from sqlmodel import Field, Session, SQLModel, create_engine, select, text

from moderation.settings import Settings
from moderation.stack.postgres import PostgresCluster

pytestmark = pytest.mark.integration

# A private metadata so this throwaway table never joins the application's tables.
selftest_metadata = MetaData()


class StackSelfTest(SQLModel, table=True):
    __tablename__ = "stack_selftest"
    metadata = selftest_metadata

    id: int | None = Field(default=None, primary_key=True)
    marker: str = Field(index=True)
    payload: dict[str, object] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(sa_type=DateTime(timezone=True))


def test_sqlmodel_round_trip(postgres: PostgresCluster, settings: Settings, unique: str) -> None:
    engine = create_engine(settings.db.url)
    selftest_metadata.create_all(engine)
    created = datetime.now(UTC)
    try:
        with Session(engine) as session:
            session.add(
                StackSelfTest(marker=unique, payload={"ok": True, "n": 3}, created_at=created)
            )
            session.commit()
        with Session(engine) as session:
            row = session.exec(select(StackSelfTest).where(StackSelfTest.marker == unique)).one()
            server = session.exec(text("SELECT current_setting('server_version_num')")).one()  # type: ignore[call-overload]
        assert row.payload == {"ok": True, "n": 3}
        assert row.created_at == created
        assert int(server[0]) >= 150000
        assert engine.url.port == settings.db.port
    finally:
        selftest_metadata.drop_all(engine)
        engine.dispose()
