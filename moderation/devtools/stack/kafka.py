"""Apache Kafka 4.x in KRaft single-node mode, from Maven Central jars, run with the JDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from moderation.cache import cache_entry, console, step
from moderation.devtools.stack.component import ComponentStatus
from moderation.devtools.stack.kafka_acls import delete_acls, ensure_acls
from moderation.devtools.stack.runtime import (
    ManagedProcess,
    StackError,
    ensure_ports_free,
    require_tool,
    rss_mib,
    run,
    tcp_answers,
    wait_for_process,
)
from moderation.kafka_auth import ADMIN, PRINCIPALS, aiokafka_auth, stack_password
from moderation.settings import PROJECT_ROOT, Settings

KAFKA_DIR = PROJECT_ROOT / "scripts" / "kafka"


def new_cluster_id() -> str:
    """A KRaft cluster id (base64url of a random UUID) that does not start with "-".

    The storage tool would read a leading "-" as an option ("--cluster-id: expected one
    argument"): one id in 64 did, and `stack up` failed at random. Kafka's own
    `Uuid.randomUuid()` draws again in that case; so does this.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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
        admin = stack_password(self.settings, ADMIN)
        config = self.home / "server.properties"
        self.home.mkdir(parents=True, exist_ok=True)
        # Clients authenticate with SASL/SCRAM on the broker listener and are authorised by
        # ACLs (`moderation.kafka_auth`); the controller listener uses SASL/PLAIN with a static
        # admin user (KRaft cannot check SCRAM there: the credentials live in its own log).
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{k.host}:{k.controller_port}",
            f"listeners=SASL_PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://{k.host}:{k.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={k.sasl_mechanism}",
            f"sasl.mechanism.inter.broker.protocol={k.sasl_mechanism}",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "listener.name.controller.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{ADMIN}" password="{admin}" user_{ADMIN}="{admin}";',
            f"listener.name.sasl_plaintext.{k.sasl_mechanism.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{admin}";',
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{ADMIN}",
            "allow.everyone.if.no.acl.found=false",
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
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("\n".join(lines))
        config.chmod(0o600)  # it holds the admin password
        return config

    def _scram_users(self) -> list[str]:
        """`--add-scram` arguments: every principal's stack credentials, created at format."""
        mechanism = self.kafka.sasl_mechanism
        users: list[str] = []
        for principal in PRINCIPALS:
            password = stack_password(self.settings, principal)
            users += ["--add-scram", f"{mechanism}=[name={principal},password={password}]"]
        return users

    def _credentials_marker(self) -> str:
        """What the storage was formatted with (a digest of the principals' credentials)."""
        digest = hashlib.sha256()
        for principal in PRINCIPALS:
            digest.update(f"{principal}:{stack_password(self.settings, principal)}\n".encode())
        return f"{self.kafka.sasl_mechanism}:{digest.hexdigest()}"

    def _format_storage(self, config: Path) -> None:
        data, marker = self.home / "data", self.home / "credentials.formatted"
        expected = self._credentials_marker()
        if (data / "meta.properties").exists():
            if marker.exists() and marker.read_text() == expected:
                return
            # Storage of an older stack (no SASL) or of other credentials: the local stack's
            # topics hold nothing that is not recreated, so it starts afresh.
            console.print("kafka: storage was formatted without these credentials; starting afresh")
            shutil.rmtree(data)
        with step("kafka: format KRaft storage with the services' SCRAM users"):
            cluster_id = new_cluster_id()
            run(
                self._java(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config),
                    *self._scram_users(),
                ),
                "formatting Kafka storage",
            )  # fmt: skip
        marker.write_text(expected)

    def start(self) -> None:
        if self.process.running():
            self._ensure_topics()
            return
        require_tool("java", "install a JDK 17+ (`apt-get install openjdk-17-jdk-headless`)")
        ensure_ports_free("kafka", [self.kafka.port, self.kafka.controller_port])
        config = self._write_config()
        self._format_storage(config)
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
            bootstrap_servers=self.kafka.bootstrap_servers,
            request_timeout_ms=3000,
            **aiokafka_auth(self.settings, ADMIN),
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
    """Create the topics of `settings` that do not exist yet, and their ACLs (idempotent)."""
    if settings.kafka.security_protocol != "PLAINTEXT":
        await asyncio.to_thread(ensure_acls, settings)
    await create_topics(settings, settings.kafka.topics.all_topics())


async def delete_topics(settings: Settings) -> None:
    """Delete the topics of `settings` (the isolated topics of a benchmark or a test run) and
    their ACLs."""
    if settings.kafka.security_protocol != "PLAINTEXT":
        await asyncio.to_thread(delete_acls, settings)
    await drop_topics(settings, settings.kafka.topics.all_topics())


async def create_topics(settings: Settings, topics: Sequence[str]) -> None:
    """Create those of `topics` that do not exist yet (`kafka.partitions` each); return once the
    broker lists them all."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **aiokafka_auth(settings, ADMIN)
    )
    await admin.start()
    try:
        missing = sorted(set(topics) - set(await admin.list_topics()))
        if missing:
            await admin.create_topics(
                [NewTopic(topic, settings.kafka.partitions, 1) for topic in missing]
            )
        for _ in range(100):
            if not set(topics) - set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
        raise StackError(f"kafka: topics {missing} were not created")
    finally:
        await admin.close()


async def drop_topics(settings: Settings, topics: Sequence[str], *, wait: bool = False) -> None:
    """Delete those of `topics` that exist; with `wait`, return only once the broker no longer
    lists them (so a caller that lists topics next never sees them)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **aiokafka_auth(settings, ADMIN)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [topic for topic in topics if topic in existing]
        if doomed:
            await admin.delete_topics(doomed)
        for _ in range(100 if wait else 0):
            if not set(doomed) & set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
        if wait:
            raise StackError(f"kafka: topics {doomed} were not deleted")
    finally:
        await admin.close()
