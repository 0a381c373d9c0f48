"""`read_workflow_state` retries daprd's transient read race and nothing else."""

from __future__ import annotations

from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from moderation.services.sidecar import instances
from moderation.services.sidecar.instances import read_workflow_state


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    # grpc.Call's other abstract methods; never called here.
    def details(self) -> str:
        return "inbox key 'inbox-000000' declared in metadata but missing from state store"

    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> Any: ...
    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


class FlakyClient:
    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = failures
        self.calls = 0

    def get_workflow_state(self, instance_id: str, *, fetch_payloads: bool) -> str:
        self.calls += 1
        if self.failures:
            raise FakeRpcError(self.failures.pop(0))
        return f"state of {instance_id}"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moderation.services.sidecar.instances.time.sleep", lambda seconds: None)


def test_a_transient_unknown_error_is_read_again() -> None:
    client = FlakyClient([grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNKNOWN])
    assert read_workflow_state(client, "review-1") == "state of review-1"
    assert client.calls == 3


def test_an_unknown_error_that_persists_is_raised_after_the_last_attempt() -> None:
    client = FlakyClient([grpc.StatusCode.UNKNOWN] * 5)
    with pytest.raises(grpc.RpcError):
        read_workflow_state(client, "review-1")
    assert client.calls == instances.STATE_READ_ATTEMPTS


def test_other_errors_are_not_retried() -> None:
    client = FlakyClient([grpc.StatusCode.UNAVAILABLE])
    with pytest.raises(grpc.RpcError):
        read_workflow_state(client, "review-1")
    assert client.calls == 1
