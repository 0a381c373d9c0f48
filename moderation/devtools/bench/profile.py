"""Where the time goes: CPU per post of each process, and py-spy's profile of the services.

`CpuMeter` reads each process's CPU time (user + system, its children included) before and after
a phase: divided by the posts of the phase, that is what one post costs each process, the
broker and the database included. `Profiler` runs `py-spy record` on the Python services for
the same phase (sampling from outside: the services run unmodified) and `top_costs` reads the
collapsed stacks it writes into the functions and the packages that spent the samples.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from moderation.devtools.bench.memory import process_tree

SAMPLES_PER_SECOND = 100
# "function (path:line)" as py-spy writes each frame of a collapsed stack.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^():]*)(?::\d+)?\)$")


class ProfilerMissing(RuntimeError):
    """py-spy is not installed (it is a dev dependency: `make venv` installs it)."""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live children (0 once it is gone)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for process in process_tree(pid):
            with contextlib.suppress(psutil.Error):
                total += sum(process.cpu_times()[:2])
    return total


@dataclass
class CpuMeter:
    """CPU seconds each named process spent between `start()` and `stop()`."""

    pids: Mapping[str, int]
    _before: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._before = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self._before["bench"] = sum(os.times()[:2])

    def stop(self) -> dict[str, float]:
        after = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        after["bench"] = sum(os.times()[:2])
        self.spent = {name: max(0.0, after[name] - self._before.get(name, 0.0)) for name in after}
        return self.spent

    def per_post(self, posts: int, seconds: float) -> dict[str, Any]:
        """CPU µs per post by process, their sum, and each process's share of a core."""
        if not posts or not seconds:
            return {}
        micros = {name: round(spent * 1e6 / posts, 1) for name, spent in self.spent.items()}
        return {
            "cpu_us_per_post": dict(sorted(micros.items(), key=lambda item: -item[1])),
            "cpu_us_per_post_total": round(sum(micros.values()), 1),
            "cores_busy": {
                name: round(spent / seconds, 2) for name, spent in sorted(self.spent.items())
            },
        }


def py_spy() -> str:
    """The py-spy executable of this environment."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise ProfilerMissing("py-spy is not installed: `make venv` installs the dev tools")
    return found


class Profiler:
    """`py-spy record` on each named process until `stop()`; collapsed stacks per process.

    Non-blocking sampling: the services are never paused, so the profile costs them nothing
    but the CPU py-spy itself takes (about a tenth of a core per process at 100 samples/s).
    With `native`, C extensions' frames (pydantic-core, psycopg, numpy) are unwound too.
    """

    def __init__(self, pids: Mapping[str, int], out_dir: Path, *, native: bool = False) -> None:
        self.pids = dict(pids)
        self.out_dir = out_dir
        self.native = native
        self.outputs: dict[str, Path] = {}
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        executable = py_spy()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            output = self.out_dir / f"{name}.txt"
            argv = [executable, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND),
                    "--nonblocking", "--format", "raw", "--output", str(output)]  # fmt: skip
            if self.native:
                argv.append("--native")
            self.outputs[name] = output
            self._processes.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def stop(self) -> dict[str, Path]:
        """Stop sampling (SIGINT: py-spy then writes its file) and return the files written."""
        for process in self._processes:
            process.send_signal(signal.SIGINT)
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes.clear()
        return {name: path for name, path in self.outputs.items() if path.exists()}


def _frame_parts(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["path"]


def package_of(path: str) -> str:
    """The package a frame's file belongs to: `moderation.<module>`, a library, the stdlib's."""
    parts = Path(path).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else "site-packages"
    if "moderation" in parts:
        rest = parts[parts.index("moderation") :]
        return ".".join(part.removesuffix(".py") for part in rest[:3])
    if not path:
        return "native"
    return Path(path).stem  # the standard library's module (asyncio's files, json, ...)


def top_costs(lines: Iterable[str], *, limit: int = 12) -> dict[str, Any]:
    """The functions and packages that spent a process's samples (collapsed stacks).

    `self` is where the CPU was when sampled; `inclusive` counts a function once per sample
    it is on the stack of (so the handler of a batch shows what it costs all in).
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_parts(frame) for frame in stack.split(";")]
        function, path = frames[-1]
        own[f"{function} ({package_of(path)})"] += count
        packages[package_of(path)] += count
        for name in {f"{function} ({package_of(path)})" for function, path in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(count / total, 4)}
            for name, count in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "self": shares(own),
        "inclusive": shares(inclusive),
        "packages": shares(packages),
    }


def summarize_profiles(outputs: Mapping[str, Path], *, limit: int = 12) -> dict[str, Any]:
    """`top_costs` of every file `Profiler.stop()` returned, with the file's path."""
    summary: dict[str, Any] = {}
    for name, path in outputs.items():
        with path.open() as lines:
            summary[name] = {"file": str(path), **top_costs(lines, limit=limit)}
    return summary
