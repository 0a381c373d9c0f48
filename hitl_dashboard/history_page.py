"""The History page: a post's full trail, and the decision log as CSV."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from hitl_dashboard import safe_text, session, ui
from hitl_dashboard.api_client import ApiError, ReviewApi
from hitl_dashboard.session import Activity, State
from moderation.db.schemas import PostTrail, VerdictOut

POST_ID = "hitl_history_post_id"
LOOKUP_INPUT = "hitl_history_input"
REVEALED = "hitl_history_revealed"


def verdict_rows(trail: PostTrail) -> list[dict[str, Any]]:
    """One row per verdict, the scores folded into their three highest."""
    return [_verdict_row(verdict) for verdict in trail.verdicts]


def _verdict_row(verdict: VerdictOut) -> dict[str, Any]:
    row = verdict.model_dump(exclude={"scores"})
    top = sorted(verdict.scores.items(), key=lambda item: item[1], reverse=True)[:3]
    row["top_scores"] = ", ".join(f"{category} {score:.2f}" for category, score in top)
    row["occurred_at"] = ui.format_time(verdict.occurred_at)
    return row


def _rows(models: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        row: dict[str, Any] = model.model_dump()
        for name, value in row.items():
            if isinstance(value, datetime):
                row[name] = ui.format_time(value)
        rows.append(row)
    return rows


def trail_is_sensitive(trail: PostTrail) -> bool:
    """Whether any stage or review put the post in a sensitive category."""
    return ui.is_sensitive(
        *(v.primary_category for v in trail.verdicts),
        *(r.category for r in trail.reviews),
        *(d.label for d in trail.decisions),
    )


def decision_log_source(
    client: ReviewApi, activity: Activity | None, *, idle_limit: float
) -> Callable[[], bytes]:
    """The CSV download's data, fetched only when the moderator clicks (it can be large).

    Streamlit runs it on its own thread, outside any rerun, so it checks the session itself:
    a page left open past the idle limit (or signed out elsewhere) gets nothing.
    """

    def fetch() -> bytes:
        now = time.monotonic()
        if activity is None or activity.expired(now, idle_limit):
            raise ApiError(401, "", meaning="not authorized: the session expired, sign in again")
        activity.last = now
        return client.decision_log_csv()

    return fetch


def _look_up() -> None:
    post_id = str(st.session_state.get(LOOKUP_INPUT) or "").strip()
    st.session_state[POST_ID] = post_id or None


def _reveal() -> None:
    post_id = st.session_state.get(POST_ID)
    if post_id:
        st.session_state.setdefault(REVEALED, set()).add(post_id)


def _render_trail(state: State, trail: PostTrail) -> None:
    st.subheader(safe_text.escape_markdown(f"Post {trail.post_id}"))
    st.caption(
        safe_text.escape_markdown(
            f"status {trail.status} · author {trail.author_id or '–'}"
            f" · external id {trail.external_id or '–'}"
            f" · submitted {ui.format_time(trail.submitted_at)}"
        )
    )
    revealed: set[str] = state.get(REVEALED, set())
    blurred = trail_is_sensitive(trail) and trail.post_id not in revealed
    safe_text.text_block(trail.text or "(no text recorded)", test_id="hitl-post", blurred=blurred)
    if blurred:
        st.button("Reveal", key="trail_reveal", shortcut="v", on_click=_reveal)

    st.markdown("**Verdicts by stage**")
    if trail.verdicts:
        st.dataframe(verdict_rows(trail), hide_index=True, key="trail_verdicts")
    else:
        st.caption("No verdict yet.")
    st.markdown("**Reviews**")
    if trail.reviews:
        st.dataframe(_rows(list(trail.reviews)), hide_index=True, key="trail_reviews")
    else:
        st.caption("Never sent to human review.")
    st.markdown("**Decisions**")
    if trail.decisions:
        st.dataframe(_rows(list(trail.decisions)), hide_index=True, key="trail_decisions")
    else:
        st.caption("No human decision.")


def render() -> None:
    """The History page."""
    client = session.require_client()
    state = st.session_state
    ui.inject_style()
    st.title("History")

    with st.form("trail_lookup_form", border=False):
        post_id, look_up = st.columns([4, 1], vertical_alignment="bottom")
        post_id.text_input("Post id", key=LOOKUP_INPUT, placeholder="the post_id the API returned")
        with look_up:
            st.form_submit_button("Look up", key="trail_lookup", on_click=_look_up)

    wanted = state.get(POST_ID)
    if wanted:
        try:
            trail = client.post_trail(wanted)
        except ApiError as exc:
            session.handle_unauthorized(exc)
            st.error(
                safe_text.escape_markdown(f"Could not load the trail of {wanted}: {exc.message}.")
            )
        else:
            _render_trail(state, trail)

    st.divider()
    st.markdown("**Decision log**")
    st.caption(
        "Every human decision: time, review, post, label, decision, moderator, note, the "
        "automated decision it overrode and the policy version."
    )
    st.download_button(
        "Export decision log (CSV)",
        data=decision_log_source(
            client, session.current_activity(state), idle_limit=session.idle_limit_seconds()
        ),
        file_name=f"decision-log-{datetime.now(UTC):%Y-%m-%d}.csv",
        mime="text/csv",
        key="export_csv",
        icon=":material/download:",
        on_click="ignore",
    )
