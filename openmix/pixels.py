"""Per-channel normalisation, both ways: for what works in pixels (PuzzleMix's data term and
adversarial step, corruptions and attacks in evaluation).

Inputs ``(B, C, ...)`` arrive normalised with a dataset's ``mean``/``std`` (one value, or one
per channel); ``None`` for both means they already are pixels in ``[0, 1]``.

Example:
    >>> x = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    >>> denormalize(x, [0.5, 0.4], [0.2, 0.3]).flatten()
    tensor([0.5000, 0.7000])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["denormalize", "normalize"]


def denormalize(x: Tensor, mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None) -> Tensor:
    """``x * std + mean`` per channel (``x`` unchanged when both are ``None``)."""
    if std is not None:
        x = x * _per_channel(std, x)
    if mean is not None:
        x = x + _per_channel(mean, x)
    return x


def normalize(x: Tensor, mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None) -> Tensor:
    """The inverse of :func:`denormalize`."""
    if mean is not None:
        x = x - _per_channel(mean, x)
    if std is not None:
        x = x / _per_channel(std, x)
    return x


def _per_channel(values: Sequence[float] | Tensor, x: Tensor) -> Tensor:
    """``values`` (one, or one per channel) shaped to broadcast over ``x`` ``(B, C, ...)``.

    A tensor already on ``x``'s device is used as it is (no host-to-device copy)."""
    v = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
    channels = x.shape[1]
    if v.numel() not in (1, channels):
        raise ValueError(f"mean/std need 1 or {channels} values (one per channel), got {v.numel()}")
    return v.expand(channels).reshape((1, channels) + (1,) * (x.ndim - 2))
