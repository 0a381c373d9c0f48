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

from moderation.settings import Settings
from moderation.stack.component import ComponentStatus
from moderation.stack.runtime import (
    StackError,
    apt_install,
    ensure_ports_free,
    pid_alive,
    rss_mib,
    run,
    step,
    wait_until,
)

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
        # The roles first: the application database's grants name them.
        with step("postgres: ensure the service roles (moderation.db.roles)"):
            self.ensure_service_roles()
        with step("postgres: ensure databases (the application's with its schema and grants)"):
            self.create_database(self.db.name)
            self._create_empty_database(self.db.dapr_state_name)

    def ensure_service_roles(self) -> None:
        """One login role per service (`moderation.db.roles`), with the stack's dev password."""
        from moderation.db.roles import ensure_roles

        with self._connect() as conn:
            ensure_roles(conn, self.db.password.get_secret_value())

    def grant_service_roles(self, database: str) -> None:
        """Create or migrate the schema of `database` as the owner, then grant each role its
        tables (idempotent; tests call it for the databases they create)."""
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
        self._create_empty_database(name)
        self.grant_service_roles(name)

    def _create_empty_database(self, name: str) -> None:
        with self._connect() as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            exists = conn.execute(query, (name,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

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
