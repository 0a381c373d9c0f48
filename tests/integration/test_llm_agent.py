"""The real local LLM (llama.cpp + SmolLM2-135M) through the adapter, with the OpenAI Agents SDK.

The model is tiny: these tests prove the wiring (Chat Completions, tool calls, structured output),
not its judgement. Temperature 0 and bounded outputs keep them deterministic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import httpx
import pytest
from agents import (
    Agent,
    AgentBase,
    Model,
    ModelProvider,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunConfig,
    RunContextWrapper,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
)
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

from moderation.devtools.stack.llm import LLMServer
from moderation.settings import Settings

pytestmark = pytest.mark.integration

TOOL_ANSWER = "author a-17 posted 12 spam messages this week"
# Escaped by an HTML-autoescaping template, each `"` becomes `&#34;`: 5 tokens instead of a
# fraction of one, so the escaping shows in the prompt's token count.
QUOTES = '"' * 30


class Verdict(BaseModel):
    category: Literal["safe", "spam", "harassment"]
    # Bounded, so the grammar-constrained JSON always closes within max_tokens.
    rationale: str = Field(max_length=60)


class LocalModelProvider(ModelProvider):
    """Every agent runs on the local OpenAI-compatible endpoint through Chat Completions."""

    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model

    def get_model(self, model_name: str | None) -> Model:
        return OpenAIChatCompletionsModel(model=model_name or self.model, openai_client=self.client)


@pytest.fixture
async def client(llm: LLMServer, settings: Settings) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(
        base_url=settings.llm.base_url,
        api_key=settings.llm.api_key.get_secret_value(),
        timeout=settings.llm.timeout_seconds,
        max_retries=0,
    )
    yield client
    await client.close()


async def test_models_lists_the_configured_alias(client: AsyncOpenAI, settings: Settings) -> None:
    models = await client.models.list()

    assert settings.llm.model in [model.id for model in models.data]


async def test_plain_chat_completion(client: AsyncOpenAI, settings: Settings) -> None:
    completion = await client.chat.completions.create(
        model=settings.llm.model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=16,
        temperature=0,
    )

    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 16


async def test_message_text_reaches_the_model_unescaped(
    client: AsyncOpenAI, settings: Settings
) -> None:
    """The chat template must not HTML-escape post text (scripts/llm/serve_llama.py)."""

    async def prompt_tokens(content: str) -> int:
        completion = await client.chat.completions.create(
            model=settings.llm.model,
            messages=[{"role": "user", "content": content}],
            max_tokens=1,
            temperature=0,
        )
        assert completion.usage is not None
        return completion.usage.prompt_tokens

    async def raw_tokens(text: str) -> int:
        # The server's own tokenizer, outside /v1: the adapter passes the path through.
        url = httpx.URL(settings.llm.base_url).join("/extras/tokenize")
        async with httpx.AsyncClient(trust_env=False, timeout=settings.llm.timeout_seconds) as http:
            answer = await http.post(url, json={"model": settings.llm.model, "input": text})
        answer.raise_for_status()
        tokens: list[int] = answer.json()["tokens"]
        return len(tokens)

    added_by_quotes = await prompt_tokens(QUOTES) - await prompt_tokens("")

    assert added_by_quotes == await raw_tokens(QUOTES) - await raw_tokens("")


async def test_streamed_chat_completion(client: AsyncOpenAI, settings: Settings) -> None:
    stream = await client.chat.completions.create(
        model=settings.llm.model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]

    assert len(pieces) > 1
    assert "".join(pieces).strip()


async def test_auto_tool_choice_never_returns_an_empty_message(
    client: AsyncOpenAI, settings: Settings
) -> None:
    """The server's "auto" mode empties a message answer; the adapter must make it whole."""
    completion = await client.chat.completions.create(
        model=settings.llm.model,
        messages=[{"role": "user", "content": "hi"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        tool_choice="auto",
        max_tokens=32,
        temperature=0,
    )
    message = completion.choices[0].message

    assert message.tool_calls or (message.content and message.content.strip())


async def test_agent_calls_its_tool_and_returns_its_output_type(
    client: AsyncOpenAI, settings: Settings
) -> None:
    calls: list[str] = []

    def until_called(context: RunContextWrapper[Any], agent: AgentBase) -> bool:
        # Offered "auto" again after its result, the 135M model calls the tool on every turn at
        # temperature 0; withdrawing it leaves the second turn one way out: the output type.
        return not calls

    # The id is bounded like Verdict.rationale: unbounded, the model can fill max_tokens with
    # it and send truncated JSON arguments.
    @function_tool(is_enabled=until_called)
    def author_history(author_id: Annotated[str, Field(max_length=12)]) -> str:
        """Look up how often an author posted spam before.

        Args:
            author_id: The author's identifier.
        """
        calls.append(author_id)
        return TOOL_ANSWER

    agent = Agent(
        name="moderation-wiring-check",
        instructions=(
            "You moderate posts. First look up the author's history with the tool, then answer "
            "with the category and a short rationale."
        ),
        tools=[author_history],
        output_type=Verdict,
        # "required" forces the first turn's tool call; the SDK resets it after the call.
        model_settings=ModelSettings(tool_choice="required", temperature=0.0, max_tokens=128),
    )

    result = await Runner.run(
        agent,
        "Post by author a-17: Buy cheap watches now at spam.example!",
        run_config=RunConfig(
            model_provider=LocalModelProvider(client, settings.llm.model),
            tracing_disabled=not settings.llm.trace_upload,
        ),
        max_turns=3,
    )

    assert isinstance(result.final_output, Verdict)
    assert len(calls) == 1
    assert [type(item) for item in result.new_items][:2] == [ToolCallItem, ToolCallOutputItem]
    tool_output = result.new_items[1]
    assert isinstance(tool_output, ToolCallOutputItem)
    assert tool_output.output == TOOL_ANSWER
