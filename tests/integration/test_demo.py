"""`make demo` as a newcomer runs it: the served embedded mode, clicked through in a real browser;
and, without a terminal or under CI, the table alone.

No stack is needed (in-memory broker, SQLite, in-process review activities); the test is marked
`integration` as every real-browser test is (Debian's headless chromium driven by Playwright,
as `test_review_flow.py`). The demo runs as `moderation demo --serve` in a subprocess on free
ports and its own state directory, and is stopped with SIGINT as Ctrl-C would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from moderation.devtools.stack.browser import ensure_chromium
from moderation.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "demo-dashboard.png"
SAMPLES = [
    line
    for line in (PROJECT_ROOT / "data" / "samples.jsonl").read_text().splitlines()
    if line.strip()
]
TABLE_DONE = re.compile(r"(\d+) posts through the worker and recorder handlers")
READY = "Ctrl-C stops both."
# Training the fast model on a cold cache takes about a minute; loading it, seconds.
START_SECONDS = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CI",) and not key.startswith("MODERATION_DASHBOARD__")
    }
    return env | {
        "MODERATION_STACK__STATE_DIR": str(tmp_path / "state"),
        # The demo uses the local LLM when one answers: minutes on a CPU, not what is tested.
        "MODERATION_AGENT__ENABLED": "false",
        "COLUMNS": "200",
        **extra,
    }


@dataclass
class ServedDemo:
    process: subprocess.Popen[str]
    output: list[str]
    reader: threading.Thread
    api_url: str
    dashboard_url: str
    key: str
    curl: str


def read_until(process: subprocess.Popen[str], marker: str, output: list[str]) -> None:
    """Wait until the demo printed `marker` (a thread appends its lines to `output`)."""
    deadline = time.monotonic() + START_SECONDS
    while not any(marker in line for line in list(output)):
        assert process.poll() is None, "".join(output)[-3000:]
        assert time.monotonic() < deadline, "".join(output)[-3000:]
        time.sleep(0.2)


def collect_lines(process: subprocess.Popen[str], output: list[str]) -> threading.Thread:
    """Read the demo's output as it comes (select() cannot see what the text buffer holds)."""

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def after(output: list[str], label: str) -> str:
    line = next(line for line in output if line.startswith(label))
    return line.removeprefix(label).split()[0]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedDemo]:
    api_port, dashboard_port = free_port(), free_port()
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "moderation.cli", "demo", "--serve"],
        cwd=PROJECT_ROOT,
        env=demo_env(
            tmp_path,
            MODERATION_API__PORT=str(api_port),
            MODERATION_DASHBOARD__PORT=str(dashboard_port),
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = collect_lines(process, output)
    try:
        read_until(process, READY, output)
        yield ServedDemo(
            process=process,
            output=output,
            reader=reader,
            api_url=after(output, "API"),
            dashboard_url=after(output, "dashboard"),
            key=after(output, "sign-in key"),
            curl=next(line.strip() for line in output if line.startswith("curl ")),
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.timeout(900)
def test_the_served_demo_is_clicked_through_in_a_real_browser(served: ServedDemo) -> None:
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.api_url, headers=headers, timeout=30) as api:
        pending = api.get("/v1/reviews", params={"status": "pending"}).json()["total"]
        assert pending > 0, "the samples left nothing to review"

        chromium = ensure_chromium()
        review_id = drive_demo(served, chromium)

        # The decision went through the review workflow's activity and the recorder.
        review = api.get(f"/v1/reviews/{review_id}").json()
        assert review["status"] == "decided"
        trail = api.get(f"/v1/posts/{review['post_id']}").json()
        assert trail["status"] == "decided"
        assert [d["moderator_display"] for d in trail["decisions"]] == [
            review["decided_by_display"]
        ]
        assert api.get("/v1/reviews", params={"status": "pending"}).json()["total"] == pending - 1

        # The printed curl line submits a post that the same worker classifies at once.
        submitted = subprocess.run(  # noqa: S603 - the line the demo printed
            ["bash", "-c", served.curl], capture_output=True, text=True, timeout=60, check=True
        )
        post_id = json.loads(submitted.stdout)["post_id"]
        classified = api.get(f"/v1/posts/{post_id}").json()
        assert classified["verdicts"] and classified["status"] != "pending"

    # Ctrl-C stops both: the demo exits 0 and the ports are free again.
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=60) == 0
    served.reader.join(timeout=10)
    assert any("demo stopped" in line for line in served.output[-3:]), served.output[-3:]
    for url in (served.api_url, served.dashboard_url):
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=5)


def drive_demo(served: ServedDemo, chromium: Path) -> str:
    """Sign in with the printed key, see the queue, claim the next review and allow it."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(60_000)
        try:
            return sign_in_and_decide(served, page)
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo-dashboard-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def sign_in_and_decide(served: ServedDemo, page: Page) -> str:
    page.goto(served.dashboard_url)
    page.locator(".st-key-hitl_sign_in_key input").fill(served.key)
    page.locator(".st-key-sign_in button").click()
    page.locator('[data-testid="stMetric"]', has_text="Pending").wait_for()
    page.locator(".st-key-hitl_show_queue label").click()
    page.get_by_text(re.compile(r"\d+ review\(s\) open")).first.wait_for()

    page.locator(".st-key-claim_next button").first.click()
    heading = page.get_by_text(re.compile(r"^Review review-\w+$")).first
    heading.wait_for()
    review_id = heading.inner_text().removeprefix("Review ").strip()
    page.locator(".st-key-decide_allow button").first.click()
    page.locator('.st-key-decide_allow [data-testid="stBaseButton-primary"]').first.wait_for()
    page.locator(".st-key-submit button").first.click()
    page.get_by_text("Decision recorded").first.wait_for()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    return review_id


@pytest.mark.timeout(900)
@pytest.mark.parametrize("ci", [True, False], ids=["CI=true", "no terminal"])
def test_without_a_terminal_or_under_ci_the_demo_prints_and_exits(tmp_path: Path, ci: bool) -> None:
    result = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "moderation.cli", "demo"],
        cwd=PROJECT_ROOT,
        env=demo_env(tmp_path, **({"CI": "true"} if ci else {})),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = TABLE_DONE.search(result.stdout)
    assert found is not None, result.stdout[-3000:]
    assert int(found.group(1)) == len(SAMPLES)
    assert "serving in embedded mode" not in result.stdout
    assert "sign-in key" not in result.stdout
