"""One settings tree for every service, job and the local stack.

Environment variables use the prefix ``MODERATION_`` and ``__`` between sections, for example
``MODERATION_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092`` or ``MODERATION_DB__PORT=55432``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from moderation.secret_checks import development_secrets
from moderation.taxonomy import VIOLATING, Category

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Development-only credentials of the local stack. Refused outside `environment=development`
# (`test` is a deployed environment too: staging, shared test clusters).
DEV_DB_PASSWORD = "moderation-dev"
DEV_LLM_API_KEY = "local-llm"


class TopicSettings(BaseModel):
    """Kafka topic names (ARCHITECTURE.md: dotted names, configurable)."""

    posts_submitted: str = "posts.submitted"
    verdicts: str = "moderation.verdicts"
    review_requested: str = "review.requested"
    review_decisions: str = "review.decisions"
    review_escalated: str = "review.escalated"
    agent_requested: str = "agent.requested"
    # What the platform hears back (issue 15): actions on authors, outcomes of user reports.
    authors_actioned: str = "authors.actioned"
    reports_resolved: str = "reports.resolved"
    dlq_suffix: str = ".dlq"

    def main_topics(self) -> list[str]:
        return [
            self.posts_submitted,
            self.verdicts,
            self.review_requested,
            self.review_decisions,
            self.review_escalated,
            self.agent_requested,
            self.authors_actioned,
            self.reports_resolved,
        ]

    def all_topics(self) -> list[str]:
        """Every topic the system uses, dead-letter topics included."""
        main = self.main_topics()
        return main + [topic + self.dlq_suffix for topic in main]


class KafkaSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    partitions: int = Field(default=3, ge=1)
    version: str = Field(default="4.3.1", description="Apache Kafka version resolved from Maven")
    heap: str = Field(default="512m", description="JVM -Xmx for the local broker")
    topics: TopicSettings = TopicSettings()
    security_protocol: Literal["SASL_PLAINTEXT", "SASL_SSL", "PLAINTEXT"] = Field(
        default="SASL_PLAINTEXT",
        description=(
            "SASL_SSL in production; SASL_PLAINTEXT on the loopback stack; PLAINTEXT (no "
            "authentication) only in development"
        ),
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    username: str | None = Field(
        default=None,
        description=(
            "this service's principal (its Strimzi KafkaUser); unset in development: the local "
            "stack's credentials of the service's own principal"
        ),
    )
    password: SecretStr | None = None
    ssl_cafile: str | None = Field(
        default=None, description="CA certificate of the brokers' TLS listener (SASL_SSL)"
    )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


class DatabaseSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 55432
    user: str = "moderation"
    password: SecretStr = SecretStr(DEV_DB_PASSWORD)
    name: str = "moderation"
    dapr_state_name: str = Field(default="dapr_state", description="database of Dapr's state store")
    url_override: str | None = Field(
        default=None, description="full SQLAlchemy URL; `sqlite:///...` for the embedded demo"
    )
    pool_size: int = 10
    pool_overflow: int = 10
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer", description="libpq sslmode; production: verify-full with sslrootcert"
    )
    sslrootcert: str | None = Field(
        default=None, description="CA certificate file that signs the server's certificate"
    )

    def url_for(self, database: str) -> str:
        secret = self.password.get_secret_value()
        return f"postgresql+psycopg://{self.user}:{secret}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_override or self.url_for(self.name)

    def libpq_dsn(self, database: str) -> str:
        """Connection string in the libpq form that Dapr's PostgreSQL component expects."""
        secret = self.password.get_secret_value()
        return (
            f"host={self.host} port={self.port} user={self.user} password={secret} "
            f"dbname={database} sslmode=disable"
        )


class LLMSettings(BaseModel):
    base_url: str = Field(
        default="http://127.0.0.1:8011/v1",
        description="OpenAI-compatible endpoint: vLLM in production, the local adapter in tests",
    )
    api_key: SecretStr = SecretStr(DEV_LLM_API_KEY)
    model: str = "smollm2-135m-instruct"
    timeout_seconds: float = 60.0
    adapter_port: int = 8011
    server_port: int = Field(default=8012, description="llama.cpp server behind the adapter")
    context_tokens: int = 4096
    trace_upload: bool = Field(default=False, description="upload Agents SDK traces to OpenAI")


def _env_secret(name: str) -> SecretStr | None:
    value = os.environ.get(name)
    return SecretStr(value) if value else None


class DaprSettings(BaseModel):
    version: str = Field(default="1.18.2", description="runtime built from the Go module proxy")
    app_id: str = "review-service"
    host: str = Field(
        default="127.0.0.1",
        description="where the review service's daprd listens (its container name in compose)",
    )
    http_port: int = 3500
    grpc_port: int = 50001
    metrics_port: int = 9091
    placement_port: int = 50005
    placement_healthz_port: int = 8081
    placement_metrics_port: int = 9095
    scheduler_port: int = 50006
    scheduler_healthz_port: int = 8082
    scheduler_metrics_port: int = 9096
    scheduler_etcd_client_port: int = 2379
    scheduler_etcd_peer_port: int = 2380
    mtls: bool = Field(
        default=True,
        description="the local stack runs Dapr Sentry: every daprd, placement and scheduler get "
        "a SPIFFE identity and talk mTLS; access-control policies check the caller's app id",
    )
    trust_domain: str = Field(
        default="public",
        description="the apps' SPIFFE trust domain (access-control policies name it)",
    )
    sentry_port: int = 50007
    sentry_healthz_port: int = 8083
    sentry_metrics_port: int = 9099
    pubsub_name: str = "kafka-pubsub"
    statestore_name: str = "statestore"
    registry_store_name: str = Field(
        default="agentregistry", description="the agent registry (`moderation agents`)"
    )
    configstore_name: str = Field(
        default="configstore", description="the live configuration (`moderation/live_config.py`)"
    )
    secretstore_name: str = "localsecretstore"
    # Dapr's own variable names are the fallback, so a sidecar-injected or mounted token works.
    api_token: SecretStr | None = Field(
        default_factory=lambda: _env_secret("DAPR_API_TOKEN"),
        description="sent to daprd as `dapr-api-token` (daprd started with DAPR_API_TOKEN "
        "requires it); default: the DAPR_API_TOKEN variable; the local stack generates one",
    )
    app_token: SecretStr | None = Field(
        default_factory=lambda: _env_secret("APP_API_TOKEN"),
        description="what daprd sends the review service as `dapr-api-token` (daprd's "
        "APP_API_TOKEN); the service refuses Dapr calls without it; default: APP_API_TOKEN",
    )

    @property
    def grpc_endpoint(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"


class ThresholdSettings(BaseModel):
    """How calibrated probabilities become decisions (ARCHITECTURE.md, "Taxonomy and decisions").

    `remove` when a violating category's probability passes its remove threshold; `allow` when
    P(safe) passes `allow`; otherwise the post is uncertain. Categories in `always_review` go to
    a human once their probability passes `review_floor`, whatever else the model says.
    """

    allow: float = Field(default=0.80, ge=0.0, le=1.0)
    remove: dict[Category, float] = Field(default_factory=lambda: dict.fromkeys(VIOLATING, 0.85))
    always_review: list[Category] = Field(
        default_factory=lambda: [Category.SEXUAL_MINORS, Category.SELF_HARM]
    )
    review_floor: float = Field(default=0.30, ge=0.0, le=1.0)


class ErrorBudget(BaseModel):
    """What stage 1's thresholds may cost, chosen on validation (`classifier/thresholds.py`).

    `MODERATION_ERROR_BUDGET__*`. Defined here with the other sections (that module imports
    this one, so it cannot live there); `classifier.thresholds` re-exports it.
    """

    remove_precision: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="smallest share of each category's removals that must be right",
    )
    violating_allowed: float = Field(
        default=0.01, ge=0, le=1, description="largest share of violating posts allowed"
    )
    safe_removed: float = Field(
        default=0.005, ge=0, le=1, description="largest share of safe posts removed"
    )
    min_support: int = Field(
        default=30,
        ge=1,
        description="validation posts a category needs for its remove threshold to be chosen "
        "(else the configured one is kept); about 1 / (1 - remove_precision): with fewer, one "
        "wrong removal already breaks the budget",
    )
    remove_floor: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="no remove threshold is chosen below it (below 0.5 the model calls the "
        "category less likely than not); allow is never chosen below `thresholds.allow`",
    )
    apply: bool = Field(
        default=True,
        description="stage 1 decides with the thresholds training chose for the default budget "
        "(kept in the model artifact); false: with `thresholds` as configured (set them from "
        "`moderation eval --thresholds` for another budget)",
    )


class AgentSettings(BaseModel):
    """Stage 2, the classifier agent (ARCHITECTURE.md; README "The cascade").

    How the scores combine: for every category, ``combined = agent_weight * agent + (1 -
    agent_weight) * fast_model``; the combined scores go through `thresholds` exactly as stage 1's
    go through the top-level thresholds (always-review floor, remove, allow, else uncertain). The
    agent's own decision must agree with that outcome, otherwise the post goes to review; a post
    flagged as a prompt-injection attempt is never allowed by this stage.
    """

    enabled: bool = Field(
        default=True, description="off: uncertain posts go straight to human review"
    )
    runs_in: Literal["agent-service", "worker"] = Field(
        default="agent-service",
        description="agent-service: the worker hands uncertain posts to `agent.requested` and "
        "the agent service runs the agent as one durable Dapr workflow per post; worker: the "
        "worker runs it inside its batch (the embedded demo, no Dapr)",
    )
    agent_weight: float = Field(
        default=0.7, ge=0.0, le=1.0, description="weight of the agent's scores against stage 1's"
    )
    thresholds: ThresholdSettings = Field(
        default_factory=lambda: ThresholdSettings(
            allow=0.80, remove=dict.fromkeys(VIOLATING, 0.80)
        ),
        description="applied to the combined scores",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="agent runs in flight per worker (sized for vLLM's continuous batching)",
    )
    timeout_seconds: float = Field(
        default=60.0, gt=0, description="one agent run: every model call, retry and tool call"
    )
    batch_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        description="posts of a batch still waiting for the agent then go to review",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="model call attempts (retries on 429, 5xx, network errors)"
    )
    backoff_initial_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=8.0, ge=0)
    breaker_failures: int = Field(
        default=5, ge=1, description="consecutive failed runs that open the circuit breaker"
    )
    breaker_reset_seconds: float = Field(
        default=30.0, gt=0, description="how long an open breaker sends posts to review"
    )
    max_turns: int = Field(default=4, ge=1, description="model turns per run (tools included)")
    tool_choice: Literal["auto", "required", "none"] = "auto"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_output_tokens: int = Field(default=384, ge=16)
    author_history: int = Field(default=10, ge=1, description="verdicts the author tool returns")
    precedents: int = Field(default=3, ge=1, description="past human decisions the tool returns")
    precedent_pool: int = Field(
        default=1_000, ge=1, description="recent human decisions searched for precedents"
    )
    mcp_url: str | None = Field(
        default=None,
        description="the MCP server the agent's lookups go through (`moderation mcp-server`, "
        "e.g. http://127.0.0.1:8006/mcp), as any other agent platform's would; unset: the same "
        "lookups in process",
    )
    mcp_api_key: SecretStr | None = Field(
        default=None, description="the agent's API key for the MCP server (scope `moderate`)"
    )
    vision: bool = Field(
        default=False,
        description="the served model is a vision-language model: a post's images (read from "
        "`images.store`, downscaled) go to it as image inputs, and a verdict that saw them may "
        "allow; off (the local SmolLM2 is text-only): the agent reads text only and its verdicts "
        "on posts with images say `images-unseen` (README 'Images')",
    )
    vision_max_side: int = Field(
        default=768,
        ge=64,
        le=4096,
        description="longest side, in pixels, of an image sent to the vision model (JPEG)",
    )


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 1_000
    max_text_chars: int = 10_000
    publish_timeout_seconds: float = Field(
        default=5.0, description="how long a request waits for Kafka's ack before answering 503"
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="largest request body but a batch's (413 above)"
    )
    max_batch_body_bytes: int = Field(
        default=64 * 1_048_576,
        ge=1,
        description="largest body of POST /v1/posts:batch: fits 1,000 posts of 10,000 characters "
        "even when JSON escapes each character (6 bytes)",
    )
    rate_limit_per_minute: int = Field(
        default=60_000,
        ge=0,
        description="posts one API key may submit per minute, per API replica (a batch costs "
        "its posts); 0: no limit",
    )
    rate_limit_burst: int = Field(
        default=2_000, ge=1, description="posts a key may submit at once (at least max_batch)"
    )
    request_rate_limit_per_minute: int = Field(
        default=3_000,
        ge=0,
        description="other requests one API key may make per minute (trails, review API); "
        "0: no limit",
    )
    request_rate_limit_burst: int = Field(default=600, ge=1)
    auth_failure_limit_per_minute: int = Field(
        default=60,
        ge=0,
        description="failed key checks per client address per minute; past them, unknown keys "
        "from that address get 429 without a database lookup; 0: no limit",
    )
    auth_failure_burst: int = Field(default=30, ge=1)
    key_failure_limit_per_minute: int = Field(
        default=10,
        ge=0,
        description="failed checks of one key (its public prefix, `mod_<prefix>_...`) per minute, "
        "from any address; past them that key is refused without a lookup until it recovers, "
        "so one key's secret cannot be guessed by spreading over addresses; 0: no limit",
    )
    key_failure_burst: int = Field(default=10, ge=1)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description='addresses or CIDRs of the proxies in front of the API (e.g. ["10.0.0.0/8"]) '
        "whose X-Forwarded-For is believed: the client is then the right-most address not in "
        "this list; empty: nobody's header is believed, the socket peer is the client",
    )
    internal_host: str = Field(
        default="127.0.0.1",
        description="where readiness (with detail) and /metrics listen: probes and Prometheus "
        "only, never the ingress (0.0.0.0 in containers)",
    )
    internal_port: int = Field(default=8004, description="port of the internal listener")
    cors_origins: list[str] = Field(
        default_factory=list,
        description='browser origins allowed to call the API, e.g. ["https://mod.example"]; '
        "empty: no CORS headers at all",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        # uvicorn would take anything unparsable as a literal host name, silently: refuse it.
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted proxy {entry!r} is not an IP address or CIDR ('*' is refused: it "
                    "would let any client choose its own address)"
                ) from None
        return [entry.strip() for entry in value]


class ReadabilitySettings(BaseModel):
    """When stage 1 may not allow a post because it cannot read it (`classifier/readability.py`)."""

    supported_languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="ISO 639-1 codes the fast model was trained and evaluated on; a post "
        "reliably detected in another language is never allowed by stage 1",
    )
    min_words: int = Field(default=4, ge=1, description="words a text needs for the word rule")
    max_unfamiliar_share: float = Field(
        default=0.45,
        ge=0,
        le=1,
        description="above this share of words the model never saw, stage 1 does not allow",
    )
    length_factor: float = Field(
        default=3.0,
        gt=0,
        description="texts longer than this many times the training texts' 99.9th percentile "
        "length are not allowed by stage 1",
    )
    passage_check_chars: int = Field(
        default=400,
        ge=0,
        description="a text at least this long is allowed by stage 1 only when none of its "
        "sentences, read alone, is more likely violating than safe (0: off)",
    )
    max_passages: int = Field(
        default=64, ge=1, description="sentences of one text read alone (the first ones)"
    )


class WorkerSettings(BaseModel):
    classifier_group: str = "classifier"
    recorder_group: str = "recorder"
    classifier_health_port: int = 8001
    dapr_http_port: int = Field(
        default=3520, description="the worker's daprd (live configuration only: no app channel)"
    )
    dapr_grpc_port: int = 50021
    dapr_metrics_port: int = 9098
    recorder_health_port: int = 8002
    max_batch: int = Field(default=500, ge=1, description="posts scored per model call")
    batch_timeout_ms: int = Field(
        default=20, ge=1, description="how long a consumer waits to fill a batch (latency bound)"
    )
    linger_ms: int = Field(default=10, ge=0, description="producer batching delay")
    learned_injection_detector: bool = Field(
        default=True,
        description="back the regex injection screen with the learned detector "
        "(`classifier/injection/model.py`; trained on first use like the fast model)",
    )
    injection_detector_dir: Path | None = Field(
        default=None,
        description="the learned detector's artifact store (default: <models.artifact_dir>/"
        "injection); the service image bakes one in, so a worker never trains it at start",
    )
    stage1_budget_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "stage 1's time for one batch (it runs off the event loop); posts not screened in "
            "time are never allowed on the model's word"
        ),
    )
    recorder_max_batch: int = Field(
        default=5_000,
        ge=1,
        description="events per recorder batch (large batches amortize round trips under backlog)",
    )
    service_host: str = Field(
        default="127.0.0.1", description="where health/metrics listen (0.0.0.0 in containers)"
    )


class AgentServiceSettings(BaseModel):
    """The agent service: a Dapr app running the classifier agent as one workflow per post."""

    app_id: str = Field(default="agent-service", description="its Dapr app id (and Kafka group)")
    service_port: int = Field(default=8005, description="the agent service's app port (daprd)")
    workflow_retention_hours: float = Field(
        default=24.0,
        gt=0,
        description="Dapr purges an agent run's workflow state this long after it ended; until "
        "then a redelivered hand-off of the post finds the run and starts nothing",
    )
    dapr_host: str = Field(
        default="127.0.0.1",
        description="where the agent service's daprd listens: loopback for the service itself; "
        "the API reads the agent's workflow history there (the dashboard's Workflows page)",
    )
    dapr_http_port: int = 3510
    dapr_grpc_port: int = 50011
    dapr_metrics_port: int = 9097
    max_in_flight: int = Field(
        default=256,
        ge=1,
        description="agent workflows running in this replica before new posts go to review "
        "(back-pressure: saturated, never allowed)",
    )
    activity_concurrency: int = Field(
        default=64, ge=1, description="workflow activities (model and tool calls) run at once"
    )
    llm_route: Literal["dapr-invocation", "direct", "dapr-conversation"] = Field(
        default="dapr-invocation",
        description="how the agent's model calls travel: dapr-invocation (the OpenAI client "
        "through daprd's service invocation to the HTTPEndpoint `llm_http_endpoint`, under the "
        "sidecar's resiliency policy; follows the promoted LoRA adapter), direct (the OpenAI "
        "client straight to llm.base_url) or dapr-conversation (daprd's Conversation API, "
        "component `conversation_component`; one fixed model, see README 'How the agent "
        "reaches its model')",
    )
    llm_http_endpoint: str = Field(
        default="agent-llm-http",
        description="the Dapr HTTPEndpoint in front of the model server (dapr-invocation)",
    )
    conversation_component: str = Field(
        default="agent-llm", description="the Dapr conversation component (conversation.openai)"
    )

    @property
    def dapr_grpc_endpoint(self) -> str:
        return f"{self.dapr_host}:{self.dapr_grpc_port}"


class McpSettings(BaseModel):
    """The MCP server (`moderation mcp-server`): the lookups as tools for any agent platform."""

    port: int = Field(
        default=8006,
        description="streamable HTTP at /mcp, probes at /healthz (bound to worker.service_host)",
    )


class WebhookSettings(BaseModel):
    """Outbound webhooks (`moderation webhook-dispatcher`, `services/webhooks/`; README "Webhooks").

    Deliveries are retried with exponential backoff and full jitter (a random wait between 0
    and `min(backoff_cap_seconds, backoff_base_seconds * 2**(attempt-1))`) until
    `max_age_hours` after the event; then the delivery is marked dead.
    """

    allow_private_targets: bool = Field(
        default=False,
        description="allow endpoints on loopback, private, link-local or reserved addresses "
        "(refused by default: a webhook must not reach into the platform's own network)",
    )
    require_https: bool | None = Field(
        default=None,
        description="refuse http:// endpoint URLs; unset: required outside development",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, description="one delivery attempt")
    max_age_hours: float = Field(
        default=24.0, gt=0, description="retry a failing delivery this long after its event"
    )
    backoff_base_seconds: float = Field(default=5.0, ge=0, description="first retry's bound")
    backoff_cap_seconds: float = Field(default=3_600.0, ge=0, description="largest retry bound")
    breaker_failures: int = Field(
        default=5, ge=1, description="consecutive failed attempts that open an endpoint's breaker"
    )
    breaker_cooldown_seconds: float = Field(
        default=60.0, gt=0, description="how long an open breaker holds that endpoint's sends"
    )
    endpoint_concurrency: int = Field(
        default=2, ge=1, description="attempts in flight per endpoint (a slow one waits alone)"
    )
    endpoint_queue: int = Field(
        default=100, ge=1, description="claimed deliveries waiting per endpoint, at most"
    )
    poll_interval_seconds: float = Field(
        default=1.0, gt=0, description="how often the dispatcher looks for due deliveries"
    )
    claim_batch: int = Field(default=200, ge=1, description="due deliveries claimed per poll")
    rotation_overlap_hours: float = Field(
        default=24.0,
        ge=0,
        description="after a secret rotation the old secret signs too (a second signature) "
        "for this long, so receivers can switch without losing a delivery",
    )
    max_endpoints_per_tenant: int = Field(default=50, ge=1)
    unknown_post_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description="a verdict or decision whose post is not recorded yet is retried this long "
        "after the event (the recorder may lag), then dead-lettered",
    )
    consumer_group: str = Field(default="webhooks", description="the dispatcher's Kafka group")
    host: str = Field(
        default="127.0.0.1", description="where health/metrics listen (0.0.0.0 in containers)"
    )
    port: int = Field(default=8007, description="the dispatcher's /healthz, /readyz, /metrics")

    def https_required(self, environment: str) -> bool:
        """Whether endpoint URLs must be https (explicit setting, else outside development)."""
        if self.require_https is not None:
            return self.require_https
        return environment != "development"


# A moderator group's name (`review.groups`, `ApiKey.moderator_groups`): a slug, like a tenant.
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# A post's language as routing names it: a lower-case ISO 639 code, optionally with a region or
# script (the same rule as the queue's `?language=`, `db.schemas.LANGUAGE_PATTERN`).
LANGUAGE_CODE_PATTERN = r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$"
DEFAULT_GROUP = "general"


class ModeratorGroup(BaseModel):
    """A group of moderators and the reviews routed to it (README "Routing to moderator
    groups"): a review belongs to the first configured group whose every non-empty criterion
    matches it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=GROUP_PATTERN, description="the group's name, e.g. `ja`")
    categories: list[Category] = Field(
        default_factory=list, description="the review's category is one of these (empty: any)"
    )
    languages: list[str] = Field(
        default_factory=list,
        description="the post's language is one of these codes, e.g. `ja` (empty: any)",
    )

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, languages: list[str]) -> list[str]:
        for code in languages:
            if not re.fullmatch(LANGUAGE_CODE_PATTERN, code):
                raise ValueError(
                    f"invalid language {code!r}: a lower-case ISO 639 code such as `ja`, `pt-br`"
                )
        return languages

    @model_validator(mode="after")
    def _has_a_criterion(self) -> ModeratorGroup:
        if not self.categories and not self.languages:
            raise ValueError(f"group {self.name!r} needs categories or languages (or both)")
        return self


class ReviewSettings(BaseModel):
    """Human review: the review service (a Dapr app), its workflow and the review API."""

    service_port: int = Field(default=8003, description="the review service's app port (daprd)")
    workflow_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description="Dapr purges a review workflow's state this long after it ended (the "
        "decision and its audit trail live in the database)",
    )
    sla_seconds: float = Field(
        default=3_600.0, gt=0, description="undecided this long after creation: escalate"
    )
    urgent_sla_seconds: float = Field(
        default=900.0, gt=0, description="the SLA of urgent reviews (possible sexual_minors)"
    )
    claim_seconds: float = Field(
        default=300.0, gt=0, description="how long a moderator's claim on a review holds"
    )
    decision_event: str = Field(default="decision", description="the workflow's external event")
    groups: list[ModeratorGroup] = Field(
        default_factory=list,
        description="moderator groups, tried in order (JSON in `MODERATION_REVIEW__GROUPS`); "
        "empty: no routing, every review is in `default_group`",
    )
    default_group: str = Field(
        default=DEFAULT_GROUP,
        pattern=GROUP_PATTERN,
        description="the group of a review no configured group matches",
    )
    double_review_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="the share of reviews two moderators judge independently (reviewer "
        "agreement, Cohen's kappa on the metrics page); chosen by the review id's hash",
    )

    @model_validator(mode="after")
    def _distinct_groups(self) -> ReviewSettings:
        names = [group.name for group in self.groups]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"moderator group(s) {repeated} configured more than once")
        if self.default_group in names:
            raise ValueError(
                f"moderator group {self.default_group!r} is the default group: name it otherwise"
            )
        return self


class DashboardSettings(BaseModel):
    """The moderators' Streamlit dashboard (`hitl_dashboard/`)."""

    api_url: str = Field(default="http://127.0.0.1:8000", description="the review API it calls")
    port: int = 8501
    session_minutes: float = Field(
        default=30.0, gt=0, description="idle time after which a moderator must sign in again"
    )


class ModelStoreSettings(BaseModel):
    artifact_dir: Path = Field(
        default=PROJECT_ROOT / ".models",
        description="artifact store of trained models (ignored by git)",
    )
    policy_version: str = "v1"
    reload_seconds: float = Field(
        default=30.0,
        gt=0,
        description="how often workers poll the registry for a newly promoted champion",
    )


class LoraSettings(BaseModel):
    """Fine-tuning the agent's model with LoRA (`jobs/lora.py`; the `[train]` extra)."""

    enabled: bool = Field(
        default=False,
        description="train, evaluate and register an adapter each night (needs a GPU to be quick)",
    )
    base_model: str | None = Field(
        default=None,
        description="Hugging Face model id or directory; None: the local SmolLM2 GGUF",
    )
    admin_url: str | None = Field(
        default=None,
        description="vLLM server for /v1/load_lora_adapter; None: llm.base_url without /v1",
    )
    adapter_dir: Path = Field(
        default=PROJECT_ROOT / ".models" / "lora",
        description="where adapters are written; vLLM must see the same path",
    )
    rank: int = 8
    alpha: int = 16
    learning_rate: float = 5e-4
    max_steps: int = 200
    batch_size: int = 2
    max_examples: int = 2_000
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1)


class NightlySettings(BaseModel):
    """The nightly feedback loop (`moderation nightly`, `jobs/`)."""

    output_dir: Path = Field(
        default=PROJECT_ROOT / ".nightly",
        description="reports and Parquet training snapshots (ignored by git)",
    )
    schedule: str = Field(
        default="0 0 3 * * *",
        description="Dapr Jobs schedule of the local stack (6-field cron, seconds first)",
    )
    min_new_decisions: int = Field(
        default=20, description="fewer new human decisions than this: report only, no retrain"
    )
    time_split_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="newest share of human decisions held out to evaluate (never trained on)",
    )
    tolerance: float = Field(
        default=0.02,
        ge=0,
        description="largest F1 drop on any category the challenger may have and still win",
    )
    min_gain: float = Field(
        default=0.005, ge=0, description="overall score the challenger must add to be promoted"
    )
    min_category_support: int = Field(
        default=10, description="categories with fewer examples in a split are not compared"
    )
    hardest_examples: int = 20
    lora: LoraSettings = LoraSettings()


class ZipkinSettings(BaseModel):
    """Zipkin: the local stack runs it (`moderation stack up`) and its services export to it."""

    export: bool = Field(
        default=True,
        description="send the services' spans to this Zipkin (when no OTLP endpoint is set)",
    )
    host: str = Field(default="127.0.0.1", description="where Zipkin listens (the stack binds it)")
    port: int = Field(default=9411, description="Zipkin's one port: span intake, API and UI")
    version: str = Field(default="3.6.1", description="zipkin-server resolved from Maven Central")
    heap: str = Field(default="256m", description="JVM -Xmx of the local Zipkin")
    max_spans: int = Field(
        default=50_000,
        ge=1000,
        description="spans Zipkin keeps in memory (the oldest traces are dropped first)",
    )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def spans_url(self) -> str:
        """Zipkin's v2 span intake (the services' exporter and daprd post here)."""
        return f"{self.url}/api/v2/spans"


class TracingSettings(BaseModel):
    """OpenTelemetry traces of the services (the Agents SDK's spans included)."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/gRPC collector, e.g. http://otel-collector:4317 (production, "
        "Kubernetes, compose); when set, spans go there instead of to Zipkin",
    )
    zipkin: ZipkinSettings = ZipkinSettings()
    file: Path | None = Field(
        default=None,
        description="also write finished spans as JSON lines to this file ({service} expands)",
    )
    sample_ratio: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="share of posts traced, decided at the API (1: every post, for debugging; "
        "tracing every post halves the pipeline's saturation throughput on 2 cores)",
    )


class StackSettings(BaseModel):
    """Where the local stack keeps its downloads, builds and runtime state."""

    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "moderation",
        description="heavy downloads and builds, keyed by version, shared by every checkout",
    )
    state_dir: Path = Field(
        default=PROJECT_ROOT / ".stack",
        description="data, logs and pid files of the running stack (ignored by git)",
    )
    startup_timeout_seconds: float = 180.0


# Where every process reads its settings from (`Settings`, and the dashboard's own subset).
class StrikeSettings(BaseModel):
    """Strikes and actions on authors (README "Authors, strikes and actions")."""

    enforcement_policy: str = Field(
        default="enforcement",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="the enforcement policy the recorder applies: `data/policy/<name>.yaml`",
    )


class ReportSettings(BaseModel):
    """User reports (`POST /v1/reports`; README "User reports")."""

    per_reporter_limit: int = Field(
        default=20, ge=1, description="reports one reporter may file per window (then 429)"
    )
    window_seconds: float = Field(
        default=3_600.0, gt=0, description="the sliding window of `per_reporter_limit`"
    )
    priority_threshold: float = Field(
        default=1.0,
        gt=0,
        description="weighted open reports on a post at which its open review's priority rises "
        "one step (a reporter with no history weighs 0.5)",
    )
    reopen_threshold: float = Field(
        default=1.5,
        gt=0,
        description="weighted open reports at which an allowed post goes back to review",
    )


class NuditySettings(BaseModel):
    """The images' nudity detector (`classifier/nudity.py`; docs/nudity-detector.md)."""

    enabled: bool = Field(
        default=True, description="run it on posts' images (off: hash lists alone)"
    )

    model_path: Path | None = Field(
        default=None,
        description="an ONNX NudeNet detector; unset: 320n.onnx inside the pinned nudenet wheel",
    )
    threads: int = Field(
        default=2, ge=1, le=64, description="onnxruntime intra-op threads (cores) per image"
    )
    remove_score: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="a sexual-part score at or above it removes the post on the detector's word "
        "alone: very high, the detector cannot tell art, medicine or a minor apart",
    )
    review_score: float = Field(
        default=0.4,
        gt=0,
        le=1,
        description="a sexual-part score at or above it (and under remove_score) sends the post "
        "to the agent or to review",
    )

    @model_validator(mode="after")
    def _review_below_remove(self) -> NuditySettings:
        if self.review_score > self.remove_score:
            raise ValueError(
                f"nudity.review_score ({self.review_score}) must not exceed nudity.remove_score "
                f"({self.remove_score})"
            )
        return self


ImageFormat = Literal["jpeg", "png", "webp", "gif"]


class ImageStoreSettings(BaseModel):
    """Where the sanitized images are kept, addressed by the SHA-256 of their bytes."""

    kind: Literal["local", "s3"] = Field(
        default="local", description="`local`: a directory; `s3`: an S3-compatible bucket"
    )
    local_dir: Path = Field(
        default=PROJECT_ROOT / ".stack" / "images",
        description="the local store's directory (beside the stack's database, ignored by git)",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="an S3-compatible server (MinIO, Ceph, R2, ...); None: AWS S3 itself",
    )
    bucket: str = Field(default="moderation-images", min_length=3, max_length=63)
    prefix: str = Field(
        default="images/", max_length=256, description="key prefix of every object in the bucket"
    )
    region: str = "us-east-1"
    access_key_id: SecretStr | None = Field(
        default=None, description="None: boto3's own credential chain (IAM role, env, profile)"
    )
    secret_access_key: SecretStr | None = None


class ImageSettings(BaseModel):
    """Images of posts (`moderation/images/`; README "Images")."""

    enabled: bool = Field(
        default=True,
        description="accept images on POST /v1/posts (which then takes bodies of up to "
        "max_per_post base64 images); off: a post with images is a 422 and the route keeps "
        "api.max_body_bytes",
    )
    max_per_post: int = Field(default=4, ge=1, le=16)
    max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="largest upload, per image, as sent"
    )
    max_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="width x height, read from the header before decoding (decompression bombs)",
    )
    formats: tuple[ImageFormat, ...] = Field(
        default=("jpeg", "png", "webp", "gif"),
        min_length=1,
        description="accepted formats, told by content (GIF and WebP: the first frame only)",
    )
    jpeg_quality: int = Field(default=90, ge=50, le=100, description="of re-encoded JPEG and WebP")
    decode_timeout_seconds: float = Field(
        default=5.0, gt=0, description="budget to decode, re-encode and hash one image"
    )
    decode_workers: int = Field(
        default=1, ge=1, le=32, description="decoder processes per service process"
    )
    decode_queue_seconds: float = Field(
        default=10.0, gt=0, description="longest wait for a free decoder (then 503, not a 4xx)"
    )
    pdq_threshold: int = Field(
        default=31,
        ge=0,
        le=128,
        description="largest PDQ Hamming distance that matches (31: ThreatExchange's "
        "PDQ_CONFIDENT_MATCH_THRESHOLD)",
    )
    pdq_min_quality: int = Field(
        default=50,
        ge=0,
        le=100,
        description="PDQ quality under which an image is matched by exact hashes only "
        "(PDQ's authors call hashes under 50 unreliable)",
    )
    hashlist_reload_seconds: float = Field(
        default=30.0,
        gt=0,
        description="how often workers reload the hash lists (files and the database's)",
    )
    hashlist_dir: Path = Field(
        default=PROJECT_ROOT / "data" / "hashlists",
        description='hash lists: `<category>/<name>.csv` (README "Images")',
    )
    store: ImageStoreSettings = ImageStoreSettings()


SETTINGS_SOURCE = SettingsConfigDict(
    env_prefix="MODERATION_",
    env_nested_delimiter="__",
    env_file=None,
    extra="ignore",
)


class Settings(BaseSettings):
    model_config = SETTINGS_SOURCE

    environment: Literal["development", "test", "production"] = "development"
    config_version: str = Field(
        default="static",
        description="the live configuration in effect (`moderation/live_config.py`): set by the "
        "services from the configuration store, recorded with every verdict; not a setting to "
        "set yourself",
    )
    kafka: KafkaSettings = KafkaSettings()
    db: DatabaseSettings = DatabaseSettings()
    llm: LLMSettings = LLMSettings()
    dapr: DaprSettings = DaprSettings()
    thresholds: ThresholdSettings = ThresholdSettings()
    error_budget: ErrorBudget = ErrorBudget()
    readability: ReadabilitySettings = ReadabilitySettings()
    agent: AgentSettings = AgentSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    review: ReviewSettings = ReviewSettings()
    agent_service: AgentServiceSettings = AgentServiceSettings()
    mcp: McpSettings = McpSettings()
    webhooks: WebhookSettings = WebhookSettings()
    dashboard: DashboardSettings = DashboardSettings()
    models: ModelStoreSettings = ModelStoreSettings()
    nightly: NightlySettings = NightlySettings()
    tracing: TracingSettings = TracingSettings()
    stack: StackSettings = StackSettings()
    strikes: StrikeSettings = StrikeSettings()
    reports: ReportSettings = ReportSettings()
    nudity: NuditySettings = NuditySettings()
    images: ImageSettings = ImageSettings()

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        # Every secret of the tree, however supplied (a whole database URL included); `test` is
        # a deployed environment as well: only `development` may run on the stack's credentials.
        if self.environment != "development":
            found = development_secrets(
                self,
                refused=frozenset({DEV_DB_PASSWORD, DEV_LLM_API_KEY}),
                urls={("db", "url_override"): self.db.url_override},
            )
            if found:
                raise ValueError(
                    f"{', '.join(found)} must be set outside development (a development or "
                    "placeholder value was given)"
                )
            kafka = self.kafka
            if kafka.security_protocol == "PLAINTEXT":
                raise ValueError(
                    "MODERATION_KAFKA__SECURITY_PROTOCOL=PLAINTEXT (no authentication) is for "
                    "development only"
                )
            if not kafka.username or kafka.password is None:
                raise ValueError(
                    "MODERATION_KAFKA__USERNAME and MODERATION_KAFKA__PASSWORD (this service's "
                    "Kafka principal) must be set outside development"
                )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings instance (read once from the environment)."""
    return Settings()
