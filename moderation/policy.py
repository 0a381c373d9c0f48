"""The versioned moderation policy: `data/policy/<version>.md`, parsed.

A policy file has a title line, a preamble, and one `## <category>` section per category of the
taxonomy. The classifier agent's prompt is built from it (`moderation.classifier.agent`), the
review API shows a moderator the section a review is about, and the nightly exports training
examples under it. Plain text parsing only: no model code is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from moderation.settings import PROJECT_ROOT
from moderation.taxonomy import CATEGORIES, Category

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
