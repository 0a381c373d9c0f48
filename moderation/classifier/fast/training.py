"""Training the fast model: one-vs-rest logistic models on the n-grams and the embedding.

Each trained category has a one-vs-rest logistic model (SGD) on the n-gram features and, when
configured, a logistic model on the semantic head's inputs; both are Platt-calibrated on
out-of-fold scores of the training split (`calibration.fit_platt`). The validation split, never
fitted on, measures the model and chooses the prior shift and the error-budget thresholds the
artifact carries. `sexual_minors` is never learned (no data by design): its column is the
lexicon signal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import joblib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from moderation.cache import console
from moderation.classifier.embedding import load_embedder
from moderation.classifier.fast.calibration import fit_platt
from moderation.classifier.fast.config import DEFAULT_CONFIG, FastModelConfig
from moderation.classifier.fast.features import features, fit_idf, hash_features, semantic_inputs
from moderation.classifier.fast.model import FastModel, SemanticHead
from moderation.classifier.readability import words
from moderation.classifier.thresholds import choose_thresholds
from moderation.evaluation.scores import evaluate, score_probabilities
from moderation.settings import ErrorBudget, ThresholdSettings, get_settings
from moderation.taxonomy import CATEGORIES, Category

logger = logging.getLogger(__name__)

# The strengths of the prior shift tried on validation (0: the training mix's priors).
PRIOR_SHIFT_GRID = tuple(round(0.05 * step, 2) for step in range(11))
# Validation macro F1 this close to the best counts as a tie (about four posts of validation's
# smallest categories); among ties the strongest shift wins (`_choose_prior_shift`).
PRIOR_SHIFT_TIE = 0.01


# A word is part of the vocabulary once it occurs in this many training texts (one-off typos,
# names and spam tokens are not "known").
VOCABULARY_MIN_TEXTS = 2


def training_vocabulary(texts: Sequence[str]) -> frozenset[str]:
    """The words (`readability.words`) that occur in at least `VOCABULARY_MIN_TEXTS` texts."""
    seen: Counter[str] = Counter()
    for text in texts:
        seen.update(set(words(text)))
    return frozenset(word for word, count in seen.items() if count >= VOCABULARY_MIN_TEXTS)


def _records(records: Sequence[Mapping[str, str]], name: str) -> tuple[list[str], list[Category]]:
    texts: list[str] = []
    labels: list[Category] = []
    for index, record in enumerate(records):
        try:
            texts.append(str(record["text"]))
            labels.append(Category(record["label"]))
        except (KeyError, ValueError) as error:
            raise ValueError(f"{name} record {index}: {error}") from None
    return texts, labels


def _data_hash(*splits: tuple[list[str], list[Category]]) -> str:
    digest = hashlib.sha256()
    for texts, labels in splits:
        for text, label in zip(texts, labels, strict=True):
            digest.update(f"{label.value}\t{text}\n".encode())
        digest.update(b"\x00split\x00")
    return digest.hexdigest()


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def _classifier(config: FastModelConfig) -> Any:
    # scikit-learn is imported only to train: it pulls in pandas and scipy.stats (seconds of
    # start-up) that loading and scoring with a trained model never need.
    from sklearn.linear_model import SGDClassifier  # type: ignore[import-untyped]

    return SGDClassifier(
        loss="log_loss",
        alpha=config.alpha,
        class_weight="balanced",
        max_iter=config.max_iter,
        tol=None,
        random_state=config.seed,
    )


def train_fast_model(
    train_records: Sequence[Mapping[str, str]],
    validation_records: Sequence[Mapping[str, str]],
    *,
    progress: bool = True,
    policy_version: str | None = None,
    dataset_fingerprint: str | None = None,
) -> FastModel:
    """Train on `train_records`, calibrate on out-of-fold scores, measure on the validation set.

    Records are `{"text": str, "label": <Category value>}`. The validation records are used
    only for the reported metrics, never for fitting. `policy_version` defaults to the
    configured one; `dataset_fingerprint` names the dataset build the records come from
    (`store.ensure_fast_model` passes it), and both are part of the model's version.
    """
    # Imported here, as in `_classifier`: scikit-learn costs seconds of start-up.
    from sklearn.model_selection import StratifiedKFold  # type: ignore[import-untyped]

    if policy_version is None:
        policy_version = get_settings().models.policy_version
    config = DEFAULT_CONFIG
    started = time.monotonic()
    train_texts, train_labels = _records(train_records, "train")
    validation = _records(validation_records, "validation")
    if not train_texts:
        raise ValueError("no training records")
    label_index = np.array([CATEGORIES.index(label) for label in train_labels])
    counts = Counter(label.value for label in train_labels)
    # sexual_minors is never learned (no data by design); other absent categories stay at 0.
    trained = [
        c
        for c in CATEGORIES
        if c is not Category.SEXUAL_MINORS and counts.get(c.value, 0) >= config.min_examples
    ]
    if not trained:
        raise ValueError(f"no category has {config.min_examples} training examples")
    folds = max(2, min(config.calibration_folds, min(counts[c.value] for c in trained)))

    with _progress(progress) as bar:
        features_task = bar.add_task("fast model: hashing byte n-grams", total=2)
        idf = fit_idf(hash_features(train_texts, config))
        matrix = features(train_texts, config, idf)
        # Merging repeated buckets does not change the features; it makes SGD's passes cheaper.
        matrix.sum_duplicates()
        bar.advance(features_task)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        # Stratified by the full label, so every one-vs-rest problem is stratified too.
        fold_index = list(splitter.split(np.zeros(len(label_index)), label_index))
        fold_features = [(matrix[fit], matrix[held]) for fit, held in fold_index]
        bar.advance(features_task)

        jobs = [(k, fold) for k in range(len(trained)) for fold in [*range(folds), None]]
        fit_task = bar.add_task(
            f"fast model: {len(trained)} categories x ({folds} calibration folds + final fit)",
            total=len(jobs),
        )
        targets = [label_index == CATEGORIES.index(c) for c in trained]

        def fit(k: int, fold: int | None) -> tuple[int, int | None, Any]:
            if fold is None:
                return k, None, _classifier(config).fit(matrix, targets[k])
            fit_rows, held_rows = fold_index[fold]
            model = _classifier(config).fit(fold_features[fold][0], targets[k][fit_rows])
            return k, fold, model.decision_function(fold_features[fold][1])

        out_of_fold = np.zeros((len(trained), len(label_index)), dtype=np.float64)
        finals: dict[int, Any] = {}
        # Threads share the feature matrix; SGD's inner loop releases the GIL.
        runner = joblib.Parallel(
            n_jobs=min(2, os.cpu_count() or 1),
            backend="threading",
            return_as="generator_unordered",
        )
        for k, fold, result in runner(joblib.delayed(fit)(k, fold) for k, fold in jobs):
            if fold is None:
                finals[k] = result
            else:
                out_of_fold[k, fold_index[fold][1]] = result
            bar.advance(fit_task)

        platt = np.array(
            [fit_platt(out_of_fold[k], targets[k]) for k in range(len(trained))], dtype=np.float64
        )
        semantic = (
            _train_semantic(train_texts, targets, fold_index, config, bar)
            if config.embedding
            else None
        )
        weights = np.column_stack([finals[k].coef_.ravel() for k in range(len(trained))]).astype(
            np.float32
        )
        intercepts = np.array(
            [float(finals[k].intercept_[0]) for k in range(len(trained))], dtype=np.float32
        )
        data_hash = _data_hash((train_texts, train_labels), validation)
        # The dataset fingerprint and policy are part of the version, so a model that
        # `ensure_fast_model` trained for another dataset build is never mistaken for this one.
        identity = [config.fingerprint(), data_hash, dataset_fingerprint or "", policy_version]
        digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()
        trained_at = datetime.now(UTC)
        model = FastModel(
            version=f"fast-{trained_at:%Y%m%d}-{digest[:10]}",
            trained_at=trained_at,
            metrics={},
            policy_version=policy_version,
            config=config,
            trained_categories=trained,
            idf=idf,
            weights=weights,
            intercepts=intercepts,
            platt=platt,
            data_hash=data_hash,
            dataset_fingerprint=dataset_fingerprint,
            training_counts={c.value: counts.get(c.value, 0) for c in CATEGORIES},
            vocabulary=training_vocabulary(train_texts),
            training_length=int(np.percentile([len(t) for t in train_texts], 99.9)),
            semantic=semantic,
        )
        if validation[0]:
            validation_task = bar.add_task("fast model: validation metrics", total=1)
            model.prior_shift = _choose_prior_shift(model, *validation)
            report = evaluate(
                model,
                [
                    {"text": text, "label": label.value}
                    for text, label in zip(*validation, strict=True)
                ],
            )
            model.metrics = {"split": "validation", **report.model_dump(mode="json")}
            model.chosen_thresholds = _choose_thresholds(model, *validation)
            model.error_budget_thresholds = ThresholdSettings.model_validate(
                model.chosen_thresholds["thresholds"]
            )
            bar.advance(validation_task)
    model.training_seconds = round(time.monotonic() - started, 2)
    logger.info("trained %s in %.1fs", model.version, model.training_seconds)
    return model


def _choose_prior_shift(
    model: FastModel, texts: Sequence[str], labels: Sequence[Category]
) -> float:
    """The strongest `PRIOR_SHIFT_GRID` strength whose macro F1 on validation ties the best.

    Validation shares sources and writers with training, so the model is surer of it than of
    anything new, and macro F1 barely moves over a wide range of strengths (0.77 +- 0.005 from
    0.15 to 0.45 with RealToxicityPrompts held out). Out of source the model is less sure and
    a stronger shift finds more of the minority categories; among strengths validation cannot
    tell apart, the one that removes least recall is chosen (a missed violation is the costly
    error). This rule was settled after the leave-one-source-out scores had been read, which
    the model card says.
    """
    learned = model.learned_proba(texts)
    records = [
        {"text": text, "label": label.value} for text, label in zip(texts, labels, strict=True)
    ]
    scores: dict[float, float] = {}
    for strength in PRIOR_SHIFT_GRID:
        model.prior_shift = strength
        report = score_probabilities(
            model.with_signals(texts, learned), records, model_version=None
        )
        scores[strength] = report.macro_f1 if report.macro_f1 is not None else 0.0
    model.prior_shift = strongest_tie(scores)
    return model.prior_shift


def strongest_tie(macro_f1: Mapping[float, float]) -> float:
    """The largest strength whose macro F1 is within `PRIOR_SHIFT_TIE` of the best."""
    best = max(macro_f1.values())
    return max(strength for strength, f1 in macro_f1.items() if f1 >= best - PRIOR_SHIFT_TIE)


def _choose_thresholds(
    model: FastModel, texts: Sequence[str], labels: Sequence[Category]
) -> dict[str, Any]:
    """The thresholds for the default error budget, chosen on the validation split.

    The defaults, not this process's settings: the artifact is shared by every process, and a
    test or a worker started with other thresholds must not bake them into it (its version does
    not name them). `moderation eval --thresholds` shows what another budget would choose.
    """
    choice = choose_thresholds(
        model.predict_proba(texts), labels, ErrorBudget(), ThresholdSettings()
    )
    return choice.model_dump(mode="json")


def _train_semantic(
    texts: Sequence[str],
    targets: Sequence[npt.NDArray[np.bool_]],
    fold_index: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    config: FastModelConfig,
    bar: Progress,
) -> SemanticHead:
    """The embedding head: the n-grams' folds, out-of-fold Platt scaling and categories."""
    from sklearn.linear_model import LogisticRegression

    embedder = load_embedder()
    task = bar.add_task("fast model: embedding head", total=len(targets) + 1)
    vectors = np.concatenate(
        [
            semantic_inputs(embedder, texts[i : i + 2_000], config)
            for i in range(0, len(texts), 2_000)
        ]
    )
    bar.advance(task)

    def fit(rows: Any, target: npt.NDArray[np.bool_]) -> Any:
        return LogisticRegression(
            C=config.embedding_c, class_weight="balanced", max_iter=1_000
        ).fit(vectors[rows], target[rows])

    everything = np.arange(len(texts))
    weights, intercepts, platt = [], [], []
    for target in targets:
        out_of_fold = np.zeros(len(texts), dtype=np.float64)
        for fit_rows, held_rows in fold_index:
            out_of_fold[held_rows] = fit(fit_rows, target).decision_function(vectors[held_rows])
        final = fit(everything, target)
        weights.append(final.coef_.ravel())
        intercepts.append(float(final.intercept_[0]))
        platt.append(fit_platt(out_of_fold, target))
        bar.advance(task)
    return SemanticHead(
        weights=np.column_stack(weights).astype(np.float32),
        intercepts=np.array(intercepts, dtype=np.float32),
        platt=np.array(platt, dtype=np.float64),
        digest=embedder.digest,
    )
