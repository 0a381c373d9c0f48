"""The Queue page's filters and bulk decisions under Streamlit's AppTest, against the in-memory
review API of `test_dashboard` (the real `ApiClient` over an `httpx.MockTransport`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from streamlit.testing.v1 import AppTest

from hitl_dashboard import queue_bulk, queue_page
from tests.unit.markdown_shown import shown
from tests.unit.test_dashboard import FakeReviewApi, review_json, rows, signed_in


def item(post_id: str, *, author: str = "user-1", category: str = "spam") -> dict[str, Any]:
    review = review_json(post_id, f"text {post_id}", category=category, scores={category: 0.6})
    return {**review, "author_id": author}


@dataclass
class BulkApi(FakeReviewApi):
    """Adds the queue filters and `POST /v1/reviews/bulk-decision`: reviews in `held` are
    someone else's (skipped), the others are decided and leave the queue."""

    languages: dict[str, str] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    list_params: list[dict[str, str]] = field(default_factory=list)
    claim_next_params: list[dict[str, str]] = field(default_factory=list)
    bulk_bodies: list[dict[str, Any]] = field(default_factory=list)

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        if (method, path) == ("GET", "/v1/reviews"):
            self.list_params.append(params)
            matching = [
                review
                for review in self.queue
                if params.get("category") in (None, review["category"])
                and params.get("author_id") in (None, review["author_id"])
                and params.get("language") in (None, self.languages.get(review["review_id"]))
                and params.get("group") in (None, review["group"])
            ]
            limit = int(params.get("limit", 50))
            page = {"items": matching[:limit], "total": len(matching), "limit": limit, "offset": 0}
            return httpx.Response(200, json=page)
        if (method, path) == ("POST", "/v1/reviews/claim-next"):
            self.claim_next_params.append(params)
            wanted = params.get("group")
            if wanted is not None:  # the fake queue's first review of the group
                self.queue.sort(key=lambda review: review["group"] != wanted)
        if (method, path) == ("POST", "/v1/reviews/bulk-decision"):
            return self._bulk(json.loads(request.content))
        return super()._route(method, path, request)

    def _bulk(self, body: dict[str, Any]) -> httpx.Response:
        self.bulk_bodies.append(body)
        if "review_ids" in body:
            review_ids = body["review_ids"]
        else:
            review_ids = [r["review_id"] for r in self.queue if r["author_id"] == body["author_id"]]
        outcomes = []
        for review_id in review_ids:
            if review_id in self.held:
                reason = f"review '{review_id}' is claimed by 'bob (key:2)'"
                outcomes.append({"review_id": review_id, "outcome": "skipped", "reason": reason})
                continue
            self.queue = [r for r in self.queue if r["review_id"] != review_id]
            self.decided += 1
            outcomes.append(
                {"review_id": review_id, "outcome": "decided", "event_id": f"ev-{review_id}"}
            )
        counts = {
            kind: sum(o["outcome"] == kind for o in outcomes)
            for kind in ("decided", "skipped", "failed")
        }
        return httpx.Response(200, json={"outcomes": outcomes, **counts})


def queue_shown(api: BulkApi) -> AppTest:
    app = signed_in(api)
    app.toggle(key=queue_page.SHOW_QUEUE).set_value(True).run()
    assert not app.exception
    return app


def warnings(app: AppTest) -> list[str]:
    return [shown(w.value) for w in app.warning]


def test_the_queue_filters_by_category_language_and_author_and_claim_next_by_language() -> None:
    api = BulkApi(
        queue=[item("p1"), item("p2", author="kenji"), item("p3", author="kenji")],
        languages={"review-p2": "ja"},
    )
    app = queue_shown(api)

    app.selectbox(key=queue_bulk.FILTER_CATEGORY).set_value("spam").run()
    app.text_input(key=queue_bulk.FILTER_LANGUAGE).input(" JA ").run()
    app.text_input(key=queue_bulk.FILTER_AUTHOR).input("kenji").run()

    assert api.list_params[-1] == {
        "limit": "50",
        "offset": "0",
        "category": "spam",
        "language": "ja",
        "author_id": "kenji",
    }
    [table] = [frame for frame in app.dataframe if "status" in rows(frame)[0]]
    assert [row["review_id"] for row in rows(table)] == ["review-p2"]
    assert [row["author_id"] for row in rows(table)] == ["kenji"]

    app.button(key="claim_next").click().run()

    assert api.claim_next_params == [{"language": "ja"}]


def test_decide_selected_asks_once_saying_how_many_and_how_then_shows_each_outcome() -> None:
    api = BulkApi(queue=[item("p1"), item("p2"), item("p3")], held={"review-p2"})
    app = queue_shown(api)

    app.multiselect(key=queue_bulk.SELECTED).select("review-p1").select("review-p2").run()
    app.selectbox(key=queue_bulk.LABEL).set_value("spam").run()
    app.text_input(key=queue_bulk.NOTE).input("link farm").run()
    app.button(key="bulk_decide_selected").click().run()

    # One confirmation, and nothing sent before it.
    assert warnings(app) == ["Decide the 2 selected review(s) as remove · spam?"]
    assert api.bulk_bodies == []

    app.button(key="bulk_confirm").click().run()

    assert not app.exception
    assert api.bulk_bodies == [
        {
            "review_ids": ["review-p1", "review-p2"],
            "label": "spam",
            "decision": "remove",
            "note": "link farm",
        }
    ]
    assert warnings(app) == []
    assert any("1 decided · 1 skipped · 0 failed" in c.value for c in app.caption)
    [outcomes] = [rows(frame) for frame in app.dataframe if "outcome" in rows(frame)[0]]
    assert [(o["review_id"], o["outcome"]) for o in outcomes] == [
        ("review-p1", "decided"),
        ("review-p2", "skipped"),
    ]
    assert outcomes[1]["reason"] == "review 'review-p2' is claimed by 'bob (key:2)'"
    # The decided review left the queue; the selection keeps only what is still listed.
    assert app.multiselect(key=queue_bulk.SELECTED).options == ["review-p2", "review-p3"]
    assert app.multiselect(key=queue_bulk.SELECTED).value == []


def test_cancel_sends_nothing_and_allow_is_labelled_safe() -> None:
    api = BulkApi(queue=[item("p1")])
    app = queue_shown(api)
    app.multiselect(key=queue_bulk.SELECTED).select("review-p1").run()
    app.radio(key=queue_bulk.DECISION).set_value("allow").run()

    app.button(key="bulk_decide_selected").click().run()
    assert warnings(app) == ["Decide the 1 selected review(s) as allow · safe?"]
    app.button(key="bulk_cancel").click().run()

    assert warnings(app) == [] and api.bulk_bodies == []
    app.button(key="bulk_decide_selected").click().run()
    app.button(key="bulk_confirm").click().run()
    assert api.bulk_bodies[0]["label"] == "safe" and api.bulk_bodies[0]["decision"] == "allow"


def test_nothing_selected_is_refused_before_asking() -> None:
    api = BulkApi(queue=[item("p1")])
    app = queue_shown(api)

    app.button(key="bulk_decide_selected").click().run()

    assert [shown(e.value) for e in app.error] == ["Select the reviews to decide first."]
    assert warnings(app) == [] and api.bulk_bodies == []


def test_all_open_reviews_of_the_author_counts_them_asks_once_and_sends_the_author() -> None:
    api = BulkApi(
        queue=[item("p1", author="spammer"), item("p2"), item("p3", author="spammer")],
    )
    app = queue_shown(api)
    assert app.button(key="bulk_decide_author").disabled  # no author in the filter yet

    app.text_input(key=queue_bulk.FILTER_AUTHOR).input("spammer").run()
    app.selectbox(key=queue_bulk.LABEL).set_value("spam").run()
    app.button(key="bulk_decide_author").click().run()

    assert warnings(app) == ["Decide all 2 open review(s) of author spammer as remove · spam?"]
    assert api.bulk_bodies == []
    app.button(key="bulk_confirm").click().run()

    assert api.bulk_bodies == [
        {"author_id": "spammer", "label": "spam", "decision": "remove", "note": None}
    ]
    assert [r["review_id"] for r in api.queue] == ["review-p2"]
    assert any("2 decided · 0 skipped · 0 failed" in c.value for c in app.caption)


def test_an_api_refusal_is_shown_and_nothing_is_left_pending() -> None:
    api = BulkApi(queue=[item("p1")])
    api.failures[("POST", "/v1/reviews/bulk-decision")] = (422, "invalid request: too many")
    app = queue_shown(api)
    app.multiselect(key=queue_bulk.SELECTED).select("review-p1").run()
    app.button(key="bulk_decide_selected").click().run()

    app.button(key="bulk_confirm").click().run()

    [error] = [shown(e.value) for e in app.error]
    assert error.startswith("Bulk decision not made: the API refused the values sent")
    assert "too many" in error
    assert warnings(app) == []


def routed_groups(*, key_groups: list[str] | None) -> dict[str, Any]:
    """`GET /v1/reviews/groups` with a `ja` group before the default `general`."""

    def group(name: str, open_: int, **criteria: list[str]) -> dict[str, Any]:
        mine = key_groups is None or name in key_groups
        return {
            "name": name,
            "categories": criteria.get("categories", []),
            "languages": criteria.get("languages", []),
            "open": open_,
            "mine": mine,
            "default": name == "general",
        }

    return {
        "items": [
            group("ja", 1, languages=["ja"]),
            group("child-safety", 0, categories=["sexual_minors", "self_harm"]),
            group("general", 2),
        ],
        "key_groups": key_groups,
    }


def test_the_group_filter_offers_the_keys_groups_and_narrows_the_queue_and_claim_next() -> None:
    api = BulkApi(
        queue=[item("p1"), {**item("p2"), "group": "ja"}, item("p3")],
        groups=routed_groups(key_groups=["general", "ja"]),
    )
    app = queue_shown(api)

    group_box = app.selectbox(key=queue_bulk.FILTER_GROUP)
    assert group_box.options == ["my groups", "ja", "general"]  # not child-safety: not the key's
    assert any(
        "Open reviews by moderator group: ja 1 · child-safety 0 · general 2. You work on: "
        "general, ja." == shown(c.value)
        for c in app.caption
    )
    [table] = [frame for frame in app.dataframe if "status" in rows(frame)[0]]
    assert [row["group"] for row in rows(table)] == ["general", "ja", "general"]

    group_box.set_value("ja").run()

    assert api.list_params[-1] == {"limit": "50", "offset": "0", "group": "ja"}
    [table] = [frame for frame in app.dataframe if "status" in rows(frame)[0]]
    assert [row["review_id"] for row in rows(table)] == ["review-p2"]

    app.button(key="claim_next").click().run()

    assert api.claim_next_params == [{"group": "ja"}]
    assert any("group ja" in shown(c.value) for c in app.caption)


def test_without_routing_there_is_no_group_filter() -> None:
    api = BulkApi(queue=[item("p1")])
    app = queue_shown(api)

    assert not [box for box in app.selectbox if box.key == queue_bulk.FILTER_GROUP]
    assert "group" not in api.list_params[-1]
    app.button(key="claim_next").click().run()
    assert api.claim_next_params == [{}]
