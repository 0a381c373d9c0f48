"""How a CRD's OpenAPI schema becomes a strict JSON schema
(moderation/devtools/stack/k8s_tools.py)."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no type information

from moderation.devtools.stack.k8s_tools import strict_schema

CRD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "replicas": {"type": "integer"},
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [
                    {"type": "integer"}, {"type": "string"}]},
                "image": {"type": "string", "nullable": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    },
}  # fmt: skip


def errors(instance: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(strict_schema(CRD_SCHEMA))
    return [error.message for error in validator.iter_errors(instance)]


def test_declared_fields_pass() -> None:
    spec = {
        "replicas": 2,
        "port": "http",
        "image": None,
        "labels": {"a": "b"},
        "config": {"anything": {"goes": 1}},
    }
    assert errors({"spec": spec}) == []
    assert errors({"spec": {"port": 8080}}) == []


def test_an_unknown_field_fails_where_kubernetes_would_refuse_it() -> None:
    assert errors({"spec": {"replica": 2}}) != []
    assert errors({"sepc": {}}) != []


def test_maps_and_preserved_objects_stay_open_but_typed() -> None:
    assert errors({"spec": {"labels": {"any-key": "value"}, "config": {"x": [1]}}}) == []
    assert errors({"spec": {"labels": {"a": 1}}}) != []
    assert errors({"spec": {"replicas": "2"}}) != []
