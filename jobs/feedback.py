"""What the moderators said since the last run, and how well the automated stages agreed.

`load_decisions` frames one window of human decisions (with the posts and the automated verdicts
the moderators saw, as `crud.list_feedback_decisions` reads them); `summarize` turns a window, and
the window before it, into the frames of the nightly report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine
from sqlmodel import Session

from moderation.db import crud
from moderation.taxonomy import CATEGORIES, Decision, Stage

# The automated stages a moderator's decision is compared with, in the report's order.
STAGES: tuple[Stage, ...] = (Stage.MODEL, Stage.AGENT)
CATEGORY_NAMES: list[str] = [category.value for category in CATEGORIES]

# The columns of `load_decisions` and their dtypes: the same schema for an empty window.
DECISION_COLUMNS: dict[str, str] = {
    "event_id": "str",
    "review_id": "str",
    "post_id": "str",
    "text": "str",
    "author_id": "str",
    "label": "str",
    "decision": "str",
    "moderator_id": "str",
    "note": "str",
    "decided_at": "datetime64[us, UTC]",
    "appeal_of": "str",
    "model_decision": "str",
    "model_category": "str",
    "model_confidence": "float64",
    "model_version": "str",
    "model_scores": "object",
    "agent_decision": "str",
    "agent_category": "str",
    "agent_confidence": "float64",
    "agent_version": "str",
}

# PSI is undefined for a category absent from one window: shares are floored at this.
PSI_EPSILON = 1e-4
HARDEST_TEXT_CHARS = 200


def load_decisions(
    engine: Engine, *, until: datetime, since: datetime | None = None
) -> pd.DataFrame:
    """The human decisions with `since < decided_at <= until`, oldest first.

    One row per decision (an appeal's decision is a row of its own), with the post's text and
    author, `appeal_of` (the decision an appeal review disputed, else missing) and, per
    automated stage (`model_*`, `agent_*`), the latest verdict of that stage recorded at or
    before the decision; missing when the stage gave none. Columns: `DECISION_COLUMNS`.

    Args:
        engine: the read model (PostgreSQL, or SQLite in the embedded demo).
        until: the window's end, included.
        since: the window's start, excluded; None reads every decision up to `until`.
    """
    with Session(engine) as session:
        rows = crud.list_feedback_decisions(session, since=since, until=until)
    frame = pd.DataFrame.from_records(
        rows, columns=list(crud.FeedbackDecision._fields), coerce_float=True
    )
    # SQLite hands back naive timestamps, PostgreSQL the session's zone: both become UTC.
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    # A missing verdict's scores arrive as None or NaN depending on the driver: None for all.
    frame["model_scores"] = frame["model_scores"].astype(object)
    frame.loc[frame["model_scores"].isna(), "model_scores"] = None
    return frame.astype(DECISION_COLUMNS)


def latest_per_post(decisions: pd.DataFrame) -> pd.DataFrame:
    """Each post's last decision of the frame: after an appeal, the appeal's outcome counts."""
    ordered = decisions.sort_values("decided_at", kind="stable")
    return ordered.drop_duplicates(subset="post_id", keep="last").reset_index(drop=True)


@dataclass(frozen=True)
class FeedbackCounts:
    """How much human feedback the window holds (every decision, appeals included)."""

    decisions: int
    posts: int
    moderators: int
    removals: int
    appeals: int


# Frames compare element-wise, so the summary keeps identity equality.
@dataclass(frozen=True, eq=False)
class FeedbackSummary:
    """The aggregates of one window of human decisions.

    Agreement, confusion and the hardest examples use each post's last decision in the window
    (`latest_per_post`); `counts` counts every decision.

    Attributes:
        counts: decisions, posts, moderators, removals, appeals.
        by_category: one row per taxonomy category (in order), by human label: `label`, `n`
            (posts), `judged` (of those, posts with a `model` verdict), `category_agreement`
            (share of judged posts whose model category is the label), `decision_agreement`
            (share whose model decision equals the human allow/remove; a `review` verdict does
            not agree), `deferred` (share with a `review` verdict). NaN when `judged` is 0.
        by_stage: one row per automated stage (`model`, `agent`): `stage`, `n` (posts with a
            verdict of that stage), `category_agreement`, `decision_agreement`, `deferred`.
        confusion: post counts, index `label` (human), columns `model_category` (the model
            stage's primary category), both every taxonomy category in order, zeros kept.
        drift: one row per category: `label`, `current_n`, `previous_n` (posts),
            `current_share`, `previous_share`, `difference` (current − previous); shares are NaN
            for an empty window.
        drift_tvd: total variation distance of the two label mixes, ½·Σ|current − previous|
            (0 same mix … 1 disjoint); None when a window is empty.
        drift_psi: population stability index, Σ (current − previous)·ln(current / previous)
            with shares floored at `PSI_EPSILON`; None when a window is empty.
        hardest: confident and wrong verdicts, most confident first: `post_id`, `text`
            (truncated to `HARDEST_TEXT_CHARS`), `label` (human), `predicted_category`,
            `confidence`, `stage`. A post wrong in both stages appears once per stage.
    """

    counts: FeedbackCounts
    by_category: pd.DataFrame
    by_stage: pd.DataFrame
    confusion: pd.DataFrame
    drift: pd.DataFrame
    drift_tvd: float | None
    drift_psi: float | None
    hardest: pd.DataFrame


def _share(mask: pd.Series) -> float:
    return float(mask.mean()) if len(mask) else math.nan


def _agreement(final: pd.DataFrame, stage: Stage) -> dict[str, float]:
    """How often `stage` agreed with the humans, over the posts it gave a verdict on."""
    judged = final[final[f"{stage.value}_decision"].notna()]
    decision = judged[f"{stage.value}_decision"]
    return {
        "category_agreement": _share(judged[f"{stage.value}_category"] == judged["label"]),
        "decision_agreement": _share(decision == judged["decision"]),
        "deferred": _share(decision == Decision.REVIEW.value),
    }


def _by_category(final: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name in CATEGORY_NAMES:
        labelled = final[final["label"] == name]
        rows.append(
            {
                "label": name,
                "n": len(labelled),
                "judged": int(labelled["model_decision"].notna().sum()),
                **_agreement(labelled, Stage.MODEL),
            }
        )
    return pd.DataFrame(rows).astype({"label": "str", "n": "int64", "judged": "int64"})


def _by_stage(final: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "stage": stage.value,
            "n": int(final[f"{stage.value}_decision"].notna().sum()),
            **_agreement(final, stage),
        }
        for stage in STAGES
    ]
    return pd.DataFrame(rows).astype({"stage": "str", "n": "int64"})


def _confusion(final: pd.DataFrame) -> pd.DataFrame:
    judged = final[final["model_category"].notna()]
    counts = judged.groupby(["label", "model_category"]).size()
    matrix = counts.unstack(fill_value=0).reindex(
        index=CATEGORY_NAMES, columns=CATEGORY_NAMES, fill_value=0
    )
    matrix.index.name = "label"
    matrix.columns.name = "model_category"
    return matrix.astype("int64")


def _label_counts(final: pd.DataFrame) -> pd.Series:
    return final["label"].value_counts().reindex(CATEGORY_NAMES, fill_value=0).astype("int64")


def _drift(
    current: pd.DataFrame, previous: pd.DataFrame
) -> tuple[pd.DataFrame, float | None, float | None]:
    current_n, previous_n = _label_counts(current), _label_counts(previous)
    # An empty window has no mix: NaN shares, not a division by zero.
    current_share = current_n / current_n.sum() if len(current) else current_n * math.nan
    previous_share = previous_n / previous_n.sum() if len(previous) else previous_n * math.nan
    drift = pd.DataFrame(
        {
            "label": CATEGORY_NAMES,
            "current_n": current_n.to_numpy(),
            "previous_n": previous_n.to_numpy(),
            "current_share": current_share.to_numpy(dtype="float64"),
            "previous_share": previous_share.to_numpy(dtype="float64"),
        }
    ).astype({"label": "str"})
    drift["difference"] = drift["current_share"] - drift["previous_share"]
    if not len(current) or not len(previous):
        return drift, None, None
    tvd = 0.5 * float(drift["difference"].abs().sum())
    p = np.maximum(drift["current_share"].to_numpy(), PSI_EPSILON)
    q = np.maximum(drift["previous_share"].to_numpy(), PSI_EPSILON)
    psi = float(np.sum((p - q) * np.log(p / q)))
    return drift, tvd, psi


def _truncate(text: str) -> str:
    if len(text) <= HARDEST_TEXT_CHARS:
        return text
    return text[: HARDEST_TEXT_CHARS - 1] + "…"


def _hardest(final: pd.DataFrame, limit: int) -> pd.DataFrame:
    wrong = []
    for stage in STAGES:
        predicted = final[f"{stage.value}_category"]
        rows = final[predicted.notna() & (predicted != final["label"])]
        wrong.append(
            pd.DataFrame(
                {
                    "post_id": rows["post_id"],
                    "text": rows["text"].fillna("").map(_truncate),
                    "label": rows["label"],
                    "predicted_category": rows[f"{stage.value}_category"],
                    "confidence": rows[f"{stage.value}_confidence"],
                    "stage": stage.value,
                }
            )
        )
    ranked = pd.concat(wrong, ignore_index=True).sort_values(
        ["confidence", "post_id", "stage"], ascending=[False, True, True], kind="stable"
    )
    return (
        ranked.head(limit)
        .reset_index(drop=True)
        .astype(
            {
                "post_id": "str",
                "text": "str",
                "label": "str",
                "predicted_category": "str",
                "confidence": "float64",
                "stage": "str",
            }
        )
    )


def summarize(current: pd.DataFrame, previous: pd.DataFrame, *, hardest: int) -> FeedbackSummary:
    """Aggregate a window of decisions against the window before it (for the drift).

    Args:
        current: this run's window, as `load_decisions` returns it (may be empty).
        previous: the previous window, same columns (may be empty: the first run has none).
        hardest: how many confident-and-wrong verdicts to keep.
    """
    final = latest_per_post(current)
    drift, tvd, psi = _drift(final, latest_per_post(previous))
    counts = FeedbackCounts(
        decisions=len(current),
        posts=int(current["post_id"].nunique()),
        moderators=int(current["moderator_id"].nunique()),
        removals=int((current["decision"] == Decision.REMOVE.value).sum()),
        appeals=int(current["appeal_of"].notna().sum()),
    )
    return FeedbackSummary(
        counts=counts,
        by_category=_by_category(final),
        by_stage=_by_stage(final),
        confusion=_confusion(final),
        drift=drift,
        drift_tvd=tvd,
        drift_psi=psi,
        hardest=_hardest(final, hardest),
    )
