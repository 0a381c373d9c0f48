"""The raw-relay ceiling's pure parts (`moderation/devtools/bench/relay.py`): the payloads are the
API's, the summary counts lost, doubled and altered posts and times them, names stay under the
run's prefix. The stages themselves run against the real stack in
tests/integration/test_bench_relay_real.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from moderation.db.schemas import PostIn
from moderation.devtools.bench.e2e import bench_text
from moderation.devtools.bench.relay import (
    RelayCheckFailed,
    RelayError,
    RelayRow,
    _copy_statement,
    _psycopg_params,
    check_relay,
    digest,
    relay_names,
    relay_payloads,
    relay_summary,
    request_headers,
    run_prefix,
)
from moderation.devtools.stack.services import isolated_settings
from moderation.events import PostSubmitted
from moderation.services.api.routes.posts import _event
from moderation.services.api.security import Principal
from moderation.settings import Settings

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
TIMES = {"occurred_at", "submitted_at"}


def _row(key: str, payload: bytes, produced_ms: int, recorded_ms: int) -> RelayRow:
    return RelayRow(
        key,
        T0 + timedelta(milliseconds=produced_ms),
        T0 + timedelta(milliseconds=recorded_ms),
        digest(payload),
    )


def _sent(count: int) -> tuple[list[tuple[str, str]], list[bytes]]:
    values = [f'{{"post_id":"p{i}"}}'.encode() for i in range(count)]
    return [(f"p{i}", digest(value)) for i, value in enumerate(values)], values


@pytest.mark.parametrize("length", [None, 600])
def test_payloads_are_the_events_the_api_publishes_for_the_same_posts(length: int | None) -> None:
    records = relay_payloads(5, length, author="bench-ab12cd34-saturation")
    principal = Principal(key_id=7, name="bench-ab12cd34", scopes=frozenset({"submit", "read"}))
    for index, (key, value) in enumerate(records):
        ours = PostSubmitted.model_validate_json(value)
        post = PostIn(text=bench_text(index, length), author_id="bench-ab12cd34-saturation")
        api = _event(post, ours.post_id, principal, event_id=ours.event_id)
        # The key is the post id, as the API keys every post.
        assert key == api.key() == ours.post_id.encode()
        mine, theirs = json.loads(value), json.loads(api.model_dump_json())
        assert list(mine) == list(theirs)  # the same fields in the same order
        assert {k: v for k, v in mine.items() if k not in TIMES} == {
            k: v for k, v in theirs.items() if k not in TIMES
        }
        # 128-bit hex ids, as the API's batch route draws them.
        assert re.fullmatch(r"[0-9a-f]{32}", ours.post_id)
        assert re.fullmatch(r"[0-9a-f]{32}", ours.event_id)
    assert len({key for key, _ in records}) == len(records)


def test_the_header_is_a_traceparent_like_the_api_injects_for_an_unsampled_post() -> None:
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    carrier: dict[str, str] = {}
    with tracer.start_as_current_span("submit posts"):
        propagate.inject(carrier)
    [(name, value)] = request_headers()
    assert name in carrier
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", value.decode())
    assert len(value) == len(carrier[name].encode())


def test_every_post_recorded_once_unchanged_passes_and_is_timed() -> None:
    sent, values = _sent(4)
    rows = [
        _row("p0", values[0], 0, 100),
        _row("p1", values[1], 10, 300),
        _row("p2", values[2], 20, 1_000),
        _row("p3", values[3], 30, 2_000),
    ]
    result = check_relay(relay_summary(sent, rows, partitions=3))
    assert (result["posts"], result["rows"], result["partitions"]) == (4, 4, 3)
    assert (result["lost"], result["doubled"], result["altered"]) == (0, 0, 0)
    assert result["seconds"] == 2.0  # first produce → last row written
    assert result["posts_per_second"] == 2.0
    # Nearest rank over 100, 290, 980, 1970 ms.
    assert result["latency_ms"] == {"p50": 980.0, "p95": 1970.0, "p99": 1970.0, "max": 1970.0}


def test_a_post_never_recorded_is_lost() -> None:
    sent, values = _sent(3)
    rows = [_row("p0", values[0], 0, 50), _row("p2", values[2], 0, 60)]
    result = relay_summary(sent, rows, partitions=1)
    assert (result["lost"], result["doubled"], result["altered"]) == (1, 0, 0)
    with pytest.raises(RelayCheckFailed, match="1 lost") as raised:
        check_relay(result)
    assert raised.value.result is result


def test_a_post_recorded_twice_or_sent_twice_is_doubled() -> None:
    sent, values = _sent(2)
    twice = [_row("p0", values[0], 0, 5), _row("p0", values[0], 0, 9), _row("p1", values[1], 0, 7)]
    result = relay_summary(sent, twice, partitions=1)
    assert (result["rows"], result["lost"], result["doubled"]) == (3, 0, 1)
    # Throughput counts each post once.
    assert result["posts_per_second"] == round(2 / 0.009, 1)
    with pytest.raises(RelayCheckFailed, match="1 doubled"):
        check_relay(result)
    sent_twice = relay_summary([*sent, sent[0]], twice[1:], partitions=1)
    assert (sent_twice["lost"], sent_twice["doubled"]) == (0, 1)


def test_a_changed_payload_or_a_stranger_key_is_altered() -> None:
    sent, values = _sent(2)
    rows = [_row("p0", b"something else", 0, 5), _row("p1", values[1], 0, 5)]
    assert relay_summary(sent, rows, partitions=1)["altered"] == 1
    stranger = [*[_row(f"p{i}", values[i], 0, 5) for i in range(2)], _row("zz", b"x", 0, 5)]
    result = relay_summary(sent, stranger, partitions=1)
    assert (result["lost"], result["doubled"], result["altered"]) == (0, 0, 1)
    with pytest.raises(RelayCheckFailed, match="1 altered"):
        check_relay(result)


def test_nothing_recorded_is_all_lost_and_no_figure() -> None:
    sent, _ = _sent(3)
    result = relay_summary(sent, [], partitions=3)
    assert (result["lost"], result["seconds"], result["posts_per_second"]) == (3, 0.0, 0.0)
    assert result["latency_ms"]["p50"] == 0.0


def test_names_live_under_the_run_prefix_and_are_plain_identifiers() -> None:
    run_settings = isolated_settings(Settings(), "bench-ab12cd34")
    assert run_prefix(run_settings) == "bench-ab12cd34"
    assert run_prefix(Settings()) == ""
    names = relay_names(run_settings, "0f1e2d3c")
    topic = run_settings.kafka.topics.posts_submitted
    assert names.inbound == f"{topic}.relay-0f1e2d3c.in"
    assert names.outbound == f"{topic}.relay-0f1e2d3c.out"
    assert names.relay_group == "bench-ab12cd34-classifier-relay-0f1e2d3c"
    assert names.copy_group == "bench-ab12cd34-recorder-relay-0f1e2d3c"
    assert names.table == "bench_relay_bench_ab12cd34_0f1e2d3c"
    assert relay_names(run_settings, "11111111") != names
    long = relay_names(isolated_settings(Settings(), "it-" + "x" * 80), "0f1e2d3c")
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", long.table)
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", relay_names(Settings(), "ab").table)
    with pytest.raises(ValueError, match="nonce"):
        relay_names(run_settings, "x; DROP TABLE posts")


def test_the_copy_statement_takes_plain_table_names_only() -> None:
    assert _copy_statement("bench_relay_x_1") == (
        "COPY bench_relay_x_1 (key, produced_at, payload) FROM STDIN (FORMAT BINARY)"
    )
    for bad in ("posts; DROP TABLE posts", "Bench", "1abc", "a" * 64, ""):
        with pytest.raises(ValueError, match="plain table name"):
            _copy_statement(bad)


def test_the_copy_stage_connects_as_the_bench_engine_does() -> None:
    settings = Settings()
    params = _psycopg_params(settings)
    db = settings.db
    assert params["host"] == db.host
    assert params["port"] == db.port
    assert params["user"] == db.user
    assert params["password"] == db.password.get_secret_value()
    assert params["dbname"] == db.name
    assert params["sslmode"] == db.sslmode
    assert params["connect_timeout"] == 5
    sqlite = settings.model_copy(
        update={"db": db.model_copy(update={"url_override": "sqlite:///x.db"})}
    )
    with pytest.raises(RelayError, match="needs PostgreSQL"):
        _psycopg_params(sqlite)
