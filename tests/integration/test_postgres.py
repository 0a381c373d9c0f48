"""The project's own PostgreSQL cluster, through SQLModel."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest
from dapr.clients import DaprClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import JSON, DateTime, MetaData
from sqlmodel import Field, Session, SQLModel, create_engine, select, text

from moderation.db.roles import DAPR_STATE_ROLE, SERVICE_ROLES
from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.settings import Settings

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


# --- issue 11, finding 3: Dapr's state store has its own role ------------------------------------


def connect_as(
    settings: Settings, role: str, database: str
) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as `role` (the stack gives every role its development password)."""
    db = settings.db
    return psycopg.connect(
        host=db.host,
        port=db.port,
        user=role,
        password=db.password.get_secret_value(),
        dbname=database,
        autocommit=True,
        connect_timeout=5,
    )


def owners(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    """Owner of each database."""
    rows = conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall()
    return {str(name): str(owner) for name, owner in rows}


def test_dapr_role_owns_dapr_state_and_may_create_its_tables(
    postgres: PostgresCluster, settings: Settings, unique: str
) -> None:
    with connect_as(settings, DAPR_STATE_ROLE, settings.db.dapr_state_name) as conn:
        attributes = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
            "rolcanlogin FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert attributes == (False, False, False, False, False, True)
        databases = owners(conn)
        table = sql.Identifier(f"selftest_{unique}")
        conn.execute(sql.SQL("CREATE TABLE {} (key text PRIMARY KEY, value bytea)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('k', 'v')").format(table))
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    assert databases[settings.db.dapr_state_name] == DAPR_STATE_ROLE
    # Only dapr_state changed hands (what REASSIGN OWNED would not have guaranteed).
    assert databases[settings.db.name] == settings.db.user


@pytest.mark.parametrize("table", ["decisions", "api_keys", "model_versions"])
def test_dapr_role_cannot_read_the_application_database(
    postgres: PostgresCluster, settings: Settings, table: str
) -> None:
    with pytest.raises(psycopg.Error) as refused:
        with connect_as(settings, DAPR_STATE_ROLE, settings.db.name) as conn:
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(table)))
    assert "permission denied" in str(refused.value)


def test_the_service_roles_still_connect_to_the_application_database(
    postgres: PostgresCluster, settings: Settings
) -> None:
    """CONNECT is no longer PUBLIC's: the owner and each service role have it by name."""
    for role in (settings.db.user, *SERVICE_ROLES.values()):
        with connect_as(settings, role, settings.db.name) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    with connect_as(settings, settings.db.user, settings.db.name) as conn:
        acl = conn.execute(
            "SELECT datacl::text[] FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert acl is not None and isinstance(acl[0], list)
    # An ACL entry for PUBLIC starts with "=": it may no longer connect ("c").
    assert not any(entry.startswith("=") and "c" in entry.split("/")[0] for entry in acl[0])


def test_an_existing_dapr_state_is_handed_over_object_by_object(
    postgres: PostgresCluster, settings: Settings, unique: str
) -> None:
    """Tables, their sequences, views, functions and schemas the owner created in dapr_state
    (the state store connected as the owner before) end up owned by Dapr's role."""
    schema, table, view = f"selftest_{unique}", f"selftest_{unique}", f"selftest_view_{unique}"
    function = f"selftest_fn_{unique}"
    owner = settings.db.user
    with connect_as(settings, owner, settings.db.dapr_state_name) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, value text)").format(
                sql.Identifier(table)
            )
        )
        conn.execute(
            sql.SQL("CREATE VIEW {} AS SELECT value FROM {}").format(
                sql.Identifier(view), sql.Identifier(table)
            )
        )
        conn.execute(
            sql.SQL("CREATE FUNCTION {}() RETURNS int LANGUAGE sql AS 'SELECT 1'").format(
                sql.Identifier(function)
            )
        )
    try:
        postgres.ensure_dapr_state_database()
        postgres.ensure_dapr_state_database()  # idempotent
        with connect_as(settings, DAPR_STATE_ROLE, settings.db.dapr_state_name) as conn:
            found = conn.execute(
                """
                SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c
                WHERE c.relname IN (%(table)s, %(sequence)s, %(view)s)
                UNION ALL SELECT proname, pg_get_userbyid(proowner) FROM pg_proc
                WHERE proname = %(function)s
                UNION ALL SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace
                WHERE nspname = %(schema)s
                """,
                {
                    "table": table,
                    "sequence": f"{table}_id_seq",
                    "view": view,
                    "function": function,
                    "schema": schema,
                },
            ).fetchall()
            # Its own now: it may write the table and drop everything.
            conn.execute(
                sql.SQL("INSERT INTO {} (value) VALUES ('v')").format(sql.Identifier(table))
            )
        assert len(found) == 5
        assert {row_owner for _, row_owner in found} == {DAPR_STATE_ROLE}
        with connect_as(settings, owner, "postgres") as conn:
            assert owners(conn)[settings.db.name] == owner
    finally:
        with connect_as(settings, owner, settings.db.dapr_state_name) as conn:
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(view)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}").format(sql.Identifier(function)))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(schema)))


def test_daprd_logs_in_to_its_state_store_as_the_dapr_role(
    dapr: DaprRuntime, settings: Settings, unique: str
) -> None:
    secrets = json.loads(dapr.secrets_file().read_text())
    dsn = conninfo_to_dict(secrets["dapr-state-connection-string"])
    assert (dsn["user"], dsn["dbname"]) == (DAPR_STATE_ROLE, settings.db.dapr_state_name)
    with DaprClient(address=settings.dapr.grpc_endpoint) as client:
        client.save_state(settings.dapr.statestore_name, f"role-{unique}", "v")
    # daprd's pooled connections to dapr_state are its role's, and the row is its role's table.
    with connect_as(settings, settings.db.user, settings.db.dapr_state_name) as conn:
        users = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchall()
        row = conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.state'::regclass"
        ).fetchone()
    assert users == [(DAPR_STATE_ROLE,)]
    assert row == (DAPR_STATE_ROLE,)
