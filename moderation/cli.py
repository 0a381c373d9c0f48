"""The `moderation` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from moderation.devtools import stack
from moderation.devtools.stack.component import ComponentStatus
from moderation.devtools.stack.dapr import with_stack_tokens
from moderation.devtools.stack.runtime import StackError
from moderation.services.api.cli import app as api_keys_app
from moderation.settings import PROJECT_ROOT, Settings, get_settings

if TYPE_CHECKING:  # imported lazily below: loading the model stack is slow
    from moderation.classifier.fast.model import FastModel

app = typer.Typer(help="Event-driven content moderation.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: Kafka, PostgreSQL, Dapr, the LLM server.")
app.add_typer(stack_app, name="stack")
app.add_typer(api_keys_app, name="api-keys")

stdout = Console()
DEFAULT_SAMPLES = PROJECT_ROOT / "data" / "samples.jsonl"
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


@app.command("api")
def api() -> None:
    """Run the ingest API (FastAPI) on `MODERATION_API__HOST`:`MODERATION_API__PORT`."""
    from moderation.services.api.cli import run_api

    run_api(with_stack_tokens(get_settings()))


@app.command("recorder")
def recorder() -> None:
    """Run the recorder service: every topic into PostgreSQL."""
    from moderation.services.recorder.app import run_recorder

    run_recorder(get_settings())


@app.command("webhook-dispatcher")
def webhook_dispatcher() -> None:
    """Run the webhook dispatcher: verdicts, decisions, actions and reports to webhooks."""
    from moderation.services.webhooks.app import run_webhook_dispatcher

    run_webhook_dispatcher(get_settings())


def _image_evaluation(directory: Path, *, as_json: bool) -> None:
    """`moderation eval --images DIR` (moderation/evaluation/images.py)."""
    import tempfile

    from moderation.classifier.image_stage import ImageJudge
    from moderation.classifier.nudity import load_nudity_detector
    from moderation.evaluation.images import evaluate_images, render_image_evaluation
    from moderation.images.store import LocalImageStore

    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="moderation-eval-images-") as store_dir:
        detector = load_nudity_detector(settings.nudity) if settings.nudity.enabled else None
        judge = ImageJudge(settings, store=LocalImageStore(Path(store_dir)), detector=detector)
        try:
            result = evaluate_images(directory, settings, judge)
        except ValueError as error:
            raise _fail(error) from None
    if as_json:
        typer.echo(result.model_dump_json())
    else:
        render_image_evaluation(result, stdout)


@app.command("eval")
def evaluate(
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="JSONL with one {text, label} object per line; default: the current gold split"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    loso: Annotated[
        bool,
        typer.Option(
            "--loso",
            "--leave-one-source-out",
            help="also train without each external source and score on it (one training per "
            "source, cached) and route it through stage 1",
        ),
    ] = False,
    model_card: Annotated[
        Path | None,
        typer.Option(help="write the model card (Markdown) from the numbers; implies --loso"),
    ] = None,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="also run the classifier agent on the posts stage 1 sends on (the configured "
            "LLM endpoint) and report the final routing",
        ),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="--cascade: only the first N posts of the dataset"),
    ] = None,
    thresholds: Annotated[
        bool,
        typer.Option(
            "--thresholds",
            help="choose stage-1 thresholds on the validation split for the error budget "
            "(MODERATION_ERROR_BUDGET__*), then route the dataset through stage 1 with the "
            "configured and the chosen thresholds, side by side",
        ),
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="evaluate the image stage instead: a directory with labels.csv (file,label) "
            "and the images; intake, hash lists and the nudity detector, per label",
        ),
    ] = None,
) -> None:
    """Evaluate the fast model: per-category and flagged-vs-safe scores, confusion, throughput.

    With --cascade: also the classifier agent on the posts stage 1 sends on, and the routing.
    With --images DIR: the image stage on a labelled image dataset instead.
    """
    if images is not None:
        _image_evaluation(images, as_json=as_json)
        return
    from moderation.cache import console as progress_console
    from moderation.classifier.fast.store import ensure_fast_model
    from moderation.datasets.build import build_dataset, gold_split_path
    from moderation.datasets.sources import DatasetError
    from moderation.evaluation.scores import evaluate as run_evaluation
    from moderation.evaluation.scores import load_jsonl_dataset, render_report

    if limit is not None and not cascade:
        raise _fail(ValueError("--limit applies to --cascade only"))
    if cascade and (loso or model_card):
        raise _fail(ValueError("--cascade does not combine with --loso or --model-card"))
    if thresholds and (cascade or loso or model_card):
        raise _fail(
            ValueError("--thresholds does not combine with --cascade, --loso or --model-card")
        )
    settings = get_settings()
    try:
        records = load_jsonl_dataset(dataset or gold_split_path(settings))[:limit]
        model = ensure_fast_model(settings, progress=not as_json)
    except (OSError, ValueError) as error:
        raise _fail(error) from None
    except DatasetError as error:  # the dataset could not be downloaded or verified
        raise _fail(error) from None
    if thresholds:
        _threshold_report(model, records, settings, as_json=as_json, dataset=dataset)
        return
    report = run_evaluation(model, records)
    if cascade:
        from moderation.devtools.demo import llm_endpoint_answers
        from moderation.evaluation.cascade import evaluate_cascade, render_cascade

        if not llm_endpoint_answers(settings):
            progress_console.print(
                f"[yellow]no LLM endpoint answers at {settings.llm.base_url}: the agent's runs "
                "will fail and count as agent unavailable[/yellow]"
            )
        result = evaluate_cascade(
            model, records, settings, console=None if as_json else progress_console
        )
        if as_json:
            typer.echo(
                json.dumps(
                    report.model_dump(mode="json") | {"cascade": result.model_dump(mode="json")}
                )
            )
        else:
            render_report(report, stdout)
            render_cascade(result, stdout)
        return
    if not (loso or model_card):
        if as_json:
            typer.echo(report.model_dump_json())
        else:
            render_report(report, stdout)
        return

    from moderation.classifier.injection.model import load_detector
    from moderation.evaluation.card import write_model_card
    from moderation.evaluation.loso import render_loso, run_leave_one_source_out
    from moderation.evaluation.routing import long_text_routing, render_routing, route_records

    # The gold routing is the worker's: fast model, both injection screens, readability rules.
    detector = load_detector(settings)
    routing = route_records(model, records, settings, detector=detector)
    long_texts = long_text_routing(model, records, settings, detector=detector)
    dataset_dir = build_dataset(settings.stack.cache_dir)  # cached: the one the model learned
    holdout = run_leave_one_source_out(
        dataset_dir, settings, console=None if as_json else progress_console
    )
    if model_card is not None:
        write_model_card(
            model_card,
            model=model,
            dataset_dir=dataset_dir,
            evaluated=f"`{dataset}`" if dataset else "Gold split",
            gold=report,
            gold_routing=routing,
            long_texts=long_texts,
            loso=holdout,
            settings=settings,
        )
    if as_json:
        typer.echo(
            json.dumps(
                report.model_dump(mode="json")
                | {
                    "stage1_routing": routing.model_dump(mode="json"),
                    "long_texts": long_texts.model_dump(mode="json") if long_texts else None,
                    "leave_one_source_out": holdout.model_dump(mode="json"),
                }
            )
        )
        return
    render_report(report, stdout)
    render_routing(routing, stdout, title="stage 1 on this dataset")
    render_loso(holdout, stdout)
    if model_card is not None:
        stdout.print(f"[green]✓[/green] model card written to {model_card}")


def _threshold_report(
    model: FastModel,
    records: Sequence[Mapping[str, str]],
    settings: Settings,
    *,
    as_json: bool,
    dataset: Path | None,
) -> None:
    """`eval --thresholds`: choose on the validation split, then route `records` both ways."""
    from moderation.classifier.thresholds import choose_thresholds, render
    from moderation.datasets.build import build_dataset, load_split
    from moderation.evaluation.routing import render_routing_comparison, route_records
    from moderation.taxonomy import Category

    # The split the model was validated on (cached); gold is only routed, never chosen on.
    validation = load_split(build_dataset(settings.stack.cache_dir), "validation")
    choice = choose_thresholds(
        model.predict_proba([record["text"] for record in validation]),
        [Category(record["label"]) for record in validation],
        settings.error_budget,
        settings.thresholds,
    )
    # Both runs name their thresholds: the model's own error-budget choice is not applied here.
    as_given = settings.model_copy(
        update={"error_budget": settings.error_budget.model_copy(update={"apply": False})}
    )
    configured = route_records(model, records, as_given)
    chosen = route_records(
        model, records, as_given.model_copy(update={"thresholds": choice.thresholds})
    )
    if as_json:
        routing = {"configured": configured, "chosen": chosen}
        typer.echo(
            json.dumps(
                {
                    "validation": choice.model_dump(mode="json"),
                    "stage1_routing": {
                        name: shares.model_dump(mode="json") for name, shares in routing.items()
                    },
                }
            )
        )
        return
    render(choice, stdout)
    where = f"stage 1 on {dataset}" if dataset else "stage 1 on the gold split"
    render_routing_comparison(configured, chosen, stdout, title=where)


@app.command("bench")
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    rate: Annotated[
        int, typer.Option(help="offered posts/s in the fixed-rate phase (and of --soak)")
    ] = 1_000,
    seconds: Annotated[float, typer.Option(help="length of the fixed-rate phase")] = 10.0,
    saturation_posts: Annotated[int, typer.Option(help="posts in the saturation phase")] = 50_000,
    single_requests: Annotated[int, typer.Option(help="single-post ingest requests")] = 10_000,
    batch_posts: Annotated[
        int, typer.Option(help="posts sent through the batch endpoint")
    ] = 100_000,
    agent: Annotated[
        bool,
        typer.Option(
            "--agent",
            help="measure the agent stage (gold sample + injection set) instead of the pipeline",
        ),
    ] = False,
    sample: Annotated[
        int, typer.Option(min=1, help="--agent: gold-split posts through stage 1 (first N)")
    ] = 1_000,
    agent_limit: Annotated[
        int | None,
        typer.Option(min=0, help="--agent: at most this many agent runs on the sample [all]"),
    ] = None,
    orchestration: Annotated[
        bool,
        typer.Option(
            "--orchestration",
            help="measure the agent service's workflows with an instant scripted model, and the "
            "in-process agent stage beside them",
        ),
    ] = False,
    agent_posts: Annotated[
        int, typer.Option(min=1, help="--orchestration: hand-offs in the saturation phase")
    ] = 2_000,
    agent_rate: Annotated[
        float, typer.Option(min=1, help="--orchestration: offered hand-offs/s (latency phase)")
    ] = 100.0,
    nudity: Annotated[
        bool,
        typer.Option(
            "--nudity",
            help="measure the images' nudity detector instead (no stack): false positives on "
            "the safe images shipped in packages, images/s on ~1 MP images (--seconds per run)",
        ),
    ] = False,
    images: Annotated[
        bool,
        typer.Option(
            "--images",
            help="measure image hashing and hash-list matching on one core instead (no stack): "
            "~1 MP photos against 10,000 PDQ hashes, and sanitizing",
        ),
    ] = False,
    image_count: Annotated[
        int, typer.Option(min=10, help="--images: images in the hashing phase")
    ] = 1_000,
    image_posts: Annotated[
        bool,
        typer.Option(
            "--image-posts",
            help="posts with a ~1 MP image each through the stack (API, worker, recorder) at "
            "--image-rate for --seconds: end-to-end latency, hash-matched and detector paths",
        ),
    ] = False,
    image_rate: Annotated[
        float, typer.Option(min=1, help="--image-posts: offered image posts/s")
    ] = 20.0,
    soak: Annotated[
        bool,
        typer.Option(
            "--soak",
            help="memory soak: --rate posts/s for --soak-minutes through the stack, RSS of every "
            "service sampled; fails if a post is lost or doubled; JSON and "
            "bench-results/soak-rss.png",
        ),
    ] = False,
    soak_minutes: Annotated[
        float, typer.Option(min=0.1, help="--soak: length of the soak in minutes")
    ] = 10.0,
    scaling: Annotated[
        bool,
        typer.Option(
            "--scaling",
            help="how cost grows: end to end for 1/2/4 partitions × 1/2 worker processes × "
            "50/5,000-character posts; JSON and bench-results/scaling.png",
        ),
    ] = False,
    scaling_posts: Annotated[
        int,
        typer.Option(min=100, help="--scaling: short posts per saturation phase (long: a quarter)"),
    ] = 20_000,
    repeat: Annotated[
        int,
        typer.Option(min=1, help="runs of each end-to-end phase and of the relay (min/median/max)"),
    ] = 1,
    warmup_posts: Annotated[
        int, typer.Option(min=1, help="posts through the cold pipeline before measuring")
    ] = 5_000,
    relay: Annotated[
        bool,
        typer.Option(
            "--relay/--no-relay",
            help="measure the raw-relay ceiling (bare aiokafka relay + COPY) in the same run",
        ),
    ] = True,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="py-spy the api, worker and recorder during the first saturation run "
            "(collapsed stacks in bench-results/profile-<run>/, top costs in the JSON)",
        ),
    ] = False,
    native: Annotated[
        bool, typer.Option("--native", help="--profile: unwind C extensions' frames too")
    ] = False,
) -> None:
    """Measure the pipeline against the local stack (starts what it needs); JSON with --json.

    With --agent: the cascade's agent stage against the configured LLM endpoint instead; with
    --orchestration: the agent service's durable workflows with an instant scripted model.
    """
    if soak:
        from moderation.devtools.bench.memory import render_soak, run_soak

        soak_result = run_soak(
            get_settings(), rate=rate, minutes=soak_minutes, console=Console(stderr=True)
        )
        if as_json:
            typer.echo(json.dumps(soak_result))
        else:
            render_soak(soak_result, stdout)
        return
    if scaling:
        from moderation.devtools.bench.scaling import render_scaling, run_scaling

        scaling_result = run_scaling(
            get_settings(),
            saturation_posts=scaling_posts,
            long_saturation_posts=max(100, scaling_posts // 4),
            console=Console(stderr=True),
        )
        if as_json:
            typer.echo(json.dumps(scaling_result))
        else:
            render_scaling(scaling_result, stdout)
        return
    if image_posts:
        from moderation.devtools.bench.image_posts import (
            render_image_posts,
            run_image_posts_bench,
        )

        posts_result = run_image_posts_bench(
            get_settings(), rate=image_rate, seconds=seconds, console=Console(stderr=True)
        )
        if as_json:
            typer.echo(json.dumps(posts_result))
        else:
            render_image_posts(posts_result, stdout)
        return
    if images:
        from moderation.devtools.bench.images import render_images, run_images_bench

        images_result = run_images_bench(images=image_count, console=Console(stderr=True))
        if as_json:
            typer.echo(json.dumps(images_result))
        else:
            render_images(images_result, stdout)
        return
    if nudity:
        from moderation.devtools.bench.nudity import render_nudity, run_nudity_bench

        nudity_result = run_nudity_bench(get_settings(), seconds=seconds)
        if as_json:
            typer.echo(json.dumps(nudity_result))
        else:
            render_nudity(nudity_result, stdout)
        return
    from moderation.devtools.bench.agent import render_agent, run_agent_bench
    from moderation.devtools.bench.e2e import PostsLostOrDoubled
    from moderation.devtools.bench.pipeline import check_phases, render, run_bench

    progress_console = Console(stderr=True)
    if orchestration:
        from moderation.devtools.bench.orchestration import (
            render_orchestration,
            run_orchestration_bench,
        )

        result = run_orchestration_bench(
            get_settings(), posts=agent_posts, rate=agent_rate, seconds=seconds,
            console=progress_console,
        )  # fmt: skip
        if as_json:
            typer.echo(json.dumps(result))
        else:
            render_orchestration(result, stdout)
        return
    if agent:
        result = run_agent_bench(
            get_settings(), sample=sample, agent_limit=agent_limit, console=progress_console
        )
        if as_json:
            typer.echo(json.dumps(result))
        else:
            render_agent(result, stdout)
        return
    result = run_bench(
        get_settings(),
        rate=rate,
        seconds=seconds,
        saturation_posts=saturation_posts,
        single_requests=single_requests,
        batch_posts=batch_posts,
        repeat=repeat,
        warmup_posts=warmup_posts,
        relay=relay,
        profile=profile,
        native=native,
        console=progress_console,
    )
    if as_json:
        typer.echo(json.dumps(result))
    else:
        render(result, stdout)
    try:
        check_phases(result)
    except PostsLostOrDoubled as error:
        progress_console.print(f"[red]error:[/red] posts lost or doubled: {error}")
        raise typer.Exit(code=1) from error


@app.command("worker")
def worker() -> None:
    """Run the classifier worker service (health, readiness, metrics on its port)."""
    from moderation.services.worker.app import run_worker

    run_worker(get_settings())


@app.command("review-service")
def review_service() -> None:
    """Run the review service (a Dapr app: one durable workflow per review)."""
    from moderation.services.review.app import run_review_service

    run_review_service(with_stack_tokens(get_settings()))


@app.command("agent-service")
def agent_service() -> None:
    """Run the agent service (a Dapr app: one durable classifier-agent workflow per post)."""
    from moderation.services.agent.app import run_agent_service

    run_agent_service(with_stack_tokens(get_settings()))


@app.command("agents")
def agents(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array on stdout")] = False,
) -> None:
    """List the agents and MCP servers in the agent registry (through the stack's daprd)."""
    from dapr.clients import DaprClient

    from moderation.services.sidecar.registry import as_rows, list_entries
    from moderation.services.sidecar.tokens import use_api_token

    settings = with_stack_tokens(get_settings())
    use_api_token(settings)
    with DaprClient(settings.dapr.grpc_endpoint) as client:
        entries = list_entries(client, settings.dapr.registry_store_name)
    if as_json:
        typer.echo(json.dumps(as_rows(entries)))
        return
    table = Table(title=f"agent registry ({len(entries)})")
    for column in ("name", "kind", "model", "policy", "endpoints", "tools", "registered"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            entry.name, entry.kind, entry.model or "", entry.policy_version or "",
            "\n".join(f"{k}: {v}" for k, v in entry.endpoints.items()),
            ", ".join(entry.tools), entry.registered_at.isoformat(timespec="seconds"),
        )  # fmt: skip
    stdout.print(table)


@app.command("mcp-server")
def mcp_server() -> None:
    """Run the MCP server: the moderation lookups as tools (streamable HTTP, API-key auth)."""
    from moderation.services.mcp.app import run_mcp_server

    run_mcp_server(get_settings())


@app.command("dashboard")
def dashboard() -> None:
    """Run the moderators' Streamlit dashboard (settings: MODERATION_DASHBOARD__*)."""
    # Its own section only: the full settings would demand secrets the dashboard never uses.
    from hitl_dashboard.settings import get_dashboard_settings

    settings = get_dashboard_settings()
    app_file = PROJECT_ROOT / "hitl_dashboard" / "app.py"
    # Streamlit owns its process (signals, server): hand this one over to it.
    os.execv(  # noqa: S606 - our own interpreter and app
        sys.executable,
        [
            sys.executable, "-m", "streamlit", "run", str(app_file),
            "--server.port", str(settings.dashboard.port),
            "--server.address", settings.worker.service_host,
            "--server.headless", "true",
            "--browser.gatherUsageStats", "false",
        ],
    )  # fmt: skip


@app.command("nightly")
def nightly(
    lora: Annotated[
        bool | None,
        typer.Option(
            "--lora/--no-lora",
            help="fine-tune the agent's model with LoRA [MODERATION_NIGHTLY__LORA__ENABLED]",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """The nightly feedback loop: aggregate decisions, retrain, evaluate, promote, report."""
    from jobs.nightly import run_nightly

    try:
        result = run_nightly(get_settings(), lora=lora, progress=not as_json)
    except Exception as error:  # noqa: BLE001 - recorded in job_runs; exit 1 for the scheduler
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps(result.__dict__, default=str))


@app.command("schedule-nightly")
def schedule_nightly() -> None:
    """Register the nightly job with the Dapr Jobs API (the stack's daprd must run)."""
    from jobs.schedule import JOB_NAME
    from jobs.schedule import schedule_nightly as schedule

    settings = with_stack_tokens(get_settings())
    try:
        schedule(settings)
    except Exception as error:  # noqa: BLE001 - the message says what daprd answered
        raise _fail(error) from None
    stdout.print(
        f"[green]✓[/green] Dapr job {JOB_NAME!r} scheduled ({settings.nightly.schedule!r}); "
        f"it triggers the review service's /job/{JOB_NAME}"
    )


@app.command("demo")
def demo(
    samples: Annotated[
        Path, typer.Option(help="JSONL of {text, author_id} posts to push through the pipeline")
    ] = DEFAULT_SAMPLES,
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="then serve the API and the dashboard until Ctrl-C [default: at a terminal, "
            "unless CI is set]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Embedded mode: in-memory broker, SQLite, the same handlers; prints a verdict table, then
    (at a terminal) serves the API and the dashboard on them until Ctrl-C."""
    from moderation.devtools.demo import run_demo
    from moderation.devtools.demo_serve import DemoError

    try:
        run_demo(get_settings(), samples=samples, console=stdout, serve=serve)
    except DemoError as error:
        raise _fail(error) from None


if __name__ == "__main__":
    app()
