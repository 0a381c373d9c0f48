"""Command-line pieces of the API: `api-keys create`, and `run_api` behind `moderation api`."""

from __future__ import annotations

import gc
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from moderation.api.security import create_key, parse_scopes
from moderation.db.engine import create_tables, make_engine
from moderation.settings import Settings, get_settings

app = typer.Typer(help="API keys of the ingest API (hashed at rest).", no_args_is_help=True)

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


@app.callback()
def api_keys() -> None:
    """API keys of the ingest API: created here, hashed at rest, shown once."""


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. 'forum-backend'")],
    scopes: Annotated[
        str, typer.Option(help="comma-separated: submit, read, moderate, admin (admin: all)")
    ] = "submit",
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
        plaintext, principal = create_key(engine, name=name, scopes=wanted)
    finally:
        engine.dispose()
    stderr.print(
        f"created API key '{principal.name}' (id {principal.key_id}, scopes "
        f"{', '.join(sorted(principal.scopes))}); it is shown only once:"
    )
    stdout.print(plaintext, markup=False, highlight=False)


def run_api(settings: Settings) -> None:
    """Serve the API with uvicorn in this process (one worker) until SIGTERM/SIGINT."""
    from moderation.api.app import create_app
    from moderation.telemetry import configure_tracing

    configure_tracing("api", settings)
    app = create_app(settings)
    # Everything imported so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise rescan it while the API allocates per request.
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        workers=1,
        # "auto": uvloop/httptools when installed, else asyncio/h11.
        loop="auto",
        http="auto",
        lifespan="on",
        log_level="info",
        # One log line per request would cost more than the request itself at 3,000/s.
        access_log=False,
    )
