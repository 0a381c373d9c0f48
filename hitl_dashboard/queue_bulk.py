"""The queue's filters (category, language, author, moderator group) and bulk decisions, on
the Queue page.

A moderator selects reviews of the page shown, or takes every open review of the author in the
filter, picks one decision, and confirms it once: the confirmation says how many reviews will
be decided and how. The API (`POST /v1/reviews/bulk-decision`) decides each review as a single
decision is (claimed for you when unclaimed, audited, handed to its own workflow) and answers
per review; the outcomes are shown. The actions are plain functions over the session state and
a `ReviewApi`, as the Queue page's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from hitl_dashboard import safe_text, session
from hitl_dashboard.api_client import ApiError, DecisionChoice, ReviewApi
from hitl_dashboard.session import State
from moderation.db.schemas import BulkDecisionResult, ReviewGroupsPublic, ReviewsPublic
from moderation.taxonomy import CATEGORIES, VIOLATING, Category

# Widget keys (also CSS classes `st-key-<key>` for browser tests).
FILTER_CATEGORY = "hitl_filter_category"
FILTER_LANGUAGE = "hitl_filter_language"
FILTER_AUTHOR = "hitl_filter_author"
FILTER_GROUP = "hitl_filter_group"
SELECTED = "hitl_bulk_selected"
DECISION = "hitl_bulk_decision"
LABEL = "hitl_bulk_label"
NOTE = "hitl_bulk_note"
# Not widgets: the decision waiting for its confirmation, the last answer, the last error.
PENDING = "hitl_bulk_pending"
RESULT = "hitl_bulk_result"
ERROR = "hitl_bulk_error"

ANY = ""
LABELS: tuple[str, ...] = tuple(c.value for c in CATEGORIES)
DECISIONS: tuple[DecisionChoice, ...] = ("remove", "allow")
MAX_NOTE_CHARS = 2000

Action = Callable[..., Callable[[], None]]


def _text(state: State, key: str) -> str | None:
    value = str(state.get(key) or "").strip()
    return value or None


def filters(state: State) -> dict[str, str | None]:
    """The queue filters that are set, as `ReviewApi.list_reviews` takes them."""
    language = _text(state, FILTER_LANGUAGE)
    return {
        "category": _text(state, FILTER_CATEGORY),
        "language": language.lower() if language else None,
        "author_id": _text(state, FILTER_AUTHOR),
        "group": _text(state, FILTER_GROUP),
    }


def language(state: State) -> str | None:
    """The language filter ("Claim next" takes the next review in it)."""
    return filters(state)["language"]


def group(state: State) -> str | None:
    """The moderator group filter ("Claim next" takes the next review in it); None: the key's
    own groups (every group for a key without groups)."""
    return filters(state)["group"]


def group_choices(groups: ReviewGroupsPublic | None) -> list[str]:
    """The groups the filter offers: the ones the key works on (none when nothing is routed)."""
    if groups is None or len(groups.items) < 2:
        return []
    return [item.name for item in groups.items if item.mine]


def groups_caption(groups: ReviewGroupsPublic) -> str:
    """Open reviews per moderator group, and the key's groups."""
    counts = " · ".join(f"{item.name} {item.open}" for item in groups.items)
    mine = ", ".join(groups.key_groups) if groups.key_groups is not None else "every group"
    return f"Open reviews by moderator group: {counts}. You work on: {mine}."


@dataclass(frozen=True)
class BulkRequest:
    """A bulk decision waiting for the moderator's confirmation."""

    label: str
    decision: DecisionChoice
    note: str | None
    count: int
    review_ids: tuple[str, ...] | None = None
    author_id: str | None = None

    def question(self) -> str:
        """What confirming does, in one sentence."""
        what = (
            f"all {self.count} open review(s) of author {self.author_id}"
            if self.author_id is not None
            else f"the {self.count} selected review(s)"
        )
        return f"Decide {what} as {self.decision} · {self.label}?"


def _form(state: State) -> tuple[DecisionChoice, str, str | None] | str:
    """The form's decision, label and note, or what is wrong with them."""
    decision: DecisionChoice = "allow" if state.get(DECISION) == "allow" else "remove"
    label = str(state.get(LABEL) or "")
    if decision == "allow":
        label = Category.SAFE.value  # an allowed post is labelled safe
    elif label not in VIOLATING:
        return "Pick the category the posts violate to remove them."
    note = str(state.get(NOTE) or "").strip()[:MAX_NOTE_CHARS] or None
    return decision, label, note


def ask_selected(state: State) -> None:
    """ "Decide selected": ask to confirm deciding the selected reviews."""
    selected = tuple(state.get(SELECTED) or ())
    form = _form(state)
    state[ERROR] = None
    if not selected:
        state[ERROR] = "Select the reviews to decide first."
    elif isinstance(form, str):
        state[ERROR] = form
    else:
        decision, label, note = form
        state[PENDING] = BulkRequest(label, decision, note, len(selected), review_ids=selected)


def ask_author(state: State, client: ReviewApi) -> None:
    """ "All open reviews of this author": count them, then ask to confirm."""
    author_id = _text(state, FILTER_AUTHOR)
    form = _form(state)
    state[ERROR] = None
    if author_id is None:
        state[ERROR] = "Enter the author in the Author filter first."
        return
    if isinstance(form, str):
        state[ERROR] = form
        return
    try:
        count = client.list_reviews(author_id=author_id, limit=1).total
    except ApiError as exc:
        _report(state, exc)
        return
    if count == 0:
        state[ERROR] = f"Author {author_id} has no open reviews."
        return
    decision, label, note = form
    state[PENDING] = BulkRequest(label, decision, note, count, author_id=author_id)


def cancel(state: State) -> None:
    """Drop the decision waiting for confirmation."""
    state[PENDING] = None


def confirm(state: State, client: ReviewApi) -> None:
    """Send the confirmed bulk decision and keep the per-review outcomes to show."""
    request: BulkRequest | None = state.get(PENDING)
    state[PENDING] = None
    if request is None:
        return
    try:
        result = client.bulk_decide(
            review_ids=list(request.review_ids) if request.review_ids is not None else None,
            author_id=request.author_id,
            label=request.label,
            decision=request.decision,
            note=request.note,
        )
    except ApiError as exc:
        _report(state, exc)
        return
    state[RESULT] = result
    state[SELECTED] = []


def _report(state: State, exc: ApiError) -> None:
    if exc.status == 401:
        session.sign_out(state, notice=f"Signed out: {exc.message}.")
        return
    state[ERROR] = f"Bulk decision not made: {exc.message}."


def summary(result: BulkDecisionResult) -> str:
    return f"{result.decided} decided · {result.skipped} skipped · {result.failed} failed"


# --- rendering --------------------------------------------------------------------------


def render_filters(groups: ReviewGroupsPublic | None = None) -> None:
    """Category, language, author and (when reviews are routed to groups) moderator group
    filters of the queue browser (and of "Claim next": the language and the group)."""
    choices = group_choices(groups)
    if groups is not None and choices:
        st.caption(safe_text.escape_markdown(groups_caption(groups)))
        st.selectbox(
            "Moderator group",
            (ANY, *choices),
            key=FILTER_GROUP,
            format_func=lambda name: name or "my groups",
            help="Reviews are routed to groups by category and language. Claim next takes "
            "the next review of this group.",
        )
    elif st.session_state.get(FILTER_GROUP):
        st.session_state[FILTER_GROUP] = ANY  # the API no longer routes to that group
    category, language_box, author = st.columns(3)
    category.selectbox(
        "Category", (ANY, *LABELS), key=FILTER_CATEGORY, format_func=lambda c: c or "any"
    )
    language_box.text_input(
        "Language",
        key=FILTER_LANGUAGE,
        placeholder="any, or a code such as ja",
        help="The post's metadata `lang`, else the language stage 1 could not read. "
        "Claim next takes the next review in this language.",
    )
    author.text_input("Author", key=FILTER_AUTHOR, placeholder="any")


def _state_callback(function: Callable[[State], None]) -> Callable[[], None]:
    def callback() -> None:
        function(st.session_state)

    return callback


def render_bulk(state: State, page: ReviewsPublic, action: Action) -> None:
    """The selection, the decision form, the confirmation and the last outcomes.

    `action(function)` wraps an API action as a button callback (the page's idle check).
    """
    st.markdown("**Bulk decision**")
    options = [review.review_id for review in page.items]
    # A selection the page no longer lists (decided, filtered out) is dropped.
    state[SELECTED] = [item for item in state.get(SELECTED) or [] if item in options]
    st.multiselect("Reviews to decide", options, key=SELECTED, placeholder="select reviews")
    decision, label, note = st.columns([1, 1, 2])
    decision.radio("Decision", DECISIONS, key=DECISION, horizontal=True)
    label.selectbox("Label (remove)", [c for c in LABELS if c in VIOLATING], key=LABEL)
    note.text_input("Note (optional)", key=NOTE, max_chars=MAX_NOTE_CHARS)
    selected, author, _ = st.columns([1, 2, 2])
    selected.button(
        f"Decide selected ({len(state[SELECTED])})",
        key="bulk_decide_selected",
        on_click=_state_callback(ask_selected),
    )
    author_id = _text(state, FILTER_AUTHOR)
    author.button(
        f"All open reviews of {author_id}" if author_id else "All open reviews of an author",
        key="bulk_decide_author",
        disabled=author_id is None,
        help="Enter the author in the Author filter.",
        on_click=action(ask_author),
    )
    if error := state.get(ERROR):
        st.error(safe_text.escape_markdown(error))
    pending: BulkRequest | None = state.get(PENDING)
    if pending is not None:
        st.warning(safe_text.escape_markdown(pending.question()))
        yes, no, _ = st.columns([1, 1, 4])
        yes.button("Confirm", key="bulk_confirm", type="primary", on_click=action(confirm))
        no.button("Cancel", key="bulk_cancel", on_click=_state_callback(cancel))
    result: BulkDecisionResult | None = state.get(RESULT)
    if result is not None:
        st.caption(f"Last bulk decision: {summary(result)}.")
        st.dataframe(
            [outcome.model_dump() for outcome in result.outcomes],
            hide_index=True,
            column_order=("review_id", "outcome", "reason", "event_id"),
            key="bulk_outcomes",
        )


def list_page(client: ReviewApi, state: State, *, limit: int) -> ReviewsPublic:
    """The first `limit` reviews of the queue with the filters set."""
    chosen = filters(state)
    return client.list_reviews(
        category=chosen["category"],
        language=chosen["language"],
        author_id=chosen["author_id"],
        group=chosen["group"],
        limit=limit,
    )
