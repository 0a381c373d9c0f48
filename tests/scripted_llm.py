"""A scripted Agents SDK model for logic tests: no server, no network, turns given in advance.

Each turn is a tool call (`ToolCall`), a final text answer (`str`, usually a verdict's JSON) or an
exception to raise (a 429, a timeout...). The model records what it was asked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from agents import Model, ModelProvider, ModelResponse, Usage
from agents.items import TResponseStreamEvent
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from moderation.classifier.agent import AgentVerdict, CategoryScores
from moderation.taxonomy import CATEGORIES, Category, Decision


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str = "{}"


Turn = ToolCall | str | BaseException | Callable[[], ToolCall | str | BaseException]


@dataclass
class Request:
    system: str | None
    input: Any
    tools: list[str]


@dataclass
class ScriptedModel(Model):
    """Plays its turns in order; a turn repeats forever once the script is exhausted."""

    turns: list[Turn]
    requests: list[Request] = field(default_factory=list)

    async def get_response(
        self,
        system_instructions: str | None,
        input: Any,  # noqa: A002 - the SDK's parameter name
        model_settings: Any,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: Any,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any = None,
    ) -> ModelResponse:
        self.requests.append(Request(system_instructions, input, [t.name for t in tools]))
        index = min(len(self.requests), len(self.turns)) - 1
        turn = self.turns[index]
        if callable(turn) and not isinstance(turn, BaseException):
            turn = turn()
        if isinstance(turn, BaseException):
            raise turn
        return ModelResponse(
            output=[_item(turn, len(self.requests))], usage=Usage(), response_id=None
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the classifier agent does not stream")


def _item(turn: ToolCall | str, number: int) -> Any:
    if isinstance(turn, ToolCall):
        return ResponseFunctionToolCall(
            id=f"fc_{number}",
            call_id=f"call_{number}",
            type="function_call",
            name=turn.name,
            arguments=turn.arguments,
        )
    return ResponseOutputMessage(
        id=f"msg_{number}",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(text=turn, type="output_text", annotations=[])],
    )


@dataclass
class ScriptedProvider(ModelProvider):
    model: ScriptedModel

    def get_model(self, model_name: str | None) -> Model:
        return self.model


def verdict_json(
    decision: Decision,
    primary: Category,
    *,
    scores: dict[Category, float] | None = None,
    rationale: str = "scripted",
) -> str:
    """A valid AgentVerdict as the model would write it; unspecified scores are 0.01."""
    values = dict.fromkeys(CATEGORIES, 0.01) | (scores or {})
    verdict = AgentVerdict(
        decision=decision,
        primary_category=primary,
        scores=CategoryScores(**{c.value: round(values[c] * 100) for c in CATEGORIES}),
        policy_sections=[primary],
        rationale=rationale,
    )
    return verdict.model_dump_json()


def allow_json(safe: float = 0.99) -> str:
    return verdict_json(Decision.ALLOW, Category.SAFE, scores={Category.SAFE: safe})


def remove_json(category: Category, probability: float = 0.99) -> str:
    return verdict_json(
        Decision.REMOVE, category, scores={category: probability, Category.SAFE: 0.01}
    )


GARBAGE = json.dumps({"decision": "allow", "scores": "high"})
