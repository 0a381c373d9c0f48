"""The fast model: calibrated per-category probabilities on a CPU, tens of thousands of posts/s.

`FastModel` scores a batch: hashed n-gram features (`features.py`) through one-vs-rest linear
models, Platt-calibrated and mixed with the semantic head (`calibration.py`), shifted toward an
even prior, then raised by the lexicon signals of the always-review categories (`lexicon.py`).
This module also reads and writes the model's artifact (plain numpy arrays and a JSON metadata
file; nothing in it can run code when loaded). Training is `training.py`; finding or training
the model a process should serve is `store.py`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from moderation.cache import cache_entry
from moderation.classifier.artifacts import ArtifactRefused, check_digest, read_artifact
from moderation.classifier.embedding import StaticEmbedder, load_embedder
from moderation.classifier.fast.calibration import (
    FloatArray,
    calibrated,
    mixed,
    prior_offsets,
    shift,
)
from moderation.classifier.fast.config import FastModelConfig
from moderation.classifier.fast.features import features, semantic_inputs
from moderation.classifier.fast.lexicon import self_harm_signal, sexual_minors_signal
from moderation.settings import ThresholdSettings
from moderation.taxonomy import CATEGORIES, Category

# Format 2: plain arrays (`numpy.savez_compressed`, read with `allow_pickle=False`). Format 1 was a
# joblib pickle, which runs code when loaded: such artifacts are refused, never read.
ARTIFACT_FORMAT = 2
MODEL_FILE = "model.npz"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class SemanticHead:
    """One-vs-rest logistic models on the static embedding, Platt-calibrated like the n-grams."""

    weights: npt.NDArray[np.float32]  # (embedding dim, trained categories)
    intercepts: npt.NDArray[np.float32]
    platt: FloatArray
    digest: str  # sha256 of the embedding table it was trained on

    def scores(self, vectors: npt.NDArray[np.float32]) -> FloatArray:
        return cast(FloatArray, (vectors @ self.weights + self.intercepts).astype(np.float64))

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "semantic_weights": self.weights,
            "semantic_intercepts": self.intercepts,
            "semantic_platt": self.platt,
        }

    @classmethod
    def from_arrays(cls, archive: Any, *, digest: str) -> SemanticHead:
        return cls(
            weights=archive["semantic_weights"],
            intercepts=archive["semantic_intercepts"],
            platt=archive["semantic_platt"],
            digest=digest,
        )


class FastModel:
    """A trained fast model: `predict_proba` gives calibrated probabilities in `CATEGORIES` order.

    Attributes:
        version: `fast-<yyyymmdd>-<hash of the training data, configuration, dataset and policy>`.
        trained_at: when training finished (UTC).
        metrics: validation metrics (an `EvalReport` as JSON).
        policy_version: the moderation policy (`data/policy/<version>.md`) the labels follow.
    """

    def __init__(
        self,
        *,
        version: str,
        trained_at: datetime,
        metrics: dict[str, Any],
        policy_version: str,
        config: FastModelConfig,
        trained_categories: Sequence[Category],
        idf: npt.NDArray[np.float32],
        weights: npt.NDArray[np.float32],
        intercepts: npt.NDArray[np.float32],
        platt: npt.NDArray[np.float64],
        data_hash: str,
        dataset_fingerprint: str | None = None,
        training_counts: Mapping[str, int] | None = None,
        training_seconds: float | None = None,
        vocabulary: Iterable[str] = (),
        training_length: int | None = None,
        semantic: SemanticHead | None = None,
        chosen_thresholds: dict[str, Any] | None = None,
        prior_shift: float = 0.0,
    ) -> None:
        k = len(trained_categories)
        if weights.shape != (1 << config.hash_bits, k) or intercepts.shape != (k,):
            raise ValueError("weights do not match the configuration and the trained categories")
        if platt.shape != (k, 2) or idf.shape != (1 << config.hash_bits,):
            raise ValueError("calibration or idf does not match the configuration")
        if (semantic is None) != (not config.embedding):
            raise ValueError("the configuration and the model disagree on the embedding head")
        if semantic is not None and (
            semantic.weights.shape[1] != k or semantic.intercepts.shape != (k,)
        ):
            raise ValueError("the embedding head does not match the trained categories")
        self.version = version
        self.trained_at = trained_at
        self.metrics = metrics
        self.policy_version = policy_version
        self.config = config
        self.trained_categories = tuple(trained_categories)
        self.data_hash = data_hash
        self.dataset_fingerprint = dataset_fingerprint
        self.training_counts = dict(training_counts or {})
        self.training_seconds = training_seconds
        # What the model can read (`readability`): words of two or more training texts, and
        # the 99.9th percentile of the training texts' lengths.
        self.vocabulary = frozenset(vocabulary)
        self.training_length = training_length
        self._idf = idf
        self._weights = weights
        self._intercepts = intercepts
        self._platt = platt
        self.semantic = semantic
        # The error-budget choice made on validation at training (`thresholds.ThresholdChoice`
        # as JSON); `stage1_thresholds` decides whether stage 1 uses it.
        self.chosen_thresholds = chosen_thresholds
        self.error_budget_thresholds = (
            ThresholdSettings.model_validate(chosen_thresholds["thresholds"])
            if chosen_thresholds
            else None
        )
        # How far the columns are moved toward an even prior (`prior_offsets`), chosen on
        # validation for macro F1 at training; 0 for artifacts from before it.
        self.prior_shift = prior_shift
        self._embedder: StaticEmbedder | None = None
        self._columns = np.array([CATEGORIES.index(c) for c in trained_categories], dtype=np.intp)
        self._minors_column = CATEGORIES.index(Category.SEXUAL_MINORS)
        self._self_harm_column = CATEGORIES.index(Category.SELF_HARM)

    def __repr__(self) -> str:
        return f"FastModel(version={self.version!r}, policy_version={self.policy_version!r})"

    def decision_scores(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Raw linear scores, one column per trained category (before calibration)."""
        matrix = features(texts, self.config, self._idf)
        return cast(npt.NDArray[np.float32], matrix @ self._weights + self._intercepts)

    def embedder(self) -> StaticEmbedder:
        if self._embedder is None:
            self._embedder = load_embedder()
            if self.semantic is not None and self._embedder.digest != self.semantic.digest:
                raise ValueError(
                    f"{self.version} was trained on embedding {self.semantic.digest[:12]}, "
                    f"the installed one is {self._embedder.digest[:12]}"
                )
        return self._embedder

    def learned_proba(self, texts: Sequence[str]) -> FloatArray:
        """The trained columns' calibrated probabilities (both heads mixed), before the prior
        shift and the lexicon signals; shape (len(texts), len(trained_categories))."""
        scores = self.decision_scores(texts).astype(np.float64)
        learned = calibrated(scores, self._platt)
        if self.semantic is not None:
            vectors = semantic_inputs(self.embedder(), texts, self.config)
            semantic = calibrated(self.semantic.scores(vectors), self.semantic.platt)
            learned = mixed(learned, semantic, self.config.embedding_weight)
        return learned

    def training_shares(self) -> FloatArray:
        """Each trained category's share of the training rows, in trained-column order."""
        counts = np.array(
            [self.training_counts.get(c.value, 0) for c in self.trained_categories], np.float64
        )
        shares: FloatArray = counts / max(counts.sum(), 1.0)
        return shares

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """Probabilities, shape (len(texts), 9), columns in `CATEGORIES` order: calibrated,
        then shifted toward an even prior by `prior_shift`, then raised by the lexicon signals."""
        if len(texts) == 0 or not self.trained_categories:
            return self.with_signals(texts, None)
        return self.with_signals(texts, self.learned_proba(texts))

    def with_signals(self, texts: Sequence[str], learned: FloatArray | None) -> FloatArray:
        """The full probability matrix of `learned_proba`'s columns (None: no trained column)."""
        probabilities = np.zeros((len(texts), len(CATEGORIES)), dtype=np.float64)
        if len(texts) == 0:
            return probabilities
        if learned is not None:
            if self.prior_shift:
                learned = shift(learned, prior_offsets(self.training_shares(), self.prior_shift))
            probabilities[:, self._columns] = learned
        for column, signal_of in (
            (self._minors_column, sexual_minors_signal),
            (self._self_harm_column, self_harm_signal),
        ):
            signal = np.fromiter((signal_of(t) for t in texts), np.float64, len(texts))
            probabilities[:, column] = np.maximum(probabilities[:, column], signal)
        return probabilities

    # --- artifact ---------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "format": ARTIFACT_FORMAT,
            "kind": "fast",
            "version": self.version,
            "trained_at": self.trained_at.isoformat(),
            "policy_version": self.policy_version,
            "categories": [c.value for c in CATEGORIES],
            "trained_categories": [c.value for c in self.trained_categories],
            "sexual_minors": "lexicon signal (sexual_minors_signal); no training data by design",
            "config": asdict(self.config),
            "config_fingerprint": self.config.fingerprint(),
            "data_hash": self.data_hash,
            "dataset_fingerprint": self.dataset_fingerprint,
            "training_counts": self.training_counts,
            "training_seconds": self.training_seconds,
            "training_length": self.training_length,
            "vocabulary_words": len(self.vocabulary),
            "chosen_thresholds": self.chosen_thresholds,
            "prior_shift": self.prior_shift,
            "embedding": (
                {"name": self.config.embedding, "sha256": self.semantic.digest}
                if self.semantic is not None
                else None
            ),
            "metrics": self.metrics,
            "files": {"model": MODEL_FILE},
        }

    def save(self, directory: Path) -> Path:
        """Write the artifact to `directory/<version>/` atomically and return that path.

        An existing directory for the same version is kept: the version hashes the training
        data and configuration, so it holds the same model.
        """

        def write(staging: Path) -> None:
            arrays: dict[str, npt.NDArray[Any]] = {
                "idf": self._idf,
                "weights": self._weights,
                "intercepts": self._intercepts,
                "platt": self._platt,
                # Fixed-width unicode: loads with allow_pickle=False.
                "vocabulary": np.array(sorted(self.vocabulary), dtype=np.str_),
            }
            if self.semantic is not None:
                arrays.update(self.semantic.arrays())
            np.savez_compressed(staging / MODEL_FILE, allow_pickle=False, **arrays)
            (staging / METADATA_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")

        return cache_entry(directory, self.version, write)

    @classmethod
    def load(cls, path: Path, *, sha256: str | None = None) -> FastModel:
        """Load an artifact directory written by `save`.

        With `sha256` (the registry's digest, `artifacts.artifact_digest`), the files are
        refused unless they have that digest; they are read once, checked, then parsed.

        Raises:
            ArtifactRefused: a digest that does not match, a link in the directory, or a
                format-1 (pickle) artifact.
        """
        files = read_artifact(path)
        if sha256 is not None:
            check_digest(files, sha256, where=str(path))
        return cls.from_files(files, where=str(path))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, where: str) -> FastModel:
        """The model of an artifact's files (`read_artifact`); no file can run code."""
        metadata = json.loads(files[METADATA_FILE])
        if metadata.get("kind") != "fast":
            raise ValueError(f"{where} is not a fast-model artifact")
        if metadata.get("format") != ARTIFACT_FORMAT:
            raise ArtifactRefused(
                "format",
                f"{where} is a fast-model artifact of format {metadata.get('format')}, not "
                f"{ARTIFACT_FORMAT} (format 1 was a pickle and is never loaded; retrain it)",
            )
        if metadata["categories"] != [c.value for c in CATEGORIES]:
            raise ValueError(f"{where} was trained for another taxonomy: {metadata['categories']}")
        model_file = metadata["files"]["model"]
        if model_file not in files:
            raise ValueError(f"{where} has no {model_file!r}")
        # allow_pickle=False: an object array (a pickle inside the archive) raises, never runs.
        with np.load(io.BytesIO(files[model_file]), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("idf", "weights", "intercepts", "platt")}
            vocabulary = archive["vocabulary"].tolist() if "vocabulary" in archive else []
            semantic = (
                SemanticHead.from_arrays(archive, digest=metadata["embedding"]["sha256"])
                if metadata.get("embedding")
                else None
            )
        return cls(
            version=metadata["version"],
            trained_at=datetime.fromisoformat(metadata["trained_at"]),
            metrics=metadata["metrics"],
            policy_version=metadata["policy_version"],
            # Artifacts from before the embedding head have no "embedding" key: n-grams only.
            # Nor, from before the offensive score, an "offensive" key: the embedding alone.
            config=FastModelConfig(**{"embedding": "", "offensive": "", **metadata["config"]}),
            trained_categories=[Category(c) for c in metadata["trained_categories"]],
            idf=arrays["idf"],
            weights=arrays["weights"],
            intercepts=arrays["intercepts"],
            platt=arrays["platt"],
            data_hash=metadata["data_hash"],
            dataset_fingerprint=metadata.get("dataset_fingerprint"),
            training_counts=metadata.get("training_counts"),
            training_seconds=metadata.get("training_seconds"),
            vocabulary=vocabulary,
            training_length=metadata.get("training_length"),
            semantic=semantic,
            chosen_thresholds=metadata.get("chosen_thresholds"),
            prior_shift=float(metadata.get("prior_shift", 0.0)),
        )
