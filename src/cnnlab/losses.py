"""Cross-entropy for integer labels and for soft target rows (mixup, cutmix), with label smoothing and
class weights.

Integer labels follow F.cross_entropy exactly (it is what runs). Soft rows are defined so that one-hot
rows give the very same number, weights and smoothing included:

    t'_ik = (1 - eps) * t_ik + eps / K           (smoothing mixes the row with the uniform one)
    loss  = sum_i sum_k w_k t'_ik (-log p_ik) / sum_i sum_k w_k t_ik

The denominator is torch's for integer labels (the sum of the weights of the true classes; N without
weights). torch's own soft-target cross_entropy divides by N even with weights, which would make a
weighted mixup loss jump in scale against the same batch unmixed; this definition does not.

The loss is computed in float32 at least (float64 stays float64): half-precision logits from autocast
would otherwise lose the small probabilities the log-softmax needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of N x K logits against N integer labels or N x K target rows (each summing to 1)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    weights = None if class_weights is None else class_weights.to(device=logits.device, dtype=dtype)
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, weight=weights, label_smoothing=label_smoothing)
    if targets.shape != logits.shape:
        raise ValueError(f"soft targets must be N x K like the logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    rows = targets.to(dtype)
    smoothed = rows * (1.0 - label_smoothing) + label_smoothing / logits.shape[1] if label_smoothing else rows
    nll = -F.log_softmax(logits, dim=1)
    if weights is None:
        return (smoothed * nll).sum() / rows.sum()
    return (smoothed * weights * nll).sum() / (rows * weights).sum()
