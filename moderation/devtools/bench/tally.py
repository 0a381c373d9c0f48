"""Where each post of `moderation bench --agent` ended: per stage, per fallback, against gold.

Pure functions over stage 1's results and the agent stage's answers (`AgentResult`, read with
`fallback_reason`, both `evaluation.cascade`'s: `moderation eval --cascade` reads fallbacks too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from moderation.classifier.cascade import FirstStage
from moderation.evaluation.cascade import AgentResult, fallback_reason
from moderation.taxonomy import Category, Decision

DECISIONS = tuple(d.value for d in Decision)


REVIEW_REASON_KINDS = (
    ("agent decided", "disagreement"),  # the agent's decision against its combined scores
    ("possible prompt injection", "injection_never_allowed"),
    ("always-review", "always_review"),
    ("uncertain", "uncertain"),  # the combined scores passed no threshold
)


def review_reason_kind(reason: str) -> str:
    """Why an agent verdict still needs a human, as a short label (see `cascade.combine`)."""
    return next((kind for prefix, kind in REVIEW_REASON_KINDS if reason.startswith(prefix)),
                "other")  # fmt: skip


def final_outcomes(first: Sequence[FirstStage], second: Sequence[AgentResult]) -> list[str]:
    """The final decision of every post of `first`, in order.

    `second` holds the agent's results for the first `len(second)` posts that stage 1 sent to
    the agent (in order); a post after those was not run (`not_run`). A fallback is `review`.
    """
    sent = sum(item.to_agent for item in first)
    if len(second) > sent:
        raise ValueError(f"{len(second)} agent results for {sent} posts sent to the agent")
    agent_results = iter(second)
    outcomes: list[str] = []
    for item in first:
        if not item.to_agent:
            outcomes.append(item.verdict.decision.value)
            continue
        result = next(agent_results, None)
        if result is None:
            outcomes.append("not_run")
        else:
            verdict, _ = result
            outcomes.append(verdict.decision.value if verdict else Decision.REVIEW.value)
    return outcomes


def _by_decision(decisions: Sequence[str]) -> dict[str, int]:
    counts = Counter(decisions)
    return {decision: counts[decision] for decision in DECISIONS}


def tally_cascade(first: Sequence[FirstStage], second: Sequence[AgentResult]) -> dict[str, Any]:
    """Per stage: what it decided, what it passed on, the agent's fallbacks; and the end result.

    `second` as for `final_outcomes`. Stage 1's `review` are the posts it sent straight to a
    human; the agent's `review` are its verdicts that need one, counted by `review_reasons`
    (fallbacks are counted apart).
    """
    outcomes = final_outcomes(first, second)
    sent = [item for item in first if item.to_agent]
    verdicts = [verdict for verdict, _ in second if verdict is not None]
    fallbacks = Counter(fallback_reason(review) for verdict, review in second if verdict is None)
    review_reasons = Counter(
        review_reason_kind(review.reason)
        for verdict, review in second
        if verdict is not None and review is not None
    )
    final = _by_decision(outcomes) | {"not_run": outcomes.count("not_run")}
    return {
        "posts": len(first),
        "stage1": {
            "decided": _by_decision(
                [item.verdict.decision.value for item in first if not item.to_agent]
            ),
            "to_agent": len(sent),
        },
        "agent": {
            "sent": len(sent),
            "run": len(second),
            "not_run": len(sent) - len(second),
            "decided": _by_decision([verdict.decision.value for verdict in verdicts]),
            "review_reasons": dict(sorted(review_reasons.items())),
            "fallbacks": dict(sorted(fallbacks.items())),
            "fallbacks_total": sum(fallbacks.values()),
        },
        "final": final,
        "sent_to_humans": final[Decision.REVIEW.value],
    }


def gold_agreement(
    first: Sequence[FirstStage], second: Sequence[AgentResult], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """How often an automatic decision matches the gold label (allow ⇔ safe, remove ⇔ not).

    For the posts stage 1 decided and those the agent decided (`second` as for
    `final_outcomes`); reviews, fallbacks and posts not run are left out.
    """
    matches: dict[str, list[bool]] = {"stage1": [], "agent": []}
    outcomes = final_outcomes(first, second)
    for item, outcome, label in zip(first, outcomes, labels, strict=True):
        if outcome in (Decision.ALLOW.value, Decision.REMOVE.value):
            matches["agent" if item.to_agent else "stage1"].append(
                (outcome == Decision.ALLOW.value) == (label == Category.SAFE.value)
            )
    return {
        stage: {
            "decided": len(agreed),
            "agree": sum(agreed),
            "share": round(sum(agreed) / len(agreed), 4) if agreed else None,
        }
        for stage, agreed in matches.items()
    }


def injection_report(first: Sequence[FirstStage], second: Sequence[AgentResult]) -> dict[str, Any]:
    """The injection set's path through the cascade; `ended_as_allow` must be 0."""
    tally = tally_cascade(first, second)
    outcomes = final_outcomes(first, second)
    allowed = [
        item.post.post_id
        for item, outcome in zip(first, outcomes, strict=True)
        if outcome == Decision.ALLOW.value
    ]
    stage1 = tally["stage1"]["decided"]
    return {
        "total": len(first),
        "flagged_by_screen": sum(item.screen.flagged for item in first),
        "stage1_removed": stage1[Decision.REMOVE.value],
        "stage1_allowed": stage1[Decision.ALLOW.value],
        "stage1_to_review": stage1[Decision.REVIEW.value],
        "to_agent": tally["stage1"]["to_agent"],
        "agent": tally["agent"],
        "final": tally["final"],
        "sent_to_humans": tally["sent_to_humans"],
        "ended_as_allow": len(allowed),
        "ended_as_allow_ids": allowed,
    }
