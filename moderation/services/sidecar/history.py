"""Listing a Dapr app's workflow instances and reading one's step history, from its daprd.

The Python workflow client has neither call, but daprd serves both on the durabletask gRPC API
the SDK bundles (`TaskHubSidecarService`): `ListInstanceIDs` and `GetInstanceHistory`, next to
`GetInstance` for an instance's status. What daprd 1.18 does with them:

- `ListInstanceIDs` pages through the actor state store's keys (`KeysLike` on
  `<app>||dapr.internal.<ns>.<app>.workflow||%||metadata`); the PostgreSQL store returns them
  in row order, the order the instances were created in, oldest first. So the newest are the
  last ones: the whole list is read (up to `MAX_SCANNED` ids) and its tail kept. A store
  without `KeysLike` cannot list.
- `GetInstanceHistory` loads the instance's saved history (NOT_FOUND for an unknown id); events
  still in the inbox are not part of it yet.

Each call carries `dapr-api-token` and a deadline; an unreachable or refusing daprd raises
`SidecarUnavailable`. Nothing returned holds a payload (`history_steps.py`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import ModuleType
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from pydantic import SecretStr

from moderation.db.schemas.workflows import (
    WorkflowApp,
    WorkflowHistoryPublic,
    WorkflowInstancePublic,
    WorkflowInstancesPublic,
)
from moderation.services.sidecar.history_steps import instance_from_state, steps_from_events
from moderation.services.sidecar.tokens import TOKEN_HEADER
from moderation.settings import Settings

log = logging.getLogger(__name__)

# A sidecar on loopback answers in milliseconds; past this it counts as unreachable.
CALL_TIMEOUT_SECONDS = 5.0
# The whole request (a full id scan plus one status read per listed instance).
REQUEST_TIMEOUT_SECONDS = 20.0
LIST_PAGE_SIZE = 1000
# Bounds the scan: past it the listing says it is incomplete rather than reading on.
MAX_SCANNED = 50_000
# daprd's state read can race a workflow's save (see `instances.read_workflow_state`).
READ_ATTEMPTS = 3
READ_BACKOFF_SECONDS = 0.2


def _service_protos() -> ModuleType:
    """durabletask's request messages, imported on first use (the SDK's import is not free)."""
    from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2

    return orchestrator_service_pb2


class SidecarUnavailable(Exception):
    """The daprd could not answer; the API answers 503 with `reason`.

    `reason` is what a client may read; `detail` (addresses, gRPC codes) is for the log only.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InstanceNotFound(LookupError):
    """The daprd knows no workflow instance with that id."""


class SidecarWorkflowReader:
    """Reads one Dapr app's workflow instances from its daprd (blocking gRPC, thread-safe)."""

    def __init__(
        self,
        *,
        app: WorkflowApp,
        address: str,
        api_token: SecretStr | None,
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        self.address = address
        self.timeout = timeout
        self._metadata = [(TOKEN_HEADER, api_token.get_secret_value())] if api_token else []
        self._channel: Any = None
        self._stub: Any = None
        self._lock = threading.Lock()

    def _service(self) -> Any:
        # Created on first use: a gRPC channel connects lazily anyway.
        with self._lock:
            if self._stub is None:
                from dapr.ext.workflow._durabletask.internal import (
                    orchestrator_service_pb2_grpc as service_grpc,
                )

                self._channel = grpc.insecure_channel(self.address)
                self._stub = service_grpc.TaskHubSidecarServiceStub(self._channel)
            return self._stub

    def _call(self, method: str, request: Any) -> Any:
        """One RPC with the token and the deadline; daprd's transient read race retried."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                rpc = getattr(self._service(), method)
                return rpc(request, metadata=self._metadata, timeout=self.timeout)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code == grpc.StatusCode.UNKNOWN and attempt < READ_ATTEMPTS:
                    time.sleep(READ_BACKOFF_SECONDS * attempt)
                    continue
                if code == grpc.StatusCode.NOT_FOUND:
                    raise InstanceNotFound(str(getattr(request, "instanceId", ""))) from error
                raise self._unavailable(method, error, code) from error
        raise AssertionError("unreachable")

    def _unavailable(self, method: str, error: Exception, code: Any) -> SidecarUnavailable:
        name = code.name if code is not None else type(error).__name__
        where = f"the {self.app.value} service's workflow engine"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            reason = f"{where} is unreachable"
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            reason = f"{where} refused the API's Dapr token"
        else:
            reason = f"{where} could not answer ({name})"
        message = error.details() if isinstance(error, grpc.Call) else str(error)
        log.warning("%s at %s failed: %s %s", method, self.address, name, message)
        return SidecarUnavailable(reason, f"dapr at {self.address}: {method} {name}")

    def instance_ids(self) -> tuple[list[str], bool]:
        """Every instance id, oldest first (up to `MAX_SCANNED`), and whether that was all."""
        ids: list[str] = []
        token: str | None = None
        while len(ids) < MAX_SCANNED:
            request = _service_protos().ListInstanceIDsRequest(
                pageSize=min(LIST_PAGE_SIZE, MAX_SCANNED - len(ids)), continuationToken=token
            )
            page = self._call("ListInstanceIDs", request)
            ids.extend(page.instanceIds)
            if not page.HasField("continuationToken") or not page.continuationToken:
                return ids, True
            token = page.continuationToken
        return ids, False

    def instance(self, instance_id: str) -> WorkflowInstancePublic:
        """One instance's status and times (never its input or output).

        Raises:
            InstanceNotFound: no such instance.
            SidecarUnavailable: daprd did not answer.
        """
        request = _service_protos().GetInstanceRequest(
            instanceId=instance_id, getInputsAndOutputs=False
        )
        answer = self._call("GetInstance", request)
        if not answer.exists:
            raise InstanceNotFound(instance_id)
        return instance_from_state(self.app, answer.workflowState)

    def list_instances(self, *, limit: int) -> WorkflowInstancesPublic:
        """The `limit` newest instances, newest first.

        Raises:
            SidecarUnavailable: daprd did not answer, or its state store cannot list.
        """
        ids, complete = self.instance_ids()
        items = []
        for instance_id in ids[-limit:] if limit > 0 else []:
            try:
                items.append(self.instance(instance_id))
            except InstanceNotFound:
                continue  # purged between the listing and the read
        items.sort(key=lambda item: (item.created_at is not None, item.created_at), reverse=True)
        return WorkflowInstancesPublic(
            app=self.app, items=items, scanned=len(ids), complete=complete
        )

    def history(self, instance_id: str) -> WorkflowHistoryPublic:
        """An instance and its steps in order.

        Raises:
            InstanceNotFound: no such instance.
            SidecarUnavailable: daprd did not answer.
        """
        summary = self.instance(instance_id)
        answer = self._call(
            "GetInstanceHistory",
            _service_protos().GetInstanceHistoryRequest(instanceId=instance_id),
        )
        return WorkflowHistoryPublic(instance=summary, steps=steps_from_events(answer.events))

    def close(self) -> None:
        """Close the channel, if one was opened."""
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()


class WorkflowHistory(Protocol):
    """What the API needs to show workflow instances (the Dapr readers, or a fake in tests)."""

    async def list_instances(self, app: WorkflowApp, *, limit: int) -> WorkflowInstancesPublic:
        """The newest instances of `app` (raises `SidecarUnavailable`)."""

    async def history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic:
        """One instance's history (raises `InstanceNotFound`, `SidecarUnavailable`)."""

    async def close(self) -> None:
        """Release connections (the app's lifespan calls it once)."""


class DaprWorkflowHistory:
    """`WorkflowHistory` over the agent and review services' daprds, off the event loop."""

    def __init__(
        self,
        readers: dict[WorkflowApp, SidecarWorkflowReader],
        *,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.readers = readers
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> DaprWorkflowHistory:
        """Both daprds, with the API token the stack gives them both."""
        token = settings.dapr.api_token
        return cls(
            {
                WorkflowApp.REVIEW: SidecarWorkflowReader(
                    app=WorkflowApp.REVIEW, address=settings.dapr.grpc_endpoint, api_token=token
                ),
                WorkflowApp.AGENT: SidecarWorkflowReader(
                    app=WorkflowApp.AGENT,
                    address=settings.agent_service.dapr_grpc_endpoint,
                    api_token=token,
                ),
            }
        )

    async def _run(self, app: WorkflowApp, work: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(work, *args, **kwargs)
        except TimeoutError as error:
            raise SidecarUnavailable(
                f"the {app.value} service's workflow engine did not answer within "
                f"{self.timeout:g}s",
                f"dapr at {self.readers[app].address}",
            ) from error

    async def list_instances(self, app: WorkflowApp, *, limit: int) -> WorkflowInstancesPublic:
        """See `WorkflowHistory.list_instances`."""
        listed: WorkflowInstancesPublic = await self._run(
            app, self.readers[app].list_instances, limit=limit
        )
        return listed

    async def history(self, app: WorkflowApp, instance_id: str) -> WorkflowHistoryPublic:
        """See `WorkflowHistory.history`."""
        found: WorkflowHistoryPublic = await self._run(app, self.readers[app].history, instance_id)
        return found

    async def close(self) -> None:
        """Close every reader's channel."""
        for reader in self.readers.values():
            await asyncio.to_thread(reader.close)
