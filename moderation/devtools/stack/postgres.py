"""The project's own PostgreSQL cluster (Debian packages), run as the `postgres` user."""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from moderation.cache import step
from moderation.devtools.stack.component import ComponentStatus
from moderation.devtools.stack.runtime import (
    StackError,
    apt_install,
    ensure_ports_free,
    pid_alive,
    rss_mib,
    run,
    wait_until,
)
from moderation.settings import Settings

DEBIAN_PACKAGE = "postgresql-15"


def _server_bin_dir() -> Path | None:
    """Debian installs server binaries under /usr/lib/postgresql/<major>/bin, off PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("postgres")
    return Path(found).parent if found else None


class PostgresCluster:
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = settings.db
        self.home = settings.stack.state_dir / "postgres"
        self.data = self.home / "data"
        self.socket_dir = self.home / "run"
        self.log_file = settings.stack.state_dir / "logs" / "postgres.log"
        # The server refuses to run as root: as root we run it as the `postgres` user.
        self.os_user: str | None = "postgres" if os.geteuid() == 0 else None

    def install(self) -> None:
        if _server_bin_dir() is not None:
            return
        apt_install(DEBIAN_PACKAGE, "postgres")
        if _server_bin_dir() is None:
            raise StackError("PostgreSQL was installed but its server binary was not found")

    def _bin(self, tool: str) -> str:
        bin_dir = _server_bin_dir()
        if bin_dir is None:
            raise StackError(f"PostgreSQL is not installed: run `apt-get install {DEBIAN_PACKAGE}`")
        return str(bin_dir / tool)

    def _own(self, path: Path) -> None:
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def _ready(self) -> bool:
        result = subprocess.run(  # noqa: S603 - fixed argv
            [self._bin("pg_isready"), "-q", "-h", self.db.host, "-p", str(self.db.port)],
            check=False,
        )
        return result.returncode == 0

    def start(self) -> None:
        if self._pid() is None:
            ensure_ports_free("postgres", [self.db.port])
            if not (self.data / "PG_VERSION").exists():
                self._init_cluster()
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self._own(self.socket_dir)
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self.log_file.touch()
            self._own(self.log_file)
            options = (
                f"-p {self.db.port} -c listen_addresses={self.db.host} "
                f"-c unix_socket_directories={self.socket_dir}"
            )
            with step(f"postgres: start on {self.db.host}:{self.db.port}"):
                run(
                    [self._bin("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                     "-l", str(self.log_file), "-o", options],
                    "starting PostgreSQL",
                    user=self.os_user,
                )  # fmt: skip
                wait_until("postgres", self._ready, self.settings.stack.startup_timeout_seconds)
        self._ensure_databases()

    def _init_cluster(self) -> None:
        with step("postgres: initdb"):
            shutil.rmtree(self.data, ignore_errors=True)
            self.home.mkdir(parents=True, exist_ok=True)
            self._own(self.home)
            # The state dir may sit under root's home: the postgres user must be able to reach it.
            for parent in [self.home, *self.home.parents]:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
            password_file = self.home / "initdb.pw"
            password_file.write_text(self.db.password.get_secret_value() + "\n")
            self._own(password_file)
            try:
                run(
                    [self._bin("initdb"), "-D", str(self.data), "-U", self.db.user,
                     "--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8",
                     "--locale=C.UTF-8"],
                    "initdb",
                    user=self.os_user,
                )  # fmt: skip
            finally:
                password_file.unlink(missing_ok=True)

    def _connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.db.host,
            port=self.db.port,
            user=self.db.user,
            password=self.db.password.get_secret_value(),
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def _ensure_databases(self) -> None:
        # The roles first: the application database's grants name them, dapr_state's owner is one.
        with step("postgres: ensure the service roles and Dapr's role (moderation.db.roles)"):
            self.ensure_service_roles()
        with step(f"postgres: ensure database {self.db.name}, its schema and the roles' grants"):
            self.create_database(self.db.name)
        with step(f"postgres: ensure database {self.db.dapr_state_name}, owned by Dapr's role"):
            self.ensure_dapr_state_database()

    def ensure_service_roles(self) -> None:
        """One login role per service and Dapr's (`moderation.db.roles`), with the stack's dev
        password."""
        from moderation.db.roles import ensure_roles

        with self._connect() as conn:
            ensure_roles(conn, self.db.password.get_secret_value())

    def grant_service_roles(self, database: str) -> None:
        """Create or migrate the schema of `database` as the owner, then grant each role its
        tables and CONNECT, which no other role has (idempotent; tests call it for the databases
        they create)."""
        from moderation.db.engine import create_tables, make_engine
        from moderation.db.roles import apply_grants

        engine = make_engine(self.settings, url=self.db.url_for(database))
        try:
            create_tables(engine)
            apply_grants(engine)
        finally:
            engine.dispose()

    def create_database(self, name: str) -> None:
        """Create the database `name` unless it exists (tests isolate a registry this way),
        with the schema and the service roles' grants: the services log in with their roles.

        The roles must exist (`ensure_service_roles`; `start` creates them)."""
        with self._connect() as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            exists = conn.execute(query, (name,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.grant_service_roles(name)

    def ensure_dapr_state_database(self) -> None:
        """Dapr's state store database, owned by `DAPR_STATE_ROLE` with everything in it.

        daprd logs in as that role (`DaprRuntime._write_secrets`) and state.postgresql creates
        and migrates its own tables, so the role owns them; it has nothing in the application
        database. A database created before, by the owner, is handed over object by object:
        REASSIGN OWNED would also give away the owner's other databases.
        """
        from moderation.db.roles import DAPR_STATE_ROLE

        name, role = sql.Identifier(self.db.dapr_state_name), sql.Identifier(DAPR_STATE_ROLE)
        with self._connect() as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (self.db.dapr_state_name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, role))
            else:
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, role))
        with self._connect(self.db.dapr_state_name) as conn:
            for statement in _transfer_ownership_sql(conn, DAPR_STATE_ROLE):
                conn.execute(statement)

    def drop_database(self, name: str) -> None:
        """Drop the database `name` if it exists, closing its connections."""
        with self._connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        if self._pid() is None:
            return
        run(
            [self._bin("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)],
            "stopping PostgreSQL",
            user=self.os_user,
        )

    def status(self) -> list[ComponentStatus]:
        pid = self._pid()
        return [
            ComponentStatus(
                name="postgres",
                running=pid is not None,
                healthy=pid is not None and self._ready(),
                endpoint=f"{self.db.host}:{self.db.port}",
                pid=pid,
                rss_mib=rss_mib(pid) if pid else None,
                detail=f"databases {self.db.name}, {self.db.dapr_state_name} (user {self.db.user}; "
                f"run as {self.os_user or getpass.getuser()})",
            )
        ]


# What another role than `%(role)s` owns in the database's own schemas (neither the system's
# nor an extension's). Indexes, TOAST tables and row types follow their table, and so does a
# sequence owned by a column (SERIAL, IDENTITY), which may not be given away alone.
_FOREIGN_OWNED_SCHEMAS = r"""
SELECT n.nspname FROM pg_namespace n
WHERE n.nspowner <> %(role)s::regrole AND n.nspname <> 'public'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = n.oid AND e.deptype = 'e')
"""
_FOREIGN_OWNED_RELATIONS = r"""
SELECT c.relkind::text, n.nspname, c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relowner <> %(role)s::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = c.oid AND e.deptype = 'e')
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
      AND d.refclassid = 'pg_class'::regclass
  )
"""
_FOREIGN_OWNED_ROUTINES = r"""
SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proowner <> %(role)s::regrole
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = p.oid AND e.deptype = 'e')
"""
_RELATION_KINDS = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "f": "FOREIGN TABLE",
    "S": "SEQUENCE",
}


def _transfer_ownership_sql(
    conn: psycopg.Connection[tuple[object, ...]], role: str
) -> list[sql.Composed]:
    """`ALTER ... OWNER TO role` for each schema, table, view, sequence and routine of the
    connected database that another role owns (none once done: idempotent)."""
    params = {"role": role}
    to = sql.Identifier(role)
    statements = [
        sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(str(schema)), to)
        for (schema,) in conn.execute(_FOREIGN_OWNED_SCHEMAS, params).fetchall()
    ]
    for kind, schema, relation in conn.execute(_FOREIGN_OWNED_RELATIONS, params).fetchall():
        statements.append(
            sql.SQL("ALTER {} {} OWNER TO {}").format(
                sql.SQL(_RELATION_KINDS[str(kind)]),
                sql.Identifier(str(schema), str(relation)),
                to,
            )
        )
    for (routine,) in conn.execute(_FOREIGN_OWNED_ROUTINES, params).fetchall():
        # regprocedure's text is the routine's quoted, qualified signature, from the catalog.
        statements.append(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(str(routine)), to))
    return statements
