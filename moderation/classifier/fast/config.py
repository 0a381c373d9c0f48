"""The fast model's configuration and its fingerprint: what makes two trained models the same.

`FastModelConfig.fingerprint` is part of every model's version and of the key under which
`store.ensure_fast_model` looks for a trained artifact, so it must change exactly when a retrain
would give another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from moderation.classifier import embedding as embedding_module
from moderation.classifier import offensive as offensive_module
from moderation.classifier.embedding import EMBEDDER_NAME
from moderation.classifier.offensive import OFFENSIVE_NAME

# The modules of this package whose code decides what a trained model is: its inputs
# (features.py), the lexicon signals in its columns (lexicon.py), calibration and the prior
# shift (calibration.py), and the training procedure, including the prior shift and thresholds
# it chooses on validation (training.py). Not model.py or store.py: they read, write and find
# artifacts and apply the functions above, so a faster or safer loader keeps every trained model.
# Read as files, not imported: these modules import this one.
DEFINING_MODULES = ("features.py", "lexicon.py", "calibration.py", "training.py")


@dataclass(frozen=True)
class FastModelConfig:
    """Everything that shapes a trained model; part of its version hash."""

    ngram_min: int = 2
    ngram_max: int = 5
    hash_bits: int = 20
    alpha: float = 1e-5
    max_iter: int = 30
    calibration_folds: int = 5
    seed: int = 0
    # A category needs this many training examples to get a model; otherwise its column is 0.
    min_examples: int = 2
    # The semantic head (`embedding.py`): "" trains the n-gram model alone.
    embedding: str = EMBEDDER_NAME
    # Inverse regularization of the embedding head's logistic models.
    embedding_c: float = 10.0
    # Each probability is (1 - w) * n-gram + w * embedding, both calibrated: an allow needs both
    # heads to find the post safe, so a source whose wording the n-grams never saw (and call
    # safe with confidence) is held back by the head that reads meaning.
    embedding_weight: float = 0.5
    # The offensive-language score (`offensive.py`) as one more input of the semantic head:
    # "" leaves it out.
    offensive: str = OFFENSIVE_NAME

    def fingerprint(self) -> str:
        """Hash of what defines a trained model.

        The configuration; the source of `DEFINING_MODULES` (features.py, lexicon.py,
        calibration.py, training.py: inputs, signals, calibration, training); and what defines
        the embedding's vectors and the offensive score (pinned files, clipping), not the code
        computing them: a faster embedding that gives the same vectors keeps every trained model.
        Not the artifact code (model.py, store.py), for the same reason.
        """
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for name in DEFINING_MODULES:
            digest.update(Path(__file__).with_name(name).read_bytes())
        digest.update(embedding_module.definition().encode())
        if self.offensive:
            digest.update(offensive_module.definition().encode())
        return digest.hexdigest()


DEFAULT_CONFIG = FastModelConfig()
