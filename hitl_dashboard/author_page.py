"""The Author page: an author's standing, strikes, actions and latest posts (`GET /v1/authors`).

Reached from each review on the Queue page (`?author=<id>`, and `&tenant=` for a moderator working
another tenant), or by typing an author id. The queue's review also shows `standing_caption` and
`strike_rows` beside the post. Everything is shown as text (ids and reasons are the platform's).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from hitl_dashboard import safe_text, session, ui
from hitl_dashboard.api_client import ApiError
from moderation.db.schemas import AuthorPublic

AUTHOR_INPUT = "hitl_author_input"
TENANT_INPUT = "hitl_author_tenant"
# Where the Queue page links to (its `url_path` in app.py).
PAGE = "views/author.py"
STRIKES_SHOWN_BESIDE_A_REVIEW = 5

_STANDING_WORDS = {
    "good": "in good standing",
    "warned": "warned",
    "rate_limited": "rate limited",
    "suspended": "suspended",
    "banned": "banned",
}


def standing_caption(author: AuthorPublic) -> str:
    """One line: the standing now, its end, and the active strike points."""
    standing = author.standing
    words = _STANDING_WORDS.get(standing.status, standing.status)
    until = f" until {ui.format_time(standing.until)}" if standing.until is not None else ""
    active = sum(1 for strike in author.strikes if strike.state == "active")
    return (
        f"{words}{until} · {standing.active_strikes} active strike point(s) from {active} "
        f"active strike(s) · {len(author.strikes)} strike(s) in all · {author.post_count} post(s)"
    )


def strike_rows(author: AuthorPublic, limit: int | None = None) -> list[dict[str, Any]]:
    """The strikes, newest first, as table rows."""
    return [
        {
            "state": strike.state,
            "category": strike.category,
            "severity": strike.severity,
            "weight": strike.weight,
            "post_id": strike.post_id,
            "issued_at": ui.format_time(strike.issued_at),
            "expires_at": ui.format_time(strike.expires_at),
            "overturned_by": strike.overturned_by or "",
        }
        for strike in author.strikes[:limit]
    ]


def action_rows(author: AuthorPublic) -> list[dict[str, Any]]:
    """The actions and reversals, newest first, as table rows."""
    return [
        {
            "action": action.action,
            "until": ui.format_time(action.until) if action.until is not None else "",
            "days": action.days,
            "reason": action.reason,
            "reverses": action.reverses or "",
            "reversed_by": action.reversed_by or "",
            "created_at": ui.format_time(action.created_at),
            "action_id": action.action_id,
        }
        for action in author.actions
    ]


def post_rows(author: AuthorPublic) -> list[dict[str, Any]]:
    """The listed posts (their text is on the History page, blurred when sensitive)."""
    return [
        {
            "post_id": post.post_id,
            "status": post.status,
            "submitted_at": ui.format_time(post.submitted_at),
        }
        for post in author.posts
    ]


def _render_author(author: AuthorPublic) -> None:
    st.subheader(safe_text.escape_markdown(f"Author {author.author_id} ({author.tenant})"))
    st.caption(safe_text.escape_markdown(standing_caption(author)))
    st.markdown("**Strikes**")
    if author.strikes:
        st.dataframe(strike_rows(author), hide_index=True, key="author_strikes")
    else:
        st.caption("No strike.")
    st.markdown("**Actions**")
    if author.actions:
        st.dataframe(action_rows(author), hide_index=True, key="author_actions")
    else:
        st.caption("No action taken.")
    st.markdown(f"**Latest posts** ({len(author.posts)} of {author.post_count})")
    st.dataframe(post_rows(author), hide_index=True, key="author_posts")


def render() -> None:
    """The Author page."""
    client = session.require_client()
    state = st.session_state
    ui.inject_style()
    st.title("Author")
    params = st.query_params
    if AUTHOR_INPUT not in state:
        state[AUTHOR_INPUT] = params.get("author", "")
        state[TENANT_INPUT] = params.get("tenant", "")
    with st.form("author_lookup_form", border=False):
        author_id, tenant, look_up = st.columns([3, 2, 1], vertical_alignment="bottom")
        author_id.text_input("Author id", key=AUTHOR_INPUT)
        tenant.text_input("Tenant", key=TENANT_INPUT, placeholder="your key's own")
        with look_up:
            st.form_submit_button("Look up", key="author_lookup")
    wanted = str(state.get(AUTHOR_INPUT) or "").strip()
    if not wanted:
        st.info("Enter an author id, or open an author from a review on the Queue page.")
        return
    chosen_tenant = str(state.get(TENANT_INPUT) or "").strip() or None
    try:
        author = client.author(wanted, tenant=chosen_tenant, limit=50)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(safe_text.escape_markdown(f"Could not load author {wanted}: {exc.message}."))
        return
    _render_author(author)
