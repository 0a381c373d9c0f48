"""Apache Kafka 4.x in KRaft single-node mode, from Maven Central jars, run with the JDK."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from moderation.settings import PROJECT_ROOT, Settings
from moderation.stack.component import ComponentStatus
from moderation.stack.runtime import (
    ManagedProcess,
    StackError,
    cache_entry,
    ensure_ports_free,
    require_tool,
    rss_mib,
    run,
    step,
    tcp_answers,
    wait_for_process,
)

KAFKA_DIR = PROJECT_ROOT / "scripts" / "kafka"


class KafkaBroker:
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.home = settings.stack.state_dir / "kafka"
        self.process = ManagedProcess(
            name="kafka", argv=[], state_dir=settings.stack.state_dir, cwd=self.home
        )

    @property
    def libs(self) -> Path:
        return self.settings.stack.cache_dir / "kafka" / f"kafka-{self.kafka.version}" / "libs"

    def install(self) -> None:
        if self.libs.is_dir():
            return
        mvn = require_tool(
            "mvn", "install Maven and a JDK 17+ (`apt-get install maven openjdk-17-jdk-headless`)"
        )
        require_tool("java", "install a JDK 17+ (`apt-get install openjdk-17-jdk-headless`)")

        def resolve(staging: Path) -> None:
            run(
                [
                    mvn, "-B", "-q", "-f", str(KAFKA_DIR / "pom.xml"),
                    "dependency:copy-dependencies", "-DincludeScope=runtime",
                    f"-Dkafka.version={self.kafka.version}",
                    f"-DoutputDirectory={staging / 'libs'}",
                ],
                f"resolving Kafka {self.kafka.version} jars with Maven",
            )  # fmt: skip

        with step(f"kafka {self.kafka.version}: resolve jars from Maven Central"):
            cache_entry(self.libs.parent.parent, f"kafka-{self.kafka.version}", resolve)

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.kafka.heap}", "-Xms128m", "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main_class, *args,
        ]  # fmt: skip

    def _write_config(self) -> Path:
        k = self.kafka
        config = self.home / "server.properties"
        self.home.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{k.host}:{k.controller_port}",
                    f"listeners=PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{k.host}:{k.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.home / 'data'}",
                    f"num.partitions={k.partitions}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.retention.hours=24",
                    "",
                ]
            )
        )
        return config

    def start(self) -> None:
        if self.process.running():
            self._ensure_topics()
            return
        require_tool("java", "install a JDK 17+ (`apt-get install openjdk-17-jdk-headless`)")
        ensure_ports_free("kafka", [self.kafka.port, self.kafka.controller_port])
        config = self._write_config()
        if not (self.home / "data" / "meta.properties").exists():
            with step("kafka: format KRaft storage"):
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
                run(
                    self._java(
                        "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)
                    ),
                    "formatting Kafka storage",
                )
        with step(f"kafka: start broker on {self.kafka.bootstrap_servers}"):
            self.process.argv = self._java("kafka.Kafka", str(config))
            self.process.start()
            wait_for_process(
                self.process,
                "kafka broker",
                lambda: tcp_answers(self.kafka.port) and asyncio.run(self._metadata_ok()),
                self.settings.stack.startup_timeout_seconds,
            )
        self._ensure_topics()

    async def _metadata_ok(self) -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.kafka.bootstrap_servers, request_timeout_ms=3000
        )
        await admin.start()
        try:
            await admin.list_topics()
            return True
        finally:
            await admin.close()

    def _ensure_topics(self) -> None:
        with step("kafka: ensure topics"):
            asyncio.run(ensure_topics(self.settings))

    def stop(self) -> None:
        self.process.stop(timeout=30)

    def status(self) -> list[ComponentStatus]:
        pid = self.process.pid()
        healthy = False
        if pid is not None:
            try:
                healthy = asyncio.run(self._metadata_ok())
            except Exception:  # noqa: BLE001 - status reports, it does not fail
                healthy = False
        return [
            ComponentStatus(
                name="kafka",
                running=pid is not None,
                healthy=healthy,
                endpoint=self.kafka.bootstrap_servers,
                pid=pid,
                rss_mib=rss_mib(pid) if pid else None,
                detail=f"Apache Kafka {self.kafka.version} (KRaft)",
            )
        ]


async def ensure_topics(settings: Settings) -> None:
    """Create the topics of `settings` that do not exist yet (idempotent)."""
    kafka = settings.kafka
    wanted = kafka.topics.all_topics()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        missing = sorted(set(wanted) - set(await admin.list_topics()))
        if missing:
            await admin.create_topics([NewTopic(topic, kafka.partitions, 1) for topic in missing])
        for _ in range(100):
            if not set(wanted) - set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
        raise StackError(f"kafka: topics {missing} were not created")
    finally:
        await admin.close()


async def delete_topics(settings: Settings) -> None:
    """Delete the topics of `settings` (the isolated topics of a benchmark or a test run)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [topic for topic in settings.kafka.topics.all_topics() if topic in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
