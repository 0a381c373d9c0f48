"""The versioned moderation policy: `data/policy/<version>.md`, parsed.

A policy file has a title line, a preamble, and one `## <category>` section per category of the
taxonomy. The classifier agent's prompt is built from it (`moderation.classifier.agent`), the
review API shows a moderator the section a review is about, and the nightly exports training
examples under it. Plain text parsing only: no model code is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moderation.events import ActionKind
from moderation.settings import PROJECT_ROOT
from moderation.taxonomy import CATEGORIES, VIOLATING, Category

POLICY_DIR = PROJECT_ROOT / "data" / "policy"
_HEADING = re.compile(r"^## (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Policy:
    """One policy version: its preamble and the text of each category's section."""

    version: str
    preamble: str
    sections: Mapping[Category, str]

    def section(self, category: Category) -> str:
        """The category's section with its heading, as the policy file has it."""
        return f"## {category.value}\n\n{self.sections[category]}"


@lru_cache(maxsize=8)
def load_policy(version: str) -> Policy:
    """Parse `data/policy/<version>.md`: its preamble and one section per category.

    Raises:
        FileNotFoundError: there is no such policy version.
        ValueError: a section is not a category, or a category has no section.
    """
    path = POLICY_DIR / f"{version}.md"
    if not path.is_file():
        raise FileNotFoundError(f"no policy {version!r}: {path} does not exist")
    text = path.read_text()
    parts = _HEADING.split(text)
    preamble = parts[0].split("\n", 1)[1].strip() if "\n" in parts[0] else ""
    sections: dict[Category, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        try:
            category = Category(heading)
        except ValueError:
            raise ValueError(f"{path}: section '## {heading}' is not a category") from None
        sections[category] = body.strip()
    missing = [c.value for c in CATEGORIES if c not in sections]
    if missing:
        raise ValueError(f"{path}: no section for {', '.join(missing)}")
    return Policy(version=version, preamble=preamble, sections=sections)


# --- the enforcement policy: strikes and the ladder of actions (`data/policy/enforcement.yaml`)


# Actions that last `days`; the others have no duration.
TIMED_ACTIONS = frozenset({ActionKind.RATE_LIMIT, ActionKind.SUSPEND})


class Severity(BaseModel):
    """What a strike of this severity weighs on the ladder, and how long it stays active."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: int = Field(ge=0, le=100)
    expiry_days: int = Field(ge=1, le=3_650)


class LadderStep(BaseModel):
    """Reaching `strikes` (weighted active strikes) takes `action`, for `days` when timed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strikes: int = Field(ge=1)
    action: ActionKind
    days: int | None = Field(default=None, ge=1, le=3_650)

    @model_validator(mode="after")
    def _days_fit_the_action(self) -> LadderStep:
        if self.action is ActionKind.REVERSE:
            raise ValueError("`reverse` is not a ladder action")
        if (self.action in TIMED_ACTIONS) != (self.days is not None):
            needs = "needs" if self.action in TIMED_ACTIONS else "takes no"
            raise ValueError(f"action {self.action.value} {needs} `days`")
        return self


class EnforcementPolicy(BaseModel):
    """One version of the enforcement policy (its rules: the file's header comment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=32)
    severities: dict[str, Severity] = Field(min_length=1)
    categories: dict[Category, str]
    ladder: list[LadderStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> EnforcementPolicy:
        missing = [c.value for c in VIOLATING if c not in self.categories]
        if missing:
            raise ValueError(f"categories: no severity for {', '.join(missing)}")
        if Category.SAFE in self.categories:
            raise ValueError("categories: `safe` is not a violation and takes no strike")
        unknown = sorted({s for s in self.categories.values() if s not in self.severities})
        if unknown:
            raise ValueError(
                f"categories: unknown severity {', '.join(unknown)} "
                f"(known: {', '.join(sorted(self.severities))})"
            )
        counts = [step.strikes for step in self.ladder]
        if counts != sorted(set(counts)):
            raise ValueError("ladder: steps must be in strictly increasing order of `strikes`")
        return self

    def severity_of(self, category: str) -> tuple[str, Severity]:
        """The severity name and rule of a removal in `category` (an unknown label: the
        heaviest severity, so a label this release does not know never goes unpunished)."""
        try:
            name = self.categories[Category(category)]
        except (ValueError, KeyError):
            name = max(self.severities, key=lambda n: self.severities[n].weight)
        return name, self.severities[name]

    def step_for(self, points: int) -> int:
        """The index of the highest ladder step `points` reaches, or -1 for none."""
        reached = -1
        for index, step in enumerate(self.ladder):
            if points >= step.strikes:
                reached = index
        return reached

    def threshold_of(self, action: ActionKind, days: int | None) -> int | None:
        """The `strikes` of the ladder step taking `action` for `days`, or None."""
        for step in self.ladder:
            if step.action is action and step.days == days:
                return step.strikes
        return None


ENFORCEMENT_FILE = "enforcement"


def parse_enforcement(data: Any, *, source: str = "<data>") -> EnforcementPolicy:
    """Validate an enforcement policy read from YAML.

    Raises:
        ValueError: naming `source` and every problem found.
    """
    try:
        return EnforcementPolicy.model_validate(data)
    except ValidationError as error:
        problems: Sequence[Any] = error.errors(include_url=False)
        summary = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'policy'}: {problem['msg']}"
            for problem in problems
        )
        raise ValueError(f"{source}: invalid enforcement policy: {summary}") from None


@lru_cache(maxsize=4)
def load_enforcement(name: str = ENFORCEMENT_FILE) -> EnforcementPolicy:
    """Load and validate `data/policy/<name>.yaml`.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not a valid enforcement policy.
    """
    path = POLICY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no enforcement policy {name!r}: {path} does not exist")
    return parse_enforcement(yaml.safe_load(path.read_text()), source=str(path))
