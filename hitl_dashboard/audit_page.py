"""The Audit page: who did what, when, with the state before and after; filterable; CSV export.

`GET /v1/audit` answers the entries the key may see (its tenants'; global ones such as live
configuration changes only for keys that see every tenant), newest first, a page at a time;
`GET /v1/audit.csv` answers every match. Fetched on every rerun, not cached: it shows what
happened up to now. Every value is shown as a table cell (plain text), never as Markdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from datetime import time as clock
from typing import Any

import streamlit as st

from hitl_dashboard import safe_text, session, ui
from hitl_dashboard.api_client import ApiError, AuditQuery, ReviewApi
from hitl_dashboard.session import Activity, State
from moderation.db.schemas import AuditEntryPublic, AuditPagePublic

PAGE_SIZE = 50
# A value longer than this is cut in the change column (the CSV has it whole).
VALUE_CHARS = 80
# Widget and page keys (`hitl_` so that signing out forgets them).
ACTOR = "hitl_audit_actor"
ACTION = "hitl_audit_action"
ENTITY = "hitl_audit_entity"
ENTITY_ID = "hitl_audit_entity_id"
SINCE = "hitl_audit_since"
UNTIL = "hitl_audit_until"
OFFSET = "hitl_audit_offset"


def query_of(state: State) -> AuditQuery:
    """The filters as the form holds them; a day range covers whole days in UTC."""
    since, until = state.get(SINCE), state.get(UNTIL)
    return AuditQuery(
        actor=_text(state.get(ACTOR)),
        action=_text(state.get(ACTION)),
        entity=_text(state.get(ENTITY)),
        entity_id=_text(state.get(ENTITY_ID)),
        since=datetime.combine(since, clock.min, UTC) if isinstance(since, date) else None,
        until=datetime.combine(until, clock.max, UTC) if isinstance(until, date) else None,
    )


def _text(value: object) -> str | None:
    text = str(value or "").strip()
    return text or None


def _shown(value: object) -> str:
    if value is None:
        return "–"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def change_summary(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """`status: pending → claimed; claimed_by: – → key:7`: each field the change set.

    Writers put in `after` what the change set (and some context, such as the post id); a
    field of `before` that `after` leaves out did not change. With no `after` (a removal),
    every field of `before` is shown going away.
    """
    old = before or {}
    if after is None:
        return "; ".join(f"{name}: {_shown(value)} → –" for name, value in old.items()) or "–"
    changes = [
        f"{name}: {_shown(old.get(name))} → {_shown(value)}"
        for name, value in after.items()
        if old.get(name) != value
    ]
    return "; ".join(changes) or "no change"


def _json(value: Mapping[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def entry_rows(entries: list[AuditEntryPublic]) -> list[dict[str, Any]]:
    """One row per entry: when, who (the key's name), what, on what, before → after."""
    return [
        {
            "when": ui.format_time(entry.at),
            "who": entry.actor_display,
            "action": entry.action,
            "entity": f"{entry.entity} {entry.entity_id}",
            "before → after": change_summary(entry.before, entry.after),
            "before": _json(entry.before),
            "after": _json(entry.after),
        }
        for entry in entries
    ]


def audit_csv_source(
    client: ReviewApi, query: AuditQuery, activity: Activity | None, *, idle_limit: float
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
        return client.audit_csv(query)

    return fetch


def _first_page() -> None:
    st.session_state[OFFSET] = 0


def _turn(step: int) -> Callable[[], None]:
    def turn() -> None:
        state = st.session_state
        state[OFFSET] = max(0, int(state.get(OFFSET, 0)) + step)

    return turn


def _filters() -> None:
    with st.form("audit_filters", border=False):
        actor, action, entity, entity_id = st.columns(4)
        actor.text_input("Who", key=ACTOR, placeholder="key:7, or a service's name")
        action.text_input("Action", key=ACTION, placeholder="review.decide, config.set")
        entity.text_input("Entity", key=ENTITY, placeholder="review, config")
        entity_id.text_input("Entity id", key=ENTITY_ID, placeholder="review-…")
        since, until, apply = st.columns([2, 2, 1], vertical_alignment="bottom")
        since.date_input("From (UTC)", value=None, key=SINCE)
        until.date_input("To (UTC)", value=None, key=UNTIL)
        with apply:
            st.form_submit_button("Apply", key="audit_apply", on_click=_first_page)


def _pager(page: AuditPagePublic, offset: int) -> None:
    shown = len(page.items)
    st.caption(
        f"Entries {offset + 1:,}–{offset + shown:,} of {page.total:,}, newest first."
        if shown
        else f"{page.total:,} entries match."
    )
    newer, older, _ = st.columns([1, 1, 4])
    newer.button("Newer", key="audit_newer", disabled=offset == 0, on_click=_turn(-PAGE_SIZE))
    older.button(
        "Older",
        key="audit_older",
        disabled=offset + shown >= page.total,
        on_click=_turn(PAGE_SIZE),
    )


def render() -> None:
    """The Audit page."""
    client = session.require_client()
    state = st.session_state
    ui.inject_style()
    st.title("Audit")
    st.caption(
        "Who did what, when, with the state before and after: claims, decisions, appeals, "
        "configuration changes. Filters are exact; the days are inclusive."
    )
    _filters()
    query = query_of(state)
    offset = int(state.get(OFFSET, 0))
    try:
        page = client.audit(query, limit=PAGE_SIZE, offset=offset)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(safe_text.escape_markdown(f"Could not read the audit trail: {exc.message}."))
        return
    if not page.items and offset > 0 and page.total > 0:
        # The filters changed under a later page: start again from the newest.
        state[OFFSET] = 0
        st.rerun()
    _pager(page, offset)
    if page.items:
        st.dataframe(entry_rows(page.items), hide_index=True, key="audit_entries")
    else:
        st.info("No audit entry matches.")
    st.download_button(
        "Export (CSV)",
        data=audit_csv_source(
            client, query, session.current_activity(state), idle_limit=session.idle_limit_seconds()
        ),
        file_name=f"audit-{datetime.now(UTC):%Y-%m-%d}.csv",
        mime="text/csv",
        key="audit_export",
        icon=":material/download:",
        on_click="ignore",
    )
