"""The three-stage cascade: fast model → classifier agent → human review.

Stage 1 (`first_stage`) scores a whole batch with one model call, screens every post for prompt
injection and decides the clear cases (`decide` with `stage1_thresholds`: those the model chose
for its error budget, else `settings.thresholds`). An uncertain post,
or one the model would allow although the screen flagged it, goes to stage 2 when the agent is
enabled, else straight to review. Always-review categories go to a human at once.

Stage 2 (`second_stage`) runs the agent on those posts with bounded concurrency (sized for
vLLM's batching) and a deadline per batch, so one slow call cannot stall the rest. `combine` turns
the agent's answer into the decision (README "The cascade"): the agent's and stage 1's scores are
mixed with `agent.agent_weight`, the mix goes through `agent.thresholds`, the agent's own decision
must agree, and a post flagged by the injection screen is never allowed on the agent's word.

Whenever the agent cannot answer (timeout, 429/5xx after retries, connection errors, an open
circuit breaker, output still invalid after one repair attempt, the batch deadline), the post goes
to human review with the reason: never to allow. Every path is counted in the metrics below.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
import openai
from agents import (
    Agent,
    AgentsException,
    MaxTurnsExceeded,
    ModelBehaviorError,
    ModelProvider,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    TResponseInputItem,
)
from openai.types.responses import ResponseOutputMessage, ResponseOutputText
from opentelemetry import context as otel_context
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from moderation.classifier.agent import (
    AgentContext,
    AgentVerdict,
    build_agent,
    render_post,
)
from moderation.classifier.agent_images import NONE_ATTACHED, ImageReader, with_images
from moderation.classifier.decide import Outcome, decide
from moderation.classifier.image_stage import ImageFindings, apply_images, image_thresholds
from moderation.classifier.injection.screen import CLEAN, InjectionScreen, screen_post
from moderation.classifier.readability import (
    PASSAGE_PREFIX,
    READABLE,
    Readability,
    assess,
    diluted,
    passages,
)
from moderation.events import ModerationVerdict, PostSubmitted, ReviewPriority, ReviewRequested
from moderation.events import utc_now as _utc_now
from moderation.llm.provider import error_kind
from moderation.resilience import CircuitBreaker
from moderation.settings import Settings, ThresholdSettings
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from moderation.tracing import configure_agent_tracing

if TYPE_CHECKING:
    from moderation.classifier.injection.model import InjectionDetector
    from moderation.precedents import DecisionLog

logger = logging.getLogger(__name__)
T = TypeVar("T")
# The screen signal of a learned-detector hit (`injection:learned` in the verdict).
LEARNED_SIGNAL = "learned"
# An agent verdict on a post whose images its model did not see (a text-only model, or an
# image the store could not give back).
IMAGES_UNSEEN_SIGNAL = "images-unseen"

AGENT_RUNS = Counter("moderation_agent_runs_total", "agent runs by final decision", ["decision"])
AGENT_FALLBACKS = Counter(
    "moderation_agent_fallbacks_total",
    "uncertain posts sent to review without an agent verdict, by reason",
    ["reason"],
)
AGENT_REPAIRS = Counter("moderation_agent_repairs_total", "runs retried after invalid output")
AGENT_TOOL_CALLS = Counter("moderation_agent_tool_calls_total", "agent tool calls", ["tool"])
AGENT_RUN_SECONDS = Histogram(
    "moderation_agent_run_seconds",
    "duration of one agent run (all its model and tool calls)",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
AGENT_IN_FLIGHT = Gauge("moderation_agent_runs_in_flight", "agent runs holding a slot")
AGENT_BREAKER_OPEN = Gauge("moderation_agent_breaker_open", "1 while the LLM breaker is open")
INJECTION_FLAGGED = Counter(
    "moderation_injection_flagged_total", "posts flagged by the prompt-injection screen"
)
UNREADABLE = Counter(
    "moderation_stage1_unreadable_total",
    "posts stage 1 would have allowed but could not read, by the first rule that fired",
    ["rule"],
)
STAGE1_UNSCREENED = Counter(
    "moderation_stage1_unscreened_total",
    "posts whose batch ran out of stage 1's time budget before they were screened",
)

REPAIR_PROMPT = (
    "Your previous answer was rejected: {problems}. Answer again with only the JSON object, "
    "exactly as the schema requires."
)


class Scorer(Protocol):
    """What stage 1 needs of a model: calibrated probabilities in `CATEGORIES` order."""

    version: str

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]: ...


def latency_ms(submitted_at: datetime) -> float:
    return max(0.0, (_utc_now() - submitted_at).total_seconds() * 1000)


# --- stage 1 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstStage:
    """Stage 1's verdict on one post, and where the post goes next."""

    post: PostSubmitted
    verdict: ModerationVerdict
    outcome: Outcome
    screen: InjectionScreen
    to_agent: bool
    review: ReviewRequested | None


def stage1_thresholds(scorer: Scorer, settings: Settings) -> ThresholdSettings:
    """The thresholds stage 1 decides with.

    A model trained with an error budget carries the allow and remove thresholds chosen for it
    on validation (`classifier/thresholds.py`); they apply unless `error_budget.apply` is off.
    The always-review categories and floor stay as configured: they are policy, not a budget.
    """
    chosen: ThresholdSettings | None = getattr(scorer, "error_budget_thresholds", None)
    if chosen is None or not settings.error_budget.apply:
        return settings.thresholds
    return settings.thresholds.model_copy(update={"allow": chosen.allow, "remove": chosen.remove})


def _diluted_allows(
    posts: Sequence[PostSubmitted],
    outcomes: Sequence[Outcome],
    scorer: Scorer,
    settings: Settings,
) -> dict[int, Category]:
    """The long posts stage 1 would allow although one of their sentences, read alone, is
    more likely violating than safe (`readability.diluted`), by index: one model call for the
    sentences of every such post in the batch."""
    floor = settings.readability.passage_check_chars
    if floor == 0:
        return {}
    candidates = [
        (index, passages(post.text, settings.readability.max_passages))
        for index, (post, outcome) in enumerate(zip(posts, outcomes, strict=True))
        if outcome.decision is Decision.ALLOW and len(post.text) >= floor
    ]
    candidates = [(index, found) for index, found in candidates if len(found) > 1]
    if not candidates:
        return {}
    texts = [sentence for _, found in candidates for sentence in found]
    rows: list[list[float]] = scorer.predict_proba(texts).tolist()
    flagged: dict[int, Category] = {}
    start = 0
    for index, found in candidates:
        scores = [
            dict(zip(CATEGORIES, row, strict=True)) for row in rows[start : start + len(found)]
        ]
        start += len(found)
        category = diluted(scores)
        if category is not None:
            flagged[index] = category
    return flagged


def first_stage(
    posts: Sequence[PostSubmitted],
    scorer: Scorer,
    settings: Settings,
    *,
    agent_enabled: bool,
    deadline: float | None = None,
    detector: InjectionDetector | None = None,
    images: Sequence[ImageFindings | None] | None = None,
) -> list[FirstStage]:
    """Score a batch with one model call, screen each post and decide the clear cases.

    `deadline` (a `time.monotonic()` value) bounds the batch: posts still unscreened when it
    passes keep their scores but are not allowed on the model's word (they go on as uncertain).
    `images` holds, per post, what the image stage found (`image_stage.py`; None for a post
    without images); a post with images and no findings is judged as if nothing was found.
    """
    if not posts:
        return []
    # Rounded and converted for the whole batch at once (per-value float() calls add up).
    rows: list[list[float]] = np.round(scorer.predict_proba([p.text for p in posts]), 6).tolist()
    thresholds = stage1_thresholds(scorer, settings)
    # The learned injection detector (`injection_model`) backs up the regex screen: one call per
    # batch; a hit adds `injection:learned` to the post's screen, with the same effect.
    learned = detector.flags([p.text for p in posts]).tolist() if detector is not None else None
    # Scripted test models have no vocabulary: the word rule is then off, the others apply.
    vocabulary: frozenset[str] | None = getattr(scorer, "vocabulary", None) or None
    training_length: int | None = getattr(scorer, "training_length", None)
    all_scores = [dict(zip(CATEGORIES, row, strict=True)) for row in rows]
    outcomes = [decide(scores, thresholds) for scores in all_scores]
    passage_rule = _diluted_allows(posts, outcomes, scorer, settings)
    results: list[FirstStage] = []
    for index, (post, scores, outcome) in enumerate(zip(posts, all_scores, outcomes, strict=True)):
        readability = READABLE
        if deadline is not None and time.monotonic() > deadline:
            STAGE1_UNSCREENED.inc()
            screen = CLEAN
            withheld = "allow withheld: stage 1's time budget ran out before the injection screen"
        else:
            screen = screen_post(post.text)
            if learned is not None and learned[index]:
                screen = InjectionScreen(tuple(sorted({*screen.signals, LEARNED_SIGNAL})))
            withheld = "allow withheld: possible prompt injection" if screen.flagged else ""
            if outcome.decision is Decision.ALLOW and not withheld:
                readability = assess(
                    post.text,
                    settings.readability,
                    vocabulary=vocabulary,
                    training_length=training_length,
                )
                if index in passage_rule:
                    signal = PASSAGE_PREFIX + passage_rule[index].value
                    readability = Readability(tuple(sorted({*readability.signals, signal})))
                if not readability.readable:
                    UNREADABLE.labels(rule=readability.signals[0].split(":")[0]).inc()
                    withheld = (
                        "allow withheld: the model cannot read this text "
                        f"({', '.join(readability.signals)})"
                    )
        if screen.flagged:
            INJECTION_FLAGGED.inc()
        if withheld and outcome.decision is Decision.ALLOW:
            outcome = replace(
                outcome,
                decision=Decision.REVIEW,
                uncertain=True,
                reason=f"{outcome.reason}; {withheld}",
            )
        image_signals: list[str] = []
        if post.images:
            findings = images[index] if images is not None else None
            outcome, scores, image_signals = apply_images(
                outcome, scores, findings or ImageFindings(), image_thresholds(settings)
            )
        to_agent = outcome.uncertain and agent_enabled
        verdict = ModerationVerdict(
            post_id=post.post_id,
            decision=outcome.decision,
            scores=scores,
            primary_category=outcome.primary_category,
            confidence=outcome.confidence,
            stage=Stage.MODEL,
            model_version=scorer.version,
            policy_version=settings.models.policy_version,
            rationale=outcome.reason + ("; to the agent" if to_agent else ""),
            signals=screen.labels() + readability.labels() + image_signals,
            latency_ms=latency_ms(post.submitted_at),
            config_version=settings.config_version,
        )
        review = (
            _review_request(verdict, outcome.reason, outcome.priority, screen)
            if outcome.decision is Decision.REVIEW and not to_agent
            else None
        )
        results.append(FirstStage(post, verdict, outcome, screen, to_agent, review))
    return results


def _review_request(
    verdict: ModerationVerdict, reason: str, priority: ReviewPriority, screen: InjectionScreen
) -> ReviewRequested:
    if screen.flagged and priority is ReviewPriority.NORMAL:
        priority = ReviewPriority.HIGH  # a manipulation attempt deserves a prompt look
    return ReviewRequested(
        post_id=verdict.post_id, reason=reason, priority=priority, verdict=verdict
    )


# --- stage 2 -----------------------------------------------------------------------------------


def combine(
    stage1_scores: Mapping[Category, float],
    answer: AgentVerdict,
    screen: InjectionScreen,
    settings: Settings,
    *,
    images_unseen: bool = False,
) -> tuple[dict[Category, float], Outcome]:
    """The combined scores and the decision they support (see the module docstring).

    `images_unseen`: the post has images the agent's model did not see (a text-only model);
    such a post is never allowed on the agent's word.
    """
    weight = settings.agent.agent_weight
    agent_scores = answer.scores.as_mapping()
    combined = {
        c: round(weight * agent_scores[c] + (1 - weight) * stage1_scores[c], 6) for c in CATEGORIES
    }
    outcome = decide(combined, settings.agent.thresholds)
    if outcome.decision is Decision.REVIEW:
        return combined, outcome
    if answer.decision is not outcome.decision:
        return combined, replace(
            outcome,
            decision=Decision.REVIEW,
            uncertain=True,
            reason=(
                f"agent decided {answer.decision.value} but the combined scores support "
                f"{outcome.decision.value} ({outcome.reason})"
            ),
        )
    if screen.flagged and outcome.decision is Decision.ALLOW:
        return combined, replace(
            outcome,
            decision=Decision.REVIEW,
            uncertain=True,
            reason=f"possible prompt injection ({', '.join(screen.signals)}): never allowed "
            "without a human",
            priority=ReviewPriority.HIGH,
        )
    if images_unseen and outcome.decision is Decision.ALLOW:
        return combined, replace(
            outcome,
            decision=Decision.REVIEW,
            uncertain=True,
            reason=f"the agent's model did not see the post's images: never allowed on its word "
            f"({outcome.reason})",
        )
    return combined, outcome


class AgentFallback(Exception):
    """The agent gave no usable verdict; `reason` is a short label (metrics, review reason)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AgentJudgement:
    answer: AgentVerdict
    tool_calls: tuple[str, ...]
    repaired: bool
    model_name: str  # the served model (base or LoRA adapter) this run used
    images_seen: bool = False  # the answering call carried every image of the post


class AgentStage:
    """Runs the classifier agent with a concurrency bound, a timeout and a circuit breaker.

    With `agent.vision`, a post's images go to the model with its text (`agent_images`);
    `images` overrides the reader made from the settings.
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
        # Spans go to OpenTelemetry; to OpenAI only when configured.
        configure_agent_tracing(upload_to_openai=settings.llm.trace_upload)
        self.settings = settings
        self.decisions = decisions
        self.agent = agent or build_agent(settings)
        self.base_model_name = str(self.agent.model or settings.llm.model)
        # The served name runs use: the registry watch switches it to a promoted LoRA adapter
        # (vLLM selects adapters by name) and back; each run keeps the name it started with.
        self.model_name = self.base_model_name
        self.slots = asyncio.Semaphore(settings.agent.concurrency)
        self.breaker = CircuitBreaker(
            failures=settings.agent.breaker_failures,
            reset_seconds=settings.agent.breaker_reset_seconds,
        )
        self.images = images or (
            ImageReader.from_settings(settings) if settings.agent.vision else None
        )
        self.run_config = RunConfig(
            model_provider=provider,
            workflow_name="moderation-agent",
            # Post text and model output stay out of spans (they go to the trace backend).
            trace_include_sensitive_data=False,
        )

    async def judge(
        self, post: PostSubmitted, stage1_scores: Mapping[Category, float], screen: InjectionScreen
    ) -> AgentJudgement:
        async with self.slots:
            if not self.breaker.allow():
                raise AgentFallback("circuit_open", "the LLM failed repeatedly; retrying later")
            AGENT_IN_FLIGHT.inc()
            started = time.perf_counter()
            model_name = self.model_name
            try:
                async with asyncio.timeout(self.settings.agent.timeout_seconds):
                    answer, calls, repaired, seen = await self._run(
                        post, stage1_scores, screen, model_name
                    )
            except (TimeoutError, openai.APIError, ConnectionError) as error:
                self._settle(failed=True)
                raise AgentFallback(error_kind(error), str(error)[:200]) from error
            except ModelBehaviorError as error:
                self._settle(failed=False)  # the endpoint answered; the answer was unusable
                raise AgentFallback("invalid_output", str(error)[:200]) from error
            except MaxTurnsExceeded as error:
                self._settle(failed=False)
                raise AgentFallback("max_turns", str(error)[:200]) from error
            except AgentsException as error:
                self._settle(failed=True)
                raise AgentFallback(type(error).__name__, str(error)[:200]) from error
            finally:
                AGENT_IN_FLIGHT.dec()
                AGENT_RUN_SECONDS.observe(time.perf_counter() - started)
            self._settle(failed=False)
            for call in calls:
                AGENT_TOOL_CALLS.labels(tool=call).inc()
            return AgentJudgement(answer, calls, repaired, model_name, images_seen=seen)

    def _settle(self, *, failed: bool) -> None:
        """Tell the breaker how the run went; the gauge follows the breaker's state."""
        if failed:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        AGENT_BREAKER_OPEN.set(1 if self.breaker.is_open else 0)

    async def _run(
        self,
        post: PostSubmitted,
        stage1_scores: Mapping[Category, float],
        screen: InjectionScreen,
        model_name: str,
    ) -> tuple[AgentVerdict, tuple[str, ...], bool, bool]:
        context = AgentContext(
            post=post,
            decisions=self.decisions,
            author_history=self.settings.agent.author_history,
            precedents=self.settings.agent.precedents,
        )
        message = render_post(post, stage1_scores, screen)
        attached = NONE_ATTACHED
        if self.images is not None and post.images:
            attached = await self.images.attach(post.post_id, [i.sha256 for i in post.images])
        # The post's message: its text, then its images when the model gets all of them.
        post_message = with_images([{"role": "user", "content": message}], attached)[0]
        first = cast("TResponseInputItem", post_message)
        run_input: str | list[TResponseInputItem] = [first] if attached.seen else message
        repaired = False
        try:
            result = await self._runner(run_input, context, model_name)
        except ModelBehaviorError:
            output = context.last_output
            # One repair attempt: the same post, told what was wrong (tools already used stay off).
            AGENT_REPAIRS.inc()
            repaired = True
            repair: list[TResponseInputItem] = [
                first,
                {"role": "user", "content": REPAIR_PROMPT.format(problems=answer_problems(output))},
            ]
            result = await self._runner(repair, context, model_name)
        answer = result.final_output_as(AgentVerdict, raise_if_incorrect_type=True)
        return answer, tuple(context.tool_calls), repaired, attached.seen

    async def _runner(
        self, run_input: str | list[TResponseInputItem], context: AgentContext, model_name: str
    ) -> Any:
        return await Runner.run(
            self.agent,
            run_input,
            context=context,
            # The run config's model overrides the agent's: the provider resolves the name.
            run_config=replace(self.run_config, model=model_name),
            max_turns=self.settings.agent.max_turns,
            hooks=_KeepLastOutput(),
        )


class _KeepLastOutput(RunHooks[AgentContext]):
    """Keeps the model's last text answer: the SDK redacts it from its validation errors."""

    async def on_llm_end(
        self, context: RunContextWrapper[AgentContext], agent: Agent[AgentContext], response: Any
    ) -> None:
        texts = [
            part.text
            for item in response.output
            if isinstance(item, ResponseOutputMessage)
            for part in item.content
            if isinstance(part, ResponseOutputText)
        ]
        if texts:
            context.context.last_output = "".join(texts)


def answer_problems(output: str) -> str:
    """What was wrong with the answer, without echoing the answer itself."""
    try:
        AgentVerdict.model_validate_json(output)
    except ValidationError as invalid:
        return "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'answer'}: {e['msg']}"
            for e in invalid.errors()[:5]
        )
    return "it did not match the schema"


async def second_stage(
    items: Sequence[FirstStage],
    stage: AgentStage,
    settings: Settings,
    *,
    contexts: Mapping[str, otel_context.Context] | None = None,
) -> list[tuple[ModerationVerdict | None, ReviewRequested | None]]:
    """The agent's verdict (and review request) for every post stage 1 sent to it.

    Each result is (agent verdict, review): the verdict is None when the agent gave none (the
    post then goes to review on stage 1's verdict, with the fallback's reason). `contexts`
    holds each post's trace context (by post id): its run's spans join the post's trace.
    """
    if not items:
        return []
    contexts = contexts or {}
    tasks = [
        asyncio.create_task(
            _in_context(
                contexts.get(i.post.post_id), stage.judge(i.post, i.verdict.scores, i.screen)
            )
        )
        for i in items
    ]
    _, late = await asyncio.wait(tasks, timeout=settings.agent.batch_deadline_seconds)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    results: list[tuple[ModerationVerdict | None, ReviewRequested | None]] = []
    for item, task in zip(items, tasks, strict=True):
        if task.cancelled():
            results.append(fallback_review(item, AgentFallback("batch_deadline")))
            continue
        error = task.exception()
        if isinstance(error, AgentFallback):
            results.append(fallback_review(item, error))
        elif error is not None:
            logger.error(
                "agent stage failed unexpectedly for %s", item.post.post_id, exc_info=error
            )
            results.append(fallback_review(item, AgentFallback(type(error).__name__, str(error))))
        else:
            results.append(agent_verdict(item, task.result(), settings))
    return results


async def _in_context(context: otel_context.Context | None, work: Awaitable[T]) -> T:
    """Await `work` with `context` attached (each task has its own copy of the contextvars)."""
    if context is None:
        return await work
    token = otel_context.attach(context)
    try:
        return await work
    finally:
        otel_context.detach(token)


def fallback_review(
    item: FirstStage, fallback: AgentFallback
) -> tuple[ModerationVerdict | None, ReviewRequested | None]:
    AGENT_FALLBACKS.labels(reason=fallback.reason).inc()
    logger.warning("post %s to review: agent unavailable (%s)", item.post.post_id, fallback)
    reason = f"agent unavailable ({fallback.reason}); stage 1: {item.outcome.reason}"
    return None, _review_request(item.verdict, reason, item.outcome.priority, item.screen)


def agent_verdict(
    item: FirstStage, judgement: AgentJudgement, settings: Settings
) -> tuple[ModerationVerdict | None, ReviewRequested | None]:
    answer = judgement.answer
    # A text-only model (`agent.vision` off), or an image the run could not read: never an allow.
    images_unseen = bool(item.post.images) and not judgement.images_seen
    combined, outcome = combine(
        item.verdict.scores, answer, item.screen, settings, images_unseen=images_unseen
    )
    AGENT_RUNS.labels(decision=outcome.decision.value).inc()
    verdict = ModerationVerdict(
        post_id=item.post.post_id,
        decision=outcome.decision,
        scores=combined,
        primary_category=outcome.primary_category,
        confidence=outcome.confidence,
        stage=Stage.AGENT,
        model_version=judgement.model_name,
        policy_version=settings.models.policy_version,
        rationale=f"{answer.rationale} [agent: {answer.decision.value}; {outcome.reason}]",
        policy_sections=answer.policy_sections,
        signals=item.verdict.signals + ([IMAGES_UNSEEN_SIGNAL] if images_unseen else []),
        latency_ms=latency_ms(item.post.submitted_at),
        config_version=settings.config_version,
    )
    review = (
        _review_request(verdict, outcome.reason, outcome.priority, item.screen)
        if outcome.decision is Decision.REVIEW
        else None
    )
    return verdict, review


def create_agent_stage(run_settings: Settings) -> tuple[AgentStage, Callable[[], Awaitable[None]]]:
    """The agent stage on the configured endpoint, reading the decision log; and its closer."""
    # Imported here: the evaluation and the tests build stages without a database or a client.
    from moderation.db.engine import make_engine
    from moderation.llm.provider import ChatCompletionsProvider, create_client
    from moderation.mcp_client import agent_decision_log

    client = create_client(run_settings.llm)
    engine = make_engine(run_settings)
    stage = AgentStage(
        run_settings,
        ChatCompletionsProvider(client, run_settings.llm.model),
        agent_decision_log(run_settings, engine),
    )

    async def close() -> None:
        await client.close()
        engine.dispose()

    return stage, close
