"""Losses for mixed batches: soft-target cross-entropy and friends."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["soft_cross_entropy"]


def soft_cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy against soft targets: ``-(target * log_softmax(logits)).sum(-1)``.

    Args:
        logits: ``(B, C)``.
        target: soft targets ``(B, C)`` (rows sum to 1) or class ids ``(B,)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> soft_cross_entropy(torch.zeros(2, 4), torch.full((2, 4), 0.25))
        tensor(1.3863)
    """
    if target.ndim == 1:
        return F.cross_entropy(logits, target, reduction=reduction)
    loss = -(target.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1)
    return _reduce(loss, reduction)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
