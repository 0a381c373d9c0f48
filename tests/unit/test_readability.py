"""Stage 1 never allows what it cannot read: other languages, unfamiliar words, outsized texts.

The texts are written for the test (functional checks of the rules, not a quality claim).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from moderation.classifier.cascade import first_stage
from moderation.classifier.readability import READABLE, assess, detected_language, words
from moderation.events import PostSubmitted
from moderation.settings import ReadabilitySettings, Settings
from moderation.taxonomy import CATEGORIES, Category, Decision

ENGLISH = (
    "i will see you at the gym tomorrow with my friends and we can talk about the game "
    "thanks everyone for coming to the beach today what a lovely sunset does anyone know a good "
    "recipe for banana bread my sister made soup for dinner"
)
VOCABULARY = frozenset(words(ENGLISH))


class ConfidentlySafe:
    """A model that would allow every post (P(safe) 0.99), knowing only `VOCABULARY`."""

    version = "safe-1"
    vocabulary = VOCABULARY
    training_length = 120

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        out = np.zeros((len(texts), len(CATEGORIES)))
        out[:, CATEGORIES.index(Category.SAFE)] = 0.99
        return out


def stage_one(settings: Settings, *texts: str) -> list[tuple[Decision, list[str], bool]]:
    posts = [PostSubmitted(post_id=f"p{i}", text=t, author_id="u") for i, t in enumerate(texts)]
    return [
        (r.verdict.decision, r.verdict.signals, r.to_agent)
        for r in first_stage(posts, ConfidentlySafe(), settings, agent_enabled=True)
    ]


@pytest.mark.parametrize(
    ("text", "signal"),
    [
        ("明日学校に行って全員撃ってやる", "unreadable:language:ja"),
        ("سأقتلك غدا في المدرسة أمام الجميع", "unreadable:language:ar"),
        ("내일 학교에서 다 죽여버릴 거야", "unreadable:language:ko"),
        ("Yarın okulda herkesi vuracağım, kimse kurtulamayacak", "unreadable:language:tr"),
        ("Jutro zabiję wszystkich w szkole, nikt nie ucieknie", "unreadable:language:pl"),
        ("Besok aku akan membunuh semua orang di kantor itu", "unreadable:language:id"),
        # Code-mixed and transliterated: CLD2 cannot name them, the words are unknown.
        (
            "kal main school mein sabko goli maar dunga, bhai tayyar rehna",
            "unreadable:unfamiliar-words",
        ),
        ("ya tebya ub'yu zavtra, nikto ne pomozhet tebe bratan", "unreadable:unfamiliar-words"),
    ],
)
def test_a_post_the_model_cannot_read_is_never_allowed(
    settings: Settings, text: str, signal: str
) -> None:
    [(decision, signals, to_agent)] = stage_one(settings, text)
    assert decision is Decision.REVIEW and to_agent
    assert signal in signals


def test_english_the_model_knows_is_allowed(settings: Settings) -> None:
    results = stage_one(
        settings,
        "Lovely sunset at the beach today, thanks everyone for coming!",
        "does anyone know a good recipe for banana bread",
        "ok",  # too short to judge: no rule fires
    )
    assert [(decision, signals) for decision, signals, _ in results] == [
        (Decision.ALLOW, []),
        (Decision.ALLOW, []),
        (Decision.ALLOW, []),
    ]


def test_a_text_far_longer_than_the_training_texts_is_not_allowed(settings: Settings) -> None:
    long = ("my sister made soup for dinner and we talked about the game. " * 8).strip()
    assert len(long) > settings.readability.length_factor * ConfidentlySafe.training_length
    [(decision, signals, _)] = stage_one(settings, long)
    assert decision is Decision.REVIEW and signals == ["unreadable:length"]


def test_the_supported_languages_are_a_setting(settings: Settings) -> None:
    turkish = "Yarın okulda herkesi vuracağım, kimse kurtulamayacak"
    with_turkish = ReadabilitySettings(supported_languages=["en", "tr"], max_unfamiliar_share=1.0)
    assert assess(turkish, with_turkish, vocabulary=VOCABULARY, training_length=None) is READABLE
    found = assess(turkish, settings.readability, vocabulary=VOCABULARY, training_length=None)
    assert "language:tr" in found.signals


def test_a_model_without_a_vocabulary_still_gets_the_language_rule(settings: Settings) -> None:
    found = assess(
        "明日学校に行って全員撃ってやる",
        settings.readability,
        vocabulary=None,
        training_length=None,
    )
    assert found.signals == ("language:ja",)
    # Short English posts CLD2 sometimes takes for Latin or Scots are not flagged by language
    # when the model knows their words.
    known = VOCABULARY | {"python", "site", "libs"}
    assert detected_language("Python 2.2 site libs?") == "la"
    found = assess(
        "Python 2.2 site libs?", settings.readability, vocabulary=known, training_length=None
    )
    assert found is READABLE
