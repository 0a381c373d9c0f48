"""A real browser for the dashboard's end-to-end tests: Debian's headless chromium.

Playwright's own browser download cannot work here (no CDN access); Playwright for Python drives
the distribution's chromium through `executable_path` instead. Installed with apt when missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from moderation.devtools.stack.runtime import StackError, apt_install

DEBIAN_PACKAGE = "chromium"


def chromium_path() -> Path | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def ensure_chromium() -> Path:
    """The chromium executable, installed with apt first if needed."""
    path = chromium_path()
    if path is None:
        apt_install(DEBIAN_PACKAGE, "browser")
        path = chromium_path()
    if path is None:
        raise StackError("chromium was installed but no `chromium` executable is on PATH")
    return path
