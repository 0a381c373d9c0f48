"""Leave-one-source-out evaluation: how stage 1 does on a source it never saw.

For every external source of the dataset (a pinned package archive, `datasets.sources.SOURCES`),
the fast model is trained without it: `train_fast_model` on the train rows of every other source,
with the validation rows of every other source for its validation metrics (as the product model),
same configuration. It is then scored on *all* rows of the held-out source (train, validation and
gold alike): flagged-vs-safe and per-category metrics (`evaluation.scores.score_probabilities`)
and stage-1 routing through the real `first_stage` (`evaluation.routing`).

The project's own sources (`project`, `project-seed`) are written by the team: they stay in
training but are never held out, since a score on text the team wrote says how it was written,
not how the model travels. An evaluation-only source (`evaluation_only.jsonl`, data whose licence
is unknown) is in no split, so no model ever trains on it: it is held out like any other source,
and the model "trained without it" is the product-style model trained on every train row.

Each held-out model is cached under
`<cache>/fast-model-loso/<source>-<hash of dataset fingerprint, source, config, policy>/`, so a
rerun only scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.classifier.cascade import Scorer
from moderation.classifier.fast.config import DEFAULT_CONFIG
from moderation.classifier.fast.model import METADATA_FILE, FastModel
from moderation.classifier.fast.training import train_fast_model
from moderation.datasets.build import EVALUATION_ONLY, EVALUATION_ONLY_FILE, SPLITS
from moderation.datasets.sources import PROJECT_SOURCE, SEED_SOURCE, SOURCES
from moderation.evaluation.routing import RoutingShares, route_records
from moderation.evaluation.scores import CategoryMetrics, FlaggedMetrics, score_probabilities
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES, Category

# Written by the team: trained on, never evaluated on.
TEAM_SOURCES = frozenset({PROJECT_SOURCE, SEED_SOURCE})
LOSO_CACHE = "fast-model-loso"
PROTOCOL = (
    "for each external source: train_fast_model on the train rows of every other source "
    "(their validation rows for validation metrics only; gold is never trained on), then score "
    "all rows of the held-out source; team-written sources are trained on, never held out; "
    "evaluation-only sources are never trained on and are scored like a held-out source"
)

Row = Mapping[str, str]
Splits = Mapping[str, Sequence[Row]]


def external_source_names() -> frozenset[str]:
    """The sources that can be held out: the pinned package archives of the dataset."""
    return frozenset(source.name for source in SOURCES)


def is_team_source(source: str) -> bool:
    """Whether the team wrote this source (any `project*` file): never a held-out source."""
    return source in TEAM_SOURCES or source.startswith(PROJECT_SOURCE)


def load_sourced_splits(dataset_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Every split of a built dataset with each row's `text`, `label` and `source`.

    Plus, under `evaluation_only`, the rows no model is trained on, when the dataset has them.
    """
    splits: dict[str, list[dict[str, str]]] = {}
    names = [*SPLITS, EVALUATION_ONLY] if (dataset_dir / EVALUATION_ONLY_FILE).is_file() else SPLITS
    for name in names:
        with (dataset_dir / f"{name}.jsonl").open(encoding="utf-8") as handle:
            splits[name] = [
                {"text": row["text"], "label": row["label"], "source": row["source"]}
                for row in map(json.loads, handle)
            ]
    return splits


def held_out_sources(splits: Splits, external: Collection[str]) -> list[str]:
    """The sources of `splits` to hold out, sorted: those in `external`, never a team source."""
    present = {row["source"] for rows in splits.values() for row in rows}
    return sorted(s for s in present if s in external and not is_team_source(s))


@dataclass(frozen=True)
class HoldoutSplit:
    """The data of one held-out run; rows are `{"text", "label"}`."""

    source: str
    train: list[dict[str, str]]
    validation: list[dict[str, str]]
    held_out: list[dict[str, str]]
    held_out_by_split: dict[str, int]


def _plain(row: Row) -> dict[str, str]:
    return {"text": row["text"], "label": row["label"]}


def holdout_split(splits: Splits, source: str) -> HoldoutSplit:
    """Train/validation rows of every other source, and all rows of `source` to score.

    Only the `train` and `validation` parts are ever trained on; the held-out rows come from
    every part, `evaluation_only` included.
    """
    if is_team_source(source):
        raise ValueError(f"{source} is written by the team and is never held out")
    held_out = {
        name: [_plain(r) for r in rows if r["source"] == source] for name, rows in splits.items()
    }
    if not any(held_out.values()):
        raise ValueError(f"no rows of source {source!r} in the dataset")
    return HoldoutSplit(
        source=source,
        train=[_plain(r) for r in splits["train"] if r["source"] != source],
        validation=[_plain(r) for r in splits["validation"] if r["source"] != source],
        held_out=[row for rows in held_out.values() for row in rows],
        held_out_by_split={name: len(rows) for name, rows in held_out.items()},
    )


# --- models ---------------------------------------------------------------------------------------


class HoldoutTrainer(Protocol):
    """Gives the model trained without `split.source` (trained now or read from a cache)."""

    def __call__(self, split: HoldoutSplit) -> Scorer: ...


def holdout_cache_key(
    *, source: str, dataset_fingerprint: str, config_fingerprint: str, policy_version: str
) -> str:
    """The cache entry of one held-out model: readable source name, hash of what shapes it."""
    identity = "\n".join([dataset_fingerprint, source, config_fingerprint, policy_version])
    return f"{source}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class CachedHoldoutTrainer:
    """`train_fast_model` without the held-out source, each model cached under `root`."""

    root: Path
    dataset_fingerprint: str
    policy_version: str

    def entry(self, source: str) -> Path:
        return self.root / holdout_cache_key(
            source=source,
            dataset_fingerprint=self.dataset_fingerprint,
            config_fingerprint=DEFAULT_CONFIG.fingerprint(),
            policy_version=self.policy_version,
        )

    def cached(self, source: str) -> Path | None:
        """The cached artifact directory for `source`, if a previous run saved one."""
        found = sorted(self.entry(source).glob(f"fast-*/{METADATA_FILE}"))
        return found[-1].parent if found else None

    def __call__(self, split: HoldoutSplit) -> Scorer:
        existing = self.cached(split.source)
        if existing is not None:
            return FastModel.load(existing)
        model = train_fast_model(split.train, split.validation, progress=False)
        model.save(self.entry(split.source))
        return model


# --- the report -----------------------------------------------------------------------------------


class SourceReport(BaseModel):
    """One held-out source: the model trained without it, scored on all its rows."""

    source: str
    rows: int
    rows_by_split: dict[str, int] = Field(description="held-out rows per dataset split")
    evaluation_only: bool = Field(
        default=False,
        description="a source no model trains on: its rows are all in `evaluation_only`",
    )
    training_rows: int = Field(description="train rows of the other sources")
    model_version: str
    flagged: FlaggedMetrics
    per_category: dict[Category, CategoryMetrics] = Field(
        description="only the categories this source has (support > 0)"
    )
    macro_f1: float | None = Field(description="mean F1 over the categories this source has")
    accuracy: float
    routing: RoutingShares = Field(description="stage 1 (`first_stage`, default settings)")


class LosoMacro(BaseModel):
    """Unweighted means over held-out sources, each over the sources where it is defined."""

    flagged_precision: float | None
    flagged_recall: float | None
    flagged_f1: float | None
    macro_f1: float | None
    allowed: float | None
    removed: float | None
    sent_on: float | None
    unreadable: float | None
    violating_allowed: float | None
    safe_removed: float | None
    category_f1: dict[Category, float] = Field(
        description="per category: mean F1 over the held-out sources that have it"
    )


class LosoReport(BaseModel):
    """`moderation eval --loso`: one row per external source, and their macro average."""

    protocol: str = PROTOCOL
    dataset_fingerprint: str
    never_held_out: list[str] = Field(description="team-written sources: trained on only")
    sources: list[SourceReport]
    macro: LosoMacro


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def macro_average(sources: Sequence[SourceReport]) -> LosoMacro:
    category_f1: dict[Category, float] = {}
    for category in CATEGORIES:
        mean = _mean([s.per_category[category].f1 for s in sources if category in s.per_category])
        if mean is not None:
            category_f1[category] = mean
    return LosoMacro(
        flagged_precision=_mean([s.flagged.precision for s in sources]),
        flagged_recall=_mean([s.flagged.recall for s in sources]),
        flagged_f1=_mean([s.flagged.f1 for s in sources]),
        macro_f1=_mean([s.macro_f1 for s in sources]),
        allowed=_mean([s.routing.allowed for s in sources]),
        removed=_mean([s.routing.removed for s in sources]),
        sent_on=_mean([s.routing.sent_on for s in sources]),
        unreadable=_mean([s.routing.unreadable for s in sources]),
        violating_allowed=_mean([s.routing.violating_allowed for s in sources]),
        safe_removed=_mean([s.routing.safe_removed for s in sources]),
        category_f1=category_f1,
    )


def score_source(split: HoldoutSplit, model: Scorer, settings: Settings) -> SourceReport:
    """Score and route the held-out rows of `split` with the model trained without them."""
    texts = [row["text"] for row in split.held_out]
    report = score_probabilities(
        model.predict_proba(texts), split.held_out, model_version=model.version
    )
    present = {c: m for c, m in report.per_category.items() if m.support > 0}
    f1_scores = [m.f1 for m in present.values() if m.f1 is not None]
    return SourceReport(
        source=split.source,
        rows=len(split.held_out),
        rows_by_split=split.held_out_by_split,
        evaluation_only=split.held_out_by_split.get(EVALUATION_ONLY, 0) == len(split.held_out),
        training_rows=len(split.train),
        model_version=model.version,
        flagged=report.flagged,
        per_category=present,
        macro_f1=float(np.mean(f1_scores)) if f1_scores else None,
        accuracy=report.accuracy,
        routing=route_records(model, split.held_out, settings),
    )


def leave_one_source_out(
    splits: Splits,
    *,
    trainer: HoldoutTrainer,
    settings: Settings,
    dataset_fingerprint: str,
    external: Collection[str] | None = None,
    console: Console | None = None,
) -> LosoReport:
    """Train without each external source and score on it; one progress bar per source.

    `external` defaults to the dataset's package sources; `console` None shows no progress.
    """
    sources = held_out_sources(splits, external_source_names() if external is None else external)
    if not sources:
        raise ValueError("the dataset has no external source to hold out")
    present = {row["source"] for rows in splits.values() for row in rows}
    reports: list[SourceReport] = []
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )
    with progress:
        tasks = {
            source: progress.add_task(f"without {source}: waiting", total=2, start=False)
            for source in sources
        }
        for source in sources:
            task = tasks[source]
            progress.start_task(task)
            split = holdout_split(splits, source)
            progress.update(task, description=f"without {source}: training ({len(split.train)})")
            model = trainer(split)
            progress.update(
                task, advance=1, description=f"without {source}: scoring {len(split.held_out)}"
            )
            reports.append(score_source(split, model, settings))
            progress.update(task, advance=1, description=f"without {source}: done")
    return LosoReport(
        dataset_fingerprint=dataset_fingerprint,
        never_held_out=sorted(s for s in present if is_team_source(s)),
        sources=reports,
        macro=macro_average(reports),
    )


def run_leave_one_source_out(
    dataset_dir: Path, settings: Settings, *, console: Console | None
) -> LosoReport:
    """The report for a built dataset, each held-out model cached under the cache dir."""
    fingerprint = str(json.loads((dataset_dir / "manifest.json").read_text())["fingerprint"])
    trainer = CachedHoldoutTrainer(
        root=settings.stack.cache_dir / LOSO_CACHE,
        dataset_fingerprint=fingerprint,
        policy_version=settings.models.policy_version,
    )
    return leave_one_source_out(
        load_sourced_splits(dataset_dir),
        trainer=trainer,
        settings=settings,
        dataset_fingerprint=fingerprint,
        console=console,
    )


# --- rendering ------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _label(source: SourceReport) -> str:
    return f"{source.source} (evaluation only)" if source.evaluation_only else source.source


def render_loso(report: LosoReport, console: Console) -> None:
    """Print the leave-one-source-out report as two rich tables."""
    table = Table(
        title="leave-one-source-out: stage 1 trained without the source, scored on all its rows"
    )
    for column in (
        "held-out source", "rows", "flagged P", "flagged R", "flagged F1", "macro F1",
        "allowed", "removed", "to agent/review", "unreadable", "violating allowed",
        "safe removed",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "held-out source" else "right")
    for source in report.sources:
        routing = source.routing
        table.add_row(
            _label(source),
            str(source.rows),
            _number(source.flagged.precision),
            _number(source.flagged.recall),
            _number(source.flagged.f1),
            _number(source.macro_f1),
            _percent(routing.allowed),
            _percent(routing.removed),
            _percent(routing.sent_on),
            _percent(routing.unreadable),
            _percent(routing.violating_allowed),
            _percent(routing.safe_removed),
        )
    macro = report.macro
    table.add_section()
    table.add_row(
        "macro average",
        str(sum(source.rows for source in report.sources)),
        _number(macro.flagged_precision),
        _number(macro.flagged_recall),
        _number(macro.flagged_f1),
        _number(macro.macro_f1),
        _percent(macro.allowed),
        _percent(macro.removed),
        _percent(macro.sent_on),
        _percent(macro.unreadable),
        _percent(macro.violating_allowed),
        _percent(macro.safe_removed),
    )
    console.print(table)

    categories = [c for c in CATEGORIES if c in macro.category_f1]
    matrix = Table(title="leave-one-source-out per category: F1 / recall (rows)")
    matrix.add_column("held-out source")
    for category in categories:
        matrix.add_column(category.value, justify="right")
    for source in report.sources:
        cells = []
        for category in categories:
            metrics = source.per_category.get(category)
            cells.append(
                "·"
                if metrics is None
                else f"{metrics.f1 or 0:.2f} / {metrics.recall or 0:.2f} ({metrics.support})"
            )
        matrix.add_row(_label(source), *cells)
    matrix.add_section()
    matrix.add_row("mean F1", *(_number(macro.category_f1[c]) for c in categories))
    console.print(matrix)
    console.print(
        f"[dim]{report.protocol}; never held out: {', '.join(report.never_held_out) or 'none'}"
        "[/dim]"
    )
