"""A durable Dapr Workflow per review: create the task, wait for the decision, escalate on SLA.

Instance id = the review id (`review-<post_id>`), so a redelivered `ReviewRequested` starts
nothing new. The state lives in Dapr's actor state store (PostgreSQL): the review service or its
daprd may die while a workflow waits, and the same instance resumes when they are back.

    create_review_task ─► wait for event `decision` | SLA timer
                               │ timer: escalate_review, wait again (the SLA starts over)
                               │ decision: persist_decision ─► complete (invalid: wait again)
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

from dapr.ext.workflow import (
    DaprWorkflowContext,
    WorkflowActivityContext,
    WorkflowRuntime,
    when_any,
)

from moderation.events import ReviewDecided, ReviewRequested
from moderation.services.review.activities import ReviewActivities
from moderation.settings import Settings
from moderation.telemetry import span_in

WORKFLOW_NAME = "review"
CREATE_TASK = "create_review_task"
ESCALATE = "escalate_review"
PERSIST_DECISION = "persist_decision"


def review_workflow(
    ctx: DaprWorkflowContext, request: dict[str, Any]
) -> Generator[Any, Any, dict[str, Any]]:
    """The orchestration (deterministic: every effect is an activity, every wait durable)."""
    task = yield ctx.call_activity(CREATE_TASK, input=request)
    trace = request.get("trace") or {}
    event_name = str(request["decision_event"])
    escalations = 0
    while True:
        decision = ctx.wait_for_external_event(event_name)
        sla = ctx.create_timer(timedelta(seconds=float(task["sla_seconds"])))
        winner = yield when_any([decision, sla])
        if winner is sla:
            escalations += 1
            yield ctx.call_activity(
                ESCALATE,
                input={
                    "review_id": task["review_id"],
                    "post_id": request["post_id"],
                    "trace": trace,
                },
            )
            continue
        outcome = yield ctx.call_activity(
            PERSIST_DECISION, input={"decision": decision.get_result(), "trace": trace}
        )
        if outcome["recorded"]:
            return {
                "review_id": task["review_id"],
                "decision": decision.get_result(),
                "escalations": escalations,
            }
        # An invalid decision was refused (the API validates first): keep waiting for one.


def workflow_input(
    request: ReviewRequested, settings: Settings, trace: dict[str, str] | None = None
) -> dict[str, Any]:
    """What the workflow is scheduled with: the request, the decision event's name, and the
    post's trace context (its activities' spans join the post's trace)."""
    return request.model_dump(mode="json") | {
        "decision_event": settings.review.decision_event,
        "trace": trace or {},
    }


def build_runtime(settings: Settings, activities: ReviewActivities) -> WorkflowRuntime:
    """The workflow worker, connected to the review service's daprd."""
    runtime = WorkflowRuntime(host="127.0.0.1", port=str(settings.dapr.grpc_port))

    def create_review_task(ctx: WorkflowActivityContext, request: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in request.items() if k not in {"decision_event", "trace"}}
        with span_in("review: create task", request.get("trace"), review_id=ctx.workflow_id):
            created = activities.create_task(ReviewRequested.model_validate(fields))
        return {"review_id": created.review_id, "sla_seconds": created.sla_seconds}

    def escalate_review(ctx: WorkflowActivityContext, target: dict[str, Any]) -> str | None:
        with span_in("review: escalate", target.get("trace"), review_id=target["review_id"]):
            return activities.escalate(target["review_id"], target["post_id"])

    def persist_decision(ctx: WorkflowActivityContext, payload: dict[str, Any]) -> dict[str, Any]:
        with span_in("review: persist decision", payload.get("trace"), review_id=ctx.workflow_id):
            outcome = activities.persist_decision(ReviewDecided.model_validate(payload["decision"]))
        return {"recorded": outcome.recorded, "reason": outcome.reason}

    runtime.register_workflow(review_workflow, name=WORKFLOW_NAME)
    runtime.register_activity(create_review_task, name=CREATE_TASK)
    runtime.register_activity(escalate_review, name=ESCALATE)
    runtime.register_activity(persist_decision, name=PERSIST_DECISION)
    return runtime
