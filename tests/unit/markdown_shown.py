"""What a moderator sees of a Markdown string that Streamlit renders, for the dashboard tests.

`shown` is the text on screen; `active_markup` lists what the string made besides text (links,
images, HTML, emphasis, code, math-looking dollars...). Parsed as CommonMark (markdown-it-py),
then checked for what Streamlit's GFM adds after parsing, where escapes no longer count: bare
URLs and e-mail addresses turned into links.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

_PARSER = MarkdownIt("commonmark").enable("strikethrough")
_JOINER = "\u2060"
# Stricter than GFM (any occurrence counts, whatever precedes it).
_AUTOLINK = re.compile(r"https?://|www\.", re.IGNORECASE)
_EMAIL = re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+")
# Markup Streamlit adds to CommonMark: `:color[...]`-style directives and `$math$`.
_DIRECTIVE = re.compile(r":[a-z-]+\[")
_DOLLARS = re.compile(r"\$")
_TEXT_TOKENS = {"text", "softbreak", "hardbreak"}


def _inline_children(markdown: str) -> list[Token]:
    return [
        child
        for token in _PARSER.parse(markdown)
        if token.type == "inline"
        for child in token.children or []
    ]


def shown(markdown: str) -> str:
    """The text Streamlit shows for `markdown` (escapes resolved, invisible joiners removed)."""
    parts = []
    for child in _inline_children(markdown):
        if child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        else:
            parts.append(child.content)
    return "".join(parts).replace(_JOINER, "")


def active_markup(markdown: str) -> list[str]:
    """Everything in `markdown` that renders as more than literal text (empty: text only)."""
    found = [
        f"block {token.type}"
        for token in _PARSER.parse(markdown)
        if token.type not in ("paragraph_open", "paragraph_close", "inline")
    ]
    for child in _inline_children(markdown):
        if child.type not in _TEXT_TOKENS:
            found.append(child.type)
        elif child.type == "text":
            # Escaped characters end up in text tokens; these patterns only count when unescaped.
            raw = child.content
            if _AUTOLINK.search(raw) or _EMAIL.search(raw):
                found.append(f"autolink {raw!r}")
    unescaped = re.sub(r"\\.", "", markdown)
    if _DIRECTIVE.search(unescaped):
        found.append("directive")
    if _DOLLARS.search(unescaped):
        found.append("math")
    return found
