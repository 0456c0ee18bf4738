"""L-inf adversarial attacks in pixel space: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Inputs ``x`` ``(B, C, ...)`` arrive normalised with a dataset's per-channel ``mean``/``std``
(``None`` for both: they are pixels in ``[0, 1]``). An attack de-normalises them, moves the
pixels up the cross-entropy of the labels while keeping them within ``eps`` (in pixel units,
e.g. ``8 / 255``) of the clean ones and inside ``[0, 1]``, and returns them normalised again, in
the input's dtype and device.

The model runs in the mode it is in: callers put it in eval mode first (batch-norm running
statistics, no dropout). Gradients are taken with :func:`torch.autograd.grad` with respect to
the input only, so no parameter's ``.grad`` is created or changed; the attacks work under
:func:`torch.no_grad` too.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> x, y = torch.full((3, 1, 2, 2), 0.5), torch.tensor([0, 1, 0])
    >>> adversarial = pgd(model, x, y, 8 / 255, steps=5, generator=torch.Generator().manual_seed(0))
    >>> bool((adversarial - x).abs().max() <= 8 / 255 + 1e-6), adversarial.dtype
    (True, torch.float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.pixels import denormalize, normalize

__all__ = ["fgsm", "pgd"]

Stats = Sequence[float] | Tensor | None


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, mean: Stats = None, std: Stats = None) -> Tensor:
    """The fast gradient sign method: one step of ``eps * sign(gradient)`` on the pixels.

    Args:
        model: maps normalised inputs to logits ``(B, K)``.
        x: normalised inputs ``(B, C, ...)``.
        y: class ids ``(B,)``.
        eps: the step, in pixels (each pixel moves by exactly ``eps`` where its gradient is
            non-zero, before clamping to ``[0, 1]``).
        mean: per-channel mean (one value, or one per channel) ``x`` was normalised with.
        std: likewise the standard deviation.

    Returns:
        The adversarial inputs, normalised like ``x`` ``(B, C, ...)``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))
        >>> fgsm(model, torch.full((1, 3, 1, 1), 0.5), torch.tensor([0]), 0.25).flatten()
        tensor([0.2500, 0.7500, 0.5000])
    """
    eps = check_number("eps", eps, low=0.0)
    mean, std = _stats(mean, x), _stats(std, x)
    pixels = denormalize(x.detach(), mean, std)
    step = eps * _loss_gradient(model, pixels, y, mean, std).sign()
    return normalize((pixels + step).clamp(0, 1), mean, std)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, step: float | None = None, steps: int = 10,
        random_start: bool = True, mean: Stats = None, std: Stats = None,
        generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent: ``steps`` sign-gradient steps, each projected back onto the
    L-inf ball of radius ``eps`` around the clean pixels and onto ``[0, 1]``.

    Args:
        model: maps normalised inputs to logits ``(B, K)``.
        x: normalised inputs ``(B, C, ...)``.
        y: class ids ``(B,)``.
        eps: the ball's radius, in pixels.
        step: the size of each step, in pixels (default ``2.5 * eps / steps``, Madry et al.).
        steps: iterations.
        random_start: start from a point drawn uniformly from the ball (clamped to ``[0, 1]``)
            rather than from the clean pixels.
        mean: per-channel mean (one value, or one per channel) ``x`` was normalised with.
        std: likewise the standard deviation.
        generator: draws the random start (on its device, then moved to ``x``'s); the same
            generator state gives the same attack. ``None``: torch's global generator.

    Returns:
        The adversarial inputs, normalised like ``x`` ``(B, C, ...)``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
        >>> x, y = torch.rand(2, 2, 1, 1), torch.tensor([0, 1])
        >>> torch.equal(pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(0)),
        ...             pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(0)))
        True
    """
    eps = check_number("eps", eps, low=0.0)
    steps = check_int("steps", steps, 0)
    step = 2.5 * eps / max(steps, 1) if step is None else check_number("step", step, low=0.0)
    mean, std = _stats(mean, x), _stats(std, x)
    pixels = denormalize(x.detach(), mean, std)
    low, high = (pixels - eps).clamp(min=0), (pixels + eps).clamp(max=1)
    adversarial = pixels
    if random_start:
        device = generator.device if generator is not None else pixels.device
        noise = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype, device=device).to(pixels.device)
        adversarial = (pixels + (2 * noise - 1) * eps).clamp(low, high)
    for _ in range(steps):
        gradient = _loss_gradient(model, adversarial, y, mean, std)
        adversarial = (adversarial + step * gradient.sign()).clamp(low, high)
    return normalize(adversarial, mean, std)


# ------------------------------------------------------------------ helpers
def _stats(values: Stats, x: Tensor) -> Tensor | None:
    """``mean`` or ``std`` as a tensor on ``x``'s device and in its dtype, made once per attack."""
    return None if values is None else torch.as_tensor(values, dtype=x.dtype, device=x.device)


def _loss_gradient(model: nn.Module, pixels: Tensor, y: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """The gradient of the summed cross-entropy with respect to ``pixels`` (only), ``pixels``' shape."""
    with torch.enable_grad():
        pixels = pixels.detach().requires_grad_(True)
        loss = F.cross_entropy(model(normalize(pixels, mean, std)).float(), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, pixels)
    return gradient
