"""The dashboard's Metrics page under Streamlit's AppTest, against canned API answers.

The fake review API of `test_dashboard.py` (behind the real `ApiClient`) also serves
`GET /v1/metrics/overview` here, from a canned body, and records the query of every call; and
`GET /v1/config` (the live configuration section), from another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from hitl_dashboard import metrics_page
from moderation.db.schemas import ConfigStatePublic, MetricsOverviewPublic
from tests.unit.markdown_shown import active_markup, shown
from tests.unit.test_dashboard import GOOD_KEY, FakeReviewApi, new_app, signed_in, titles

OVERVIEW_PATH = "/v1/metrics/overview"
CONFIG_PATH = "/v1/config"
BOB_KEY = "mod-key-bob"


def bucket(hour: int, posts: int, model: int, agent: int, decisions: int, sent: int) -> Any:
    return {
        "start": f"2026-11-21T{hour:02d}:00:00Z",
        "posts": posts,
        "verdicts": {"model": model, "agent": agent},
        "decisions": decisions,
        "sent_to_humans": sent,
        "share_to_humans": round(sent / posts, 4) if posts else None,
    }


def percentiles(hour: int | None, stage: str, measure: str, p50: float) -> dict[str, Any]:
    return {
        "start": None if hour is None else f"2026-11-21T{hour:02d}:00:00Z",
        "stage": stage,
        "measure": measure,
        "count": 4,
        "p50_ms": p50,
        "p95_ms": p50 * 2,
        "p99_ms": p50 * 3,
    }


def agreement(label: str, decisions: int, model: int, agent: int) -> dict[str, Any]:
    return {
        "label": label,
        "decisions": decisions,
        "model_compared": decisions,
        "model_agreed": model,
        "model_agreement": model / decisions,
        "agent_compared": decisions,
        "agent_agreed": agent,
        "agent_agreement": agent / decisions,
    }


def reviewers(
    category: str, *, pairs: int, agreed: int, kappa: float | None, awaiting: int
) -> dict[str, Any]:
    return {
        "category": category,
        "pairs": pairs,
        "agreed": agreed,
        "observed_agreement": agreed / pairs,
        "kappa": kappa,
        "awaiting_second": awaiting,
    }


def busy_overview() -> dict[str, Any]:
    """What `GET /v1/metrics/overview` answers after a busy day."""
    return {
        "window": {
            "since": "2026-11-21T10:00:00Z",
            "until": "2026-11-21T11:30:00Z",
            "hours": 24,
            "bucket_minutes": 60,
        },
        "throughput": [bucket(10, 4, 4, 1, 0, 2), bucket(11, 6, 6, 2, 3, 3)],
        "latency": [
            percentiles(10, "model", "verdict", 10.0),
            percentiles(11, "model", "verdict", 12.0),
            percentiles(10, "agent", "end_to_end", 900.0),
        ],
        "latency_window": [
            percentiles(None, "model", "verdict", 11.0),
            percentiles(None, "agent", "end_to_end", 900.0),
        ],
        "latency_sample": {"rows": 13, "cap": 50000, "truncated": False, "oldest": None},
        "decision_mix": [
            {"stage": "model", "decision": "allow", "count": 5},
            {"stage": "model", "decision": "review", "count": 5},
            {"stage": "agent", "decision": "review", "count": 3},
            {"stage": "human", "decision": "remove", "count": 3},
        ],
        "category_mix": [
            {"stage": "model", "category": "safe", "count": 5},
            {"stage": "model", "category": "spam", "count": 5},
            {"stage": "agent", "category": "spam", "count": 3},
            {"stage": "human", "category": "spam", "count": 3},
        ],
        "to_humans": {"posts": 10, "sent_to_humans": 5, "share": 0.5},
        "agreement": [agreement("spam", 3, 2, 3)],
        "agreement_total": agreement("all", 3, 2, 3),
        "reviewer_agreement": [
            reviewers("spam", pairs=10, agreed=8, kappa=0.6, awaiting=1),
            reviewers("harassment", pairs=2, agreed=2, kappa=None, awaiting=0),
        ],
        "reviewer_agreement_total": reviewers("all", pairs=12, agreed=10, kappa=0.65, awaiting=1),
        "queue": {
            "pending": 4,
            "escalated": 1,
            "claimed": 2,
            "inbound_24h": 5,
            "actioned_24h": 3,
            "action_rate": 1.0,
            "avg_handling_seconds": 600.0,
            "oldest_pending_at": "2026-11-21T09:20:00Z",
            "oldest_pending_age_seconds": 7800.0,
            "moderators": [
                {
                    "moderator": "alice",
                    "decided": 2,
                    "mean_handling_seconds": 90.0,
                    "mean_time_to_decision_seconds": 600.0,
                },
                {
                    "moderator": "bob",
                    "decided": 1,
                    "mean_handling_seconds": None,
                    "mean_time_to_decision_seconds": 300.0,
                },
            ],
        },
        "model_versions": [
            {
                "kind": "fast",
                "version": "fast-base",
                "status": "retired",
                "created_at": "2026-11-01T00:00:00Z",
                "gold_macro_f1": None,
                "time_split_macro_f1": None,
                "validation_macro_f1": 0.61,
                "eval_loss": None,
                "promoted": None,
                "run_id": None,
            },
            {
                "kind": "fast",
                "version": "fast-n1",
                "status": "champion",
                "created_at": "2026-11-20T02:00:00Z",
                "gold_macro_f1": 0.64,
                "time_split_macro_f1": 0.58,
                "validation_macro_f1": None,
                "eval_loss": None,
                "promoted": True,
                "run_id": 3,
            },
        ],
        "job_runs": [
            {
                "id": 3,
                "job": "nightly",
                "status": "succeeded",
                "started_at": "2026-11-20T02:00:00Z",
                "finished_at": "2026-11-20T02:05:00Z",
                "duration_seconds": 300.0,
                "counts": {"decisions_in_window": 40},
                "promoted": True,
                "error": None,
            }
        ],
    }


def empty_overview() -> dict[str, Any]:
    """A fresh install: empty buckets and nothing else."""
    return {
        "window": {
            "since": "2026-11-21T10:00:00Z",
            "until": "2026-11-21T11:30:00Z",
            "hours": 24,
            "bucket_minutes": 60,
        },
        "throughput": [bucket(10, 0, 0, 0, 0, 0), bucket(11, 0, 0, 0, 0, 0)],
        "latency": [],
        "latency_window": [],
        "latency_sample": {"rows": 0, "cap": 50000, "truncated": False, "oldest": None},
        "decision_mix": [],
        "category_mix": [],
        "to_humans": {"posts": 0, "sent_to_humans": 0, "share": None},
        "agreement": [],
        "agreement_total": agreement("all", 1, 0, 0) | {"decisions": 0},
        "queue": {
            "pending": 0,
            "escalated": 0,
            "claimed": 0,
            "inbound_24h": 0,
            "actioned_24h": 0,
            "action_rate": None,
            "avg_handling_seconds": None,
            "oldest_pending_at": None,
            "oldest_pending_age_seconds": None,
            "moderators": [],
        },
        "model_versions": [],
        "job_runs": [],
    }


LIVE_KEYS = ["thresholds.allow", "thresholds.remove.spam", "agent.enabled", "agent.agent_weight"]


def live_config() -> dict[str, Any]:
    """What `GET /v1/config` answers after an admin changed three settings (one twice)."""
    return {
        "version": "c4",
        "items": [
            {"key": "agent.agent_weight", "value": "0.7", "version": "4"},
            {"key": "agent.enabled", "value": "null", "version": "2"},
            {"key": "thresholds.remove.spam", "value": "0.9", "version": "3"},
        ],
        "changes": [
            {
                "key": "agent.agent_weight",
                "actor": "key:7",
                "at": "2026-11-21T11:20:00Z",
                "before": "0.5",
                "after": "0.7",
                "version": "4",
            },
            {
                "key": "thresholds.remove.spam",
                "actor": "key:7",
                "at": "2026-11-21T11:10:00Z",
                "before": None,
                "after": "0.9",
                "version": "3",
            },
            {
                "key": "agent.enabled",
                "actor": "key:3",
                "at": "2026-11-21T11:05:00Z",
                "before": "false",
                "after": "null",
                "version": "2",
            },
            {
                "key": "agent.agent_weight",
                "actor": None,
                "at": "2026-11-21T11:00:00Z",
                "before": None,
                "after": "0.5",
                "version": None,
            },
        ],
        "keys": LIVE_KEYS,
    }


def static_config() -> dict[str, Any]:
    """A fresh install: nothing set, nothing changed."""
    return {"version": "static", "items": [], "changes": [], "keys": LIVE_KEYS}


@dataclass
class MetricsApi(FakeReviewApi):
    """The fake review API, also serving the metrics overview and the live configuration."""

    overview: dict[str, Any] = field(default_factory=busy_overview)
    config: dict[str, Any] = field(default_factory=live_config)
    queries: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if (method, path) == ("GET", OVERVIEW_PATH):
            key = request.headers["Authorization"].removeprefix("Bearer ")
            self.queries.append((key, dict(request.url.params)))
            return httpx.Response(200, json=self.overview)
        if (method, path) == ("GET", CONFIG_PATH):
            return httpx.Response(200, json=self.config)
        return super()._route(method, path, request)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    # Streamlit's cache lives in the process, shared by every AppTest run: start each test cold.
    metrics_page.load_overview.clear()
    metrics_page.load_config.clear()
    yield
    metrics_page.load_overview.clear()
    metrics_page.load_config.clear()


@pytest.fixture
def api() -> MetricsApi:
    return MetricsApi(keys={GOOD_KEY, BOB_KEY})


def metrics_app(api: MetricsApi) -> AppTest:
    app = signed_in(api)
    app.switch_page("views/metrics.py").run()
    assert not app.exception, app.exception
    return app


def charts(app: AppTest) -> list[pd.DataFrame]:
    """The data of every chart on the page, in page order."""
    return [
        convert_arrow_bytes_to_pandas_df(chart.proto.datasets[0].data.data)
        for chart in app.get("vega_lite_chart")
    ]


def series(chart: pd.DataFrame) -> dict[str, list[Any]]:
    """A built-in chart's data (Streamlit draws it in long form) back as series by name."""
    color = next(c for c in chart.columns if c.startswith("color"))
    value = next(c for c in chart.columns if c.startswith("value"))
    return {str(name): group[value].tolist() for name, group in chart.groupby(color, sort=False)}


def metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def rows(element: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = element.value.to_dict("records")
    return records


# --- the page -----------------------------------------------------------------------------------


def test_metrics_page_draws_every_section(api: MetricsApi) -> None:
    app = metrics_app(api)

    assert titles(app) == ["Metrics"]
    assert [s.value for s in app.subheader] == [
        "Throughput",
        "Latency",
        "Decisions and categories",
        "Sent to humans",
        "Model vs human agreement",
        "Reviewer agreement",
        "Review queue",
        "Model versions",
        "Nightly runs",
        "Live configuration",
    ]
    assert not app.error and not app.info and not app.warning
    assert api.queries == [(GOOD_KEY, {"hours": "24", "bucket_minutes": "60"})]
    assert api.calls("GET", CONFIG_PATH) == 1
    # Throughput, latency, decisions, categories, share, agreement, kappa, handling, scores.
    assert len(app.get("vega_lite_chart")) == 9
    assert metric(app, "Share to humans") == "50%"
    assert metric(app, "Model agrees") == "67%"
    assert metric(app, "Agent agrees") == "100%"
    assert (metric(app, "Pending"), metric(app, "Escalated"), metric(app, "Claimed")) == (
        "4",
        "1",
        "2",
    )
    assert metric(app, "Oldest waiting") == "2 h 10 min"
    latency, reviewer_table, moderators, models, jobs, _items, _changes = app.dataframe
    assert (metric(app, "Double reviews"), metric(app, "Moderators agree")) == ("12", "83%")
    assert metric(app, "Cohen's kappa") == "0.65"
    assert [
        (r["category"], r["kappa"], r["awaiting a second judgement"]) for r in rows(reviewer_table)
    ] == [("spam", "0.60", 1), ("harassment", "–", 0), ("all", "0.65", 1)]
    assert [(r["stage"], r["measure"], r["p99 ms"]) for r in rows(latency)] == [
        ("model", "verdict latency", 33.0),
        ("agent", "end to end", 2700.0),
    ]
    assert [r["version"] for r in rows(models)] == ["fast-n1", "fast-base"]  # newest first
    assert rows(jobs)[0]["counts"] == "decisions_in_window 40"
    assert moderators.value["decided"].to_dict() == {"alice": 2, "bob": 1}


def test_the_charts_plot_the_api_numbers(api: MetricsApi) -> None:
    app = metrics_app(api)

    throughput, latency, decisions, *_, kappa, handling, scores = charts(app)

    assert series(throughput) == {
        "posts": [4, 6],
        "model verdicts": [4, 6],
        "agent verdicts": [1, 2],
        "human decisions": [0, 3],
    }
    assert series(latency) == {"p50": [10.0, 12.0], "p95": [20.0, 24.0], "p99": [30.0, 36.0]}
    assert series(decisions)["review"] == [5, 3, 0]  # model, agent, human
    assert handling["moderator"].tolist() == ["alice", "bob"]
    assert kappa["category"].tolist() == ["spam"]  # harassment's kappa is undefined
    assert kappa["kappa"].tolist() == [0.6]
    assert sorted(zip(scores["version"], scores["score"], scores["value"], strict=True)) == [
        ("fast-base", "validation macro F1", 0.61),
        ("fast-n1", "gold macro F1", 0.64),
        ("fast-n1", "time-split macro F1", 0.58),
    ]


def test_latency_series_can_be_switched(api: MetricsApi) -> None:
    app = metrics_app(api)
    choice = app.selectbox(key=metrics_page.LATENCY_SERIES)
    assert choice.options == ["model · verdict latency", "agent · end to end"]

    choice.set_value("agent · end to end").run()

    assert series(charts(app)[1]) == {"p50": [900.0], "p95": [1800.0], "p99": [2700.0]}
    assert len(api.queries) == 1  # the cached answer served the rerun


def test_a_chosen_latency_series_that_disappears_falls_back_to_the_first(
    api: MetricsApi,
) -> None:
    app = metrics_app(api)
    app.selectbox(key=metrics_page.LATENCY_SERIES).set_value("agent · end to end").run()
    api.overview["latency"] = api.overview["latency"][:2]
    api.overview["latency_window"] = api.overview["latency_window"][:1]  # no agent any more

    app.button(key=metrics_page.REFRESH).click().run()

    assert not app.exception
    assert app.selectbox(key=metrics_page.LATENCY_SERIES).value == "model · verdict latency"
    assert series(charts(app)[1])["p50"] == [10.0, 12.0]


def test_window_selector_fetches_each_window_once_and_refresh_refetches(api: MetricsApi) -> None:
    app = metrics_app(api)

    app.segmented_control(key=metrics_page.WINDOW).set_value("1 h").run()
    app.segmented_control(key=metrics_page.WINDOW).set_value("7 d").run()
    app.segmented_control(key=metrics_page.WINDOW).set_value("24 h").run()
    app.run()

    assert [query for _, query in api.queries] == [
        {"hours": "24", "bucket_minutes": "60"},
        {"hours": "1", "bucket_minutes": "5"},
        {"hours": "168", "bucket_minutes": "360"},
    ]
    app.button(key=metrics_page.REFRESH).click().run()
    assert api.queries[-1] == (GOOD_KEY, {"hours": "24", "bucket_minutes": "60"})
    assert len(api.queries) == 4
    assert not app.exception


def test_the_cache_never_serves_one_key_what_another_fetched(api: MetricsApi) -> None:
    metrics_app(api)
    bob = new_app(api).run()
    bob.text_input(key="hitl_sign_in_key").input(BOB_KEY)
    bob.button(key="sign_in").click().run()

    bob.switch_page("views/metrics.py").run()

    assert [key for key, _ in api.queries] == [GOOD_KEY, BOB_KEY]
    metrics_app(api)  # alice again, within the cache time: her own cached answer
    assert len(api.queries) == 2


def test_an_empty_read_model_renders_clean_empty_states() -> None:
    api = MetricsApi(overview=empty_overview(), config=static_config())

    app = metrics_app(api)

    assert not app.error
    assert not app.get("vega_lite_chart") and not app.dataframe
    assert [i.value for i in app.info] == [
        "Nothing was submitted, classified or decided in this window yet.",
        "No verdicts in this window yet: no latency to show.",
        "No verdicts or decisions in this window yet.",
        "No posts in this window yet.",
        "No human decisions in this window yet: nothing to compare.",
        "No double reviews in this window. A share of reviews goes to two moderators when "
        "`review.double_review_share` is above 0 (`MODERATION_REVIEW__DOUBLE_REVIEW_SHARE`).",
        "No review was decided in this window yet.",
        "No model registered yet.",
        "No job has run yet.",
        "Nothing is set live: the services run on their own settings.",
    ]
    assert metric(app, "Share to humans") == "–"
    assert metric(app, "Oldest waiting") == "–"


def test_an_api_error_is_a_message_not_a_traceback(api: MetricsApi) -> None:
    api.failures[("GET", OVERVIEW_PATH)] = (503, "database unreachable")

    app = metrics_app(api)

    assert [shown(e.value) for e in app.error] == [
        "Metrics unavailable: the review service is unavailable, try again shortly "
        "(database unreachable)."
    ]
    assert not app.subheader
    del api.failures[("GET", OVERVIEW_PATH)]
    app.run()  # errors are not cached: the next run asks again
    assert not app.error and len(app.subheader) == 10


def test_an_api_without_the_endpoint_says_so(api: MetricsApi) -> None:
    api.failures[("GET", OVERVIEW_PATH)] = (404, "no such endpoint: GET /v1/metrics/overview")

    app = metrics_app(api)

    (error,) = app.error
    assert shown(error.value).startswith(
        "Metrics unavailable: this review API has no metrics endpoint (an older version?)"
    )


def test_a_revoked_key_on_the_metrics_page_signs_out(api: MetricsApi) -> None:
    app = metrics_app(api)
    api.keys.clear()
    app.button(key=metrics_page.REFRESH).click().run()

    assert titles(app) == ["Moderation review: sign in"]
    assert "not authorized" in shown(app.warning[0].value)


# --- the live configuration ---------------------------------------------------------------------


def config_tables(app: AppTest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the section's two tables (keys set, latest changes): the page's last two."""
    items, changes = app.dataframe[-2:]
    return rows(items), rows(changes)


def test_live_configuration_shows_the_keys_set_and_the_latest_changes(api: MetricsApi) -> None:
    app = metrics_app(api)

    assert app.subheader[-1].value == "Live configuration"
    assert not app.warning
    assert "Version in effect: c4." in [shown(c.value) for c in app.caption][-1]
    items, changes = config_tables(app)
    assert items == [
        {"key": "agent.agent_weight", "value": "0.7", "version": "4"},
        {"key": "agent.enabled", "value": "null (the services' own setting)", "version": "2"},
        {"key": "thresholds.remove.spam", "value": "0.9", "version": "3"},
    ]
    assert changes == [  # newest first, as the API lists them
        {
            "when": "2026-11-21 11:20:00 UTC",
            "who": "key:7",
            "key": "agent.agent_weight",
            "change": "0.5 → 0.7",
            "version": "4",
        },
        {
            "when": "2026-11-21 11:10:00 UTC",
            "who": "key:7",
            "key": "thresholds.remove.spam",
            "change": "not set → 0.9",
            "version": "3",
        },
        {
            "when": "2026-11-21 11:05:00 UTC",
            "who": "key:3",
            "key": "agent.enabled",
            "change": "false → null (the services' own setting)",
            "version": "2",
        },
        {
            "when": "2026-11-21 11:00:00 UTC",
            "who": "–",
            "key": "agent.agent_weight",
            "change": "not set → 0.5",
            "version": "–",
        },
    ]


def test_nothing_set_live_says_the_services_run_on_their_own_settings(api: MetricsApi) -> None:
    api.config = static_config()

    app = metrics_app(api)

    assert [i.value for i in app.info] == [
        "Nothing is set live: the services run on their own settings."
    ]
    captions = [shown(c.value) for c in app.caption]
    assert any(c.startswith("Version in effect: static.") for c in captions)
    assert captions[-1] == "No change recorded yet."
    # Latency, reviewer agreement, moderators, models, jobs: no config table.
    assert len(app.dataframe) == 5
    assert not app.warning and not app.error


def test_a_failing_config_call_is_a_warning_and_the_metrics_still_show(api: MetricsApi) -> None:
    api.failures[("GET", CONFIG_PATH)] = (503, "config store unreachable")

    app = metrics_app(api)

    assert [shown(w.value) for w in app.warning] == [
        "Live configuration unavailable: the review service is unavailable, try again shortly "
        "(config store unreachable)."
    ]
    assert not app.error
    assert len(app.subheader) == 10 and app.subheader[-1].value == "Live configuration"
    assert len(app.get("vega_lite_chart")) == 9 and len(app.dataframe) == 5
    del api.failures[("GET", CONFIG_PATH)]
    app.run()  # errors are not cached: the next run asks again
    assert not app.warning and len(app.dataframe) == 7
    assert len(api.queries) == 1  # the overview was still served from the cache


def test_an_api_without_the_config_endpoint_says_so(api: MetricsApi) -> None:
    api.failures[("GET", CONFIG_PATH)] = (404, "no such endpoint: GET /v1/config")

    app = metrics_app(api)

    (warning,) = app.warning
    assert shown(warning.value).startswith(
        "Live configuration unavailable: this review API has no live configuration endpoint"
    )
    assert not app.error and len(app.subheader) == 10


def test_refresh_refetches_the_live_configuration(api: MetricsApi) -> None:
    app = metrics_app(api)
    app.run()
    assert api.calls("GET", CONFIG_PATH) == 1  # cached across reruns
    api.config = static_config()

    app.button(key=metrics_page.REFRESH).click().run()

    assert api.calls("GET", CONFIG_PATH) == 2
    assert "Nothing is set live: the services run on their own settings." in [
        i.value for i in app.info
    ]


def test_a_hostile_config_version_is_shown_as_text(api: MetricsApi) -> None:
    api.config["version"] = "[verify your key](https://evil.example/phish)"

    app = metrics_app(api)

    (caption,) = [c.value for c in app.caption if "Version in effect" in shown(c.value)]
    assert active_markup(caption) == ["strong_open", "strong_close"]
    assert "[verify your key](https://evil.example/phish)" in shown(caption)


def test_config_tables_of_the_api_shapes() -> None:
    state = ConfigStatePublic.model_validate(live_config())

    assert [r["key"] for r in metrics_page.config_item_table(state)] == [
        "agent.agent_weight",
        "agent.enabled",
        "thresholds.remove.spam",
    ]
    assert metrics_page.config_change_table(state)[1]["change"] == "not set → 0.9"
    assert metrics_page.config_value(None) == "not set"
    assert metrics_page.config_value("true") == "true"
    empty = ConfigStatePublic.model_validate(static_config())
    assert metrics_page.config_item_table(empty) == []
    assert metrics_page.config_change_table(empty) == []


# --- the frames ---------------------------------------------------------------------------------


def test_frames_pivot_the_mixes_in_stage_and_taxonomy_order() -> None:
    overview = MetricsOverviewPublic.model_validate(busy_overview())

    decisions = metrics_page.decision_frame(overview)
    categories = metrics_page.category_frame(overview)

    assert list(decisions.index) == ["model", "agent", "human"]
    assert decisions.loc["model"].to_dict() == {"allow": 5, "remove": 0, "review": 5}
    assert list(categories.index) == ["safe", "spam"]
    assert list(categories.columns) == ["model", "agent", "human"]
    assert categories.loc["spam"].to_dict() == {"model": 5, "agent": 3, "human": 3}
    moderators = metrics_page.moderator_frame(overview)
    assert moderators.loc["alice"].to_dict() == {
        "handling (min)": 1.5,
        "time to decision (min)": 10.0,
        "decided": 2,
    }
    assert moderators["handling (min)"].isna().tolist() == [False, True]  # bob: no claim
    assert metrics_page.throughput_frame(overview).loc[:, "posts"].tolist() == [4, 6]
    assert metrics_page.share_frame(overview)["share to humans"].tolist() == [0.5, 0.5]


def test_frames_of_an_empty_overview_are_empty() -> None:
    overview = MetricsOverviewPublic.model_validate(empty_overview())

    assert not metrics_page.has_traffic(overview)
    assert metrics_page.latency_series(overview) == {}
    for frame in (
        metrics_page.decision_frame(overview),
        metrics_page.category_frame(overview),
        metrics_page.share_frame(overview),
        metrics_page.agreement_frame(overview),
        metrics_page.moderator_frame(overview),
        metrics_page.model_score_frame(overview),
    ):
        assert frame.empty
