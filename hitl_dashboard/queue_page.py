"""The Queue page: claim the next review, see the post and the model's view, decide.

The actions (`claim_next_item`, `claim_item`, `choose`, `pick_label`, `reveal`,
`submit_decision`) are plain functions over the session state and a `ReviewApi`, run as button
callbacks: Streamlit runs callbacks before the script, so the stats drawn at the top of the page
already count the decision just made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias

import streamlit as st

from hitl_dashboard import author_page, images_view, queue_bulk, safe_text, session, ui
from hitl_dashboard.api_client import ApiError, DecisionChoice, ReviewApi
from hitl_dashboard.session import State
from moderation.db.schemas import AuthorPublic, ReviewGroupsPublic, ReviewPublic
from moderation.taxonomy import CATEGORIES, VIOLATING, Category

CURRENT = "hitl_queue_current"
CHOICE = "hitl_queue_choice"
REVEALED = "hitl_queue_revealed"
FLASH = "hitl_queue_flash"
# Widget keys (also CSS classes `st-key-<key>` for browser tests).
LABEL = "hitl_decision_label"
NOTE = "hitl_decision_note"
SHOW_QUEUE = "hitl_show_queue"
CLAIM_ID = "hitl_claim_id"
AUTHOR = "hitl_queue_author"

LABELS: tuple[str, ...] = tuple(c.value for c in CATEGORIES)
"""The label choices in taxonomy order: key 1 is `safe`, key 9 is `illicit`."""
MAX_NOTE_CHARS = 2000
# Re-claim (which extends the claim) before deciding when the claim ends within this margin.
CLAIM_MARGIN = timedelta(seconds=5)

FlashKind: TypeAlias = Literal["toast", "error", "info"]


# --- actions (plain functions, testable with a dict and a fake client) ---------------------


def flash(state: State, kind: FlashKind, message: str) -> None:
    """Queue a message for the next render of the page."""
    state.setdefault(FLASH, []).append((kind, message))


def _report(state: State, action: str, exc: ApiError) -> None:
    if exc.status == 401:
        session.sign_out(state, notice=f"Signed out: {exc.message}.")
        return
    flash(state, "error", f"{action}: {exc.message}.")


def default_label(review: ReviewPublic) -> str:
    """The label the form starts with: the model's category, else the review's, else safe."""
    for candidate in (
        review.suggestion.primary_category if review.suggestion else None,
        review.category,
    ):
        if candidate in LABELS:
            return candidate
    return Category.SAFE.value


def suggested_violation(review: ReviewPublic) -> str | None:
    """The violating category the evidence points to most (for Remove), if any."""
    if review.suggestion is not None:
        scores = {c: s for c, s in review.suggestion.scores.items() if c in VIOLATING}
        if scores:
            return max(scores, key=lambda c: scores[c])
        if review.suggestion.primary_category in VIOLATING:
            return review.suggestion.primary_category
    if review.category in VIOLATING:
        return review.category
    return None


def start_review(state: State, review: ReviewPublic) -> None:
    """Show `review` with a fresh form."""
    state[CURRENT] = review
    state[CHOICE] = None
    state[LABEL] = default_label(review)
    state[NOTE] = ""


def clear_review(state: State) -> None:
    """Nothing claimed on screen any more."""
    state[CURRENT] = None
    state[CHOICE] = None


def claim_next_item(state: State, client: ReviewApi) -> None:
    """Claim the most urgent, oldest review (`POST /v1/reviews/claim-next`), in the queue's
    language and moderator group filters when set (else of the key's groups)."""
    try:
        review = client.claim_next(
            language=queue_bulk.language(state), group=queue_bulk.group(state)
        )
    except ApiError as exc:
        _report(state, "Could not claim the next item", exc)
        return
    if review is None:
        clear_review(state)
        flash(state, "info", "The queue is empty: nothing to claim.")
        return
    start_review(state, review)


def claim_item(state: State, client: ReviewApi, review_id: str) -> None:
    """Claim one review by id (`POST /v1/reviews/{id}/claim`)."""
    review_id = review_id.strip()
    if not review_id:
        flash(state, "error", "Enter the id of the review to claim.")
        return
    try:
        review = client.claim(review_id)
    except ApiError as exc:
        _report(state, f"Could not claim {review_id}", exc)
        return
    start_review(state, review)


def claim_typed_item(state: State, client: ReviewApi) -> None:
    """Claim the review whose id is in the "Review id" box."""
    claim_item(state, client, str(state.get(CLAIM_ID) or ""))


def choose(state: State, decision: DecisionChoice) -> None:
    """Pick Allow or Remove; the label follows unless the moderator already chose one."""
    review: ReviewPublic | None = state.get(CURRENT)
    if review is None:
        return
    state[CHOICE] = decision
    if decision == "allow":
        state[LABEL] = Category.SAFE.value
    elif state.get(LABEL) not in VIOLATING:
        violation = suggested_violation(review)
        if violation is not None:
            state[LABEL] = violation


def pick_label(state: State, label: str) -> None:
    """Set the label (the 1-9 keys)."""
    if label in LABELS:
        state[LABEL] = label


def reveal(state: State) -> None:
    """Unblur the current post (and its precedents)."""
    review: ReviewPublic | None = state.get(CURRENT)
    if review is not None:
        state.setdefault(REVEALED, set()).add(review.review_id)


def is_revealed(state: State, review: ReviewPublic) -> bool:
    """Whether the moderator revealed this review's post."""
    revealed: set[str] = state.get(REVEALED, set())
    return review.review_id in revealed


def needs_blur(review: ReviewPublic) -> bool:
    """Whether the post is in a sensitive category (by the review or by the model)."""
    return ui.is_sensitive(
        review.category, review.suggestion.primary_category if review.suggestion else None
    )


# Double review (`review.double_review_share`): what the moderator is told about a review other
# moderators already judged; what they chose is never shown, so the judgements stay independent.
DOUBLE_REVIEW_NOTICE = {
    1: "Double review: another moderator already judged this post. Decide on your own reading.",
    2: "Double review: two moderators disagreed on this post. Your decision settles it.",
}


def _decided_message(status: str, choice: str, label: str, review_id: str) -> str:
    if status == "awaiting_second_review":
        return (
            f"Judgement recorded: {choice} as {label} ({review_id}). This post is double-"
            "reviewed: a second moderator judges it before it is decided."
        )
    if status == "awaiting_tie_break":
        return (
            f"Judgement recorded: {choice} as {label} ({review_id}). It differs from the first "
            "moderator's: a third moderator decides."
        )
    return f"Decision recorded: {choice} as {label} ({review_id})."


def _claim_ends_soon(review: ReviewPublic, now: datetime) -> bool:
    expires = review.claim_expires_at
    if expires is None:
        return False
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= now + CLAIM_MARGIN


def submit_decision(
    state: State, client: ReviewApi, *, next_item: bool, now: datetime | None = None
) -> bool:
    """Send the form's decision; with `next_item`, claim the next review after it.

    A claim that has run out (or is about to) is renewed first: claiming again extends it, or
    answers 409 if someone else took the item meanwhile.

    Returns:
        Whether the API accepted the decision.
    """
    review: ReviewPublic | None = state.get(CURRENT)
    if review is None:
        flash(state, "error", "Nothing to decide: claim an item first.")
        return False
    choice = state.get(CHOICE)
    if choice not in ("allow", "remove"):
        flash(state, "error", "Choose Allow (key a) or Remove (key r) first.")
        return False
    label = state.get(LABEL) or default_label(review)
    if choice == "remove" and label not in VIOLATING:
        flash(state, "error", "Pick the category the post violates (keys 1-9) to remove it.")
        return False
    note = str(state.get(NOTE) or "").strip()[:MAX_NOTE_CHARS] or None
    try:
        if _claim_ends_soon(review, now or datetime.now(UTC)):
            client.claim(review.review_id)
        listed = images_view.hashlist_choice(state, review) if choice == "remove" else None
        accepted = client.decide(
            review.review_id,
            label=label,
            decision=choice,
            note=note,
            add_images_to_hashlist=listed,
        )
    except ApiError as exc:
        _report(state, f"Decision on {review.review_id} not recorded", exc)
        if exc.status in (403, 404, 409):
            # The item cannot be decided by this moderator any more: take it off the screen.
            clear_review(state)
        return False
    flash(state, "toast", _decided_message(accepted.status, choice, label, review.review_id))
    clear_review(state)
    state[NOTE] = ""
    if next_item:
        claim_next_item(state, client)
    return True


# --- rendering --------------------------------------------------------------------------


def _action(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], None]:
    """A button callback: first the idle check (callbacks run before the app's own), then
    `function(state, client, *args, **kwargs)`."""

    def callback() -> None:
        state = st.session_state
        if not session.refresh(
            state, now=time.monotonic(), idle_limit=session.idle_limit_seconds()
        ):
            return
        client = session.current_client(state)
        if client is not None:
            function(state, client, *args, **kwargs)

    return callback


def _state_action(function: Callable[..., None], *args: Any) -> Callable[[], None]:
    """A callback that changes only the session state (no API call)."""

    def callback() -> None:
        function(st.session_state, *args)

    return callback


def _show_flash(state: State) -> None:
    # Messages carry ids and the API's detail: shown as text (`safe_text`), never as Markdown.
    for kind, message in state.pop(FLASH, []):
        if kind == "toast":
            st.toast(safe_text.escape_markdown(message), icon=":material/check_circle:")
        elif kind == "info":
            st.info(safe_text.escape_markdown(message))
        else:
            st.error(safe_text.escape_markdown(message))


def _render_stats(client: ReviewApi) -> None:
    try:
        stats = client.stats()
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(safe_text.escape_markdown(f"Queue stats unavailable: {exc.message}."))
        return
    pending, escalated, inbound, rate, handling = st.columns(5)
    pending.metric("Pending", stats.pending)
    escalated.metric("Escalated", stats.escalated)
    inbound.metric("Inbound 24 h", stats.inbound_24h)
    rate.metric("Action rate", ui.format_rate(stats.action_rate))
    handling.metric("Avg handling", ui.format_duration(stats.avg_handling_seconds))


def _author_of(state: State, client: ReviewApi, review: ReviewPublic) -> AuthorPublic | str:
    """The review's author (or why not), fetched once per review shown (reruns are frequent)."""
    cached = state.get(AUTHOR)
    if cached is not None and cached[0] == review.review_id:
        found: AuthorPublic | str = cached[1]
        return found
    if not review.author_id:
        found = "No author recorded for this post yet."
    else:
        try:
            found = client.author(
                review.author_id,
                tenant=review.tenant,
                limit=author_page.STRIKES_SHOWN_BESIDE_A_REVIEW,
            )
        except ApiError as exc:
            session.handle_unauthorized(exc)
            found = f"Author history unavailable: {exc.message}."
    state[AUTHOR] = (review.review_id, found)
    return found


def _render_author_beside(state: State, client: ReviewApi, review: ReviewPublic) -> None:
    st.markdown("**Author**")
    author = _author_of(state, client, review)
    if isinstance(author, str):
        st.caption(safe_text.escape_markdown(author))
        return
    st.caption(safe_text.escape_markdown(author_page.standing_caption(author)))
    recent = author_page.strike_rows(author, limit=author_page.STRIKES_SHOWN_BESIDE_A_REVIEW)
    if recent:
        st.dataframe(
            recent,
            hide_index=True,
            column_order=("state", "category", "issued_at", "post_id"),
            key="queue_author_strikes",
        )


def _render_review(state: State, review: ReviewPublic, client: ReviewApi | None = None) -> None:
    st.subheader(safe_text.escape_markdown(f"Review {review.review_id}"))
    claim = (
        f"claimed by {review.claimed_by_display or review.claimed_by} until "
        f"{ui.format_time(review.claim_expires_at)}"
        if review.claimed_by
        else "not claimed"
    )
    st.caption(
        safe_text.escape_markdown(
            f"post {review.post_id} · author {review.author_id or '–'}"
            f" · priority {review.priority} · reason {review.reason or '–'}"
            f" · category {review.category or '–'} · group {review.group} · {claim}"
            f" · SLA due {ui.format_time(review.sla_due_at)}"
        )
    )
    if review.author_id:
        st.page_link(
            author_page.PAGE,
            # The author id is the platform's text: shown as text, never as Markdown.
            label=safe_text.escape_markdown(
                f"Author {review.author_id}: history, strikes and actions"
            ),
            icon=":material/person_search:",
            query_params={"author": review.author_id}
            | ({"tenant": review.tenant} if review.tenant else {}),
        )
    if review.appeal_of:
        st.info(
            safe_text.escape_markdown(
                f"Appeal of decision {review.appeal_of}: the author contests it."
            )
        )
    if review.votes:
        st.info(DOUBLE_REVIEW_NOTICE[min(review.votes, 2)], icon=":material/group:")

    blurred = needs_blur(review) and not is_revealed(state, review)
    post, model = st.columns([3, 2])
    with post:
        st.markdown("**Post**")
        safe_text.text_block(
            review.text or "(no text recorded)", test_id="hitl-post", blurred=blurred
        )
        if blurred:
            st.button(
                "Reveal",
                key="reveal",
                shortcut="v",
                icon=":material/visibility:",
                help="Sensitive category: the post is blurred until you reveal it.",
                on_click=_state_action(reveal),
            )
        if client is not None:
            # Under the post's text, one image at a time, blurred until revealed.
            images_view.render(state, client, review)
    with model:
        _render_suggestion(review)
        if client is not None:
            _render_author_beside(state, client, review)

    if review.policy_section:
        policy = review.suggestion.policy_version if review.suggestion else None
        title = f"Policy: {review.category or 'section'}" + (f" ({policy})" if policy else "")
        with st.expander(safe_text.escape_markdown(title), expanded=True):
            # The platform's own versioned policy text (data/policy/), Markdown on purpose.
            st.markdown(review.policy_section)

    st.markdown("**Precedents** (similar past human decisions)")
    if not review.precedents:
        st.caption("No similar past decisions.")
    elif blurred:
        st.caption(f"{len(review.precedents)} precedent(s), hidden until you reveal the post.")
    else:
        st.dataframe(
            [p.model_dump(include={"text", "label", "decision"}) for p in review.precedents],
            hide_index=True,
            column_order=("decision", "label", "text"),
        )


def _render_suggestion(review: ReviewPublic) -> None:
    st.markdown("**Model suggestion**")
    suggestion = review.suggestion
    if suggestion is None:
        st.caption("No automated verdict recorded.")
        return
    decision, category, confidence = st.columns(3)
    decision.metric("Suggests", safe_text.escape_markdown(suggestion.decision))
    category.metric("Category", safe_text.escape_markdown(suggestion.primary_category))
    confidence.metric("Confidence", f"{suggestion.confidence:.0%}")
    st.caption(
        safe_text.escape_markdown(
            f"stage {suggestion.stage} · model {suggestion.model_version or '–'}"
            f" · policy {suggestion.policy_version or '–'}"
        )
    )
    if suggestion.rationale:
        safe_text.text_block(suggestion.rationale, test_id="hitl-rationale", small=True)
    if suggestion.scores:
        ordered = [c for c in LABELS if c in suggestion.scores] + sorted(
            c for c in suggestion.scores if c not in LABELS
        )
        st.bar_chart(
            {"category": ordered, "score": [suggestion.scores[c] for c in ordered]},
            x="category",
            y="score",
            horizontal=True,
            sort=False,
            height=260,
        )


def _render_form(state: State) -> None:
    st.markdown("**Decision**")
    choice = state.get(CHOICE)
    allow, remove, _ = st.columns([1, 1, 4])
    allow.button(
        "Allow",
        key="decide_allow",
        shortcut="a",
        icon=":material/check:",
        type="primary" if choice == "allow" else "secondary",
        on_click=_state_action(choose, "allow"),
    )
    remove.button(
        "Remove",
        key="decide_remove",
        icon=":material/block:",
        help="Shortcut: r",
        type="primary" if choice == "remove" else "secondary",
        on_click=_state_action(choose, "remove"),
    )
    st.selectbox(
        "Label",
        LABELS,
        key=LABEL,
        format_func=lambda label: f"{LABELS.index(label) + 1} · {label}",
    )
    for column, (number, label) in zip(
        st.columns(len(LABELS)), enumerate(LABELS, start=1), strict=True
    ):
        column.button(
            label,
            key=f"label_{number}",
            shortcut=str(number),
            type="tertiary",
            on_click=_state_action(pick_label, label),
        )
    st.text_area("Note (optional)", key=NOTE, max_chars=MAX_NOTE_CHARS, height=80)
    submit_next, submit, _ = st.columns([1, 1, 3])
    submit_next.button(
        "Submit & next",
        key="submit_next",
        shortcut="n",
        type="primary",
        on_click=_action(submit_decision, next_item=True),
    )
    submit.button(
        "Submit",
        key="submit",
        on_click=_action(submit_decision, next_item=False),
    )
    st.caption(
        "Keys: **a** allow · **r** remove · **1-9** label · **n** submit & next · **v** reveal"
        " (not while typing in the note: press Tab first)"
    )
    ui.install_remove_shortcut()


def _groups(client: ReviewApi) -> ReviewGroupsPublic | None:
    """The moderator groups, or None when the API cannot say (the filter is then hidden)."""
    try:
        return client.groups()
    except ApiError as exc:
        session.handle_unauthorized(exc)
        return None


def _render_queue_browser(client: ReviewApi) -> None:
    if not st.toggle("Show the queue", key=SHOW_QUEUE):
        return
    queue_bulk.render_filters(_groups(client))
    try:
        page = queue_bulk.list_page(client, st.session_state, limit=50)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(safe_text.escape_markdown(f"Queue unavailable: {exc.message}."))
        return
    st.caption(f"{page.total} review(s) open; the first {len(page.items)} by priority, then age.")
    if page.items:
        st.dataframe(
            [
                {
                    "review_id": r.review_id,
                    "post_id": r.post_id,
                    "author_id": r.author_id,
                    "status": r.status,
                    "priority": r.priority,
                    "category": r.category,
                    "group": r.group,
                    "reason": r.reason,
                    "claimed_by": r.claimed_by_display or r.claimed_by,
                    "created_at": ui.format_time(r.created_at),
                }
                for r in page.items
            ],
            hide_index=True,
        )
    review_id, claim = st.columns([3, 1], vertical_alignment="bottom")
    review_id.text_input("Review id", key=CLAIM_ID)
    claim.button("Claim", key="claim_by_id", on_click=_action(claim_typed_item))
    queue_bulk.render_bulk(st.session_state, page, _action)


def render() -> None:
    """The Queue page."""
    client = session.require_client()
    state = st.session_state
    ui.inject_style()
    st.title("Review queue")
    _show_flash(state)
    _render_stats(client)
    review: ReviewPublic | None = state.get(CURRENT)
    st.button(
        "Claim next",
        key="claim_next",
        type="primary" if review is None else "secondary",
        icon=":material/playlist_add_check:",
        # `n` always means "next": here while nothing is on screen, else on "Submit & next".
        shortcut="n" if review is None else None,
        help="Claim the most urgent, oldest review in the queue.",
        on_click=_action(claim_next_item),
    )
    if review is None:
        st.info("No item claimed. **Claim next** takes the most urgent, oldest review.")
    else:
        _render_review(state, review, client)
        _render_form(state)
    st.divider()
    _render_queue_browser(client)
