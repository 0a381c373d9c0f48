"""The fast model's inputs: hashed byte n-grams weighted by idf, and the semantic head's inputs.

Features are hashed byte n-grams (2 to 5 bytes of the lower-cased UTF-8 text, digits folded to 0,
the text padded with spaces) computed for a whole batch at once with numpy: no Python loop per
n-gram, which is what makes 20,000+ posts/s per core possible. Each occurrence is weighted by its
idf and each row scaled to unit norm. The semantic head reads the static embedding of each text
(`embedding.py`) and, when configured, its offensive-language score (`offensive.py`).
The injection detector (`injection/model.py`) uses the same n-gram features.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

from moderation.classifier.embedding import StaticEmbedder
from moderation.classifier.fast.config import FastModelConfig
from moderation.classifier.offensive import load_offensive_scorer

_PRIME = np.uint64(1_099_511_628_211)  # FNV-64 prime: a polynomial rolling hash of the bytes
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads the rolling hash over buckets
# Bound on the characters hashed in one numpy pass (memory: ~5 uint64 arrays of this length).
_CHUNK_CHARS = 1_000_000


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


def fit_idf(counts: Any) -> npt.NDArray[np.float32]:
    """Smoothed inverse document frequency of every bucket."""
    present = counts.copy()
    present.sum_duplicates()
    documents = present.shape[0]
    frequency = np.bincount(present.indices, minlength=present.shape[1])
    return cast(
        npt.NDArray[np.float32],
        (np.log((1 + documents) / (1 + frequency)) + 1).astype(np.float32),
    )


def semantic_inputs(
    embedder: StaticEmbedder, texts: Sequence[str], config: FastModelConfig
) -> npt.NDArray[np.float32]:
    """The semantic head's inputs: the embedding, then the offensive score when configured."""
    vectors = embedder.embed(list(texts))
    if not config.offensive:
        return vectors
    offensive = load_offensive_scorer().scores(texts).astype(np.float32)
    return np.hstack([vectors, offensive[:, None]])
