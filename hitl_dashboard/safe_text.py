"""Text that submitters, authors or moderators control, shown as text: never Markdown or HTML.

Streamlit renders Markdown in `st.markdown`, `st.caption`, headers, alerts, toasts and every
label and metric value, links and images included: an author id such as
`![x](https://evil.example/p.png)` would make each moderator's browser fetch the attacker's
pixel, and `[verify your key](https://evil.example)` would be a clickable phishing link. So any
value that came from the API (ids, reasons, versions, error details) or was typed by a moderator
goes through this module before it reaches the page:

- `text_block`: a block of such text, HTML-escaped in `st.html` (the post, the rationale);
- `escape_markdown`: for the places that only take Markdown (captions, subheaders, alerts,
  toasts, labels, metric values); the result renders as exactly the characters given.
"""

from __future__ import annotations

import html
import re

import streamlit as st

# CommonMark lets a backslash escape any ASCII punctuation character, and then shows it as is.
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# U+2060 WORD JOINER: invisible and zero-width. Streamlit's Markdown turns some plain text into
# elements after parsing, where escapes no longer count: GFM autolinks (`http://`, `www.`,
# `a@b.c`) and emoji shortcodes (`:smile:`). A joiner after `:`, before `@` and inside `www.`
# breaks each of those patterns without changing what the moderator reads.
_JOINER = "\u2060"
_WWW = re.compile(r"(www)(?=\.)", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def escape_markdown(value: object) -> str:
    """`value` as Markdown that Streamlit shows literally, on one line.

    Every ASCII punctuation character is backslash-escaped (no link, image, emphasis, HTML,
    `:color[...]` directive or `$math$` can start), line breaks become spaces (no block
    structure), and a word joiner breaks the autolink and emoji patterns that GFM applies to
    plain text after parsing.
    """
    text = _LINE_BREAKS.sub(" ", str(value))
    text = _WWW.sub(rf"\1{_JOINER}", text)
    escaped: list[str] = []
    for character in text:
        if character == "@":
            escaped.append(_JOINER)
        if character in _ASCII_PUNCTUATION:
            escaped.append("\\")
        escaped.append(character)
        if character == ":":
            escaped.append(_JOINER)
    return "".join(escaped)


def text_block(text: str, *, test_id: str, blurred: bool = False, small: bool = False) -> None:
    """Untrusted text (a post, a model's rationale) shown as text, never as Markdown or HTML.

    The classes are styled by `ui.inject_style`.

    Args:
        text: the text.
        test_id: its `data-testid`, for browser tests (`hitl-post`, `hitl-rationale`, ...).
        blurred: blur it (class `hitl-blurred`) until the moderator reveals it.
        small: the smaller style of secondary text.
    """
    classes = "hitl-small" if small else "hitl-text"
    if blurred:
        classes += " hitl-blurred"
    st.html(f'<div class="{classes}" data-testid="{test_id}">{html.escape(text)}</div>')
