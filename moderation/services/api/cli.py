"""Command-line pieces of the API: `api-keys create`, `list` and `revoke`, and `run_api` behind
`moderation api`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine
from moderation.events import DEFAULT_TENANT
from moderation.services.api.security import create_key, parse_scopes
from moderation.settings import Settings, get_settings

app = typer.Typer(help="API keys of the ingest API (hashed at rest).", no_args_is_help=True)

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)
# Who the audit log names for keys created or revoked here.
CLI_ACTOR = "cli"


@app.callback()
def api_keys() -> None:
    """API keys of the ingest API: created here, hashed at rest, shown once."""


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. 'forum-backend'")],
    scopes: Annotated[
        str, typer.Option(help="comma-separated: submit, read, moderate, admin (admin: all)")
    ] = "submit",
    tenant: Annotated[
        str, typer.Option(help="the platform the key acts for; it sees only this tenant's posts")
    ] = DEFAULT_TENANT,
    grant_tenants: Annotated[
        str,
        typer.Option(help="moderate keys: further tenants to work on, comma-separated (*: all)"),
    ] = "",
    groups: Annotated[
        str,
        typer.Option(
            help="moderate keys: the moderator groups (MODERATION_REVIEW__GROUPS, or the default "
            "group) whose reviews it claims, comma-separated; none: every group"
        ),
    ] = "",
) -> None:
    """Create a key and print it once on stdout (only its hash is stored)."""
    try:
        wanted = parse_scopes(scopes)
    except ValueError as error:
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    settings = get_settings()
    engine = make_engine(settings)
    try:
        create_tables(engine)
        grants = [part.strip() for part in grant_tenants.split(",") if part.strip()]
        plaintext, principal = create_key(
            engine,
            name=name,
            scopes=wanted,
            tenant=tenant,
            granted_tenants=grants,
            actor=CLI_ACTOR,
            moderator_groups=[part.strip() for part in groups.split(",") if part.strip()],
            known_groups=crud.Routing.of(settings.review).names(),
        )
    except ValueError as error:
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    finally:
        engine.dispose()
    stderr.print(
        f"created API key '{principal.name}' (id {principal.key_id}, scopes "
        f"{', '.join(sorted(principal.scopes))}, tenant {principal.tenant}"
        + (
            f", groups {', '.join(sorted(principal.moderator_groups))}"
            if principal.moderator_groups
            else ""
        )
        + "); it is shown only once:"
    )
    stdout.print(plaintext, markup=False, highlight=False)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else ""


@app.command("list")
def list_keys() -> None:
    """Show every key (never a secret): id, name, prefix, tenants, scopes, when created/revoked."""
    settings = get_settings()
    engine = make_engine(settings)
    try:
        create_tables(engine)
        with Session(engine) as session:
            keys = crud.list_api_keys(session)
    finally:
        engine.dispose()
    table = Table(title=f"API keys ({len(keys)})")
    for column in ("id", "name", "prefix", "tenant", "granted tenants", "groups", "scopes"):
        table.add_column(column, overflow="fold")
    table.add_column("created", no_wrap=True)
    table.add_column("revoked", no_wrap=True)
    for key in keys:
        # Names are labels anyone with the CLI chose: shown as text, never as rich markup.
        table.add_row(
            str(key.id),
            Text(key.name),
            key.prefix,
            Text(key.tenant),
            Text(", ".join(key.granted_tenants)),
            Text(", ".join(key.moderator_groups)),
            ", ".join(key.scopes),
            _when(key.created_at),
            _when(key.revoked_at),
        )
    stdout.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[int, typer.Argument(help="the key's id (see `api-keys list`)")],
) -> None:
    """Revoke a key (audited). Running APIs refuse it within their key cache's TTL (30 s)."""
    settings = get_settings()
    engine = make_engine(settings)
    try:
        create_tables(engine)
        with Session(engine) as session:
            outcome, key = crud.revoke_api_key_by_id(session, key_id=key_id, actor=CLI_ACTOR)
            name = key.name if key is not None else ""
    finally:
        engine.dispose()
    if outcome is crud.KeyRevocation.NOT_FOUND:
        stderr.print(f"[red]error:[/red] no API key with id {key_id}")
        raise typer.Exit(code=1)
    if outcome is crud.KeyRevocation.ALREADY_REVOKED:
        stderr.print(f"[red]error:[/red] API key {key_id} is already revoked")
        raise typer.Exit(code=1)
    stderr.print(f"revoked API key {key_id}", Text(f"('{name}')"))


class InternalServer(uvicorn.Server):
    """The internal listener's server: it leaves signals to the public server, which stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def api_servers(settings: Settings) -> tuple[uvicorn.Server, InternalServer]:
    """The public server (the API, its lifespan) and the internal one (probes, metrics)."""
    from moderation.services.api.app import build_app
    from moderation.services.api.internal import create_internal_app

    app = build_app(settings, start_image_decoders=True)
    public = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.api.host,
            port=settings.api.port,
            workers=1,
            # The event loop and the HTTP/1.1 parser in C: about twice the single-post requests a
            # core serves (`moderation bench`, ingest phase).
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level="info",
            # One log line per request would cost more than the request itself at 3,000/s.
            access_log=False,
            # The app applies `api.trusted_proxies` itself (uvicorn's default trusts 127.0.0.1).
            proxy_headers=False,
        )
    )
    internal = InternalServer(
        uvicorn.Config(
            create_internal_app(app),
            host=settings.api.internal_host,
            port=settings.api.internal_port,
            lifespan="off",
            # The same level as the public server: each Config sets uvicorn's loggers' level.
            log_level="info",
            access_log=False,
            proxy_headers=False,
        )
    )
    return public, internal


async def serve_api(public: uvicorn.Server, internal: InternalServer) -> None:
    """Serve both until the public server stops (SIGTERM/SIGINT), then stop the internal one."""
    internal_task = asyncio.create_task(internal.serve())
    try:
        await public.serve()
    finally:
        internal.should_exit = True
        await internal_task


def run_api(settings: Settings) -> None:
    """Serve the API with uvicorn in this process (one worker) until SIGTERM/SIGINT: the public
    port (`api.port`) and the internal one (`api.internal_port`: readiness, metrics)."""
    from moderation.telemetry import configure_tracing

    configure_tracing("api", settings)
    public, internal = api_servers(settings)
    # Everything imported so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise rescan it while the API allocates per request.
    gc.freeze()
    with asyncio.Runner(loop_factory=public.config.get_loop_factory()) as runner:
        runner.run(serve_api(public, internal))
