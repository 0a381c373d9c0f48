"""Calibration of the fast model's scores: Platt scaling, the mix of its two heads, the prior shift.

Each trained category's score becomes a probability by Platt scaling fitted on out-of-fold scores
of the training split, so every column is a calibrated probability and P(safe) can drive the
allow threshold (one-vs-rest: rows do not sum to 1). The n-gram and semantic heads are mixed
after calibration, and the mix is shifted toward an even prior by a strength chosen on
validation (`training.choose_prior_shift`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


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


def calibrated(scores: FloatArray, platt: FloatArray) -> FloatArray:
    """Platt-scaled probabilities of raw scores, one `(a, b)` row of `platt` per column."""
    z = scores * platt[:, 0] + platt[:, 1]
    probabilities: FloatArray = 1 / (1 + np.exp(-z))
    return probabilities


def mixed(ngram: FloatArray, semantic: FloatArray, weight: float) -> FloatArray:
    """`(1 - weight) * ngram + weight * semantic`: both heads' calibrated probabilities."""
    probabilities: FloatArray = (1 - weight) * ngram + weight * semantic
    return probabilities


def prior_offsets(shares: FloatArray, strength: float) -> FloatArray:
    """Logit offsets that move each column `strength` of the way from its training share to
    an even prior: the share of safe posts in training (about 70 %) says which sources were
    packaged, not how often real traffic is safe, and at full weight it wins the argmax of
    most threats and self-harm posts the model half recognizes."""
    clipped = np.clip(shares, 1e-4, 1 - 1e-4)
    offsets: FloatArray = -strength * np.log(clipped / (1 - clipped))
    return offsets


def shift(probabilities: FloatArray, offsets: FloatArray) -> FloatArray:
    """`probabilities` with `offsets` added to their logits (`prior_offsets`)."""
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    z = np.log(clipped / (1 - clipped)) + offsets
    moved: FloatArray = 1 / (1 + np.exp(-z))
    return moved
