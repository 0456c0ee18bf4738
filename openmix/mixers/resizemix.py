"""ResizeMix (Qin et al., 2020): paste the whole partner, shrunk, into each sample.

Reference: OpenMixup ``openmixup/models/augments/resizemix.py`` (arXiv 2012.11101).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixer import Mixer, Params, blend, gather_partner
from openmix.registry import register
from openmix.sampling import beta, box_mask, partner_index, uniform

__all__ = ["ResizeMix"]

INTERPOLATIONS = ("nearest", "bilinear")


@register("resizemix")
class ResizeMix(Mixer):
    """Shrink the partner to ``round(tau * side)`` on every axis and paste it at a random place.

    The patch lies fully inside the sample, its corner uniform over all valid positions;
    ``lam = 1 - patch area / image area``. ``tau ~ U(scope)`` as in the paper; with
    ``use_alpha`` (OpenMixup's option, on in its CIFAR benchmark configs) ``tau ~
    Beta(alpha, alpha)``, redrawn from ``U(scope)`` when it falls outside ``scope``.
    ``alpha`` is ignored unless ``use_alpha`` (then ``alpha=0`` disables mixing).
    ``mode="batch"`` uses one patch for the batch, ``mode="elem"`` one per sample
    (vectorized: index maps or sampling grids, one per sample). Works on 1-D, 2-D and
    3-D inputs. OpenMixup instead centres the box uniformly, clips it at the border and
    squeezes the partner into what is left (sides ``2 * (int(tau * side) // 2)`` before
    clipping); here the patch keeps the partner's aspect ratio and always fits.

    Args:
        scope: ``(low, high)`` range of ``tau``, the patch side over the image side.
        use_alpha: draw ``tau`` from ``Beta(alpha, alpha)`` first (see above).
        interpolation: ``"nearest"`` (OpenMixup's default, an index gather equal to
            ``F.interpolate(mode="nearest")``) or ``"bilinear"`` (``F.interpolate`` with
            ``align_corners=False``; linear / trilinear in 1-D / 3-D).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("resizemix", num_classes=10, mode="elem", seed=0)
        >>> out = mixer(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> torch.allclose(out.lam, out.mask.mean((1, 2, 3)))
        True
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        scope: Sequence[float] = (0.1, 0.8),
        use_alpha: bool = False,
        interpolation: str = "nearest",
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        try:
            scope = tuple(float(v) for v in scope)
        except (TypeError, ValueError):
            raise TypeError(f"scope must be a pair of numbers (low, high), got {scope!r}") from None
        if len(scope) != 2 or not 0.0 <= scope[0] <= scope[1] <= 1.0:
            raise ValueError(f"scope must be (low, high) with 0 <= low <= high <= 1, got {scope}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.scope = scope
        self.use_alpha = bool(use_alpha)
        self.interpolation = interpolation

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None) -> Params:
        batch, device = x.shape[0], x.device
        count = 1 if self.mode == "batch" else batch
        index = partner_index(batch, self.pairing, device=device, generator=generator)
        tau = uniform(count, *self.scope, device=device, generator=generator)
        if self.use_alpha:
            draw = beta(self.alpha, count, device=device, generator=generator)
            inside = (draw >= self.scope[0]) & (draw <= self.scope[1])
            tau = torch.where(inside, draw, tau) if self.alpha > 0 else torch.zeros_like(tau)
        if self.mode == "elem" and self.prob < 1.0:
            tau = tau.masked_fill(torch.rand(batch, device=device, generator=generator) >= self.prob, 0.0)
        spatial = x.shape[2:]  # per-axis Python sizes: a tensor made from them would sync a GPU
        side = torch.stack([tau * size for size in spatial], 1).round_()
        corner = torch.rand(side.shape, device=device, generator=generator)
        lo = torch.stack([corner[:, i] * (size + 1 - side[:, i]) for i, size in enumerate(spatial)], 1).floor_()
        lam = 1.0 - side.prod(1) / spatial.numel()
        return {"lam": lam.expand(batch), "index": index, "lo": lo.long(), "hi": (lo + side).long()}

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = params["lo"], params["hi"]
        batch, spatial = x.shape[0], x.shape[2:]
        mask = box_mask(lo, hi, spatial)  # (1 or B, 1, *spatial), 0 on the patch
        resize = _nearest_patch if self.interpolation == "nearest" else _linear_patch
        patch = _like(x, resize(gather_partner(x, params["index"]), lo, hi))
        lam = (1.0 - (hi - lo).prod(1).float() / spatial.numel()).expand(batch)
        mask = mask.expand(batch, *mask.shape[1:])
        return blend(x, patch, mask), lam, mask

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        if not self.use_alpha:
            del fields["alpha"]
        fields["scope"] = self.scope
        if self.use_alpha:
            fields["use_alpha"] = True
        fields["interpolation"] = self.interpolation
        return fields


def _nearest_patch(partner: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``partner`` ``(B, C, *spatial)`` resized (nearest) onto the boxes ``[lo, hi)`` ``(n, d)``.

    Each axis maps output position ``i`` to ``floor((i - lo) * side / extent)``, the
    source index of ``F.interpolate(mode="nearest")``; the maps combine into one flat
    index per pixel and one gather. Pixels outside the box hold arbitrary partner pixels.
    """
    (batch, channels), spatial = partner.shape[:2], partner.shape[2:]
    flat = 0
    for axis, size in enumerate(spatial):  # loop over the (at most 3) spatial axes
        extent = (hi - lo)[:, axis : axis + 1].float().clamp_(min=1)
        offset = torch.arange(size, device=lo.device) - lo[:, axis : axis + 1]
        source = offset.clamp_(min=0).float().mul_(size / extent).floor_().clamp_(max=size - 1).long()
        shape = [lo.shape[0]] + [1] * len(spatial)
        shape[1 + axis] = size
        flat = flat * size + source.view(shape)
    index = flat.view(-1, 1, spatial.numel()).expand(batch, channels, -1)
    return torch.gather(partner.reshape(batch, channels, -1), 2, index).view(partner.shape)


def _linear_patch(partner: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``partner`` resized (bi/trilinear, ``align_corners=False``) onto the boxes ``[lo, hi)``.

    One sampling grid per box for ``F.grid_sample``; ``padding_mode="border"`` clamps like
    ``F.interpolate`` does. 1-D inputs get a unit height.
    """
    squeeze = partner.ndim == 3
    if squeeze:
        partner = partner.unsqueeze(2)
        lo, hi = F.pad(lo, (1, 0)), F.pad(hi, (1, 0), value=1)
    batch, spatial = partner.shape[0], partner.shape[2:]
    coords = []
    for axis, size in enumerate(spatial):
        extent = (hi - lo)[:, axis : axis + 1].float().clamp_(min=1)
        offset = torch.arange(size, device=lo.device) - lo[:, axis : axis + 1]
        shape = [lo.shape[0]] + [1] * len(spatial)
        shape[1 + axis] = size
        coords.append(offset.float().mul_(2.0).add_(1.0).div_(extent).sub_(1.0).view(shape))  # (2i + 1) / extent - 1
    grid = torch.stack(torch.broadcast_tensors(*coords[::-1]), dim=-1)  # grid_sample wants (x, y[, z])
    grid = grid.to(partner.dtype).expand(batch, *grid.shape[1:])
    out = F.grid_sample(partner, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(2) if squeeze else out


def _like(x: Tensor, t: Tensor) -> Tensor:
    """``t`` in the memory layout of ``x`` (a copy only when the layouts differ)."""
    return t if t.stride() == x.stride() else torch.empty_like(x).copy_(t)
