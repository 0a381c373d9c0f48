"""A small typed client for the review API: the only thing the dashboard talks to.

Synchronous on purpose (Streamlit runs each page as a plain script).

The answers are parsed with the API's own shapes, imported from `moderation.db.schemas`, not
with copies: one definition, so the dashboard cannot drift from the API. The deployment allows
it: the dashboard's image (docker/dashboard.Dockerfile) ships the `moderation` package, and the
k8s overlays give it the same release tag as the API's image. Importing the shapes is not talking
to the database: the dashboard reaches the API over HTTP only, and tests/unit/test_import_graph.py
forbids it `moderation.db.crud`, `moderation.db.engine` and `moderation.services`.
tests/unit/test_dashboard_contract.py checks each request, each answer's shape and every field
the pages read against the API's OpenAPI document, so a route that changes what it serves, or a
field the pages read that the API renames, fails a test. The shapes ignore fields they do not
know: an API that adds a field does not break the dashboard of the release before (roll the API
out first when a release adds a field the dashboard needs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx

from moderation.db.schemas import (
    AuditPagePublic,
    AuthorPublic,
    BulkDecisionResult,
    ConfigStatePublic,
    DecisionAccepted,
    MetricsOverviewPublic,
    PostTrail,
    ReviewGroupsPublic,
    ReviewPublic,
    ReviewsPublic,
    ReviewStatsPublic,
    WorkflowApp,
    WorkflowHistoryPublic,
    WorkflowInstancesPublic,
)

DecisionChoice = Literal["allow", "remove"]
BULK_TIMEOUT_SECONDS = 300.0

# What a status code means to a moderator; `ApiError.message` adds the API's own `detail`.
_STATUS_MEANING: Mapping[int, str] = {
    400: "the API refused the request",
    401: "not authorized: the API key was refused",
    403: "not authorized: this key may not do that (it needs the 'moderate' scope)",
    404: "not found",
    409: "conflict",
    422: "the API refused the values sent",
    503: "the review service is unavailable, try again shortly",
}


class ApiError(Exception):
    """A failed call: `status` (0 when the API could not be reached) and the API's `detail`."""

    def __init__(self, status: int, detail: str, *, meaning: str | None = None) -> None:
        self.status = status
        self.detail = detail
        self.meaning = meaning or _STATUS_MEANING.get(status, f"the API answered {status}")
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """One sentence for the moderator: what it means, then what the API said."""
        if not self.detail or self.detail == self.meaning:
            return self.meaning
        return f"{self.meaning} ({self.detail})"

    @property
    def unauthorized(self) -> bool:
        """Whether the key itself was refused (401) or lacks a scope (403)."""
        return self.status in (401, 403)


@dataclass(frozen=True)
class AuditQuery:
    """The audit page's filters (`GET /v1/audit`): exact matches, times inclusive."""

    actor: str | None = None
    action: str | None = None
    entity: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, str]:
        """The query parameters of the filters that are set."""
        params = {
            name: value.strip()
            for name, value in (
                ("actor", self.actor),
                ("action", self.action),
                ("entity", self.entity),
                ("entity_id", self.entity_id),
            )
            if value and value.strip()
        }
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None:
                params[name] = moment.isoformat()
        return params


class ReviewApi(Protocol):
    """What the pages need from the review API (the real client, or a fake in tests)."""

    def stats(self) -> ReviewStatsPublic: ...

    def claim_next(
        self, *, language: str | None = None, group: str | None = None
    ) -> ReviewPublic | None: ...

    def get_review(self, review_id: str) -> ReviewPublic: ...

    def groups(self) -> ReviewGroupsPublic: ...

    def list_reviews(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        priority: str | None = None,
        language: str | None = None,
        author_id: str | None = None,
        group: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> ReviewsPublic: ...

    def bulk_decide(
        self,
        *,
        review_ids: list[str] | None = None,
        author_id: str | None = None,
        label: str,
        decision: DecisionChoice,
        note: str | None,
    ) -> BulkDecisionResult: ...

    def claim(self, review_id: str) -> ReviewPublic: ...

    def decide(
        self,
        review_id: str,
        *,
        label: str,
        decision: DecisionChoice,
        note: str | None,
        add_images_to_hashlist: str | None = None,
    ) -> DecisionAccepted: ...

    def post_trail(self, post_id: str) -> PostTrail: ...

    def author(
        self, author_id: str, *, tenant: str | None = None, limit: int = 20
    ) -> AuthorPublic: ...

    def decision_log_csv(self) -> bytes: ...

    def image(self, sha256: str) -> bytes: ...

    def metrics_overview(self, *, hours: float, bucket_minutes: int) -> MetricsOverviewPublic: ...

    def live_config(self) -> ConfigStatePublic: ...

    def list_workflows(self, app: WorkflowApp, *, limit: int = 50) -> WorkflowInstancesPublic: ...

    def workflow_history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic: ...

    def audit(self, query: AuditQuery, *, limit: int = 50, offset: int = 0) -> AuditPagePublic: ...

    def audit_csv(self, query: AuditQuery) -> bytes: ...

    @property
    def cache_key(self) -> str:
        """Names the key without revealing it: results cached under it stay with that key."""
        ...

    def close(self) -> None: ...


class ApiClient:
    """The review API over HTTP with one moderator's key (`Authorization: Bearer <key>`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._cache_key = hashlib.sha256(api_key.encode()).hexdigest()

    @property
    def cache_key(self) -> str:
        """SHA-256 of the API key: what a cache of this key's answers is keyed by."""
        return self._cache_key

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        meanings: Mapping[int, str] | None = None,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.TimeoutException as exc:
            raise ApiError(0, str(exc), meaning="the review API did not answer in time") from exc
        except httpx.TransportError as exc:
            raise ApiError(
                0, str(exc), meaning=f"cannot reach the review API at {self._http.base_url}"
            ) from exc
        if response.is_success:
            return response
        meaning = (meanings or {}).get(response.status_code)
        if response.status_code == 503 and (retry := response.headers.get("Retry-After")):
            meaning = f"the review service is unavailable, retry in {retry}s"
        raise ApiError(response.status_code, _detail(response), meaning=meaning)

    def stats(self) -> ReviewStatsPublic:
        """The queue's counters; also how sign-in checks a key."""
        return ReviewStatsPublic.model_validate_json(
            self._request("GET", "/v1/reviews/stats").content
        )

    def claim_next(
        self, *, language: str | None = None, group: str | None = None
    ) -> ReviewPublic | None:
        """Claim the highest-priority oldest claimable review (of posts in `language`, of the
        moderator group `group` when given; else of the key's groups); None when the queue is
        empty."""
        chosen = (("language", language), ("group", group))
        params = {name: value for name, value in chosen if value}
        response = self._request(
            "POST",
            "/v1/reviews/claim-next",
            meanings={
                409: "someone else took that item at the same moment, try again",
                403: "this key does not work on that moderator group",
            },
            params=params or None,
        )
        if response.status_code == 204 or not response.content:
            return None
        return ReviewPublic.model_validate_json(response.content)

    def get_review(self, review_id: str) -> ReviewPublic:
        """One review by id."""
        response = self._request(
            "GET", f"/v1/reviews/{_segment(review_id)}", meanings={404: f"no review '{review_id}'"}
        )
        return ReviewPublic.model_validate_json(response.content)

    def groups(self) -> ReviewGroupsPublic:
        """The moderator groups reviews are routed to, their open reviews, and the key's."""
        response = self._request(
            "GET",
            "/v1/reviews/groups",
            meanings={404: "this review API does not route to moderator groups (an older one?)"},
        )
        return ReviewGroupsPublic.model_validate_json(response.content)

    def list_reviews(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        priority: str | None = None,
        language: str | None = None,
        author_id: str | None = None,
        group: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> ReviewsPublic:
        """One page of reviews, by priority (urgent, high, normal) then oldest first (of the
        key's moderator groups, or of `group`)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        for name, value in (
            ("status", status),
            ("category", category),
            ("priority", priority),
            ("language", language),
            ("author_id", author_id),
            ("group", group),
        ):
            if value:
                params[name] = value
        response = self._request("GET", "/v1/reviews", params=params)
        return ReviewsPublic.model_validate_json(response.content)

    def claim(self, review_id: str) -> ReviewPublic:
        """Claim (or extend the claim on) one review."""
        response = self._request(
            "POST",
            f"/v1/reviews/{_segment(review_id)}/claim",
            meanings={
                409: "someone else holds this item, or it is already decided",
                404: f"no review '{review_id}'",
                403: "this key may not claim it",
            },
        )
        return ReviewPublic.model_validate_json(response.content)

    def decide(
        self,
        review_id: str,
        *,
        label: str,
        decision: DecisionChoice,
        note: str | None,
        add_images_to_hashlist: str | None = None,
    ) -> DecisionAccepted:
        """Send the decision; the API hands it to the review's workflow (202). A removal may
        add the post's images to an existing hash list."""
        body: dict[str, Any] = {"label": label, "decision": decision, "note": note or None}
        if add_images_to_hashlist:
            body["add_images_to_hashlist"] = add_images_to_hashlist
        response = self._request(
            "POST",
            f"/v1/reviews/{_segment(review_id)}/decision",
            json=body,
            meanings={
                409: "this item was already decided",
                403: "not authorized: you do not hold this item (your claim expired or was taken)",
                404: f"no review '{review_id}'",
            },
        )
        return DecisionAccepted.model_validate_json(response.content)

    def bulk_decide(
        self,
        *,
        review_ids: list[str] | None = None,
        author_id: str | None = None,
        label: str,
        decision: DecisionChoice,
        note: str | None,
    ) -> BulkDecisionResult:
        """One decision for the listed reviews, or for every open review of `author_id`; the
        answer says per review whether it was decided, skipped (why) or failed."""
        body: dict[str, Any] = {"label": label, "decision": decision, "note": note or None}
        if review_ids is not None:
            body["review_ids"] = review_ids
        if author_id is not None:
            body["author_id"] = author_id
        # The API decides the reviews one after another: up to 500 take longer than one call.
        response = self._request(
            "POST", "/v1/reviews/bulk-decision", json=body, timeout=BULK_TIMEOUT_SECONDS
        )
        return BulkDecisionResult.model_validate_json(response.content)

    def post_trail(self, post_id: str) -> PostTrail:
        """Everything recorded about a post."""
        response = self._request(
            "GET",
            f"/v1/posts/{_segment(post_id)}",
            meanings={
                404: f"no post '{post_id}'",
                403: "not authorized: reading a post's trail needs the 'read' scope",
            },
        )
        return PostTrail.model_validate_json(response.content)

    def author(self, author_id: str, *, tenant: str | None = None, limit: int = 20) -> AuthorPublic:
        """An author's standing, strikes, actions and latest posts (`tenant`: the key's own
        when None; a moderator passes the tenant of the post under review)."""
        params: dict[str, str | int] = {"limit": limit}
        if tenant:
            params["tenant"] = tenant
        response = self._request(
            "GET",
            f"/v1/authors/{_segment(author_id)}",
            params=params,
            meanings={
                404: f"no author '{author_id}' in this tenant",
                403: "not authorized: reading an author needs the 'read' or 'moderate' scope",
            },
        )
        return AuthorPublic.model_validate_json(response.content)

    def decision_log_csv(self) -> bytes:
        """The decision log as CSV, exactly as the API serves it."""
        return self._request("GET", "/v1/decisions.csv").content

    def image(self, sha256: str) -> bytes:
        """A post's stored image (sanitized), by `ImageRef.sha256`."""
        return self._request(
            "GET",
            f"/v1/images/{_segment(sha256)}",
            meanings={404: "this image is not available (unknown, or of another tenant)"},
        ).content

    def metrics_overview(self, *, hours: float, bucket_minutes: int) -> MetricsOverviewPublic:
        """Throughput, latency, mixes, agreement, queue and models over the last `hours`."""
        response = self._request(
            "GET",
            "/v1/metrics/overview",
            params={"hours": f"{hours:g}", "bucket_minutes": bucket_minutes},
            meanings={404: "this review API has no metrics endpoint (an older version?)"},
        )
        return MetricsOverviewPublic.model_validate_json(response.content)

    def live_config(self) -> ConfigStatePublic:
        """The live configuration the services apply: what is set, its version, the changes."""
        response = self._request(
            "GET",
            "/v1/config",
            meanings={
                404: "this review API has no live configuration endpoint (an older version?)"
            },
        )
        return ConfigStatePublic.model_validate_json(response.content)

    def list_workflows(self, app: WorkflowApp, *, limit: int = 50) -> WorkflowInstancesPublic:
        """The newest Dapr workflow instances of the agent or review service, newest first."""
        response = self._request(
            "GET",
            "/v1/workflows",
            params={"app": app.value, "limit": limit},
            meanings={404: "this review API has no workflows endpoint (an older version?)"},
        )
        return WorkflowInstancesPublic.model_validate_json(response.content)

    def workflow_history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic:
        """One workflow instance's status and step history."""
        response = self._request(
            "GET",
            f"/v1/workflows/{app.value}/{_segment(instance_id)}",
            meanings={404: f"no {app.value} workflow instance '{instance_id}'"},
        )
        return WorkflowHistoryPublic.model_validate_json(response.content)

    def audit(self, query: AuditQuery, *, limit: int = 50, offset: int = 0) -> AuditPagePublic:
        """A page of the audit trail matching `query`, newest first."""
        response = self._request(
            "GET",
            "/v1/audit",
            params={**query.params(), "limit": limit, "offset": offset},
            meanings={404: "this review API has no audit endpoint (an older version?)"},
        )
        return AuditPagePublic.model_validate_json(response.content)

    def audit_csv(self, query: AuditQuery) -> bytes:
        """Every entry matching `query` as CSV, exactly as the API serves it."""
        return self._request("GET", "/v1/audit.csv", params=query.params()).content


def _segment(value: str) -> str:
    """`value` as one path segment: an id typed by a moderator cannot reach another route."""
    segment = quote(value.strip(), safe="")
    # `.` and `..` survive quoting and would be resolved as relative path segments.
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _detail(response: httpx.Response) -> str:
    """The API's `detail` sentence, or the start of the body when it is not the usual JSON."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)[:200]
    return response.text.strip()[:200]
