"""A small typed client for the review API: the only thing the dashboard talks to.

Synchronous on purpose (Streamlit runs each page as a plain script). The models accept fields
they do not know (`extra="allow"`) so a newer API does not break an older dashboard, and the
History tables show whatever the API adds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

DecisionChoice = Literal["allow", "remove"]

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


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class QueueStats(_ApiModel):
    """`GET /v1/reviews/stats`: the queue at a glance (as Ozone's queue stats)."""

    pending: int = 0
    escalated: int = 0
    claimed: int = 0
    inbound_24h: int = 0
    actioned_24h: int = 0
    action_rate: float | None = Field(
        default=None, description="share of decided reviews whose decision was remove"
    )
    avg_handling_seconds: float | None = None


class Verdict(_ApiModel):
    """An automated verdict: a stage's decision on a post, its scores and versions."""

    stage: str
    decision: str
    primary_category: str
    confidence: float
    scores: dict[str, float] = Field(default_factory=dict)
    model_version: str | None = None
    policy_version: str | None = None
    rationale: str | None = None


class Suggestion(Verdict):
    """The latest automated verdict on the post under review."""


class Precedent(_ApiModel):
    """A similar past human decision."""

    text: str
    label: str
    decision: str


class Review(_ApiModel):
    """`ReviewPublic`: one review task with everything a moderator needs to decide it."""

    review_id: str
    post_id: str
    text: str | None = None
    author_id: str | None = None
    status: str
    priority: str = "normal"
    reason: str | None = None
    category: str | None = None
    claimed_by: str | None = None
    claimed_by_display: str | None = None  # `name (key:<id>)`: claimed_by is the key id
    claim_expires_at: datetime | None = None
    sla_due_at: datetime | None = None
    created_at: datetime | None = None
    appeal_of: str | None = None
    suggestion: Suggestion | None = None
    policy_section: str | None = None
    precedents: list[Precedent] = Field(default_factory=list)


class ReviewPage(_ApiModel):
    """`GET /v1/reviews`: one page of the queue and the total that matched."""

    items: list[Review]
    total: int


class DecisionAccepted(_ApiModel):
    """`POST /v1/reviews/{id}/decision` answered 202: the workflow has the decision."""

    review_id: str
    status: str = "accepted"


class TrailVerdict(Verdict):
    """A stage's verdict in a post's trail."""

    occurred_at: datetime | None = None


class TrailReview(_ApiModel):
    """A review of the post in its trail."""

    status: str
    priority: str | None = None
    reason: str | None = None
    category: str | None = None
    claimed_by: str | None = None
    claimed_by_display: str | None = None
    created_at: datetime | None = None


class TrailDecision(_ApiModel):
    """A moderator's decision in the post's trail."""

    label: str
    decision: str
    moderator_id: str | None = None
    moderator_display: str | None = None
    note: str | None = None
    decided_at: datetime | None = None


class PostTrail(_ApiModel):
    """`GET /v1/posts/{post_id}`: the post, its verdicts by stage, reviews and decisions."""

    post_id: str
    status: str
    author_id: str | None = None
    external_id: str | None = None
    text: str | None = None
    submitted_at: datetime | None = None
    verdicts: list[TrailVerdict] = Field(default_factory=list)
    reviews: list[TrailReview] = Field(default_factory=list)
    decisions: list[TrailDecision] = Field(default_factory=list)


class MetricsWindow(_ApiModel):
    """The period a metrics overview covers (whole buckets, the first may start earlier)."""

    since: datetime
    until: datetime
    hours: float
    bucket_minutes: int


class ThroughputBucket(_ApiModel):
    """What flowed through in one time bucket."""

    start: datetime
    posts: int = 0
    verdicts: dict[str, int] = Field(default_factory=dict, description="by stage")
    decisions: int = 0
    sent_to_humans: int = 0
    share_to_humans: float | None = None


class LatencyPercentiles(_ApiModel):
    """p50/p95/p99 of a stage's latency `measure` in a bucket (`start`) or the whole window."""

    start: datetime | None = None
    stage: str
    measure: str
    count: int = 0
    p50_ms: float
    p95_ms: float
    p99_ms: float


class LatencySample(_ApiModel):
    """Which verdicts the percentiles were computed on."""

    rows: int = 0
    cap: int = 0
    truncated: bool = False
    oldest: datetime | None = None


class DecisionCount(_ApiModel):
    stage: str
    decision: str
    count: int


class CategoryCount(_ApiModel):
    stage: str
    category: str
    count: int


class HumanShare(_ApiModel):
    posts: int = 0
    sent_to_humans: int = 0
    share: float | None = None


class Agreement(_ApiModel):
    """The model's and the agent's category against the human label."""

    label: str
    decisions: int = 0
    model_compared: int = 0
    model_agreed: int = 0
    model_agreement: float | None = None
    agent_compared: int = 0
    agent_agreed: int = 0
    agent_agreement: float | None = None


class ModeratorLoad(_ApiModel):
    moderator: str
    moderator_display: str | None = None  # `name (key:<id>)`: moderator is the key id
    decided: int = 0
    mean_handling_seconds: float | None = None
    mean_time_to_decision_seconds: float | None = None


class QueueMetrics(QueueStats):
    """The queue stats, the oldest waiting review and the load per moderator."""

    oldest_pending_at: datetime | None = None
    oldest_pending_age_seconds: float | None = None
    moderators: list[ModeratorLoad] = Field(default_factory=list)


class ModelVersionScores(_ApiModel):
    """A registered model version and its scores (None when its metrics lack them)."""

    kind: str
    version: str
    status: str
    created_at: datetime
    gold_macro_f1: float | None = None
    time_split_macro_f1: float | None = None
    validation_macro_f1: float | None = None
    eval_loss: float | None = None
    promoted: bool | None = None
    run_id: int | None = None


class JobRunSummary(_ApiModel):
    id: int
    job: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    counts: dict[str, Any] = Field(default_factory=dict)
    promoted: bool | None = None
    error: str | None = None


class MetricsOverview(_ApiModel):
    """`GET /v1/metrics/overview`: everything the Metrics page plots."""

    window: MetricsWindow
    throughput: list[ThroughputBucket] = Field(default_factory=list)
    latency: list[LatencyPercentiles] = Field(default_factory=list)
    latency_window: list[LatencyPercentiles] = Field(default_factory=list)
    latency_sample: LatencySample = Field(default_factory=LatencySample)
    decision_mix: list[DecisionCount] = Field(default_factory=list)
    category_mix: list[CategoryCount] = Field(default_factory=list)
    to_humans: HumanShare = Field(default_factory=HumanShare)
    agreement: list[Agreement] = Field(default_factory=list)
    agreement_total: Agreement | None = None
    queue: QueueMetrics = Field(default_factory=QueueMetrics)
    model_versions: list[ModelVersionScores] = Field(default_factory=list)
    job_runs: list[JobRunSummary] = Field(default_factory=list)


class ReviewApi(Protocol):
    """What the pages need from the review API (the real client, or a fake in tests)."""

    def stats(self) -> QueueStats: ...

    def claim_next(self) -> Review | None: ...

    def get_review(self, review_id: str) -> Review: ...

    def list_reviews(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        priority: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> ReviewPage: ...

    def claim(self, review_id: str) -> Review: ...

    def decide(
        self, review_id: str, *, label: str, decision: DecisionChoice, note: str | None
    ) -> DecisionAccepted: ...

    def post_trail(self, post_id: str) -> PostTrail: ...

    def decision_log_csv(self) -> bytes: ...

    def metrics_overview(self, *, hours: float, bucket_minutes: int) -> MetricsOverview: ...

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
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params)
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

    def stats(self) -> QueueStats:
        """The queue's counters; also how sign-in checks a key."""
        return QueueStats.model_validate_json(self._request("GET", "/v1/reviews/stats").content)

    def claim_next(self) -> Review | None:
        """Claim the highest-priority oldest claimable review; None when the queue is empty."""
        response = self._request(
            "POST",
            "/v1/reviews/claim-next",
            meanings={409: "someone else took that item at the same moment, try again"},
        )
        if response.status_code == 204 or not response.content:
            return None
        return Review.model_validate_json(response.content)

    def get_review(self, review_id: str) -> Review:
        """One review by id."""
        response = self._request(
            "GET", f"/v1/reviews/{_segment(review_id)}", meanings={404: f"no review '{review_id}'"}
        )
        return Review.model_validate_json(response.content)

    def list_reviews(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        priority: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> ReviewPage:
        """One page of reviews, by priority (urgent, high, normal) then oldest first."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        for name, value in (("status", status), ("category", category), ("priority", priority)):
            if value:
                params[name] = value
        response = self._request("GET", "/v1/reviews", params=params)
        return ReviewPage.model_validate_json(response.content)

    def claim(self, review_id: str) -> Review:
        """Claim (or extend the claim on) one review."""
        response = self._request(
            "POST",
            f"/v1/reviews/{_segment(review_id)}/claim",
            meanings={
                409: "someone else holds this item, or it is already decided",
                404: f"no review '{review_id}'",
            },
        )
        return Review.model_validate_json(response.content)

    def decide(
        self, review_id: str, *, label: str, decision: DecisionChoice, note: str | None
    ) -> DecisionAccepted:
        """Send the decision; the API hands it to the review's workflow (202)."""
        response = self._request(
            "POST",
            f"/v1/reviews/{_segment(review_id)}/decision",
            json={"label": label, "decision": decision, "note": note or None},
            meanings={
                409: "this item was already decided",
                403: "not authorized: you do not hold this item (your claim expired or was taken)",
                404: f"no review '{review_id}'",
            },
        )
        return DecisionAccepted.model_validate_json(response.content)

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

    def decision_log_csv(self) -> bytes:
        """The decision log as CSV, exactly as the API serves it."""
        return self._request("GET", "/v1/decisions.csv").content

    def metrics_overview(self, *, hours: float, bucket_minutes: int) -> MetricsOverview:
        """Throughput, latency, mixes, agreement, queue and models over the last `hours`."""
        response = self._request(
            "GET",
            "/v1/metrics/overview",
            params={"hours": f"{hours:g}", "bucket_minutes": bucket_minutes},
            meanings={404: "this review API has no metrics endpoint (an older version?)"},
        )
        return MetricsOverview.model_validate_json(response.content)


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
