"""The dashboard's Audit page under Streamlit's AppTest, against canned API answers.

The fake review API of `test_dashboard.py` (behind the real `ApiClient`) also serves
`GET /v1/audit` (filtering and paging its entries as the API does) and `GET /v1/audit.csv`, and
records their queries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from hitl_dashboard import audit_page, session
from hitl_dashboard.api_client import ApiError, AuditQuery
from tests.unit.markdown_shown import shown
from tests.unit.test_dashboard import GOOD_KEY, FakeReviewApi, rows, signed_in, titles
from tests.unit.test_dashboard_markdown import assert_shown_as_text

HOSTILE = "[click](http://evil.test) <img src=x onerror=alert(1)>"
CSV = "at,actor,actor_display,action,entity,entity_id,tenant,before,after,id\n"


def entry(number: int, action: str, actor: str = "key:7", **extra: Any) -> dict[str, Any]:
    return {
        "id": number,
        "at": f"2026-11-21T10:{number % 60:02d}:00Z",
        "actor": actor,
        "actor_display": f"alice ({actor})",
        "action": action,
        "entity": "review",
        "entity_id": f"review-p{number}",
        "tenant": "default",
        "before": {"status": "pending", "claimed_by": None},
        "after": {"status": "claimed", "claimed_by": actor},
    } | extra


@dataclass
class AuditApi(FakeReviewApi):
    """The fake review API, also serving an audit trail (newest first)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    csv_queries: list[dict[str, str]] = field(default_factory=list)

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        if (method, path) == ("GET", "/v1/audit"):
            self.queries.append(params)
            matching = [
                item
                for item in self.entries
                if all(
                    item[name] == params[name]
                    for name in ("actor", "action", "entity", "entity_id")
                    if name in params
                )
            ]
            limit, offset = int(params["limit"]), int(params["offset"])
            page = {
                "items": matching[offset : offset + limit],
                "total": len(matching),
                "limit": limit,
                "offset": offset,
            }
            return httpx.Response(200, json=page)
        if (method, path) == ("GET", "/v1/audit.csv"):
            self.csv_queries.append(params)
            return httpx.Response(200, content=CSV.encode(), headers={"Content-Type": "text/csv"})
        return super()._route(method, path, request)


@pytest.fixture
def api() -> AuditApi:
    entries = [entry(60 - n, "review.claim" if n % 2 else "review.decide") for n in range(60)]
    entries[0] = entry(
        99,
        "config.set",
        actor="admin-cli",
        entity="config",
        entity_id="thresholds",
        tenant=None,
        actor_display="admin-cli (name only, recorded before key ids)",
        before={"value": "0.5", "version": "1"},
        after={"value": "0.7", "version": "2"},
    )
    return AuditApi(entries=entries)


def audit_app(api: AuditApi) -> AppTest:
    app = signed_in(api)
    app.switch_page("views/audit.py").run()
    assert not app.exception, app.exception
    return app


# --- plain functions --------------------------------------------------------------------------


def test_the_change_names_each_field_the_change_set() -> None:
    assert (
        audit_page.change_summary(
            {"status": "pending", "priority": "high", "claimed_by": None, "decided_at": None},
            {"status": "claimed", "priority": "high", "claimed_by": "key:7", "post_id": "p1"},
        )
        == "status: pending → claimed; claimed_by: – → key:7; post_id: – → p1"
    )
    assert audit_page.change_summary(None, {"reason": "x" * 200}).endswith("x…")
    assert audit_page.change_summary({"a": 1}, {"a": 1}) == "no change"
    assert audit_page.change_summary({"v": {"b": 1}}, None) == 'v: {"b": 1} → –'
    assert audit_page.change_summary(None, None) == "–"


def test_the_day_range_covers_whole_days_in_utc() -> None:
    query = audit_page.query_of(
        {
            audit_page.ACTION: " review.decide ",
            audit_page.ACTOR: "",
            audit_page.SINCE: date(2026, 3, 1),
            audit_page.UNTIL: date(2026, 3, 2),
        }
    )
    assert query.params() == {
        "action": "review.decide",
        "since": "2026-03-01T00:00:00+00:00",
        "until": "2026-03-02T23:59:59.999999+00:00",
    }


# --- the page -----------------------------------------------------------------------------------


def test_signed_in_moderators_find_the_audit_page(api: AuditApi) -> None:
    app = signed_in(api)
    app.switch_page("views/audit.py").run()
    assert titles(app) == ["Audit"]


def test_the_page_shows_the_newest_entries_with_names_and_changes(api: AuditApi) -> None:
    app = audit_app(api)

    assert api.queries == [{"limit": "50", "offset": "0"}]
    (table,) = app.dataframe
    shown_rows = rows(table)
    assert len(shown_rows) == 50
    first = shown_rows[0]
    assert first["who"] == "admin-cli (name only, recorded before key ids)"
    assert first["action"] == "config.set"
    assert first["entity"] == "config thresholds"
    assert first["before → after"] == "value: 0.5 → 0.7; version: 1 → 2"
    assert first["when"] == "2026-11-21 10:39:00 UTC"
    second = shown_rows[1]
    assert (second["who"], second["action"]) == ("alice (key:7)", "review.claim")
    assert second["before → after"] == "status: pending → claimed; claimed_by: – → key:7"
    assert any("Entries 1–50 of 60" in c.value for c in app.caption)
    assert app.button(key="audit_newer").disabled
    assert not app.button(key="audit_older").disabled


def test_older_and_newer_turn_the_pages(api: AuditApi) -> None:
    app = audit_app(api)

    app.button(key="audit_older").click().run()
    assert api.queries[-1] == {"limit": "50", "offset": "50"}
    (table,) = app.dataframe
    assert len(rows(table)) == 10
    assert any("Entries 51–60 of 60" in c.value for c in app.caption)
    assert app.button(key="audit_older").disabled

    app.button(key="audit_newer").click().run()
    assert api.queries[-1] == {"limit": "50", "offset": "0"}


def test_the_filters_go_to_the_api_and_start_from_the_newest(api: AuditApi) -> None:
    app = audit_app(api)
    app.button(key="audit_older").click().run()

    app.text_input(key=audit_page.ACTION).input("review.decide")
    app.text_input(key=audit_page.ACTOR).input("key:7")
    app.date_input(key=audit_page.SINCE).set_value(date(2026, 11, 21))
    app.button(key="audit_apply").click().run()

    assert not app.exception, app.exception
    assert api.queries[-1] == {
        "action": "review.decide",
        "actor": "key:7",
        "since": "2026-11-21T00:00:00+00:00",
        "limit": "50",
        "offset": "0",
    }
    (table,) = app.dataframe
    assert {row["action"] for row in rows(table)} == {"review.decide"}
    assert len(rows(table)) == 29  # the 30th was replaced by the configuration change


def test_nothing_matching_says_so(api: AuditApi) -> None:
    app = audit_app(api)
    app.text_input(key=audit_page.ACTION).input("no.such.action")
    app.button(key="audit_apply").click().run()

    assert not app.dataframe
    assert [i.value for i in app.info] == ["No audit entry matches."]


def test_the_csv_download_asks_the_api_with_the_same_filters(api: AuditApi) -> None:
    client = api.factory("http://api.test", GOOD_KEY)
    activity = session.Activity(last=time.monotonic())
    query = AuditQuery(action="review.decide")

    fetch = audit_page.audit_csv_source(client, query, activity, idle_limit=1e12)
    assert fetch() == CSV.encode()
    assert api.csv_queries == [{"action": "review.decide"}]

    stale = audit_page.audit_csv_source(client, query, activity, idle_limit=-1.0)
    with pytest.raises(ApiError) as refused:
        stale()
    assert refused.value.status == 401
    assert len(api.csv_queries) == 1


def test_the_export_button_is_on_the_page(api: AuditApi) -> None:
    app = audit_app(api)
    (button,) = app.get("download_button")
    assert button.proto.label == "Export (CSV)"


def test_hostile_values_are_text_and_errors_are_shown(api: AuditApi) -> None:
    api.entries = [entry(1, "review.claim", actor_display=f"mallory {HOSTILE}")]
    app = audit_app(api)
    (table,) = app.dataframe
    assert rows(table)[0]["who"] == f"mallory {HOSTILE}"
    assert_shown_as_text(app, "Audit")

    api.failures[("GET", "/v1/audit")] = (503, f"down {HOSTILE}")
    app.run()
    assert [shown(e.value) for e in app.error] == [
        f"Could not read the audit trail: the review service is unavailable, try again "
        f"shortly (down {HOSTILE})."
    ]
    assert_shown_as_text(app, f"down {HOSTILE}")


def test_a_revoked_key_ends_the_session(api: AuditApi) -> None:
    app = audit_app(api)
    api.keys.clear()

    app.run()

    assert titles(app) == ["Moderation review: sign in"]


def test_the_page_needs_a_session(api: AuditApi) -> None:
    script = AppTest.from_file(
        audit_page.__file__.replace("audit_page.py", "views/audit.py"), default_timeout=30
    )
    script.run()
    assert [w.value for w in script.warning] == ["Sign in to use the dashboard."]
