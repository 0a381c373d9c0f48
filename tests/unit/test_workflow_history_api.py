"""`/v1/workflows` with a fake in place of the daprds (`deps.WorkflowHistoryDep`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.db.schemas import (
    WorkflowApp,
    WorkflowHistoryPublic,
    WorkflowInstancePublic,
    WorkflowInstancesPublic,
    WorkflowStatus,
    WorkflowStepKind,
    WorkflowStepPublic,
)
from moderation.events import PostSubmitted
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.sidecar.history import InstanceNotFound, SidecarUnavailable
from moderation.settings import Settings
from tests.unit.test_reviews_api import FakeWorkflows, make_key

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def instance(
    app: WorkflowApp, instance_id: str, minutes: int, status: str
) -> WorkflowInstancePublic:
    return WorkflowInstancePublic(
        app=app,
        instance_id=instance_id,
        workflow="review" if app is WorkflowApp.REVIEW else "classifier_agent",
        status=WorkflowStatus(status),
        created_at=T0 + timedelta(minutes=minutes),
        updated_at=T0 + timedelta(minutes=minutes, seconds=3),
    )


class FakeWorkflowHistory:
    """Instances per app in memory; `down` makes every call fail like an unreachable daprd."""

    def __init__(self) -> None:
        self.instances: dict[WorkflowApp, list[WorkflowInstancePublic]] = {
            WorkflowApp.REVIEW: [
                instance(WorkflowApp.REVIEW, "review-p2", 2, "running"),
                instance(WorkflowApp.REVIEW, "review-p1", 1, "completed"),
            ],
            WorkflowApp.AGENT: [instance(WorkflowApp.AGENT, "agent-p3-v1", 3, "failed")],
        }
        self.down = False
        self.limits: list[int] = []
        self.closed = 0

    def _check(self, app: WorkflowApp) -> None:
        if self.down:
            raise SidecarUnavailable(
                f"the {app.value} service's workflow engine is unreachable", "dapr at :1"
            )

    async def list_instances(self, app: WorkflowApp, *, limit: int) -> WorkflowInstancesPublic:
        self._check(app)
        self.limits.append(limit)
        items = self.instances[app][:limit]
        return WorkflowInstancesPublic(
            app=app, items=items, scanned=len(self.instances[app]), complete=True
        )

    async def history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic:
        self._check(app)
        for item in self.instances[app]:
            if item.instance_id == instance_id:
                start = item.created_at or T0
                steps = [
                    WorkflowStepPublic(
                        event_id=-1, at=start, kind=WorkflowStepKind.STARTED, name=item.workflow
                    ),
                    WorkflowStepPublic(
                        event_id=1,
                        at=start + timedelta(seconds=1),
                        kind=WorkflowStepKind.ACTIVITY_SCHEDULED,
                        name="create_review_task",
                    ),
                    WorkflowStepPublic(
                        event_id=1,
                        at=start + timedelta(seconds=2),
                        kind=WorkflowStepKind.ACTIVITY_COMPLETED,
                        name="create_review_task",
                        outcome="completed",
                        duration_seconds=1.0,
                    ),
                ]
                return WorkflowHistoryPublic(instance=item, steps=steps)
        raise InstanceNotFound(instance_id)

    async def close(self) -> None:
        self.closed += 1


@pytest.fixture
def history() -> FakeWorkflowHistory:
    return FakeWorkflowHistory()


@pytest.fixture
def app(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, history: FakeWorkflowHistory
) -> FastAPI:
    return build_app(
        settings,
        publisher=publisher,
        engine=engine,
        workflows=FakeWorkflows(),
        workflow_history=history,
    )


@pytest.fixture
def moderator(engine: Engine) -> dict[str, str]:
    # The instances' posts are the key's tenant's: a key sees only the instances of its
    # tenants' posts (`test_tenant_isolation.py`).
    posts = [PostSubmitted(post_id=p, text="t", author_id="a") for p in ("p1", "p2", "p3")]
    with Session(engine) as session:
        crud.record_events(session, events=posts)
    return make_key(engine, "moderate", name="alice")


async def test_the_newest_instances_of_each_app_are_listed(
    client: httpx.AsyncClient, moderator: dict[str, str], history: FakeWorkflowHistory
) -> None:
    review = await client.get("/v1/workflows", params={"app": "review"}, headers=moderator)
    agent = await client.get(
        "/v1/workflows", params={"app": "agent", "limit": 5}, headers=moderator
    )

    assert review.status_code == 200, review.text
    body = review.json()
    assert [(i["instance_id"], i["status"]) for i in body["items"]] == [
        ("review-p2", "running"),
        ("review-p1", "completed"),
    ]
    assert (body["app"], body["scanned"], body["complete"]) == ("review", 2, True)
    assert agent.json()["items"][0] | {"created_at": None, "updated_at": None} == {
        "app": "agent",
        "instance_id": "agent-p3-v1",
        "workflow": "classifier_agent",
        "status": "failed",
        "created_at": None,
        "updated_at": None,
        "completed_at": None,
        "failure": None,
    }
    assert history.limits == [50, 5]


async def test_one_instance_answers_its_steps_in_order(
    client: httpx.AsyncClient, moderator: dict[str, str]
) -> None:
    response = await client.get("/v1/workflows/review/review-p1", headers=moderator)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["instance"]["status"] == "completed"
    assert [(s["kind"], s["name"]) for s in body["steps"]] == [
        ("started", "review"),
        ("activity_scheduled", "create_review_task"),
        ("activity_completed", "create_review_task"),
    ]
    assert body["steps"][2]["duration_seconds"] == 1.0


async def test_an_unknown_instance_is_404(
    client: httpx.AsyncClient, moderator: dict[str, str]
) -> None:
    response = await client.get("/v1/workflows/agent/review-p1", headers=moderator)

    assert response.status_code == 404
    assert response.json()["detail"] == "no agent workflow instance 'review-p1'"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/workflows", {"app": "worker"}, "query app"),
        ("/v1/workflows", {}, "query app"),
        ("/v1/workflows", {"app": "review", "limit": 0}, "query limit"),
        ("/v1/workflows", {"app": "review", "limit": 201}, "query limit"),
        ("/v1/workflows/recorder/r-1", {}, "path app"),
        (f"/v1/workflows/review/{'x' * 301}", {}, "path instance_id"),
    ],
)
async def test_a_bad_app_or_limit_is_422_naming_the_field(
    client: httpx.AsyncClient,
    moderator: dict[str, str],
    path: str,
    params: dict[str, str | int],
    field: str,
) -> None:
    response = await client.get(path, params=params, headers=moderator)

    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_an_unreachable_daprd_is_503_with_the_reason(
    client: httpx.AsyncClient, moderator: dict[str, str], history: FakeWorkflowHistory
) -> None:
    history.down = True

    listed = await client.get("/v1/workflows", params={"app": "agent"}, headers=moderator)
    one = await client.get("/v1/workflows/review/review-p1", headers=moderator)

    for response, app in ((listed, "agent"), (one, "review")):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        detail = response.json()["detail"]
        assert f"the {app} service's workflow engine is unreachable" in detail
        assert "dapr at" not in detail  # addresses stay in the log


async def test_only_moderators_and_admins_may_read_workflows(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    submitter = make_key(engine, "submit", "read", name="forum")
    admin = make_key(engine, "admin", name="root")

    anonymous = await client.get("/v1/workflows", params={"app": "review"})
    refused = await client.get("/v1/workflows", params={"app": "review"}, headers=submitter)
    allowed = await client.get("/v1/workflows/review/review-p2", headers=admin)

    assert anonymous.status_code == 401
    assert refused.status_code == 403 and "moderate" in refused.json()["detail"]
    assert allowed.status_code == 200


async def test_the_lifespan_closes_the_reader(app: FastAPI, history: FakeWorkflowHistory) -> None:
    async with app.router.lifespan_context(app):
        assert history.closed == 0
    assert history.closed == 1


def test_the_openapi_document_describes_both_routes(app: FastAPI) -> None:
    document = app.openapi()
    listed = document["paths"]["/v1/workflows"]["get"]
    one = document["paths"]["/v1/workflows/{app}/{instance_id}"]["get"]

    assert listed["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WorkflowInstancesPublic"
    }
    assert one["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WorkflowHistoryPublic"
    }
    assert {"401", "403", "422", "503"} <= set(listed["responses"])
    assert "404" in one["responses"]
    schemas = document["components"]["schemas"]
    assert schemas["WorkflowApp"]["enum"] == ["agent", "review"]
    step = schemas["WorkflowStepPublic"]["properties"]
    assert {"at", "kind", "name", "outcome", "error", "duration_seconds"} <= set(step)
