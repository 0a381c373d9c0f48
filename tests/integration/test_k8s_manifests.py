"""The Kubernetes manifests (`k8s/`): every overlay renders, and every object validates offline.

kustomize (built from the Go module proxy) renders the base and the `dev` and `prod` overlays.
Each object is validated strictly, as an API server with strict field validation would:
built-in kinds against Kubernetes 1.33's schemas (kubernetes-validate), custom resources against
their CRD's schema (Dapr, KEDA, CloudNativePG, Strimzi, pinned in `moderation.stack.k8s_tools`).
Then the pieces the platform relies on are checked against the settings and services they
deploy. No cluster and no running stack: only the tools, installed into the cache on first use.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
from pydantic import BaseModel

from moderation.settings import PROJECT_ROOT, Settings
from moderation.stack import k8s_tools
from moderation.stack.k8s_tools import K8sTools, ManifestValidator
from moderation.stack.services import service_specs

# The first test installs the tools when the cache is cold (about a minute with warm Go and
# Maven caches, a few minutes without).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

K8S_DIR = PROJECT_ROOT / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/prod")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# The manifests are written for the settings' defaults; the environment must not change them.
DEFAULTS = Settings.model_construct()
SERVICES = {"api", "worker", "recorder", "review-service", "dashboard"}
# Env vars named like these hold credentials: they may only come from a Secret.
SECRET_NAME = re.compile(r"PASSWORD|API_KEY|TOKEN|SECRET|CONNECTION_STRING", re.IGNORECASE)

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
    timings["kustomize build x3"] = time.monotonic() - started
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
    return [obj for obj in objects if obj["kind"] in ("Deployment", "CronJob")]


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
    ("Kafka", "moderation-kafka", ("spec", "kafka", "listeners", 0), "tsl", False),
    ("KafkaTopic", "posts.submitted", ("spec",), "partitons", 6),
    ("KafkaTopic", "posts.submitted", ("metadata",), "lables", {}),
    ("Cluster", "moderation-db", ("spec", "bootstrap", "initdb"), "databse", "moderation"),
    ("Component", "statestore", ("spec", "metadata", 0), "vaule", "x"),
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
    """Command, port and probes of each service are those of `moderation/stack/services.py`."""
    deployments = of_kind(rendered[target], "Deployment")
    assert set(deployments) == SERVICES | {"vllm"}
    services = of_kind(rendered[target], "Service")
    for spec in service_specs(DEFAULTS).values():
        name = "review-service" if spec.name == "review" else spec.name
        [container] = pod_spec(deployments[name])["containers"]
        assert container["args"] == [spec.command]
        image = "moderation-dashboard" if name == "dashboard" else "moderation"
        assert container["image"].split(":")[0] == image
        assert [port["containerPort"] for port in container["ports"]] == [spec.port]
        assert container["readinessProbe"]["httpGet"]["path"] == spec.ready_path
        liveness = "/_stcore/health" if name == "dashboard" else "/healthz"
        assert container["livenessProbe"]["httpGet"]["path"] == liveness
        assert services[name]["spec"]["ports"][0]["port"] == spec.port
        # The services listen on the pod network, not on loopback (the settings' default).
        environment = shared_env(rendered[target]) | {
            key: variable.get("value", "") for key, variable in env_of(container).items()
        }
        host = "MODERATION_API__HOST" if name == "api" else "MODERATION_WORKER__SERVICE_HOST"
        assert environment[host] == "0.0.0.0"


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
    for name in SERVICES - {"review-service", "api"}:
        template = deployments[name]["spec"]["template"]["metadata"]
        assert "dapr.io/enabled" not in template.get("annotations", {})


@pytest.mark.parametrize("target", TARGETS)
def test_dapr_resources_mirror_the_local_components(
    target: str, rendered: dict[str, list[Obj]]
) -> None:
    objects = rendered[target]
    components = of_kind(objects, "Component")
    pubsub = components[DEFAULTS.dapr.pubsub_name]["spec"]
    assert (pubsub["type"], pubsub["version"]) == ("pubsub.kafka", "v1")
    brokers = {item["name"]: item.get("value") for item in pubsub["metadata"]}["brokers"]
    assert brokers == f"{next(iter(of_kind(objects, 'Kafka')))}-kafka-bootstrap:9092"
    state = components[DEFAULTS.dapr.statestore_name]["spec"]
    assert (state["type"], state["version"]) == ("state.postgresql", "v2")
    metadata = {item["name"]: item for item in state["metadata"]}
    assert metadata["actorStateStore"]["value"] == "true"
    assert set(metadata["connectionString"]["secretKeyRef"]) == {"name", "key"}
    [configuration] = of_kind(objects, "Configuration").values()
    assert configuration["spec"]["tracing"]["otel"]["endpointAddress"] == "otel-collector:4317"
    assert configuration["spec"]["metric"]["enabled"] is True
    [resiliency] = of_kind(objects, "Resiliency").values()
    assert set(resiliency["spec"]["targets"]["components"]) == set(components)


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
    assert env["MODERATION_KAFKA__PORT"] == "9092"


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
    env = shared_env(objects)
    assert env["MODERATION_DB__HOST"] == f"{cluster}-rw"
    # The password comes from the Secret that CNPG writes for the owner (`<cluster>-app`).
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            password = env_of(container).get("MODERATION_DB__PASSWORD")
            if password is not None:
                assert password["valueFrom"]["secretKeyRef"]["name"] == f"{cluster}-app"


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
    [scaled] = of_kind(objects, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == DEFAULTS.worker.classifier_group
    assert trigger["metadata"]["topic"] == DEFAULTS.kafka.topics.posts_submitted
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    partitions = of_kind(objects, "KafkaTopic")[DEFAULTS.kafka.topics.posts_submitted]
    assert scaled["spec"]["maxReplicaCount"] <= partitions["spec"]["partitions"]
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "api"}  # fmt: skip
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    deployments = of_kind(objects, "Deployment")
    # The autoscalers own these counts; a `replicas` would fight them on every apply.
    assert "replicas" not in deployments["api"]["spec"]
    assert "replicas" not in deployments["worker"]["spec"]
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert set(budgets) >= {"api", "worker", "recorder", "review-service"}
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
    assert ports("allow-dashboard") == {8501}
    assert ports("allow-postgres") >= {5432}
    assert ports("allow-kafka") == {9092}
    assert ports("allow-vllm") == {8000}
    assert ports("allow-dapr-sidecar") == {50001, 50002}
    assert {8000, 8001, 8002, 8003, 9090} <= ports("allow-metrics-scraping")
    [scrapers] = policies["allow-metrics-scraping"]["spec"]["ingress"][0]["from"]
    assert scrapers["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    [vllm_clients] = policies["allow-vllm"]["spec"]["ingress"][0]["from"]
    assert set(vllm_clients["podSelector"]["matchExpressions"][0]["values"]) == {
        "worker", "moderation-nightly",
    }  # fmt: skip


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
        for container in pod_spec(workload)["containers"]:
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
    deployments = of_kind(objects, "Deployment")
    annotations = deployments["review-service"]["spec"]["template"]["metadata"]["annotations"]
    referenced.add(annotations["dapr.io/api-token-secret"])
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
    [scaled] = of_kind(prod, "ScaledObject").values()
    assert scaled["spec"]["minReplicaCount"] > budgets["worker"]["spec"]["minAvailable"]
    prod_deployments = of_kind(prod, "Deployment")
    for name in ("recorder", "review-service"):
        replicas = prod_deployments[name]["spec"]["replicas"]
        assert replicas > budgets[name]["spec"]["minAvailable"]
