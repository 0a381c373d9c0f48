"""Submitter-controlled text reaches the moderators' screens as text, never as Markdown (issue 11,
finding 5): no link, image, HTML, directive or math from an author id, a reason, an id, a version
or an error's detail, on any page."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from hitl_dashboard.safe_text import escape_markdown
from tests.unit.markdown_shown import active_markup, shown
from tests.unit.test_dashboard import FakeReviewApi, review_json, signed_in, trail_json

HOSTILE = [
    "[click](https://evil.example)",
    "![x](https://evil.example/p.png)",
    "<img src=x onerror=alert(1)>",
    "**bold** _it_ ~~gone~~ `code`",
    ":red[x] :red-background[y] :material/warning: :smile:",
    "$x$ $$y$$",
    "https://evil.example/login www.evil.example moderator@evil.example",
    "<https://evil.example>",
    "# heading",
    "> quote",
    "- item",
    "1. item",
    "[ref]: https://evil.example",
    "a\\*b\\",
    "&amp; &#x3C;b&#x3E;",
    "| a | b |",
]
# What a markdown string may make besides text on these pages: the static labels' emphasis.
HARMLESS = {"strong_open", "strong_close"}


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_markdown_is_shown_literally(text: str) -> None:
    markdown = escape_markdown(text)

    assert active_markup(markdown) == []
    assert shown(markdown) == text


def test_line_breaks_become_spaces() -> None:
    markdown = escape_markdown("first\n\n# second\r\n> third")

    assert active_markup(markdown) == []
    assert shown(markdown) == "first # second > third"


def test_the_checker_sees_what_unescaped_markdown_makes() -> None:
    # Today's pages put author ids straight into st.caption: this is what they made.
    assert "link_open" in active_markup("author [click](https://evil.example)")
    assert "image" in active_markup("![x](https://evil.example/p.png)")
    assert any(kind.startswith("autolink") for kind in active_markup("see www.evil.example"))
    assert "directive" in active_markup(":red[x]")
    assert "math" in active_markup("$x$")


# --- the pages ---------------------------------------------------------------------------------

LINK = "[verify your key](https://evil.example/phish)"
PIXEL = "![x](https://evil.example/pixel.png)"


def hostile_review() -> dict[str, Any]:
    review = review_json("p7", "a post", category="spam", scores={"safe": 0.4, "spam": 0.6})
    suggestion = review["suggestion"]
    return {
        **review,
        "review_id": f"review-{LINK}",
        "post_id": PIXEL,
        "author_id": f"{LINK} {PIXEL}",
        "reason": ":red[urgent] $x$",
        "priority": "**high**",
        "appeal_of": f"decision {LINK}",
        "suggestion": {
            **suggestion,
            "stage": "<img src=x>",
            "decision": PIXEL,
            "model_version": "www.evil.example",
            "policy_version": LINK,
        },
        # The API reads it from the platform's own policy files: Markdown on purpose.
        "policy_section": "Unsolicited promotion is removed.",
    }


class HostileApi(FakeReviewApi):
    """The fake review API, serving values a submitter (or a forged event) chose."""

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if method == "GET" and path.startswith("/v1/posts/"):
            trail = trail_json(PIXEL)
            trail["author_id"] = LINK
            trail["external_id"] = f"{PIXEL} <b>x</b>"
            trail["status"] = "$decided$"
            return httpx.Response(200, json=trail)
        return super()._route(method, path, request)

    @staticmethod
    def _claimed(item: dict[str, Any]) -> dict[str, Any]:
        claimed = FakeReviewApi._claimed(item)
        claimed["claimed_by"] = f"alice {LINK}"
        return claimed


def markdown_on_page(app: AppTest) -> list[str]:
    """Every string on the page that Streamlit renders as Markdown."""
    bodies = [
        element.value
        for elements in (app.title, app.header, app.subheader, app.caption, app.markdown)
        for element in elements
    ]
    bodies += [alert.value for alert in (*app.error, *app.warning, *app.info, *app.success)]
    bodies += [toast.value for toast in app.toast]
    bodies += [text for m in app.metric for text in (m.label, m.value)]
    bodies += [expander.label for expander in app.expander]
    return bodies


def assert_shown_as_text(app: AppTest, *expected: str) -> None:
    bodies = markdown_on_page(app)
    for body in bodies:
        assert set(active_markup(body)) <= HARMLESS, (body, active_markup(body))
    on_screen = " ".join(shown(body) for body in bodies)
    for text in expected:
        assert text in on_screen


def test_the_queue_shows_hostile_values_as_text() -> None:
    app = signed_in(HostileApi(queue=[hostile_review()]))

    app.button(key="claim_next").click().run()

    assert not app.exception
    assert_shown_as_text(
        app,
        f"Review review-{LINK}",
        f"author {LINK} {PIXEL}",
        "reason :red[urgent] $x$",
        f"claimed by alice {LINK}",
        f"Appeal of decision decision {LINK}",
        "stage <img src=x> · model www.evil.example",
        f"Policy: spam ({LINK})",
        PIXEL,
    )


def test_a_decision_toast_and_errors_show_ids_as_text() -> None:
    api = HostileApi(queue=[hostile_review()])
    app = signed_in(api)
    app.button(key="claim_next").click().run()
    app.button(key="decide_remove").click().run()
    app.button(key="submit").click().run()
    assert_shown_as_text(app, f"(review-{LINK})")

    app.toggle(key="hitl_show_queue").set_value(True).run()
    app.text_input(key="hitl_claim_id").input(LINK)
    app.button(key="claim_by_id").click().run()
    assert_shown_as_text(app, f"Could not claim {LINK}")


def test_the_history_shows_hostile_values_as_text() -> None:
    app = signed_in(HostileApi())
    app.switch_page("views/history.py").run()

    app.text_input(key="hitl_history_input").input(PIXEL)
    app.button(key="trail_lookup").click().run()

    assert not app.exception
    assert_shown_as_text(
        app, f"Post {PIXEL}", f"author {LINK}", f"external id {PIXEL} <b>x</b>", "$decided$"
    )


def test_a_hostile_api_error_detail_is_text() -> None:
    api = HostileApi()
    api.failures[("GET", "/v1/posts/nope")] = (404, f"no post {LINK} {PIXEL}")
    app = signed_in(api)
    app.switch_page("views/history.py").run()

    app.text_input(key="hitl_history_input").input("nope")
    app.button(key="trail_lookup").click().run()

    assert_shown_as_text(app, f"no post {LINK} {PIXEL}")
