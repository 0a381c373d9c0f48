"""The dashboard's contract with the API, checked against the API's OpenAPI document.

The dashboard parses the API's answers with the API's own shapes (`moderation.db.schemas`; why:
`hitl_dashboard/api_client.py`), so a field cannot drift between two copies. What can still
drift: a route that answers with another shape than the one the client parses it with, a query
parameter or body field the API no longer takes, and a field the pages read that the API renames
or removes (mypy sees the attributes, not `getattr(model, "gold_macro_f1")` or a dumped row's
keys). Each client call is made against a transport that records the request instead of sending
it; the request must be one the document declares, the client's shape must fit the answer the
document declares, and every field the pages read (`PAGES_READ`) must be in that answer with a
type the page can take.
"""

from __future__ import annotations

import ast
import json
import re
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from hitl_dashboard.api_client import ApiClient, AuditQuery, ReviewApi
from moderation.db.schemas import WorkflowApp
from moderation.services.api import build_app
from moderation.settings import Settings

Schema = dict[str, Any]
DASHBOARD = Path(__file__).parents[2] / "hitl_dashboard"

AUDIT_QUERY = AuditQuery(
    actor="key:7",
    action="review.decide",
    entity="review",
    entity_id="review-1",
    since=datetime(2026, 3, 1, tzinfo=UTC),
    until=datetime(2026, 3, 2, tzinfo=UTC),
)
# One call per method of `ReviewApi`, with every optional parameter set so that all are checked.
CALLS: dict[str, Callable[[ApiClient], object]] = {
    "stats": lambda client: client.stats(),
    "claim_next": lambda client: client.claim_next(language="ja", group="ja"),
    "get_review": lambda client: client.get_review("review-1"),
    "groups": lambda client: client.groups(),
    "list_reviews": lambda client: client.list_reviews(
        status="pending",
        category="spam",
        priority="high",
        language="ja",
        author_id="user-42",
        group="ja",
        limit=5,
        offset=10,
    ),
    "bulk_decide": lambda client: client.bulk_decide(
        review_ids=["review-1", "review-2"],
        author_id="user-42",
        label="spam",
        decision="remove",
        note="link farm",
    ),
    "claim": lambda client: client.claim("review-1"),
    "decide": lambda client: client.decide(
        "review-1",
        label="spam",
        decision="remove",
        note="link farm",
        add_images_to_hashlist="spam-images",
    ),
    "post_trail": lambda client: client.post_trail("p-1"),
    "author": lambda client: client.author("user-42", tenant="acme", limit=5),
    "decision_log_csv": lambda client: client.decision_log_csv(),
    "image": lambda client: client.image("a" * 64),
    "metrics_overview": lambda client: client.metrics_overview(hours=24, bucket_minutes=60),
    "live_config": lambda client: client.live_config(),
    "list_workflows": lambda client: client.list_workflows(WorkflowApp.AGENT, limit=20),
    "workflow_history": lambda client: client.workflow_history(WorkflowApp.REVIEW, "review-1"),
    "audit": lambda client: client.audit(AUDIT_QUERY, limit=25, offset=50),
    "audit_csv": lambda client: client.audit_csv(AUDIT_QUERY),
}

# What the pages read of each answer, as dotted paths (lists are walked through: `items.status`
# is the status of each item). A path that ends on an object means the page reads all of it
# (the History tables show whole verdicts, reviews and decisions).
REVIEW_READS = [
    "review_id",
    "post_id",
    "text",
    "author_id",
    "priority",
    "reason",
    "category",
    "group",
    "claimed_by",
    "claimed_by_display",
    "claim_expires_at",
    "sla_due_at",
    "appeal_of",
    "votes",
    "images.sha256",
    "images.format",
    "images.width",
    "images.height",
    "images.size_bytes",
    "suggestion.signals",
    "policy_section",
    "suggestion.stage",
    "suggestion.decision",
    "suggestion.primary_category",
    "suggestion.confidence",
    "suggestion.scores",
    "suggestion.model_version",
    "suggestion.policy_version",
    "suggestion.rationale",
    "precedents.text",
    "precedents.label",
    "precedents.decision",
]
PAGES_READ: dict[str, list[str]] = {
    "stats": ["pending", "escalated", "inbound_24h", "action_rate", "avg_handling_seconds"],
    "claim_next": REVIEW_READS,
    "get_review": REVIEW_READS,
    "claim": REVIEW_READS,
    "list_reviews": [
        "total",
        "items.review_id",
        "items.post_id",
        "items.author_id",
        "items.status",
        "items.priority",
        "items.category",
        "items.group",
        "items.reason",
        "items.claimed_by",
        "items.claimed_by_display",
        "items.created_at",
    ],
    "groups": ["items.name", "items.open", "items.mine", "key_groups"],
    "decide": ["status"],
    "bulk_decide": [
        "decided",
        "skipped",
        "failed",
        "outcomes.review_id",
        "outcomes.outcome",
        "outcomes.reason",
        "outcomes.event_id",
    ],
    "post_trail": [
        "post_id",
        "status",
        "author_id",
        "external_id",
        "text",
        "submitted_at",
        "verdicts",
        "reviews",
        "decisions",
    ],
    "author": [
        "tenant",
        "author_id",
        "post_count",
        "standing.status",
        "standing.until",
        "standing.active_strikes",
        "strikes.state",
        "strikes.category",
        "strikes.severity",
        "strikes.weight",
        "strikes.post_id",
        "strikes.issued_at",
        "strikes.expires_at",
        "strikes.overturned_by",
        "actions.action",
        "actions.until",
        "actions.days",
        "actions.reason",
        "actions.reverses",
        "actions.reversed_by",
        "actions.created_at",
        "actions.action_id",
        "posts.post_id",
        "posts.status",
        "posts.submitted_at",
    ],
    "decision_log_csv": [],
    "image": [],
    "metrics_overview": [
        "window.since",
        "window.until",
        "window.bucket_minutes",
        "throughput.start",
        "throughput.posts",
        "throughput.verdicts",
        "throughput.decisions",
        "throughput.share_to_humans",
        "latency.start",
        "latency.stage",
        "latency.measure",
        "latency.p50_ms",
        "latency.p95_ms",
        "latency.p99_ms",
        "latency_window.stage",
        "latency_window.measure",
        "latency_window.count",
        "latency_window.p50_ms",
        "latency_window.p95_ms",
        "latency_window.p99_ms",
        "latency_sample.truncated",
        "latency_sample.rows",
        "latency_sample.oldest",
        "decision_mix.stage",
        "decision_mix.decision",
        "decision_mix.count",
        "category_mix.stage",
        "category_mix.category",
        "category_mix.count",
        "to_humans.share",
        "to_humans.posts",
        "to_humans.sent_to_humans",
        "agreement.label",
        "agreement.model_agreement",
        "agreement.agent_agreement",
        "agreement_total.decisions",
        "agreement_total.model_agreement",
        "agreement_total.agent_agreement",
        "reviewer_agreement.category",
        "reviewer_agreement.pairs",
        "reviewer_agreement.observed_agreement",
        "reviewer_agreement.kappa",
        "reviewer_agreement.awaiting_second",
        "reviewer_agreement_total.pairs",
        "reviewer_agreement_total.observed_agreement",
        "reviewer_agreement_total.kappa",
        "reviewer_agreement_total.awaiting_second",
        "queue.pending",
        "queue.escalated",
        "queue.claimed",
        "queue.oldest_pending_age_seconds",
        "queue.moderators.moderator",
        "queue.moderators.moderator_display",
        "queue.moderators.decided",
        "queue.moderators.mean_handling_seconds",
        "queue.moderators.mean_time_to_decision_seconds",
        "model_versions.created_at",
        "model_versions.version",
        "model_versions.kind",
        "model_versions.status",
        "model_versions.gold_macro_f1",
        "model_versions.time_split_macro_f1",
        "model_versions.validation_macro_f1",
        "model_versions.eval_loss",
        "model_versions.promoted",
        "model_versions.run_id",
        "job_runs.id",
        "job_runs.job",
        "job_runs.status",
        "job_runs.started_at",
        "job_runs.duration_seconds",
        "job_runs.counts",
        "job_runs.promoted",
        "job_runs.error",
    ],
    "live_config": [
        "version",
        "items.key",
        "items.value",
        "items.version",
        "changes.at",
        "changes.actor",
        "changes.actor_display",
        "changes.key",
        "changes.before",
        "changes.after",
        "changes.version",
    ],
    "list_workflows": [
        "complete",
        "scanned",
        "items.instance_id",
        "items.workflow",
        "items.status",
        "items.created_at",
        "items.updated_at",
        "items.failure",
    ],
    "workflow_history": [
        "instance.instance_id",
        "instance.workflow",
        "instance.status",
        "instance.created_at",
        "instance.updated_at",
        "instance.failure",
        "steps.at",
        "steps.kind",
        "steps.name",
        "steps.outcome",
        "steps.duration_seconds",
        "steps.due_at",
        "steps.error",
    ],
    "audit": [
        "total",
        "items.at",
        "items.actor_display",
        "items.action",
        "items.entity",
        "items.entity_id",
        "items.before",
        "items.after",
    ],
    "audit_csv": [],
}


@cache
def document() -> Schema:
    """The API's OpenAPI document, as `GET /openapi.json` serves it."""
    return build_app(Settings()).openapi()


# --- reading JSON schemas -------------------------------------------------------------------


class Resolver:
    """Follows `$ref`s inside one document (`#/components/schemas/X` or `#/$defs/X`)."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def __call__(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            node: Any = self.root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def alternatives(self, schema: Schema) -> list[Schema]:
        """The schemas a value may match (`anyOf` / `oneOf` flattened), resolved."""
        schema = self(schema)
        members = schema.get("anyOf") or schema.get("oneOf")
        if not members:
            return [schema]
        return [alt for member in members for alt in self.alternatives(member)]

    def types(self, schema: Schema) -> set[str]:
        """The JSON types a value may have; `string/date-time` for a timestamp, `any` for {}."""
        found: set[str] = set()
        for alt in self.alternatives(schema):
            kind = alt.get("type")
            if kind is None and "const" in alt:
                kind = _json_type(alt["const"])
            if kind is None:
                kind = {_json_type(value) for value in alt.get("enum", ())} or "any"
            kinds = {kind} if isinstance(kind, str) else set(kind)
            if alt.get("format") == "date-time":
                kinds = {f"{k}/date-time" if k == "string" else k for k in kinds}
            found |= kinds
        return found

    def enum(self, schema: Schema) -> set[Any] | None:
        """The values a non-null value is limited to, or None when it is not limited."""
        values: set[Any] = set()
        for alt in self.alternatives(schema):
            if alt.get("type") == "null":
                continue
            if "const" in alt:
                values.add(alt["const"])
            elif "enum" in alt:
                values |= set(alt["enum"])
            else:
                return None
        return values

    def object_like(self, schema: Schema) -> Schema | None:
        """The non-null alternative that is an object, an array or a dict, if any."""
        for alt in self.alternatives(schema):
            if "properties" in alt or "items" in alt or "additionalProperties" in alt:
                return alt
        return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "string" if isinstance(value, str) else "object"


def _accepts(wanted: set[str], served: str) -> bool:
    """Whether a reader expecting `wanted` types can take a value of type `served`."""
    return (
        "any" in wanted
        or served in wanted
        or (served == "integer" and "number" in wanted)
        or (served == "string/date-time" and "string" in wanted)
    )


def incompatibilities(
    api: Resolver, served: Schema, reader: Resolver, read: Schema, path: str
) -> Iterator[str]:
    """Why a value the API serves (`served`) may not be read as `read`; nothing when it can."""
    served_types, read_types = api.types(served), reader.types(read)
    for kind in sorted(served_types):
        if not _accepts(read_types, kind):
            yield f"{path}: the API serves {kind}, the dashboard reads {sorted(read_types)}"
    read_enum, served_enum = reader.enum(read), api.enum(served)
    if read_enum is not None and (served_enum is None or not served_enum <= read_enum):
        served_values = served_enum or "any value"
        yield f"{path}: the API serves {served_values}, the dashboard takes {read_enum}"
    served_shape, read_shape = api.object_like(served), reader.object_like(read)
    if read_shape is None:
        return
    if served_shape is None:
        yield f"{path}: the API serves no object or list here"
        return
    for key in ("items", "additionalProperties"):
        if isinstance(read_shape.get(key), dict):
            if not isinstance(served_shape.get(key), dict):
                yield f"{path}: the API serves no {key} here"
                continue
            yield from incompatibilities(
                api, served_shape[key], reader, read_shape[key], f"{path}[]"
            )
    properties = served_shape.get("properties", {})
    for name, field in read_shape.get("properties", {}).items():
        if name not in properties:
            yield f"{path}.{name}: not in the API's answer"
            continue
        yield from incompatibilities(api, properties[name], reader, field, f"{path}.{name}")


def field_at(resolve: Resolver, schema: Schema, path: str) -> Schema | None:
    """The schema of the field at dotted `path` (lists walked through), or None if absent."""
    for name in path.split("."):
        shape = resolve.object_like(schema)
        while shape is not None and "items" in shape:
            shape = resolve.object_like(shape["items"])
        if shape is None or name not in shape.get("properties", {}):
            return None
        schema = shape["properties"][name]
    return schema


# --- the client's calls -------------------------------------------------------------------


class Sent(Exception):
    """Raised by the recording transport: the request the client would have sent."""

    def __init__(self, request: httpx.Request) -> None:
        super().__init__(f"{request.method} {request.url}")
        self.request = request


def sent(name: str) -> httpx.Request:
    """The request `CALLS[name]` makes."""

    def record(request: httpx.Request) -> httpx.Response:
        raise Sent(request)

    client = ApiClient("http://api.test", "key", transport=httpx.MockTransport(record))
    with pytest.raises(Sent) as caught:
        CALLS[name](client)
    return caught.value.request


def operation(request: httpx.Request) -> tuple[Schema, dict[str, str]]:
    """The documented operation the request is for, and its path parameters."""
    paths: dict[str, Schema] = document()["paths"]
    # A literal path (/v1/reviews/stats) wins over a template (/v1/reviews/{review_id}).
    for template in sorted(paths, key=lambda path: path.count("{")):
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        match = re.fullmatch(pattern, request.url.path)
        if match and request.method.lower() in paths[template]:
            return paths[template][request.method.lower()], match.groupdict()
    raise AssertionError(f"{request.method} {request.url.path} is not in the API's document")


def parsed_with(name: str) -> type[BaseModel] | None:
    """The shape the client parses the answer of `name` with (None: not JSON)."""
    answer = typing.get_type_hints(getattr(ApiClient, name))["return"]
    for member in typing.get_args(answer) or (answer,):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def json_answers(op: Schema) -> list[Schema]:
    """The JSON schemas of the operation's successful answers."""
    return [
        response["content"]["application/json"]["schema"]
        for status, response in op["responses"].items()
        if status.startswith("2") and "application/json" in response.get("content", {})
    ]


def model_schema(model: type[BaseModel]) -> tuple[Resolver, Schema]:
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    return Resolver(schema), schema


# --- the tests ----------------------------------------------------------------------------


def test_every_client_call_is_checked() -> None:
    methods = {
        name
        for name, member in vars(ReviewApi).items()
        if callable(member) and not name.startswith("_") and name != "close"
    }
    assert set(CALLS) == methods == set(PAGES_READ)


@pytest.mark.parametrize("name", CALLS)
def test_each_request_is_one_the_api_documents(name: str) -> None:
    request = sent(name)
    op, _ = operation(request)

    resolve = Resolver(document())
    parameters = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
    for key, value in request.url.params.items():
        assert key in parameters, f"{name}: the API takes no query parameter {key!r}"
        wanted = resolve.types(parameters[key]["schema"])
        assert wanted & {"string", "string/date-time", "integer", "number", "any"}, (
            f"{name}: {key} {wanted}"
        )
        if "string/date-time" in wanted:
            # The API parses it as ISO 8601 (with an offset, or UTC without one).
            assert datetime.fromisoformat(value).tzinfo is not None, f"{name}: {key}={value!r}"
        allowed = resolve.enum(parameters[key]["schema"])
        assert allowed is None or value in allowed, f"{name}: {key}={value!r} not in {allowed}"
    if request.content:
        body_schema = resolve(op["requestBody"]["content"]["application/json"]["schema"])
        body = json.loads(request.content)
        properties = body_schema["properties"]
        assert set(body) <= set(properties), (
            f"{name}: the API takes no {set(body) - set(properties)}"
        )
        assert set(body_schema.get("required", ())) <= set(body), (
            f"{name}: a required field is missing"
        )
        for key, value in body.items():
            assert _accepts(resolve.types(properties[key]), _json_type(value)), f"{name}: {key}"
            allowed = resolve.enum(properties[key])
            assert allowed is None or value in allowed, f"{name}: {key}={value!r} not in {allowed}"


@pytest.mark.parametrize("name", CALLS)
def test_the_client_parses_each_answer_with_a_shape_that_fits_it(name: str) -> None:
    op, _ = operation(sent(name))
    model = parsed_with(name)
    if model is None:  # the decision log (CSV) and images: passed through as bytes
        served = op["responses"]["200"]["content"]
        assert "text/csv" in served if name != "image" else "image/jpeg" in served
        return
    answers = json_answers(op)
    assert answers, f"{name}: the API documents no JSON answer"
    reader, read = model_schema(model)
    for served in answers:
        problems = list(incompatibilities(Resolver(document()), served, reader, read, name))
        assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", CALLS)
def test_every_field_the_pages_read_is_in_the_answer(name: str) -> None:
    op, _ = operation(sent(name))
    model = parsed_with(name)
    reader, read = model_schema(model) if model is not None else (None, None)
    api = Resolver(document())
    problems = []
    for served in json_answers(op):
        for path in PAGES_READ[name]:
            served_field = field_at(api, served, path)
            if served_field is None:
                problems.append(f"{name}: {path} is not in the API's answer")
                continue
            assert reader is not None and read is not None
            read_field = field_at(reader, read, path)
            if read_field is None:
                problems.append(f"{name}: {path} is not in {model.__name__ if model else None}")
                continue
            problems += incompatibilities(api, served_field, reader, read_field, f"{name}.{path}")
    assert not problems, "\n".join(problems)


def _names_in_dashboard() -> set[str]:
    """Attribute names and string constants in the dashboard's code (api_client.py aside)."""
    names: set[str] = set()
    for path in DASHBOARD.rglob("*.py"):
        if path.name == "api_client.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return names


def _field_names(resolve: Resolver, schema: Schema) -> set[str]:
    """Every property name in `schema`, nested ones included."""
    names: set[str] = set()
    for alt in resolve.alternatives(schema):
        for key in ("items", "additionalProperties"):
            if isinstance(alt.get(key), dict):
                names |= _field_names(resolve, alt[key])
        for name, field in alt.get("properties", {}).items():
            names |= {name} | _field_names(resolve, field)
    return names


def test_pages_read_lists_only_fields_the_pages_mention() -> None:
    mentioned = _names_in_dashboard()
    listed = {part for paths in PAGES_READ.values() for path in paths for part in path.split(".")}
    assert listed - mentioned == set(), "PAGES_READ lists fields no page reads any more"


def test_pages_read_lists_every_field_the_pages_mention() -> None:
    """By name: a page that starts reading another field of an answer must list it."""
    fields: set[str] = set()
    listed: set[str] = set()
    for name, paths in PAGES_READ.items():
        model = parsed_with(name)
        if model is None:
            continue
        reader, read = model_schema(model)
        fields |= _field_names(reader, read)
        for path in paths:
            listed |= set(path.split("."))
            field = field_at(reader, read, path)
            assert field is not None, f"{name}: {path} is not in {model.__name__}"
            listed |= _field_names(reader, field)  # an object read whole: all of it
    unlisted = (fields & _names_in_dashboard()) - listed
    assert unlisted == set(), f"add to PAGES_READ what the pages read of {sorted(unlisted)}"
