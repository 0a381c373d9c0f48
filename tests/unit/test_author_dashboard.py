"""The dashboard's author views: the Author page, and the author beside each review (AppTest,
the API faked in memory as in `test_dashboard`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from hitl_dashboard import author_page, queue_page
from moderation.db.schemas import AuthorPublic
from tests.unit.markdown_shown import active_markup, shown
from tests.unit.test_dashboard import FakeReviewApi, rows, signed_in, spam, titles


def author_json(author_id: str = "user-1") -> dict[str, Any]:
    """`GET /v1/authors/{id}` of an author with two strikes (one overturned) and a reversal."""
    strike = {
        "category": "spam",
        "severity": "low",
        "weight": 1,
        "issued_at": "2026-11-20T10:00:00Z",
        "expires_at": "2026-12-20T10:00:00Z",
        "overturned_at": None,
        "overturned_by": None,
        "policy_version": "e1",
    }
    action = {
        "days": None,
        "until": None,
        "threshold": 1,
        "active_strikes": 1,
        "strike_ids": [1],
        "reverses": None,
        "reversed_by": None,
        "policy_version": "e1",
    }
    return {
        "tenant": "default",
        "author_id": author_id,
        "standing": {
            "status": "warned",
            "until": None,
            "action_id": "act-1",
            "active_strikes": 1,
        },
        "post_count": 3,
        "limit": 5,
        "offset": 0,
        "posts": [
            {
                "post_id": "p2",
                "status": "in_review",
                "text": "cheap watches",
                "submitted_at": "2026-11-21T10:00:00Z",
            }
        ],
        "verdicts": [],
        "strikes": [
            {
                **strike,
                "strike_id": 2,
                "post_id": "p7",
                "state": "overturned",
                "overturned_at": "2026-11-21T09:00:00Z",
                "overturned_by": "decision-9",
            },
            {**strike, "strike_id": 1, "post_id": "p5", "state": "active"},
        ],
        "actions": [
            {
                **action,
                "action_id": "act-2",
                "action": "reverse",
                "reverses": "act-0",
                "reason": "strike on post p7 overturned",
                "post_id": "p7",
                "created_at": "2026-11-21T09:00:00Z",
            },
            {
                **action,
                "action_id": "act-1",
                "action": "warn",
                "reason": "1 point reached 1",
                "post_id": "p5",
                "created_at": "2026-11-20T10:00:00Z",
            },
        ],
    }


@dataclass
class AuthorApi(FakeReviewApi):
    """The fake review API, with authors."""

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if method == "GET" and path.startswith("/v1/authors/"):
            author_id = path.split("/")[3]
            if author_id != "user-1":
                return httpx.Response(404, json={"detail": f"author '{author_id}' not found"})
            answer = author_json(author_id)
            answer["limit"] = int(request.url.params.get("limit", 50))
            return httpx.Response(200, json=answer)
        return super()._route(method, path, request)


@pytest.fixture
def api() -> AuthorApi:
    return AuthorApi(queue=[spam()])


def test_the_shape_of_the_fake_is_the_apis() -> None:
    AuthorPublic.model_validate(author_json())


def test_a_review_shows_its_author_beside_the_post_and_links_to_the_author_page(
    api: AuthorApi,
) -> None:
    app = signed_in(api)
    app.button(key="claim_next").click().run()

    assert not app.exception
    assert api.calls("GET", "/v1/authors/user-1") == 1
    captions = [shown(c.value) for c in app.caption]
    assert any(
        c.startswith("warned · 1 active strike point(s) from 1 active strike(s)") for c in captions
    )
    (strikes,) = app.dataframe  # the post has no precedents: the author's strikes alone
    assert [(r["state"], r["post_id"]) for r in rows(strikes)] == [
        ("overturned", "p7"),
        ("active", "p5"),
    ]
    (link,) = app.get("page_link")
    assert shown(link.proto.label).startswith("Author user-1: history")
    assert link.proto.query_string == "author=user-1"
    # Reruns (every key press) do not fetch the author again.
    app.run()
    assert api.calls("GET", "/v1/authors/user-1") == 1
    assert app.session_state[queue_page.AUTHOR][0] == "review-p2"


def test_the_author_page_shows_standing_strikes_actions_and_posts(api: AuthorApi) -> None:
    app = signed_in(api)
    app.switch_page(author_page.PAGE).run()
    assert titles(app) == ["Author"]

    app.text_input(key=author_page.AUTHOR_INPUT).input("user-1")
    app.button(key="author_lookup").click().run()

    assert not app.exception and not app.error
    assert [shown(s.value) for s in app.subheader] == ["Author user-1 (default)"]
    strikes, actions, posts = (rows(d) for d in app.dataframe)
    assert [s["state"] for s in strikes] == ["overturned", "active"]
    assert [(a["action"], a["reverses"]) for a in actions] == [("reverse", "act-0"), ("warn", "")]
    assert [p["post_id"] for p in posts] == ["p2"]


def test_an_unknown_author_is_a_clear_error(api: AuthorApi) -> None:
    app = signed_in(api)
    app.switch_page(author_page.PAGE).run()
    app.text_input(key=author_page.AUTHOR_INPUT).input("ghost")
    app.button(key="author_lookup").click().run()
    assert [shown(e.value) for e in app.error] == [
        "Could not load author ghost: no author 'ghost' in this tenant (author 'ghost' not found)."
    ]


def test_the_author_page_refuses_to_render_without_a_session(api: AuthorApi) -> None:
    from hitl_dashboard import session
    from tests.unit.test_dashboard import APP

    app = AppTest.from_file(APP.parent / "views" / "author.py", default_timeout=30)
    app.session_state[session.CLIENT_FACTORY] = api.factory
    app.run()
    assert [w.value for w in app.warning] == ["Sign in to use the dashboard."]
    assert api.requests == []


def test_an_authors_ids_and_reasons_are_shown_as_text() -> None:
    hostile = "**x** [y](http://evil.example)"

    @dataclass
    class HostileAuthors(AuthorApi):
        def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
            if method == "GET" and path.startswith("/v1/authors/"):
                answer = author_json(hostile)
                answer["actions"][1]["reason"] = hostile
                return httpx.Response(200, json=answer)
            return super()._route(method, path, request)

    app = signed_in(HostileAuthors(queue=[spam()]))
    app.switch_page(author_page.PAGE).run()
    app.text_input(key=author_page.AUTHOR_INPUT).input(hostile)
    app.button(key="author_lookup").click().run()
    assert not app.exception
    assert [shown(s.value) for s in app.subheader] == [f"Author {hostile} (default)"]
    assert active_markup(app.subheader[0].value) == []


def test_the_author_beside_a_review_of_another_tenant_is_read_in_that_tenant() -> None:
    """A moderator granted several tenants sees a review of tenant t2: its author is looked up
    in t2, and the link to the Author page carries the tenant."""
    tenants: list[str | None] = []

    @dataclass
    class TenantAuthors(AuthorApi):
        def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
            if method == "GET" and path.startswith("/v1/authors/"):
                tenants.append(request.url.params.get("tenant"))
            return super()._route(method, path, request)

    app = signed_in(TenantAuthors(queue=[spam() | {"tenant": "t2"}]))
    app.button(key="claim_next").click().run()

    assert not app.exception
    assert tenants == ["t2"]
    (link,) = app.get("page_link")
    assert link.proto.query_string == "author=user-1&tenant=t2"
