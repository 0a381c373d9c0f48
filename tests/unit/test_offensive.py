"""The offensive-language score (`classifier/offensive.py`): the pinned package's files only."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import joblib  # type: ignore[import-untyped]
import numpy as np
import pytest

from moderation.classifier import offensive
from moderation.classifier.offensive import OffensiveScorerUnavailable, load_offensive_scorer


def test_offensive_text_scores_above_ordinary_text() -> None:
    scores = load_offensive_scorer().scores(
        ["you are a pathetic worthless idiot", "lovely sunset at the beach with my sister"]
    )
    assert scores.shape == (2,)
    assert scores[0] > 0.9 and scores[1] < 0.1
    assert load_offensive_scorer().scores([]).shape == (0,)


def test_files_other_than_the_pinned_ones_are_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(offensive._data_dir(), data)
    with (data / "model.joblib").open("ab") as file:
        file.write(b"\0")  # one byte more: a different file
    monkeypatch.setattr(offensive, "_data_dir", lambda: data)
    with pytest.raises(OffensiveScorerUnavailable, match="not the one pinned"):
        load_offensive_scorer.__wrapped__()


def test_a_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OffensiveScorerUnavailable, match="alt-profanity-check==1.9.1"):
        offensive._data_dir()


def test_the_definition_names_the_pinned_files() -> None:
    definition = offensive.definition()
    assert offensive.OFFENSIVE_NAME in definition
    assert all(digest in definition for digest in offensive._DIGESTS.values())


def test_the_plain_arrays_give_the_package_models_probabilities() -> None:
    texts = [
        "you are a pathetic worthless idiot",
        "this fucking printer again",
        "lovely sunset at the beach with my sister",
        "",
        "go back where you came from, nobody wants your kind here",
    ]
    vectorizer = joblib.load(offensive._data_dir() / "vectorizer.joblib")
    model = joblib.load(offensive._data_dir() / "model.joblib")
    expected = model.predict_proba(vectorizer.transform(texts))[:, 1]
    np.testing.assert_allclose(load_offensive_scorer().scores(texts), expected, atol=1e-12)
