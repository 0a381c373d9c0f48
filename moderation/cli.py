"""The `moderation` command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moderation import stack
from moderation.settings import get_settings
from moderation.stack.component import ComponentStatus
from moderation.stack.runtime import StackError

app = typer.Typer(help="Event-driven content moderation.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: Kafka, PostgreSQL, Dapr, the LLM server.")
app.add_typer(stack_app, name="stack")

stdout = Console()
ComponentNames = Annotated[
    list[str] | None,
    typer.Argument(help="components to act on (kafka, postgres, dapr, llm); default: all"),
]


def _status_table(rows: list[ComponentStatus]) -> Table:
    table = Table(title="local stack")
    for column in ("component", "state", "endpoint", "pid", "RSS MiB", "detail"):
        table.add_column(column)
    for row in rows:
        if row.healthy:
            state = "[green]healthy[/green]"
        elif row.running:
            state = "[yellow]running, not answering[/yellow]"
        else:
            state = "[red]stopped[/red]"
        table.add_row(
            row.name,
            state,
            row.endpoint,
            str(row.pid or "-"),
            f"{row.rss_mib:.0f}" if row.rss_mib else "-",
            row.detail,
        )
    return table


def _fail(error: Exception) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {error}")
    return typer.Exit(code=1)


@stack_app.command("install")
def stack_install(names: ComponentNames = None) -> None:
    """Download and build what is missing (cached), without starting anything."""
    try:
        stack.install(get_settings(), names)
    except (StackError, ValueError) as error:
        raise _fail(error) from None


@stack_app.command("up")
def stack_up(names: ComponentNames = None) -> None:
    """Install what is missing, start every component and wait until each answers."""
    try:
        stack.up(get_settings(), names)
    except (StackError, ValueError) as error:
        raise _fail(error) from None


@stack_app.command("down")
def stack_down(names: ComponentNames = None) -> None:
    """Stop the components; no process is left behind."""
    try:
        stack.down(get_settings(), names)
    except (StackError, ValueError) as error:
        raise _fail(error) from None


@stack_app.command("status")
def stack_status(
    names: ComponentNames = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Probe each component; exit 1 if any is not healthy."""
    try:
        rows = stack.status(get_settings(), names)
    except ValueError as error:
        raise _fail(error) from None
    if as_json:
        stdout.print_json(json.dumps([row.__dict__ for row in rows]))
    else:
        stdout.print(_status_table(rows))
    if not all(row.healthy for row in rows):
        raise typer.Exit(code=1)


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets masked)."""
    stdout.print_json(get_settings().model_dump_json())


@app.command("demo")
def demo() -> None:
    """Embedded mode: for now, the effective settings and the health of the local stack.

    The full pipeline demo (in-memory broker, SQLite, sample posts) arrives with the pipeline.
    """
    settings = get_settings()
    stdout.rule("moderation demo")
    stdout.print(f"environment: {settings.environment}")
    stdout.print(
        f"kafka: {settings.kafka.bootstrap_servers}  topics: {settings.kafka.topics.all_topics()}"
    )
    stdout.print(f"database: {settings.db.url_for(settings.db.name).split('@')[-1]}")
    stdout.print(f"llm: {settings.llm.base_url} (model {settings.llm.model})")
    stdout.print(f"dapr: app {settings.dapr.app_id} via {settings.dapr.grpc_endpoint}")
    stdout.print(_status_table(stack.status(settings)))
    stdout.print(
        "[dim]start the real stack with `make stack-up`; the embedded pipeline arrives next.[/dim]"
    )


if __name__ == "__main__":
    app()
