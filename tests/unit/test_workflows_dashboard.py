"""The dashboard's Workflows page under Streamlit's AppTest, against canned API answers.

The fake review API of `test_dashboard.py` (behind the real `ApiClient`) also serves
`GET /v1/workflows` and `GET /v1/workflows/{app}/{instance_id}` here, and records their queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from hitl_dashboard import session, workflows_page
from moderation.db.schemas import WorkflowHistoryPublic
from tests.unit.markdown_shown import shown
from tests.unit.test_dashboard import APP, FakeReviewApi, rows, signed_in, titles
from tests.unit.test_dashboard_markdown import assert_shown_as_text

LIST_PATH = "/v1/workflows"
# Hostile text where the API could echo one: in an error message of a failed activity.
HOSTILE = "**boom** [click](http://evil.test) <img src=x onerror=alert(1)>"


def instance(
    app: str, instance_id: str, status: str, created: str, updated: str, failure: str | None = None
) -> dict[str, Any]:
    return {
        "app": app,
        "instance_id": instance_id,
        "workflow": "review" if app == "review" else "classifier_agent",
        "status": status,
        "created_at": created,
        "updated_at": updated,
        "completed_at": None,
        "failure": failure,
    }


def listing(app: str) -> dict[str, Any]:
    """What `GET /v1/workflows?app=` answers: the newest first."""
    if app == "agent":
        items = [
            instance(
                "agent",
                "agent-p9-v3",
                "failed",
                "2026-11-21T10:05:00Z",
                "2026-11-21T10:05:02.5Z",
                failure=f"TimeoutError: {HOSTILE}",
            )
        ]
    else:
        items = [
            instance(
                "review", "review-p2", "running", "2026-11-21T10:02:00Z", "2026-11-21T10:02:01Z"
            ),
            instance(
                "review", "review-p1", "completed", "2026-11-21T10:00:00Z", "2026-11-21T10:00:20.6Z"
            ),
        ]
    return {"app": app, "items": items, "scanned": len(items), "complete": True}


def step(
    event_id: int, at: str, kind: str, name: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "at": at,
        "kind": kind,
        "name": name,
        "outcome": None,
        "error": None,
        "duration_seconds": None,
        "due_at": None,
    } | extra


def history(app: str, instance_id: str) -> dict[str, Any] | None:
    """What `GET /v1/workflows/{app}/{id}` answers for the instances of `listing`."""
    found = next((i for i in listing(app)["items"] if i["instance_id"] == instance_id), None)
    if found is None:
        return None
    if app == "agent":
        steps = [
            step(-1, "2026-11-21T10:05:00Z", "started", "classifier_agent"),
            step(1, "2026-11-21T10:05:00.010Z", "activity_scheduled", "agent_model_call"),
            step(
                1,
                "2026-11-21T10:05:02.5Z",
                "activity_failed",
                "agent_model_call",
                outcome="failed",
                error=f"TimeoutError: {HOSTILE}",
                duration_seconds=2.49,
            ),
            step(2, "2026-11-21T10:05:02.5Z", "completed", outcome="failed"),
        ]
    else:
        steps = [
            step(-1, "2026-11-21T10:00:00Z", "started", "review"),
            step(1, "2026-11-21T10:00:00.100Z", "activity_scheduled", "create_review_task"),
            step(
                1,
                "2026-11-21T10:00:00.126Z",
                "activity_completed",
                "create_review_task",
                outcome="completed",
                duration_seconds=0.026,
            ),
            step(2, "2026-11-21T10:00:00.130Z", "timer_created", due_at="2026-11-21T11:00:00Z"),
            step(-1, "2026-11-21T10:00:20Z", "event_raised", "decision"),
            step(3, "2026-11-21T10:00:20.1Z", "activity_scheduled", "persist_decision"),
            step(
                3,
                "2026-11-21T10:00:20.5Z",
                "activity_completed",
                "persist_decision",
                outcome="completed",
                duration_seconds=0.4,
            ),
            step(4, "2026-11-21T10:00:20.6Z", "completed", outcome="completed"),
        ]
    return {"instance": found, "steps": steps}


@dataclass
class WorkflowsApi(FakeReviewApi):
    """The fake review API, also serving the workflow instances of both services."""

    queries: list[dict[str, str]] = field(default_factory=list)
    down: bool = False

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if method == "GET" and path.startswith(LIST_PATH):
            if self.down:
                detail = "service unavailable: the review service's workflow engine is unreachable"
                return httpx.Response(503, json={"detail": detail}, headers={"Retry-After": "5"})
            if path == LIST_PATH:
                self.queries.append(dict(request.url.params))
                return httpx.Response(200, json=listing(request.url.params["app"]))
            _, _, _, app, instance_id = path.split("/")
            found = history(app, instance_id)
            if found is None:
                return httpx.Response(404, json={"detail": f"no {app} workflow instance"})
            return httpx.Response(200, json=found)
        return super()._route(method, path, request)


@pytest.fixture
def api() -> WorkflowsApi:
    return WorkflowsApi()


def workflows_app(api: WorkflowsApi) -> AppTest:
    app = signed_in(api)
    app.switch_page("views/workflows.py").run()
    assert not app.exception, app.exception
    return app


# --- plain functions --------------------------------------------------------------------------


def test_durations_read_at_the_scale_of_workflow_steps() -> None:
    assert [workflows_page.format_seconds(s) for s in (None, 0.026, 2.49, 61.0, 7_300.0)] == [
        "–",
        "26 ms",
        "2.5 s",
        "1 min 01 s",
        "2 h 01 min",
    ]


def test_step_rows_time_each_step_from_the_previous_and_the_start() -> None:
    found = history("review", "review-p1")
    assert found is not None
    table = workflows_page.step_rows(WorkflowHistoryPublic.model_validate(found))

    assert [(r["step"], r["name"]) for r in table][:3] == [
        ("started", "review"),
        ("activity scheduled", "create_review_task"),
        ("activity completed", "create_review_task"),
    ]
    assert [r["after previous"] for r in table] == [
        "–", "100 ms", "26 ms", "4 ms", "19.9 s", "100 ms", "400 ms", "100 ms",
    ]  # fmt: skip
    assert table[-1]["since start"] == "20.6 s"
    assert table[2]["took"] == "26 ms"
    assert table[3]["due"] == "2026-11-21 11:00:00 UTC"


# --- the page -----------------------------------------------------------------------------------


def test_the_page_lists_the_review_workflows_first(api: WorkflowsApi) -> None:
    app = workflows_app(api)

    assert titles(app) == ["Workflows"]
    assert api.queries == [{"app": "review", "limit": "100"}]
    (table,) = app.dataframe
    assert [(r["instance"], r["status"], r["duration"]) for r in rows(table)][1:] == [
        ("review-p1", "completed", "20.6 s"),
    ]
    assert rows(table)[0]["instance"] == "review-p2"
    assert any("running 1 · completed 1" in c.value for c in app.caption)
    assert not app.error


def test_choosing_an_instance_shows_its_steps(api: WorkflowsApi) -> None:
    app = workflows_app(api)

    app.selectbox(key=workflows_page.INSTANCE).set_value("review-p1").run()

    assert not app.exception, app.exception
    _, steps = app.dataframe
    assert [r["name"] for r in rows(steps) if r["step"] == "activity completed"] == [
        "create_review_task",
        "persist_decision",
    ]
    assert rows(steps)[-1]["outcome"] == "completed"
    assert api.calls("GET", "/v1/workflows/review/review-p1") == 1


def test_the_status_filter_keeps_only_the_chosen_statuses(api: WorkflowsApi) -> None:
    app = workflows_app(api)

    app.multiselect(key=workflows_page.STATUS).set_value(["completed"]).run()

    (table,) = app.dataframe
    assert [r["instance"] for r in rows(table)] == ["review-p1"]
    assert app.selectbox(key=workflows_page.INSTANCE).options == ["review-p1"]


def test_switching_to_the_agent_shows_its_failure_as_plain_text(api: WorkflowsApi) -> None:
    app = workflows_app(api)

    app.radio(key=workflows_page.APP).set_value("Agent").run()
    app.selectbox(key=workflows_page.INSTANCE).set_value("agent-p9-v3").run()

    assert api.queries[-1] == {"app": "agent", "limit": "100"}
    table, steps = app.dataframe
    assert rows(table)[0]["failure"] == f"TimeoutError: {HOSTILE}"
    failed = rows(steps)[2]
    assert (failed["step"], failed["took"], failed["error"]) == (
        "activity failed",
        "2.5 s",
        f"TimeoutError: {HOSTILE}",
    )
    # The failure is also a text block above the steps; nothing of it reaches Markdown.
    assert_shown_as_text(app, "classifier_agent · agent-p9-v3", "status failed")


def test_an_unreachable_sidecar_is_an_error_on_the_page(api: WorkflowsApi) -> None:
    api.down = True
    app = workflows_app(api)

    assert [shown(e.value) for e in app.error] == [
        "Could not list the review workflows: the review service is unavailable, retry in 5s "
        "(service unavailable: the review service's workflow engine is unreachable)."
    ]
    assert not app.dataframe


def test_the_page_needs_a_session(api: WorkflowsApi) -> None:
    app = signed_in(api)
    app.switch_page("views/workflows.py")
    app.session_state[session.CLIENT] = None  # the session is gone (signed out elsewhere)

    app.run()

    assert titles(app) == ["Moderation review: sign in"]
    script = AppTest.from_file(APP.parent / "views" / "workflows.py", default_timeout=30)
    script.run()
    assert [w.value for w in script.warning] == ["Sign in to use the dashboard."]
