"""The fixed moderation taxonomy: events, models, the eval command and the dashboard share it."""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    SAFE = "safe"
    SPAM = "spam"
    HARASSMENT = "harassment"
    HATE = "hate"
    VIOLENCE = "violence"
    SEXUAL = "sexual"
    SEXUAL_MINORS = "sexual_minors"
    SELF_HARM = "self_harm"
    ILLICIT = "illicit"


# Column order of every probability matrix the models produce.
CATEGORIES: tuple[Category, ...] = tuple(Category)
VIOLATING: tuple[Category, ...] = tuple(c for c in Category if c is not Category.SAFE)


class Decision(StrEnum):
    ALLOW = "allow"
    REMOVE = "remove"
    REVIEW = "review"


class Stage(StrEnum):
    MODEL = "model"
    AGENT = "agent"
    HUMAN = "human"
