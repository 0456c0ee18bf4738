"""ResizeMix (Qin et al., arXiv 2012.11101): paste the whole partner, shrunk, into each sample.

Checked against OpenMixup's implementation, which its tables use (``docs/references.md``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixer import Draws, Mixer, Params, blend, gather_partner
from openmix.output import Layout
from openmix.registry import register
from openmix.sampling import beta, box_mask, host_beta, host_rows, host_uniform, uniform

__all__ = ["ResizeMix"]

INTERPOLATIONS = ("nearest", "bilinear")
_SMALL_IMAGE = 64 * 64  # pixels: below this, batch-mode nearest patches are picked by index_select on CPU


@register("resizemix")
class ResizeMix(Mixer):
    """Shrink the partner to ``round(tau * side)`` on every axis and paste it at a random place.

    The patch lies fully inside the sample, its corner uniform over all valid positions;
    ``lam = 1 - patch area / image area``. ``tau ~ U(scope)`` as in the paper; with
    ``use_alpha`` (OpenMixup's option, on in its CIFAR benchmark configs) ``tau ~
    Beta(alpha, alpha)``, redrawn from ``U(scope)`` when it falls outside ``scope``.
    ``alpha`` is ignored unless ``use_alpha`` (then ``alpha=0`` disables mixing).
    ``mode="batch"`` uses one patch for the batch, drawn on the host: the batch is resized
    once to the patch size and pasted as a slice. ``mode="elem"`` draws one patch per
    sample on the input's device (vectorized: index maps or sampling grids, one per
    sample). Linear resampling runs in float32 and is cast back, so float16 and bfloat16
    inputs get the float32 result, rounded. Works on 1-D, 2-D and 3-D inputs. OpenMixup instead centres the box uniformly, clips it at the border and
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

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """``index``, ``lam`` and the patch box ``lo``/``hi``: int64 ``(1, d)`` CPU tensors in batch mode
        (drawn on the host), ``(B, d)`` on ``x.device`` in elem mode."""
        batch, device, spatial = x.shape[0], x.device, x.shape[2:]
        index = self.draw_index(x, draws)
        if self.mode == "batch":
            lo, hi = self._host_box(spatial, draws.host)
            area = 1
            for a, b in zip(lo, hi):
                area *= b - a
            lam = 1.0 - area / spatial.numel()
            return {
                "lam": torch.full((batch,), lam, device=device, dtype=torch.float32),
                "index": index,
                "batch_lam": lam,
                **dict(zip(("lo", "hi"), host_rows(lo, hi))),
            }
        tau = uniform(batch, *self.scope, device=device, generator=draws.device)
        if self.use_alpha:
            draw = beta(self.alpha, batch, device=device, generator=draws.device)
            inside = (draw >= self.scope[0]) & (draw <= self.scope[1])
            tau = torch.where(inside, draw, tau) if self.alpha > 0 else torch.zeros_like(tau)
        if self.prob < 1.0:
            skip = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32) >= self.prob
            tau = tau.masked_fill(skip, 0.0)
        # per-axis Python sizes: a tensor made from them would be a host-to-device copy
        side = torch.stack([tau * size for size in spatial], 1).round_()
        corner = torch.rand(side.shape, device=device, generator=draws.device, dtype=torch.float32)
        lo = torch.stack([corner[:, i] * (size + 1 - side[:, i]) for i, size in enumerate(spatial)], 1).floor_()
        lam = 1.0 - side.prod(1) / spatial.numel()
        return {"lam": lam, "index": index, "lo": lo.long(), "hi": (lo + side).long()}

    def _host_box(self, spatial: Sequence[int], generator: torch.Generator | None) -> tuple[list[int], list[int]]:
        """The elem-mode patch formulas for one patch, in Python numbers."""
        u = host_uniform(1 + len(spatial), generator)
        tau = self.scope[0] + u[0] * (self.scope[1] - self.scope[0])
        if self.use_alpha:
            draw = host_beta(self.alpha, generator)
            tau = 0.0 if self.alpha == 0 else draw if self.scope[0] <= draw <= self.scope[1] else tau
        lo, hi = [], []
        for size, v in zip(spatial, u[1:]):
            side = round(tau * size)
            start = int(v * (size + 1 - side))
            lo.append(start)
            hi.append(start + side)
        return lo, hi

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = params["lo"], params["hi"]
        batch, spatial = x.shape[0], x.shape[2:]
        if lo.shape[0] == 1 and lo.device.type == "cpu" and hi.device.type == "cpu":  # one patch known on the host
            mixed, kept, mask = self._paste_resized(x, params["index"], lo.tolist()[0], hi.tolist()[0])
            return mixed, torch.full((batch,), kept, device=x.device, dtype=torch.float32), mask
        mask = box_mask(lo, hi, spatial)  # (1 or B, 1, *spatial), 0 on the patch
        resize = _nearest_patch if self.interpolation == "nearest" else _linear_patch
        patch = _like(x, resize(gather_partner(x, params["index"]), lo, hi))
        lam = (1.0 - (hi - lo).prod(1).float() / spatial.numel()).expand(batch)
        mask = mask.expand(batch, *mask.shape[1:])
        return blend(x, patch, mask), lam, mask

    def _paste_resized(self, x: Tensor, index: Tensor, lo: list[int], hi: list[int]) -> tuple[Tensor, float, Tensor]:
        """Resize the batch once to the patch size, permute the (small) result, paste it as a slice.

        Nearest resizing of small images on CPU (up to 64x64 pixels) picks rows, then
        columns, ... with one ``index_select`` per axis (``F.interpolate``'s own source
        indices, cached): there it measures faster than ``F.interpolate(mode="nearest")``,
        which wins on larger images (the column gather grows costly) and on accelerators.
        float64 takes ``F.interpolate`` too (its double index arithmetic varies by kernel).
        """
        batch, spatial = x.shape[0], x.shape[2:]
        sides = [b - a for a, b in zip(lo, hi)]
        mixed = x.clone()
        mask = torch.ones((1, 1, *spatial), device=x.device, dtype=torch.float32)
        area = 1
        for side in sides:
            area *= max(side, 0)
        if area:
            box = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))
            small = x.device.type == "cpu" and spatial.numel() <= _SMALL_IMAGE and x.dtype != torch.float64
            if self.interpolation == "nearest" and not small:
                patch = F.interpolate(x, size=sides, mode="nearest")
            elif self.interpolation == "nearest":
                patch = x
                for axis, (size, side) in enumerate(zip(spatial, sides)):  # the (at most 3) spatial axes
                    patch = patch.index_select(2 + axis, _nearest_sources(spatial, axis, side, x.device, x.dtype))
            else:
                mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
                patch = F.interpolate(_float32(x), size=sides, mode=mode, align_corners=False)
            mixed[box] = patch.index_select(0, index)
            mask[box] = 0.0
        return mixed, 1.0 - area / spatial.numel(), mask.expand(batch, *mask.shape[1:])

    def binary_mask(self, params: Params) -> bool:
        """The patch is pasted: every pixel shows one image."""
        return True

    def layout(self, params: Params, x: Tensor) -> Layout:
        """The partner's content shrunk into the patch ``[lo, hi)``: targets and points follow it there."""
        return PasteLayout(params["lo"], params["hi"], tuple(x.shape[2:]), self.interpolation)

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        if not self.use_alpha:
            del fields["alpha"]
        fields["scope"] = self.scope
        if self.use_alpha:
            fields["use_alpha"] = True
        fields["interpolation"] = self.interpolation
        return fields


class PasteLayout(Layout):
    """ResizeMix's layout: the sample in place, the partner resized onto the patch ``[lo, hi)``.

    ``lo``/``hi`` are ``(1, d)`` (one patch, host tensors in batch mode) or ``(B, d)``; ``spatial`` the
    image's sizes (``(H, W)`` for 2-D). A target with more leading axes than the image (a video's
    ``(B, K, T, H, W)``) is resized frame by frame.
    """

    def __init__(self, lo: Tensor, hi: Tensor, spatial: tuple[int, ...], interpolation: str) -> None:
        self.lo, self.hi, self.spatial, self.interpolation = lo, hi, spatial, interpolation

    def partner(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        d = len(self.spatial)
        folded = t.flatten(1, t.ndim - 1 - d)  # (B, K, *spatial): leading axes into K
        linear = self.interpolation != "nearest" and not nearest and folded.is_floating_point()
        if self.lo.shape[0] == 1 and self.lo.device.type == "cpu":  # one patch, known on the host: slices
            lo, hi = self.lo.tolist()[0], self.hi.tolist()[0]
            sides = [b - a for a, b in zip(lo, hi)]
            out = folded.clone()
            if all(side > 0 for side in sides):
                if linear:
                    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[d]
                    patch = F.interpolate(_float32(folded), size=sides, mode=mode, align_corners=False).to(t.dtype)
                else:
                    patch = folded
                    for axis, side in enumerate(sides):
                        patch = patch.index_select(2 + axis, _nearest_sources(self.spatial, axis, side, t.device))
                out[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))] = patch
        else:
            lo, hi = self.lo.to(t.device), self.hi.to(t.device)
            out = _linear_patch(folded, lo, hi) if linear else _nearest_patch(folded, lo, hi)
        return out.view(t.shape)

    def move_partner(self, points: Tensor) -> Tensor:
        """Points ``(B, N, 2)`` as ``(x, y)`` of the partner, where they land in the patch (2-D images)."""
        height, width = self.spatial[-2:]
        if self.lo.shape[0] == 1 and self.lo.device.type == "cpu":
            (y0, x0), (y1, x1) = self.lo.tolist()[0][-2:], self.hi.tolist()[0][-2:]
            return torch.stack([points[..., 0] * ((x1 - x0) / width) + x0, points[..., 1] * ((y1 - y0) / height) + y0], -1)
        lo, hi = self.lo.to(points.device).float(), self.hi.to(points.device).float()
        x = points[..., 0] * ((hi[:, -1] - lo[:, -1]) / width).unsqueeze(1) + lo[:, -1].unsqueeze(1)
        y = points[..., 1] * ((hi[:, -2] - lo[:, -2]) / height).unsqueeze(1) + lo[:, -2].unsqueeze(1)
        return torch.stack([x, y], -1)


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


def _nearest_sources(
    spatial: Sequence[int], axis: int, side: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Source index of each of ``side`` outputs along ``axis`` when nearest-resizing an input of ``dtype``
    and sizes ``spatial``.

    ``F.interpolate`` itself resizes a float32 index ramp laid along ``axis`` (its index
    arithmetic for every floating dtype but float64, which callers resize directly), so
    the indices are its own. Cached per size, side, axis and device: one small tensor,
    made on the device, never copied.
    """
    return _nearest_ramp(int(spatial[axis]), side, axis, len(spatial), device, torch.float32)


@functools.lru_cache(maxsize=4096)
def _nearest_ramp(size: int, side: int, axis: int, ndim: int, device: torch.device, ramp: torch.dtype) -> Tensor:
    """See :func:`_nearest_sources`; callers must not modify the result."""
    shape, out = [1] * ndim, [1] * ndim
    shape[axis], out[axis] = size, side
    values = torch.arange(size, device=device, dtype=ramp).view(1, 1, *shape)
    return F.interpolate(values, size=out, mode="nearest").view(side).long()


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
    grid = grid.expand(batch, *grid.shape[1:])
    out = F.grid_sample(_float32(partner), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.to(partner.dtype)
    return out.squeeze(2) if squeeze else out


def _float32(x: Tensor) -> Tensor:
    """``x`` as float32 when it is a lower precision float (resampling weights and sums stay exact)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _like(x: Tensor, t: Tensor) -> Tensor:
    """``t`` in the memory layout of ``x`` (a copy only when the layouts differ)."""
    return t if t.stride() == x.stride() else torch.empty_like(x).copy_(t)
