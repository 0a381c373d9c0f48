"""The moderator dashboard under Streamlit's AppTest, against an in-memory review API.

The fake API is an `httpx.MockTransport` handler behind the real `ApiClient`, so these tests run
the client's requests, parsing and error messages too, without a network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from hitl_dashboard import queue_page, session
from hitl_dashboard.api_client import ApiClient, ApiError, ReviewApi
from hitl_dashboard.history_page import decision_log_source
from tests.unit.markdown_shown import shown

APP = Path(__file__).parents[2] / "hitl_dashboard" / "app.py"
GOOD_KEY = "mod-key-alice"
API_URL = "http://review-api.test"
CSV = (
    "decided_at,review_id,post_id,label,decision,moderator,note,overrode,policy_version\n"
    "2026-11-20T10:00:00+00:00,review-p0,p0,spam,remove,alice,,allow,v1\n"
)
POLICY_VIOLENCE = "Threats of physical harm against a person are removed."


def review_json(
    post_id: str,
    text: str,
    *,
    category: str,
    scores: dict[str, float],
    precedents: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A `ReviewPublic` as the API serves it (every field: the dashboard parses it with it)."""
    primary = max(scores, key=lambda c: scores[c])
    return {
        "review_id": f"review-{post_id}",
        "post_id": post_id,
        "text": text,
        "author_id": "user-1",
        "group": "general",
        "status": "pending",
        "priority": "normal",
        "reason": "uncertain",
        "category": category,
        "claimed_by": None,
        "claim_expires_at": None,
        "sla_due_at": "2026-11-21T12:00:00Z",
        "escalated_at": None,
        "decided_at": None,
        "decided_by": None,
        "created_at": "2026-11-21T10:00:00Z",
        "appeal_of": None,
        "suggestion": {
            "stage": "agent",
            "decision": "review",
            "primary_category": primary,
            "confidence": scores[primary],
            "scores": scores,
            "rationale": "Reads as a threat, but the context is unclear.",
            "model_version": "fast-2026-11-01",
            "policy_version": "v1",
        },
        "policy_section": f"Policy for {category}. "
        + (POLICY_VIOLENCE if category == "violence" else "Unsolicited promotion is removed."),
        "precedents": precedents or [],
    }


def threat() -> dict[str, Any]:
    return review_json(
        "p1",
        "I know where you live and I will hurt you",
        category="violence",
        scores={"safe": 0.20, "violence": 0.62, "harassment": 0.15, "spam": 0.03},
        precedents=[
            {
                "post_id": "p0",
                "text": "you'll regret this, I'll find you",
                "label": "violence",
                "decision": "remove",
                "note": None,
                "similarity": 0.81,
            }
        ],
    )


def spam() -> dict[str, Any]:
    return review_json(
        "p2",
        "cheap watches at example.com",
        category="spam",
        scores={"safe": 0.45, "spam": 0.55},
    )


def trail_json(post_id: str) -> dict[str, Any]:
    """`GET /v1/posts/{id}` of a post the model, the agent and a moderator judged."""
    verdict = {
        "decision": "review",
        "primary_category": "spam",
        "confidence": 0.55,
        "scores": {"safe": 0.45, "spam": 0.55},
        "model_version": "fast-2026-11-01",
        "policy_version": "v1",
        "rationale": None,
        "latency_ms": 2.0,
        "occurred_at": "2026-11-21T10:00:00Z",
    }
    return {
        "post_id": post_id,
        "status": "decided",
        "author_id": "user-1",
        "external_id": None,
        "text": "cheap watches at example.com",
        "submitted_at": "2026-11-21T09:59:59Z",
        "verdicts": [
            {**verdict, "stage": "model"},
            {**verdict, "stage": "agent", "rationale": "promotional link"},
        ],
        "reviews": [
            {
                "review_id": f"review-{post_id}",
                "appeal_of": None,
                "status": "decided",
                "priority": "normal",
                "reason": "uncertain",
                "category": "spam",
                "claimed_by": "alice",
                "sla_due_at": None,
                "escalated_at": None,
                "decided_at": "2026-11-21T10:05:00Z",
                "decided_by": "alice",
                "created_at": "2026-11-21T10:00:01Z",
                "updated_at": "2026-11-21T10:05:00Z",
            }
        ],
        "decisions": [
            {
                "event_id": "decision-1",
                "review_id": f"review-{post_id}",
                "label": "spam",
                "decision": "remove",
                "moderator_id": "alice",
                "note": "link farm",
                "overrode": "review",
                "decided_at": "2026-11-21T10:05:00Z",
            }
        ],
    }


# A 2x2 PNG: what `GET /v1/images/{sha256}` serves in these tests.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg=="
)


def image_ref(seed: str) -> dict[str, Any]:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return {
        "sha256": digest,
        "original_sha256": digest,
        "original_md5": hashlib.md5(seed.encode()).hexdigest(),
        "pdq": digest,
        "pdq_quality": 100,
        "format": "png",
        "width": 2,
        "height": 2,
        "size_bytes": len(PNG),
        "uri": f"file:///{digest}",
    }


@dataclass
class FakeReviewApi:
    """The review API's contract in memory (issue5-design.md, "Review API")."""

    queue: list[dict[str, Any]] = field(default_factory=list)
    keys: set[str] = field(default_factory=lambda: {GOOD_KEY})
    failures: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    decisions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    decided: int = 0
    # What `POST .../decision` answers: "accepted" (202), or a double review's vote (200).
    decision_status: str = "accepted"
    images_served: list[str] = field(default_factory=list)
    clients: list[ApiClient] = field(default_factory=list)
    # `GET /v1/reviews/groups`: by default nothing is routed (every review is `general`).
    groups: dict[str, Any] = field(
        default_factory=lambda: {
            "items": [
                {
                    "name": "general",
                    "categories": [],
                    "languages": [],
                    "open": 0,
                    "mine": True,
                    "default": True,
                }
            ],
            "key_groups": None,
        }
    )

    def factory(self, api_url: str, api_key: str) -> ReviewApi:
        client = ApiClient(api_url, api_key, transport=httpx.MockTransport(self.handle))
        self.clients.append(client)
        return client

    def calls(self, method: str, path: str) -> int:
        return self.requests.count((method, path))

    def handle(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key not in self.keys:
            return httpx.Response(401, json={"detail": "invalid or revoked API key"})
        if (method, path) in self.failures:
            status, detail = self.failures[(method, path)]
            return httpx.Response(status, json={"detail": detail})
        return self._route(method, path, request)

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if (method, path) == ("GET", "/v1/reviews/stats"):
            return httpx.Response(
                200,
                json={
                    "pending": len(self.queue),
                    "escalated": 1,
                    "claimed": 0,
                    "inbound_24h": 12,
                    "actioned_24h": self.decided,
                    "action_rate": 0.25,
                    "avg_handling_seconds": 252.0,
                },
            )
        if (method, path) == ("GET", "/v1/reviews/groups"):
            return httpx.Response(200, json=self.groups)
        if (method, path) == ("POST", "/v1/reviews/claim-next"):
            if not self.queue:
                return httpx.Response(204)
            return httpx.Response(200, json=self._claimed(self.queue.pop(0)))
        if method == "POST" and path.endswith("/claim"):
            review_id = path.split("/")[3]
            for item in self.queue:
                if item["review_id"] == review_id:
                    self.queue.remove(item)
                    return httpx.Response(200, json=self._claimed(item))
            return httpx.Response(404, json={"detail": f"review '{review_id}' not found"})
        if method == "POST" and path.endswith("/decision"):
            self.decisions.append((path.split("/")[3], json.loads(request.content)))
            self.decided += 1
            accepted = {
                "review_id": path.split("/")[3],
                "event_id": f"decision-{self.decided}",
                "status": self.decision_status,
            }
            return httpx.Response(202 if self.decision_status == "accepted" else 200, json=accepted)
        if (method, path) == ("GET", "/v1/reviews"):
            page = {"items": self.queue, "total": len(self.queue), "limit": 50, "offset": 0}
            return httpx.Response(200, json=page)
        if method == "GET" and path.startswith("/v1/posts/"):
            return httpx.Response(200, json=trail_json(path.split("/")[3]))
        if method == "GET" and path.startswith("/v1/images/"):
            self.images_served.append(path.split("/")[3])
            return httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"})
        if (method, path) == ("GET", "/v1/decisions.csv"):
            return httpx.Response(200, content=CSV.encode(), headers={"Content-Type": "text/csv"})
        return httpx.Response(404, json={"detail": "no such route"})

    @staticmethod
    def _claimed(item: dict[str, Any]) -> dict[str, Any]:
        expires = datetime.now(UTC) + timedelta(seconds=300)
        return {
            **item,
            "status": "claimed",
            "claimed_by": "alice",
            "claim_expires_at": str(expires),
        }


@pytest.fixture
def api() -> FakeReviewApi:
    return FakeReviewApi(queue=[threat(), spam()])


def new_app(api: FakeReviewApi) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=30)
    app.session_state[session.CLIENT_FACTORY] = api.factory
    return app


def signed_in(api: FakeReviewApi) -> AppTest:
    app = new_app(api).run()
    app.text_input(key="hitl_sign_in_key").input(GOOD_KEY)
    app.button(key="sign_in").click().run()
    assert not app.exception
    return app


def titles(app: AppTest) -> list[str]:
    return [title.value for title in app.title]


def html_bodies(app: AppTest, test_id: str) -> list[str]:
    return [h.value for h in app.html if f'data-testid="{test_id}"' in h.value]


def metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def rows(element: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = element.value.to_dict("records")
    return records


def chart_data(app: AppTest) -> dict[str, list[Any]]:
    (chart,) = app.get("vega_lite_chart")
    frame = convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data)
    data: dict[str, list[Any]] = frame.to_dict("list")
    return data


# --- sign-in and the session ------------------------------------------------------------


def test_anonymous_visitor_sees_only_sign_in(api: FakeReviewApi) -> None:
    app = new_app(api).run()

    assert not app.exception
    assert titles(app) == ["Moderation review: sign in"]
    assert [b.key for b in app.button] == ["sign_in"]
    assert not app.metric
    assert api.requests == []


@pytest.mark.parametrize("page", ["views/queue.py", "views/history.py", "views/metrics.py"])
def test_every_page_shows_sign_in_without_a_session(api: FakeReviewApi, page: str) -> None:
    app = signed_in(api)
    app.switch_page(page)
    app.session_state[session.CLIENT] = None  # the session is gone (signed out elsewhere)
    before = len(api.requests)

    app.run()

    assert titles(app) == ["Moderation review: sign in"]
    assert not app.metric and not app.download_button
    assert len(api.requests) == before


@pytest.mark.parametrize("page", ["queue.py", "history.py", "metrics.py"])
def test_page_scripts_refuse_to_render_without_a_session(api: FakeReviewApi, page: str) -> None:
    app = AppTest.from_file(APP.parent / "views" / page, default_timeout=30)
    app.session_state[session.CLIENT_FACTORY] = api.factory

    app.run()

    assert [w.value for w in app.warning] == ["Sign in to use the dashboard."]
    assert not app.title
    assert api.requests == []


def test_wrong_key_shows_an_error(api: FakeReviewApi) -> None:
    app = new_app(api).run()
    app.text_input(key="hitl_sign_in_key").input("not-a-key")

    app.button(key="sign_in").click().run()

    assert titles(app) == ["Moderation review: sign in"]
    (error,) = app.error
    assert "not authorized" in shown(error.value) and "invalid or revoked API key" in shown(
        error.value
    )
    assert session.CLIENT not in app.session_state
    assert api.calls("GET", "/v1/reviews/stats") == 1


def test_empty_key_is_not_sent(api: FakeReviewApi) -> None:
    app = new_app(api).run()

    app.button(key="sign_in").click().run()

    assert [shown(e.value) for e in app.error] == ["Enter your API key."]
    assert api.requests == []


def test_good_key_signs_in_and_shows_the_queue(api: FakeReviewApi) -> None:
    app = signed_in(api)

    assert titles(app) == ["Review queue"]
    assert metric(app, "Pending") == "2"
    assert metric(app, "Escalated") == "1"
    assert metric(app, "Inbound 24 h") == "12"
    assert metric(app, "Action rate") == "25%"
    assert metric(app, "Avg handling") == "4 min 12 s"
    assert "sign_out" in [b.key for b in app.button]
    assert app.button(key="claim_next").proto.shortcut == "n"  # nothing on screen: n claims
    # The key lives in the client only: the sign-in form's input is gone from the state.
    assert "hitl_sign_in_key" not in app.session_state


def test_idle_session_expires_and_asks_to_sign_in_again(api: FakeReviewApi) -> None:
    app = signed_in(api)
    idle = session.idle_limit_seconds()
    app.session_state[session.LAST_ACTIVITY].last = time.monotonic() - idle + 60
    app.run()
    assert titles(app) == ["Review queue"]  # idle a minute short of the limit: still in

    app.session_state[session.LAST_ACTIVITY].last = time.monotonic() - idle - 1
    app.run()

    assert titles(app) == ["Moderation review: sign in"]
    (warning,) = app.warning
    assert "expired" in shown(warning.value) and "sign in again" in shown(warning.value)
    assert api.clients[-1]._http.is_closed


def test_a_session_in_use_still_ends_at_its_absolute_lifetime(api: FakeReviewApi) -> None:
    app = signed_in(api)
    activity = app.session_state[session.LAST_ACTIVITY]
    activity.started = time.monotonic() - session.MAX_SESSION_SECONDS + 60
    app.run()
    assert titles(app) == ["Review queue"]  # a minute short of the limit: still in

    activity.started = time.monotonic() - session.MAX_SESSION_SECONDS - 1
    app.run()  # active a moment ago, but signed in too long ago

    assert titles(app) == ["Moderation review: sign in"]
    (warning,) = app.warning
    assert "12-hour limit" in shown(warning.value) and "sign in again" in shown(warning.value)
    assert api.clients[-1]._http.is_closed


def test_expired_session_runs_no_action(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.session_state[session.LAST_ACTIVITY].last = (
        time.monotonic() - session.idle_limit_seconds() - 1
    )

    app.button(key="claim_next").click().run()

    assert titles(app) == ["Moderation review: sign in"]
    assert api.calls("POST", "/v1/reviews/claim-next") == 0


def test_revoked_key_signs_the_moderator_out(api: FakeReviewApi) -> None:
    app = signed_in(api)
    api.keys.clear()

    app.run()

    assert titles(app) == ["Moderation review: sign in"]
    assert "not authorized" in shown(app.warning[0].value)


def test_sign_out_forgets_the_session(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()
    app.button(key="decide_remove").click().run()

    app.button(key="sign_out").click().run()

    assert not app.exception
    assert titles(app) == ["Moderation review: sign in"]
    assert [shown(w.value) for w in app.warning] == ["Signed out."]
    assert api.clients[-1]._http.is_closed
    app.text_input(key="hitl_sign_in_key").input(GOOD_KEY)
    app.button(key="sign_in").click().run()
    assert titles(app) == ["Review queue"]
    assert not app.subheader  # the previous session's item and form are gone


# --- the queue --------------------------------------------------------------------------


def test_claim_next_shows_post_suggestion_scores_policy_and_precedents() -> None:
    api = FakeReviewApi(queue=[spam(), threat()])
    app = signed_in(api)

    app.button(key="claim_next").click().run()

    assert api.calls("POST", "/v1/reviews/claim-next") == 1
    assert [shown(s.value) for s in app.subheader] == ["Review review-p2"]
    (post,) = html_bodies(app, "hitl-post")
    assert "cheap watches at example.com" in post and "hitl-blurred" not in post
    assert "reveal" not in [b.key for b in app.button]
    assert metric(app, "Suggests") == "review"
    assert metric(app, "Category") == "spam"
    assert metric(app, "Confidence") == "55%"
    (rationale,) = html_bodies(app, "hitl-rationale")
    assert "Reads as a threat, but the context is unclear." in rationale
    assert chart_data(app) == {"category": ["safe", "spam"], "score": [0.45, 0.55]}
    assert any("Unsolicited promotion is removed." in m.value for m in app.markdown)
    assert shown(app.expander[0].label) == "Policy: spam (v1)"
    assert app.selectbox(key=queue_page.LABEL).value == "spam"
    assert metric(app, "Pending") == "1"


def test_post_text_is_escaped_not_rendered() -> None:
    hostile = review_json(
        "p9", "<img src=x onerror=alert(1)> **bold**", category="spam", scores={"spam": 0.6}
    )
    app = signed_in(FakeReviewApi(queue=[hostile]))

    app.button(key="claim_next").click().run()

    (post,) = html_bodies(app, "hitl-post")
    assert "&lt;img src=x onerror=alert(1)&gt; **bold**" in post
    assert "<img" not in post


def test_sensitive_post_is_blurred_until_revealed(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()

    (post,) = html_bodies(app, "hitl-post")
    assert "hitl-blurred" in post
    assert not app.dataframe  # precedents of a sensitive post stay hidden too
    assert any("hidden until you reveal" in c.value for c in app.caption)

    app.button(key="reveal").click().run()

    (post,) = html_bodies(app, "hitl-post")
    assert "hitl-blurred" not in post and "I will hurt you" in post
    assert "reveal" not in [b.key for b in app.button]
    assert rows(app.dataframe[0]) == [
        {"decision": "remove", "label": "violence", "text": "you'll regret this, I'll find you"}
    ]
    assert any(POLICY_VIOLENCE in m.value for m in app.markdown)


def test_submit_and_next_decides_then_claims_the_next(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()
    assert metric(app, "Pending") == "1"

    app.button(key="decide_remove").click().run()
    assert app.selectbox(key=queue_page.LABEL).value == "violence"  # the suggested violation
    app.button(key="label_3").click().run()  # key 3: harassment
    app.text_area(key=queue_page.NOTE).input("targeted threat").run()
    app.button(key="submit_next").click().run()

    assert not app.exception and not app.error
    assert api.decisions == [
        ("review-p1", {"label": "harassment", "decision": "remove", "note": "targeted threat"})
    ]
    assert api.calls("POST", "/v1/reviews/claim-next") == 2
    assert [shown(t.value) for t in app.toast] == [
        "Decision recorded: remove as harassment (review-p1)."
    ]
    assert [shown(s.value) for s in app.subheader] == ["Review review-p2"]
    assert metric(app, "Pending") == "0"  # the queue shrank
    assert app.text_area(key=queue_page.NOTE).value == ""
    assert app.selectbox(key=queue_page.LABEL).value == "spam"


def test_allow_labels_safe_and_submit_stops_after_the_decision(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()

    app.button(key="decide_allow").click().run()
    assert app.selectbox(key=queue_page.LABEL).value == "safe"
    app.button(key="submit").click().run()

    assert api.decisions == [("review-p1", {"label": "safe", "decision": "allow", "note": None})]
    assert api.calls("POST", "/v1/reviews/claim-next") == 1
    assert not app.subheader
    assert any("No item claimed" in i.value for i in app.info)


def test_submit_needs_a_decision_and_a_violated_category(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()

    app.button(key="submit_next").click().run()
    assert [shown(e.value) for e in app.error] == ["Choose Allow (key a) or Remove (key r) first."]

    app.button(key="decide_remove").click().run()
    app.button(key="label_1").click().run()  # key 1: safe
    app.button(key="submit_next").click().run()

    assert [shown(e.value) for e in app.error] == [
        "Pick the category the post violates (keys 1-9) to remove it."
    ]
    assert api.decisions == []


def test_decision_conflict_shows_a_clear_message(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()
    api.failures[("POST", "/v1/reviews/review-p1/decision")] = (
        409,
        "review review-p1 is already decided",
    )

    app.button(key="decide_remove").click().run()
    app.button(key="submit_next").click().run()

    (error,) = app.error
    assert shown(error.value) == (
        "Decision on review-p1 not recorded: this item was already decided "
        "(review review-p1 is already decided)."
    )
    assert not app.subheader  # the item left the screen; nothing else was claimed
    assert api.calls("POST", "/v1/reviews/claim-next") == 1


def test_claim_held_by_someone_else_says_so(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.toggle(key=queue_page.SHOW_QUEUE).set_value(True).run()
    assert [r["review_id"] for r in rows(app.dataframe[0])] == ["review-p1", "review-p2"]
    api.failures[("POST", "/v1/reviews/review-p2/claim")] = (409, "claimed by bob")

    app.text_input(key=queue_page.CLAIM_ID).input("review-p2").run()
    app.button(key="claim_by_id").click().run()

    (error,) = app.error
    assert shown(error.value) == (
        "Could not claim review-p2: someone else holds this item, or it is already decided "
        "(claimed by bob)."
    )
    assert not app.subheader


def test_claim_by_id_shows_that_review(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.toggle(key=queue_page.SHOW_QUEUE).set_value(True).run()

    app.text_input(key=queue_page.CLAIM_ID).input("review-p2").run()
    app.button(key="claim_by_id").click().run()

    assert [shown(s.value) for s in app.subheader] == ["Review review-p2"]


def test_empty_queue_says_so() -> None:
    api = FakeReviewApi()
    app = signed_in(api)

    app.button(key="claim_next").click().run()

    assert any(shown(i.value) == "The queue is empty: nothing to claim." for i in app.info)


def test_expired_claim_is_renewed_before_deciding() -> None:
    api = FakeReviewApi(queue=[spam()])
    client = api.factory(API_URL, GOOD_KEY)
    review = client.claim_next()
    assert review is not None
    state: dict[str, Any] = {}
    queue_page.start_review(state, review)
    queue_page.choose(state, "remove")
    api.queue.append(spam())  # released after expiry, claimable again

    later = datetime.now(UTC) + timedelta(seconds=301)
    assert queue_page.submit_decision(state, client, next_item=False, now=later)

    assert api.requests[-2:] == [
        ("POST", "/v1/reviews/review-p2/claim"),
        ("POST", "/v1/reviews/review-p2/decision"),
    ]


def test_remove_shortcut_script_targets_the_remove_button(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()

    scripts = [h for h in app.html if "<script>" in h.value]
    assert len(scripts) == 1
    assert scripts[0].proto.unsafe_allow_javascript
    assert ".st-key-decide_remove button" in scripts[0].value
    shortcuts = {b.key: b.proto.shortcut for b in app.button if b.proto.shortcut}
    assert shortcuts == {
        "reveal": "v",
        "decide_allow": "a",
        "submit_next": "n",
        **{f"label_{n}": str(n) for n in range(1, 10)},
    }


# --- history ----------------------------------------------------------------------------


def test_history_shows_a_trail_and_offers_the_decision_log(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.switch_page("views/history.py").run()
    assert titles(app) == ["History"]
    assert not app.dataframe

    app.text_input(key="hitl_history_input").input("p2")
    app.button(key="trail_lookup").click().run()

    assert not app.exception and not app.error
    assert api.calls("GET", "/v1/posts/p2") == 1
    assert [shown(s.value) for s in app.subheader] == ["Post p2"]
    verdicts, reviews, decisions = (rows(d) for d in app.dataframe)
    assert [(v["stage"], v["top_scores"]) for v in verdicts] == [
        ("model", "spam 0.55, safe 0.45"),
        ("agent", "spam 0.55, safe 0.45"),
    ]
    assert [(r["status"], r["claimed_by"]) for r in reviews] == [("decided", "alice")]
    assert [(d["label"], d["decision"], d["moderator_id"], d["note"]) for d in decisions] == [
        ("spam", "remove", "alice", "link farm")
    ]
    (download,) = app.download_button
    assert download.label == "Export decision log (CSV)"
    assert download.key == "export_csv"


def test_history_lookup_error_is_clear(api: FakeReviewApi) -> None:
    app = signed_in(api)
    app.switch_page("views/history.py").run()
    api.failures[("GET", "/v1/posts/nope")] = (404, "post 'nope' not found")

    app.text_input(key="hitl_history_input").input("nope")
    app.button(key="trail_lookup").click().run()

    assert [shown(e.value) for e in app.error] == [
        "Could not load the trail of nope: no post 'nope' (post 'nope' not found)."
    ]


def test_decision_log_download_fetches_the_csv_while_the_session_lasts(
    api: FakeReviewApi,
) -> None:
    activity = session.Activity(last=time.monotonic())
    fetch: Callable[[], bytes] = decision_log_source(
        api.factory(API_URL, GOOD_KEY), activity, idle_limit=60.0
    )
    assert api.requests == []  # nothing fetched until the moderator clicks

    assert fetch() == CSV.encode()
    assert api.requests == [("GET", "/v1/decisions.csv")]

    activity.last -= 61  # the page stayed open past the idle limit
    with pytest.raises(ApiError, match="session expired"):
        fetch()
    activity.last += 61
    activity.ended = True  # signed out meanwhile
    with pytest.raises(ApiError, match="session expired"):
        fetch()
    assert api.calls("GET", "/v1/decisions.csv") == 1


# --- the client ---------------------------------------------------------------------------


def test_client_sends_the_key_and_reads_an_empty_queue() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = ApiClient(API_URL, "k1", transport=httpx.MockTransport(handle))

    assert client.claim_next() is None
    assert seen[0].headers["Authorization"] == "Bearer k1"
    assert str(seen[0].url) == f"{API_URL}/v1/reviews/claim-next"


@pytest.mark.parametrize(
    ("status", "call", "message"),
    [
        (401, "stats", "not authorized: the API key was refused (d)"),
        (
            403,
            "stats",
            "not authorized: this key may not do that (it needs the 'moderate' scope) (d)",
        ),
        (409, "claim", "someone else holds this item, or it is already decided (d)"),
        (409, "decide", "this item was already decided (d)"),
        (
            403,
            "decide",
            "not authorized: you do not hold this item (your claim expired or was taken) (d)",
        ),
        (422, "decide", "the API refused the values sent (d)"),
    ],
)
def test_client_errors_say_what_happened(status: int, call: str, message: str) -> None:
    client = ApiClient(
        API_URL,
        "k",
        transport=httpx.MockTransport(lambda _: httpx.Response(status, json={"detail": "d"})),
    )
    calls: dict[str, Callable[[], object]] = {
        "stats": client.stats,
        "claim": lambda: client.claim("review-1"),
        "decide": lambda: client.decide("review-1", label="spam", decision="remove", note=None),
    }

    with pytest.raises(ApiError) as raised:
        calls[call]()

    assert raised.value.status == status
    assert raised.value.detail == "d"
    assert raised.value.message == message


def test_client_503_says_when_to_retry_and_unreachable_api_is_status_0() -> None:
    busy = ApiClient(
        API_URL,
        "k",
        transport=httpx.MockTransport(
            lambda _: httpx.Response(
                503, json={"detail": "dapr down"}, headers={"Retry-After": "5"}
            )
        ),
    )
    with pytest.raises(ApiError, match=r"retry in 5s \(dapr down\)"):
        busy.decide("review-1", label="spam", decision="remove", note="x")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = ApiClient(API_URL, "k", transport=httpx.MockTransport(refuse))
    with pytest.raises(ApiError) as raised:
        down.stats()
    assert raised.value.status == 0
    assert raised.value.message.startswith(f"cannot reach the review API at {API_URL}")


def test_client_keeps_ids_inside_one_path_segment() -> None:
    paths: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"detail": "no"})

    client = ApiClient(API_URL, "k", transport=httpx.MockTransport(handle))
    for post_id in ("../reviews/stats", ".."):
        with pytest.raises(ApiError):
            client.post_trail(post_id)

    assert paths == ["/v1/posts/..%2Freviews%2Fstats", "/v1/posts/%2E%2E"]


def test_a_double_reviewed_post_says_so_and_a_first_judgement_is_not_called_a_decision() -> None:
    second_look = threat() | {"votes": 1}
    api = FakeReviewApi(queue=[second_look, spam()], decision_status="awaiting_second_review")
    app = signed_in(api)
    app.button(key="claim_next").click().run()
    assert any("another moderator already judged this post" in i.value for i in app.info)

    app.button(key="decide_remove").click().run()
    app.button(key="submit").click().run()

    assert not app.exception and not app.error
    [toast] = [shown(t.value) for t in app.toast]
    assert toast.startswith("Judgement recorded: remove as violence (review-p1).")
    assert "second moderator" in toast


def test_a_posts_images_show_blurred_one_at_a_time_and_greyscale_on_reveal() -> None:
    pictured = spam() | {"images": [image_ref("one"), image_ref("two")]}
    pictured["suggestion"] = pictured["suggestion"] | {"signals": ["image:nudity:0.12"]}
    api = FakeReviewApi(queue=[pictured])
    app = signed_in(api)
    app.button(key="claim_next").click().run()

    [shown_image] = html_bodies(app, "hitl-image")
    assert "hitl-image-blurred" in shown_image
    assert any("Nudity detector: 0.12" in shown(c.value) for c in app.caption)
    assert api.images_served == [image_ref("one")["sha256"]]
    app.button(key="reveal_image").click().run()
    [shown_image] = html_bodies(app, "hitl-image")
    assert "hitl-image-blurred" not in shown_image  # revealed: greyscale only (the class's filter)
    app.button(key="image_next").click().run()
    [shown_image] = html_bodies(app, "hitl-image")
    assert "hitl-image-blurred" in shown_image  # the next image starts blurred again
    assert api.images_served[-1] == image_ref("two")["sha256"]


def test_a_removal_can_add_the_posts_images_to_a_hash_list() -> None:
    pictured = spam() | {"images": [image_ref("one")]}
    api = FakeReviewApi(queue=[pictured])
    app = signed_in(api)
    app.button(key="claim_next").click().run()
    app.text_input(key="hitl_queue_hashlist").input("spam-images").run()
    app.button(key="decide_remove").click().run()
    app.button(key="submit").click().run()
    assert not app.exception and not app.error
    [(_, body)] = api.decisions
    assert body["add_images_to_hashlist"] == "spam-images"


def test_an_image_on_a_hash_list_is_never_revealed() -> None:
    listed = spam() | {"images": [image_ref("listed")]}
    listed["suggestion"] = listed["suggestion"] | {"signals": ["image:hash-match:known-bad:pdq"]}
    app = signed_in(FakeReviewApi(queue=[listed]))
    app.button(key="claim_next").click().run()
    assert "hitl-image-blurred" in html_bodies(app, "hitl-image")[0]
    assert "reveal_image" not in [b.key for b in app.button]
    captions = [shown(c.value) for c in app.caption]
    assert any("known-bad hash list 'known-bad' (pdq match)" in c for c in captions)
