"""The moderator's session: API key and client in `st.session_state` only; it ends after
`MODERATION_DASHBOARD__SESSION_MINUTES` idle, and in any case `MAX_SESSION_HOURS` after sign-in.

Plain functions over a mutable mapping (Streamlit passes `st.session_state`, tests may pass a
dict) so the rules are testable without a running app. The API client is made by a factory
that tests replace by putting their own under `CLIENT_FACTORY` in the session state.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import streamlit as st

from hitl_dashboard.api_client import ApiClient, ApiError, ReviewApi
from hitl_dashboard.settings import get_dashboard_settings

State: TypeAlias = MutableMapping[Any, Any]
ClientFactory: TypeAlias = Callable[[str, str], ReviewApi]
"""Makes a client from (API base URL, API key)."""

CLIENT = "hitl_client"
CLIENT_FACTORY = "hitl_client_factory"
LAST_ACTIVITY = "hitl_last_activity"
NOTICE = "hitl_sign_in_notice"
# Everything a page keeps per session starts with this, so signing out forgets all of it.
PAGE_STATE_PREFIX = "hitl_"
# A working day: a key left signed in on a shared screen does not outlive the shift, even in use.
MAX_SESSION_HOURS = 12.0
MAX_SESSION_SECONDS = MAX_SESSION_HOURS * 3600.0


@dataclass
class Activity:
    """When the moderator last did something (a monotonic clock reading).

    Mutable and shared on purpose: work that runs outside a rerun (the deferred CSV download)
    holds it and checks it, so a page left open cannot act after its session expired.
    """

    last: float
    ended: bool = False
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.last

    def too_old(self, now: float) -> bool:
        """Whether the session passed its absolute lifetime (`MAX_SESSION_HOURS`)."""
        return now - self.started > MAX_SESSION_SECONDS

    def expired(self, now: float, idle_limit: float) -> bool:
        """Whether the session ended, stayed idle longer than `idle_limit` seconds, or is older
        than `MAX_SESSION_HOURS`."""
        return self.ended or now - self.last > idle_limit or self.too_old(now)


def default_client_factory(api_url: str, api_key: str) -> ReviewApi:
    """The real HTTP client."""
    return ApiClient(api_url, api_key)


def idle_limit_seconds() -> float:
    """How long a session may stay idle (`MODERATION_DASHBOARD__SESSION_MINUTES`)."""
    return get_dashboard_settings().dashboard.session_minutes * 60.0


def sign_in(state: State, api_key: str, *, now: float) -> str | None:
    """Check `api_key` against the API (`GET /v1/reviews/stats`) and open a session.

    Args:
        state: the session state.
        api_key: what the moderator typed.
        now: a monotonic clock reading, the session's first activity.

    Returns:
        None when signed in, otherwise the sentence to show the moderator.
    """
    key = api_key.strip()
    if not key:
        return "Enter your API key."
    factory: ClientFactory = state.get(CLIENT_FACTORY, default_client_factory)
    client = factory(get_dashboard_settings().dashboard.api_url, key)
    try:
        client.stats()
    except ApiError as exc:
        client.close()
        if exc.unauthorized:
            return f"Sign-in failed: {exc.message}."
        return f"Sign-in failed, the API could not check the key: {exc.message}."
    previous = state.get(CLIENT)
    if previous is not None:
        previous.close()
    state[CLIENT] = client
    state[LAST_ACTIVITY] = Activity(last=now)
    return None


def sign_out(state: State, *, notice: str | None = None) -> None:
    """Forget the key, the client and every page's state; `notice` is shown on the sign-in page."""
    client = state.get(CLIENT)
    if client is not None:
        client.close()
    activity = state.get(LAST_ACTIVITY)
    if isinstance(activity, Activity):
        activity.ended = True
    for key in [k for k in state if isinstance(k, str) and k.startswith(PAGE_STATE_PREFIX)]:
        if key != CLIENT_FACTORY:
            del state[key]
    if notice:
        state[NOTICE] = notice


def refresh(state: State, *, now: float, idle_limit: float) -> bool:
    """On every rerun: expire an idle session, otherwise record this activity.

    Returns:
        Whether the moderator is (still) signed in.
    """
    if state.get(CLIENT) is None:
        return False
    activity = state.get(LAST_ACTIVITY)
    if not isinstance(activity, Activity) or activity.expired(now, idle_limit):
        if isinstance(activity, Activity) and activity.too_old(now):
            notice = f"Your session reached its {MAX_SESSION_HOURS:g}-hour limit; sign in again."
        else:
            notice = (
                f"Your session expired after {idle_limit / 60:g} minutes without activity; "
                "sign in again."
            )
        sign_out(state, notice=notice)
        return False
    activity.last = now
    return True


def current_activity(state: State) -> Activity | None:
    """The session's activity record, or None when nobody is signed in."""
    activity = state.get(LAST_ACTIVITY)
    return activity if isinstance(activity, Activity) else None


def current_client(state: State) -> ReviewApi | None:
    """The signed-in moderator's client, or None."""
    client: ReviewApi | None = state.get(CLIENT)
    return client


def require_client() -> ReviewApi:
    """The client for a page; without a session the page stops here and says so.

    The app only registers the sign-in page for anonymous visitors, so this is the second lock.
    """
    client = current_client(st.session_state)
    if client is None:
        st.warning("Sign in to use the dashboard.")
        st.stop()
    return client


def handle_unauthorized(exc: ApiError) -> None:
    """A key refused mid-session (revoked: 401) ends the session; the app then shows sign-in."""
    if exc.status == 401:
        sign_out(st.session_state, notice=f"Signed out: {exc.message}.")
        st.rerun()
