"""Which models a classifier worker serves, kept in step with the model registry.

At start-up the worker serves the registry's fast champion (`model_versions`). When there is none,
when its artifact does not load or when the registry does not answer, it serves the base model
(`ensure_fast_model`) and registers it as champion only if the registry has none: a restart must
never demote a model the nightly promoted. Scoring never waits for the registry beyond that
start-up read.

Then it polls the registry every `models.reload_seconds`. A new fast champion is loaded in a thread
and swapped in whole (a batch in flight keeps the scorer it started with), so its verdicts carry
the new version. An `agent-lora` champion's version is the served name of a LoRA adapter (vLLM
selects adapters by model name): the agent switches to it for the runs that start next, and back
to its base model when there is none. A champion that does not load, or a registry that does not
answer, leaves the served models as they are until a later poll.

A registry row is not trusted (issue 11): a fast champion is loaded only from a directory inside
`models.artifact_dir / "fast"` and only when its files have the row's `artifact_sha256`
(`moderation.classifier.artifacts`); the artifact is plain arrays, never a pickle. A refused
champion is logged and counted (`outcome="refused"`) and the worker keeps the model it serves.
A worker whose database role may only read the registry (the production grants) does not
register its base model; the nightly does.

The watch owns no worker state: it hands each fast model to serve to the worker's `serve`
callback, and switches the served name of the agent stage it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge
from sqlalchemy.exc import ProgrammingError
from sqlmodel import Session

from moderation.classifier.artifacts import ArtifactRefused, artifact_digest, load_checked
from moderation.db import crud
from moderation.db.engine import create_tables
from moderation.db.models import ModelStatus
from moderation.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from moderation.classifier.fast.model import FastModel

logger = logging.getLogger(__name__)

FAST = "fast"
AGENT_LORA = "agent-lora"
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for a missing grant

MODEL_INFO = Gauge(
    "moderation_worker_model_info",
    "the models this worker serves (value 1); kind fast: stage 1's version, kind agent: the "
    "model name the agent sends (a LoRA adapter or the base model)",
    ["kind", "version"],
)
MODEL_RELOADS = Counter(
    "moderation_worker_model_reloads_total",
    "model switches at start-up and on promotion, by kind and outcome (failed: did not load; "
    "refused: outside the artifact store, of another digest than registered, or a pickle)",
    ["kind", "outcome"],
)


class ServedAgent(Protocol):
    """What the watch needs of the agent stage (`moderation.classifier.cascade.AgentStage`)."""

    base_model_name: str
    # The served name the next runs use: a LoRA adapter's, or the base model's.
    model_name: str


@dataclass(frozen=True)
class Champion:
    version: str
    artifact_uri: str
    artifact_sha256: str | None = None


@dataclass(frozen=True)
class Champions:
    """What the registry names, read in one session."""

    fast: Champion | None
    adapter: str | None  # the agent-lora champion's served name


def register_champion(
    engine: Engine, model: FastModel, settings: Settings, *, keep_existing: bool = False
) -> bool:
    """Record `model` in the registry as the fast champion; returns whether it did.

    With `keep_existing`, a fast champion already in the registry stays champion. Two workers
    starting at once on an empty registry may both register: the same version is idempotent.
    """
    create_tables(engine)
    with Session(engine) as session:
        if keep_existing and crud.get_champion(session, kind=FAST) is not None:
            return False
        path = fast_store(settings) / model.version
        crud.register_model_version(
            session,
            kind=FAST,
            version=model.version,
            artifact_uri=str(path),
            artifact_sha256=artifact_digest(path),
            metrics=model.metrics,
            status=ModelStatus.CHAMPION,
        )
    return True


def fast_store(settings: Settings) -> Path:
    """Where fast-model artifacts live; the registry may name nothing outside it."""
    return settings.models.artifact_dir / FAST


def read_champions(engine: Engine) -> Champions:
    with Session(engine) as session:
        fast = crud.get_champion(session, kind=FAST)
        adapter = crud.get_champion(session, kind=AGENT_LORA)
        return Champions(
            fast=Champion(fast.version, fast.artifact_uri, fast.artifact_sha256)
            if fast is not None
            else None,
            adapter=adapter.version if adapter is not None else None,
        )


def prepare_and_read_champions(engine: Engine) -> Champions:
    """`read_champions` after creating missing tables: a worker may start on a fresh database."""
    create_tables(engine)
    return read_champions(engine)


def load_champion(champion: Champion, store: Path) -> FastModel:
    """The champion's artifact, loaded (blocking: run it in a thread).

    Raises:
        ArtifactRefused: the uri is outside `store`, or the files do not have the registered
            digest, or are not of the current (pickle-free) format.
    """
    from moderation.classifier.fast.model import FastModel

    # A plain path or a file:// URI naming a directory inside the store; read once, checked,
    # then parsed from the bytes that were checked.
    path, files = load_checked(champion.artifact_uri, store, champion.artifact_sha256)
    model = FastModel.from_files(files, where=str(path))
    if model.version != champion.version:
        # Served anyway, it would never match the champion and be reloaded at every poll.
        raise ValueError(f"{champion.artifact_uri} holds {model.version}, not {champion.version}")
    return model


class RegistryWatch:
    """Reports the registry's fast champion to `serve` and follows promotions (module docstring).

    Args:
        engine: the registry's database.
        settings: the artifact store and the poll interval come from here.
        serve: called with each fast model to serve from the next batch on (start-up included).
        agent: the agent stage whose served model name follows the `agent-lora` champion; None
            when the worker runs no agent.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        serve: Callable[[FastModel], None],
        agent: ServedAgent | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.agent = agent
        self._serve_model = serve
        self.served: FastModel | None = None  # the fast model last handed to `serve`
        self._task: asyncio.Task[None] | None = None
        # The base model served while the registry could not be told about it.
        self._unregistered: FastModel | None = None
        self._failed: set[str] = set()  # champions whose artifact did not load: logged once
        self._may_register = True  # False once the database refused the worker's registration
        self._registry_down = False  # logged when it stops answering and when it answers again
        self._shown: dict[str, str] = {}  # kind → version labelled in MODEL_INFO

    async def start(self, base_model: Callable[[], FastModel]) -> None:
        """Serve the champion, or `base_model()` (called in a thread), and start polling."""
        champions = await self._read(prepare_and_read_champions)
        if champions is not None:
            self._follow_agent(champions.adapter)
        model = None
        if champions is not None and champions.fast is not None:
            model = await self._load(champions.fast)
        if model is None:
            model = await asyncio.to_thread(base_model)
            self._unregistered = model
            if champions is not None:
                await self._register_base()
        self._serve(model)
        self._task = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> None:
        """One round: follow the registry's champions (never raises)."""
        if self._unregistered is not None and not await self._register_base():
            return
        champions = await self._read()
        if champions is None:
            return
        self._follow_agent(champions.adapter)
        served = self.served
        champion = champions.fast
        if champion is None or (served is not None and served.version == champion.version):
            return
        model = await self._load(champion)
        if model is not None:
            logger.info(
                "fast model %s → %s (the registry's champion)",
                served.version if served is not None else None,
                model.version,
            )
            self._serve(model)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.models.reload_seconds)
            await self.poll()

    async def _read(self, read: Callable[[Engine], Champions] = read_champions) -> Champions | None:
        """The registry's champions, or None when it does not answer."""
        try:
            champions = await asyncio.to_thread(read, self.engine)
        except Exception as error:  # noqa: BLE001 - any registry failure: serve what we have
            self._unreachable(error)
            return None
        self._reachable()
        return champions

    async def _register_base(self) -> bool:
        """Register the base model unless a champion exists; False when the registry failed."""
        model = self._unregistered
        if model is None or not self._may_register:
            return True
        try:
            registered = await asyncio.to_thread(
                register_champion, self.engine, model, self.settings, keep_existing=True
            )
        except ProgrammingError as error:
            if getattr(error.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                self._unreachable(error)
                return False
            # A read-only role (production grants): registering is the nightly's job.
            logger.info(
                "the database role may not register models; serving the base model %s "
                "unregistered (the nightly registers it)",
                model.version,
            )
            self._may_register = False
            return True
        except Exception as error:  # noqa: BLE001 - retried at the next poll
            self._unreachable(error)
            return False
        self._reachable()
        self._unregistered = None
        if registered:
            logger.info("registered the base model %s as the fast champion", model.version)
        return True

    def _unreachable(self, error: Exception) -> None:
        if not self._registry_down:
            logger.warning("model registry not reachable (%s); serving the current models", error)
        self._registry_down = True

    def _reachable(self) -> None:
        if self._registry_down:
            logger.info("model registry reachable again")
        self._registry_down = False

    async def _load(self, champion: Champion) -> FastModel | None:
        """The champion's model, or None (logged once per version) when it does not load."""
        try:
            model = await asyncio.to_thread(load_champion, champion, fast_store(self.settings))
        except ArtifactRefused as refused:
            MODEL_RELOADS.labels(kind=FAST, outcome="refused").inc()
            if champion.version not in self._failed:
                self._failed.add(champion.version)
                logger.error(
                    "fast champion %s REFUSED (%s) from %s: %s; serving the current model",
                    champion.version,
                    refused.reason,
                    champion.artifact_uri,
                    refused,
                )
            return None
        except Exception as error:  # noqa: BLE001 - a bad artifact must not stop the worker
            MODEL_RELOADS.labels(kind=FAST, outcome="failed").inc()
            if champion.version not in self._failed:
                self._failed.add(champion.version)
                logger.error(
                    "fast champion %s does not load from %s: %s; serving the current model",
                    champion.version,
                    champion.artifact_uri,
                    error,
                )
            return None
        self._failed.discard(champion.version)
        MODEL_RELOADS.labels(kind=FAST, outcome="loaded").inc()
        return model

    def _serve(self, model: FastModel) -> None:
        self.served = model
        self._serve_model(model)
        self._show(FAST, model.version)

    def _follow_agent(self, adapter: str | None) -> None:
        agent = self.agent
        if agent is None:
            return
        name = adapter or agent.base_model_name
        if agent.model_name != name:
            logger.info(
                "agent model %s → %s (%s)",
                agent.model_name,
                name,
                "the LoRA champion" if adapter else "no LoRA champion: the base model",
            )
            agent.model_name = name
            MODEL_RELOADS.labels(kind="agent", outcome="loaded").inc()
        self._show("agent", name)

    def _show(self, kind: str, version: str) -> None:
        previous = self._shown.get(kind)
        if previous == version:
            return
        if previous is not None:
            MODEL_INFO.remove(kind, previous)
        MODEL_INFO.labels(kind=kind, version=version).set(1)
        self._shown[kind] = version
