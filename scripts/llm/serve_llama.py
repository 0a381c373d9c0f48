"""Run llama-cpp-python's server with chat templates that do not HTML-escape message text.

llama-cpp-python 0.3.36 renders the ``chatml-function-calling`` template in a Jinja environment
with ``autoescape=select_autoescape(["html", "xml"])``, so ``"`` reaches the model as ``&#34;``
and ``<``, ``>``, ``&`` are escaped too: the post text the agent judges would be mangled. A chat
prompt is not HTML, so this launcher makes every template environment of ``llama_chat_format``
autoescape-free, then runs ``llama_cpp.server`` as ``__main__`` with the same arguments:

    python scripts/llm/serve_llama.py --model ... --chat_format chatml-function-calling ...

It runs with the LLM venv's interpreter (``moderation/devtools/stack/llm.py``), not the project's,
and
leaves the installed package untouched.
"""

from __future__ import annotations

import runpy
from typing import Any

import llama_cpp.llama_chat_format as chat_format
from jinja2.sandbox import ImmutableSandboxedEnvironment


class UnescapedSandboxedEnvironment(ImmutableSandboxedEnvironment):
    """The same sandbox, with autoescaping always off (templates render text, not HTML)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["autoescape"] = False
        super().__init__(*args, **kwargs)


def main() -> None:
    # The module looks the name up at each render (`ImmutableSandboxedEnvironment(...)` inside
    # the format functions), so replacing its global covers every chat format.
    chat_format.ImmutableSandboxedEnvironment = UnescapedSandboxedEnvironment
    # As `python -m llama_cpp.server`: the server parses sys.argv[1:], passed on unchanged.
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
