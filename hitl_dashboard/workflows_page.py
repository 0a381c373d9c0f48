"""The Workflows page: the agent and review services' Dapr workflow instances, and one's steps.

`GET /v1/workflows?app=` lists the newest instances of one service with their status;
choosing one reads `GET /v1/workflows/{app}/{instance_id}`, its steps in order (activities,
timers, events) with the time between them. Fetched on every rerun, not cached: it shows what
runs now. The API serves names, statuses, times and error messages only, never a payload; error
messages are still shown as table cells (plain text), never as Markdown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from hitl_dashboard import safe_text, session, ui
from hitl_dashboard.api_client import ApiError
from moderation.db.schemas import (
    WorkflowApp,
    WorkflowHistoryPublic,
    WorkflowInstancePublic,
    WorkflowInstancesPublic,
    WorkflowStatus,
)

APPS: dict[str, WorkflowApp] = {"Review": WorkflowApp.REVIEW, "Agent": WorkflowApp.AGENT}
LIMIT = 100
# Widget keys (`hitl_` so that signing out forgets them).
APP = "hitl_workflows_app"
STATUS = "hitl_workflows_status"
INSTANCE = "hitl_workflows_instance"
REFRESH = "workflows_refresh"
FINISHED = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.TERMINATED})


def format_seconds(seconds: float | None) -> str:
    """`26 ms`, `20.6 s`, then minutes and hours as `ui.format_duration`; an en dash if unknown."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return ui.format_duration(seconds)


def format_precise(moment: datetime | None) -> str:
    """A timestamp in UTC to the millisecond (steps are milliseconds apart)."""
    if moment is None:
        return "–"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def instance_duration(item: WorkflowInstancePublic, now: datetime) -> float | None:
    """How long a finished instance took, or how long an unfinished one has been running."""
    end = item.updated_at if item.status in FINISHED else now
    return _seconds(item.created_at, end)


def instance_rows(
    listed: WorkflowInstancesPublic, statuses: list[str], *, now: datetime
) -> list[dict[str, Any]]:
    """One row per instance whose status is in `statuses` (all of them when empty)."""
    return [
        {
            "instance": item.instance_id,
            "workflow": item.workflow,
            "status": item.status.value,
            "created": ui.format_time(item.created_at),
            "updated": ui.format_time(item.updated_at),
            "duration": format_seconds(instance_duration(item, now)),
            "failure": item.failure or "",
        }
        for item in listed.items
        if not statuses or item.status.value in statuses
    ]


def status_counts(listed: WorkflowInstancesPublic) -> str:
    """`running 3 · completed 40`: how many listed instances are in each status."""
    counts: dict[str, int] = {}
    for item in listed.items:
        counts[item.status.value] = counts.get(item.status.value, 0) + 1
    return " · ".join(f"{status} {count}" for status, count in counts.items())


def step_rows(history: WorkflowHistoryPublic) -> list[dict[str, Any]]:
    """One row per step, with the time since the previous step and since the start."""
    rows = []
    first = history.steps[0].at if history.steps else None
    previous: datetime | None = None
    for number, step in enumerate(history.steps, start=1):
        rows.append(
            {
                "#": number,
                "time": format_precise(step.at),
                "step": step.kind.value.replace("_", " "),
                "name": step.name or "",
                "outcome": step.outcome or "",
                "took": format_seconds(step.duration_seconds),
                "after previous": format_seconds(_seconds(previous, step.at)),
                "since start": format_seconds(_seconds(first, step.at)),
                "due": ui.format_time(step.due_at) if step.due_at is not None else "",
                "error": step.error or "",
            }
        )
        previous = step.at
    return rows


def _render_history(history: WorkflowHistoryPublic) -> None:
    item = history.instance
    st.subheader(safe_text.escape_markdown(f"{item.workflow} · {item.instance_id}"))
    st.caption(
        safe_text.escape_markdown(
            f"status {item.status.value} · created {ui.format_time(item.created_at)}"
            f" · updated {ui.format_time(item.updated_at)}"
        )
    )
    if item.failure:
        safe_text.text_block(item.failure, test_id="hitl-workflow-failure", small=True)
    if history.steps:
        st.dataframe(step_rows(history), hide_index=True, key="workflow_steps")
    else:
        st.caption("No step recorded yet.")


def render() -> None:
    """The Workflows page."""
    client = session.require_client()
    ui.inject_style()
    st.title("Workflows")
    st.caption(
        "Each review and each agent run is a Dapr workflow: its status, and the steps it took "
        "(activities, timers, events) with the time between them."
    )
    choose, refresh = st.columns([4, 1], vertical_alignment="bottom")
    with choose:
        label = st.radio("Service", list(APPS), key=APP, horizontal=True)
    with refresh:
        st.button("Refresh", key=REFRESH, icon=":material/refresh:")
    app = APPS[label or "Review"]

    try:
        listed = client.list_workflows(app, limit=LIMIT)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(
            safe_text.escape_markdown(f"Could not list the {app.value} workflows: {exc.message}.")
        )
        return

    statuses = st.multiselect(
        "Status",
        [status.value for status in WorkflowStatus],
        key=STATUS,
        placeholder="every status",
    )
    rows = instance_rows(listed, statuses, now=datetime.now(UTC))
    st.caption(
        safe_text.escape_markdown(
            f"{len(rows)} shown of the {len(listed.items)} newest instances"
            f" ({status_counts(listed) or 'none yet'})"
        )
    )
    if not listed.complete:
        st.warning(
            f"The sidecar listed only the first {listed.scanned:,} instance ids: the newest "
            "instances may be missing."
        )
    if not rows:
        st.info("No workflow instance to show.")
        return
    st.dataframe(rows, hide_index=True, key="workflow_instances")

    chosen = st.selectbox(
        "Instance",
        [row["instance"] for row in rows],
        index=None,
        key=INSTANCE,
        placeholder="choose an instance to see its steps",
    )
    if chosen is None:
        return
    try:
        history = client.workflow_history(app, chosen)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(safe_text.escape_markdown(f"Could not load {chosen}: {exc.message}."))
        return
    _render_history(history)
