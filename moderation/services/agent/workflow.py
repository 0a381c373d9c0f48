"""One durable Dapr workflow per handed-off post: the classifier agent's run, step by step.

Instance id = `agent-<post_id>-<policy version>` (`instance_id`), so a redelivered hand-off
starts nothing new and a post gets one agent run per policy. Every effect is an activity whose
result Dapr records in its state store (PostgreSQL) before the orchestrator goes on; after a
crash of the agent service or its daprd the orchestrator replays from the record, so a model or
tool call that completed is never made again:

    model_call ─► (tool calls: tool_call per call ─► model_call again) ─► answer
    answer invalid ─► one repair: model_call with what was wrong ─► still invalid: review
    publish_outcome: the agent verdict and/or the review request (or the fallback's review)

Model calls that may succeed later (timeouts, 429, 5xx) are retried by the workflow's retry
policy (`agent.max_attempts`, exponential backoff); when they are spent, or the breaker is open,
the post goes to review with the reason. A hand-off that arrives while the service is saturated (or
its breaker is open) runs only `publish_outcome` (review with the reason), so that post too has
exactly one outcome.

With `agent.vision` (a vision-language model), the run is scheduled with the SHA-256s of the
post's images and every model call attaches their downscaled bytes itself, from the object store
(`AgentSteps.model_call`): the history keeps text and hashes, never megabytes of base64, and a
retried or later call reads the same content-addressed bytes. Each call records whether it
carried all the images; the answering call's flag decides whether the verdict says
`images-unseen` (and may then not allow).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from datetime import timedelta
from typing import Any

from dapr.ext.workflow import (
    DaprWorkflowContext,
    RetryPolicy,
    TaskFailedError,
    WorkflowActivityContext,
    WorkflowRuntime,
)

from moderation.classifier.agent_steps import AgentSteps, parse_answer, repair_conversation
from moderation.events import AgentRequested
from moderation.services.review.activities import EventSink
from moderation.settings import Settings
from moderation.telemetry import span_in

WORKFLOW_NAME = "classifier_agent"
MODEL_CALL = "agent_model_call"
TOOL_CALL = "agent_tool_call"
PUBLISH = "agent_publish_outcome"


def instance_id(post_id: str, policy_version: str) -> str:
    """The post's agent workflow: one per post and policy version."""
    return f"agent-{post_id}-{policy_version}"


def workflow_input(
    request: AgentRequested,
    *,
    message: str,
    model: str,
    max_turns: int,
    shed: tuple[str, str] | None = None,
    trace: dict[str, str] | None = None,
    vision: bool = False,
) -> dict[str, Any]:
    """What a run is scheduled with; recorded once, so a replay sees the same values.

    `message` carries the run's delimiter nonce (drawn when scheduling), `model` the served
    name (base model or LoRA adapter) every call of the run uses; `shed` is (label, detail) when
    the service had no room for the run (saturated, breaker open): it then only sends the post
    to review. With `vision` (the served model reads images), `images` lists the SHA-256s of
    the post's images each model call attaches; empty: the run is text-only.
    """
    return {
        "request": request.model_dump(mode="json"),
        "message": message,
        "model": model,
        "max_turns": max_turns,
        "shed": list(shed) if shed else None,
        "trace": trace or {},
        "images": [image.sha256 for image in request.post.images] if vision else [],
    }


def agent_workflow(
    ctx: DaprWorkflowContext,
    run: dict[str, Any],
    *,
    model_retry: RetryPolicy,
    publish_retry: RetryPolicy,
) -> Generator[Any, Any, dict[str, Any]]:
    """The orchestration (deterministic: every effect is an activity)."""
    request, trace, model = run["request"], run["trace"], run["model"]
    outcome: dict[str, Any] = {"request": request, "trace": trace, "model": model}
    if run.get("shed"):
        label, detail = run["shed"]
        result = yield ctx.call_activity(
            PUBLISH, input=outcome | {"fallback": label, "detail": detail},
            retry_policy=publish_retry,
        )  # fmt: skip
        return dict(result)
    conversation: list[dict[str, Any]] = [{"role": "user", "content": run["message"]}]
    images = list(run.get("images") or [])  # runs scheduled before vision existed: none
    images_seen = False
    called: list[str] = []
    repaired = False
    fallback: tuple[str, str] | None = None
    answer = ""
    turns = 0
    while fallback is None:
        if turns >= int(run["max_turns"]):
            fallback = ("max_turns", f"no answer in {turns} turns")
            break
        turns += 1
        try:
            turn = yield ctx.call_activity(
                MODEL_CALL,
                input={"conversation": conversation, "called": called, "model": model,
                       "trace": trace, "images": images, "post_id": request["post_id"]},
                retry_policy=model_retry,
            )  # fmt: skip
        except TaskFailedError as error:  # the retry policy gave up
            message = str(error.details.message or error)
            fallback = (failure_label(message), message[:200])
            break
        if turn.get("error"):
            fallback = (str(turn["error"]), "")
            break
        images_seen = bool(turn.get("images_seen"))  # the last call's is the answer's
        conversation = [*conversation, *turn["items"]]
        if turn["tool_calls"]:
            for call in turn["tool_calls"]:
                output = yield ctx.call_activity(
                    TOOL_CALL, input={"request": request, "call": call, "trace": trace},
                    retry_policy=publish_retry,
                )  # fmt: skip
                conversation.append(output)
                called.append(str(call["name"]))
            continue
        if parse_answer(turn["text"]) is not None:
            answer = turn["text"]
            break
        if repaired:
            fallback = ("invalid_output", "the answer did not match the schema after a repair")
            break
        repaired = True
        conversation = repair_conversation(run["message"], turn["text"])
    final = outcome | {"tool_calls": called, "repaired": repaired, "images_seen": images_seen}
    if fallback is not None:
        final |= {"fallback": fallback[0], "detail": fallback[1]}
    else:
        final |= {"answer": answer}
    result = yield ctx.call_activity(PUBLISH, input=final, retry_policy=publish_retry)
    return dict(result) | {"turns": turns}


def failure_label(message: str) -> str:
    """The short label a failed model call carries (`http_500: ...` → `http_500`)."""
    label = message.split(":", 1)[0].strip()
    return label if re.fullmatch(r"[a-z][a-z0-9_]{0,40}", label) else "llm_unavailable"


class AgentActivities:
    """The activities: the steps of `AgentSteps`, and publishing through the app's daprd."""

    def __init__(
        self, settings: Settings, steps: AgentSteps, sink: EventSink, *, on_done: Any = None
    ) -> None:
        self.settings = settings
        self.steps = steps
        self.sink = sink
        self.on_done = on_done  # called with the instance id when a run published its outcome

    async def model_call(
        self, ctx: WorkflowActivityContext, call: dict[str, Any]
    ) -> dict[str, Any]:
        with span_in("agent: model call", call.get("trace"), workflow=ctx.workflow_id):
            return await self.steps.model_call(
                call["conversation"], call["called"], call["model"],
                images=list(call.get("images") or []), post_id=str(call.get("post_id", "")),
            )  # fmt: skip

    async def tool_call(self, ctx: WorkflowActivityContext, call: dict[str, Any]) -> dict[str, Any]:
        with span_in("agent: tool call", call.get("trace"), tool=str(call["call"]["name"])):
            request = AgentRequested.model_validate(call["request"])
            return await self.steps.tool_call(request, call["call"])

    def publish(self, ctx: WorkflowActivityContext, final: dict[str, Any]) -> dict[str, Any]:
        with span_in("agent: publish", final.get("trace"), workflow=ctx.workflow_id):
            request = AgentRequested.model_validate(final["request"])
            answer = parse_answer(final.get("answer") or "")
            if answer is None:
                reason = str(final.get("fallback") or "invalid_output")
                verdict, review = self.steps.fallback(request, reason, str(final.get("detail", "")))
            else:
                verdict, review = self.steps.verdict(
                    request, answer, tool_calls=list(final.get("tool_calls", [])),
                    repaired=bool(final.get("repaired")), model_name=str(final["model"]),
                    images_seen=bool(final.get("images_seen")),
                )  # fmt: skip
            topics = self.settings.kafka.topics
            # The verdict first: the review request names it. A re-run publishes the same events
            # again; the recorder keeps one (its keys: post, stage, model version; the review id).
            if verdict is not None:
                self.sink.publish(topics.verdicts, verdict)
            if review is not None:
                self.sink.publish(topics.review_requested, review)
        if self.on_done is not None:
            self.on_done(ctx.workflow_id)
        return {
            "post_id": request.post_id,
            "decision": verdict.decision.value if verdict is not None else "review",
            "review": review is not None,
            "fallback": final.get("fallback"),
        }


def build_runtime(settings: Settings, activities: AgentActivities) -> WorkflowRuntime:
    """The workflow worker, connected to the agent service's daprd."""
    service = settings.agent_service
    runtime = WorkflowRuntime(
        host="127.0.0.1",
        port=str(service.dapr_grpc_port),
        maximum_concurrent_activity_work_items=service.activity_concurrency,
    )
    agent = settings.agent
    model_retry = RetryPolicy(
        first_retry_interval=timedelta(seconds=max(agent.backoff_initial_seconds, 0.001)),
        max_number_of_attempts=agent.max_attempts,
        backoff_coefficient=2.0,
        max_retry_interval=timedelta(seconds=max(agent.backoff_max_seconds, 0.001)),
    )
    publish_retry = RetryPolicy(
        first_retry_interval=timedelta(seconds=0.5),
        max_number_of_attempts=10,
        backoff_coefficient=2.0,
        max_retry_interval=timedelta(seconds=15),
    )

    def classifier_agent(
        ctx: DaprWorkflowContext, run: dict[str, Any]
    ) -> Generator[Any, Any, dict[str, Any]]:
        return (
            yield from agent_workflow(
                ctx, run, model_retry=model_retry, publish_retry=publish_retry
            )
        )

    runtime.register_workflow(classifier_agent, name=WORKFLOW_NAME)
    runtime.register_activity(activities.model_call, name=MODEL_CALL)
    runtime.register_activity(activities.tool_call, name=TOOL_CALL)
    runtime.register_activity(activities.publish, name=PUBLISH)
    return runtime
