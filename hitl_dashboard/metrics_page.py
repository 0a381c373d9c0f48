"""The Metrics page: the pipeline and the review queue over the last hour, day or week.

One call, `GET /v1/metrics/overview`, cached for `CACHE_SECONDS` per API key and window; the
frames the charts draw are built by plain functions (tested without a browser). Below it, the
live configuration the services apply (`GET /v1/config`, cached the same way, per key): a
failing call there is a warning in its own section, the metrics above still show.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from hitl_dashboard import safe_text, session, ui
from hitl_dashboard.api_client import ApiError, ReviewApi
from moderation.db.schemas import ConfigStatePublic, MetricsOverviewPublic

# Window label → (hours, bucket minutes): about 12 to 28 points per line.
WINDOWS: dict[str, tuple[float, int]] = {"1 h": (1, 5), "24 h": (24, 60), "7 d": (168, 360)}
DEFAULT_WINDOW = "24 h"
CACHE_SECONDS = 30
# Widget keys (`hitl_` so that signing out forgets them; CSS classes for browser tests).
WINDOW = "hitl_metrics_window"
LATENCY_SERIES = "hitl_metrics_latency"
REFRESH = "metrics_refresh"

STAGE_ORDER = ("model", "agent", "human")
MEASURE_LABELS = {"verdict": "verdict latency", "end_to_end": "end to end"}
SCORE_LABELS = {
    "gold_macro_f1": "gold macro F1",
    "time_split_macro_f1": "time-split macro F1",
    "validation_macro_f1": "validation macro F1",
}


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Loading metrics…", max_entries=256)
def load_overview(
    _client: ReviewApi, cache_key: str, hours: float, bucket_minutes: int
) -> MetricsOverviewPublic:
    """The overview, cached per API key (`cache_key`, the key's digest) and window.

    Streamlit's cache is shared by every session of the server: keying it by the key means a
    moderator is only ever served what their own key fetched. `_client` is not hashed.
    """
    return _client.metrics_overview(hours=hours, bucket_minutes=bucket_minutes)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Loading the live configuration…", max_entries=256)
def load_config(_client: ReviewApi, cache_key: str) -> ConfigStatePublic:
    """The live configuration, cached per API key (`cache_key`) like `load_overview`."""
    return _client.live_config()


# --- frames for the charts (plain functions) --------------------------------------------------


def throughput_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """One row per bucket: posts, verdicts per stage, human decisions."""
    found = {stage for bucket in overview.throughput for stage in bucket.verdicts}
    stages = [s for s in dict.fromkeys([*STAGE_ORDER, *sorted(found)]) if s in found]
    rows = [
        {
            "time": bucket.start,
            "posts": bucket.posts,
            **{f"{stage} verdicts": bucket.verdicts.get(stage, 0) for stage in stages},
            "human decisions": bucket.decisions,
        }
        for bucket in overview.throughput
    ]
    return pd.DataFrame(rows).set_index("time") if rows else pd.DataFrame()


def has_traffic(overview: MetricsOverviewPublic) -> bool:
    """Whether anything was submitted, classified or decided in the window."""
    return any(
        bucket.posts or bucket.decisions or any(bucket.verdicts.values())
        for bucket in overview.throughput
    )


def latency_series(overview: MetricsOverviewPublic) -> dict[str, tuple[str, str]]:
    """Label ("model · verdict latency") → (stage, measure), for the series with percentiles."""
    return {
        f"{p.stage} · {MEASURE_LABELS.get(p.measure, p.measure)}": (p.stage, p.measure)
        for p in overview.latency_window
    }


def latency_frame(overview: MetricsOverviewPublic, stage: str, measure: str) -> pd.DataFrame:
    """One row per bucket with verdicts: p50, p95, p99 (ms) of one stage and measure."""
    rows = [
        {"time": p.start, "p50": p.p50_ms, "p95": p.p95_ms, "p99": p.p99_ms}
        for p in overview.latency
        if p.start is not None and p.stage == stage and p.measure == measure
    ]
    return pd.DataFrame(rows).set_index("time") if rows else pd.DataFrame()


def latency_table(overview: MetricsOverviewPublic) -> list[dict[str, Any]]:
    """The whole window's percentiles, one row per stage and measure."""
    return [
        {
            "stage": p.stage,
            "measure": MEASURE_LABELS.get(p.measure, p.measure),
            "verdicts": p.count,
            "p50 ms": p.p50_ms,
            "p95 ms": p.p95_ms,
            "p99 ms": p.p99_ms,
        }
        for p in overview.latency_window
    ]


def decision_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """Stages (rows) × decisions (columns): how many verdicts or human decisions."""
    mix = overview.decision_mix
    if not mix:
        return pd.DataFrame()
    frame = pd.DataFrame([m.model_dump(include={"stage", "decision", "count"}) for m in mix])
    stages = list(dict.fromkeys(frame["stage"]))
    table = frame.pivot_table(
        index="stage", columns="decision", values="count", aggfunc="sum", fill_value=0
    )
    return table.reindex(stages)


def category_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """Categories (rows) × stages (columns): how many verdicts or human labels."""
    mix = overview.category_mix
    if not mix:
        return pd.DataFrame()
    frame = pd.DataFrame([m.model_dump(include={"stage", "category", "count"}) for m in mix])
    categories = list(dict.fromkeys(frame["category"]))
    stages = list(dict.fromkeys(frame["stage"]))
    table = frame.pivot_table(
        index="category", columns="stage", values="count", aggfunc="sum", fill_value=0
    )
    return table.reindex(index=categories, columns=stages)


def share_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """One row per bucket with posts: the share of them sent to human review."""
    rows = [
        {"time": bucket.start, "share to humans": bucket.share_to_humans}
        for bucket in overview.throughput
        if bucket.share_to_humans is not None
    ]
    return pd.DataFrame(rows).set_index("time") if rows else pd.DataFrame()


def agreement_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """Human labels (rows) × model / agent: the share of decisions where the stage agreed."""
    rows = [
        {"label": a.label, "model": a.model_agreement, "agent": a.agent_agreement}
        for a in overview.agreement
    ]
    return pd.DataFrame(rows).set_index("label") if rows else pd.DataFrame()


def reviewer_agreement_table(overview: MetricsOverviewPublic) -> list[dict[str, Any]]:
    """Review categories (and all of them): double reviews, agreement, Cohen's kappa."""
    rows = list(overview.reviewer_agreement)
    if overview.reviewer_agreement_total is not None:
        rows.append(overview.reviewer_agreement_total)
    return [
        {
            "category": row.category,
            "pairs": row.pairs,
            "agreement": ui.format_rate(row.observed_agreement),
            "kappa": "–" if row.kappa is None else f"{row.kappa:.2f}",
            "awaiting a second judgement": row.awaiting_second,
        }
        for row in rows
    ]


def kappa_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """Review categories with a defined kappa (rows): Cohen's kappa."""
    rows = [
        {"category": row.category, "kappa": row.kappa}
        for row in overview.reviewer_agreement
        if row.kappa is not None
    ]
    return pd.DataFrame(rows).set_index("category") if rows else pd.DataFrame()


def moderator_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """Moderators (rows): mean handling and time to decision in minutes, decisions."""
    rows = [
        {
            "moderator": m.moderator_display or m.moderator,
            "handling (min)": _minutes(m.mean_handling_seconds),
            "time to decision (min)": _minutes(m.mean_time_to_decision_seconds),
            "decided": m.decided,
        }
        for m in overview.queue.moderators
    ]
    return pd.DataFrame(rows).set_index("moderator") if rows else pd.DataFrame()


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 2)


def model_score_frame(overview: MetricsOverviewPublic) -> pd.DataFrame:
    """Long form for the scores chart: one row per model version and score it has."""
    rows = [
        {
            "created_at": model.created_at,
            "version": model.version,
            "kind": model.kind,
            "status": model.status,
            "score": label,
            "value": value,
        }
        for model in overview.model_versions
        for field, label in SCORE_LABELS.items()
        if (value := getattr(model, field)) is not None
    ]
    return pd.DataFrame(rows)


def model_table(overview: MetricsOverviewPublic) -> list[dict[str, Any]]:
    """The registry, newest first."""
    return [
        {
            "created": ui.format_time(model.created_at),
            "kind": model.kind,
            "version": model.version,
            "status": model.status,
            **{label: getattr(model, field) for field, label in SCORE_LABELS.items()},
            "eval loss": model.eval_loss,
            "promoted": model.promoted,
            "run": model.run_id,
        }
        for model in reversed(overview.model_versions)
    ]


def job_table(overview: MetricsOverviewPublic) -> list[dict[str, Any]]:
    """The latest job runs, newest first."""
    return [
        {
            "run": run.id,
            "job": run.job,
            "status": run.status,
            "started": ui.format_time(run.started_at),
            "duration": ui.format_duration(run.duration_seconds),
            "counts": ", ".join(f"{k} {v}" for k, v in run.counts.items()),
            "promoted": run.promoted,
            "error": run.error,
        }
        for run in overview.job_runs
    ]


def config_value(text: str | None) -> str:
    """A stored JSON value as shown: `not set` for none, `null` marked as the services' own."""
    if text is None:
        return "not set"
    return f"{text} (the services' own setting)" if text == "null" else text


def config_item_table(state: ConfigStatePublic) -> list[dict[str, Any]]:
    """The keys set live, by key."""
    return [
        {"key": item.key, "value": config_value(item.value), "version": item.version}
        for item in state.items
    ]


def config_change_table(state: ConfigStatePublic) -> list[dict[str, Any]]:
    """The latest changes, newest first (as the API lists them)."""
    return [
        {
            "when": ui.format_time(change.at),
            "who": change.actor_display or change.actor or "–",
            "key": change.key,
            "change": f"{config_value(change.before)} → {config_value(change.after)}",
            "version": change.version or "–",
        }
        for change in state.changes
    ]


# --- rendering --------------------------------------------------------------------------------


def _scores_chart(frame: pd.DataFrame) -> alt.LayerChart:
    encoding = {
        "x": alt.X("created_at:T", title="registered"),
        "y": alt.Y("value:Q", title="macro F1", scale=alt.Scale(zero=False)),
        "color": alt.Color("score:N", title=None),
        "tooltip": [
            "version:N",
            "kind:N",
            "status:N",
            "score:N",
            alt.Tooltip("value:Q", format=".3f"),
        ],
    }
    line = alt.Chart(frame).mark_line().encode(**encoding)
    points = (
        alt.Chart(frame)
        .mark_point(filled=True, size=70)
        .encode(**encoding, shape=alt.Shape("status:N", title="status"))
    )
    return alt.LayerChart(layer=[line, points])


def _render_throughput(overview: MetricsOverviewPublic) -> None:
    st.subheader("Throughput")
    if not has_traffic(overview):
        st.info("Nothing was submitted, classified or decided in this window yet.")
        return
    st.line_chart(throughput_frame(overview), x_label="time", y_label="per bucket")


def _render_latency(overview: MetricsOverviewPublic) -> None:
    st.subheader("Latency")
    series = latency_series(overview)
    if not series:
        st.info("No verdicts in this window yet: no latency to show.")
        return
    label = st.selectbox("Series", list(series), key=LATENCY_SERIES)
    stage, measure = series[label or next(iter(series))]
    st.line_chart(latency_frame(overview, stage, measure), x_label="time", y_label="ms")
    st.dataframe(latency_table(overview), hide_index=True, key="metrics_latency_table")
    sample = overview.latency_sample
    note = (
        "Verdict latency: submission to verdict, as the worker measured it. End to end: "
        "submission to the verdict being recorded (through Kafka and the recorder)."
    )
    if sample.truncated:
        note += (
            f" Percentiles from the newest {sample.rows:,} verdicts only (the cap), back to "
            f"{ui.format_time(sample.oldest)}."
        )
    st.caption(note)


def _render_mix(overview: MetricsOverviewPublic) -> None:
    st.subheader("Decisions and categories")
    if not overview.decision_mix:
        st.info("No verdicts or decisions in this window yet.")
        return
    decisions, categories = st.columns(2)
    with decisions:
        st.markdown("**Decision by stage**")
        # Horizontal bars keep the names readable in half the page's width (with
        # `horizontal`, x_label names the index, drawn vertically).
        st.bar_chart(decision_frame(overview), x_label="stage", y_label="count", horizontal=True)
    with categories:
        st.markdown("**Category by stage** (primary category; human: the label)")
        st.bar_chart(
            category_frame(overview),
            x_label="category",
            y_label="count",
            horizontal=True,
            stack=False,
        )


def _render_humans(overview: MetricsOverviewPublic) -> None:
    st.subheader("Sent to humans")
    share = overview.to_humans
    rate, posts, sent = st.columns(3)
    rate.metric("Share to humans", ui.format_rate(share.share))
    posts.metric("Posts", f"{share.posts:,}")
    sent.metric("Sent to review", f"{share.sent_to_humans:,}")
    frame = share_frame(overview)
    if frame.empty:
        st.info("No posts in this window yet.")
        return
    st.line_chart(frame, x_label="time", y_label="share of the bucket's posts")
    st.caption("Posts given a review (appeals not counted), by the time they were submitted.")


def _render_agreement(overview: MetricsOverviewPublic) -> None:
    st.subheader("Model vs human agreement")
    total = overview.agreement_total
    if total.decisions == 0:
        st.info("No human decisions in this window yet: nothing to compare.")
        return
    model, agent, decided = st.columns(3)
    model.metric("Model agrees", ui.format_rate(total.model_agreement))
    agent.metric("Agent agrees", ui.format_rate(total.agent_agreement))
    decided.metric("Human decisions", f"{total.decisions:,}")
    st.bar_chart(agreement_frame(overview), x_label="human label", y_label="agreement", stack=False)
    st.caption(
        "Share of human decisions where the stage's primary category was the moderator's label."
        " Only posts that reached a human are compared: the hard cases, not the traffic."
    )


def _render_reviewer_agreement(overview: MetricsOverviewPublic) -> None:
    st.subheader("Reviewer agreement")
    total = overview.reviewer_agreement_total
    if total is None:
        st.info(
            "No double reviews in this window. A share of reviews goes to two moderators "
            "when `review.double_review_share` is above 0 (`MODERATION_REVIEW__"
            "DOUBLE_REVIEW_SHARE`)."
        )
        return
    pairs, share, kappa = st.columns(3)
    pairs.metric("Double reviews", f"{total.pairs:,}")
    share.metric("Moderators agree", ui.format_rate(total.observed_agreement))
    kappa.metric("Cohen's kappa", "–" if total.kappa is None else f"{total.kappa:.2f}")
    frame = kappa_frame(overview)
    if not frame.empty:
        st.bar_chart(frame, x_label="review category", y_label="Cohen's kappa")
    st.dataframe(reviewer_agreement_table(overview), hide_index=True)
    st.caption(
        "Two moderators judge the same review without seeing each other's choice; compared on "
        "the label. Kappa is agreement beyond chance: 1 is perfect, 0 is what chance gives, "
        "below 0.6 the policy text or the training needs a look. None (–) when one label "
        "explains everything."
    )


def _render_queue(overview: MetricsOverviewPublic) -> None:
    st.subheader("Review queue")
    queue = overview.queue
    pending, escalated, claimed, oldest = st.columns(4)
    pending.metric("Pending", queue.pending)
    escalated.metric("Escalated", queue.escalated)
    claimed.metric("Claimed", queue.claimed)
    oldest.metric("Oldest waiting", ui.format_duration(queue.oldest_pending_age_seconds))
    frame = moderator_frame(overview)
    if frame.empty:
        st.info("No review was decided in this window yet.")
        return
    st.markdown("**Mean handling time per moderator** (their first claim to the decision)")
    st.bar_chart(frame[["handling (min)"]], x_label="moderator", y_label="minutes", horizontal=True)
    st.dataframe(frame, key="metrics_moderators")


def _render_models(overview: MetricsOverviewPublic) -> None:
    st.subheader("Model versions")
    if not overview.model_versions:
        st.info("No model registered yet.")
        return
    scores = model_score_frame(overview)
    if scores.empty:
        st.caption("No registered version carries a macro F1 score yet.")
    else:
        st.altair_chart(_scores_chart(scores), key="metrics_model_scores")
    st.dataframe(model_table(overview), hide_index=True, key="metrics_models")


def _render_jobs(overview: MetricsOverviewPublic) -> None:
    st.subheader("Nightly runs")
    if not overview.job_runs:
        st.info("No job has run yet.")
        return
    st.dataframe(job_table(overview), hide_index=True, key="metrics_jobs")


def _render_config(client: ReviewApi) -> None:
    st.subheader("Live configuration")
    try:
        state = load_config(client, client.cache_key)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.warning(safe_text.escape_markdown(f"Live configuration unavailable: {exc.message}."))
        return
    st.caption(
        f"Version in effect: **{safe_text.escape_markdown(state.version)}**. What the worker "
        "and the agent service apply over their own settings, within seconds of a change."
    )
    if state.items:
        st.dataframe(config_item_table(state), hide_index=True, key="metrics_config_items")
    else:
        st.info("Nothing is set live: the services run on their own settings.")
    if not state.changes:
        st.caption("No change recorded yet.")
        return
    st.markdown("**Latest changes** (newest first)")
    st.dataframe(config_change_table(state), hide_index=True, key="metrics_config_changes")


def _window_caption(overview: MetricsOverviewPublic) -> str:
    window = overview.window
    return (
        f"{ui.format_time(window.since)} → {ui.format_time(window.until)}, in "
        f"{window.bucket_minutes}-minute buckets; refreshed at most every {CACHE_SECONDS} s."
    )


def render() -> None:
    """The Metrics page."""
    client = session.require_client()
    st.title("Metrics")
    choice, refresh = st.columns([4, 1], vertical_alignment="bottom")
    with choice:
        label = st.segmented_control(
            "Window", list(WINDOWS), default=DEFAULT_WINDOW, required=True, key=WINDOW
        )
    hours, bucket_minutes = WINDOWS[label or DEFAULT_WINDOW]
    if refresh.button("Refresh", key=REFRESH, icon=":material/refresh:"):
        load_overview.clear(client, client.cache_key, hours, bucket_minutes)
        load_config.clear(client, client.cache_key)
    try:
        overview = load_overview(client, client.cache_key, hours, bucket_minutes)
    except ApiError as exc:
        session.handle_unauthorized(exc)
        st.error(safe_text.escape_markdown(f"Metrics unavailable: {exc.message}."))
        return
    st.caption(_window_caption(overview))
    _render_throughput(overview)
    _render_latency(overview)
    _render_mix(overview)
    _render_humans(overview)
    _render_agreement(overview)
    _render_reviewer_agreement(overview)
    _render_queue(overview)
    _render_models(overview)
    _render_jobs(overview)
    _render_config(client)
