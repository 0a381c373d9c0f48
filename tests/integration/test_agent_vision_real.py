"""The agent service with `agent.vision` on the real stack: Kafka, PostgreSQL, daprd (placement,
scheduler, the PostgreSQL state store), and the worker, recorder and agent service as processes.

A vision-language model cannot run on this machine (no GPU, no model hub), so a scripted
OpenAI-compatible server stands in for it (`scripted_llm_server.py`: a tool call, then a verdict
that allows), reached as vLLM would be, through the agent service's daprd. A post with two
photos (stored as the API stores them) is uncertain at stage 1 (it never allows images); the
agent's every model call carries both photos as `image_url` parts with `data:` URLs, the allow
stands without `images-unseen`, and the workflow history daprd wrote to PostgreSQL holds the
images' hashes, never their bytes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.devtools.stack.dapr import DaprRuntime
from moderation.devtools.stack.kafka import KafkaBroker
from moderation.devtools.stack.postgres import PostgresCluster
from moderation.devtools.stack.services import PipelineServices
from moderation.events import ImageRef, PostSubmitted
from moderation.images.intake import ImageLimits, prepare
from moderation.images.store import LocalImageStore
from moderation.settings import Settings
from moderation.taxonomy import Stage
from tests import crud_helpers
from tests.image_samples import encode, photo
from tests.integration.scripted_llm_server import ScriptedChatServer
from tests.integration.streams import (
    STAGE_ONE_DECIDES_NOTHING,
    produce,
    running_services,
    topics_of_their_own,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vision_settings(settings: Settings, kafka: KafkaBroker) -> Iterator[Settings]:
    with topics_of_their_own(settings, "vision") as isolated:
        yield isolated


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vision-store")


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    server = ScriptedChatServer(delay=0.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def services(
    vision_settings: Settings,
    chat: ScriptedChatServer,
    store_dir: Path,
    postgres: PostgresCluster,
    dapr: DaprRuntime,
) -> Iterator[PipelineServices]:
    running = PipelineServices(
        vision_settings,
        extra_env={
            "MODERATION_LLM__BASE_URL": chat.base_url,
            **STAGE_ONE_DECIDES_NOTHING,
            "MODERATION_AGENT__VISION": "true",
            "MODERATION_IMAGES__STORE__LOCAL_DIR": str(store_dir),
        },
    )
    with running_services(running, "recorder", "worker", "agent", dapr=dapr):
        yield running


def stored(store_dir: Path, *pictures: Image.Image) -> list[ImageRef]:
    """As the API stores them: sanitized, then put under their SHA-256."""
    store = LocalImageStore(store_dir)
    limits = ImageLimits.from_settings(Settings().images)
    refs = []
    for picture in pictures:
        prepared = prepare(encode(picture, "JPEG", quality=90), limits)
        refs.append(prepared.image_ref(store.put(prepared.data, prepared.content_type)))
    return refs


def agent_verdict_row(engine: Engine, post_id: str) -> Any:
    with Session(engine) as session:
        rows = crud_helpers.list_verdicts(session, post_ids=[post_id], stage=Stage.AGENT)
    return rows[0] if rows else None


def image_urls(body: dict[str, Any]) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


def workflow_state(settings: Settings, post_id: str) -> list[bytes]:
    """Every row daprd's state store keeps for the post's agent workflow (history, inbox...)."""
    with psycopg.connect(settings.db.libpq_dsn(settings.db.dapr_state_name)) as conn:
        rows = conn.execute(
            "SELECT value FROM state WHERE key LIKE %s", (f"%agent-{post_id}-%",)
        ).fetchall()
    return [bytes(row[0]) for row in rows]


@pytest.mark.timeout(420)
async def test_a_vision_agent_sees_the_photos_and_the_history_keeps_only_their_hashes(
    services: PipelineServices, vision_settings: Settings, store_dir: Path, read_model: Engine,
    chat: ScriptedChatServer,
) -> None:  # fmt: skip
    refs = stored(store_dir, photo("coffee").resize((1600, 1200)), photo("astronaut"))
    post = PostSubmitted(
        post_id=f"vision-{uuid.uuid4().hex[:10]}",
        text="hello, a photo of my breakfast",
        author_id="vision-author",
        images=refs,
    )
    await produce(vision_settings, [post])
    verdict = await asyncio.to_thread(
        wait_for, lambda: agent_verdict_row(read_model, post.post_id), 240, "the agent's verdict"
    )

    bodies = [b for b in chat.bodies if post.post_id in json.dumps(b["messages"])]
    assert len(bodies) == 2  # the tool turn, then the answer
    for body in bodies:
        urls = image_urls(body)
        assert len(urls) == 2
        sizes = []
        for url in urls:
            assert url.startswith("data:image/jpeg;base64,")
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as seen:
                sizes.append(seen.size)
        assert sizes == [(768, 576), (512, 512)]
    assert verdict.decision == "allow"
    assert "images-unseen" not in verdict.signals

    state = await asyncio.to_thread(workflow_state, vision_settings, post.post_id)
    recorded = b"".join(state)
    assert refs[0].sha256.encode() in recorded  # these are the run's rows
    assert b"data:image" not in recorded and b"base64," not in recorded
    sent = sum(len(json.dumps(body)) for body in bodies)
    print(f"\nsent to the model: {sent} bytes; workflow state: {len(recorded)} bytes")  # noqa: T201
    assert len(recorded) < sent / 4
