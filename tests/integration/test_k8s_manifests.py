"""The Kubernetes manifests (`k8s/`): every overlay renders, and every object validates offline.

kustomize (built from the Go module proxy) renders the base and the `dev` and `prod` overlays.
Each object is validated strictly, as an API server with strict field validation would:
built-in kinds against Kubernetes 1.33's schemas (kubernetes-validate), custom resources against
their CRD's schema (Dapr, KEDA, CloudNativePG, Strimzi, pinned in
`moderation.devtools.stack.k8s_tools`).
Then the pieces the platform relies on are checked against the settings and services they
deploy. No cluster and no running stack: only the tools, installed into the cache on first use.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from moderation.db.roles import CONFIG_READER_ROLE, DAPR_STATE_ROLE, SERVICE_GRANTS, SERVICE_ROLES
from moderation.devtools.stack import k8s_tools
from moderation.devtools.stack.dapr import (
    API_APP_ID,
    access_control,
    sidecar_specs,
    workflow_spec,
)
from moderation.devtools.stack.k8s_tools import K8sTools, ManifestValidator
from moderation.devtools.stack.services import service_specs
from moderation.kafka_auth import Principal, acl_grants
from moderation.settings import PROJECT_ROOT, Settings

# The first test installs the tools when the cache is cold (about a minute with warm Go and
# Maven caches, a few minutes without).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

K8S_DIR = PROJECT_ROOT / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/prod", "overlays/prod-vision")
# prod with components/vision: a vision-language model behind the agent (README "Images").
VISION = "overlays/prod-vision"
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# The manifests are written for the settings' defaults; the environment must not change them.
DEFAULTS = Settings.model_construct()
SERVICES = {"api", "worker", "recorder", "review-service", "agent-service", "mcp-server",
            "dashboard", "webhook-dispatcher"}  # fmt: skip
# The Deployment of each service of `moderation/devtools/stack/services.py` whose name differs.
DEPLOYMENT_OF = {"review": "review-service", "agent": "agent-service", "mcp": "mcp-server",
                 "webhooks": "webhook-dispatcher"}  # fmt: skip
# The Dapr apps: each app id, its Deployment and the Kafka principal its daprd's pub/sub acts as.
DAPR_APPS: dict[str, tuple[str, Principal]] = {
    DEFAULTS.dapr.app_id: ("review-service", "review"),
    DEFAULTS.agent_service.app_id: ("agent-service", "agent"),
}
# The worker's daprd (the local stack's app id): the live configuration only, no app channel.
WORKER_APP_ID = sidecar_specs(DEFAULTS)["worker"].app_id
# The daprds that read the live configuration (the `configstore` component's scopes).
CONFIG_APPS = {*DAPR_APPS, WORKER_APP_ID}
# Where the Dapr injector puts every sidecar's API (not configurable by annotation).
INJECTED_DAPR_HTTP_PORT, INJECTED_DAPR_GRPC_PORT = 3500, 50001
# Env vars named like these hold credentials: they may only come from a Secret.
SECRET_NAME = re.compile(r"PASSWORD|API_KEY|TOKEN|SECRET|CONNECTION_STRING", re.IGNORECASE)
# Kafka's one client listener: TLS and SASL/SCRAM (kafka.yaml), its CA in Strimzi's Secret.
KAFKA_PORT = 9093
KAFKA_CA_SECRET = "moderation-kafka-cluster-ca-cert"
# Each service's Kafka principal (moderation/kafka_auth.py): the review service's daprd and its
# Python process share `review`, the agent service's share `agent`. The nightly job, the MCP
# server (neither uses Kafka: a principal without ACLs, for their settings to load) and KEDA have
# principals without a service.
KAFKA_PRINCIPALS = {"api": "api", "worker": "worker", "recorder": "recorder",
                    "review-service": "review", "agent-service": "agent",
                    "webhook-dispatcher": "dispatcher"}  # fmt: skip
KAFKA_CREDENTIAL = re.compile(r"^MODERATION_KAFKA__(USERNAME|PASSWORD)$")
# The workload of each key of `SERVICE_ROLES` (its PostgreSQL role), and the schema migration,
# the one pod that logs in as the owner (db-migrate-job.yaml).
DB_WORKLOADS = {"api": "api", "worker": "worker", "recorder": "recorder",
                "review": "review-service", "agent": "agent-service", "mcp": "mcp-server",
                "nightly": "moderation-nightly", "webhooks": "webhook-dispatcher"}  # fmt: skip
MIGRATE = "db-migrate"
# Role attributes no service role may have (CNPG `managed.roles`).
ROLE_POWERS = ("superuser", "createdb", "createrole", "replication", "bypassrls")

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Seconds per phase, printed at the end of the module and kept in test-artifacts/."""
    found: dict[str, float] = {}
    yield found
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "k8s-manifests.json").write_text(json.dumps(found, indent=2) + "\n")
    summary = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in found.items())
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even when output is captured
            reporter.write_line(f"\nk8s manifests: {summary}")


@pytest.fixture(scope="module")
def tools(timings: dict[str, float]) -> K8sTools:
    started = time.monotonic()
    installed = k8s_tools.install(Settings())
    timings["tools (installed, or found in the cache)"] = time.monotonic() - started
    return installed


@pytest.fixture(scope="module")
def validator(tools: K8sTools, timings: dict[str, float]) -> ManifestValidator:
    started = time.monotonic()
    loaded = ManifestValidator(tools.crd_dirs)
    timings["CRD schemas loaded"] = time.monotonic() - started
    return loaded


@pytest.fixture(scope="module")
def rendered(tools: K8sTools, timings: dict[str, float]) -> dict[str, list[Obj]]:
    started = time.monotonic()
    objects = {target: k8s_tools.render(tools.kustomize, K8S_DIR / target) for target in TARGETS}
    timings[f"kustomize build x{len(TARGETS)}"] = time.monotonic() - started
    return objects


# --- helpers ------------------------------------------------------------------------------------


def of_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_spec(obj: Obj) -> Obj:
    if obj["kind"] == "CronJob":
        spec: Obj = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = obj["spec"]["template"]["spec"]
    return spec


def workloads(objects: list[Obj]) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] in ("Deployment", "CronJob", "Job")]


def containers_of(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    containers: list[Obj] = spec.get("initContainers", []) + spec["containers"]
    return containers


def env_of(container: Obj) -> dict[str, Obj]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def shared_env(objects: list[Obj]) -> dict[str, str]:
    """The `moderation-env` ConfigMap (its name carries kustomize's content hash)."""
    maps = of_kind(objects, "ConfigMap")
    [name] = [name for name in maps if name.startswith("moderation-env-")]
    data: dict[str, str] = maps[name]["data"]
    return data


def is_setting(name: str) -> bool:
    """`MODERATION_<SECTION>__<FIELD>` names a field of the settings tree."""
    model: type[BaseModel] = Settings
    parts = name.removeprefix("MODERATION_").lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if depth < len(parts) - 1:
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return False
            model = nested
    return True


def state_stores(objects: list[Obj]) -> dict[str, Obj]:
    """The `state.postgresql` components: Dapr's state store (workflows) and the agent registry."""
    return {
        name: component
        for name, component in of_kind(objects, "Component").items()
        if component["spec"]["type"] == "state.postgresql"
    }


def connection_secret(component: Obj) -> str:
    """The Secret a component's `connectionString` comes from."""
    [connection] = [m for m in component["spec"]["metadata"] if m["name"] == "connectionString"]
    name: str = connection["secretKeyRef"]["name"]
    return name


def at(obj: Obj, path: tuple[str | int, ...]) -> Any:
    node: Any = obj
    for part in path:
        node = node[part]
    return node


# --- the tools ----------------------------------------------------------------------------------


def test_the_tools_are_the_pinned_versions(tools: K8sTools, validator: ManifestValidator) -> None:
    assert k8s_tools.kustomize_version(tools.kustomize) == k8s_tools.KUSTOMIZE_VERSION
    # The CRDs are those of the Dapr runtime the project runs.
    assert k8s_tools.DAPR_CRDS.version == f"v{DEFAULTS.dapr.version}"
    for kind in [
        ("dapr.io/v1alpha1", "Component"),
        ("dapr.io/v1alpha1", "Configuration"),
        ("dapr.io/v1alpha1", "Resiliency"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("postgresql.cnpg.io/v1", "Cluster"),
        ("postgresql.cnpg.io/v1", "Database"),
        ("kafka.strimzi.io/v1", "Kafka"),
        ("kafka.strimzi.io/v1", "KafkaNodePool"),
        ("kafka.strimzi.io/v1", "KafkaTopic"),
        ("kafka.strimzi.io/v1", "KafkaUser"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ]:
        assert kind in validator.custom_kinds()


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates(
    target: str,
    rendered: dict[str, list[Obj]],
    validator: ManifestValidator,
    timings: dict[str, float],
) -> None:
    started = time.monotonic()
    objects = rendered[target]
    errors = [error for obj in objects for error in validator.errors(obj)]
    timings[f"validate {target} ({len(objects)} objects)"] = time.monotonic() - started
    assert errors == []


# (kind, name, path to a mapping, the misspelt or mistyped field, its value)
BROKEN = [
    ("Deployment", "api", ("spec", "template", "spec", "containers", 0), "imagePullPolcy", "x"),
    ("Deployment", "vllm", ("spec", "template", "spec", "containers", 0, "readinessProbe"),
     "httpGett", {}),
    ("CronJob", "moderation-nightly", ("spec",), "concurencyPolicy", "Forbid"),
    ("NetworkPolicy", "default-deny-ingress", ("spec",), "podSelectr", {}),
    ("HorizontalPodAutoscaler", "api", ("spec",), "minReplicas", "two"),
    ("ScaledObject", "worker", ("spec",), "minReplicaCnt", 1),
    ("ScaledObject", "worker", ("spec", "triggers", 0, "metadata"), "lagThreshold", 5000),
    ("ScaledObject", "agent-service", ("spec",), "maxReplicaCont", 6),
    ("Kafka", "moderation-kafka", ("spec", "kafka", "listeners", 0), "tsl", False),
    ("KafkaTopic", "posts.submitted", ("spec",), "partitons", 6),
    ("KafkaTopic", "posts.submitted", ("metadata",), "lables", {}),
    ("KafkaUser", "review", ("spec", "authorization", "acls", 0, "resource"), "patern", "literal"),
    ("KafkaUser", "api", ("spec", "authentication"), "type", "scram-sha-256"),
    ("TriggerAuthentication", "keda-kafka", ("spec", "secretTargetRef", 0), "paramter", "x"),
    ("Cluster", "moderation-db", ("spec", "bootstrap", "initdb"), "databse", "moderation"),
    ("Cluster", "moderation-db", ("spec", "managed", "roles", 0), "passwordSecrt", {}),
    ("Job", "db-migrate", ("spec",), "backofLimit", 10),
    ("Component", "statestore", ("spec", "metadata", 0), "vaule", "x"),
    ("Component", "agentregistry", ("spec", "metadata", 1), "vaule", "registry_"),
    ("Component", "kafka-pubsub-agent", ("spec",), "scopes", "agent-service"),
    ("Component", "configstore", ("spec",), "ignoreErrors", "true"),
    ("Resiliency", "moderation-resiliency", ("spec", "policies", "retries", "stateRetry"),
     "maxRetires", 5),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "name", "path", "field", "value"), BROKEN)
def test_a_typo_fails_validation(
    kind: str,
    name: str,
    path: tuple[str | int, ...],
    field: str,
    value: object,
    rendered: dict[str, list[Obj]],
    validator: ManifestValidator,
) -> None:
    original = of_kind(rendered["base"], kind)[name]
    assert validator.errors(original) == []
    broken = copy.deepcopy(original)
    at(broken, path)[field] = value
    errors = validator.errors(broken)
    assert errors, f"{kind}/{name}: {field} was accepted"
    assert any(field in error or repr(value) in error for error in errors), errors


# --- what the platform needs --------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_the_services_run_as_the_local_stack_runs_them(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    """Command, port and probes of each service are those of
    `moderation/devtools/stack/services.py`."""
    deployments = of_kind(rendered[target], "Deployment")
    assert set(deployments) == SERVICES | {"vllm"}
    services = of_kind(rendered[target], "Service")
    for spec in service_specs(DEFAULTS).values():
        name = DEPLOYMENT_OF.get(spec.name, spec.name)
        [container] = pod_spec(deployments[name])["containers"]
        assert container["args"] == [spec.command]
        image = "moderation-dashboard" if name == "dashboard" else "moderation"
        assert container["image"].split(":")[0] == image
        assert [port["containerPort"] for port in container["ports"]] == spec.ports
        assert container["readinessProbe"]["httpGet"]["path"] == spec.ready_path
        probe_port = container["readinessProbe"]["httpGet"]["port"]
        named = {port.get("name"): port["containerPort"] for port in container["ports"]}
        assert named.get(probe_port, probe_port) == spec.probe_port
        liveness = "/_stcore/health" if name == "dashboard" else "/healthz"
        assert container["livenessProbe"]["httpGet"]["path"] == liveness
        assert services[name]["spec"]["ports"][0]["port"] == spec.port
        # The services listen on the pod network, not on loopback (the settings' default).
        environment = shared_env(rendered[target]) | {
            key: variable.get("value", "") for key, variable in env_of(container).items()
        }
        host = {
            "api": "MODERATION_API__HOST",
            "webhook-dispatcher": "MODERATION_WEBHOOKS__HOST",
        }.get(name, "MODERATION_WORKER__SERVICE_HOST")
        assert environment[host] == "0.0.0.0"
        if name == "api":
            # Readiness detail and metrics: the internal listener, never behind the Service.
            assert environment["MODERATION_API__INTERNAL_HOST"] == "0.0.0.0"
            assert [port["port"] for port in services[name]["spec"]["ports"]] == [spec.port]
            annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(DEFAULTS.api.internal_port)


@pytest.mark.parametrize("target", TARGETS)
def test_the_review_service_is_the_dapr_app(target: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[target]
    deployments = of_kind(objects, "Deployment")
    annotations = deployments["review-service"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == DEFAULTS.dapr.app_id
    assert annotations["dapr.io/app-port"] == str(DEFAULTS.review.service_port)
    assert annotations["dapr.io/config"] in of_kind(objects, "Configuration")
    assert annotations["dapr.io/enable-metrics"] == "true"
    assert int(annotations["dapr.io/metrics-port"]) > 0
    token_secret = annotations["dapr.io/api-token-secret"]
    assert token_secret == "moderation-dapr-api-token"
    # The api has no sidecar: it raises workflow events on the review service's daprd.
    api = deployments["api"]
    assert "dapr.io/enabled" not in api["spec"]["template"]["metadata"].get("annotations", {})
    api_env = env_of(pod_spec(api)["containers"][0])
    assert api_env["MODERATION_DAPR__HOST"]["value"] == f"{DEFAULTS.dapr.app_id}-dapr"
    assert api_env["DAPR_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == token_secret
    # The worker's sidecar serves it the live configuration only (the test below).
    for name in SERVICES - {"review-service", "agent-service", "api", "worker"}:
        template = deployments[name]["spec"]["template"]["metadata"]
        assert "dapr.io/enabled" not in template.get("annotations", {})


@pytest.mark.parametrize("target", TARGETS)
def test_the_agent_service_is_a_dapr_app(target: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[target]
    deployments = of_kind(objects, "Deployment")
    agent = DEFAULTS.agent_service
    template = deployments["agent-service"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == agent.app_id
    assert annotations["dapr.io/app-port"] == str(agent.service_port)
    assert annotations["dapr.io/config"] in of_kind(objects, "Configuration")
    assert annotations["dapr.io/enable-metrics"] == "true"
    assert int(annotations["dapr.io/metrics-port"]) > 0
    # Nobody outside the pod calls its daprd: the sidecar's API stays on loopback (the default).
    assert "dapr.io/sidecar-listen-addresses" not in annotations
    # Its own tokens, never the review service's daprd's (with which the pod that hands
    # submitted text to an LLM could raise a moderator's decision on a review workflow).
    review = deployments["review-service"]["spec"]["template"]["metadata"]["annotations"]
    for key in ("dapr.io/api-token-secret", "dapr.io/app-token-secret"):
        assert annotations[key] != review[key], key
    [container] = pod_spec(deployments["agent-service"])["containers"]
    variables = env_of(container)
    for variable, key in (("DAPR_API_TOKEN", "dapr.io/api-token-secret"),
                          ("APP_API_TOKEN", "dapr.io/app-token-secret")):  # fmt: skip
        reference = variables[variable]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": annotations[key], "key": "token"}, variable
    secrets = {
        variable["valueFrom"]["secretKeyRef"]["name"]
        for variable in variables.values()
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert not secrets & {review["dapr.io/api-token-secret"], review["dapr.io/app-token-secret"]}
    # It reads PostgreSQL as the worker's role and calls vLLM (the worker no longer does).
    assert variables["MODERATION_DB__USER"]["value"] == SERVICE_ROLES["agent"]
    assert shared_env(objects)["MODERATION_AGENT__RUNS_IN"] == "agent-service"
    assert variables["MODERATION_LLM__API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "moderation-llm"
    )
    # It does not mount the model store: it reads no model artifact.
    claims = {
        volume.get("persistentVolumeClaim", {}).get("claimName")
        for volume in pod_spec(deployments["agent-service"])["volumes"]
    }
    assert "moderation-models" not in claims


def model_store_mount(objects: list[Obj], workload: Obj) -> Obj:
    """The mount of the model store (`moderation-models`) in a workload's one container."""
    claims = {
        volume["name"]
        for volume in pod_spec(workload)["volumes"]
        if volume.get("persistentVolumeClaim", {}).get("claimName") == "moderation-models"
    }
    assert "moderation-models" in of_kind(objects, "PersistentVolumeClaim")
    container = pod_spec(workload)["containers"][0]
    [mount] = [m for m in container.get("volumeMounts", []) if m["name"] in claims]
    found: Obj = mount
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_the_mcp_server_reads_postgres_as_the_api_and_the_models_as_the_worker(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    """Another face of the API (the same keys, the same read model) that scores with the fast
    model the registry names: no Dapr sidecar, no Kafka, no LLM, no /metrics."""
    objects = rendered[target]
    deployments = of_kind(objects, "Deployment")
    mcp = deployments["mcp-server"]
    annotations = mcp["spec"]["template"]["metadata"].get("annotations", {})
    assert not [key for key in annotations if key.startswith(("dapr.io/", "prometheus.io/"))]
    spec = pod_spec(mcp)
    assert "initContainers" not in spec  # it trains and writes nothing
    [container] = spec["containers"]
    variables = env_of(container)
    # The api's role, from the api's Secret (moderation/db/roles.py SERVICE_ROLES["mcp"]).
    assert SERVICE_ROLES["mcp"] == SERVICE_ROLES["api"]
    [api] = pod_spec(deployments["api"])["containers"]
    for name in ("MODERATION_DB__USER", "MODERATION_DB__PASSWORD"):
        assert variables[name] == env_of(api)[name], name
    # No Dapr token, and no Kafka CA: it never connects to Kafka (its principal has no ACL).
    assert not {"DAPR_API_TOKEN", "APP_API_TOKEN"} & set(variables)
    mounted = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert KAFKA_CA_SECRET not in mounted
    # The model store where the worker reads it, and read-only like the worker's.
    artifacts = shared_env(objects)["MODERATION_MODELS__ARTIFACT_DIR"]
    mount = model_store_mount(objects, mcp)
    worker = model_store_mount(objects, deployments["worker"])
    assert mount["mountPath"] == worker["mountPath"] == artifacts
    assert mount["readOnly"] is worker["readOnly"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_the_worker_has_a_dapr_sidecar_for_the_live_configuration_only(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    deployments = of_kind(objects, "Deployment")
    annotations = deployments["worker"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == WORKER_APP_ID
    # No app channel: daprd never calls the worker (no deliveries, no app token).
    assert "dapr.io/app-port" not in annotations
    assert "dapr.io/app-token-secret" not in annotations
    assert annotations["dapr.io/config"] in of_kind(objects, "Configuration")
    assert annotations["dapr.io/enable-metrics"] == "true"
    assert int(annotations["dapr.io/metrics-port"]) > 0
    # Only the worker calls it: the API stays on loopback (the default).
    assert "dapr.io/sidecar-listen-addresses" not in annotations
    # Its own API token, never the review or agent service's daprd's.
    token = annotations["dapr.io/api-token-secret"]
    others = set()
    for deployment, _ in DAPR_APPS.values():
        other = deployments[deployment]["spec"]["template"]["metadata"]["annotations"]
        others |= {other["dapr.io/api-token-secret"], other["dapr.io/app-token-secret"]}
    assert token not in others
    init, container = containers_of(deployments["worker"])
    variables = env_of(container)
    assert variables["DAPR_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": token,
        "key": "token",
    }
    assert "APP_API_TOKEN" not in variables
    for each in (init, container):
        secrets = {
            variable["valueFrom"]["secretKeyRef"]["name"]
            for variable in env_of(each).values()
            if "secretKeyRef" in variable.get("valueFrom", {})
        }
        assert not secrets & others, each["name"]
    assert "DAPR_API_TOKEN" not in env_of(init)  # the bootstrap calls no sidecar
    # The worker dials its daprd where the injector puts it (the settings' default is the local
    # stack's port for the worker's daprd).
    assert variables["MODERATION_WORKER__DAPR_GRPC_PORT"]["value"] == str(INJECTED_DAPR_GRPC_PORT)
    assert variables["MODERATION_WORKER__DAPR_HTTP_PORT"]["value"] == str(INJECTED_DAPR_HTTP_PORT)
    assert DEFAULTS.worker.dapr_grpc_port != INJECTED_DAPR_GRPC_PORT
    # It loads the configuration store and nothing else: no pub/sub (Kafka is FastStream's), no
    # state store (no actors).
    loaded = {
        name
        for name, component in of_kind(objects, "Component").items()
        if WORKER_APP_ID in component.get("scopes", [])
    }
    assert loaded == {DEFAULTS.dapr.configstore_name}


@pytest.mark.parametrize("target", TARGETS)
def test_each_daprd_admits_only_the_callers_of_the_local_stack(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    """Identity between sidecars (issue 14): each Dapr app's Deployment names a Configuration of
    its own whose access-control policy denies by default and allows exactly the app ids the
    local stack allows (`sidecar_specs` `allowed_callers`: the worker's for the agent service,
    the api's for the review service, nobody for the worker), in the trust domain of the
    settings and the namespace the manifests deploy to; tracing and metrics stay the shared
    `moderation-config`'s."""
    objects = rendered[target]
    deployments = of_kind(objects, "Deployment")
    configurations = of_kind(objects, "Configuration")
    shared = configurations["moderation-config"]["spec"]
    trust_domain = DEFAULTS.dapr.trust_domain
    named = set()
    for app, spec in sidecar_specs(DEFAULTS).items():
        deployment = deployments[DEPLOYMENT_OF.get(app, app)]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["dapr.io/app-id"] == spec.app_id
        name = annotations["dapr.io/config"]
        named.add(name)
        configuration = configurations[name]
        namespace = deployment["metadata"]["namespace"]
        assert configuration["metadata"]["namespace"] == namespace
        policy = configuration["spec"]["accessControl"]
        # The local stack's policy (moderation/devtools/stack/dapr.py), in this namespace.
        local: Obj = access_control(spec, trust_domain)
        expected = {**local, "policies": [{**caller, "namespace": namespace}
                                          for caller in local["policies"]]}  # fmt: skip
        assert {"policies": [], **policy} == expected, app
        assert policy["defaultAction"] == "deny" and policy["trustDomain"] == "public", app
        callers = [caller["appId"] for caller in policy.get("policies", [])]
        assert callers == list(spec.allowed_callers), app
        assert all(caller["defaultAction"] == "allow" for caller in policy.get("policies", []))
        assert configuration["spec"]["tracing"] == shared["tracing"], app
        assert configuration["spec"]["metric"] == shared["metric"], app
        # Finished workflows are purged after the local stack's retention.
        if spec.workflow_retention_hours is None:
            assert "workflow" not in configuration["spec"], app
        else:
            expected_workflow: Obj = workflow_spec(spec.workflow_retention_hours)
            assert configuration["spec"]["workflow"] == expected_workflow, app
    assert len(named) == len(sidecar_specs(DEFAULTS))  # one Configuration per daprd
    assert sidecar_specs(DEFAULTS)["agent"].allowed_callers == (WORKER_APP_ID,)
    assert sidecar_specs(DEFAULTS)["review"].allowed_callers == (API_APP_ID,)
    assert sidecar_specs(DEFAULTS)["worker"].allowed_callers == ()
    # No other Dapr app, and no daprd on a Configuration without a deny-by-default policy.
    for deployment in deployments.values():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("dapr.io/enabled") == "true":
            name = annotations["dapr.io/config"]
            assert name in named, deployment["metadata"]["name"]
    # mTLS: Dapr's control plane (Helm, dapr-system) owns `daprsystem`, whose `spec.mtls` is the
    # only one the injector and Sentry read; it is on by default (`global.mtls.enabled`), and
    # no Configuration of these manifests is `daprsystem` or turns mTLS off.
    assert "daprsystem" not in configurations
    for name, configuration in configurations.items():
        assert configuration["spec"].get("mtls", {}).get("enabled", True) is True, name
    readme = (K8S_DIR / "README.md").read_text()
    assert "--set global.mtls.enabled=true" in readme
    assert f"--version {DEFAULTS.dapr.version}" in readme


@pytest.mark.parametrize("target", TARGETS)
def test_dapr_resources_mirror_the_local_components(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    components = of_kind(objects, "Component")
    pubsub = components[DEFAULTS.dapr.pubsub_name]["spec"]
    assert (pubsub["type"], pubsub["version"]) == ("pubsub.kafka", "v1")
    brokers = {item["name"]: item.get("value") for item in pubsub["metadata"]}["brokers"]
    assert brokers == f"{next(iter(of_kind(objects, 'Kafka')))}-kafka-bootstrap:{KAFKA_PORT}"
    state = components[DEFAULTS.dapr.statestore_name]["spec"]
    assert (state["type"], state["version"]) == ("state.postgresql", "v2")
    metadata = {item["name"]: item for item in state["metadata"]}
    assert metadata["actorStateStore"]["value"] == "true"
    assert set(metadata["connectionString"]["secretKeyRef"]) == {"name", "key"}
    state_metadata = metadata
    # Every local component has its Kubernetes counterpart (of the same name; the pub/sub has a
    # second one, `kafka-pubsub-agent`), but the local secret store: here a `secretKeyRef` names
    # a Kubernetes Secret.
    local_components = [
        yaml.safe_load(path.read_text())
        for path in sorted((PROJECT_ROOT / "components").glob("*.yaml"))
    ]
    local_names = {c["metadata"]["name"] for c in local_components if c["kind"] == "Component"}
    assert DEFAULTS.dapr.secretstore_name in local_names
    assert local_names - {DEFAULTS.dapr.secretstore_name} <= set(components)
    assert DEFAULTS.dapr.secretstore_name not in components
    # The agent registry: the local component's store, tables and shared keys, in dapr_state
    # with the state store's login; the agent service's daprd writes it, the review service's
    # (the one `moderation agents` talks to) reads it. Not an actor state store.
    registry_name = DEFAULTS.dapr.registry_store_name
    local_registry = yaml.safe_load(
        (PROJECT_ROOT / "components" / "agentregistry-postgresql.yaml").read_text()
    )
    assert local_registry["metadata"]["name"] == registry_name
    registry = components[registry_name]
    assert set(registry["scopes"]) == set(DAPR_APPS)
    for key in ("type", "version"):
        assert registry["spec"][key] == local_registry["spec"][key] == state[key], key
    metadata = {item["name"]: item for item in registry["spec"]["metadata"]}
    local_metadata = {item["name"]: item for item in local_registry["spec"]["metadata"]}
    assert set(metadata) == set(local_metadata)
    for key in ("tablePrefix", "keyPrefix"):
        assert metadata[key]["value"] == local_metadata[key]["value"], key
    assert metadata["keyPrefix"]["value"] == "none"  # one registry, whichever daprd reads it
    assert "actorStateStore" not in metadata
    assert metadata["connectionString"] == state_metadata["connectionString"]
    local_state = yaml.safe_load(
        (PROJECT_ROOT / "components" / "statestore-postgresql.yaml").read_text()
    )
    [local_state_connection] = [
        m for m in local_state["spec"]["metadata"] if m["name"] == "connectionString"
    ]
    assert local_metadata["connectionString"] == local_state_connection
    # The shared one; each daprd's own copies it (test_each_daprd_admits_only_the_callers...).
    configuration = of_kind(objects, "Configuration")["moderation-config"]
    assert configuration["spec"]["tracing"]["otel"]["endpointAddress"] == "otel-collector:4317"
    assert configuration["spec"]["metric"]["enabled"] is True
    [resiliency] = of_kind(objects, "Resiliency").values()
    # Every component but the configuration store: daprd runs the store's Subscribe under the
    # outbound policy and the store listens on that call's context, which a timeout would end
    # (components/resiliency.yaml has no target for it either).
    configstore_name = DEFAULTS.dapr.configstore_name
    targets = set(resiliency["spec"]["targets"]["components"])
    assert targets == set(components) - {configstore_name}
    local_resiliency = yaml.safe_load((PROJECT_ROOT / "components" / "resiliency.yaml").read_text())
    assert configstore_name not in local_resiliency["spec"]["targets"]["components"]
    assert set(local_resiliency["spec"]["targets"]["components"]) <= targets
    # Every component is scoped to the Dapr apps that load it; the state store and the
    # resiliency policies serve both apps, the configuration store them and the worker's daprd.
    for name, component in components.items():
        assert set(component["scopes"]) <= CONFIG_APPS, name
    assert set(components[DEFAULTS.dapr.statestore_name]["scopes"]) == set(DAPR_APPS)
    assert set(components[registry_name]["scopes"]) == set(DAPR_APPS)
    assert set(resiliency["scopes"]) == set(DAPR_APPS)
    # The live configuration: the local component's store, table and channel.
    local = yaml.safe_load(
        (PROJECT_ROOT / "components" / "configstore-postgresql.yaml").read_text()
    )
    assert local["metadata"]["name"] == configstore_name
    configstore = components[configstore_name]
    assert set(configstore["scopes"]) == CONFIG_APPS
    config = configstore["spec"]
    for key in ("type", "version", "ignoreErrors"):
        assert config[key] == local["spec"][key], key
    assert config["ignoreErrors"] is True  # an unreachable store never stops a daprd
    metadata = {item["name"]: item for item in config["metadata"]}
    local_metadata = {item["name"]: item for item in local["spec"]["metadata"]}
    assert set(metadata) == set(local_metadata)
    for key in ("table", "notifyChannel"):
        assert metadata[key]["value"] == local_metadata[key]["value"] == "moderation_config", key
    assert set(metadata["connectionString"]["secretKeyRef"]) == {"name", "key"}


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_is_strimzi_kraft_with_every_topic(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    [(cluster, kafka)] = of_kind(objects, "Kafka").items()
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    [pool] = of_kind(objects, "KafkaNodePool").values()
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    topics = of_kind(objects, "KafkaTopic")
    assert set(topics) == set(DEFAULTS.kafka.topics.all_topics())
    for topic in topics.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert topic["spec"]["replicas"] <= pool["spec"]["replicas"]
    # The services find the brokers at the bootstrap Service.
    env = shared_env(objects)
    assert env["MODERATION_KAFKA__HOST"] == f"{cluster}-kafka-bootstrap"
    assert env["MODERATION_KAFKA__PORT"] == str(KAFKA_PORT)
    [listener] = kafka["spec"]["kafka"]["listeners"]
    assert listener["port"] == KAFKA_PORT


@pytest.mark.parametrize("target", TARGETS)
def test_postgres_is_a_cnpg_cluster_with_both_databases(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    [(cluster, postgres)] = of_kind(objects, "Cluster").items()
    initdb = postgres["spec"]["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"]) == (DEFAULTS.db.name, DEFAULTS.db.user)
    [database] = of_kind(objects, "Database").values()
    assert database["spec"]["name"] == DEFAULTS.db.dapr_state_name
    assert database["spec"]["cluster"]["name"] == cluster
    # Dapr's state store owns its database (and the tables it creates there), not the owner.
    assert database["spec"]["owner"] == DAPR_STATE_ROLE != initdb["owner"]
    assert database["spec"].get("ensure", "present") == "present"
    env = shared_env(objects)
    assert env["MODERATION_DB__HOST"] == f"{cluster}-rw"
    # No shared database user: each pod names its own (the test below).
    assert "MODERATION_DB__USER" not in env


# --- issue 11, finding 3 ("every service uses one database role") ------------------------------


def managed_roles(objects: list[Obj]) -> dict[str, Obj]:
    [postgres] = of_kind(objects, "Cluster").values()
    return {role["name"]: role for role in postgres["spec"]["managed"]["roles"]}


@pytest.mark.parametrize("target", TARGETS)
def test_cnpg_manages_exactly_the_service_and_dapr_roles_with_login_only(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    [(cluster, postgres)] = of_kind(objects, "Cluster").items()
    roles = managed_roles(objects)
    # The services' roles, and Dapr's configuration store's (SELECT on the live configuration).
    assert set(SERVICE_GRANTS) == set(SERVICE_ROLES.values()) | {CONFIG_READER_ROLE}
    # Those roles and Dapr's state store's (it owns dapr_state and nothing else).
    assert set(roles) == set(SERVICE_GRANTS) | {DAPR_STATE_ROLE}
    assert CONFIG_READER_ROLE in roles
    assert postgres["spec"]["bootstrap"]["initdb"]["owner"] not in roles
    secrets = set()
    for name, role in roles.items():
        assert role["login"] is True, name
        assert role.get("ensure", "present") == "present", name
        assert not any(role.get(power, False) for power in ROLE_POWERS), name
        # No membership (the owner's privileges would come with it) and a real password.
        assert role.get("inRoles", []) == [], name
        assert not role.get("disablePassword", False), name
        secrets.add(role["passwordSecret"]["name"])
    # One Secret per role, none of them the owner's (CNPG's `<cluster>-app`).
    assert len(secrets) == len(roles)
    assert f"{cluster}-app" not in secrets


@pytest.mark.parametrize("target", TARGETS)
def test_dapr_state_store_owns_dapr_state_and_logs_in_as_its_own_role(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    """Dapr's state store no longer connects as the owner (who may read every table)."""
    objects = rendered[target]
    [(cluster, postgres)] = of_kind(objects, "Cluster").items()
    role = managed_roles(objects)[DAPR_STATE_ROLE]
    assert role["login"] is True
    assert not any(role.get(power, False) for power in ROLE_POWERS)
    assert role.get("inRoles", []) == []
    [database] = of_kind(objects, "Database").values()
    assert (database["spec"]["name"], database["spec"]["owner"]) == (
        DEFAULTS.db.dapr_state_name,
        DAPR_STATE_ROLE,
    )
    # The role's Secret is CNPG's input only: no pod reads it (the DSN Secret is built from it).
    secret = role["passwordSecret"]["name"]
    for workload in workloads(objects):
        for container in containers_of(workload):
            for variable in env_of(container).values():
                reference = variable.get("valueFrom", {}).get("secretKeyRef", {})
                assert reference.get("name") != secret, workload["metadata"]["name"]
    # Both of Dapr's PostgreSQL state stores (workflows, the agent registry) log in with one DSN.
    stores = state_stores(objects)
    assert set(stores) == {DEFAULTS.dapr.statestore_name, DEFAULTS.dapr.registry_store_name}
    [dsn_secret] = {connection_secret(store) for store in stores.values()}
    # k8s/README.md builds that DSN for the Dapr role from its Secret, not from the owner's.
    [row] = [
        line
        for line in (K8S_DIR / "README.md").read_text().splitlines()
        if line.startswith(f"| `{dsn_secret}` |")
    ]
    assert f"user={DAPR_STATE_ROLE} " in row and f"dbname={DEFAULTS.db.dapr_state_name} " in row
    assert f"secret {secret} " in row
    owner = postgres["spec"]["bootstrap"]["initdb"]["owner"]
    assert f"{cluster}-app" not in row and f"user={owner} " not in row


@pytest.mark.parametrize("target", TARGETS)
def test_the_config_store_reads_the_live_configuration_as_its_own_read_only_role(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    """Dapr's configuration store logs in as `moderation_config_reader`: SELECT on
    `moderation_config`, nothing else; never the owner, a service's role or Dapr's state role."""
    objects = rendered[target]
    [(cluster, postgres)] = of_kind(objects, "Cluster").items()
    role = managed_roles(objects)[CONFIG_READER_ROLE]
    assert role["login"] is True
    assert not any(role.get(power, False) for power in ROLE_POWERS)
    assert role.get("inRoles", []) == []
    # The grants the migration applies (db-migrate-job.yaml: apply_grants covers every role of
    # SERVICE_GRANTS, and CONNECT on `moderation`).
    assert SERVICE_GRANTS[CONFIG_READER_ROLE] == {"moderation_config": ("SELECT",)}
    assert SERVICE_GRANTS[SERVICE_ROLES["api"]]["moderation_config"] == (
        "SELECT", "INSERT", "UPDATE")  # fmt: skip
    # The role's Secret is CNPG's input only: no pod reads it, and no pod logs in as the role.
    secret = role["passwordSecret"]["name"]
    for workload in workloads(objects):
        for container in containers_of(workload):
            variables = env_of(container)
            for variable in variables.values():
                reference = variable.get("valueFrom", {}).get("secretKeyRef", {})
                assert reference.get("name") != secret, workload["metadata"]["name"]
            user = variables.get("MODERATION_DB__USER", {}).get("value")
            assert user != CONFIG_READER_ROLE, workload["metadata"]["name"]
    [configstore] = [
        c
        for c in of_kind(objects, "Component").values()
        if c["spec"]["type"] == "configuration.postgresql"
    ]
    [connection] = [m for m in configstore["spec"]["metadata"] if m["name"] == "connectionString"]
    dsn_secret = connection["secretKeyRef"]["name"]
    # Not the state stores' DSN (another role, another database).
    stores = state_stores(objects)
    assert set(stores) == {DEFAULTS.dapr.statestore_name, DEFAULTS.dapr.registry_store_name}
    for name, store in stores.items():
        assert dsn_secret != connection_secret(store), name
    # k8s/README.md builds that DSN for the reader role from its Secret, on `moderation`.
    [row] = [
        line
        for line in (K8S_DIR / "README.md").read_text().splitlines()
        if line.startswith(f"| `{dsn_secret}` |")
    ]
    assert f"user={CONFIG_READER_ROLE} " in row and f"dbname={DEFAULTS.db.name} " in row
    assert f"secret {secret} " in row
    owner = postgres["spec"]["bootstrap"]["initdb"]["owner"]
    assert f"{cluster}-app" not in row and f"user={owner} " not in row


@pytest.mark.parametrize("target", TARGETS)
def test_each_service_logs_in_to_postgres_as_its_own_role(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    [cluster] = of_kind(objects, "Cluster")
    roles = managed_roles(objects)
    by_name = {workload["metadata"]["name"]: workload for workload in workloads(objects)}
    for service, workload_name in DB_WORKLOADS.items():
        role = SERVICE_ROLES[service]
        for container in containers_of(by_name[workload_name]):  # the worker's init container too
            where = (workload_name, container["name"])
            variables = env_of(container)
            assert variables["MODERATION_DB__USER"]["value"] == role, where
            reference = variables["MODERATION_DB__PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": roles[role]["passwordSecret"]["name"], "key": "password"}
    # Only the migration holds the owner's password, and logs in as the owner.
    owner_secret = f"{cluster}-app"
    holders = set()
    for workload in workloads(objects):
        for container in containers_of(workload):
            variables = env_of(container)
            for variable in variables.values():
                reference = variable.get("valueFrom", {}).get("secretKeyRef", {})
                if reference.get("name") == owner_secret:
                    holders.add(workload["metadata"]["name"])
            for source in container.get("envFrom", []):
                assert source.get("secretRef", {}).get("name") != owner_secret
            if "MODERATION_DB__PASSWORD" in variables and workload["metadata"]["name"] != MIGRATE:
                assert workload["metadata"]["name"] in DB_WORKLOADS.values(), workload["metadata"]
        for volume in pod_spec(workload).get("volumes", []):
            assert volume.get("secret", {}).get("secretName") != owner_secret
    assert holders == {MIGRATE}
    # Nothing else reads a database password: the dashboard and vLLM get none.
    deployments = of_kind(objects, "Deployment")
    for name in ("dashboard", "vllm"):
        for container in containers_of(deployments[name]):
            assert not {"MODERATION_DB__USER", "MODERATION_DB__PASSWORD"} & set(env_of(container))


@pytest.mark.parametrize("target", TARGETS)
def test_the_migration_creates_the_schema_and_grants_as_the_owner(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    [(cluster, postgres)] = of_kind(objects, "Cluster").items()
    job = of_kind(objects, "Job")[MIGRATE]
    [container] = pod_spec(job)["containers"]
    assert container["image"].split(":")[0] == "moderation"
    script = container["command"][-1]
    assert script.index("create_tables(engine)") < script.index("apply_grants(engine)")
    variables = env_of(container)
    owner = postgres["spec"]["bootstrap"]["initdb"]["owner"]
    assert variables["MODERATION_DB__USER"]["value"] == owner
    password = variables["MODERATION_DB__PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": f"{cluster}-app", "key": "password"}
    # Nothing but the owner's password: no Kafka, model or Dapr credential.
    secrets = {
        variable["valueFrom"]["secretKeyRef"]["name"]
        for variable in variables.values()
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert secrets == {f"{cluster}-app"}
    assert not any(KAFKA_CREDENTIAL.match(name) for name in variables)
    assert job["spec"]["backoffLimit"] > 0  # retried while the database or roles are not there


def test_the_migration_script_reads_only_the_db_settings_with_tls(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job's script, run as the prod overlay configures it, with the database stubbed out."""
    import moderation.db.engine as engine_module
    import moderation.db.roles as roles_module

    prod = rendered["overlays/prod"]
    job = of_kind(prod, "Job")[MIGRATE]
    [container] = pod_spec(job)["containers"]
    for name in [name for name in os.environ if name.startswith("MODERATION_")]:
        monkeypatch.delenv(name)
    environment = shared_env(prod) | {
        name: variable.get("value", "a-password-from-the-secret")
        for name, variable in env_of(container).items()
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    calls: list[tuple[str, object]] = []
    make_engine = engine_module.make_engine

    def spy_make_engine(settings: Settings, **kwargs: Any) -> Any:
        calls.append(("make_engine", settings))
        return make_engine(settings, **kwargs)

    monkeypatch.setattr(engine_module, "make_engine", spy_make_engine)
    monkeypatch.setattr(engine_module, "create_tables", lambda e: calls.append(("tables", e)))
    monkeypatch.setattr(roles_module, "apply_grants", lambda e: calls.append(("grants", e)))
    # As `python -c` runs it: without this module's `from __future__ import annotations`.
    script = compile(container["command"][-1], "<db-migrate>", "exec", dont_inherit=True)
    exec(script, {"__name__": "__main__"})
    assert [call for call, _ in calls] == ["make_engine", "tables", "grants"]
    settings = calls[0][1]
    assert isinstance(settings, Settings)
    assert settings.db.user == "moderation"
    assert settings.db.password.get_secret_value() == "a-password-from-the-secret"
    assert settings.db.host == "moderation-db-rw"
    assert settings.db.sslmode == "verify-full"
    assert settings.db.sslrootcert == environment["MODERATION_DB__SSLROOTCERT"]
    assert calls[1][1] is calls[2][1]  # one engine, the owner's


@pytest.mark.parametrize("target", TARGETS)
def test_vllm_serves_the_agent_with_lora_on_a_gpu(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    vllm = of_kind(objects, "Deployment")["vllm"]
    spec = pod_spec(vllm)
    [container] = spec["containers"]
    assert container["image"].startswith("vllm/vllm-openai:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    args = container["args"]
    env = shared_env(objects)
    for flag in [
        "--enable-lora",
        "--enable-auto-tool-choice",
        f"--served-model-name={env['MODERATION_LLM__MODEL']}",
        "--port=8000",
    ]:
        assert flag in args
    assert {arg.split("=")[0] for arg in args} >= {
        "--max-loras", "--max-lora-rank", "--tool-call-parser",
        "--structured-outputs-config.backend",
    }  # fmt: skip
    # The nightly job's adapters must fit: their rank at most the served maximum.
    [rank] = [arg.split("=")[1] for arg in args if arg.startswith("--max-lora-rank=")]
    assert int(rank) >= DEFAULTS.nightly.lora.rank
    assert env["MODERATION_LLM__BASE_URL"] == "http://vllm:8000/v1"
    variables = env_of(container)
    assert variables["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    # Adapters on the model volume that the nightly job writes.
    adapters = variables["VLLM_LORA_RESOLVER_CACHE_DIR"]["value"]
    [mount] = [m for m in container["volumeMounts"] if adapters.startswith(m["mountPath"])]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim in of_kind(objects, "PersistentVolumeClaim")
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # The nightly job fine-tunes the base model that vLLM serves, into the same volume.
    [nightly] = of_kind(objects, "CronJob").values()
    [job] = pod_spec(nightly)["containers"]
    job_env = env_of(job)
    assert job_env["MODERATION_NIGHTLY__LORA__ADAPTER_DIR"]["value"] == adapters
    served = variables["BASE_MODEL"]["valueFrom"]["configMapKeyRef"]
    trained = job_env["MODERATION_NIGHTLY__LORA__BASE_MODEL"]["valueFrom"]["configMapKeyRef"]
    assert served == trained
    assert claim in [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(nightly)["volumes"]
        if "persistentVolumeClaim" in v
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_scaling_and_disruption_budgets(target: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[target]
    scaled_objects = of_kind(objects, "ScaledObject")
    # The worker on its group's lag on posts.submitted; the agent service on its daprd's group
    # (its app id) on agent.requested. Each at least one pod, at most one per partition.
    lags = {
        "worker": (DEFAULTS.worker.classifier_group, DEFAULTS.kafka.topics.posts_submitted),
        "agent-service": (DEFAULTS.agent_service.app_id, DEFAULTS.kafka.topics.agent_requested),
    }
    assert set(scaled_objects) == set(lags)
    for name, (group, topic) in lags.items():
        scaled = scaled_objects[name]
        assert scaled["spec"]["scaleTargetRef"]["name"] == name
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == group
        assert trigger["metadata"]["topic"] == topic
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        partitions = of_kind(objects, "KafkaTopic")[topic]
        assert scaled["spec"]["maxReplicaCount"] <= partitions["spec"]["partitions"]
        assert scaled["spec"].get("minReplicaCount", 0) >= 1
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "api"}  # fmt: skip
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    deployments = of_kind(objects, "Deployment")
    # The autoscalers own these counts; a `replicas` would fight them on every apply.
    assert "replicas" not in deployments["api"]["spec"]
    assert "replicas" not in deployments["worker"]["spec"]
    assert "replicas" not in deployments["agent-service"]["spec"]
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert set(budgets) >= {"api", "worker", "recorder", "review-service", "agent-service",
                            "mcp-server"}  # fmt: skip
    for name, budget in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [cronjob] = of_kind(objects, "CronJob").values()
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_deny_by_default(target: str, rendered: dict[str, list[Obj]]) -> None:
    policies = of_kind(rendered[target], "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def ports(name: str) -> set[int]:
        rules = policies[name]["spec"]["ingress"]
        return {port["port"] for rule in rules for port in rule["ports"]}

    assert ports("allow-api") == {8000}
    # The MCP server, on its port from wherever the API is reachable (the API's keys are its
    # clients' bearer tokens).
    assert ports("allow-mcp-server") == {DEFAULTS.mcp.port}
    assert [rule.get("from") for rule in policies["allow-mcp-server"]["spec"]["ingress"]] == [
        rule.get("from") for rule in policies["allow-api"]["spec"]["ingress"]
    ]
    assert ports("allow-dashboard") == {8501}
    assert ports("allow-postgres") >= {5432}
    assert ports("allow-kafka") == {KAFKA_PORT}
    assert ports("allow-vllm") == {8000}
    assert ports("allow-dapr-sidecar") == {50001, 50002}
    # The agent service's daprd: actor calls from its own replicas only, no API from outside.
    assert ports("allow-agent-dapr-sidecar") == {50002}
    [agent_peers] = policies["allow-agent-dapr-sidecar"]["spec"]["ingress"]
    assert agent_peers["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "agent-service"}}}
    ]
    assert {8000, 8001, 8002, 8003, 8005, 9090} <= ports("allow-metrics-scraping")
    # The MCP server serves no /metrics: nothing to scrape.
    assert DEFAULTS.mcp.port not in ports("allow-metrics-scraping")
    [scrapers] = policies["allow-metrics-scraping"]["spec"]["ingress"][0]["from"]
    assert scrapers["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    # vLLM: the agent service and the nightly job; the worker only hands posts off.
    [vllm_clients] = policies["allow-vllm"]["spec"]["ingress"][0]["from"]
    assert set(vllm_clients["podSelector"]["matchExpressions"][0]["values"]) == {
        "agent-service", "moderation-nightly",
    }  # fmt: skip


# --- issue 11: least privilege --------------------------------------------------------------------

WORKLOAD_NAMES = {"api", "worker", "recorder", "review-service", "agent-service", "mcp-server",
                  "webhook-dispatcher", "dashboard", "vllm", "moderation-nightly",
                  MIGRATE}  # fmt: skip


def selects(selector: Obj, name: str) -> bool:
    """Whether a podSelector picks the pods labelled `app.kubernetes.io/name: <name>`."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "moderation"}
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def egress_of(policies: dict[str, Obj], name: str) -> list[tuple[Obj, set[int]]]:
    """(peer, ports) of every egress rule that applies to the pods called `name`."""
    return [
        (peer, {port["port"] for port in rule["ports"]})
        for policy in policies.values()
        if "Egress" in policy["spec"]["policyTypes"]
        and selects(policy["spec"]["podSelector"], name)
        for rule in policy["spec"].get("egress", [])
        for peer in rule["to"]
    ]


def ingress_peers(policies: dict[str, Obj], target_labels: dict[str, str]) -> list[Obj]:
    return [
        peer
        for policy in policies.values()
        if "Ingress" in policy["spec"]["policyTypes"]
        and policy["spec"]["podSelector"].get("matchLabels") == target_labels
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [{}])
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_egress_is_denied_then_allowed_per_service(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    policies = of_kind(rendered[target], "NetworkPolicy")
    names = {
        pod_spec(w)["containers"] and w["metadata"]["name"] for w in workloads(rendered[target])
    }
    assert names == WORKLOAD_NAMES
    for name in WORKLOAD_NAMES:  # every workload is under the egress default deny
        assert selects(policies["default-deny-egress"]["spec"]["podSelector"], name), name
    [dns] = policies["default-deny-egress"]["spec"]["egress"]
    assert {port["port"] for port in dns["ports"]} == {53}

    def peers(name: str) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for peer, ports in egress_of(policies, name):
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
            key = (
                labels.get("app.kubernetes.io/name")
                or labels.get("strimzi.io/cluster")
                or labels.get("cnpg.io/cluster")
                or labels.get("k8s-app")
                or namespace.get("kubernetes.io/metadata.name")
                or ("internet" if "ipBlock" in peer else "namespace")
            )
            found.setdefault(key, set()).update(ports)
        return found

    # The internet-facing dashboard reaches the review API and DNS, nothing else.
    assert peers("dashboard") == {"kube-dns": {53}, "api": {8000}}
    # The API and the worker write and read posts' images in the object store (S3, 443).
    assert peers("api") == {"kube-dns": {53}, "moderation-kafka": {KAFKA_PORT},
                            "moderation-db": {5432}, "review-service": {50001},
                            "namespace": {4317}, "internet": {443}}  # fmt: skip
    [store] = policies["egress-object-store"]["spec"]["egress"]
    assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(store["to"][0]["ipBlock"]["except"])
    # The worker hands uncertain posts to the agent service: no path to vLLM. Its daprd (the
    # live configuration) reaches Dapr's control plane and PostgreSQL, and no peer's daprd.
    assert shared_env(rendered[target])["MODERATION_AGENT__RUNS_IN"] == "agent-service"
    assert peers("worker") == {"kube-dns": {53}, "moderation-kafka": {KAFKA_PORT},
                               "moderation-db": {5432},
                               "dapr-system": {50001, 50005, 50006, 6500},
                               "namespace": {4317}, "internet": {443}}  # fmt: skip
    assert peers("recorder") == {"kube-dns": {53}, "moderation-kafka": {KAFKA_PORT},
                                 "moderation-db": {5432}, "namespace": {4317}}  # fmt: skip
    assert peers("review-service") == {"kube-dns": {53}, "moderation-kafka": {KAFKA_PORT},
                                       "moderation-db": {5432}, "review-service": {50002},
                                       "dapr-system": {50001, 50005, 50006, 6500},
                                       "namespace": {4317}}  # fmt: skip
    # The agent service: its daprd's Kafka, control plane and peers, PostgreSQL, vLLM; never the
    # review service's daprd. With a vision model, also the object store the images are in.
    agent_peers = {"kube-dns": {53}, "moderation-kafka": {KAFKA_PORT}, "moderation-db": {5432},
                   "vllm": {8000}, "agent-service": {50002},
                   "dapr-system": {50001, 50005, 50006, 6500},
                   "namespace": {4317}}  # fmt: skip
    if target == VISION:
        agent_peers["internet"] = {443}
        [images] = policies["egress-agent-object-store"]["spec"]["egress"]
        assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(images["to"][0]["ipBlock"]["except"])
    assert peers("agent-service") == agent_peers
    # The webhook dispatcher: its Kafka and PostgreSQL, traces, and the platforms' endpoints on
    # public addresses only (never the cluster or the metadata service).
    assert peers("webhook-dispatcher") == {"kube-dns": {53}, "moderation-kafka": {KAFKA_PORT},
                                           "moderation-db": {5432}, "internet": {443, 80},
                                           "namespace": {4317}}  # fmt: skip
    [deliveries] = policies["egress-webhooks"]["spec"]["egress"]
    assert {"10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8"} <= set(
        deliveries["to"][0]["ipBlock"]["except"]
    )
    # The MCP server: PostgreSQL only (no Kafka, no Dapr, no vLLM, no traces).
    assert peers("mcp-server") == {"kube-dns": {53}, "moderation-db": {5432}}
    assert peers("vllm") == {"kube-dns": {53}, "internet": {443}}
    assert peers("moderation-nightly") == {"kube-dns": {53}, "moderation-db": {5432},
                                           "vllm": {8000}, "internet": {443},
                                           "namespace": {4317}}  # fmt: skip
    # The owner's credential reaches PostgreSQL and nothing else.
    assert peers(MIGRATE) == {"kube-dns": {53}, "moderation-db": {5432}}
    # Downloads go to public addresses only: never the cluster or the metadata service.
    [downloads] = policies["egress-model-downloads"]["spec"]["egress"]
    assert "169.254.0.0/16" in downloads["to"][0]["ipBlock"]["except"]
    assert "10.0.0.0/8" in downloads["to"][0]["ipBlock"]["except"]


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_and_postgres_admit_only_their_clients(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    policies = of_kind(objects, "NetworkPolicy")
    [kafka] = of_kind(objects, "Kafka").values()
    [listener] = kafka["spec"]["kafka"]["listeners"]
    for peers in (
        ingress_peers(policies, {"strimzi.io/cluster": "moderation-kafka"}),
        listener["networkPolicyPeers"],  # Strimzi's own policy: admitted peers add up
    ):
        pods = [peer["podSelector"] for peer in peers if "podSelector" in peer]
        admitted = {name for name in WORKLOAD_NAMES if any(selects(p, name) for p in pods)}
        assert admitted == {"api", "worker", "recorder", "review-service", "agent-service",
                            "webhook-dispatcher"}  # fmt: skip
    postgres = ingress_peers(policies, {"cnpg.io/cluster": "moderation-db"})
    pods = [peer["podSelector"] for peer in postgres if "podSelector" in peer]
    admitted = {name for name in WORKLOAD_NAMES if any(selects(p, name) for p in pods)}
    assert admitted == {"api", "worker", "recorder", "review-service", "agent-service",
                        "webhook-dispatcher", "mcp-server", "moderation-nightly",
                        MIGRATE}  # fmt: skip
    # The dashboard only through the ingress controller.
    [peer] = ingress_peers(policies, {"app.kubernetes.io/name": "dashboard"})
    assert peer == {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}}  # fmt: skip


# --- issue 11, finding 2 ("forged events"): who may say what on Kafka ----------------------------


def granted_acls(users: dict[str, Obj]) -> set[tuple[str, str, str, str]]:
    """(principal, resource type, resource name, operation) of every ALLOW rule of the users."""
    found: set[tuple[str, str, str, str]] = set()
    for name, user in users.items():
        authorization = user["spec"].get("authorization")
        if authorization is None:
            continue
        assert authorization["type"] == "simple", name
        for acl in authorization["acls"]:
            assert acl.get("type", "allow") == "allow", (name, acl)
            assert acl.get("host", "*") == "*", (name, acl)
            resource = acl["resource"]
            assert resource.get("patternType", "literal") == "literal", (name, acl)
            for operation in acl["operations"]:
                found.add((name, resource["type"], resource["name"], operation))
    return found


def expected_acls() -> set[tuple[str, str, str, str]]:
    """What `moderation.kafka_auth.acl_grants` grants, as Strimzi ACL rules."""
    expected: set[tuple[str, str, str, str]] = set()
    for principal, grants in acl_grants(Settings()).items():
        for topic in grants.read:
            expected |= {(principal, "topic", topic, op) for op in ("Read", "Describe")}
        for topic in grants.write:
            expected |= {(principal, "topic", topic, op) for op in ("Write", "Describe")}
        for group in grants.groups:
            expected.add((principal, "group", group, "Read"))
    return expected


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_users_grant_exactly_what_kafka_auth_grants(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    [cluster] = of_kind(objects, "Kafka")
    users = of_kind(objects, "KafkaUser")
    services: set[str] = set(acl_grants(Settings()))
    # One user per service principal, plus KEDA's, the nightly job's and the MCP server's (no
    # service's rights).
    assert set(users) == services | {"keda", "nightly", "mcp"}
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster, name
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}, name
    service_users = {name: user for name, user in users.items() if name in services}
    assert granted_acls(service_users) == expected_acls()
    # KEDA only describes what it measures (the ScaledObjects' topics and groups); the nightly
    # job may do nothing at all.
    assert granted_acls({"keda": users["keda"]}) == {
        ("keda", "topic", DEFAULTS.kafka.topics.posts_submitted, "Describe"),
        ("keda", "group", DEFAULTS.worker.classifier_group, "Describe"),
        ("keda", "topic", DEFAULTS.kafka.topics.agent_requested, "Describe"),
        ("keda", "group", DEFAULTS.agent_service.app_id, "Describe"),
    }
    measured = {
        (kind, trigger["metadata"][key])
        for scaled in of_kind(objects, "ScaledObject").values()
        for trigger in scaled["spec"]["triggers"]
        for kind, key in (("topic", "topic"), ("group", "consumerGroup"))
    }
    assert {(kind, name) for _, kind, name, _ in granted_acls({"keda": users["keda"]})} == measured
    # The worker hands off to the agent service, which alone reads the hand-offs.
    readers = {
        principal
        for principal, kind, name, operation in granted_acls(service_users)
        if (kind, name, operation) == ("topic", DEFAULTS.kafka.topics.agent_requested, "Read")
    }
    assert readers == {"agent"}
    assert ("worker", "topic", DEFAULTS.kafka.topics.agent_requested, "Write") in granted_acls(
        service_users
    )
    assert granted_acls({"nightly": users["nightly"]}) == set()
    assert granted_acls({"mcp": users["mcp"]}) == set()
    # Only the review service may write a human decision (the forged-events finding).
    writers = {
        principal
        for principal, kind, name, operation in granted_acls(users)
        if (kind, name, operation) == ("topic", DEFAULTS.kafka.topics.review_decisions, "Write")
    }
    assert writers == {"review"}


def test_the_acl_check_catches_an_extra_grant(rendered: dict[str, list[Obj]]) -> None:
    users = copy.deepcopy(of_kind(rendered["base"], "KafkaUser"))
    assert granted_acls({n: u for n, u in users.items() if n in {"api", "worker", "recorder",
                         "review", "agent", "dispatcher"}}) == expected_acls()  # fmt: skip
    users["api"]["spec"]["authorization"]["acls"].append(
        {"resource": {"type": "topic", "name": "review.decisions"}, "operations": ["Write"]}
    )
    assert ("api", "topic", "review.decisions", "Write") in granted_acls(users)
    assert granted_acls({"api": users["api"]}) != {
        acl for acl in expected_acls() if acl[0] == "api"
    }


@pytest.mark.parametrize("target", TARGETS)
def test_every_kafka_listener_authenticates_over_tls(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    [kafka] = of_kind(rendered[target], "Kafka").values()
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert listeners
    for listener in listeners:
        assert listener["authentication"]["type"] == "scram-sha-512", listener["name"]
        assert listener["tls"] is True, listener["name"]
    # ACLs are enforced (no authorizer: every authenticated principal may do anything).
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert "superUsers" not in kafka["spec"]["kafka"]["authorization"]
    assert kafka["spec"]["kafka"]["config"].get("allow.everyone.if.no.acl.found") in (None, False)
    assert "userOperator" in kafka["spec"]["entityOperator"]


@pytest.mark.parametrize("target", TARGETS)
def test_each_service_connects_as_its_own_kafka_principal(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    env = shared_env(objects)
    assert env["MODERATION_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["MODERATION_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert not any(KAFKA_CREDENTIAL.match(name) for name in env)  # per pod, never shared
    ca_file = env["MODERATION_KAFKA__SSL_CAFILE"]
    deployments = of_kind(objects, "Deployment")
    for name, principal in KAFKA_PRINCIPALS.items():
        spec = pod_spec(deployments[name])
        for container in spec.get("initContainers", []) + spec["containers"]:
            variables = env_of(container)
            assert variables["MODERATION_KAFKA__USERNAME"]["value"] == principal, name
            reference = variables["MODERATION_KAFKA__PASSWORD"]["valueFrom"]["secretKeyRef"]
            # The Secret Strimzi's user operator writes for that KafkaUser.
            assert reference == {"name": principal, "key": "password"}, name
        # The service's container verifies the brokers against the cluster CA.
        [container] = spec["containers"]
        [mount] = [m for m in container["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == KAFKA_CA_SECRET
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The nightly job's principal has no ACL (test above); no pod holds another's password.
    [nightly] = of_kind(objects, "CronJob").values()
    [job] = pod_spec(nightly)["containers"]
    assert env_of(job)["MODERATION_KAFKA__USERNAME"]["value"] == "nightly"
    assert env_of(job)["MODERATION_KAFKA__PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "nightly"
    )
    # The MCP server's likewise (it uses no Kafka: its settings load only with credentials).
    [mcp] = pod_spec(deployments["mcp-server"])["containers"]
    assert env_of(mcp)["MODERATION_KAFKA__USERNAME"]["value"] == "mcp"
    assert env_of(mcp)["MODERATION_KAFKA__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mcp",
        "key": "password",
    }
    users = set(of_kind(objects, "KafkaUser"))
    for workload in workloads(objects):
        spec = pod_spec(workload)
        secrets = {
            variable["valueFrom"]["secretKeyRef"]["name"]
            for container in spec.get("initContainers", []) + spec["containers"]
            for variable in container.get("env", [])
            if "secretKeyRef" in variable.get("valueFrom", {})
        }
        assert len(secrets & users) <= 1, (workload["metadata"]["name"], secrets & users)


@pytest.mark.parametrize("target", TARGETS)
def test_the_dashboard_and_vllm_hold_no_kafka_credential(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    users = set(of_kind(objects, "KafkaUser")) | {KAFKA_CA_SECRET}
    deployments = of_kind(objects, "Deployment")
    for name in ("dashboard", "vllm"):
        spec = pod_spec(deployments[name])
        for container in spec.get("initContainers", []) + spec["containers"]:
            for variable in container.get("env", []):
                assert not KAFKA_CREDENTIAL.match(variable["name"]), (name, variable["name"])
                reference = variable.get("valueFrom", {}).get("secretKeyRef", {})
                assert reference.get("name") not in users, (name, variable["name"])
            for source in container.get("envFrom", []):
                assert source.get("secretRef", {}).get("name") not in users, name
        for volume in spec.get("volumes", []):
            assert volume.get("secret", {}).get("secretName") not in users, (name, volume)


@pytest.mark.parametrize("target", TARGETS)
def test_dapr_authenticates_to_kafka_as_review_over_tls(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    pubsub = of_kind(objects, "Component")[DEFAULTS.dapr.pubsub_name]["spec"]
    metadata = {item["name"]: item for item in pubsub["metadata"]}
    assert metadata["authType"]["value"] == "password"
    assert metadata["saslUsername"]["value"] == "review"
    assert metadata["saslPassword"]["secretKeyRef"] == {"name": "review", "key": "password"}
    assert metadata["saslMechanism"]["value"] == "SHA-512"
    assert metadata["disableTls"]["value"] == "false"
    assert metadata["caCert"]["secretKeyRef"] == {"name": KAFKA_CA_SECRET, "key": "ca.crt"}
    assert "skipVerify" not in metadata  # the brokers' certificate is verified
    # The review service's group is its app id: the one `acl_grants` gives `review`.
    assert metadata["consumerGroup"]["value"] == "{appID}"
    assert acl_grants(Settings())["review"].groups == (DEFAULTS.dapr.app_id,)
    # The local component authenticates the same way (components/pubsub-kafka.yaml).
    local = yaml.safe_load((PROJECT_ROOT / "components" / "pubsub-kafka.yaml").read_text())
    local_metadata = {item["name"]: item for item in local["spec"]["metadata"]}
    for key in ("authType", "saslMechanism"):
        assert local_metadata[key]["value"] == metadata[key]["value"], key


def pubsub_of(objects: list[Obj], app_id: str) -> tuple[str, Obj]:
    """The one Kafka pub/sub component the daprd of `app_id` loads (its `scopes`)."""
    [(name, component)] = [
        (name, component)
        for name, component in of_kind(objects, "Component").items()
        if component["spec"]["type"] == "pubsub.kafka" and app_id in component.get("scopes", [])
    ]
    return name, component


@pytest.mark.parametrize("target", TARGETS)
def test_each_dapr_app_authenticates_to_kafka_as_its_own_principal(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    """Each daprd loads one Kafka pub/sub component, scoped to its app alone, that logs in as
    its app's principal; the app publishes and subscribes through that component's name."""
    objects = rendered[target]
    deployments = of_kind(objects, "Deployment")
    grants = acl_grants(Settings())
    pubsubs = [
        c for c in of_kind(objects, "Component").values() if c["spec"]["type"] == "pubsub.kafka"
    ]
    assert len(pubsubs) == len(DAPR_APPS)
    # The worker's daprd has no pub/sub: the worker's Kafka is FastStream's, as its own principal.
    assert not [c for c in pubsubs if WORKER_APP_ID in c.get("scopes", [])]
    for app_id, (deployment, principal) in DAPR_APPS.items():
        name, component = pubsub_of(objects, app_id)
        assert component["scopes"] == [app_id]  # no other daprd logs in as this principal
        metadata = {item["name"]: item for item in component["spec"]["metadata"]}
        assert metadata["authType"]["value"] == "password"
        assert metadata["saslUsername"]["value"] == principal, app_id
        assert metadata["saslPassword"]["secretKeyRef"] == {"name": principal, "key": "password"}
        assert metadata["saslMechanism"]["value"] == "SHA-512"
        assert metadata["disableTls"]["value"] == "false"
        assert metadata["caCert"]["secretKeyRef"] == {"name": KAFKA_CA_SECRET, "key": "ca.crt"}
        assert "skipVerify" not in metadata
        assert metadata["brokers"]["value"] == (
            f"{next(iter(of_kind(objects, 'Kafka')))}-kafka-bootstrap:{KAFKA_PORT}"
        )
        # Its group is its app id: the one `acl_grants` gives its principal.
        assert metadata["consumerGroup"]["value"] == "{appID}"
        assert grants[principal].groups == (app_id,)
        # The app names that component (MODERATION_DAPR__PUBSUB_NAME, else the default).
        annotations = deployments[deployment]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["dapr.io/app-id"] == app_id
        [container] = pod_spec(deployments[deployment])["containers"]
        variables = {k: v.get("value") for k, v in env_of(container).items()}
        environment = shared_env(objects) | variables
        assert environment.get("MODERATION_DAPR__PUBSUB_NAME", DEFAULTS.dapr.pubsub_name) == name
        # The Python process presents the same principal as its daprd.
        assert variables["MODERATION_KAFKA__USERNAME"] == principal
    # The agent service's daprd authenticates as `agent`, never as `review`.
    name, component = pubsub_of(objects, DEFAULTS.agent_service.app_id)
    assert name != DEFAULTS.dapr.pubsub_name
    metadata = {item["name"]: item for item in component["spec"]["metadata"]}
    assert metadata["saslUsername"]["value"] == "agent"
    review_name, _ = pubsub_of(objects, DEFAULTS.dapr.app_id)
    assert review_name == DEFAULTS.dapr.pubsub_name


@pytest.mark.parametrize("target", TARGETS)
def test_keda_reads_the_lag_as_its_own_kafka_principal(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    scaled_objects = of_kind(objects, "ScaledObject")
    assert set(scaled_objects) == {"worker", "agent-service"}
    for scaled in scaled_objects.values():
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["metadata"]["bootstrapServers"].endswith(f":{KAFKA_PORT}")
        auth = of_kind(objects, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
        parameters = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        parameters |= {ref["parameter"]: ref for ref in auth["spec"]["configMapTargetRef"]}
        assert (parameters["password"]["name"], parameters["password"]["key"]) == (
            "keda", "password")  # fmt: skip
        assert (parameters["ca"]["name"], parameters["ca"]["key"]) == (KAFKA_CA_SECRET, "ca.crt")
        plain = of_kind(objects, "ConfigMap")[parameters["username"]["name"]]["data"]
        assert plain == {"sasl": "scram_sha512", "username": "keda", "tls": "enable"}


@pytest.mark.parametrize("target", TARGETS)
def test_no_pod_mounts_a_service_account_token(target: str, rendered: dict[str, list[Obj]]) -> None:
    for workload in workloads(rendered[target]):
        assert pod_spec(workload)["automountServiceAccountToken"] is False, workload["metadata"]


@pytest.mark.parametrize("target", TARGETS)
def test_vllm_runs_unprivileged_on_a_read_only_root(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    spec = pod_spec(of_kind(rendered[target], "Deployment")["vllm"])
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and "fsGroup" in pod
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    # Every directory it writes is a volume.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {k: v["value"] for k, v in env_of(container).items() if "value" in v}
    for variable in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR",
                     "TORCHINDUCTOR_CACHE_DIR"):  # fmt: skip
        [mount] = [m for path, m in mounts.items() if env[variable].startswith(path + "/")
                   or env[variable] == path]  # fmt: skip
        assert not mount.get("readOnly"), variable
    assert mounts["/models"]["readOnly"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_nightly_job_writes_the_model_store(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    for workload in workloads(rendered[target]):
        spec = pod_spec(workload)
        claims = {
            volume["name"]
            for volume in spec["volumes"]
            if volume.get("persistentVolumeClaim", {}).get("claimName") == "moderation-models"
        }
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in claims and workload["kind"] != "CronJob":
                    assert mount.get("readOnly") is True, workload["metadata"]["name"]
    # The worker's base-model bootstrap runs before it, from the image's dataset only.
    worker = pod_spec(of_kind(rendered[target], "Deployment")["worker"])
    [init] = worker["initContainers"]
    assert "ensure_fast_model" in init["command"][-1]


@pytest.mark.parametrize("target", TARGETS)
def test_the_dashboard_gets_no_secret(target: str, rendered: dict[str, list[Obj]]) -> None:
    [container] = pod_spec(of_kind(rendered[target], "Deployment")["dashboard"])["containers"]
    for variable in container.get("env", []):
        assert "secretKeyRef" not in variable.get("valueFrom", {}), variable["name"]
        assert not SECRET_NAME.search(variable["name"]), variable["name"]
    assert all("secretRef" not in source for source in container.get("envFrom", []))
    assert "volumes" not in container or all("secret" not in v for v in container["volumes"])


def test_production_requires_verified_tls_to_postgres(rendered: dict[str, list[Obj]]) -> None:
    prod = rendered["overlays/prod"]
    env = shared_env(prod)
    assert env["MODERATION_DB__SSLMODE"] == "verify-full"
    ca = env["MODERATION_DB__SSLROOTCERT"]
    for workload in workloads(prod):
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            uses_db = "MODERATION_DB__PASSWORD" in env_of(container)
            if uses_db:
                [mount] = [m for m in container["volumeMounts"] if ca.startswith(m["mountPath"])]
                [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
                assert volume["secret"]["secretName"] == "moderation-db-ca"
    assert "MODERATION_DB__SSLMODE" not in shared_env(rendered["overlays/dev"])


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_resources_and_probes(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    for workload in workloads(rendered[target]):
        for container in pod_spec(workload)["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert {"cpu", "memory"} <= set(resources["limits"]), where
            if workload["kind"] == "Deployment":  # a Job's container runs to completion
                assert "livenessProbe" in container, where
                assert "readinessProbe" in container, where


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_never_written(target: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[target]
    assert of_kind(objects, "Secret") == {}
    referenced: set[str] = set()
    for workload in workloads(objects):
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            for variable in container.get("env", []):
                source = variable.get("valueFrom", {})
                if "secretKeyRef" in source:
                    referenced.add(source["secretKeyRef"]["name"])
                elif SECRET_NAME.search(variable["name"]):
                    raise AssertionError(f"{variable['name']} is not read from a Secret")
    for name in shared_env(objects):
        assert not SECRET_NAME.search(name), f"{name} is in a ConfigMap"
    for component in of_kind(objects, "Component").values():
        for item in component["spec"]["metadata"]:
            if SECRET_NAME.search(re.sub(r"(?<!^)([A-Z])", r"_\1", item["name"])):
                assert "secretKeyRef" in item, item["name"]
                referenced.add(item["secretKeyRef"]["name"])
    for workload in workloads(objects):  # mounted Secrets (CA certificates)
        for volume in pod_spec(workload)["volumes"]:
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    for component in of_kind(objects, "Component").values():
        for item in component["spec"]["metadata"]:
            if "secretKeyRef" in item:
                referenced.add(item["secretKeyRef"]["name"])
    for auth in of_kind(objects, "TriggerAuthentication").values():
        referenced |= {ref["name"] for ref in auth["spec"].get("secretTargetRef", [])}
    deployments = of_kind(objects, "Deployment")
    for deployment, _ in DAPR_APPS.values():
        annotations = deployments[deployment]["spec"]["template"]["metadata"]["annotations"]
        referenced.add(annotations["dapr.io/api-token-secret"])
        referenced.add(annotations["dapr.io/app-token-secret"])
    worker = deployments["worker"]["spec"]["template"]["metadata"]["annotations"]
    referenced.add(worker["dapr.io/api-token-secret"])
    # And the Secrets CNPG sets the managed roles' passwords from.
    referenced |= {role["passwordSecret"]["name"] for role in managed_roles(objects).values()}
    # Every Secret that must exist is documented (k8s/README.md says how to create it).
    documented = (K8S_DIR / "README.md").read_text()
    for name in referenced:
        assert f"`{name}`" in documented, f"Secret {name} is not in k8s/README.md"


@pytest.mark.parametrize("target", TARGETS)
def test_every_moderation_variable_is_a_setting(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    names = set(shared_env(objects))
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            names |= {name for name in env_of(container) if name.startswith("MODERATION_")}
    unknown = sorted(name for name in names if not is_setting(name))
    assert unknown == []


def test_the_overlays_differ_as_documented(rendered: dict[str, list[Obj]]) -> None:
    dev, prod = rendered["overlays/dev"], rendered["overlays/prod"]
    # dev: no GPU, one replica of the data services, the agent stage off.
    dev_deployments = of_kind(dev, "Deployment")
    assert dev_deployments["vllm"]["spec"]["replicas"] == 0
    worker_env = env_of(pod_spec(dev_deployments["worker"])["containers"][0])
    assert worker_env["MODERATION_AGENT__ENABLED"]["value"] == "false"
    [nightly] = of_kind(dev, "CronJob").values()
    [job] = pod_spec(nightly)["containers"]
    assert job["args"] == ["nightly", "--no-lora"]
    assert "nvidia.com/gpu" not in job["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(nightly)
    assert [pool["spec"]["replicas"] for pool in of_kind(dev, "KafkaNodePool").values()] == [1]
    assert [db["spec"]["instances"] for db in of_kind(dev, "Cluster").values()] == [1]
    # prod: released images, budgets that keep a quorum serving.
    release = version("moderation")
    for workload in workloads(prod):
        for container in pod_spec(workload)["containers"]:
            if container["image"].startswith("moderation"):
                assert container["image"].endswith(f":{release}")
    budgets = of_kind(prod, "PodDisruptionBudget")
    for budget in budgets.values():
        assert "minAvailable" in budget["spec"]
        assert "maxUnavailable" not in budget["spec"]
    # A drain can still move a pod: more run than the budget must keep.
    [hpa] = of_kind(prod, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["minReplicas"] > budgets["api"]["spec"]["minAvailable"]
    for name, scaled in of_kind(prod, "ScaledObject").items():
        assert scaled["spec"]["minReplicaCount"] > budgets[name]["spec"]["minAvailable"], name
    prod_deployments = of_kind(prod, "Deployment")
    for name in ("recorder", "review-service", "mcp-server"):
        replicas = prod_deployments[name]["spec"]["replicas"]
        assert replicas > budgets[name]["spec"]["minAvailable"]


def test_the_vision_overlay_serves_a_vlm_and_switches_the_agent_to_images(
    rendered: dict[str, list[Obj]],
) -> None:
    """prod-vision = prod + components/vision: only the model, its limits and the switch differ."""
    prod, vision = rendered["overlays/prod"], rendered[VISION]
    env = shared_env(vision)
    assert env["MODERATION_AGENT__VISION"] == "true"
    assert int(env["MODERATION_AGENT__VISION_MAX_SIDE"]) == DEFAULTS.agent.vision_max_side
    assert "MODERATION_AGENT__VISION" not in shared_env(prod)  # off by default
    # The vision model must take an OpenAI-compatible route (the Conversation API is text-only).
    route = env.get("MODERATION_AGENT_SERVICE__LLM_ROUTE", DEFAULTS.agent_service.llm_route)
    assert route != "dapr-conversation"
    [models] = [o for o in of_kind(vision, "ConfigMap").values()
                if o["metadata"]["name"].startswith("moderation-llm-model")]  # fmt: skip
    assert "-VL-" in models["data"]["base-model"]
    [container] = pod_spec(of_kind(vision, "Deployment")["vllm"])["containers"]
    [limit] = [a for a in container["args"] if a.startswith("--limit-mm-per-prompt=")]
    images = json.loads(limit.split("=", 1)[1])
    assert images == {"image": DEFAULTS.images.max_per_post, "video": 0}
    [kwargs] = [a for a in container["args"] if a.startswith("--mm-processor-kwargs=")]
    side = DEFAULTS.agent.vision_max_side
    assert json.loads(kwargs.split("=", 1)[1])["max_pixels"] >= side * side
    [prod_vllm] = pod_spec(of_kind(prod, "Deployment")["vllm"])["containers"]
    assert set(prod_vllm["args"]) < set(container["args"])  # prod's flags all kept
    # The nightly LoRA trainer is text-only: no adapter for a vision base model.
    [nightly] = of_kind(vision, "CronJob").values()
    assert pod_spec(nightly)["containers"][0]["args"] == ["nightly", "--no-lora"]
    # Everything else is prod's.
    names = {(o["kind"], o["metadata"]["name"]) for o in vision}
    hashed = {"ConfigMap"}  # generated names carry a content hash
    extra = {n for n in names - {(o["kind"], o["metadata"]["name"]) for o in prod}
             if n[0] not in hashed}  # fmt: skip
    assert extra == {("NetworkPolicy", "egress-agent-object-store")}
