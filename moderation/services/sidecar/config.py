"""Live configuration through the app's daprd: the Dapr Configuration API on the PostgreSQL
configuration store (`components/configstore-postgresql.yaml`).

`LiveConfigWatch` reads every live key at start, subscribes to changes (the store's trigger
notifies daprd, daprd streams them to us within a second) and reads everything again every
`resync_seconds` in case a notification was missed or the stream ended (then it subscribes
again). Each time the stored items change, the
service's settings are rebuilt (`moderation.live_config.apply_live`) and handed to `apply`. A
sidecar that is not there, or a value the settings refuse, is logged and the service keeps what
it has: live configuration never stops a service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from dapr.clients import DaprClient
from dapr.proto import api_service_v1
from dapr.proto.runtime.v1.configuration_pb2 import SubscribeConfigurationRequest
from prometheus_client import Gauge

from moderation.db.engine import CONFIG_CHANNEL
from moderation.live_config import LIVE_KEYS, LiveConfigError, apply_live, config_version
from moderation.services.sidecar.tokens import use_api_token
from moderation.settings import Settings

logger = logging.getLogger(__name__)

CONFIG_VERSION = Gauge(
    "moderation_live_config_version",
    "the live configuration in effect (value 1; `static`: the service's own settings)",
    ["version"],
)


class LiveConfigWatch:
    """Follows the configuration store and hands each new settings to `apply`.

    Args:
        settings: the service's own settings (what the store's values are laid over).
        grpc_endpoint: the service's daprd (`host:port`).
        apply: called with the new settings (from the watch's thread).
        resync_seconds: how often everything is read again.
    """

    def __init__(
        self,
        settings: Settings,
        grpc_endpoint: str,
        apply: Callable[[Settings], None],
        *,
        resync_seconds: float = 10.0,
    ) -> None:
        self.base = settings
        self.grpc_endpoint = grpc_endpoint
        self.apply = apply
        self.resync_seconds = resync_seconds
        self.items: dict[str, tuple[str, str]] = {}  # key → (value, version) as stored
        self.version = settings.config_version
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-config", daemon=True)
        CONFIG_VERSION.labels(version=self.version).set(1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        use_api_token(self.base)
        client: DaprClient | None = None
        stream: threading.Thread | None = None
        unavailable = False
        while not self._stop.is_set():
            try:
                if client is None:
                    client = DaprClient(self.grpc_endpoint)
                store = self.base.dapr.configstore_name
                response = client.get_configuration(store, list(LIVE_KEYS))
                self.replace({k: (i.value, i.version) for k, i in response.items.items()})
                if unavailable:
                    logger.info("live configuration available again (%s)", self.version)
                unavailable = False
                if stream is None or not stream.is_alive():
                    stream = threading.Thread(target=self._subscribe, name="live-config-stream",
                                              daemon=True)  # fmt: skip
                    stream.start()
            except Exception as error:  # noqa: BLE001 - no sidecar or store: keep what we have
                # Once at WARNING while it lasts: a service run without its daprd (the embedded
                # demo, a bench) would otherwise log it every `resync_seconds`.
                log = logger.debug if unavailable else logger.warning
                log("live configuration unavailable (%s); serving %s", error, self.version)
                unavailable = True
                if client is not None:
                    client.close()  # type: ignore[no-untyped-call]  # untyped in the SDK
                    client = None
            self._stop.wait(self.resync_seconds)
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    def _subscribe(self) -> None:
        """Stream the store's changes until the stream ends (the resync starts it again).

        Our own stream rather than the SDK's `subscribe_configuration`: the SDK's streaming
        call does not send `dapr-api-token`, so a daprd that requires it refuses it.
        """
        token = self.base.dapr.api_token
        metadata = (("dapr-api-token", token.get_secret_value()),) if token else ()
        request = SubscribeConfigurationRequest(
            store_name=self.base.dapr.configstore_name,
            keys=list(LIVE_KEYS),
            # The channel the store's trigger notifies (older components read it here).
            metadata={"pgNotifyChannel": CONFIG_CHANNEL},
        )
        channel = grpc.insecure_channel(self.grpc_endpoint)
        try:
            stub = api_service_v1.DaprStub(channel)  # type: ignore[no-untyped-call]
            for response in stub.SubscribeConfigurationAlpha1(request, metadata=metadata):
                if self._stop.is_set():
                    return
                if response.items:
                    self._changed(response.items)
        except grpc.RpcError as error:
            logger.debug("live configuration stream ended (%s)", error)
        finally:
            channel.close()

    def _changed(self, changed: Any) -> None:
        with self._lock:
            items = dict(self.items)
        for key, item in changed.items():
            items[key] = (item.value, item.version)
        self.replace(items)

    def replace(self, items: dict[str, tuple[str, str]]) -> None:
        """Serve `items` (key → stored value and version) if they differ from what is served."""
        with self._lock:
            if items == self.items:
                return
            version = config_version({key: v for key, (_, v) in items.items()})
            try:
                settings = apply_live(self.base, {k: value for k, (value, _) in items.items()},
                                      version)  # fmt: skip
            except LiveConfigError as error:
                logger.error("live configuration %s refused (%s); serving %s", version, error,
                             self.version)  # fmt: skip
                return
            CONFIG_VERSION.labels(version=self.version).set(0)
            CONFIG_VERSION.labels(version=version).set(1)
            logger.info("live configuration %s → %s", self.version, version)
            self.items, self.version = items, version
        self.apply(settings)
