"""The ensemble's vote as pure functions of the members' logits (section 1.3 of the report)."""

from __future__ import annotations

import numpy as np

from cnnlab.errors import UserError
from cnnlab.metrics import softmax


def vote(logits: np.ndarray, method: str = "hard") -> np.ndarray:
    """logits: members x N x classes -> N x classes scores whose argmax is the ensemble's prediction.

    hard: majority of the members' predictions; a tie goes to the tied class with the larger summed
    probability, then to the lower class index. soft: mean probability.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or len(logits) == 0:
        raise ValueError("vote needs logits shaped members x N x classes with at least one member")
    k, n, c = logits.shape
    probs = np.stack([softmax(m) for m in logits])
    if method == "soft":
        return probs.mean(0)
    if method != "hard":
        raise UserError(f"vote: must be hard or soft, got {method!r}")
    votes = np.zeros((n, c))
    np.add.at(votes, (np.repeat(np.arange(n)[None], k, 0), probs.argmax(2)), 1)
    # summed probability is at most k < k + 1, so it only decides between classes with equal votes
    return votes + probs.sum(0) / (k + 1)


def scores_to_logits(scores: np.ndarray) -> np.ndarray:
    """Scores as log of a distribution, so evaluation tools read them like any run's logits."""
    return np.log(np.clip(scores / scores.sum(1, keepdims=True), 1e-12, None))
