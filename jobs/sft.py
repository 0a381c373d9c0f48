"""Human decisions as a chat-format SFT dataset for the classifier agent's model.

Each example is what the agent is given at run time and the answer a moderator would have
wanted: the system message is `build_instructions(policy)` (the agent's instructions), the user
message is `render_post(post, stage-1 scores, screen_post(text))` exactly as the cascade builds
it but for the delimiter nonce (random at run time; derived from the post id here, so an export
run twice writes the same files), and the assistant message is an `AgentVerdict` JSON built from
the moderator's label and decision. At run time the served prompt also carries the two tool
definitions and maybe tool turns; the examples teach the final answer only.

Input: one row per human decision, a pandas DataFrame with the columns

- `post_id`, `author_id`, `text`: the post (as in `PostSubmitted`);
- `label` (a category), `decision` (`allow` | `remove`), `note` (str or None), `decided_at`
  (aware datetime): the moderator's decision;
- `model_scores`: the stage-1 verdict's scores (category name -> probability, as recorded in
  `verdicts.scores` for stage `model`), or None when that verdict is not known.

`jobs.feedback.load_decisions` returns this shape. A post decided more than once (appeals) yields
one example, its latest decision. A row without its post (text, author) or without complete
stage-1 scores is skipped: the cascade never prompts the agent without them, so no faithful
prompt exists for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moderation.classifier.agent import (
    AgentVerdict,
    CategoryScores,
    build_instructions,
    render_post,
    stable_nonce,
)
from moderation.classifier.injection.screen import screen_post
from moderation.events import PostSubmitted
from moderation.policy import Policy
from moderation.taxonomy import CATEGORIES, Category, Decision

COLUMNS = ("post_id", "author_id", "text", "label", "decision", "note", "decided_at")
# The agent's rationale is bounded (AgentVerdict.rationale); a longer note is cut to fit.
RATIONALE_LIMIT = 200
DEFAULT_RATIONALE = "A human moderator decided this post under the policy."

Example = dict[str, list[dict[str, str]]]


@dataclass(frozen=True)
class SftExport:
    """The examples, oldest decision first, and how many decision rows gave none."""

    examples: list[Example]
    skipped: int  # no post or no stage-1 scores recorded
    duplicates: int  # earlier decisions on a post decided again


def stage1_scores(model_scores: Any) -> dict[Category, float] | None:
    """The stage-1 scores as the cascade hands them to `render_post`, or None if incomplete."""
    if not isinstance(model_scores, Mapping):
        return None
    scores = {Category(name): float(value) for name, value in model_scores.items()}
    return scores if all(c in scores for c in CATEGORIES) else None


def verdict_answer(label: str, decision: str, note: str | None) -> AgentVerdict:
    """The verdict the agent should have given: the moderator's label, decision and note."""
    category = Category(label)
    rationale = (note or "").strip()[:RATIONALE_LIMIT].strip() or DEFAULT_RATIONALE
    return AgentVerdict(
        decision=Decision(decision),
        primary_category=category,
        scores=CategoryScores(**{c.value: 100 if c is category else 0 for c in CATEGORIES}),
        policy_sections=[category],
        rationale=rationale,
    )


def chat_example(
    policy: Policy,
    post: PostSubmitted,
    scores: Mapping[Category, float],
    answer: AgentVerdict,
) -> Example:
    """One conversation: the agent's system and user messages, then the wanted answer."""
    return {
        "messages": [
            {"role": "system", "content": build_instructions(policy)},
            {
                "role": "user",
                "content": render_post(
                    post,
                    scores,
                    screen_post(post.text),
                    nonce=stable_nonce(post.post_id, post.text, post.author_id),
                ),
            },
            {"role": "assistant", "content": answer.model_dump_json()},
        ]
    }


def sft_examples(decisions: pd.DataFrame, policy: Policy) -> SftExport:
    """Chat examples from human decisions (see the module docstring for the input columns)."""
    missing = [c for c in COLUMNS if c not in decisions.columns]
    if missing:
        raise ValueError(f"decisions lack the column(s) {', '.join(missing)}")
    frame = decisions.copy()
    if "model_scores" not in frame.columns:
        frame["model_scores"] = None
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    frame = frame.sort_values(["decided_at", "post_id"], kind="stable")
    latest = frame.drop_duplicates("post_id", keep="last")
    examples: list[Example] = []
    skipped = 0
    for row in latest.itertuples(index=False):
        scores = stage1_scores(row.model_scores)
        if scores is None or not isinstance(row.text, str) or not isinstance(row.author_id, str):
            skipped += 1
            continue
        post = PostSubmitted(post_id=str(row.post_id), author_id=row.author_id, text=row.text)
        note = row.note if isinstance(row.note, str) else None
        answer = verdict_answer(str(row.label), str(row.decision), note)
        examples.append(chat_example(policy, post, scores, answer))
    return SftExport(
        examples=examples,
        skipped=skipped,
        duplicates=len(frame) - len(latest),
    )


def write_jsonl(examples: Sequence[Example], path: Path) -> Path:
    """Write one example per line, atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with staging.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")
    staging.replace(path)
    return path
