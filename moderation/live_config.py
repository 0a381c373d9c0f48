"""Live configuration: the settings an operator may change in running services, and how.

The values live in the configuration store (table `moderation_config`, read by the services
through the Dapr Configuration API: `components/configstore-postgresql.yaml`); a service starts
from its settings and overlays what the store holds (`apply_live`), again on every change. Only
the keys of `LIVE_KEYS` may be set, each value is JSON (`null`: back to the service's own
setting) and is validated with the settings it
lands in, so a bad value is refused where it is written (the API) and, should one reach the
store anyway, logged and ignored by the services.

`thresholds.*` are stage 1's: setting any of them makes stage 1 decide with the configured
thresholds rather than those its model chose for the error budget (an operator's override).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from moderation.settings import Settings
from moderation.taxonomy import VIOLATING

STATIC_VERSION = "static"  # the configuration version of a service the store says nothing to


def _threshold_keys(prefix: str) -> list[str]:
    return [f"{prefix}.allow", *(f"{prefix}.remove.{category.value}" for category in VIOLATING)]


LIVE_KEYS: tuple[str, ...] = (
    *_threshold_keys("thresholds"),
    "thresholds.review_floor",
    "agent.enabled",
    "agent.agent_weight",
    "agent.concurrency",
    *_threshold_keys("agent.thresholds"),
)


class LiveConfigError(ValueError):
    """A key that may not be set live, or a value its setting refuses."""


def parse_value(key: str, text: str) -> Any:
    """The JSON value of `key` as stored."""
    if key not in LIVE_KEYS:
        raise LiveConfigError(f"{key!r} cannot be changed live (one of: {', '.join(LIVE_KEYS)})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LiveConfigError(f"{key}: {text!r} is not a JSON value") from error


def apply_live(settings: Settings, items: Mapping[str, str], version: str) -> Settings:
    """`settings` with the stored values of `items` (key → JSON text) laid over them.

    Raises:
        LiveConfigError: a key outside `LIVE_KEYS`, a value that is not JSON, or one its
            setting refuses (named with the key).
    """
    tree = settings.model_dump()
    stage1_override = False
    for key, text in sorted(items.items()):
        value = parse_value(key, text)
        if value is None:  # `null`: back to the service's own setting
            continue
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        stage1_override = stage1_override or key.startswith("thresholds.")
    if stage1_override:
        tree["error_budget"]["apply"] = False
    tree["config_version"] = version
    try:
        return settings.model_validate(tree)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()[:5]
        )
        raise LiveConfigError(problems) from error


def config_version(versions: Mapping[str, str]) -> str:
    """The version of a set of stored items: the newest item's (a global, rising number)."""
    numbers = [int(v) for v in versions.values() if v.isdigit()]
    return f"c{max(numbers)}" if numbers else STATIC_VERSION
