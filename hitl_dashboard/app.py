"""Entry point: `streamlit run hitl_dashboard/app.py`.

Anonymous visitors get a navigation with the sign-in page alone, so any other URL lands there;
a signed-in moderator gets Queue, History, Metrics, Workflows, Audit and Author (also opened
from each review). Every rerun first expires an idle session.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from hitl_dashboard import session

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="Moderation review", page_icon=":material/gavel:", layout="wide")

signed_in = session.refresh(
    st.session_state, now=time.monotonic(), idle_limit=session.idle_limit_seconds()
)
if signed_in:
    navigation = st.navigation(
        [
            st.Page(VIEWS / "queue.py", title="Queue", icon=":material/inbox:", default=True),
            st.Page(
                VIEWS / "history.py",
                title="History",
                icon=":material/history:",
                url_path="history",
            ),
            st.Page(
                VIEWS / "metrics.py",
                title="Metrics",
                icon=":material/monitoring:",
                url_path="metrics",
            ),
            st.Page(
                VIEWS / "workflows.py",
                title="Workflows",
                icon=":material/account_tree:",
                url_path="workflows",
            ),
            st.Page(
                VIEWS / "author.py",
                title="Author",
                icon=":material/person_search:",
                url_path="author",
            ),
            st.Page(
                VIEWS / "audit.py",
                title="Audit",
                icon=":material/policy:",
                url_path="audit",
            ),
        ]
    )
    with st.sidebar:
        st.button(
            "Sign out",
            key="sign_out",
            icon=":material/logout:",
            on_click=lambda: session.sign_out(st.session_state, notice="Signed out."),
        )
else:
    navigation = st.navigation(
        [st.Page(VIEWS / "sign_in.py", title="Sign in", icon=":material/login:", default=True)],
        position="hidden",
    )
navigation.run()
