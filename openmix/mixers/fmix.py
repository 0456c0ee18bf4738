"""FMix (Harris et al., arXiv 2002.12047): paste the partner through a thresholded low-frequency mask.

Matches the official implementation, which OpenMixup copies (``docs/references.md``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from openmix.checks import check_number
from openmix.mixer import Draws, Mixer, Params, blend, gather_partner
from openmix.registry import register

__all__ = ["FMix", "fourier_field", "binarise"]


@register("fmix")
class FMix(Mixer):
    """Keep the ``lam`` highest pixels of a random low-frequency image, take the rest from the partner.

    A complex spectrum with ``N(0, 1)`` real and imaginary parts, scaled by
    ``1 / max(f, 1 / max(spatial)) ** decay_power``, is inverted with a real FFT
    (:func:`fourier_field`); its top ``round(lam * N)`` of ``N`` pixels keep the original
    (:func:`binarise`). ``lam ~ Beta(alpha, alpha)`` and the returned ``lam`` is the mask's
    mean. ``mode="batch"`` draws one mask for the batch, as the official code does;
    ``mode="elem"`` draws one per sample (batched FFT). Works on 1-D ``(B, C, L)``, 2-D
    and 3-D ``(B, C, D, H, W)`` inputs.

    Differences from the official code: the spectrum has random phases, so masks are
    stationary and have no symmetry, where every official mask is point-symmetric
    (its spectrum is real: see :func:`fourier_field`); the cut is ``round(lam * N)`` (the
    official code picks ``ceil`` or ``floor`` at random); the returned ``lam`` is the kept
    fraction rather than the drawn one; and the 3-D frequency grid is the true ``rfftn`` grid.

    Args:
        decay_power: spectral decay; larger values give smoother, blobbier masks.
        max_soft: soften the mask edge with a linear ramp over ``max_soft * N`` pixels on
            each side of the cut (capped by ``min(lam, 1 - lam)``); ``0`` gives a binary mask.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("fmix", alpha=1.0, num_classes=10, mode="elem", seed=0)
        >>> out = mixer(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> out.mask.shape, torch.allclose(out.lam, out.mask.mean((1, 2, 3)))
        (torch.Size([4, 1, 32, 32]), True)
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        check_number("decay_power", decay_power, low=0.0)
        check_number("max_soft", max_soft, low=0.0, high=0.5)
        self.decay_power = float(decay_power)
        self.max_soft = float(max_soft)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``field``: float32 ``(1 or B, *spatial)`` low-frequency images, drawn on ``x.device``."""
        params = super().draw_params(x, draws)
        count = 1 if self.mode == "batch" else x.shape[0]
        params["field"] = fourier_field(count, x.shape[2:], self.decay_power, device=x.device, generator=draws.device)
        return params

    def binary_mask(self, params: Params) -> bool:
        """The thresholded mask is binary unless ``max_soft`` ramps its edge."""
        return not self.max_soft

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        field, batch_lam = params["field"], params.get("batch_lam")
        if batch_lam is not None and field.shape[0] == 1 and not self.max_soft:  # one mask, lam on the host
            mask, lam = _top_mask(field[0], batch_lam)
            mask, lam = mask[None, None], torch.full((x.shape[0],), lam, device=x.device, dtype=torch.float32)
        else:
            mask = binarise(field, params["lam"][: field.shape[0]], self.max_soft).unsqueeze(1)  # (1 or B, 1, *spatial)
            lam = mask.flatten(1).mean(1).expand(x.shape[0])
        mask = mask.expand(x.shape[0], *mask.shape[1:])
        return blend(x, gather_partner(x, params["index"]), mask), lam, mask

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields["decay_power"] = self.decay_power
        if self.max_soft:
            fields["max_soft"] = self.max_soft
        return fields


def fourier_field(
    count: int,
    spatial: Sequence[int],
    decay_power: float = 3.0,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``count`` random low-frequency images, float32 ``(count, *spatial)``.

    The spectrum over the ``rfftn`` frequency grid is complex Gaussian, ``N(0, 1)`` real
    and imaginary parts, scaled by ``1 / max(f, 1 / max(spatial)) ** decay_power``. The
    scale is divided by its largest value (a constant factor that changes no ranking) so
    that it stays in ``(0, 1]`` and cannot overflow for large ``decay_power``.

    With random phases the field is stationary (every pixel has the same distribution)
    and has no symmetry. The official FMix code (``make_low_freq_image``) instead feeds
    ``irfftn`` a *real* array: its ``(..., 2)`` axis of real and imaginary parts is
    reshaped into the last frequency axis rather than combined into complex numbers. A
    real spectrum inverts to an even field, ``f(n) = f(-n mod size)``, so every official
    mask is point-symmetric (under a half-turn about pixel ``size / 2``, on the torus),
    the origin pixel's field value varies twice as much as the average pixel's, and each
    real coefficient gets the decay of half its frequency along the last axis (its masks
    are rougher along the width than along the height). openmix's masks are none of these.

    Example:
        >>> fourier_field(2, (8, 6), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 8, 6])
    """
    spatial = tuple(int(s) for s in spatial)
    scale = _spectrum_scale(spatial, float(decay_power), torch.device(device))
    noise = torch.randn((count, *scale.shape, 2), device=device, generator=generator, dtype=torch.float32)
    spectrum = torch.view_as_complex(noise.mul_(scale.unsqueeze(-1)))  # scale the real parts: no complex copy of it
    return torch.fft.irfftn(spectrum, s=spatial, dim=tuple(range(1, len(spatial) + 1)))


@functools.lru_cache(maxsize=32)
def _spectrum_scale(spatial: tuple[int, ...], decay_power: float, device: torch.device) -> Tensor:
    """``(lowest / max(f, lowest)) ** decay_power`` over the ``rfftn`` grid, made once per size and device.

    Callers must not modify it in place.
    """
    axes = [torch.fft.fftfreq(s, device=device) for s in spatial[:-1]] + [torch.fft.rfftfreq(spatial[-1], device=device)]
    freqs = sum(f.square() for f in torch.meshgrid(*axes, indexing="ij")).sqrt()
    lowest = 1.0 / max(spatial)
    return freqs.clamp_(min=lowest).reciprocal_().mul_(lowest).pow_(decay_power)


def _top_mask(field: Tensor, lam: float) -> tuple[Tensor, float]:
    """One binary mask: 1 on the top ``round(lam * N)`` of the ``N`` values of ``field``, and its mean.

    For a single mask ``topk`` of the smaller side replaces a full ranking; the count is
    exact and known on the host.
    """
    size = field.numel()
    num = int(np.rint(np.float32(lam) * np.float32(size)))  # as binarise rounds the float32 lam (half to even)
    flat = field.reshape(-1)
    if num * 2 <= size:
        mask = torch.zeros(size, device=field.device, dtype=torch.float32)
        if num:
            mask.index_fill_(0, flat.topk(num, sorted=False).indices, 1.0)
    else:
        mask = torch.ones(size, device=field.device, dtype=torch.float32)
        if num < size:
            mask.index_fill_(0, flat.topk(size - num, largest=False, sorted=False).indices, 0.0)
    return mask.view(field.shape), num / size


def binarise(field: Tensor, lam: Tensor, max_soft: float = 0.0) -> Tensor:
    """Per row, weight 1 on the top ``round(lam * N)`` of the ``N`` pixels, 0 elsewhere.

    Pixels are ranked, not min-max normalised, so flat fields give no NaN and the count
    is exact. With ``max_soft`` the ``2 * soft`` pixels around the cut, ``soft =
    floor(N * min(max_soft, lam, 1 - lam))``, ramp linearly from 1 to 0 (as the official
    ``binarise_mask``); the mean stays ``round(lam * N) / N``.

    Args:
        field: float ``(n, *spatial)`` images to threshold.
        lam: float ``(n,)`` fraction of pixels to keep.
        max_soft: half-width of the soft edge, as a fraction of ``N``, in ``[0, 0.5]``.

    Returns:
        float32 ``(n, *spatial)`` weights of the original.

    Example:
        >>> binarise(torch.tensor([[0.3, 0.9, 0.1, 0.5]]), torch.tensor([0.5]))
        tensor([[0., 1., 0., 1.]])
    """
    flat = field.reshape(field.shape[0], -1)
    size = flat.shape[1]
    rank = torch.arange(size, device=field.device, dtype=torch.float32)
    num = lam.float().mul(size).round_()[:, None]
    if max_soft > 0:
        soft = torch.minimum(lam.float(), 1.0 - lam.float()).clamp_(max=max_soft).mul_(size).floor_()[:, None]
        low, width = num - soft, 2.0 * soft
        ramp = 1.0 - (rank - low) / (width - 1.0).clamp_(min=1.0)  # linspace(1, 0, width) over [low, low + width)
        weight = torch.where(rank < low, 1.0, torch.where(rank < low + width, ramp, 0.0))
    else:
        weight = (rank < num).float()
    return torch.empty_like(weight).scatter_(1, _descending_order(flat), weight).view(field.shape)


def _descending_order(values: Tensor) -> Tensor:
    """Column indices of each row of ``values`` ``(n, N)``, largest value first.

    One flat sort of int64 keys ``row * 2**31 + rank-preserving 30-bit value`` replaces a
    batched sort along ``dim=1``: on CPU PyTorch radix-sorts 1-D integer tensors, about
    twice as fast as sorting 128 rows of 1024 floats. Values closer than ``range / 2**30``
    tie and are ordered arbitrarily, which keeps every count exact.
    """
    rows, size = values.shape
    high = values.amax(1, keepdim=True)
    spread = (high - values.amin(1, keepdim=True)).clamp_(min=torch.finfo(values.dtype).tiny)
    level = (high - values).div_(spread).mul_(2**30).long()  # 0 for the largest value
    offset = torch.arange(rows, device=values.device)[:, None]
    keys = level.add_(offset << 31)
    return keys.view(-1).argsort().view(rows, size).sub_(offset * size)
