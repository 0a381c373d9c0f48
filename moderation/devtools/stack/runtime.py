"""Plumbing shared by the stack components: processes, ports, readiness.

Cache entries and the progress console are `moderation.cache`'s (the runtime uses them too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from moderation.cache import step


class StackError(RuntimeError):
    """A component could not be installed or started; the message says what to do."""


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of an executable or fail with what to install."""
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` is not installed: {install_hint}")
    return path


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_ports_free(component: str, ports: Sequence[int], grace: float = 10.0) -> None:
    """Fail with a clear message naming the port if another process holds one of `ports`.

    A process that was just killed may hold its sockets for a moment while its threads exit,
    so busy ports get `grace` seconds to come free first.
    """
    deadline = time.monotonic() + grace
    while True:
        busy = [port for port in ports if not port_is_free(port)]
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if busy:
        names = ", ".join(str(port) for port in busy)
        raise StackError(
            f"{component}: port {names} is already in use by another process "
            f"(find it with `ss -ltnp 'sport = :{busy[0]}'`); stop it or change the port in "
            "the MODERATION_* settings"
        )


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25
) -> None:
    """Poll `check` until it returns True; raise StackError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except StackError:
            raise
        except Exception:  # noqa: BLE001 - a probe that raises is simply "not ready yet"
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not become ready within {timeout:.0f}s")
        time.sleep(interval)


def tcp_answers(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def http_ok(url: str, *, statuses: tuple[int, ...] = (200,), timeout: float = 2.0) -> bool:
    """True when `url` answers one of `statuses` (loopback: never through an env proxy)."""
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.get(url).status_code in statuses
    except httpx.HTTPError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process and its children, in MiB."""
    total_kib = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
    return total_kib / 1024 if seen and total_kib else None


@dataclass
class ManagedProcess:
    """A long-running process of the stack, tracked by a pid file under the state dir."""

    name: str
    argv: list[str]
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        existing = self.pid()
        if existing is not None:
            return existing
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - argv is built by the stack, not user input
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def exited_early(self) -> str | None:
        """If the process died, the tail of its log (to explain why); else None."""
        if self.running():
            return None
        with contextlib.suppress(OSError):
            lines = self.log_file.read_text(errors="replace").splitlines()
            return "\n".join(lines[-25:])
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `timeout`."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            # Reap it if it is our child (tests start and stop processes in-process).
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the process group at once (crash simulation)."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)


def wait_for_process(
    process: ManagedProcess, what: str, check: Callable[[], bool], timeout: float
) -> None:
    """Like `wait_until`, but fail at once with the log tail if the process dies."""

    def ready() -> bool:
        tail = process.exited_early()
        if tail is not None:
            raise StackError(f"{process.name} exited during start-up; last log lines:\n{tail}")
        return check()

    try:
        wait_until(what, ready, timeout)
    except StackError as error:
        raise StackError(f"{error}\n(log: {process.log_file})") from None


def run(
    argv: Sequence[str],
    what: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
    log: Path | None = None,
) -> str:
    """Run a setup command to completion; on failure raise StackError with its output."""
    full = list(argv)
    if user is not None:
        full = ["runuser", "-u", user, "--", *full]
    result = subprocess.run(  # noqa: S603 - argv is built by the stack
        full,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(output)
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise StackError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return output


def apt_install(package: str, component: str) -> None:
    """Install a Debian package (as root; otherwise say which command to run)."""
    if os.geteuid() != 0:
        raise StackError(
            f"{component}: {package} is not installed: run `sudo apt-get install {package}`"
        )
    with step(f"{component}: apt-get install {package}"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], "apt-get update", env=env)
        run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
            f"installing {package}",
            env=env,
        )
