"""Soft targets: one-hot with label smoothing, validation, mixing."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_targets", "mix_targets"]


def soft_targets(
    y: Tensor, num_classes: int | None = None, label_smoothing: float = 0.0, *, batch: int | None = None
) -> Tensor:
    """Turn labels into soft targets ``(B, C)`` whose rows sum to 1.

    Args:
        y: int class ids ``(B,)`` (needs ``num_classes``) or soft targets ``(B, C)``.
        num_classes: ``C``; checked against soft targets when given.
        label_smoothing: ``s`` in ``[0, 1)``: targets become ``(1 - s) * y + s / C``.
        batch: expected ``B`` (the image batch), checked when given.

    Raises:
        TypeError: ``y`` is not a tensor, float class ids, or integer soft targets.
        ValueError: wrong ndim, batch mismatch, missing ``num_classes``, wrong width,
            class ids out of ``[0, C)`` (checked on the host for CPU labels; on an
            accelerator with ``torch._assert_async``, so the check never waits on it).

    Example:
        >>> soft_targets(torch.tensor([0, 2]), 3)
        tensor([[1., 0., 0.],
                [0., 0., 1.]])
        >>> soft_targets(torch.tensor([1]), 4, label_smoothing=0.4)
        tensor([[0.1000, 0.7000, 0.1000, 0.1000]])
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if batch is not None and (y.ndim == 0 or y.shape[0] != batch):
        raise ValueError(f"labels must have batch size {batch} like the inputs, got labels of shape {tuple(y.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if y.ndim == 1:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"class-id labels (B,) must be an integer tensor, got {y.dtype}; soft targets must be (B, C)")
        if num_classes is None:
            raise ValueError("integer class-id labels need num_classes (or pass soft targets of shape (B, C))")
        _check_range(y, num_classes)
        off = label_smoothing / num_classes
        out = torch.full((y.shape[0], num_classes), off, device=y.device, dtype=torch.float32)
        return out.scatter_(1, y.long().unsqueeze(1), 1.0 - label_smoothing + off)
    if y.ndim == 2:
        if not y.is_floating_point():
            raise TypeError(f"soft targets (B, C) must be floating point, got {y.dtype}")
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(f"soft targets must have num_classes={num_classes} columns, got shape {tuple(y.shape)}")
        if label_smoothing:
            y = y * (1.0 - label_smoothing) + label_smoothing / y.shape[1]
        return y
    raise ValueError(f"labels must be class ids (B,) or soft targets (B, C), got shape {tuple(y.shape)}")


def mix_targets(y: Tensor, index: Tensor, lam: Tensor | float) -> Tensor:
    """``lam * y + (1 - lam) * y[index]`` row-wise; ``y`` is ``(B, C)``, ``index`` ``(B,)``.

    ``lam`` is ``(B,)``, or one Python float for the whole batch (a scalar ``lerp``).

    Example:
        >>> mix_targets(torch.eye(2), torch.tensor([1, 0]), torch.tensor([0.75, 0.5]))
        tensor([[0.7500, 0.2500],
                [0.5000, 0.5000]])
        >>> mix_targets(torch.eye(2), torch.tensor([1, 0]), 0.75)
        tensor([[0.7500, 0.2500],
                [0.2500, 0.7500]])
    """
    weight = lam.to(y.dtype).unsqueeze(1) if isinstance(lam, Tensor) else lam
    return torch.lerp(y.index_select(0, index), y, weight)  # partner + lam * (y - partner)


def _check_range(y: Tensor, num_classes: int) -> None:
    if y.numel() == 0:
        return
    if y.device.type == "cpu":
        low, high = (int(v) for v in torch.aminmax(y))
        if low < 0 or high >= num_classes:
            raise ValueError(f"class ids must be in [0, {num_classes}), got values in [{low}, {high}]")
    else:
        torch._assert_async(((y >= 0) & (y < num_classes)).all(), f"class ids must be in [0, {num_classes})")
