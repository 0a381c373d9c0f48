"""Zipkin, where the local stack's traces go: its server jar from Maven Central, run with the JDK.

One process serves the span intake (`/api/v2/spans`, daprd and the services post there), the
query API (`/api/v2/trace/{id}`) and the UI, on `settings.tracing.zipkin.port`, bound to its host
(loopback by default). Spans are kept in memory only (`max_spans`): a trace is for looking at,
not for keeping.
"""

from __future__ import annotations

from pathlib import Path

from moderation.cache import cache_entry, step
from moderation.datasets.download import sha256_of
from moderation.devtools.stack.component import ComponentStatus
from moderation.devtools.stack.runtime import (
    ManagedProcess,
    StackError,
    ensure_ports_free,
    http_ok,
    require_tool,
    rss_mib,
    run,
    wait_for_process,
)
from moderation.settings import PROJECT_ROOT, Settings

ZIPKIN_DIR = PROJECT_ROOT / "scripts" / "zipkin"
# Maven checks the jar against Central's sha1; the sha256 pins the bytes of a known release.
JAR_SHA256 = {"3.6.1": "d8326e0ed4f43855dba81228f688554706e52578a7c782d9a90b73f8680654a1"}


class ZipkinServer:
    name = "zipkin"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.zipkin = settings.tracing.zipkin
        self.process = ManagedProcess(
            name="zipkin", argv=[], state_dir=settings.stack.state_dir, env=self.server_env()
        )

    @property
    def jar(self) -> Path:
        version = self.zipkin.version
        entry = self.settings.stack.cache_dir / "zipkin" / f"zipkin-{version}"
        return entry / f"zipkin-server-{version}-exec.jar"

    def install(self) -> None:
        if self.jar.is_file():
            return
        mvn = require_tool(
            "mvn", "install Maven and a JDK 17+ (`apt-get install maven openjdk-17-jdk-headless`)"
        )
        version = self.zipkin.version

        def resolve(staging: Path) -> None:
            run(
                [
                    mvn, "-B", "-q", "-f", str(ZIPKIN_DIR / "pom.xml"),
                    "dependency:copy-dependencies", "-DincludeScope=runtime",
                    f"-Dzipkin.version={version}", f"-DoutputDirectory={staging}",
                ],
                f"resolving zipkin-server {version} with Maven",
            )  # fmt: skip
            jar = staging / self.jar.name
            pinned = JAR_SHA256.get(version)
            if pinned is not None and sha256_of(jar) != pinned:
                raise StackError(f"{jar.name}: sha256 differs from the pinned {pinned}")

        with step(f"zipkin {version}: resolve the server jar from Maven Central"):
            cache_entry(self.jar.parent.parent, self.jar.parent.name, resolve)

    def server_env(self) -> dict[str, str]:
        """Zipkin's own settings: in-memory storage, bounded, no collector but HTTP."""
        return {
            "STORAGE_TYPE": "mem",
            "MEM_MAX_SPANS": str(self.zipkin.max_spans),
            # Only the HTTP collector: the others start when their variables (KAFKA_BOOTSTRAP_
            # SERVERS, ...) happen to be set in the environment Zipkin inherits.
            "COLLECTOR_KAFKA_ENABLED": "false",
            "COLLECTOR_RABBITMQ_ENABLED": "false",
            "COLLECTOR_PULSAR_ENABLED": "false",
            "SELF_TRACING_ENABLED": "false",
        }

    def argv(self) -> list[str]:
        z = self.zipkin
        # Armeria serves the port; its whole port entry is given, since a system property
        # replaces the list of zipkin-server-shared.yml (an `ip` alone got a random port).
        return [
            "java", f"-Xmx{z.heap}", "-Xms64m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Darmeria.ports[0].ip={z.host}", f"-Darmeria.ports[0].port={z.port}",
            "-Darmeria.ports[0].protocols[0]=http",
            "-jar", str(self.jar),
        ]  # fmt: skip

    def healthy(self) -> bool:
        return http_ok(f"{self.zipkin.url}/health")

    def start(self) -> None:
        if self.process.running():
            return
        require_tool("java", "install a JDK 17+ (`apt-get install openjdk-17-jdk-headless`)")
        ensure_ports_free("zipkin", [self.zipkin.port])
        with step(f"zipkin: start on {self.zipkin.url} (UI, API, span intake)"):
            self.process.argv = self.argv()
            self.process.start()
            wait_for_process(
                self.process,
                "zipkin",
                self.healthy,
                self.settings.stack.startup_timeout_seconds,
            )

    def stop(self) -> None:
        self.process.stop(timeout=20)

    def status(self) -> list[ComponentStatus]:
        pid = self.process.pid()
        return [
            ComponentStatus(
                name="zipkin",
                running=pid is not None,
                healthy=pid is not None and self.healthy(),
                endpoint=self.zipkin.url,
                pid=pid,
                rss_mib=rss_mib(pid) if pid else None,
                detail=f"Zipkin {self.zipkin.version} (in-memory, {self.zipkin.max_spans} spans)",
            )
        ]
