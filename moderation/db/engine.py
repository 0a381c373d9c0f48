"""One engine per process, created from settings (PostgreSQL, or SQLite for the embedded demo)."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, event, func, inspect, select, text
from sqlmodel import SQLModel, create_engine

from moderation.db import models  # noqa: F401 - registers the tables on SQLModel.metadata
from moderation.events import DEFAULT_TENANT
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
        connect_args=connect_args(settings),
    )


def connect_args(settings: Settings) -> dict[str, str | int]:
    """psycopg's connection arguments: the timeout and TLS (`db.sslmode`, `db.sslrootcert`)."""
    # An unreachable host (not one that refuses) would otherwise stall for the OS's timeout.
    args: dict[str, str | int] = {"connect_timeout": 5, "sslmode": settings.db.sslmode}
    if settings.db.sslrootcert:
        args["sslrootcert"] = settings.db.sslrootcert
    return args


def ping(engine: Engine) -> bool:
    """Really ask the database (`SELECT 1`); blocking, so services run it in a thread."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return True


def create_tables(engine: Engine) -> None:
    """Create missing tables (idempotent), after upgrading tables of an older schema in place."""
    upgrade_schema(engine)
    SQLModel.metadata.create_all(engine)
    ensure_config_trigger(engine)


CONFIG_CHANNEL = "moderation_config"
# What Dapr's configuration.postgresql component expects on its channel: the changed row in
# "data" (its key, value, version and metadata).
_CONFIG_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION moderation_config_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CONFIG_CHANNEL}', json_build_object(
        'table', TG_TABLE_NAME,
        'action', TG_OP,
        'data', row_to_json(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END)
    )::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
_CONFIG_TRIGGER = """
CREATE TRIGGER moderation_config_changed
AFTER INSERT OR UPDATE OR DELETE ON moderation_config
FOR EACH ROW EXECUTE FUNCTION moderation_config_notify()
"""


def ensure_config_trigger(engine: Engine) -> None:
    """The trigger that tells Dapr's configuration store of every change (PostgreSQL only).

    Created by whoever creates the tables (the owner); a service role that finds it missing
    and may not create it leaves it to the owner's run.
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        connection.execute(select(func.pg_advisory_xact_lock(_UPGRADE_LOCK_KEY)))
        exists = connection.execute(
            text("SELECT 1 FROM pg_trigger WHERE tgname = 'moderation_config_changed'")
        ).first()
        owner = connection.execute(
            text(
                "SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables "
                "WHERE tablename = 'moderation_config'"
            )
        ).scalar()
        if exists is None and owner:
            connection.execute(text(_CONFIG_NOTIFY_FUNCTION))
            connection.execute(text(_CONFIG_TRIGGER))


# Names "the schema upgrade" among PostgreSQL advisory locks: one process upgrades at a time.
_UPGRADE_LOCK_KEY = 0x6D6F645F7570  # "mod_up"


def upgrade_schema(engine: Engine) -> None:
    """Bring tables created by an earlier release to the current schema (idempotent).

    `create_all` creates missing tables but never alters existing ones, and the stack's
    PostgreSQL keeps its data between runs. Each step checks whether it is needed, so this is
    cheap on an up-to-date database and safe when several services start at once.

    1. Review ids (issue 5): `reviews` gains `review_id` (unique; `review-<post_id>` for
       existing rows), `appeal_of`, `escalated_at`, `decided_at`, `decided_by`, and `post_id`
       is no longer unique (appeals add reviews of the same post); `decisions` gains
       `review_id` and `overrode`.
    2. Artifact digests (issue 11): `model_versions` gains `artifact_sha256`; rows registered
       before have none, so loaders refuse them until a digest is registered (the nightly
       replaces such a champion by the base model).
    3. Live configuration (issue 14): `verdicts` gains `config_version`.
    4. Tenants (issue 15): `posts` and `api_keys` gain `tenant` (existing rows: `default`),
       `api_keys` gains `granted_tenants`.
    5. The audit page (issue 15): `audit_log` gains `tenant` (nullable); entries about reviews
       take their post's tenant, the others (configuration, keys) stay global.
    6. Moderator groups (issue 15): `api_keys` gains `moderator_groups` (existing keys: `[]`,
       every group).
    7. Images (issue 16): `posts` gains `images` (existing posts: `[]`).
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_UPGRADE_LOCK_KEY)))
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        if "reviews" in tables and not _has_column(connection, "reviews", "review_id"):
            _add_review_ids(connection)
        if "decisions" in tables and not _has_column(connection, "decisions", "review_id"):
            _add_decision_review_ids(connection)
        if "verdicts" in tables and not _has_column(connection, "verdicts", "config_version"):
            kind = _column_type(connection, "verdicts", "config_version")
            connection.execute(text(f"ALTER TABLE verdicts ADD COLUMN config_version {kind}"))
        if "model_versions" in tables and not _has_column(
            connection, "model_versions", "artifact_sha256"
        ):
            kind = _column_type(connection, "model_versions", "artifact_sha256")
            connection.execute(
                text(f"ALTER TABLE model_versions ADD COLUMN artifact_sha256 {kind}")
            )
        for table, column, default in _TENANT_COLUMNS:
            if table in tables and not _has_column(connection, table, column):
                kind = _column_type(connection, table, column)
                connection.execute(
                    text(
                        f"ALTER TABLE {table} ADD COLUMN {column} {kind} NOT NULL DEFAULT {default}"
                    )
                )
        if "audit_log" in tables and not _has_column(connection, "audit_log", "tenant"):
            _add_audit_tenants(connection, backfill={"reviews", "posts"} <= tables)
        if "api_keys" in tables and not _has_column(connection, "api_keys", "moderator_groups"):
            kind = _column_type(connection, "api_keys", "moderator_groups")
            added = f"moderator_groups {kind} NOT NULL DEFAULT '[]'"
            connection.execute(text(f"ALTER TABLE api_keys ADD COLUMN {added}"))
        if "posts" in tables and not _has_column(connection, "posts", "images"):
            kind = _column_type(connection, "posts", "images")
            connection.execute(
                text(f"ALTER TABLE posts ADD COLUMN images {kind} NOT NULL DEFAULT '[]'")
            )


_TENANT_COLUMNS = (
    ("posts", "tenant", f"'{DEFAULT_TENANT}'"),
    ("api_keys", "tenant", f"'{DEFAULT_TENANT}'"),
    ("api_keys", "granted_tenants", "'[]'"),
)


def _add_audit_tenants(connection: Connection, *, backfill: bool) -> None:
    kind = _column_type(connection, "audit_log", "tenant")
    connection.execute(text(f"ALTER TABLE audit_log ADD COLUMN tenant {kind}"))
    connection.execute(text("CREATE INDEX IF NOT EXISTS ix_audit_log_tenant ON audit_log (tenant)"))
    if not backfill:
        return
    # Claims, decisions and appeals name their review: the review's post has the tenant.
    connection.execute(
        text(
            "UPDATE audit_log SET tenant = (SELECT posts.tenant FROM reviews JOIN posts "
            "ON posts.id = reviews.post_id WHERE reviews.review_id = audit_log.entity_id) "
            "WHERE entity = 'review'"
        )
    )


def _has_column(connection: Connection, table: str, column: str) -> bool:
    return column in {info["name"] for info in inspect(connection).get_columns(table)}


def _column_type(connection: Connection, table: str, column: str) -> str:
    return str(SQLModel.metadata.tables[table].c[column].type.compile(dialect=connection.dialect))


def _add_review_ids(connection: Connection) -> None:
    reviews = SQLModel.metadata.tables["reviews"]
    if connection.dialect.name != "postgresql":
        # SQLite cannot drop a column's UNIQUE constraint: rebuild the table with the new schema.
        old = "reviews_before_review_ids"
        connection.execute(text(f"ALTER TABLE reviews RENAME TO {old}"))
        for index in inspect(connection).get_indexes(old):
            if index["name"]:
                connection.execute(text(f'DROP INDEX "{index["name"]}"'))
        reviews.create(connection)
        columns = [info["name"] for info in inspect(connection).get_columns(old)]
        kept = ", ".join(name for name in columns if name in reviews.c)
        connection.execute(
            text(
                f"INSERT INTO reviews ({kept}, review_id) "
                f"SELECT {kept}, 'review-' || post_id FROM {old}"
            )
        )
        connection.execute(text(f"DROP TABLE {old}"))
        return
    for name in ("appeal_of", "escalated_at", "decided_at", "decided_by", "review_id"):
        if not _has_column(connection, "reviews", name):
            kind = _column_type(connection, "reviews", name)
            connection.execute(text(f"ALTER TABLE reviews ADD COLUMN {name} {kind}"))
    connection.execute(text("UPDATE reviews SET review_id = 'review-' || post_id"))
    connection.execute(text("ALTER TABLE reviews ALTER COLUMN review_id SET NOT NULL"))
    for constraint in inspect(connection).get_unique_constraints("reviews"):
        if constraint["column_names"] == ["post_id"] and constraint["name"]:
            connection.execute(text(f'ALTER TABLE reviews DROP CONSTRAINT "{constraint["name"]}"'))
    connection.execute(
        text("ALTER TABLE reviews ADD CONSTRAINT reviews_review_id_key UNIQUE (review_id)")
    )
    connection.execute(text("CREATE INDEX IF NOT EXISTS ix_reviews_post_id ON reviews (post_id)"))


def _add_decision_review_ids(connection: Connection) -> None:
    review_id = _column_type(connection, "decisions", "review_id")
    connection.execute(
        text(f"ALTER TABLE decisions ADD COLUMN review_id {review_id} NOT NULL DEFAULT ''")
    )
    connection.execute(text("UPDATE decisions SET review_id = 'review-' || post_id"))
    if not _has_column(connection, "decisions", "overrode"):
        overrode = _column_type(connection, "decisions", "overrode")
        connection.execute(text(f"ALTER TABLE decisions ADD COLUMN overrode {overrode}"))
    connection.execute(
        text("CREATE INDEX IF NOT EXISTS ix_decisions_review_id ON decisions (review_id)")
    )
