"""How the review API tells a review's workflow about a moderator's decision.

Routes depend on the small `ReviewWorkflows` protocol (`deps.WorkflowsDep`), so unit tests put a
fake in its place; the service uses `DaprReviewWorkflows`, which raises the workflow's external
event through the review service's Dapr sidecar. The workflow instance id is the review id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from pydantic import SecretStr

from moderation.services.sidecar.instances import read_workflow_state
from moderation.services.sidecar.tokens import send_api_token
from moderation.settings import Settings

log = logging.getLogger(__name__)

# A sidecar on loopback answers in milliseconds; past this the request answers 503.
RAISE_TIMEOUT_SECONDS = 10.0
# Instances in these states will never consume the event (Dapr would drop it silently).
_FINISHED_STATUSES = frozenset({"COMPLETED", "FAILED", "TERMINATED"})


class WorkflowUnavailable(Exception):
    """The decision could not be handed to the review's workflow; the caller answers 503.

    `reason` is what a client may read; `detail` (addresses, gRPC codes) is for the log only.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ReviewWorkflows(Protocol):
    """What the review API needs from the workflow engine."""

    async def raise_decision(self, review_id: str, payload: dict[str, Any]) -> None:
        """Deliver a decision (a `ReviewDecided` event as JSON) to the review's workflow.

        Raises:
            WorkflowUnavailable: the workflow engine cannot be reached, or the review's
                workflow is not running (not started yet, or already finished).
        """

    async def close(self) -> None:
        """Release connections (the app's lifespan calls it once)."""


class DaprReviewWorkflows:
    """`DaprWorkflowClient.raise_workflow_event` on the review service's daprd (gRPC).

    The SDK's client is synchronous gRPC: each call runs in a worker thread, bounded by
    `timeout`. Before raising, it checks that the instance exists and still runs, because Dapr
    silently discards an event raised for an unknown or finished instance: the decision would be
    lost while the API reported it accepted.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        event_name: str,
        timeout: float = RAISE_TIMEOUT_SECONDS,
        api_token: SecretStr | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.event_name = event_name
        self.timeout = timeout
        self.api_token = api_token
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DaprReviewWorkflows:
        """The gateway to the review service's sidecar (`MODERATION_DAPR__HOST`)."""
        return cls(
            host=settings.dapr.host,
            port=settings.dapr.grpc_port,
            event_name=settings.review.decision_event,
            api_token=settings.dapr.api_token,
        )

    def _workflow_client(self) -> Any:
        # Created on first use: the channel connects lazily, and the SDK's import is not free.
        with self._lock:
            if self._client is None:
                from dapr.ext.workflow import DaprWorkflowClient

                send_api_token(self.api_token)  # the SDK reads it when the client is made
                self._client = DaprWorkflowClient(host=self.host, port=str(self.port))
            return self._client

    def _raise(self, review_id: str, payload: dict[str, Any]) -> None:
        client = self._workflow_client()
        state = read_workflow_state(client, review_id)
        if state is None:
            raise WorkflowUnavailable(f"the workflow of review '{review_id}' is not running yet")
        status = getattr(state.runtime_status, "name", str(state.runtime_status))
        if status in _FINISHED_STATUSES:
            raise WorkflowUnavailable(
                f"the workflow of review '{review_id}' has finished ({status.lower()})"
            )
        client.raise_workflow_event(review_id, self.event_name, data=payload)

    async def raise_decision(self, review_id: str, payload: dict[str, Any]) -> None:
        """See `ReviewWorkflows.raise_decision`."""
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.to_thread(self._raise, review_id, payload)
        except TimeoutError as error:
            raise WorkflowUnavailable(
                f"the workflow engine did not answer within {self.timeout:g}s",
                f"dapr at {self.host}:{self.port}",
            ) from error
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            name = code.name if code is not None else type(error).__name__
            log.warning("raising the decision of %s failed: %s", review_id, name)
            raise WorkflowUnavailable(
                "the workflow engine refused the decision",
                f"dapr at {self.host}:{self.port}: {name}",
            ) from error

    async def close(self) -> None:
        """Close the gRPC channel, if one was opened."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
