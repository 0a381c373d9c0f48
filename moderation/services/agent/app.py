"""The agent service: a Dapr app that runs the classifier agent on every handed-off post.

The worker decides the clear cases and hands each uncertain post to `agent.requested` (an
`AgentRequested`), committing its offsets without waiting for any LLM. This service's daprd
delivers that topic (Kafka pub/sub, group = its app id, raw payload), and for each event the
service schedules the post's workflow (`moderation.services.agent.workflow`) unless it exists:
a redelivered hand-off starts nothing new. A payload that is not an `AgentRequested` goes to
`agent.requested.dlq` with its error; when Dapr cannot schedule, the delivery is answered RETRY
and Dapr redelivers it.

Back-pressure: when `agent_service.max_in_flight` runs are already in flight in this replica, or
the LLM's circuit breaker is open, the post's workflow is still scheduled (its one outcome) but
only sends the post to review with the reason: never to allow. The lag of the agent service's
consumer group on `agent.requested` is what KEDA scales it on (`k8s/`).

`build_app(settings)` is the process; run it with `moderation agent-service` next to its daprd
(`--app-port settings.agent_service.service_port`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from agents import ModelProvider
from dapr.clients import DaprClient
from dapr.ext.workflow import DaprWorkflowClient
from fastapi import FastAPI
from prometheus_client import Counter, Gauge
from sqlalchemy import Engine

from moderation.classifier.agent import AGENT_NAME
from moderation.classifier.agent_steps import AgentSteps, first_message
from moderation.db.engine import make_engine
from moderation.events import AgentRequested
from moderation.llm.dapr_conversation import DaprConversationProvider, ModelRoute
from moderation.llm.provider import (
    ChatCompletionsProvider,
    create_client,
    invocation_base_url,
)
from moderation.mcp_client import agent_decision_log, mcp_tools
from moderation.services.agent.workflow import (
    WORKFLOW_NAME,
    AgentActivities,
    build_runtime,
    instance_id,
    workflow_input,
)
from moderation.services.sidecar.app import require_app_token, serve_dapr_app, subscribe_topic
from moderation.services.sidecar.config import LiveConfigWatch
from moderation.services.sidecar.instances import read_workflow_state
from moderation.services.sidecar.pubsub import DaprSink
from moderation.services.sidecar.registry import RegistryEntry, package_version, register
from moderation.services.sidecar.tokens import use_api_token
from moderation.services.worker.registry_watch import read_champions
from moderation.settings import Settings
from moderation.telemetry import configure_tracing

logger = logging.getLogger(__name__)
MCP_SERVER_NAME = "moderation-mcp"

SUBSCRIPTION_ROUTE = "/events/agent-requested"
RUNS_STARTED = Counter(
    "moderation_agent_workflows_started_total",
    "agent workflows scheduled, by route (agent, or shed to review and why)",
    ["route"],
)
DUPLICATES = Counter(
    "moderation_agent_handoffs_duplicate_total", "hand-offs whose workflow already existed"
)
DEAD_LETTERS = Counter("moderation_agent_dead_letters_total", "hand-offs dead-lettered")
IN_FLIGHT = Gauge("moderation_agent_workflows_in_flight", "agent workflows running here")


class InFlight:
    """The runs this replica scheduled and has not finished (back-pressure's measure).

    Runs resumed after a restart are not counted: they were admitted before it.
    """

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, instance: str) -> None:
        with self._lock:
            self._ids.add(instance)
            IN_FLIGHT.set(len(self._ids))

    def discard(self, instance: str) -> None:
        with self._lock:
            self._ids.discard(instance)
            IN_FLIGHT.set(len(self._ids))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class Scheduler:
    """Schedules each hand-off's workflow once, or sheds it to review when there is no room."""

    def __init__(
        self, settings: Settings, client: DaprWorkflowClient, steps: AgentSteps, runs: InFlight
    ) -> None:
        self.settings = settings
        self.client = client
        self.steps = steps
        self.runs = runs

    def apply_settings(self, settings: Settings) -> None:
        """Schedule with `settings` from now on (the live configuration changed)."""
        self.settings = settings
        self.steps.apply_settings(settings)

    def shed_reason(self) -> tuple[str, str] | None:
        if not self.settings.agent.enabled:
            return "agent_disabled", "the agent is switched off in the live configuration"
        limit = self.settings.agent_service.max_in_flight
        if len(self.runs) >= limit:
            return "saturated", f"{len(self.runs)} agent runs in flight (max {limit})"
        if self.steps.breaker.is_open:
            return "circuit_open", "the LLM failed repeatedly; retrying later"
        return None

    def schedule(self, event: AgentRequested, trace: dict[str, str] | None = None) -> str:
        """Start the post's run unless it exists; returns the route taken."""
        instance = instance_id(event.post_id, self.settings.models.policy_version)
        # Read first: Dapr 1.18 recreates a *completed* instance when its id is scheduled again
        # (the orchestrator's `createIfCompleted`), which would run the post a second time.
        if read_workflow_state(self.client, instance) is not None:
            DUPLICATES.inc()
            return "duplicate"
        shed = self.shed_reason()
        run = workflow_input(
            event,
            message=first_message(event),
            model=self.steps.model_name,
            max_turns=self.settings.agent.max_turns,
            shed=shed,
            trace=trace,
            vision=self.steps.vision,
        )
        try:
            self.client.schedule_new_workflow(WORKFLOW_NAME, input=run, instance_id=instance)
        except Exception:
            # Two deliveries raced: the other one scheduled it.
            if read_workflow_state(self.client, instance) is None:
                raise
            DUPLICATES.inc()
            return "duplicate"
        route = "agent" if shed is None else shed[0]
        if shed is None:
            self.runs.add(instance)
        RUNS_STARTED.labels(route=route).inc()
        return route


def served_model(engine: Engine, base: str) -> str:
    """The model name runs use: the registry's `agent-lora` champion (a LoRA adapter vLLM
    selects by name), else the base model."""
    return read_champions(engine).adapter or base


async def announce(settings: Settings, steps: AgentSteps) -> None:
    """Register the agent (and the MCP server it uses) in the agent registry; a registry that
    cannot be reached is logged, never fatal."""
    service, topics = settings.agent_service, settings.kafka.topics
    entries = [
        RegistryEntry(
            name=AGENT_NAME,
            kind="agent",
            version=package_version(),
            model=steps.model_name,
            policy_version=settings.models.policy_version,
            endpoints={
                "dapr_app_id": service.app_id,
                "handoffs": f"kafka:{topics.agent_requested}",
                "http": f"http://{settings.worker.service_host}:{service.service_port}",
            },
            tools=sorted(steps.tools),
        )
    ]
    agent = settings.agent
    if agent.mcp_url:
        key = agent.mcp_api_key.get_secret_value() if agent.mcp_api_key else None
        try:
            async with mcp_tools(agent.mcp_url, key) as tools:
                names = await tools.names()
        except Exception as error:  # noqa: BLE001 - listed without its tools
            logger.warning("MCP server %s did not list its tools (%s)", agent.mcp_url, error)
            names = []
        entries.append(
            RegistryEntry(
                name=MCP_SERVER_NAME,
                kind="mcp-server",
                version=package_version(),
                policy_version=settings.models.policy_version,
                endpoints={"mcp": agent.mcp_url},
                tools=names,
            )  # fmt: skip
        )

    def write() -> None:
        with DaprClient(service.dapr_grpc_endpoint) as client:
            for entry in entries:
                register(client, settings.dapr.registry_store_name, entry)

    try:
        await asyncio.to_thread(write)
    except Exception as error:  # noqa: BLE001 - the registry is informative
        logger.warning("agent registry not updated (%s)", error)


async def follow_adapter(
    engine: Engine, steps: AgentSteps, base: str, every: float, on_change: Any = None
) -> None:
    """Switch the runs that start next to the promoted adapter (and back), as the worker's
    agent did; a run keeps the name it was scheduled with."""
    while True:
        try:
            name = await asyncio.to_thread(served_model, engine, base)
        except Exception as error:  # noqa: BLE001 - the registry may be down: keep serving
            logger.warning(
                "agent model registry unreadable (%s); keeping %s", error, steps.model_name
            )
        else:
            if name != steps.model_name:
                logger.info("agent model %s → %s", steps.model_name, name)
                steps.model_name = name
                if on_change is not None:
                    await on_change()
        await asyncio.sleep(every)


def model_provider(settings: Settings) -> ModelProvider:
    """How the agent reaches its model (`agent_service.llm_route`)."""
    service = settings.agent_service
    if service.llm_route == "dapr-conversation":
        route = ModelRoute(
            component=service.conversation_component,
            address=service.dapr_grpc_endpoint,
            # The sidecar tries twice, each bounded by the component's resiliency timeout
            # (components/resiliency.yaml, = llm.timeout_seconds); this bounds a silent daprd.
            deadline_seconds=2 * settings.llm.timeout_seconds + 5,
        )
        return DaprConversationProvider(route, settings.llm.model)
    if service.llm_route == "dapr-invocation":
        token = settings.dapr.api_token
        via_dapr = invocation_base_url(
            settings.llm.base_url,
            f"http://{service.dapr_host}:{service.dapr_http_port}",
            service.llm_http_endpoint,
        )
        client = create_client(
            settings.llm, via_dapr=via_dapr, dapr_token=token.get_secret_value() if token else None
        )
        return ChatCompletionsProvider(client, settings.llm.model)
    return ChatCompletionsProvider(create_client(settings.llm), settings.llm.model)


def build_app(settings: Settings) -> FastAPI:
    """The agent service; only daprd (with `dapr.app_token`) may call it, probes excepted.

    Raises:
        ValueError: no app token outside development (anyone who reaches the port could then
            start agent runs).
    """
    topics = settings.kafka.topics
    service = settings.agent_service
    state: dict[str, Any] = {}
    require_app_token(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        use_api_token(settings)  # before the first SDK client
        engine = make_engine(settings)
        steps = AgentSteps(settings, model_provider(settings), agent_decision_log(settings, engine))
        sink = DaprSink(settings, service.dapr_grpc_endpoint)
        runs = InFlight()
        activities = AgentActivities(settings, steps, sink, on_done=runs.discard)
        runtime = build_runtime(settings, activities)
        runtime.start()
        announced = asyncio.create_task(announce(settings, steps))
        # The conversation route's model is its component's: a promoted adapter cannot be
        # followed there.
        follow = service.llm_route != "dapr-conversation"
        watch = asyncio.create_task(
            follow_adapter(
                engine, steps, steps.model_name, settings.models.reload_seconds,
                on_change=lambda: announce(settings, steps),
            ) if follow else asyncio.sleep(0)
        )  # fmt: skip
        client = DaprWorkflowClient(host="127.0.0.1", port=str(service.dapr_grpc_port))
        scheduler = Scheduler(settings, client, steps, runs)
        live = LiveConfigWatch(settings, service.dapr_grpc_endpoint, scheduler.apply_settings)
        live.start()
        state.update(runtime=runtime, sink=sink, scheduler=scheduler)
        try:
            yield
        finally:
            live.stop()
            watch.cancel()
            announced.cancel()
            runtime.shutdown()
            client.close()
            sink.close()
            engine.dispose()

    app = FastAPI(title="agent service", lifespan=lifespan)
    serve_dapr_app(app, settings, state)

    def schedule(event: AgentRequested, trace: dict[str, str] | None) -> None:
        state["scheduler"].schedule(event, trace)

    subscribe_topic(
        app, settings, topic=topics.agent_requested, route=SUBSCRIPTION_ROUTE,
        event_type=AgentRequested, consumer_group=service.app_id,
        sink=lambda: state["sink"], act=schedule, dead_letters=DEAD_LETTERS,
    )  # fmt: skip
    return app


def run_agent_service(settings: Settings) -> None:
    """`moderation agent-service`: serve until stopped."""
    configure_tracing("agent-service", settings)
    uvicorn.run(
        build_app(settings),
        host=settings.worker.service_host,
        port=settings.agent_service.service_port,
        log_level="warning",
        # The Dapr workflow runtime's gRPC clients: the standard loop they are tested on.
        loop="asyncio",
    )
