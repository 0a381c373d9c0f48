"""Stage-1 thresholds chosen on the validation split for stated error budgets (issue 12, part 6).

The budgets (`ErrorBudget`, `MODERATION_ERROR_BUDGET__*`): the removals of each violating
category are at least `remove_precision` right (their label is that category); at most
`violating_allowed` of the violating posts are allowed; at most `safe_removed` of the safe posts
are removed. The automation rate is the share stage 1 decides alone (allowed + removed).

Every rate is measured with `route`, the rule order of `decide.decide` on a whole matrix (the
always-review floor, then remove, then allow; tested against `decide`), on probabilities rounded
as `cascade.first_stage` rounds them, so it is what stage 1 would do with the model's scores. The
injection screen and the readability rules of `first_stage` only withhold allows: on the same
posts they can only lower the violating-allowed rate and the automation rate, never raise the
safe-removed rate.

How the thresholds are chosen, on a 0.01 grid:

1. Remove. Every chosen category starts at `remove_floor`; then, one category at a time, its
   threshold is raised to the lowest grid value at which its removals meet `remove_precision`
   (the other thresholds where they are), until a pass over the categories changes nothing.
   Thresholds only go up, so this ends; and a raise never adds a removal, so no earlier check
   on the safe-removed rate is undone.
2. While more safe posts are removed than `safe_removed` allows, the chosen category removing
   the most safe posts goes up one step; step 1 runs again afterwards (a raise can move a
   removal to another category, which may then be less precise).
3. Allow: the lowest grid value from the configured allow threshold up at which the violating
   posts allowed are within `violating_allowed` (removal comes first, so a violating post the
   remove thresholds catch is not allowed).

Floors, and why thresholds may go below the configured remove thresholds but never below the
configured allow threshold:

- A remove threshold never goes below `remove_floor` (0.5). The probabilities are calibrated
  one-vs-rest: below 0.5 the model itself says the post more likely does not belong to the
  category, and a removal on that is a guess however precise validation makes it look. Above
  it a wrong removal is bounded by two budgets measured directly (precision per category, safe
  posts removed), and it is seen: its author is told and can appeal.
- The allow threshold never goes below the configured one (`ThresholdSettings.allow`): a
  violating post allowed is seen by no moderator, and validation comes from the same sources as
  training, while P(safe) is overconfident on text from sources the model never saw
  (`moderation eval --loso`, data/MODEL_CARD.md). A lower allow justified by validation alone
  would not travel, so allow may only get stricter.
- Some categories keep their configured remove threshold and are not judged: those with fewer
  than `min_support` validation posts (with fewer than about 1 / (1 - remove_precision) posts, a
  single wrong removal already breaks the budget, so the estimate cannot tell a sound threshold
  from luck), and the always-review categories (policy sends them to a human; a post reaching
  `review_floor` is reviewed before any remove rule, so their remove threshold does not act).

A budget no grid value meets is reported unmet with the best achievable value, never silently:
for a category, the threshold with the best precision (lowest on ties); for allow, the strictest
grid value. A category whose lowest compliant threshold removes nothing on validation is told so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from moderation.settings import ErrorBudget, ThresholdSettings
from moderation.taxonomy import CATEGORIES, VIOLATING, Category

__all__ = [
    "ErrorBudget",
    "ThresholdChoice",
    "choose_for_validation",
    "choose_thresholds",
    "render",
    "route",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Decision codes of `route` (an int array is what the grid search needs to be fast).
ALLOW, REMOVE, REVIEW = 0, 1, 2
NOT_REMOVED = -1
GRID_STEP = 0.01
# `first_stage` rounds the model's scores before `decide`; the choice sees the same numbers.
SCORE_DECIMALS = 6
# Passes of step 1; each either raises a threshold or ends the loop, so this is never reached
# on a 0.01 grid (8 categories x 51 values), it only bounds a bug.
MAX_PASSES = 1_000

SAFE_COLUMN = CATEGORIES.index(Category.SAFE)
VIOLATING_COLUMNS = np.array([CATEGORIES.index(category) for category in VIOLATING])

NOTE_CHOSEN = "chosen"
NOTE_NOTHING_REMOVED = "chosen; removes nothing on validation"
NOTE_UNMET = "no threshold meets the budget: best precision"
NOTE_ALWAYS_REVIEW = "always-review (a human decides): configured threshold kept"
NOTE_TOO_FEW = "too few to choose (< {min_support} posts): configured threshold kept"


@dataclass(frozen=True)
class Routes:
    """What `decide` does with each row: a decision code and a removal's primary category."""

    decision: npt.NDArray[np.int8]
    category: IntArray  # index in CATEGORIES for a removal, NOT_REMOVED otherwise


def route(probabilities: npt.ArrayLike, thresholds: ThresholdSettings) -> Routes:
    """`decide.decide` on every row of a (n, 9) matrix in `CATEGORIES` order, vectorised."""
    scores = np.asarray(probabilities, dtype=np.float64)
    floor_columns = [CATEGORIES.index(category) for category in thresholds.always_review]
    reviewed = (scores[:, floor_columns] >= thresholds.review_floor).any(axis=1)
    violating = scores[:, VIOLATING_COLUMNS]
    passing = violating >= np.array([thresholds.remove[category] for category in VIOLATING])
    # decide's two remove rules come to one: the most probable passing category, the first in
    # taxonomy order on ties (as Python's max); the top category wins whenever it passes.
    best = np.where(passing, violating, -np.inf).argmax(axis=1)
    removed = passing.any(axis=1) & ~reviewed
    allowed = ~reviewed & ~removed & (scores[:, SAFE_COLUMN] >= thresholds.allow)
    decision = np.full(len(scores), REVIEW, dtype=np.int8)
    decision[removed] = REMOVE
    decision[allowed] = ALLOW
    category = np.where(removed, VIOLATING_COLUMNS[best], NOT_REMOVED).astype(np.int64)
    return Routes(decision=decision, category=category)


class BudgetCheck(BaseModel):
    """One rate budget on the set the thresholds were chosen on."""

    target: float = Field(description="the budget: the rate may not exceed it")
    achieved: float | None = Field(description="None: no post of the kind it counts")
    met: bool


class CategoryChoice(BaseModel):
    """The remove threshold of one violating category and its precision on validation."""

    category: Category
    threshold: float
    configured: float
    support: int = Field(description="validation posts labelled with this category")
    removed: int = Field(description="validation posts removed with this primary category")
    precision: float | None = Field(description="share of those removals labelled so")
    met: bool | None = Field(description="remove precision budget; None: not chosen, not judged")
    note: str


class Rates(BaseModel):
    """Stage-1 routing (`route`, no readability or injection rule) of one labelled set."""

    allowed: float
    removed: float
    sent_on: float = Field(description="to the agent or a human")
    automation: float = Field(description="allowed + removed: decided by stage 1 alone")
    violating_allowed: float | None = Field(description="share of the violating posts")
    safe_removed: float | None = Field(description="share of the safe posts")


class ThresholdChoice(BaseModel):
    """Thresholds chosen for an error budget, with what they achieve where they were chosen."""

    thresholds: ThresholdSettings
    budget: ErrorBudget
    posts: int
    violating_posts: int
    safe_posts: int
    categories: list[CategoryChoice] = Field(description="in taxonomy order")
    remove_precision_met: bool = Field(description="every judged category meets it")
    violating_allowed: BudgetCheck
    safe_removed: BudgetCheck
    configured_thresholds: ThresholdSettings = Field(description="`base`, for comparison")
    rates: Rates = Field(description="routing under the chosen thresholds")
    configured_rates: Rates = Field(description="routing under the configured thresholds")

    @property
    def budgets_met(self) -> bool:
        return self.remove_precision_met and self.violating_allowed.met and self.safe_removed.met


@dataclass(frozen=True)
class _Labelled:
    scores: FloatArray
    labels: IntArray  # index in CATEGORIES
    violating: npt.NDArray[np.bool_]

    def routes(self, thresholds: ThresholdSettings) -> Routes:
        return route(self.scores, thresholds)

    def precision(self, routes: Routes, category: Category) -> tuple[int, float | None]:
        """How many rows were removed as `category`, and the share of them labelled so."""
        column = CATEGORIES.index(category)
        removed = routes.category == column
        count = int(removed.sum())
        if count == 0:
            return 0, None
        return count, float(np.sum(self.labels[removed] == column)) / count

    def safe_removed(self, routes: Routes) -> int:
        return int(np.sum((routes.decision == REMOVE) & ~self.violating))

    def violating_allowed(self, routes: Routes) -> int:
        return int(np.sum((routes.decision == ALLOW) & self.violating))

    def rates(self, thresholds: ThresholdSettings) -> Rates:
        routes = self.routes(thresholds)
        total = len(self.labels)
        allowed = int(np.sum(routes.decision == ALLOW))
        removed = int(np.sum(routes.decision == REMOVE))
        violating = int(self.violating.sum())
        return Rates(
            allowed=allowed / total,
            removed=removed / total,
            sent_on=(total - allowed - removed) / total,
            automation=(allowed + removed) / total,
            violating_allowed=_share(self.violating_allowed(routes), violating),
            safe_removed=_share(self.safe_removed(routes), total - violating),
        )


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def _within(count: int, total: int, budget: float) -> bool:
    # A ratio, not `count <= budget * total`: 0.29 * 100 is 28.999..., 29 / 100 is 0.29.
    return total == 0 or count / total <= budget


def _grid(start: float) -> list[float]:
    """`start`, then every multiple of GRID_STEP above it up to 1.0 (readable thresholds)."""
    steps = round(1 / GRID_STEP)
    return [start] + [k / steps for k in range(steps + 1) if k / steps > start]


def _with_remove(
    thresholds: ThresholdSettings, category: Category, value: float
) -> ThresholdSettings:
    return thresholds.model_copy(update={"remove": thresholds.remove | {category: value}})


def _raise_for_precision(
    data: _Labelled, thresholds: ThresholdSettings, category: Category, budget: ErrorBudget
) -> float:
    """The lowest grid value from the current threshold up meeting the precision budget, else
    the one with the best precision (lowest on ties)."""
    current = thresholds.remove[category]
    best_value, best_precision = current, -1.0
    for value in _grid(current):
        _, precision = data.precision(
            data.routes(_with_remove(thresholds, category, value)), category
        )
        if precision is None or precision >= budget.remove_precision:
            return value
        if precision > best_precision:
            best_value, best_precision = value, precision
    return best_value


def _meet_precision(
    data: _Labelled,
    thresholds: ThresholdSettings,
    chosen: Sequence[Category],
    budget: ErrorBudget,
) -> ThresholdSettings:
    """Step 1: raise one category at a time until a whole pass changes nothing."""
    for _ in range(MAX_PASSES):
        changed = False
        for category in chosen:
            value = _raise_for_precision(data, thresholds, category, budget)
            if value != thresholds.remove[category]:
                thresholds = _with_remove(thresholds, category, value)
                changed = True
        if not changed:
            return thresholds
    raise RuntimeError("remove thresholds did not settle")  # unreachable: they only go up


def _meet_safe_removed(
    data: _Labelled,
    thresholds: ThresholdSettings,
    chosen: Sequence[Category],
    budget: ErrorBudget,
) -> ThresholdSettings:
    """Step 2: one grid step up for the category removing the most safe posts, then step 1."""
    safe_posts = int(np.sum(~data.violating))
    while True:
        routes = data.routes(thresholds)
        if _within(data.safe_removed(routes), safe_posts, budget.safe_removed):
            return thresholds
        safe_removals = {
            category: int(np.sum((routes.category == CATEGORIES.index(category)) & ~data.violating))
            for category in chosen
            if len(_grid(thresholds.remove[category])) > 1
        }
        culprits = [category for category, count in safe_removals.items() if count]
        if not culprits:  # what is left is removed by categories that cannot be raised
            return thresholds
        # Each round raises one threshold a step, so the loop ends within the grid.
        worst = max(culprits, key=lambda category: safe_removals[category])
        thresholds = _with_remove(thresholds, worst, _grid(thresholds.remove[worst])[1])
        thresholds = _meet_precision(data, thresholds, chosen, budget)


def _choose_allow(
    data: _Labelled, thresholds: ThresholdSettings, budget: ErrorBudget
) -> ThresholdSettings:
    """Step 3: the lowest allow from the configured one up within the violating-allowed budget,
    else the strictest grid value (fewest violating posts allowed)."""
    violating_posts = int(data.violating.sum())
    grid = _grid(thresholds.allow)
    for value in grid:
        candidate = thresholds.model_copy(update={"allow": value})
        allowed = data.violating_allowed(data.routes(candidate))
        if _within(allowed, violating_posts, budget.violating_allowed):
            return candidate
    return thresholds.model_copy(update={"allow": grid[-1]})


def choose_thresholds(
    probabilities: npt.ArrayLike,
    labels: Sequence[Category],
    budget: ErrorBudget,
    base: ThresholdSettings,
) -> ThresholdChoice:
    """Thresholds for `budget` from a labelled set's probabilities ((n, 9), `CATEGORIES` order).

    `base` gives the always-review floor, the configured allow threshold (the allow floor) and
    the remove thresholds kept for categories that are not chosen.
    """
    scores: FloatArray = np.asarray(probabilities, dtype=np.float64).round(SCORE_DECIMALS)
    if scores.ndim != 2 or scores.shape[1] != len(CATEGORIES) or len(scores) != len(labels):
        raise ValueError(
            f"probabilities of shape {scores.shape} for {len(labels)} labels; "
            f"expected ({len(labels)}, {len(CATEGORIES)})"
        )
    if len(labels) == 0:
        raise ValueError("no labelled posts to choose thresholds on")
    label_columns = np.array([CATEGORIES.index(Category(label)) for label in labels])
    data = _Labelled(scores=scores, labels=label_columns, violating=label_columns != SAFE_COLUMN)
    support = {
        category: int(np.sum(label_columns == CATEGORIES.index(category))) for category in VIOLATING
    }

    chosen = [
        category
        for category in VIOLATING
        if category not in base.always_review and support[category] >= budget.min_support
    ]
    thresholds = base.model_copy(
        update={"remove": base.remove | dict.fromkeys(chosen, budget.remove_floor)}
    )
    thresholds = _meet_precision(data, thresholds, chosen, budget)
    thresholds = _meet_safe_removed(data, thresholds, chosen, budget)
    thresholds = _choose_allow(data, thresholds, budget)

    routes = data.routes(thresholds)
    categories: list[CategoryChoice] = []
    for category in VIOLATING:
        removed, precision = data.precision(routes, category)
        met: bool | None = None
        if category in base.always_review:
            note = NOTE_ALWAYS_REVIEW
        elif category not in chosen:
            note = NOTE_TOO_FEW.format(min_support=budget.min_support)
            if precision is not None and precision < budget.remove_precision:
                note += f"; its precision here is below {budget.remove_precision:.0%}"
        else:
            met = precision is None or precision >= budget.remove_precision
            note = NOTE_UNMET if not met else NOTE_CHOSEN if removed else NOTE_NOTHING_REMOVED
        categories.append(
            CategoryChoice(
                category=category,
                threshold=thresholds.remove[category],
                configured=base.remove[category],
                support=support[category],
                removed=removed,
                precision=precision,
                met=met,
                note=note,
            )
        )

    achieved = data.rates(thresholds)
    violating_posts = int(data.violating.sum())
    safe_posts = len(label_columns) - violating_posts
    return ThresholdChoice(
        thresholds=thresholds,
        budget=budget,
        posts=len(label_columns),
        violating_posts=violating_posts,
        safe_posts=safe_posts,
        categories=categories,
        remove_precision_met=all(choice.met is not False for choice in categories),
        violating_allowed=BudgetCheck(
            target=budget.violating_allowed,
            achieved=achieved.violating_allowed,
            met=_within(data.violating_allowed(routes), violating_posts, budget.violating_allowed),
        ),
        safe_removed=BudgetCheck(
            target=budget.safe_removed,
            achieved=achieved.safe_removed,
            met=_within(data.safe_removed(routes), safe_posts, budget.safe_removed),
        ),
        configured_thresholds=base,
        rates=achieved,
        configured_rates=data.rates(base),
    )


# The hook for training code: the model's `predict_proba` on the validation split and its
# labels in, the thresholds to ship with the artifact out.
choose_for_validation = choose_thresholds


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _error_rate(value: float | None) -> str:
    # Two decimals: a budget of 0.5 % must not look met at 0.52 %.
    return "-" if value is None else f"{value:.2%}"


def _met(met: bool | None) -> str:
    return {True: "[green]met[/green]", False: "[red]UNMET[/red]", None: "-"}[met]


def render(choice: ThresholdChoice, console: Console) -> None:
    """Print the chosen thresholds, the budgets and the rates they achieve."""
    budget = choice.budget
    kept = [c for c in choice.categories if c.met is None]
    thresholds = Table(
        title=f"stage-1 thresholds chosen on validation ({choice.posts} posts)",
        caption="\n".join(
            ["posts: labelled with the category; removed: with it as the primary category"]
            + [f"{c.category.value}: {c.note}" for c in kept]
        ),
    )
    for column in ("category", "configured", "chosen", "posts", "removed", "precision"):
        thresholds.add_column(column, justify="left" if column == "category" else "right")
    thresholds.add_column(f">= {budget.remove_precision:.0%}", justify="right")
    for category in choice.categories:
        thresholds.add_row(
            category.category.value,
            f"{category.configured:.2f}",
            f"{category.threshold:.2f}",
            str(category.support),
            str(category.removed),
            _number(category.precision),
            _met(category.met) if category.met is not None else "kept",
        )
    thresholds.add_section()
    thresholds.add_row(
        "allow P(safe)",
        f"{choice.configured_thresholds.allow:.2f}",
        f"{choice.thresholds.allow:.2f}",
    )
    console.print(thresholds)

    budgets = Table(title="error budgets on validation (stage-1 rules, no readability rule)")
    for column in ("budget", "target", "chosen", "configured", ""):
        budgets.add_column(column, justify="left" if column == "budget" else "right")
    judged = [
        c.precision for c in choice.categories if c.met is not None and c.precision is not None
    ]
    budgets.add_row(
        "remove precision (worst chosen)",
        f">= {budget.remove_precision:.0%}",
        _number(min(judged, default=None)),
        "",
        _met(choice.remove_precision_met),
    )
    budgets.add_row(
        f"violating allowed (of {choice.violating_posts})",
        f"<= {_error_rate(budget.violating_allowed)}",
        _error_rate(choice.violating_allowed.achieved),
        _error_rate(choice.configured_rates.violating_allowed),
        _met(choice.violating_allowed.met),
    )
    budgets.add_row(
        f"safe removed (of {choice.safe_posts})",
        f"<= {_error_rate(budget.safe_removed)}",
        _error_rate(choice.safe_removed.achieved),
        _error_rate(choice.configured_rates.safe_removed),
        _met(choice.safe_removed.met),
    )
    budgets.add_section()
    budgets.add_row(
        "automation (allowed + removed)",
        "",
        _percent(choice.rates.automation),
        _percent(choice.configured_rates.automation),
    )
    console.print(budgets)
