"""The classifier agent's run cut into steps a durable workflow can record one by one.

The agent service (`moderation.services.agent`) runs the agent as a Dapr workflow. A workflow
replays its orchestrator after a crash, so the orchestrator may only hold deterministic code
and every effect must be a step whose result is recorded: each model call, each tool call and
the publication. The Agents SDK's `Runner` runs a whole run as one coroutine and cannot be
split that way, so these steps drive the same parts of the SDK one turn at a time: the same
`Agent` (policy as instructions, tools, model settings), its `Model` interface
(`get_response`), its `FunctionTool`s and the same output schema. Validation and the single
repair attempt are deterministic and stay in the orchestrator (`parse_answer`); the verdict is
made by the cascade's own rules (`agent_verdict`, `fallback_review`).

The steps exchange JSON-able dicts only: that is what the workflow records. With `agent.vision`
the post's images reach the model, but never the record: a model call is given the images'
SHA-256s and attaches their downscaled bytes itself, from the content-addressed store
(`agent_images`); what it records is whether its call carried them all (`images_seen`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import openai
from agents import (
    Agent,
    AgentOutputSchema,
    FunctionTool,
    ModelProvider,
    ModelTracing,
    TResponseInputItem,
)
from agents.tool_context import ToolContext
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from moderation.classifier.agent import AgentContext, AgentVerdict, build_agent, render_post
from moderation.classifier.agent_images import NONE_ATTACHED, ImageReader, with_images
from moderation.classifier.cascade import (
    AGENT_BREAKER_OPEN,
    AGENT_IN_FLIGHT,
    AGENT_REPAIRS,
    AGENT_TOOL_CALLS,
    REPAIR_PROMPT,
    AgentFallback,
    AgentJudgement,
    FirstStage,
    agent_verdict,
    answer_problems,
    fallback_review,
)
from moderation.classifier.decide import Outcome
from moderation.classifier.injection.screen import InjectionScreen
from moderation.events import AgentRequested, ModerationVerdict, ReviewRequested
from moderation.llm.provider import RETRYABLE_STATUSES, ModelCallError, error_kind
from moderation.resilience import CircuitBreaker
from moderation.settings import Settings
from moderation.taxonomy import Decision

if TYPE_CHECKING:
    from moderation.precedents import DecisionLog


class RetryableModelError(Exception):
    """A model call that may succeed when tried again (timeout, 429, 5xx, connection)."""


def handoff(item: FirstStage) -> AgentRequested:
    """What the worker hands to the agent service for one uncertain post."""
    return AgentRequested(
        post_id=item.post.post_id,
        post=item.post,
        verdict=item.verdict,
        reason=item.outcome.reason,
        priority=item.outcome.priority,
        screen=list(item.screen.signals),
    )


def first_stage_of(request: AgentRequested) -> FirstStage:
    """Stage 1's result on the handed-off post, as the cascade's rules expect it."""
    verdict = request.verdict
    outcome = Outcome(
        decision=Decision.REVIEW,
        primary_category=verdict.primary_category,
        confidence=verdict.confidence,
        reason=request.reason,
        uncertain=True,
        priority=request.priority,
    )
    screen = InjectionScreen(tuple(request.screen))
    return FirstStage(request.post, verdict, outcome, screen, to_agent=True, review=None)


def first_message(request: AgentRequested) -> str:
    """The run's user message, with a fresh delimiter nonce (drawn once, then recorded)."""
    item = first_stage_of(request)
    return render_post(item.post, item.verdict.scores, item.screen)


def repair_conversation(message: str, text: str) -> list[dict[str, Any]]:
    """The one repair attempt: the same post, told what was wrong with the answer."""
    problems = answer_problems(text)
    return [
        {"role": "user", "content": message},
        {"role": "user", "content": REPAIR_PROMPT.format(problems=problems)},
    ]


def parse_answer(text: str) -> AgentVerdict | None:
    """The agent's verdict in `text`, or None when it does not match the schema."""
    try:
        return AgentVerdict.model_validate_json(text)
    except ValueError:
        return None


def _retryable(error: BaseException) -> bool:
    if isinstance(error, ModelCallError):
        return error.retryable
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUSES
    return isinstance(error, openai.APIError | TimeoutError | ConnectionError)


class AgentSteps:
    """The steps of one agent run, as the agent service's activities call them.

    Args:
        settings: the agent's policy, model settings and thresholds.
        provider: resolves the served model name (vLLM: the base model or a LoRA adapter).
        decisions: the decision log the tools read; None: the tools say it is unavailable.
        agent: the agent definition (default: `build_agent(settings)`, as in the worker).
        images: reads the posts' images for a vision model (default with `agent.vision`: from
            `images.store`).

    Raises:
        ValueError: `agent.vision` on the Dapr Conversation route, which carries text only.
    """

    def __init__(
        self,
        settings: Settings,
        provider: ModelProvider,
        decisions: DecisionLog | None,
        *,
        agent: Agent[AgentContext] | None = None,
        images: ImageReader | None = None,
    ) -> None:
        if settings.agent.vision and settings.agent_service.llm_route == "dapr-conversation":
            # Refused at start: every image post would otherwise fail or go unseen, quietly.
            raise ValueError(
                "agent.vision needs an OpenAI-compatible route (agent_service.llm_route "
                "dapr-invocation or direct): the Dapr Conversation API carries text only"
            )
        self.settings = settings
        self.provider = provider
        self.decisions = decisions
        self.agent = agent or build_agent(settings)
        self.model_name = str(self.agent.model or settings.llm.model)
        self.output_schema = AgentOutputSchema(AgentVerdict)
        self.tools = {
            tool.name: tool for tool in self.agent.tools if isinstance(tool, FunctionTool)
        }
        # Retries are the workflow's (its retry policy): one call here is one attempt.
        self.model_settings = replace(self.agent.model_settings, retry=None)
        self.breaker = CircuitBreaker(
            failures=settings.agent.breaker_failures,
            reset_seconds=settings.agent.breaker_reset_seconds,
        )
        self.slots = asyncio.Semaphore(settings.agent.concurrency)
        # Through the agent service's own daprd, a connection error means the sidecar is
        # unreachable (restarting), not that the model server fails.
        self.via_sidecar = settings.agent_service.llm_route != "direct"
        self.vision = settings.agent.vision
        self.images = images or (ImageReader.from_settings(settings) if self.vision else None)

    def apply_settings(self, settings: Settings) -> None:
        """Use `settings` from the next step on (the live configuration changed): thresholds and
        weight for the verdicts, the concurrency for the model calls."""
        if settings.agent.concurrency != self.settings.agent.concurrency:
            # Calls holding a slot of the old bound finish under it.
            self.slots = asyncio.Semaphore(settings.agent.concurrency)
        self.settings = settings

    async def model_call(
        self,
        conversation: list[dict[str, Any]],
        called: list[str],
        model_name: str,
        *,
        images: Sequence[str] = (),
        post_id: str = "",
    ) -> dict[str, Any]:
        """One model turn: {"items", "tool_calls", "text", "images_seen"} or {"error": label}.

        `images` are the SHA-256s of the post's stored images to show the model (empty: text
        only); they are attached to the first message here, for this call only, so that neither
        the conversation nor the result holds their bytes. `images_seen` says whether the call
        carried all of them (an unreadable image: the call goes text-only).

        Raises:
            RetryableModelError: the workflow retries the step (its retry policy); a failure
                that retrying cannot fix is returned as {"error": ...} instead.
        """
        if not self.breaker.allow():
            return {"error": "circuit_open"}
        instructions = self.agent.instructions
        assert isinstance(instructions, str)  # noqa: S101 - build_agent renders them once
        # Each tool once per run, as `_not_called_yet` enforces in the in-process runner.
        tools = [tool for name, tool in self.tools.items() if name not in called]
        model = self.provider.get_model(model_name)
        settings = self.model_settings
        if not tools:
            settings = replace(settings, tool_choice=None, parallel_tool_calls=None)
        attached = NONE_ATTACHED
        if images and self.images is not None:
            attached = await self.images.attach(post_id, images)
        sent = with_images(conversation, attached)
        async with self.slots:
            AGENT_IN_FLIGHT.inc()
            try:
                response = await model.get_response(
                    instructions,
                    _as_input(sent),
                    settings,
                    list(tools),
                    self.output_schema,
                    [],
                    ModelTracing.DISABLED,
                    previous_response_id=None,
                    conversation_id=None,
                    prompt=None,
                )
            except Exception as error:
                if self.via_sidecar and error_kind(error) == "connection":
                    # The breaker guards the model server; the workflow retries the step once
                    # the sidecar is back.
                    self.breaker.release()
                    message = f"connection: the sidecar is unreachable: {str(error)[:200]}"
                    raise RetryableModelError(message) from error
                if _retryable(error):
                    self._settle(failed=True)
                    raise RetryableModelError(f"{error_kind(error)}: {str(error)[:200]}") from error
                self._settle(failed=True)
                return {"error": error_kind(error)}
            finally:
                AGENT_IN_FLIGHT.dec()
        self._settle(failed=False)
        calls = [
            {"name": item.name, "call_id": item.call_id, "arguments": item.arguments}
            for item in response.output
            if isinstance(item, ResponseFunctionToolCall)
        ]
        text = "".join(
            part.text
            for item in response.output
            if isinstance(item, ResponseOutputMessage)
            for part in item.content
            if isinstance(part, ResponseOutputText)
        )
        # Round-tripped through JSON: what the workflow records is what the next turn sends.
        items = json.loads(json.dumps(response.to_input_items(), default=str))
        return {"items": items, "tool_calls": calls, "text": text, "images_seen": attached.seen}

    def _settle(self, *, failed: bool) -> None:
        if failed:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        AGENT_BREAKER_OPEN.set(1 if self.breaker.is_open else 0)

    async def tool_call(self, request: AgentRequested, call: dict[str, Any]) -> dict[str, Any]:
        """Run one of the agent's read-only tools; the result is the turn's next input item."""
        name = str(call["name"])
        tool = self.tools.get(name)
        if tool is None:
            output = f"no tool named {name!r}"
        else:
            context = AgentContext(
                post=request.post,
                decisions=self.decisions,
                author_history=self.settings.agent.author_history,
                precedents=self.settings.agent.precedents,
            )
            tool_context = ToolContext(
                context,
                tool_name=name,
                tool_call_id=str(call["call_id"]),
                tool_arguments=str(call["arguments"]),
            )
            output = str(await tool.on_invoke_tool(tool_context, str(call["arguments"])))
            AGENT_TOOL_CALLS.labels(tool=name).inc()
        return {"type": "function_call_output", "call_id": call["call_id"], "output": output}

    def verdict(
        self,
        request: AgentRequested,
        answer: AgentVerdict,
        *,
        tool_calls: list[str],
        repaired: bool,
        model_name: str,
        images_seen: bool = False,
    ) -> tuple[ModerationVerdict | None, ReviewRequested | None]:
        """The agent stage's verdict (and review request) by the cascade's rules."""
        if repaired:
            AGENT_REPAIRS.inc()
        judgement = AgentJudgement(
            answer, tuple(tool_calls), repaired, model_name, images_seen=images_seen
        )
        return agent_verdict(first_stage_of(request), judgement, self.settings)

    def fallback(
        self, request: AgentRequested, reason: str, detail: str = ""
    ) -> tuple[ModerationVerdict | None, ReviewRequested | None]:
        """No agent verdict: the post goes to review on stage 1's verdict, with the reason."""
        return fallback_review(first_stage_of(request), AgentFallback(reason, detail))


def _as_input(conversation: list[dict[str, Any]]) -> list[TResponseInputItem]:
    # The recorded items are the SDK's input TypedDicts, round-tripped through JSON.
    return cast("list[TResponseInputItem]", conversation)
