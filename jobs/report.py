"""The nightly report's feedback section: Markdown tables and PNG plots of a `FeedbackSummary`.

Plots are drawn on matplotlib's Agg canvas (no display, no pyplot global state), imported only
when a plot is drawn. The PNGs carry no software or date metadata, so a rerun on the same
summary writes identical bytes.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from jobs.feedback import PSI_EPSILON, FeedbackSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONFUSION_PNG = "confusion.png"
AGREEMENT_PNG = "agreement.png"
DRIFT_PNG = "drift.png"

MISSING = "—"
# Post text is untrusted: these characters could make it a link, an image, a code span or a
# new table cell (emphasis markers are left alone: harmless, and labels keep their underscores).
_MARKDOWN_SPECIAL = "\\`[]|"


def escape_cell(value: object) -> str:
    """A table cell showing `value` as text: no link, image, code or raw HTML; one table row."""
    text = str(value)
    escaped = "".join(f"\\{char}" if char in _MARKDOWN_SPECIAL else char for char in text)
    return "<br>".join(html.escape(escaped, quote=False).splitlines())


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; every cell goes through `escape_cell`."""
    lines = [
        "| " + " | ".join(escape_cell(name) for name in header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _percent(value: float | None) -> str:
    return MISSING if _missing(value) else f"{value:.1%}"


def _points(value: float) -> str:
    return MISSING if _missing(value) else f"{value * 100:+.1f} pp"


def _number(value: float | None, digits: int = 3) -> str:
    return MISSING if _missing(value) else f"{value:.{digits}f}"


def _save(figure: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # the figure draws on Agg whatever backend pyplot has chosen
    figure.savefig(path, format="png", dpi=100, metadata={"Software": None})


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_confusion(confusion: pd.DataFrame, path: Path) -> None:
    """Heatmap of the confusion matrix with the count in every cell."""
    figure = _figure(7.5, 6.5)
    axes = figure.add_subplot()
    counts = confusion.to_numpy()
    image = axes.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, label="posts")
    # Dark text on light cells, light text on dark ones.
    threshold = counts.max() / 2
    for row, column in itertools.product(range(counts.shape[0]), range(counts.shape[1])):
        value = int(counts[row, column])
        color = "white" if value > threshold else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    axes.set_xticks(range(len(confusion.columns)), [str(c) for c in confusion.columns])
    axes.set_yticks(range(len(confusion.index)), [str(i) for i in confusion.index])
    axes.tick_params(axis="x", labelrotation=45)
    axes.set_xlabel("fast model's primary category")
    axes.set_ylabel("human label")
    axes.set_title("Confusion matrix (posts)")
    _save(figure, path)


def _grouped_bars(
    frame: pd.DataFrame, *, labels: str, series: dict[str, str], ylabel: str, title: str, path: Path
) -> None:
    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    positions = range(len(frame))
    for index, (column, name) in enumerate(series.items()):
        offsets = [p - 0.4 + width * (index + 0.5) for p in positions]
        axes.bar(offsets, frame[column].fillna(0.0).to_numpy(), width, label=name)
    axes.set_xticks(list(positions), frame[labels].tolist())
    axes.tick_params(axis="x", labelrotation=45)
    axes.set_ylim(0, 1)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    _save(figure, path)


def plot_agreement(by_category: pd.DataFrame, path: Path) -> None:
    """Category and decision agreement of the fast model, per human label it judged."""
    _grouped_bars(
        by_category[by_category["judged"] > 0],
        labels="label",
        series={"category_agreement": "category", "decision_agreement": "decision"},
        ylabel="share of posts that agree",
        title="Fast model vs human, by human label",
        path=path,
    )


def plot_drift(drift: pd.DataFrame, path: Path) -> None:
    """Share of each human label in the previous and the current window."""
    _grouped_bars(
        drift,
        labels="label",
        series={"previous_share": "previous window", "current_share": "current window"},
        ylabel="share of posts",
        title="Category mix of the human labels",
        path=path,
    )


def _counts_line(summary: FeedbackSummary) -> str:
    counts = summary.counts
    return (
        f"{counts.decisions} human decision(s) on {counts.posts} post(s) by "
        f"{counts.moderators} moderator(s): {counts.removals} removal(s), "
        f"{counts.appeals} appeal decision(s).\n"
    )


def _stage_section(summary: FeedbackSummary) -> list[str]:
    rows = [
        [
            row["stage"],
            row["n"],
            _percent(row["category_agreement"]),
            _percent(row["decision_agreement"]),
            _percent(row["deferred"]),
        ]
        for row in summary.by_stage.to_dict("records")
    ]
    header = ["stage", "verdicts", "category agreement", "decision agreement", "deferred"]
    return ["### Agreement by stage\n", markdown_table(header, rows)]


def _category_section(summary: FeedbackSummary, directory: Path) -> list[str]:
    by_category = summary.by_category
    rows = [
        [
            row["label"],
            row["n"],
            row["judged"],
            _percent(row["category_agreement"]),
            _percent(row["decision_agreement"]),
            _percent(row["deferred"]),
        ]
        for row in by_category.to_dict("records")
    ]
    header = ["human label", "posts", "judged", "category", "decision", "deferred"]
    lines = [
        "### Fast model agreement by human label\n",
        "Shares over the posts the fast model judged; a `review` verdict does not agree on the "
        "decision and counts as deferred.\n",
        markdown_table(header, rows),
    ]
    if by_category["judged"].sum() > 0:
        plot_agreement(by_category, directory / AGREEMENT_PNG)
        lines.append(f"![Fast model agreement by human label]({AGREEMENT_PNG})\n")
    else:
        lines.append("_No agreement plot: the fast model judged none of these posts._\n")
    return lines


def _confusion_section(summary: FeedbackSummary, directory: Path) -> list[str]:
    confusion = summary.confusion
    lines = ["### Confusion matrix\n", "Rows: human label; columns: the fast model's category.\n"]
    if int(confusion.to_numpy().sum()) == 0:
        lines.append("_No confusion matrix: no post has both a human label and a model verdict._\n")
        return lines
    plot_confusion(confusion, directory / CONFUSION_PNG)
    header = ["human label", *[str(column) for column in confusion.columns]]
    rows = [
        [label, *values]
        for label, values in zip(confusion.index, confusion.to_numpy(), strict=True)
    ]
    lines += [f"![Confusion matrix]({CONFUSION_PNG})\n", markdown_table(header, rows)]
    return lines


def _drift_section(summary: FeedbackSummary, directory: Path) -> list[str]:
    drift = summary.drift
    if summary.drift_tvd is None:
        overall = "No drift measure: it needs decisions in both windows.\n"
    else:
        overall = (
            f"Total variation distance {_number(summary.drift_tvd)} (the share of the mix that "
            f"moved, 0–1); PSI {_number(summary.drift_psi)} (shares floored at {PSI_EPSILON:g}).\n"
        )
    lines = ["### Category-mix drift\n", overall]
    rows = [
        [
            row["label"],
            row["previous_n"],
            _percent(row["previous_share"]),
            row["current_n"],
            _percent(row["current_share"]),
            _points(row["difference"]),
        ]
        for row in drift.to_dict("records")
    ]
    header = ["human label", "previous", "previous share", "current", "current share", "change"]
    lines.append(markdown_table(header, rows))
    if drift["current_n"].sum() + drift["previous_n"].sum() > 0:
        plot_drift(drift, directory / DRIFT_PNG)
        lines.append(f"![Category-mix drift]({DRIFT_PNG})\n")
    else:
        lines.append("_No drift plot: neither window has a human decision._\n")
    return lines


def _hardest_section(summary: FeedbackSummary) -> list[str]:
    lines = ["### Hardest examples (confident and wrong)\n"]
    if summary.hardest.empty:
        lines.append("_None: no automated verdict disagreed with a human label._\n")
        return lines
    rows = [
        [
            row["post_id"],
            row["stage"],
            row["label"],
            row["predicted_category"],
            _number(row["confidence"], 2),
            row["text"],
        ]
        for row in summary.hardest.to_dict("records")
    ]
    header = ["post", "stage", "human label", "predicted", "confidence", "text"]
    lines.append(markdown_table(header, rows))
    return lines


def render_feedback(summary: FeedbackSummary, directory: Path) -> str:
    """Write the plots into `directory` and return the Markdown section that shows them.

    Image links are relative to `directory`: write the Markdown file there. A plot without data
    is not drawn (its file is not written) and the text says so.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["## Human feedback\n", _counts_line(summary)]
    if summary.counts.decisions == 0:
        lines.append("No human decision in this window: nothing to compare.\n")
    lines += _stage_section(summary)
    lines += _category_section(summary, directory)
    lines += _confusion_section(summary, directory)
    lines += _drift_section(summary, directory)
    lines += _hardest_section(summary)
    return "\n".join(lines)
