"""Issue 12's own adversarial set against the real stage 1 (trained fast model, injection screen,
readability rules): no violating post is auto-allowed; at most 10 % of the safe controls are
flagged.

`tests/data/adversarial_posts.jsonl` is team-written: violating posts (violence, self_harm,
illicit, harassment, hate, adult sexual content, spam) in many languages, each dressed in one
evasion technique, and safe controls that are hard negatives (news about violence, recovery
posts, drug policy, discussion of slurs, fiction, quoted moderation rules, everyday chatter).
Each row: `text`, `label` (a taxonomy category), `language` (ISO 639-1, `hi-en` for Hinglish),
`technique` (a slug). No row involves minors: that category is excluded from all data by design.

Where a post goes after stage 1 (`Routed.route`): `allow`, `remove`, `agent` (uncertain: the
classifier agent decides) or `human` (an always-review category, straight to review).

A safe control is *flagged* when stage 1 removes it or the injection screen flags it: either
action holds the post against its author (a removal, or a high-priority review that no agent may
clear). Sending a safe control to the agent, or to a human because an always-review category
passed its floor, is a routing cost, not a flag: its share is reported, not bounded.

`pytest -s tests/unit/test_adversarial_set.py` prints the routing per language and technique.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from moderation.classifier.cascade import FirstStage, first_stage
from moderation.classifier.fast.store import ensure_fast_model
from moderation.classifier.readability import assess
from moderation.events import PostSubmitted
from moderation.settings import Settings
from moderation.taxonomy import Category, Decision

# Training the fast model on first use (no artifact for the current code and data) takes a few
# minutes on two shared cores; loading it takes a second.
pytestmark = pytest.mark.timeout(900)

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "adversarial_posts.jsonl"
MAX_FLAGGED_SAFE_SHARE = 0.10
MIN_POSTS = 60
MIN_VIOLATING = 80
MIN_SAFE = 40
MIN_LANGUAGES = 12
MIN_TECHNIQUES = 20

# Violating rows the fast model may allow, by row index (0-based line of the file): the technique
# the row must have (so an edit of the file cannot move an entry onto another row) and why. Each
# is a judgement gap of the model: plain English whose wording carries no signal a rule could
# use without matching these very sentences (no disguise, no injection, nothing unreadable), so
# they wait for a model that reads meaning. Strict: training is deterministic, so the product
# model allows exactly these; a retrained model that catches one fails the test until the entry
# goes. None at present: the embedding head caught five such rows (veiled threats, fiction
# framing, a buried sentence, indirect self-harm) and the larger seed set the last two (a
# workplace threat in euphemisms, a call to murder by historical allusion).
MODEL_GAPS: dict[int, tuple[str, str]] = {}


@dataclass(frozen=True)
class Row:
    index: int
    text: str
    label: Category
    language: str
    technique: str

    @property
    def id(self) -> str:
        return f"{self.index:03d}-{self.label.value}-{self.language}-{self.technique}"


def load_rows(path: Path = DATA) -> list[Row]:
    rows: list[Row] = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        rows.append(
            Row(
                index=index,
                text=record["text"],
                label=Category(record["label"]),
                language=record["language"],
                technique=record["technique"],
            )
        )
    return rows


KeyFunction = Callable[[Row], str]
ROWS = load_rows()
VIOLATING = [row for row in ROWS if row.label is not Category.SAFE]
SAFE = [row for row in ROWS if row.label is Category.SAFE]


def violating_params() -> list[object]:
    params: list[object] = []
    for row in VIOLATING:
        gap = MODEL_GAPS.get(row.index)
        marks = [pytest.mark.xfail(reason=f"model gap: {gap[1]}", strict=True)] if gap else []
        params.append(pytest.param(row, id=row.id, marks=marks))
    return params


@dataclass(frozen=True)
class Routed:
    """Stage 1's result for one row, and the rules that would withhold its allow in any case."""

    result: FirstStage
    # Readability rules that fire on the text whatever the model says (stage 1 asks them only
    # of posts it would allow): with the screen, the guards that do not depend on the model.
    unreadable: tuple[str, ...]

    @property
    def route(self) -> str:
        if self.result.verdict.decision is Decision.REVIEW:
            return "agent" if self.result.to_agent else "human"
        return self.result.verdict.decision.value

    @property
    def flagged(self) -> bool:
        """A safe control held against its author (module docstring)."""
        return self.result.verdict.decision is Decision.REMOVE or self.result.screen.flagged

    @property
    def guarded(self) -> bool:
        """Never allowed by stage 1, whatever the model's scores."""
        return self.result.screen.flagged or bool(self.unreadable)


@pytest.fixture(scope="module")
def routed() -> dict[int, Routed]:
    """Every row through the real stage 1 in one batch, by row index."""
    settings = Settings()
    model = ensure_fast_model(settings, progress=False)
    posts = [
        PostSubmitted(post_id=f"adv-{row.index:03d}", text=row.text, author_id="adversarial-set")
        for row in ROWS
    ]
    results = first_stage(posts, model, settings, agent_enabled=True)
    return {
        row.index: Routed(
            result,
            assess(
                row.text,
                settings.readability,
                vocabulary=model.vocabulary,
                training_length=model.training_length,
            ).signals,
        )
        for row, result in zip(ROWS, results, strict=True)
    }


def describe(row: Row, routed: Routed) -> str:
    verdict = routed.result.verdict
    top = sorted(verdict.scores.items(), key=lambda item: item[1], reverse=True)[:3]
    scores = ", ".join(f"{category.value} {probability:.2f}" for category, probability in top)
    signals = ", ".join(verdict.signals) or "no signals"
    return f"{row.id}: {routed.route} ({scores}; {signals}) {row.text[:80]!r}"


def test_the_set_covers_what_it_claims() -> None:
    assert len(ROWS) >= MIN_POSTS
    assert len(VIOLATING) >= MIN_VIOLATING and len(SAFE) >= MIN_SAFE
    assert len({row.text for row in ROWS}) == len(ROWS), "duplicate texts"
    assert len({row.language for row in ROWS}) >= MIN_LANGUAGES
    assert len({row.language for row in VIOLATING}) >= MIN_LANGUAGES
    assert len({row.technique for row in VIOLATING}) >= MIN_TECHNIQUES
    assert len({row.language for row in SAFE}) >= MIN_LANGUAGES
    assert {row.label for row in VIOLATING} == {
        Category.VIOLENCE,
        Category.SELF_HARM,
        Category.ILLICIT,
        Category.HARASSMENT,
        Category.HATE,
        Category.SEXUAL,
        Category.SPAM,
    }
    for index, (technique, _) in MODEL_GAPS.items():
        row = ROWS[index]
        assert row.label is not Category.SAFE and row.technique == technique, (
            f"MODEL_GAPS[{index}] names {technique!r}, the row is {row.id}"
        )


@pytest.mark.parametrize("row", violating_params())
def test_no_violating_post_is_auto_allowed(row: Row, routed: dict[int, Routed]) -> None:
    assert routed[row.index].route != "allow", (
        f"stage 1 allowed a violating post: {describe(row, routed[row.index])}"
    )


def test_at_most_a_tenth_of_the_safe_controls_are_flagged(routed: dict[int, Routed]) -> None:
    held = [describe(row, routed[row.index]) for row in SAFE if routed[row.index].flagged]
    share = len(held) / len(SAFE)
    assert share <= MAX_FLAGGED_SAFE_SHARE, (
        f"{len(held)}/{len(SAFE)} safe controls flagged ({share:.0%}):\n" + "\n".join(held)
    )


def test_routing_report(routed: dict[int, Routed]) -> None:
    """The routing per language and technique (printed; visible with `pytest -s`)."""
    lines = [
        "",
        f"adversarial set: {len(VIOLATING)} violating posts, {len(SAFE)} safe controls; "
        "screen: injection-flagged; unread: a readability rule fires (whatever the model says); "
        "bare: neither, only the model stands between the post and an allow",
        *table("violating, by language", VIOLATING, lambda row: row.language, routed),
        *table("violating, by technique", VIOLATING, lambda row: row.technique, routed),
        *table("violating, by label", VIOLATING, lambda row: row.label.value, routed),
        *table("safe controls, by language", SAFE, lambda row: row.language, routed),
        *table("safe controls, by kind", SAFE, lambda row: row.technique, routed),
    ]
    safe = Counter(routed[row.index].route for row in SAFE)
    flagged = sum(1 for row in SAFE if routed[row.index].flagged)
    lines.append(
        f"safe controls: {flagged} flagged, {safe['agent']} to the agent "
        f"({safe['agent'] / len(SAFE):.0%}), {safe['human']} to a human, {safe['allow']} allowed"
    )
    allowed = [row for row in VIOLATING if routed[row.index].route == "allow"]
    lines.append(f"violating posts allowed: {len(allowed)} (listed model gaps: {len(MODEL_GAPS)})")
    lines += [f"  {describe(row, routed[row.index])}" for row in allowed]
    bare = [row for row in VIOLATING if not routed[row.index].guarded]
    lines.append(f"violating posts only the model keeps from an allow: {len(bare)}")
    lines += [f"  {describe(row, routed[row.index])}" for row in bare]
    sys.stdout.write("\n".join(lines) + "\n")
    assert len(routed) == len(ROWS)


ROUTES = ("allow", "remove", "agent", "human")
COLUMNS = (*ROUTES, "screen", "unread", "bare")


def table(
    title: str,
    rows: Iterable[Row],
    key: KeyFunction,
    routed: dict[int, Routed],
) -> list[str]:
    """One line per key: how many of its rows took each route, and which guards hold them."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        item = routed[row.index]
        counts[key(row)][item.route] += 1
        counts[key(row)]["screen"] += item.result.screen.flagged
        counts[key(row)]["unread"] += bool(item.unreadable)
        counts[key(row)]["bare"] += not item.guarded
    header = f"{title:<28}" + "".join(f"{column:>7}" for column in COLUMNS)
    body = [
        f"  {name:<26}" + "".join(f"{count[column]:>7}" for column in COLUMNS)
        for name, count in sorted(counts.items())
    ]
    return [header, *body]
