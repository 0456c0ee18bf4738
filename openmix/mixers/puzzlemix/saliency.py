"""PuzzleMix saliency: the RMS over channels of the input gradient of the clean batch's loss.

As the official ``main.py::train``: ``s = sqrt(mean_c (dL/dx)^2)`` ``(B, H, W)`` of the
batch-mean cross-entropy, the model in eval mode (BatchNorm's running statistics, no update).
Only the input gradient is taken (``torch.autograd.grad``), so the parameters' ``.grad`` stay
as they were (the official code zeroes them); with ``clean_lam > 0`` the same forward, in
train mode, also gives the clean loss whose graph is kept.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from openmix.losses import soft_cross_entropy

__all__ = ["input_saliency"]


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in train/eval mode for the block; restore each one's own mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, mode in saved:
            module.training = mode


def input_saliency(model: nn.Module, x: Tensor, target: Tensor, *, eval_mode: bool = True) -> Tensor:
    """PuzzleMix saliency ``(B, H, W)``: RMS over channels of the input gradient of the mean CE.

    The model runs in eval mode (``eval_mode``), each submodule's mode is restored after,
    and only the gradient with respect to ``x`` is computed: the parameters' ``.grad`` are
    untouched.

    Args:
        model: maps ``x`` to logits ``(B, num_classes)``.
        x: ``(B, C, H, W)``.
        target: class ids ``(B,)`` or soft targets ``(B, num_classes)``.
    """
    saliency, _, _ = _saliency_pass(model, x, target, clean_weight=0.0, eval_mode=eval_mode)
    return saliency


def _saliency_pass(model: nn.Module, x: Tensor, target: Tensor, clean_weight: float, eval_mode: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns ``(saliency, input gradient, clean loss or None)``.

    With ``clean_weight > 0`` the clean loss ``clean_weight * CE`` keeps its graph, so the
    caller's backward adds its parameter gradients (the official ``clean_lam`` term).
    """
    keep = clean_weight > 0
    x_in = x.detach().requires_grad_(True)
    # a DDP model given directly (not through PuzzleMix.step, which runs the whole step as one DDP
    # forward on the inner module): this forward must not arm the gradient all-reduce
    sync = getattr(model, "no_sync", None)
    with torch.enable_grad(), _modes(model, not eval_mode), (sync() if callable(sync) else contextlib.nullcontext()):
        logits = model(x_in)
        loss = soft_cross_entropy(logits, target)
        scaled = loss * clean_weight if keep else loss
        (grad,) = torch.autograd.grad(scaled, x_in, retain_graph=keep)
    grad = grad.detach()
    saliency = grad.float().square().mean(1).sqrt()
    return saliency, grad, (scaled if keep else None)
