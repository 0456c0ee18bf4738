"""Occlusion robustness: accuracy as a growing random part of each image is hidden.

As OpenMixup's ``tools/analysis_tools/occlusion_robustness.py`` does it (random patch drop, after
Naseer et al. 2021), each image is cut into a grid of ``patch x patch`` cells and a random set of
cells covering the asked fraction of the area is filled with a constant. Unlike that tool,
which hides the same cells in every image of a batch and fills zeros in normalised space (the
dataset's mean colour), each image here gets its own cells and the fill is a pixel value
(``0.0``: black). Cells are ranked once per image by one random draw, and a fraction hides the
first ``round(fraction * cells)`` of them, so with the same generator state a larger fraction
hides a superset of a smaller one's cells.

Example:
    >>> hidden = occlude(torch.ones(1, 1, 4, 4), 0.25, patch=2, generator=torch.Generator().manual_seed(0))
    >>> int((hidden == 0).sum())
    4
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.pixels import denormalize, normalize

__all__ = ["occlude", "occlusion_accuracy"]


def occlude(pixels: Tensor, fraction: float, *, generator: torch.Generator | None = None, fill: float = 0.0,
            patch: int = 4) -> Tensor:
    """Hide random ``patch x patch`` cells covering ``fraction`` of each image's area.

    Args:
        pixels: images ``(B, C, H, W)``.
        fraction: the area to hide, in ``[0, 1]``: ``round(fraction * cells)`` cells of the
            ``ceil(H / patch) x ceil(W / patch)`` grid (round half to even). The hidden area is
            exactly that many cells when ``patch`` divides ``H`` and ``W``; otherwise the last row and
            column of cells are cropped to the image.
        generator: draws the cells (on its device; the mask then moves to ``pixels``'); the same
            state hides the same cells. ``None``: torch's global generator, on ``pixels``' device.
        fill: the value of hidden pixels, in every channel.
        patch: the cell side, in pixels.

    Returns:
        ``pixels`` with the chosen cells set to ``fill``, ``(B, C, H, W)``, same dtype.

    Example:
        >>> hidden = occlude(torch.ones(2, 3, 8, 8), 0.5, generator=torch.Generator().manual_seed(0))
        >>> (hidden == 0).float().mean((1, 2, 3))
        tensor([0.5000, 0.5000])
    """
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be images (B, C, H, W), got shape {tuple(pixels.shape)}")
    fraction = check_number("fraction", fraction, low=0.0, high=1.0)
    patch = check_int("patch", patch, 1)
    batch, _, height, width = pixels.shape
    rows, cols = -(-height // patch), -(-width // patch)
    device = generator.device if generator is not None else pixels.device
    order = torch.rand(batch, rows * cols, generator=generator, device=device).argsort(1)
    hidden = torch.zeros(batch, rows * cols, dtype=torch.bool, device=device)
    hidden.scatter_(1, order[:, : round(fraction * rows * cols)], True)
    mask = hidden.view(batch, 1, rows, cols).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return pixels.masked_fill(mask[..., :height, :width].to(pixels.device), fill)


@torch.no_grad()
def occlusion_accuracy(model: nn.Module, x: Tensor, y: Tensor,
                       fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5), *,
                       mean: Sequence[float] | Tensor | None = None, std: Sequence[float] | Tensor | None = None,
                       seed: int = 0, patch: int = 4, batch_size: int | None = None) -> dict[float, float]:
    """Top-1 accuracy, in percent, with each of ``fractions`` of every image hidden (:func:`occlude`).

    Patches are drawn from a CPU generator seeded with ``seed`` afresh for each fraction, so every
    model (on any device, with any ``batch_size``) sees the same hidden cells, and a larger
    fraction hides a superset of a smaller one's.

    Args:
        model: maps normalised inputs to logits ``(N, K)``; run as it is (callers put it in eval mode).
        x: normalised images ``(N, C, H, W)``.
        y: class ids ``(N,)``.
        fractions: the hidden area fractions, each in ``[0, 1]``.
        mean: per-channel mean (one value, or one per channel) ``x`` was normalised with
            (``None`` with ``std``: ``x`` is pixels in ``[0, 1]``). Hidden pixels are black.
        std: likewise the standard deviation.
        seed: seeds the patches.
        patch: the cell side, in pixels.
        batch_size: images per forward pass (``None``: all at once).

    Returns:
        Fraction -> accuracy in percent, in the order of ``fractions``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> curve = occlusion_accuracy(model, torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long), (0.0, 0.5))
        >>> list(curve)
        [0.0, 0.5]
    """
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.shape[0] == 0:
        raise ValueError(f"y must be (N,) class ids for x (N, ...) with N >= 1, got {tuple(y.shape)} "
                         f"and {tuple(x.shape)}")
    chunk = x.shape[0] if batch_size is None else check_int("batch_size", batch_size, 1)
    pixels = denormalize(x, mean, std)
    hits = []
    for fraction in fractions:
        hidden = normalize(occlude(pixels, fraction, generator=torch.Generator().manual_seed(seed), patch=patch),
                           mean, std)
        hits.append(sum((model(xb).argmax(1) == yb).sum() for xb, yb in zip(hidden.split(chunk), y.split(chunk))))
    top1 = (torch.stack(hits) * (100.0 / y.shape[0])).tolist() if hits else []
    return {float(fraction): value for fraction, value in zip(fractions, top1)}
