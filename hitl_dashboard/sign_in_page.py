"""The Sign in page: the only page an anonymous visitor gets."""

from __future__ import annotations

import time

import streamlit as st

from hitl_dashboard import safe_text, session
from hitl_dashboard.settings import get_dashboard_settings

KEY_INPUT = "hitl_sign_in_key"
ERROR = "hitl_sign_in_error"


def _submit() -> None:
    # The form clears its input on submit; the callback still sees what was typed.
    state = st.session_state
    error = session.sign_in(state, str(state.get(KEY_INPUT) or ""), now=time.monotonic())
    if error is None:
        state.pop(session.NOTICE, None)
        state.pop(ERROR, None)
    else:
        state[ERROR] = error


def render() -> None:
    """The Sign in page."""
    state = st.session_state
    st.title("Moderation review: sign in")
    notice = state.get(session.NOTICE)
    if notice:
        st.warning(safe_text.escape_markdown(notice))
    with st.form("sign_in_form", clear_on_submit=True):
        st.text_input(
            "API key",
            key=KEY_INPUT,
            type="password",
            help="A key with the 'moderate' scope (and 'read' for post trails).",
        )
        st.form_submit_button("Sign in", key="sign_in", type="primary", on_click=_submit)
    error = state.pop(ERROR, None)
    if error:
        st.error(safe_text.escape_markdown(error))
    settings = get_dashboard_settings().dashboard
    st.caption(
        safe_text.escape_markdown(
            f"The key is checked against the review API at {settings.api_url} and kept in "
            "this browser session only; the session ends after "
            f"{settings.session_minutes:g} minutes without activity."
        )
    )
