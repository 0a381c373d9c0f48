"""Stage 1 never allows what it cannot read: other languages, unfamiliar words, outsized texts.

The texts are written for the test (functional checks of the rules, not a quality claim).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from moderation.classifier.cascade import first_stage
from moderation.classifier.readability import (
    READABLE,
    assess,
    detected_language,
    diluted,
    disguised,
    passages,
    sentences,
    words,
)
from moderation.evaluation.routing import buried_records, long_text_routing
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


# "see you at the beach tomorrow" with "beach" disguised in each way a reader still sees through.
@pytest.mark.parametrize(
    "text",
    [
        "see you at the b\u0435\u0430ch tomorrow",  # Cyrillic е, а inside a Latin word
        "see you at the \u0432each tomorrow",  # Cyrillic в for b, at the start of the word
        "see you at the b\u200be\u200ba\u200bc\u200bh tomorrow",  # zero-width spaces
        "see you at the b\u00adea\u2060ch tomorrow",  # soft hyphen, word joiner
        "see you at the b\u0336e\u0336a\u0336c\u0336h\u0336 tomorrow",  # strike-through marks
        "see you at the b e a c h tomorrow",  # spaced out
        "see you at the b.e.a.c.h tomorrow",
        "see you at the b🔥e🔥a🔥c🔥h tomorrow",  # split by emoji
        "see you at the b❄️e❄️a❄️c❄️h tomorrow",  # emoji with a variation selector
        "see you at the ｂｅａｃｈ tomorrow",  # fullwidth
        "see you at the 𝐛𝐞𝐚𝐜𝐡 tomorrow",  # mathematical bold
        "see you at the %62%65%61%63%68 tomorrow",  # percent escapes of plain letters
        "see you at the &#98;&#101;&#97;&#99;&#104; tomorrow",  # character references
        "see you at the &#x62;&#x65;&#x61;&#x63;&#x68; tomorrow",
        "see you at the b3ach tomorrow",  # leetspeak of a known word
        "see you at the b34ch t0m0rr0w",
    ],
    ids=[
        "cyrillic",
        "cyrillic-first",
        "zero-width",
        "soft-hyphen",
        "strike-through",
        "spaced",
        "dotted",
        "emoji",
        "emoji-selector",
        "fullwidth",
        "math-bold",
        "percent",
        "entities",
        "hex-entities",
        "leet",
        "leet-digits",
    ],
)
def test_a_disguised_word_is_never_allowed(settings: Settings, text: str) -> None:
    assert disguised(text, VOCABULARY)
    [(decision, signals, to_agent)] = stage_one(settings, text)
    assert decision is Decision.REVIEW and to_agent
    assert "unreadable:disguised-words" in signals


@pytest.mark.parametrize(
    "text",
    [
        "Москва and Kyiv are lovely in winter",  # words of two scripts, each word of one
        "a 5μm filter and 20 μg of vitamin D",  # Greek mu in units
        "café, crème brûlée and a piña colada",  # accented letters
        unicodedata.normalize("NFD", "café, crème brûlée, Tôi mệt mỏi lắm rồi"),  # typed as marks
        "n̈ is rare but one stray mark is not a disguise",
        "ⓘ tap the icon for more",  # one enclosed letter is an icon
        "می‌خواهم بروم",  # zero-width non-joiner inside a Persian word
        "ok, U.S.A. and e.g. a car, i.e. a bus",  # initials and abbreviations
        "my mp3s, 4chan, covid19, the 3am train and the 4th of july",  # digits spelling nothing
        "see you l8r, b4 the game",  # short abbreviations
        "@beach_cafe see you @tomorrow",  # mentions
        "https://ru.wikipedia.org/wiki/%D0%9C%D0%BE%D1%81%D0%BA%D0%B2%D0%B0",  # escaped Cyrillic
        "see my%20holiday%20photos%2C%20album",  # escaped spaces and commas
        "fish &amp; chips &#8212; &#169; 2024",  # entities for punctuation and symbols
    ],
)
def test_ordinary_text_is_not_disguised(text: str) -> None:
    assert not disguised(text, VOCABULARY)


def test_leetspeak_counts_only_when_the_model_knows_the_word() -> None:
    assert disguised("see you at the b3ach", VOCABULARY)
    assert not disguised("see you at the b3ach", VOCABULARY - {"beach"})
    assert not disguised("see you at the b3ach", None)  # no vocabulary: leetspeak is not judged


# --- the passage rule: a long text is read sentence by sentence before stage 1 allows it --------

THREAT = "Tonight I will hurt him badly."
ESSAY = (
    "We spent the whole summer at the beach with friends and family. "
    "My sister made soup for dinner and we talked about the game for hours. "
    "Does anyone know a good recipe for banana bread, the one with walnuts? "
    "Thanks everyone for coming, what a lovely sunset it was on the last day. "
    "Next year we will rent the same house again and bring the dog along. "
    "The kids want to learn to sail, so we booked a week of lessons. "
)


class ReadsShortThreats(ConfidentlySafe):
    """Reads a short sentence with "hurt" as violence; anything longer dilutes it to safe."""

    training_length = 10_000

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        out = super().predict_proba(texts)
        for row, text in enumerate(texts):
            if "hurt" in text and len(text) < 200:
                out[row, CATEGORIES.index(Category.SAFE)] = 0.2
                out[row, CATEGORIES.index(Category.VIOLENCE)] = 0.7
        return out


def stage_one_reading(settings: Settings, *texts: str) -> list[tuple[Decision, list[str]]]:
    posts = [PostSubmitted(post_id=f"p{i}", text=t, author_id="u") for i, t in enumerate(texts)]
    results = first_stage(posts, ReadsShortThreats(), settings, agent_enabled=True)
    return [(r.verdict.decision, r.verdict.signals) for r in results]


def test_a_threat_inside_a_long_text_withholds_the_allow(settings: Settings) -> None:
    buried = ESSAY[:200] + THREAT + " " + ESSAY[200:]
    assert len(buried) >= settings.readability.passage_check_chars
    results = stage_one_reading(settings, buried, ESSAY, THREAT)
    assert results == [
        (Decision.REVIEW, ["unreadable:passage:violence"]),
        (Decision.ALLOW, []),  # every sentence reads safe alone
        # Short: the passage rule does not apply, the whole-text scores do (no threshold
        # passed, so uncertain, with no readability signal).
        (Decision.REVIEW, []),
    ]


def test_the_passage_rule_is_a_setting(settings: Settings) -> None:
    buried = ESSAY + THREAT
    off = settings.model_copy(
        update={"readability": settings.readability.model_copy(update={"passage_check_chars": 0})}
    )
    assert stage_one_reading(off, buried) == [(Decision.ALLOW, [])]
    longer = settings.model_copy(
        update={
            "readability": settings.readability.model_copy(
                update={"passage_check_chars": len(buried) + 1}
            )
        }
    )
    assert stage_one_reading(longer, buried) == [(Decision.ALLOW, [])]
    assert stage_one_reading(settings, buried) == [
        (Decision.REVIEW, ["unreadable:passage:violence"])
    ]


def test_passages_are_sentences_with_short_pieces_joined() -> None:
    text = "Hi. Ok.\nThis sentence is long enough to be read alone by itself. Short! " + THREAT
    assert passages(text, 64) == [
        "Hi. Ok. This sentence is long enough to be read alone by itself.",
        "Short! Tonight I will hurt him badly.",
    ]
    assert passages(text, 1) == ["Hi. Ok. This sentence is long enough to be read alone by itself."]
    assert passages("no break at all", 64) == ["no break at all"]
    assert sentences("One. Two!\n\nThree… four 3.5 km") == ["One.", "Two!", "Three…", "four 3.5 km"]


def scores_of(**given: float) -> dict[Category, float]:
    return {c: given.get(c.value, 0.0) for c in CATEGORIES}


def test_diluted_names_the_strongest_category_read_as_more_likely_than_safe() -> None:
    assert diluted([scores_of(safe=0.9, violence=0.3), scores_of(safe=0.6, hate=0.5)]) is None
    assert (
        diluted(
            [
                scores_of(safe=0.3, harassment=0.4),
                scores_of(safe=0.9),
                scores_of(safe=0.2, violence=0.7, hate=0.5),
            ]
        )
        is Category.VIOLENCE
    )
    # Spam in one sentence of an essay is not what the rule is for.
    assert diluted([scores_of(safe=0.1, spam=0.9)]) is None


def test_the_long_text_report_measures_buried_posts_with_and_without_the_rule(
    settings: Settings,
) -> None:
    long_safe = [{"text": ESSAY * 2 + f"Day {n} was the best.", "label": "safe"} for n in range(3)]
    records = [
        *long_safe,
        {"text": THREAT, "label": "violence"},
        {"text": "WIN a FREE car now hurt", "label": "spam"},  # spam is never buried
        {"text": "ok", "label": "safe"},  # too short to host
    ]
    buried = buried_records(records, count=20, seed=1)
    assert len(buried) == 20
    assert all(THREAT in row["text"] and row["label"] == "violence" for row in buried)
    assert all(len(row["text"]) > len(ESSAY) for row in buried)
    report = long_text_routing(ReadsShortThreats(), records, settings)
    assert report is not None
    assert (report.buried_posts, report.long_safe_posts) == (300, 3)
    assert report.buried_allowed == 0.0 and report.buried_allowed_without_rule == 1.0
    assert report.long_safe_allowed == report.long_safe_allowed_without_rule == 1.0
    assert long_text_routing(ReadsShortThreats(), records[3:], settings) is None
