"""The feedback section of the nightly report: PNG plots, Markdown links, escaping, determinism."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import image

from jobs.feedback import DECISION_COLUMNS, FeedbackSummary, summarize
from jobs.report import (
    AGREEMENT_PNG,
    CONFUSION_PNG,
    DRIFT_PNG,
    escape_cell,
    markdown_table,
    render_feedback,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = (CONFUSION_PNG, AGREEMENT_PNG, DRIFT_PNG)
T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
HOSTILE = "spam | more\nline two <script>x</script> ![img](http://tracker.example/p.png)"


def decisions(*rows: dict[str, Any]) -> pd.DataFrame:
    """A frame shaped as `load_decisions` returns it, from the columns each row sets."""
    filled = [
        {
            "event_id": f"e{number}",
            "review_id": f"review-{row['post_id']}",
            "author_id": "u1",
            "moderator_id": "mod-1",
            "decided_at": T0 + timedelta(minutes=number),
            **row,
        }
        for number, row in enumerate(rows)
    ]
    return pd.DataFrame(filled, columns=list(DECISION_COLUMNS)).astype(DECISION_COLUMNS)


def verdict(decision: str, category: str, confidence: float) -> dict[str, Any]:
    return {
        "model_decision": decision,
        "model_category": category,
        "model_confidence": confidence,
        "model_version": "fast-1",
    }


def sample_summary() -> FeedbackSummary:
    current = decisions(
        {"post_id": "p1", "text": HOSTILE, "label": "safe", "decision": "allow"}
        | verdict("remove", "spam", 0.97),
        {"post_id": "p2", "text": "buy now", "label": "spam", "decision": "remove"}
        | verdict("remove", "spam", 0.9),
        {"post_id": "p3", "text": "you idiot", "label": "harassment", "decision": "remove"}
        | verdict("review", "harassment", 0.5),
    )
    previous = decisions({"post_id": "p0", "text": "hi", "label": "safe", "decision": "allow"})
    return summarize(current, previous, hardest=5)


def test_plots_are_valid_pngs_linked_from_the_markdown(tmp_path: Path) -> None:
    markdown = render_feedback(sample_summary(), tmp_path)

    for name in PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        pixels = image.imread(tmp_path / name)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert f"]({name})" in markdown
        assert b"Software" not in data  # no library version in the file
    assert markdown.startswith("## Human feedback")


def test_rerun_writes_identical_bytes(tmp_path: Path) -> None:
    first = render_feedback(sample_summary(), tmp_path / "a")
    second = render_feedback(sample_summary(), tmp_path / "b")

    assert first == second
    for name in PLOTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_post_text_cannot_break_the_table_or_inject_markup(tmp_path: Path) -> None:
    markdown = render_feedback(sample_summary(), tmp_path)

    hardest = markdown.split("### Hardest examples")[1]
    table = [line for line in hardest.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1  # header, separator, the one wrong verdict
    row = table[2]
    assert "spam \\| more<br>line two" in row
    assert "&lt;script&gt;x&lt;/script&gt;" in row and "<script>" not in markdown
    assert "!\\[img\\](http://tracker.example/p.png)" in row
    # Every unescaped pipe is a cell border: the row has as many as the header.
    assert row.count("|") - row.count("\\|") == table[0].count("|")


def test_markdown_table_escapes_cells() -> None:
    table = markdown_table(["a", "b|c"], [["x\ny", "`code` [l](u)"], [1, None]])

    assert table.splitlines() == [
        "| a | b\\|c |",
        "|---|---|",
        "| x<br>y | \\`code\\` \\[l\\](u) |",
        "| 1 | None |",
    ]
    assert escape_cell("a & b") == "a &amp; b"


def test_a_night_without_decisions_draws_no_plot(tmp_path: Path) -> None:
    empty = decisions()

    markdown = render_feedback(summarize(empty, empty, hardest=5), tmp_path)

    assert list(tmp_path.iterdir()) == []
    assert "No human decision in this window" in markdown
    assert "No agreement plot" in markdown
    assert "No confusion matrix" in markdown
    assert "No drift plot" in markdown
    assert "No drift measure" in markdown
    assert "](" not in markdown


def test_first_night_draws_the_current_mix(tmp_path: Path) -> None:
    current = decisions({"post_id": "p1", "text": "hi", "label": "safe", "decision": "allow"})

    markdown = render_feedback(summarize(current, current.iloc[:0], hardest=5), tmp_path)

    assert (tmp_path / DRIFT_PNG).is_file()
    assert "No drift measure" in markdown
    # The only post has no model verdict: nothing to compare with.
    assert not (tmp_path / CONFUSION_PNG).exists() and not (tmp_path / AGREEMENT_PNG).exists()


def test_importing_the_report_does_not_import_matplotlib() -> None:
    check = "import sys, jobs.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, cwd=Path(__file__).parents[2])
