"""The embedded demo, served: the real API and the dashboard on the demo's in-memory broker.

After the verdict table, `make demo` in a terminal keeps the in-memory broker and the SQLite read
model alive and serves, on 127.0.0.1, the API (`build_app`, the same routes as the service) and
the Streamlit dashboard (a subprocess pointed at that API), until Ctrl-C. What the services do
through Kafka and Dapr happens in process here:

- a post the API accepts is published on the in-memory broker (`BrokerPublisher`), where the
  worker, the recorder and the review task step take it, as in the table's run;
- a moderator's decision runs the review workflow's own activity (`ReviewActivities.
  persist_decision`, `InProcessReviewWorkflows`), whose `ReviewDecided` goes onto the same broker
  for the recorder;
- there is no Dapr, so the Workflows page answers that workflow history is not available here
  (`NoWorkflowHistory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
from faststream.kafka import KafkaBroker
from rich.console import Console
from sqlalchemy import Engine
from sqlmodel import Session
from uvicorn import Config

from moderation.db import crud
from moderation.db.schemas import WorkflowApp, WorkflowHistoryPublic, WorkflowInstancesPublic
from moderation.events import Event, ReviewDecided
from moderation.services.api.app import build_app
from moderation.services.api.cli import InternalServer
from moderation.services.api.publisher import PublishUnavailable, Record, publish_each
from moderation.services.api.workflows import WorkflowUnavailable
from moderation.services.review.activities import ReviewActivities
from moderation.services.sidecar.history import SidecarUnavailable
from moderation.settings import PROJECT_ROOT, Settings

HOST = "127.0.0.1"
DEMO_KEY_NAME = "demo-moderator"
DEMO_KEY_SCOPES = ["moderate", "submit", "read"]
# Streamlit starts in a few seconds; a cold import of its dependencies can take longer.
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 10.0
# A decision's event reaches the recorder through the loop; this bounds the wait for it.
SINK_TIMEOUT_SECONDS = 30.0
NO_HISTORY = "workflow history is not available in the embedded demo (no Dapr)"


class DemoError(Exception):
    """The demo cannot serve (a port is taken, a process did not start); the message says why."""


def should_serve(
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> bool:
    """Serve only for a person at a terminal: stdin and stdout are TTYs and `CI` is not set."""
    env = os.environ if environ is None else environ
    if env.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    streams = (stdin or sys.stdin, stdout or sys.stdout)
    return all(stream is not None and stream.isatty() for stream in streams)


def busy_ports(ports: Mapping[str, int], host: str = HOST) -> list[str]:
    """`api port 8000` for each port that something already listens on (or cannot be bound)."""
    taken = []
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As uvicorn and Streamlit bind: a closed connection's TIME_WAIT does not count,
            # a listening socket does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                taken.append(f"{name} port {port}")
    return taken


def check_ports(settings: Settings) -> None:
    """Raise `DemoError` naming the ports in use, and how to choose others."""
    taken = busy_ports({"API": settings.api.port, "dashboard": settings.dashboard.port})
    if taken:
        raise DemoError(
            f"cannot serve the demo: {' and '.join(taken)} on {HOST} already in use (the local "
            "stack's API or dashboard, or another demo?). Stop it, or choose free ports with "
            "MODERATION_API__PORT and MODERATION_DASHBOARD__PORT; `--no-serve` prints the table "
            "only."
        )


def create_demo_key(engine: Engine) -> str:
    """A `moderate` + `submit` + `read` key in the demo's database; its plaintext."""
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(session, name=DEMO_KEY_NAME, scopes=DEMO_KEY_SCOPES)
    return plaintext


@dataclass
class BrokerPublisher:
    """The API's `Publisher` on the demo's in-memory broker: a publish returns once the
    subscribers (worker, recorder, review task step) have handled the record."""

    broker: KafkaBroker

    async def start(self) -> None:
        """Nothing to connect: the in-memory broker is running."""

    async def close(self) -> None:
        """Nothing to flush."""

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Hand the record to the topic's subscribers."""
        try:
            await self.broker.publish(value, topic=topic, key=key)
        except Exception as error:
            raise PublishUnavailable("the demo's pipeline failed", repr(error)) from error

    async def publish_many(
        self, topic: str, records: Sequence[Record]
    ) -> list[PublishUnavailable | None]:
        """One after the other (the handlers run in this process anyway)."""
        return await publish_each(self, topic, records)

    async def ping(self) -> None:
        """Always answers: the broker is in this process."""


@dataclass
class BrokerSink:
    """The review activities' `EventSink` on the in-memory broker. The activities run in a
    worker thread (they block on the database); each publish is run on the broker's loop."""

    broker: KafkaBroker
    loop: asyncio.AbstractEventLoop

    def publish(self, topic: str, event: Event) -> None:
        """Publish and wait until the subscribers (the recorder) handled it."""
        body = event.model_dump_json().encode()
        done = asyncio.run_coroutine_threadsafe(
            self.broker.publish(body, topic=topic, key=event.key()), self.loop
        )
        done.result(timeout=SINK_TIMEOUT_SECONDS)


@dataclass
class InProcessReviewWorkflows:
    """The API's `ReviewWorkflows` without Dapr: the decision runs the review workflow's own
    `persist_decision` activity at once (validate, record, publish `review.decisions`)."""

    activities: ReviewActivities

    async def raise_decision(self, review_id: str, payload: dict[str, Any]) -> None:
        """Persist the decision as the workflow would on receiving it."""
        decision = ReviewDecided.model_validate(payload)
        if decision.review_id != review_id:
            raise WorkflowUnavailable(f"the decision names review '{decision.review_id}'")
        # Refused (an invalid decision), the activity reopens the review itself, as the
        # workflow does before waiting again: the moderator sees it in the queue again.
        await asyncio.to_thread(self.activities.persist_decision, decision)

    async def close(self) -> None:
        """Nothing to release."""


class NoWorkflowHistory:
    """The API's `WorkflowHistory` without Dapr: every read answers 503, saying why."""

    async def list_instances(self, app: WorkflowApp, *, limit: int) -> WorkflowInstancesPublic:
        """Not available here."""
        raise SidecarUnavailable(NO_HISTORY)

    async def history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic:
        """Not available here."""
        raise SidecarUnavailable(NO_HISTORY)

    async def close(self) -> None:
        """Nothing to release."""


def dashboard_command() -> list[str]:
    """`moderation dashboard`, run by this interpreter."""
    return [sys.executable, "-m", "moderation.cli", "dashboard"]


def dashboard_env(settings: Settings) -> dict[str, str]:
    """The dashboard's environment: this demo's API, its port, on loopback."""
    return {
        **os.environ,
        "MODERATION_DASHBOARD__API_URL": f"http://{HOST}:{settings.api.port}",
        "MODERATION_DASHBOARD__PORT": str(settings.dashboard.port),
        "MODERATION_WORKER__SERVICE_HOST": HOST,
    }


async def _wait_until_up(
    url: str,
    what: str,
    *,
    deadline: float,
    stop: asyncio.Event,
    running: Callable[[], str | None],
) -> None:
    """Poll `url` until it answers 200; `running()` names why it never will (it died)."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        while not stop.is_set():
            if (failure := running()) is not None:
                raise DemoError(f"the {what} did not start: {failure}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise DemoError(f"the {what} did not answer at {url} in {START_TIMEOUT_SECONDS:g}s")
            await asyncio.sleep(0.2)


async def _serve_api(server: InternalServer) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits when it cannot bind or its lifespan fails: end the demo, not the loop.
        raise DemoError(f"the API could not start on {HOST}:{server.config.port}") from None


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C (and SIGTERM) set `stop`: the demo then shuts both servers down in order."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _task_failure(task: asyncio.Task[None]) -> str | None:
    if not task.done():
        return None
    error = task.exception()
    return str(error) if error is not None else "it stopped"


def _process_failure(process: subprocess.Popen[bytes] | None, log: Path) -> str | None:
    if process is None or process.poll() is None:
        return None
    return f"it exited with code {process.returncode} (log: {log})"


def start_dashboard(settings: Settings, log_file: Path) -> subprocess.Popen[bytes]:
    """`moderation dashboard` on the demo's API, its output in `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        return subprocess.Popen(  # noqa: S603 - our own CLI
            dashboard_command(),
            cwd=PROJECT_ROOT,
            env=dashboard_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C reaches the demo, which stops it in order.
            start_new_session=True,
        )


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def serve(
    settings: Settings,
    broker: KafkaBroker,
    engine: Engine,
    *,
    key: str,
    console: Console,
    log_file: Path,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the API and the dashboard on `broker` (started in memory) until `stop` is set or
    Ctrl-C; then stop the dashboard, then the API."""
    started = time.perf_counter()
    stop = stop or asyncio.Event()
    sink = BrokerSink(broker, asyncio.get_running_loop())
    app = build_app(
        settings,
        publisher=BrokerPublisher(broker),
        engine=engine,
        workflows=InProcessReviewWorkflows(ReviewActivities(engine, sink, settings)),
        workflow_history=NoWorkflowHistory(),
    )
    # Signals are the demo's own (`_stop_on_signals`), not uvicorn's.
    server = InternalServer(
        Config(app, host=HOST, port=settings.api.port, log_level="warning", access_log=False)
    )
    api_url = f"http://{HOST}:{settings.api.port}"
    dashboard_url = f"http://{HOST}:{settings.dashboard.port}"
    with _stop_on_signals(stop):
        api_task = asyncio.create_task(_serve_api(server))
        dashboard: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            with console.status("starting the API and the dashboard"):
                await _wait_until_up(
                    f"{api_url}/healthz",
                    "API",
                    deadline=deadline,
                    stop=stop,
                    running=lambda: _task_failure(api_task),
                )
                dashboard = start_dashboard(settings, log_file)
                await _wait_until_up(
                    f"{dashboard_url}/_stcore/health",
                    "dashboard",
                    deadline=deadline,
                    stop=stop,
                    running=lambda: _process_failure(dashboard, log_file),
                )
            if not stop.is_set():
                elapsed = time.perf_counter() - started
                _print_how_to(console, api_url, dashboard_url, key, elapsed)
                await _until(stop, dashboard, log_file)
        finally:
            if dashboard is not None:
                await asyncio.to_thread(_stop_process, dashboard)
            server.should_exit = True
            await api_task
    console.print("demo stopped: the dashboard and the API are down.")


async def _until(stop: asyncio.Event, dashboard: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for Ctrl-C; a dashboard that dies meanwhile ends the demo with its log's path."""
    while not stop.is_set():
        if dashboard.poll() is not None:
            raise DemoError(f"the dashboard exited with code {dashboard.returncode} (log: {log})")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def _print_how_to(
    console: Console, api_url: str, dashboard_url: str, key: str, elapsed: float
) -> None:
    console.rule(f"serving in embedded mode (up in {elapsed:.1f}s)")
    console.print(f"dashboard  {dashboard_url}")
    console.print(f"API        {api_url}  (OpenAPI: {api_url}/docs)")
    console.print(f"sign-in key  {key}", soft_wrap=True)
    console.print(
        "[dim]sign in with the key, open the Queue, claim and decide; History shows the post, "
        "Audit who did what. Submit another post:[/dim]"
    )
    console.print(
        f"curl -s -X POST {api_url}/v1/posts -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' "
        """-d '{"text": "click here to win a free prize", "author_id": "demo-user"}'""",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    console.print("[dim]Ctrl-C stops both.[/dim]")
