"""The fast model: calibrated per-category probabilities on a CPU, tens of thousands of posts/s.

Features are hashed byte n-grams (2 to 5 bytes of the lower-cased UTF-8 text, digits folded to 0,
the text padded with spaces) computed for a whole batch at once with numpy: no Python loop per
n-gram, which is what makes 20,000+ posts/s per core possible. Each occurrence is weighted by its
idf and each row scaled to unit norm. Each trained category has a one-vs-rest logistic model
(SGD) whose score becomes a probability by Platt scaling fitted on out-of-fold scores of the
training split, so every column is a calibrated probability and P(safe) can drive the allow
threshold (one-vs-rest: rows do not sum to 1).

Two lexicon signals back up the always-review categories; their values sit above the review
floor and below the remove threshold, so on their own they can only send a post to a human:
`sexual_minors` has no training data by design (see `data/README.md`) and its column is
`sexual_minors_signal` (minor-age terms near sexual terms); the `self_harm` column is the larger
of the learned probability and `self_harm_signal` (first-person statements of intent).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import joblib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from moderation.classifier import embedding as embedding_module
from moderation.classifier import offensive as offensive_module
from moderation.classifier.artifacts import ArtifactRefused, check_digest, read_artifact
from moderation.classifier.embedding import EMBEDDER_NAME, StaticEmbedder, load_embedder
from moderation.classifier.offensive import OFFENSIVE_NAME, load_offensive_scorer
from moderation.classifier.readability import words
from moderation.devtools.stack.runtime import cache_entry, console
from moderation.settings import ErrorBudget, Settings, ThresholdSettings, get_settings
from moderation.taxonomy import CATEGORIES, Category

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
# Format 2: plain arrays (`numpy.savez_compressed`, read with `allow_pickle=False`). Format 1 was a
# joblib pickle, which runs code when loaded: such artifacts are refused, never read.
ARTIFACT_FORMAT = 2
MODEL_FILE = "model.npz"
METADATA_FILE = "metadata.json"

# --- sexual_minors: a lexicon signal, never a learned score ---------------------------------------

_MINOR_TERMS = re.compile(
    r"\b(child|children|kids?|minors?|under-?age|pre-?teens?|teens?|teenagers?|schoolgirls?|"
    r"schoolboys?|juveniles?|toddlers?|infants?|bab(?:y|ies)|little (?:girl|boy)s?|"
    r"young (?:girl|boy)s?|(?:1[0-7]|[1-9])[ -]?(?:yo|y/o|years?[ -]old))\b",
    re.IGNORECASE,
)
_SEXUAL_TERMS = re.compile(
    r"\b(sex|sexual\w*|sexy|porn\w*|nudes?|naked|nudity|erotic\w*|explicit|lewd|fondl\w*|"
    r"genital\w*|penis|vagina|orgasm\w*|masturbat\w*|intercourse|molest\w*|groom(?:ing|ed|s)?|"
    r"seduc\w*|aroused|horny)\b",
    re.IGNORECASE,
)
# Every term of the two patterns contains one of these stems (a cheap pre-check).
_MINOR_STEMS = (
    "child", "kid", "minor", "age", "teen", "school", "juvenile", "toddler", "infant", "bab",
    "girl", "boy", "yo", "y/o", "year",
)  # fmt: skip
_SEXUAL_STEMS = (
    "sex", "porn", "nud", "naked", "erotic", "explicit", "lewd", "fondl", "genital", "penis",
    "vagina", "orgasm", "masturbat", "intercourse", "molest", "groom", "seduc", "aroused", "horny",
)  # fmt: skip
_WORD = re.compile(r"\w+")
# Terms this many words apart or closer count as "near".
NEAR_WORDS = 8
# Both levels pass the default review floor (0.30) and stay under every remove threshold (0.85):
# the lexicon alone can route a post to a human, never remove it. "Sex education for teens"
# reaches review too; that is the price of a conservative signal.
SIGNAL_NEAR = 0.7
SIGNAL_SAME_POST = 0.4


def _has_stem(lowered: str) -> bool:
    # Plain loops over substring checks: the cheapest pre-check in CPython (no generator).
    for stem in _SEXUAL_STEMS:
        if stem in lowered:
            break
    else:
        return False
    for stem in _MINOR_STEMS:
        if stem in lowered:
            return True
    return False


def sexual_minors_signal(text: str) -> float:
    """A conservative review trigger for sexual content involving minors, in [0, 1].

    Returns `SIGNAL_NEAR` when a minor-age term and a sexual term occur within `NEAR_WORDS`
    words of each other, `SIGNAL_SAME_POST` when both occur farther apart, and 0 otherwise.
    It is a lexicon, not a calibrated probability; the always-review rule acts on it.
    """
    if not _has_stem(text.lower()):
        return 0.0
    minors = [m.start() for m in _MINOR_TERMS.finditer(text)]
    if not minors:
        return 0.0
    sexual = [m.start() for m in _SEXUAL_TERMS.finditer(text)]
    if not sexual:
        return 0.0
    # Distances in words, not characters: the index of the word each match starts in.
    word_starts = [m.start() for m in _WORD.finditer(text)]
    minor_words = [bisect.bisect_left(word_starts, offset) for offset in minors]
    sexual_words = [bisect.bisect_left(word_starts, offset) for offset in sexual]
    near = any(_has_neighbour(sexual_words, word) for word in minor_words)
    return SIGNAL_NEAR if near else SIGNAL_SAME_POST


def _has_neighbour(sorted_words: list[int], word: int) -> bool:
    """Whether a word index within `NEAR_WORDS` of `word` is in the sorted list.

    A bisection, not a scan of every pair: a post of thousands of terms stays linear-ish.
    """
    at = bisect.bisect_left(sorted_words, word - NEAR_WORDS)
    return at < len(sorted_words) and sorted_words[at] <= word + NEAR_WORDS


# --- self_harm intent: a lexicon safety net under the learned score ------------------------------

# First-person statements of intent of the kind suicide-prevention guidance lists as warning
# signs. The training data has only third-person questions ("How can I ...?") for self_harm, so
# the learned score misses them; policy says self-harm intent always reaches a human. Phrases
# that are common in harmless contexts ("I hurt myself playing football") are left out.
_SELF_HARM_INTENT = re.compile(
    r"\b(?:kill(?:ing)? myself|end(?:ing)? (?:it all|my (?:own )?life)|take my (?:own )?life|"
    r"(?:want|wanted|wanna) to die|wanna die|wish (?:i|i'?d) (?:was|were|had) (?:dead|died)|"
    r"better off dead|(?:don'?t|do not) want to (?:be here|live|wake up)|no reason to live|"
    r"harm(?:ing)? myself|suicidal|commit(?:ting)? suicide)\b",
    re.IGNORECASE,
)
_SELF_HARM_STEMS = (
    "myself",
    "life",
    "die",
    "dead",
    "want to",
    "reason to live",
    "suicid",
    "it all",
)
# Above the review floor (0.30), below the remove threshold (0.85): review, never removal.
SELF_HARM_SIGNAL = 0.5


def self_harm_signal(text: str) -> float:
    """`SELF_HARM_SIGNAL` when a post states self-harm intent in the first person, else 0.

    A lexicon, not a calibrated probability: the model's `self_harm` column is the larger of
    its learned probability and this signal, so the always-review rule sees such posts.
    """
    lowered = text.lower()
    # A cheap pre-check, as for sexual_minors_signal: every phrase contains one of these.
    for stem in _SELF_HARM_STEMS:
        if stem in lowered:
            break
    else:
        return 0.0
    return SELF_HARM_SIGNAL if _SELF_HARM_INTENT.search(lowered) else 0.0


# --- features -------------------------------------------------------------------------------------

_PRIME = np.uint64(1_099_511_628_211)  # FNV-64 prime: a polynomial rolling hash of the bytes
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads the rolling hash over buckets
# Bound on the characters hashed in one numpy pass (memory: ~5 uint64 arrays of this length).
_CHUNK_CHARS = 1_000_000


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
        """Hash of the configuration, this module's code (features, training, calibration) and
        what defines the embedding's vectors (pinned files, clipping), not the code computing
        them: a faster embedding that gives the same vectors keeps every trained model."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        digest.update(Path(__file__).read_bytes())
        digest.update(embedding_module.definition().encode())
        if self.offensive:
            digest.update(offensive_module.definition().encode())
        return digest.hexdigest()


DEFAULT_CONFIG = FastModelConfig()


def _chunks(texts: Sequence[str]) -> Iterator[Sequence[str]]:
    start, size = 0, 0
    for index, text in enumerate(texts):
        size += len(text) + 3
        if size > _CHUNK_CHARS and index > start:
            yield texts[start:index]
            start, size = index, len(text) + 3
    if start < len(texts):
        yield texts[start:]


def _hash_chunk(
    texts: Sequence[str], config: FastModelConfig
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int32]]:
    """Row and bucket of every byte n-gram of one chunk, in row order (duplicates kept)."""
    joined = "\x00".join(f" {text} " for text in texts)
    if joined.count("\x00") != len(texts) - 1:
        # The separator must only separate: a NUL inside a post becomes a space.
        joined = "\x00".join(f" {text.replace(chr(0), ' ')} " for text in texts)
    data = np.frombuffer(joined.lower().encode("utf-8", "replace"), dtype=np.uint8).copy()
    data[(data >= ord("0")) & (data <= ord("9"))] = ord("0")
    inside = data != 0
    as_int = data.astype(np.uint64)
    shift = np.uint64(64 - config.hash_bits)
    width = config.ngram_max - config.ngram_min + 1
    # One row per byte position and one column per n-gram length, so that the flattened
    # entries come out grouped by text and the sparse matrix needs no sort.
    buckets = np.zeros((len(data), width), dtype=np.uint64)
    valid = np.zeros((len(data), width), dtype=bool)
    rolling, separator_free = as_int, inside
    for n in range(1, config.ngram_max + 1):
        if n > 1:
            rolling = rolling[:-1] * _PRIME + as_int[n - 1 :]
            # An n-gram is kept only if none of its bytes is a separator (one text only).
            separator_free = separator_free[:-1] & inside[n - 1 :]
        if n >= config.ngram_min:
            column = n - config.ngram_min
            buckets[: len(rolling), column] = ((rolling + np.uint64(n)) * _GOLDEN) >> shift
            valid[: len(rolling), column] = separator_free
    row_of = np.cumsum(~inside)
    rows = np.broadcast_to(row_of[:, None], valid.shape)[valid]
    return rows, buckets[valid].astype(np.int32)


def _hash_entries(
    texts: Sequence[str], config: FastModelConfig
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int32]]:
    """Row and bucket of every n-gram occurrence of `texts`, in row order."""
    rows_parts: list[npt.NDArray[np.intp]] = []
    column_parts: list[npt.NDArray[np.int32]] = []
    offset = 0
    for chunk in _chunks(texts):
        rows, columns = _hash_chunk(chunk, config)
        rows_parts.append(rows + offset)
        column_parts.append(columns)
        offset += len(chunk)
    if not rows_parts:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int32)
    return np.concatenate(rows_parts), np.concatenate(column_parts)


def _csr(
    rows: npt.NDArray[np.intp], columns: npt.NDArray[np.int32], data: Any, n_rows: int, bits: int
) -> Any:
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return sp.csr_matrix((data, columns, indptr), shape=(n_rows, 1 << bits))


def hash_features(texts: Sequence[str], config: FastModelConfig) -> Any:
    """Byte n-gram occurrences of `texts` as a CSR matrix of ones (a bucket may repeat in a row)."""
    rows, columns = _hash_entries(texts, config)
    ones = np.ones(len(columns), dtype=np.float32)
    return _csr(rows, columns, ones, len(texts), config.hash_bits)


def features(texts: Sequence[str], config: FastModelConfig, idf: npt.NDArray[np.float32]) -> Any:
    """The model's input: each n-gram occurrence weighted by its idf, each row of unit norm.

    The norm is taken over occurrences (the root of the sum of squared idf), which needs no
    merging of repeated buckets, so no sort; a sparse product sums repeated buckets. Training
    and prediction use this same transform.
    """
    rows, columns = _hash_entries(texts, config)
    weights = idf[columns]
    norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=len(texts)))
    norms[norms == 0] = 1.0
    data = weights / norms[rows].astype(np.float32)
    return _csr(rows, columns, data, len(texts), config.hash_bits)


def _fit_idf(counts: Any) -> npt.NDArray[np.float32]:
    """Smoothed inverse document frequency of every bucket."""
    present = counts.copy()
    present.sum_duplicates()
    documents = present.shape[0]
    frequency = np.bincount(present.indices, minlength=present.shape[1])
    return cast(
        npt.NDArray[np.float32],
        (np.log((1 + documents) / (1 + frequency)) + 1).astype(np.float32),
    )


# --- calibration ----------------------------------------------------------------------------------


def fit_platt(scores: FloatArray, labels: npt.NDArray[Any]) -> tuple[float, float]:
    """Platt scaling: (a, b) with P(y=1 | s) = 1 / (1 + exp(-(a*s + b))).

    Uses Platt's smoothed targets (so a separable fold does not give a step function) and
    Newton's method with a backtracking line search on the cross-entropy.
    """
    s = scores.astype(np.float64)
    y = labels.astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(a: float, b: float) -> float:
        z = a * s + b
        # log(1 + exp(-z)) and log(1 + exp(z)) without overflow.
        return float(np.sum(target * np.logaddexp(0, -z) + (1 - target) * np.logaddexp(0, z)))

    a, b = 0.0, math.log((positives + 1) / (negatives + 1))
    current = loss(a, b)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a * s + b)))
        residual = p - target
        gradient = np.array([np.dot(residual, s), residual.sum()])
        weight = p * (1 - p)
        hessian = np.array(
            [[np.dot(weight, s * s), np.dot(weight, s)], [np.dot(weight, s), weight.sum()]]
        ) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        factor = 1.0
        while factor > 1e-10:
            candidate_a, candidate_b = a - factor * step[0], b - factor * step[1]
            candidate = loss(candidate_a, candidate_b)
            if candidate < current + 1e-4 * factor * float(gradient @ -step):
                break
            factor /= 2
        else:
            break
        improvement = current - candidate
        a, b, current = candidate_a, candidate_b, candidate
        if abs(improvement) < 1e-10 * max(1.0, abs(current)):
            break
    return a, b


# --- the model ------------------------------------------------------------------------------------


def semantic_inputs(
    embedder: StaticEmbedder, texts: Sequence[str], config: FastModelConfig
) -> npt.NDArray[np.float32]:
    """The semantic head's inputs: the embedding, then the offensive score when configured."""
    vectors = embedder.embed(list(texts))
    if not config.offensive:
        return vectors
    offensive = load_offensive_scorer().scores(texts).astype(np.float32)
    return np.hstack([vectors, offensive[:, None]])


def _calibrated(scores: FloatArray, platt: FloatArray) -> FloatArray:
    z = scores * platt[:, 0] + platt[:, 1]
    probabilities: FloatArray = 1 / (1 + np.exp(-z))
    return probabilities


# The strengths of the prior shift tried on validation (0: the training mix's priors).
PRIOR_SHIFT_GRID = tuple(round(0.05 * step, 2) for step in range(11))
# Validation macro F1 this close to the best counts as a tie (about four posts of validation's
# smallest categories); among ties the strongest shift wins (`_choose_prior_shift`).
PRIOR_SHIFT_TIE = 0.01


def prior_offsets(shares: FloatArray, strength: float) -> FloatArray:
    """Logit offsets that move each column `strength` of the way from its training share to
    an even prior: the share of safe posts in training (about 70 %) says which sources were
    packaged, not how often real traffic is safe, and at full weight it wins the argmax of
    most threats and self-harm posts the model half recognizes."""
    clipped = np.clip(shares, 1e-4, 1 - 1e-4)
    offsets: FloatArray = -strength * np.log(clipped / (1 - clipped))
    return offsets


def _shifted(probabilities: FloatArray, offsets: FloatArray) -> FloatArray:
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    z = np.log(clipped / (1 - clipped)) + offsets
    shifted: FloatArray = 1 / (1 + np.exp(-z))
    return shifted


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
        learned = _calibrated(scores, self._platt)
        if self.semantic is not None:
            vectors = semantic_inputs(self.embedder(), texts, self.config)
            semantic = _calibrated(self.semantic.scores(vectors), self.semantic.platt)
            weight = self.config.embedding_weight
            learned = (1 - weight) * learned + weight * semantic
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
                learned = _shifted(learned, prior_offsets(self.training_shares(), self.prior_shift))
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


# --- training -------------------------------------------------------------------------------------


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
) -> FastModel:
    """Train on `train_records`, calibrate on out-of-fold scores, measure on the validation set.

    Records are `{"text": str, "label": <Category value>}`. The validation records are used
    only for the reported metrics, never for fitting.
    """
    return _train(
        train_records,
        validation_records,
        progress=progress,
        policy_version=get_settings().models.policy_version,
        dataset_fingerprint=None,
    )


def _train(
    train_records: Sequence[Mapping[str, str]],
    validation_records: Sequence[Mapping[str, str]],
    *,
    progress: bool,
    policy_version: str,
    dataset_fingerprint: str | None,
) -> FastModel:
    # Imported here: evaluation imports this module for the throughput benchmark.
    from sklearn.model_selection import StratifiedKFold  # type: ignore[import-untyped]

    from moderation.evaluation.scores import evaluate

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
        idf = _fit_idf(hash_features(train_texts, config))
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
    from moderation.evaluation.scores import score_probabilities

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
    from moderation.classifier.thresholds import choose_thresholds

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


# --- benchmark ------------------------------------------------------------------------------------


def measure_throughput(
    model: Any, texts: Sequence[str], *, batch_size: int = 500, min_seconds: float = 1.0
) -> float:
    """Posts per second of `model.predict_proba` over `texts` in batches of `batch_size`.

    Repeats the pass until `min_seconds` have elapsed so small sets give a stable number. The
    fast model's work (numpy, scipy sparse products) runs on one core; pin BLAS/OpenMP threads
    to 1 (`OMP_NUM_THREADS=1`) for a per-core figure with other models.
    """
    if len(texts) == 0:
        raise ValueError("no texts to measure")
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    model.predict_proba(batches[0])  # warm-up: first-call allocations are not throughput
    posts = 0
    started = time.perf_counter()
    while True:
        for batch in batches:
            model.predict_proba(batch)
        posts += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return posts / elapsed


# --- the artifact store ---------------------------------------------------------------------------


def find_artifact(
    store: Path, *, dataset_fingerprint: str, config_fingerprint: str, policy_version: str
) -> Path | None:
    """The newest artifact in `store` trained from this dataset with this configuration."""
    matches: list[tuple[str, Path]] = []
    for metadata_path in store.glob(f"fast-*/{METADATA_FILE}"):
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, ValueError):
            continue
        if (
            metadata.get("format") == ARTIFACT_FORMAT
            and metadata.get("dataset_fingerprint") == dataset_fingerprint
            and metadata.get("config_fingerprint") == config_fingerprint
            and metadata.get("policy_version") == policy_version
            and (metadata_path.parent / str(metadata.get("files", {}).get("model"))).is_file()
        ):
            matches.append((str(metadata.get("trained_at")), metadata_path.parent))
    return max(matches)[1] if matches else None


def ensure_fast_model(settings: Settings, *, progress: bool = True) -> FastModel:
    """The fast model for the current dataset and configuration, trained on first use.

    Looks in `settings.models.artifact_dir / "fast"`; when no artifact matches, builds the
    dataset (cached under `settings.stack.cache_dir`), trains with a progress bar, saves the
    artifact and returns the model. The gold split is never read here.
    """
    # Imported here: the dataset module uses this module's lexicon to filter its sources.
    from moderation.datasets.build import build_dataset, dataset_fingerprint, load_split

    store = settings.models.artifact_dir / "fast"
    fingerprint = dataset_fingerprint()
    existing = find_artifact(
        store,
        dataset_fingerprint=fingerprint,
        config_fingerprint=DEFAULT_CONFIG.fingerprint(),
        policy_version=settings.models.policy_version,
    )
    if existing is not None:
        model = FastModel.load(existing)
        logger.info("loaded fast model %s from %s", model.version, existing)
        return model
    if progress:
        console.print("[dim]…[/dim] fast model: no artifact for this dataset yet, training it")
    dataset_dir = build_dataset(settings.stack.cache_dir)
    model = _train(
        load_split(dataset_dir, "train"),
        load_split(dataset_dir, "validation"),
        progress=progress,
        policy_version=settings.models.policy_version,
        dataset_fingerprint=fingerprint,
    )
    path = model.save(store)
    if progress:
        console.print(
            f"[green]✓[/green] fast model {model.version} trained in "
            f"{model.training_seconds:.1f}s, saved to {path}"
        )
    return model
