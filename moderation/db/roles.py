"""One PostgreSQL role per service, each granted only what its code does with each table.

The owner role (`db.user` of the stack and of CNPG's `bootstrap.initdb.owner`, `moderation`)
creates and migrates the schema (`engine.create_tables`); the services log in with their own role:

| role                   | tables and privileges                                                  |
|------------------------|------------------------------------------------------------------------|
| `moderation_worker`    | SELECT model_versions (the registry), posts, verdicts, decisions (the  |
|                        | agent's author history and precedents), hash_list_entries; nothing else|
| `moderation_recorder`  | SELECT, INSERT, UPDATE posts, verdicts, reviews, decisions, strikes,   |
|                        | author_actions, reports                                                |
| `moderation_review`    | SELECT, INSERT, UPDATE reviews, decisions, audit_log, posts; SELECT    |
|                        | verdicts, review_votes                                                 |
| `moderation_api`       | SELECT, INSERT, UPDATE api_keys, idempotency_keys, reviews, decisions, |
|                        | audit_log, posts, webhook_endpoints, webhook_deliveries, reports,      |
|                        | review_votes, hash_list_entries;                                       |
|                        | SELECT verdicts, model_versions, job_runs, strikes, author_actions     |
| `moderation_nightly`   | SELECT, INSERT, UPDATE model_versions, job_runs; SELECT posts,         |
|                        | verdicts, reviews, decisions                                           |
| `moderation_webhooks`  | SELECT, INSERT, UPDATE webhook_deliveries; SELECT webhook_endpoints,   |
|                        | posts (the webhook dispatcher: an event's tenant, its endpoints)       |

No service role has DELETE, TRUNCATE, DDL or ownership: a stolen worker credential can read the
registry but cannot point it at another artifact. A worker whose role may not write the registry
does not register its base model (`registry_watch`); the nightly does. In production the roles
are CNPG managed roles (`k8s/base/postgres.yaml`) and the grants are this module's `grant_sql`,
run by the owner after each schema migration (`python -m moderation.db.roles`).

Dapr's state store (the review service's daprd: workflow and actor state) logs in as
`DAPR_STATE_ROLE`, which owns the `dapr_state` database (state.postgresql creates and migrates
its own tables there) and may not connect to the application database: PostgreSQL lets PUBLIC
connect to every database, so `database_access_sql` keeps CONNECT to the owner and the service
roles.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import psycopg
from psycopg import sql
from sqlalchemy import Engine, Integer
from sqlmodel import SQLModel

from moderation.db import models  # noqa: F401 - registers the tables on SQLModel.metadata
from moderation.settings import DatabaseSettings

READ = ("SELECT",)
WRITE = ("SELECT", "INSERT", "UPDATE")

CONFIG_READER_ROLE = "moderation_config_reader"

SERVICE_GRANTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "moderation_worker": {
        "model_versions": READ,
        "posts": READ,
        "verdicts": READ,
        "decisions": READ,
        # The image stage's hash lists kept in the database.
        "hash_list_entries": READ,
    },
    "moderation_recorder": {
        "posts": WRITE,
        "verdicts": WRITE,
        "reviews": WRITE,
        "decisions": WRITE,
        # The consequences it derives and publishes: strikes, actions, report outcomes.
        "strikes": WRITE,
        "author_actions": WRITE,
        "reports": WRITE,
    },
    "moderation_review": {
        "reviews": WRITE,
        "decisions": WRITE,
        "audit_log": WRITE,
        "posts": WRITE,
        "verdicts": READ,
        # Its reads of a review count the review's votes (double review).
        "review_votes": READ,
    },
    "moderation_api": {
        "moderation_config": WRITE,
        "api_keys": WRITE,
        "idempotency_keys": WRITE,
        "reviews": WRITE,
        "decisions": WRITE,
        "audit_log": WRITE,
        "posts": WRITE,
        "verdicts": READ,
        "model_versions": READ,
        "job_runs": READ,
        "webhook_endpoints": WRITE,
        "webhook_deliveries": WRITE,
        "reports": WRITE,
        "strikes": READ,
        "author_actions": READ,
        "review_votes": WRITE,
        "hash_list_entries": WRITE,
    },
    "moderation_nightly": {
        "model_versions": WRITE,
        "job_runs": WRITE,
        "posts": READ,
        "verdicts": READ,
        "reviews": READ,
        "decisions": READ,
    },
    # The webhook dispatcher: reads endpoints and posts' tenants, writes its deliveries.
    "moderation_webhooks": {
        "webhook_deliveries": WRITE,
        "webhook_endpoints": READ,
        "posts": READ,
    },
    # Dapr's configuration store component: reads the live configuration, nothing else.
    CONFIG_READER_ROLE: {"moderation_config": READ},
}
SERVICE_ROLES = {
    "worker": "moderation_worker",
    # The agent service reads what the worker's agent read (precedents, author history).
    "agent": "moderation_worker",
    # The MCP server is another face of the API: the same keys, the same read model.
    "mcp": "moderation_api",
    "recorder": "moderation_recorder",
    "review": "moderation_review",
    "api": "moderation_api",
    "nightly": "moderation_nightly",
    "webhooks": "moderation_webhooks",
}
# Owns database `dapr_state` and nothing in the application database; LOGIN, no other attribute.
DAPR_STATE_ROLE = "moderation_dapr"


def grant_sql() -> list[sql.Composed]:
    """Statements that reset every service role's privileges to `SERVICE_GRANTS` (idempotent).

    Run by the owner in each application database, after the tables exist. An INSERT needs the
    table's id sequence too (USAGE); no role gets anything on a table not listed.
    """
    statements: list[sql.Composed] = []
    for role, tables in SERVICE_GRANTS.items():
        who = sql.Identifier(role)
        statements += [
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(who),
            sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(who),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who),
        ]
        for table, privileges in tables.items():
            statements.append(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(table), who
                )
            )
            if "INSERT" in privileges and _has_serial_id(table):
                # PostgreSQL's name for a SERIAL column's sequence: `<table>_id_seq`.
                sequence = sql.Identifier(f"{table}_id_seq")
                statements.append(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence, who))
    return statements


def database_access_sql(database: str) -> list[sql.Composed]:
    """Statements that let only the owner and the service roles connect to `database`.

    PostgreSQL grants CONNECT on every database to PUBLIC: without this, `DAPR_STATE_ROLE` (or
    any role created later) could log in to the application database and read what PUBLIC may.
    Run by the owner (`CURRENT_USER`), in any database; idempotent.
    """
    name = sql.Identifier(database)
    return [
        sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(name),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO CURRENT_USER").format(name),
        *(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(name, sql.Identifier(role))
            for role in SERVICE_GRANTS
        ),
    ]


def _has_serial_id(table: str) -> bool:
    column = SQLModel.metadata.tables[table].c.get("id")
    return (
        column is not None
        and column.primary_key
        and isinstance(column.type, Integer)
        and column.autoincrement in (True, "auto")
    )


def ensure_roles(connection: psycopg.Connection[tuple[object, ...]], password: str) -> None:
    """Create the service roles and `DAPR_STATE_ROLE` where they do not exist (LOGIN, no other
    attribute) and set `password`.

    The local stack gives them its development password; production manages them with CNPG.
    """
    for role in (*SERVICE_GRANTS, DAPR_STATE_ROLE):
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        statement = "ALTER ROLE {} WITH LOGIN PASSWORD {}"
        if exists.fetchone() is None:
            statement = "CREATE ROLE {} WITH LOGIN PASSWORD {}"
        connection.execute(sql.SQL(statement).format(sql.Identifier(role), sql.Literal(password)))


def apply_grants(engine: Engine) -> None:
    """Reset the service roles' privileges in the database of `engine`, and who may connect to
    it (run as the owner)."""
    with engine.begin() as connection:
        # psycopg itself: no parameter interpolation to get in the way of the statements.
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        row = driver.execute("SELECT current_database()").fetchone()
        assert row is not None
        for statement in database_access_sql(str(row[0])) + grant_sql():
            driver.execute(statement)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the grants as SQL: production runs them as the owner after each migration.

    `python -m moderation.db.roles [database]` (default: the settings' default database name).
    """
    args = sys.argv[1:] if argv is None else argv
    database = args[0] if args else DatabaseSettings().name
    for statement in database_access_sql(database) + grant_sql():
        print(statement.as_string() + ";")  # noqa: T201 - the output is the SQL


if __name__ == "__main__":
    main()
