"""Who may say what on Kafka: one SASL/SCRAM principal per service, and its ACLs.

Kafka is the backbone every decision crosses, so an unauthenticated broker lets anything on the
network forge a human decision (`review.decisions`), a post or a review request. Each service
therefore connects as its own principal and may touch only its own topics and consumer group:

- `api` writes posts.submitted and review.requested (appeals);
- `worker` reads posts.submitted (group `classifier`), writes moderation.verdicts,
  review.requested, agent.requested (hand-offs to the agent service) and posts.submitted.dlq;
- `recorder` reads posts.submitted, moderation.verdicts, review.requested and review.decisions
  (group `recorder`), writes their `.dlq` topics, authors.actioned and reports.resolved (its
  outbox of author actions and report outcomes);
- `review` (the review service's daprd) reads review.requested (group: its app id), writes
  review.decisions, review.escalated and review.requested.dlq;
- `agent` (the agent service's daprd) reads agent.requested (group: its app id), writes
  moderation.verdicts, review.requested and agent.requested.dlq;
- `dispatcher` (the webhook dispatcher) reads moderation.verdicts, review.decisions,
  authors.actioned and reports.resolved (group `webhooks`), writes their `.dlq` topics;
- `admin` is the super user of the tooling: topics, ACLs, tests, benchmarks.

`acl_grants` is that list as data: the local stack creates these ACLs
(`moderation.devtools.stack.kafka`)
and the Kubernetes `KafkaUser`s are checked against it (`tests/integration/test_k8s_manifests.py`).
In production the credentials come from settings (the service's Strimzi `KafkaUser` secret) over
SASL_SSL; in development they are the local stack's, generated once into its state dir.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Literal

from faststream.security import BaseSecurity, SASLScram256, SASLScram512

from moderation.local_secrets import local_secret
from moderation.settings import Settings

Principal = Literal["admin", "api", "worker", "recorder", "review", "agent", "dispatcher"]
PRINCIPALS: tuple[Principal, ...] = (
    "admin",
    "api",
    "worker",
    "recorder",
    "review",
    "agent",
    "dispatcher",
)
ADMIN: Principal = "admin"


@dataclass(frozen=True)
class Grants:
    """What one principal may do: read these topics in these groups, write those topics."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def acl_grants(settings: Settings) -> dict[Principal, Grants]:
    """Each service principal's grants for the topics and groups of `settings` (admin: all)."""
    topics = settings.kafka.topics
    dlq = topics.dlq_suffix
    recorded = (
        topics.posts_submitted,
        topics.verdicts,
        topics.review_requested,
        topics.review_decisions,
    )
    # What outbound webhooks tell the platforms (`services/webhooks/`).
    webhook_sources = (
        topics.verdicts,
        topics.review_decisions,
        topics.authors_actioned,
        topics.reports_resolved,
    )
    return {
        "api": Grants(write=(topics.posts_submitted, topics.review_requested)),
        "worker": Grants(
            read=(topics.posts_submitted,),
            write=(
                topics.verdicts,
                topics.review_requested,
                topics.agent_requested,
                topics.posts_submitted + dlq,
            ),
            groups=(settings.worker.classifier_group,),
        ),
        "recorder": Grants(
            read=recorded,
            # Their dead letters, and the consequences it derives (published from its outbox).
            write=(
                *(topic + dlq for topic in recorded),
                topics.authors_actioned,
                topics.reports_resolved,
            ),
            groups=(settings.worker.recorder_group,),
        ),
        "review": Grants(
            read=(topics.review_requested,),
            write=(topics.review_decisions, topics.review_escalated, topics.review_requested + dlq),
            # The review service's daprd consumes in the group named after its app id.
            groups=(settings.dapr.app_id,),
        ),
        "agent": Grants(
            read=(topics.agent_requested,),
            write=(topics.verdicts, topics.review_requested, topics.agent_requested + dlq),
            groups=(settings.agent_service.app_id,),
        ),
        "dispatcher": Grants(
            read=webhook_sources,
            write=tuple(topic + dlq for topic in webhook_sources),
            groups=(settings.webhooks.consumer_group,),
        ),
    }


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def stack_password(settings: Settings, principal: Principal) -> str:
    """The local stack's password of `principal` (generated once, 0600, ignored by git)."""
    return local_secret(settings.stack.state_dir / "kafka" / "credentials" / principal)


def credentials(settings: Settings, principal: Principal) -> Credentials | None:
    """The credentials a client acting as `principal` presents; None without SASL.

    The settings' username and password when set (deployments: `Settings` refuses to start
    without them); in development, the local stack's credentials of `principal`.
    """
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    if kafka.username and kafka.password is not None:
        return Credentials(kafka.username, kafka.password.get_secret_value())
    if settings.environment != "development":  # unreachable through a validated Settings
        raise ValueError("Kafka credentials are required outside development")
    return Credentials(principal, stack_password(settings, principal))


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka.security_protocol != "SASL_SSL":
        return None
    return ssl.create_default_context(cafile=settings.kafka.ssl_cafile)


def aiokafka_auth(settings: Settings, principal: Principal) -> dict[str, Any]:
    """Keyword arguments that authenticate an aiokafka producer, consumer or admin client."""
    found = credentials(settings, principal)
    if found is None:
        return {}
    return {
        "security_protocol": settings.kafka.security_protocol,
        "sasl_mechanism": settings.kafka.sasl_mechanism,
        "sasl_plain_username": found.username,
        "sasl_plain_password": found.password,
        "ssl_context": _ssl_context(settings),
    }


def faststream_security(settings: Settings, principal: Principal) -> BaseSecurity | None:
    """The `security=` of a FastStream `KafkaBroker` acting as `principal`."""
    found = credentials(settings, principal)
    if found is None:
        return None
    scram = SASLScram512 if settings.kafka.sasl_mechanism == "SCRAM-SHA-512" else SASLScram256
    context = _ssl_context(settings)
    return scram(found.username, found.password, ssl_context=context, use_ssl=context is not None)
