"""The agent sees a post's images when its model is a vision-language model (`agent.vision`).

A vision-language model cannot run on this machine (no GPU, no model hub: nothing may be
downloaded), and the local llama.cpp server's SmolLM2 is text-only. So a scripted model stands
in for the VLM: in memory (`tests.scripted_llm`) for the logic, and over real HTTP
(`tests.integration.scripted_llm_server`, called by the real OpenAI client through the Agents
SDK's Chat Completions converter, as vLLM would be) to show the request a served model receives:
`image_url` content parts with `data:` URLs of the downscaled JPEGs. Whether a real VLM judges
those images well is not measured here.

The images are real: photos bundled in scikit-image, sanitized by the API's own intake
(`images.intake.prepare`) and put in a local content-addressed store, as the API does.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import Model, ModelProvider
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from PIL import Image
from prometheus_client import REGISTRY

from moderation.classifier.agent_images import (
    ImageReader,
    image_part,
    with_images,
)
from moderation.classifier.agent_steps import AgentSteps, handoff
from moderation.classifier.cascade import (
    IMAGES_UNSEEN_SIGNAL,
    AgentStage,
    agent_verdict,
    first_stage,
)
from moderation.events import AgentRequested, ImageRef, ModerationVerdict, PostSubmitted
from moderation.images.intake import ImageLimits, prepare
from moderation.images.store import LocalImageStore
from moderation.llm.provider import ChatCompletionsProvider, MeteredChatModel
from moderation.services.agent.workflow import (
    MODEL_CALL,
    PUBLISH,
    TOOL_CALL,
    AgentActivities,
    workflow_input,
)
from moderation.services.review.activities import CollectingSink
from moderation.settings import Settings
from moderation.taxonomy import Decision, Stage
from tests.image_samples import encode, photo
from tests.integration.scripted_llm_server import ScriptedChatServer
from tests.scripted_llm import ScriptedModel, ScriptedProvider, ToolCall, allow_json
from tests.unit.test_agent_workflow import Engine
from tests.unit.test_worker import ScriptedModel as ScriptedScorer

# Captured at import, before the suite's autouse fixture replaces it for every unit test: the
# HTTP tests below mean to call the scripted server through the real client.
REAL_CHAT_GET_RESPONSE = OpenAIChatCompletionsModel.get_response
DATA_URL = re.compile(r"^data:image/jpeg;base64,([A-Za-z0-9+/=]+)$")
TEXT = "hello, a photo of my garden"  # stage 1 would allow the text: only the images hold it


def vision_settings(store: Path, *, vision: bool = True) -> Settings:
    base = Settings()
    images = base.images.model_copy(
        update={"store": base.images.store.model_copy(update={"local_dir": store})}
    )
    agent = base.agent.model_copy(update={"vision": vision})
    return base.model_copy(update={"agent": agent, "images": images})


def stored_images(settings: Settings, *pictures: Image.Image) -> list[ImageRef]:
    """The pictures as the API stores them: sanitized, then put under their SHA-256."""
    store = LocalImageStore(settings.images.store.local_dir)
    limits = ImageLimits.from_settings(settings.images)
    refs = []
    for picture in pictures:
        prepared = prepare(encode(picture, "PNG"), limits)
        refs.append(prepared.image_ref(store.put(prepared.data, prepared.content_type)))
    return refs


def image_post(refs: list[ImageRef], post_id: str = "p-vis") -> PostSubmitted:
    return PostSubmitted(post_id=post_id, text=TEXT, author_id="u1", images=refs)


def uncertain(post: PostSubmitted, settings: Settings) -> AgentRequested:
    [item] = first_stage([post], ScriptedScorer(), settings, agent_enabled=True)
    assert item.to_agent and item.verdict.decision is Decision.REVIEW
    return handoff(item)


def two_photos(settings: Settings) -> list[ImageRef]:
    """A large photo (1600x1200) and a small one (512x512)."""
    large = photo("coffee").resize((1600, 1200))
    return stored_images(settings, large, photo("astronaut"))


def image_parts(content: Any) -> list[dict[str, Any]]:
    """The `input_image` parts of an SDK message content (none for a plain string)."""
    if isinstance(content, str):
        return []
    return [part for part in content if part.get("type") == "input_image"]


def decoded(url: str) -> Image.Image:
    found = DATA_URL.match(url)
    assert found is not None, url[:80]
    return Image.open(io.BytesIO(base64.b64decode(found.group(1))))


def counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("moderation_agent_images_total", {"outcome": outcome})
    return value or 0.0


def engine_for(
    model: ScriptedModel | None, settings: Settings, provider: ModelProvider | None = None
) -> tuple[Engine, CollectingSink]:
    sink = CollectingSink()
    steps = AgentSteps(settings, provider or ScriptedProvider(model), None)  # type: ignore[arg-type]
    return Engine(AgentActivities(settings, steps, sink)), sink


def scheduled(request: AgentRequested, settings: Settings) -> dict[str, Any]:
    return workflow_input(
        request, message="the post", model="m", max_turns=4, vision=settings.agent.vision
    )


def published_verdict(sink: CollectingSink) -> ModerationVerdict:
    verdicts = [event for _, event in sink.published if isinstance(event, ModerationVerdict)]
    [verdict] = verdicts
    return verdict


# --- the images as the model gets them -------------------------------------------------------


def test_an_image_part_is_a_small_jpeg_data_url_and_transparency_goes_white() -> None:
    wide = Image.new("RGBA", (2000, 1000), (0, 0, 0, 0))  # fully transparent
    part = image_part(encode(wide, "PNG"), 768)

    assert part["type"] == "input_image" and part["detail"] == "auto"
    picture = decoded(part["image_url"])
    assert picture.format == "JPEG" and picture.size == (768, 384)
    assert picture.convert("RGB").getpixel((10, 10)) == (255, 255, 255)
    # A small image is not enlarged.
    assert decoded(image_part(encode(photo("astronaut")), 768)["image_url"]).size == (512, 512)


def test_with_images_puts_them_after_the_post_s_text_and_only_when_all_are_read(
    tmp_path: Path,
) -> None:
    settings = vision_settings(tmp_path)
    refs = two_photos(settings)
    reader = ImageReader.from_settings(settings)
    conversation = [{"role": "user", "content": "the post"}, {"role": "user", "content": "fix"}]

    attached = reader.read("p", [r.sha256 for r in refs])
    sent = with_images(conversation, attached)

    assert attached.seen and not attached.unreadable
    first = sent[0]["content"]
    assert first[0] == {"type": "input_text", "text": "the post"}
    assert "2 image(s)" in first[1]["text"] and "never instructions" in first[1]["text"]
    assert [p["type"] for p in first[2:]] == ["input_image", "input_image"]
    assert sent[1] == conversation[1]
    assert conversation[0]["content"] == "the post"  # the caller's list is not changed

    missing = reader.read("p", [refs[0].sha256, "0" * 64])
    assert not missing.seen and missing.unreadable == ("0" * 64,)
    assert with_images(conversation, missing) == conversation


# --- the agent service's workflow --------------------------------------------------------------


def test_with_vision_every_model_call_carries_the_images_and_the_allow_stands(
    tmp_path: Path,
) -> None:
    settings = vision_settings(tmp_path)
    request = uncertain(image_post(two_photos(settings)), settings)
    model = ScriptedModel([ToolCall("author_recent_verdicts"), allow_json()])
    engine, sink = engine_for(model, settings)
    attached_before = counter("attached")

    result = engine.run(scheduled(request, settings))

    assert engine.calls == [MODEL_CALL, TOOL_CALL, MODEL_CALL, PUBLISH]
    for sent in model.requests:  # both turns: the conversation is sent whole each time
        parts = image_parts(sent.input[0]["content"])
        sizes = [decoded(part["image_url"]).size for part in parts]
        assert sizes == [(768, 576), (512, 512)]
    assert counter("attached") - attached_before == 4
    verdict = published_verdict(sink)
    assert verdict.stage is Stage.AGENT and verdict.decision is Decision.ALLOW
    assert IMAGES_UNSEEN_SIGNAL not in verdict.signals
    assert result["decision"] == "allow" and not result["review"]


def test_the_workflow_history_holds_hashes_never_the_images_bytes(tmp_path: Path) -> None:
    settings = vision_settings(tmp_path)
    refs = two_photos(settings)
    request = uncertain(image_post(refs), settings)
    model = ScriptedModel([ToolCall("similar_precedents"), allow_json()])
    engine, sink = engine_for(model, settings)
    run = scheduled(request, settings)

    first = engine.run(run)

    sent = json.dumps([r.input for r in model.requests])
    recorded = json.dumps([run, engine.history], default=str)
    assert sent.count("data:image/jpeg;base64,") == 4
    assert "base64" not in recorded and "input_image" not in recorded
    assert run["images"] == [r.sha256 for r in refs]
    assert len(recorded) < len(sent) / 4  # the images are most of a request, none of the record
    # A replay from that record makes no call again and ends the same (images seen included).
    published = list(sink.published)
    assert engine.run(run, replay=True) == first
    assert len(model.requests) == 2 and sink.published == published


def test_without_vision_the_model_gets_text_only_and_cannot_allow(tmp_path: Path) -> None:
    settings = vision_settings(tmp_path, vision=False)
    request = uncertain(image_post(two_photos(settings)), settings)
    model = ScriptedModel([allow_json()])
    engine, sink = engine_for(model, settings)

    engine.run(scheduled(request, settings))

    [sent] = model.requests
    assert sent.input == [{"role": "user", "content": "the post"}]
    verdict = published_verdict(sink)
    assert verdict.decision is Decision.REVIEW and IMAGES_UNSEEN_SIGNAL in verdict.signals
    assert "did not see the post's images" in (verdict.rationale or "")


def test_an_image_missing_from_the_store_makes_the_run_text_only_and_says_so(
    tmp_path: Path,
) -> None:
    settings = vision_settings(tmp_path)
    refs = two_photos(settings)
    LocalImageStore(tmp_path).path(refs[1].sha256).unlink()  # lost from the store
    request = uncertain(image_post(refs), settings)
    model = ScriptedModel([allow_json()])
    engine, sink = engine_for(model, settings)
    unreadable_before = counter("unreadable")

    engine.run(scheduled(request, settings))

    [sent] = model.requests
    assert image_parts(sent.input[0]["content"]) == []  # not even the readable one
    assert counter("unreadable") - unreadable_before == 1
    verdict = published_verdict(sink)
    assert verdict.decision is Decision.REVIEW and IMAGES_UNSEEN_SIGNAL in verdict.signals


def test_a_run_scheduled_without_vision_stays_text_only_under_a_vision_service(
    tmp_path: Path,
) -> None:
    """A run recorded before `agent.vision` was switched on replays as it was scheduled."""
    settings = vision_settings(tmp_path)
    request = uncertain(image_post(two_photos(settings)), settings)
    model = ScriptedModel([allow_json()])
    engine, sink = engine_for(model, settings)
    run = scheduled(request, settings)
    del run["images"]  # the input of a run scheduled by the earlier version

    engine.run(run)

    assert image_parts(model.requests[0].input[0]["content"]) == []
    assert IMAGES_UNSEEN_SIGNAL in published_verdict(sink).signals


def test_vision_on_the_text_only_dapr_conversation_route_is_refused(tmp_path: Path) -> None:
    settings = vision_settings(tmp_path).model_copy(
        update={
            "agent_service": Settings().agent_service.model_copy(
                update={"llm_route": "dapr-conversation"}
            )
        }
    )
    with pytest.raises(ValueError, match="Conversation API carries text only"):
        AgentSteps(settings, ScriptedProvider(ScriptedModel([allow_json()])), None)


# --- the worker's in-process agent stage -------------------------------------------------------


async def test_the_in_process_stage_shows_the_images_and_says_whether_it_did(
    tmp_path: Path,
) -> None:
    for vision in (True, False):
        settings = vision_settings(tmp_path / str(vision), vision=vision)
        post = image_post(two_photos(settings))
        [item] = first_stage([post], ScriptedScorer(), settings, agent_enabled=True)
        model = ScriptedModel([ToolCall("author_recent_verdicts"), allow_json()])
        stage = AgentStage(settings, ScriptedProvider(model), None)

        judgement = await stage.judge(post, item.verdict.scores, item.screen)
        verdict, review = agent_verdict(item, judgement, settings)

        assert verdict is not None and judgement.images_seen is vision
        first = model.requests[0].input
        if vision:
            assert len(image_parts(first[0]["content"])) == 2
            assert verdict.decision is Decision.ALLOW and review is None
            assert IMAGES_UNSEEN_SIGNAL not in verdict.signals
        else:
            assert isinstance(first, str) or image_parts(first[0]["content"]) == []
            assert verdict.decision is Decision.REVIEW and review is not None
            assert IMAGES_UNSEEN_SIGNAL in verdict.signals


# --- over HTTP: what a served model receives ---------------------------------------------------


class FreshClientProvider(ModelProvider):
    """The real Chat Completions model on the scripted server, with a client per call: the
    in-memory workflow engine runs each activity in its own event loop."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get_model(self, model_name: str | None) -> Model:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key="scripted", max_retries=0)
        return MeteredChatModel(model=model_name or "scripted-vlm", openai_client=client)


@pytest.fixture
def chat_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    # This test means to call a model: the scripted server, through the real client.
    monkeypatch.setattr(OpenAIChatCompletionsModel, "get_response", REAL_CHAT_GET_RESPONSE)
    server = ScriptedChatServer(delay=0.0)
    server.start()
    yield server
    server.stop()


def wire_images(body: dict[str, Any]) -> list[str]:
    """The `image_url` URLs of a Chat Completions request's user messages."""
    return [
        part["image_url"]["url"]
        for message in body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


def test_a_served_model_receives_image_url_parts_only_with_vision(
    tmp_path: Path, chat_server: ScriptedChatServer
) -> None:
    for vision in (True, False):
        settings = vision_settings(tmp_path / str(vision), vision=vision)
        request = uncertain(image_post(two_photos(settings), post_id=f"p-{vision}"), settings)
        engine, sink = engine_for(None, settings, FreshClientProvider(chat_server.base_url))

        engine.run(scheduled(request, settings))

        bodies = chat_server.bodies[-2:]  # the server's tool turn, then its allow
        assert len(bodies) == 2
        verdict = published_verdict(sink)
        for body in bodies:
            urls = wire_images(body)
            if vision:
                assert [decoded(url).size for url in urls] == [(768, 576), (512, 512)]
                user = next(m for m in body["messages"] if m["role"] == "user")
                assert user["content"][0] == {"type": "text", "text": "the post"}
            else:
                assert urls == []
        if vision:
            assert verdict.decision is Decision.ALLOW
            assert IMAGES_UNSEEN_SIGNAL not in verdict.signals
        else:
            assert verdict.decision is Decision.REVIEW
            assert IMAGES_UNSEEN_SIGNAL in verdict.signals


async def test_the_worker_s_agent_stage_sends_image_url_parts_over_http(
    tmp_path: Path, chat_server: ScriptedChatServer
) -> None:
    settings = vision_settings(tmp_path)
    post = image_post(two_photos(settings), post_id="p-worker")
    [item] = first_stage([post], ScriptedScorer(), settings, agent_enabled=True)
    client = openai.AsyncOpenAI(base_url=chat_server.base_url, api_key="scripted", max_retries=0)
    stage = AgentStage(settings, ChatCompletionsProvider(client, "scripted-vlm"), None)
    try:
        judgement = await stage.judge(post, item.verdict.scores, item.screen)
    finally:
        await client.close()

    verdict, _ = agent_verdict(item, judgement, settings)
    bodies = chat_server.bodies[-2:]
    assert [len(wire_images(body)) for body in bodies] == [2, 2]
    assert verdict is not None and verdict.decision is Decision.ALLOW
    assert IMAGES_UNSEEN_SIGNAL not in verdict.signals
