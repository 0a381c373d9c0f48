"""Display helpers shared by the pages: styles, formats, the shortcut for Remove.

Text that submitters or moderators control is shown through `safe_text`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from moderation.taxonomy import Category

# Posts in these categories are blurred until the moderator asks to see them (wellness
# practice of trust-and-safety tooling: no graphic content on screen by surprise).
SENSITIVE_CATEGORIES: frozenset[str] = frozenset(
    {Category.SEXUAL, Category.SEXUAL_MINORS, Category.SELF_HARM, Category.VIOLENCE}
)

_STYLE = """
<style>
.hitl-text { white-space: pre-wrap; overflow-wrap: anywhere; padding: 0.75rem 1rem;
  border: 1px solid rgba(128, 128, 128, 0.35); border-radius: 0.5rem; }
.hitl-text.hitl-blurred { filter: blur(7px); user-select: none; pointer-events: none; }
.hitl-small { white-space: pre-wrap; overflow-wrap: anywhere; opacity: 0.85; }
.hitl-image { max-width: 100%; max-height: 28rem; border-radius: 0.5rem; filter: grayscale(100%); }
.hitl-image.hitl-image-blurred { filter: blur(24px) grayscale(100%); user-select: none;
  pointer-events: none; }
</style>
"""

# Streamlit reserves the bare `r` key (rerun), so `st.button(shortcut="r")` is refused. This
# listener runs in the page (st.html, not iframed), before Streamlit's own handler (capture
# phase on window), and clicks the Remove button found by its key's CSS class. It ignores keys
# typed into inputs and does nothing on pages without that button, so there `r` still reruns.
REMOVE_SHORTCUT_SCRIPT = """
<script>
(() => {
  if (window.__hitlRemoveShortcut) { return; }
  window.__hitlRemoveShortcut = true;
  window.addEventListener("keydown", (event) => {
    if (event.key !== "r" || event.ctrlKey || event.metaKey || event.altKey || event.repeat) {
      return;
    }
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(
        target.tagName))) {
      return;
    }
    const button = document.querySelector(".st-key-decide_remove button");
    if (!button || button.disabled) { return; }
    event.preventDefault();
    event.stopImmediatePropagation();
    button.click();
  }, true);
})();
</script>
"""


def inject_style() -> None:
    """The dashboard's CSS (style-only HTML takes no room on the page)."""
    st.html(_STYLE)


def is_sensitive(*categories: str | None) -> bool:
    """Whether any of `categories` is one to blur."""
    return any(category in SENSITIVE_CATEGORIES for category in categories if category)


def install_remove_shortcut() -> None:
    """Make the bare `r` key click Remove (see `REMOVE_SHORTCUT_SCRIPT`)."""
    st.html(REMOVE_SHORTCUT_SCRIPT, unsafe_allow_javascript=True)


def format_duration(seconds: float | None) -> str:
    """`42 s`, `4 min 12 s`, `2 h 05 min`; an en dash when unknown."""
    if seconds is None:
        return "–"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_rate(rate: float | None) -> str:
    """A share as a percentage; an en dash when unknown."""
    return "–" if rate is None else f"{rate:.0%}"


def format_time(moment: datetime | None) -> str:
    """A timestamp in UTC, to the second; an en dash when unknown."""
    if moment is None:
        return "–"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
