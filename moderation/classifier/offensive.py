"""An offensive-language score learned from ~200k posts nobody on the team wrote.

Stage 1's own sources hold few toxic posts in the voice of real comment sections: held out,
RealToxicityPrompts (Perspective-scored web text) was flagged 1.6 % of the time, because no other
source taught the model that register. `alt-profanity-check` (MIT licence) ships a linear SVM,
calibrated, on TF-IDF words, trained on about 200,000 human-labelled tweets and Wikipedia
comments (offensive or not). Zero-shot on our data it scores 78 % of the RealToxicityPrompts
texts above 0.5 and under 6 % of any safe source (`data/README.md`, "Offensive-language
score"). It is one input of the fast model's semantic head (`fast/model.py`), beside the
embedding: the head learns, per category, how much to trust it (profanity aimed at no one is
safe; an insult is harassment).

The two model files are read from the installed package (not imported: its import unpickles them
unchecked) after their digests are checked against the ones pinned here, so only the files of
the pinned wheel are ever unpickled. `scikit-learn` and `joblib` are pinned to the versions the
package was built with.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, cast

import joblib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from moderation.classifier.pinned_files import checked_digest, package_dir, pinned_definition

OFFENSIVE_PACKAGE = "alt-profanity-check==1.9.1"
OFFENSIVE_NAME = "alt-profanity-check-1.9.1"
_DIGESTS = {
    "vectorizer.joblib": "19c5200dc6a41f026e0558e2f164f5fe8d8f58e502b46b37e4385037fcfa4831",
    "model.joblib": "aeafc04849d4d93db4721cf30a86ebf22085595294b8a07d51918e7fa98f538b",
}


class OffensiveScorerUnavailable(RuntimeError):
    """The pinned package is missing, or its files are not the pinned ones."""


def definition() -> str:
    """What the scores depend on: the pinned files."""
    return pinned_definition(OFFENSIVE_NAME, _DIGESTS)


def _data_dir() -> Path:
    return package_dir("profanity_check", OFFENSIVE_PACKAGE, OffensiveScorerUnavailable) / "data"


def _checked(path: Path) -> Path:
    checked_digest(path, _DIGESTS, OFFENSIVE_PACKAGE, OffensiveScorerUnavailable)
    return path


class OffensiveScorer:
    """P(offensive) of each text, from the pinned package's vectorizer and calibrated SVM.

    The model (`CalibratedClassifierCV` over five `LinearSVC` folds, sigmoid calibration) is
    read into plain arrays once and applied with one sparse product: its `predict_proba` costs
    about 2 ms of checks per call, twice the fast model's own time on a batch of 500 short
    posts. The result is the same average of the folds' calibrated probabilities.
    """

    def __init__(self, vectorizer: Any, model: Any) -> None:
        self._vectorizer = vectorizer
        folds = model.calibrated_classifiers_
        if list(model.classes_) != [0, 1] or any(f.method != "sigmoid" for f in folds):
            raise OffensiveScorerUnavailable("expected a binary, sigmoid-calibrated model")
        self._weights = np.column_stack([f.estimator.coef_.ravel() for f in folds])
        self._intercepts = np.array([float(f.estimator.intercept_[0]) for f in folds])
        self._slopes = np.array([float(f.calibrators[0].a_) for f in folds])
        self._offsets = np.array([float(f.calibrators[0].b_) for f in folds])

    def scores(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        if not texts:
            return np.zeros(0, dtype=np.float64)
        decision = self._vectorizer.transform(list(texts)) @ self._weights + self._intercepts
        # sklearn's sigmoid calibration: P = 1 / (1 + exp(a * decision + b)), per fold.
        calibrated = 1.0 / (1.0 + np.exp(self._slopes * decision + self._offsets))
        return cast(npt.NDArray[np.float64], np.asarray(calibrated.mean(axis=1)))


@cache
def load_offensive_scorer() -> OffensiveScorer:
    """The scorer (loaded once per process, ~0.3 s).

    Raises:
        OffensiveScorerUnavailable: the package is not installed, or a file is not the pinned one.
    """
    directory = _data_dir()
    vectorizer = joblib.load(_checked(directory / "vectorizer.joblib"))
    model = joblib.load(_checked(directory / "model.joblib"))
    return OffensiveScorer(vectorizer, model)
