"""What a mixer call returns (:class:`MixOutput`) and what a training step produced (:class:`StepResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["MixOutput", "StepResult"]


@dataclass
class MixOutput:
    """Result of one mixer call.

    openmix uses **one** meaning of ``lam`` everywhere: ``lam[i]`` is the weight of the
    *original* sample ``x[i]`` in ``x_mixed[i]``; its partner ``x[index[i]]`` gets
    ``1 - lam[i]``. For cut-based mixers it is the fraction of the original actually
    kept (the mean of ``mask[i]``). This is timm's convention; kornia's ``lam`` weights
    the partner instead.

    Attributes:
        x: mixed inputs, same shape, dtype, device and memory format as the input,
            ``(B, C, *spatial)``.
        y: soft targets, ``(B, num_classes)``; every row sums to 1.
        lam: weight of the original sample, float32 ``(B,)``.
        index: partner of each sample, int64 ``(B,)``.
        mask: per-position weight of the original, ``(B, 1, *spatial)``, for mixers that
            have one (cut and mask mixers), else ``None``.
        sources: for mixers of more than two samples (AdAutoMix), ``(indices, weights)``, each
            ``(B, K)``: every sample mixed into ``x_mixed[i]`` (itself first) and its weight in
            the targets; ``index`` is then the first partner. ``None`` for two samples.

    Example:
        >>> out = MixOutput.identity(torch.zeros(2, 3, 4, 4), torch.eye(2))
        >>> out.lam
        tensor([1., 1.])
    """

    x: Tensor
    y: Tensor
    lam: Tensor
    index: Tensor
    mask: Tensor | None = None
    sources: tuple[Tensor, Tensor] | None = None

    @classmethod
    def identity(cls, x: Tensor, y: Tensor) -> "MixOutput":
        """The unmixed batch: ``lam = 1`` and every sample is its own partner."""
        batch = x.shape[0]
        return cls(
            x=x,
            y=y,
            lam=torch.ones(batch, device=x.device, dtype=torch.float32),
            index=torch.arange(batch, device=x.device),
        )



@dataclass
class StepResult:
    """What one training step produced (:func:`openmix.training.mix_step`, a model-aware mixer's ``step``).

    Attributes:
        loss: scalar loss to backpropagate (including any auxiliary loss of the mixer).
        logits: ``(B, num_classes)`` predictions on the mixed batch.
        mix: the mixer's :class:`MixOutput` (``None`` without a mixer).
        aux: the terms of ``loss``, detached, by name, for mixers whose loss has several (the
            learned mixers: ``online_mix``, ``block_mix``, ...); empty otherwise.

    Example:
        >>> StepResult(torch.tensor(0.5), torch.zeros(2, 3), None).aux
        {}
    """

    loss: Tensor
    logits: Tensor
    mix: MixOutput | None
    aux: dict[str, Tensor] = field(default_factory=dict)
