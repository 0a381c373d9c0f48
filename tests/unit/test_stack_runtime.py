from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from moderation.cache import cache_entry
from moderation.devtools.stack.dapr import _flags
from moderation.devtools.stack.runtime import (
    ManagedProcess,
    StackError,
    ensure_ports_free,
    port_is_free,
    require_tool,
    wait_for_process,
    wait_until,
)


def test_cache_entry_builds_once_and_reuses(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(staging: Path) -> None:
        calls.append(staging)
        (staging / "artifact").write_text("ok")

    first = cache_entry(tmp_path, "tool-1.0", build)
    second = cache_entry(tmp_path, "tool-1.0", build)
    assert first == second == tmp_path / "tool-1.0"
    assert (first / "artifact").read_text() == "ok"
    assert len(calls) == 1


def test_interrupted_build_leaves_no_entry_and_is_redone(tmp_path: Path) -> None:
    def broken(staging: Path) -> None:
        (staging / "half-written").write_text("partial")
        raise KeyboardInterrupt  # an interrupted download

    with pytest.raises(KeyboardInterrupt):
        cache_entry(tmp_path, "tool-1.0", broken)
    assert list(tmp_path.iterdir()) == []

    def build(staging: Path) -> None:
        (staging / "full").write_text("ok")

    entry = cache_entry(tmp_path, "tool-1.0", build)
    assert sorted(p.name for p in entry.iterdir()) == ["full"]


def test_losing_the_race_to_another_process_keeps_its_entry(tmp_path: Path) -> None:
    def build_while_another_process_finishes_first(staging: Path) -> None:
        (staging / "mine").write_text("same content")
        (tmp_path / "tool-1.0").mkdir()  # the other process renamed its staging dir first
        (tmp_path / "tool-1.0" / "theirs").write_text("same content")

    entry = cache_entry(tmp_path, "tool-1.0", build_while_another_process_finishes_first)
    assert sorted(p.name for p in entry.iterdir()) == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["tool-1.0"]  # no staging dir left


def test_busy_port_is_named_in_the_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(StackError, match=f"port {port} is already in use"):
            ensure_ports_free("kafka", [port], grace=0)
    assert port_is_free(port)


def test_missing_tool_says_what_to_install() -> None:
    with pytest.raises(StackError, match="apt-get install maven"):
        require_tool("definitely-not-a-tool-xyz", "install Maven (`apt-get install maven`)")


def test_wait_until_times_out_with_the_component_name() -> None:
    with pytest.raises(StackError, match="kafka broker did not become ready"):
        wait_until("kafka broker", lambda: False, timeout=0.3, interval=0.05)


def test_managed_process_start_is_idempotent_and_stop_leaves_nothing(tmp_path: Path) -> None:
    process = ManagedProcess(
        name="sleeper",
        argv=[sys.executable, "-c", "import time; time.sleep(60)"],
        state_dir=tmp_path,
    )
    pid = process.start()
    assert process.start() == pid  # already running: nothing new
    assert process.running()
    process.stop(timeout=5)
    assert not process.running()
    assert not process.pid_file.exists()


def test_process_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    process = ManagedProcess(
        name="crasher",
        argv=[sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(2)"],
        state_dir=tmp_path,
    )
    process.start()
    with pytest.raises(StackError, match="bad config line 3"):
        wait_for_process(process, "crasher", lambda: False, timeout=10)


def test_flags_render_in_order() -> None:
    assert _flags({"app-id": "review", "dapr-grpc-port": 50001}) == [
        "--app-id",
        "review",
        "--dapr-grpc-port",
        "50001",
    ]


def test_a_kafka_cluster_id_never_starts_with_a_dash() -> None:
    """The storage tool reads a leading "-" as an option; one random id in 64 had one."""
    from moderation.devtools.stack.kafka import new_cluster_id

    ids = [new_cluster_id() for _ in range(2_000)]
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids)
    assert len(set(ids)) == len(ids)
