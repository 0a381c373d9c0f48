"""A review's images, shown with care (issue 16 part 5; Ozone's and moderator-wellbeing practice).

One image at a time, blurred and greyscale until the moderator reveals it, and then still
greyscale; beside it what stage 1 found (a hash-list match, the nudity detector's score). An
image on a known-bad hash list is never revealed here: the list already says what it is.
The bytes come from the API (`GET /v1/images/{sha256}`), never from the store directly.
"""

from __future__ import annotations

import base64
from collections.abc import MutableMapping
from typing import Any

import streamlit as st

from hitl_dashboard import safe_text
from hitl_dashboard.api_client import ApiError, ReviewApi
from moderation.db.schemas import ReviewPublic

State = MutableMapping[str, Any]

IMAGE_INDEX = "hitl_queue_image_index"  # review id -> the image shown
REVEALED_IMAGES = "hitl_queue_revealed_images"  # (review id, sha256) revealed
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
HASH_MATCH = "image:hash-match:"
NUDITY = "image:nudity:"


HASHLIST = "hitl_queue_hashlist"  # the hash list a removal adds the post's images to


def hashlist_choice(state: State, review: ReviewPublic) -> str | None:
    """The list the moderator asked to add this post's images to (only with images)."""
    name = str(state.get(HASHLIST) or "").strip()
    return name if name and review.images else None


def findings(review: ReviewPublic) -> list[str]:
    """What stage 1 found in the post's images, from its verdict's signals, as sentences."""
    signals = review.suggestion.signals if review.suggestion else []
    found = []
    for signal in signals:
        if signal.startswith(HASH_MATCH):
            name, _, kind = signal.removeprefix(HASH_MATCH).rpartition(":")
            found.append(f"On the known-bad hash list '{name}' ({kind} match).")
        elif signal.startswith(NUDITY):
            found.append(f"Nudity detector: {signal.removeprefix(NUDITY)} (1.00 is certain).")
    return found or ["No hash-list match; the nudity detector did not run or found nothing."]


def hash_matched(review: ReviewPublic) -> bool:
    signals = review.suggestion.signals if review.suggestion else []
    return any(signal.startswith(HASH_MATCH) for signal in signals)


def shown_index(state: State, review: ReviewPublic) -> int:
    indexes: dict[str, int] = state.setdefault(IMAGE_INDEX, {})
    return min(indexes.get(review.review_id, 0), max(len(review.images) - 1, 0))


def step(state: State, review: ReviewPublic, by: int) -> None:
    """Show the previous (-1) or next (+1) image."""
    indexes: dict[str, int] = state.setdefault(IMAGE_INDEX, {})
    indexes[review.review_id] = (shown_index(state, review) + by) % len(review.images)


def reveal_image(state: State, review: ReviewPublic, sha256: str) -> None:
    state.setdefault(REVEALED_IMAGES, set()).add((review.review_id, sha256))


def is_revealed(state: State, review: ReviewPublic, sha256: str) -> bool:
    revealed: set[tuple[str, str]] = state.get(REVEALED_IMAGES, set())
    return (review.review_id, sha256) in revealed


def image_html(data: bytes, image_format: str, *, revealed: bool) -> str:
    """The image inline, blurred and greyscale, or greyscale once revealed (`ui` styles)."""
    kind = CONTENT_TYPES.get(image_format, "image/jpeg")
    encoded = base64.b64encode(data).decode("ascii")
    classes = "hitl-image" + ("" if revealed else " hitl-image-blurred")
    return (
        f'<img class="{classes}" data-testid="hitl-image" alt="post image" '
        f'src="data:{kind};base64,{encoded}">'
    )


def render(state: State, client: ReviewApi, review: ReviewPublic) -> None:
    """The images section of a review (nothing for a post without images). Drawn inside the
    post's column, so it nests one level of columns at most (Streamlit's limit)."""
    if not review.images:
        return
    index = shown_index(state, review)
    image = review.images[index]
    st.markdown(f"**Images** ({index + 1} of {len(review.images)})")
    for line in findings(review):
        st.caption(safe_text.escape_markdown(line))
    st.caption(f"{image.width}×{image.height} {image.format}, {image.size_bytes:,} bytes")
    try:
        data = client.image(image.sha256)
    except ApiError as exc:
        st.warning(safe_text.escape_markdown(f"Image unavailable: {exc.message}."))
        return
    revealed = is_revealed(state, review, image.sha256)
    st.html(image_html(data, image.format, revealed=revealed))
    if hash_matched(review):
        st.caption("On a known-bad list: it stays blurred.")
    elif not revealed:
        st.button(
            "Reveal image (greyscale)",
            key="reveal_image",
            icon=":material/visibility:",
            on_click=reveal_image,
            args=(state, review, image.sha256),
        )
    if len(review.images) > 1:
        back, forward = st.columns(2)
        back.button("Previous", key="image_prev", on_click=step, args=(state, review, -1))
        forward.button("Next", key="image_next", on_click=step, args=(state, review, 1))
    st.text_input(
        "On remove, add the images to hash list",
        key=HASHLIST,
        placeholder="an existing list of the label, e.g. gore-2026",
        help="Re-uploads of these images are then removed at once. The list must exist "
        "and be of the decision's label.",
    )
