"""Kafka ACLs for the local stack and compose, from `moderation.kafka_auth.acl_grants`.

aiokafka's admin client has no ACL calls, so this uses confluent-kafka's (librdkafka), as
the `admin` super user. Bindings are literal: a test or benchmark that makes topics and groups of
its own (`isolated_settings`) gets bindings for exactly those names, and loses them with its
topics. In Kubernetes the Strimzi `KafkaUser`s carry the same grants.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from moderation.devtools.stack.runtime import StackError
from moderation.kafka_auth import ADMIN, acl_grants, credentials
from moderation.settings import Settings

TIMEOUT_SECONDS = 30.0


def acl_bindings(settings: Settings) -> list[AclBinding]:
    """Every ALLOW binding the service principals of `settings` need."""
    bindings: list[AclBinding] = []

    def allow(resource: ResourceType, name: str, principal: str, operation: AclOperation) -> None:
        bindings.append(
            AclBinding(
                resource,
                name,
                ResourcePatternType.LITERAL,
                f"User:{principal}",
                "*",
                operation,
                AclPermissionType.ALLOW,
            )
        )

    for principal, grants in acl_grants(settings).items():
        for topic in grants.read:
            allow(ResourceType.TOPIC, topic, principal, AclOperation.READ)
        for topic in grants.write:
            allow(ResourceType.TOPIC, topic, principal, AclOperation.WRITE)
        for group in grants.groups:
            allow(ResourceType.GROUP, group, principal, AclOperation.READ)
    return bindings


def _admin(settings: Settings) -> AdminClient:
    found = credentials(settings, ADMIN)
    if found is None:
        raise StackError("kafka: ACLs need SASL (security_protocol is PLAINTEXT)")
    return AdminClient(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "security.protocol": settings.kafka.security_protocol,
            "sasl.mechanism": settings.kafka.sasl_mechanism,
            "sasl.username": found.username,
            "sasl.password": found.password,
            **({"ssl.ca.location": settings.kafka.ssl_cafile} if settings.kafka.ssl_cafile else {}),
        }
    )


def _wait(futures: dict[Any, Future[Any]], what: str) -> None:
    for future in futures.values():
        try:
            future.result(timeout=TIMEOUT_SECONDS)
        except Exception as error:
            raise StackError(f"kafka: {what}: {error}") from error


def ensure_acls(settings: Settings) -> None:
    """Create the ACLs of `settings` (creating an existing binding is a no-op)."""
    admin = _admin(settings)  # held until the futures resolve: dropping it cancels them
    futures = admin.create_acls(acl_bindings(settings), request_timeout=TIMEOUT_SECONDS)
    _wait(futures, "creating ACLs")


def delete_acls(settings: Settings) -> None:
    """Delete the ACLs of `settings` (those of an isolated test or benchmark run).

    The Dapr apps' groups are their app ids, the same in every run: their bindings stay.
    """
    shared_groups = {settings.dapr.app_id, settings.agent_service.app_id}
    filters = [
        AclBindingFilter(
            binding.restype,
            binding.name,
            binding.resource_pattern_type,
            binding.principal,
            binding.host,
            binding.operation,
            binding.permission_type,
        )
        for binding in acl_bindings(settings)
        if not (binding.restype is ResourceType.GROUP and binding.name in shared_groups)
    ]
    admin = _admin(settings)
    _wait(admin.delete_acls(filters, request_timeout=TIMEOUT_SECONDS), "deleting ACLs")
