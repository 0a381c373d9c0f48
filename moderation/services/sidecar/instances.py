"""Reading a review workflow's instance state through daprd."""

from __future__ import annotations

import time
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information

# daprd's state read can race a workflow's save (see `read_workflow_state`).
STATE_READ_ATTEMPTS = 3
STATE_READ_BACKOFF_SECONDS = 0.2


def read_workflow_state(client: Any, instance_id: str) -> Any:
    """`client.get_workflow_state`, retried on daprd's transient read race.

    daprd 1.18 reads a workflow's metadata and its inbox in separate state-store reads; when
    the workflow saves in between, GetInstance fails with UNKNOWN ("inbox key ... missing from
    state store (transient store read failure or partial save?)"). A second read succeeds.
    """
    for attempt in range(1, STATE_READ_ATTEMPTS + 1):
        try:
            return client.get_workflow_state(instance_id, fetch_payloads=False)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code != grpc.StatusCode.UNKNOWN or attempt == STATE_READ_ATTEMPTS:
                raise
            time.sleep(STATE_READ_BACKOFF_SECONDS * attempt)
    raise AssertionError("unreachable")
