"""GridMix (Baek et al., Pattern Recognition 2021): paste the partner through a grid of holes.

OpenMixup's variant (GridMask holes + CutMix labels), which its tables use (``docs/references.md``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from openmix.mixer import Draws, Mixer, Params, blend, gather_partner
from openmix.registry import register
from openmix.sampling import host_rows, host_uniform, one_minus_outer

__all__ = ["GridMix"]

Range = float | Sequence[float]


@register("gridmix")
class GridMix(Mixer):
    """Take a regular grid of rectangular holes inside a random region from the partner.

    As in OpenMixup: a region of ``cut_area_ratio`` of the image with aspect ratio
    (height / width) ``cut_aspect_ratio`` is placed uniformly; its width is split into
    ``n_holes`` cells of width ``ceil(width / n_holes)`` and height ``cell width *
    hole_aspect_ratio``; the top-left ``sqrt(1 - lam)`` of each cell's sides (at least 1
    pixel, at most the cell side minus 1) is a hole showing the partner. The returned
    ``lam`` is the area actually kept. Each argument is a number or a ``(low, high)``
    range drawn uniformly (``n_holes``: an integer from ``low`` to ``high`` inclusive);
    ``lam ~ Beta(alpha, alpha)``. ``mode="batch"`` draws one grid for the batch on the
    host (as OpenMixup), ``mode="elem"`` one per sample on the input's device. Defaults are OpenMixup's CIFAR configs.
    Where OpenMixup fails, this clamps: the region to the image (OpenMixup's slices run
    off the image for tall regions), ``n_holes`` to half the region width (OpenMixup
    asserts) and the cell height to at least 1; ``lam = 1`` (a sample skipped by ``prob``)
    pastes nothing.

    Args:
        n_holes: number of cells across the region's width.
        hole_aspect_ratio: cell height over cell width.
        cut_area_ratio: region area over image area, in ``(0, 1]``.
        cut_aspect_ratio: region height over region width.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("gridmix", alpha=1.0, num_classes=10, mode="elem", seed=0)
        >>> out = mixer(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> torch.allclose(out.lam, out.mask.mean((1, 2, 3)))
        True
    """

    spatial_dims = (2,)

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        n_holes: int | Sequence[int] = (2, 6),
        hole_aspect_ratio: Range = 1.0,
        cut_area_ratio: Range = (0.5, 1.0),
        cut_aspect_ratio: Range = (0.5, 2.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        self.n_holes = _range("n_holes", n_holes, low=1, integer=True)
        self.hole_aspect_ratio = _range("hole_aspect_ratio", hole_aspect_ratio, low=0.0)
        self.cut_area_ratio = _range("cut_area_ratio", cut_area_ratio, low=0.0, high=1.0)
        self.cut_aspect_ratio = _range("cut_aspect_ratio", cut_aspect_ratio, low=0.0)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds the grid: ``lo`` (region corner), ``size`` (region sides) and ``cell``
        (cell sides), int64 ``(1, 2)`` CPU tensors in batch mode (drawn on the host) or
        ``(B, 2)`` on ``x.device``, as ``(rows, columns)``."""
        params = super().draw_params(x, draws)
        if self.mode == "batch":
            grid = self._host_grid(x.shape[2:], host_uniform(6, draws.host))
            params.update(zip(grid, host_rows(*grid.values())))
            return params
        height, width = x.shape[2:]
        u = torch.rand((6, x.shape[0]), device=x.device, generator=draws.device, dtype=torch.float32)

        def pick(bounds: tuple[float, float], u: Tensor) -> Tensor:
            return u.mul(bounds[1] - bounds[0]).add_(bounds[0])

        n_holes = pick((self.n_holes[0], self.n_holes[1] + 1), u[0]).floor_().clamp_(max=self.n_holes[1])
        area = pick(self.cut_area_ratio, u[1]).mul_(height * width).floor_()
        aspect = pick(self.cut_aspect_ratio, u[2])
        cut_w = area.div(aspect).sqrt_().floor_()
        cut_h = cut_w.mul(aspect).floor_().clamp_(1, height)
        cut_w = cut_w.clamp_(1, width)
        n_holes = torch.minimum(n_holes, cut_w.div(2).floor_().clamp_(min=1))
        cell_w = cut_w.div(n_holes).ceil_()
        cell_h = cell_w.mul(pick(self.hole_aspect_ratio, u[3])).floor_().clamp_(min=1)
        lo = torch.stack([(height - cut_h).mul_(u[4]), (width - cut_w).mul_(u[5])], 1).floor_()
        size, cell = torch.stack([cut_h, cut_w], 1), torch.stack([cell_h, cell_w], 1)
        params.update(lo=lo.long(), size=size.long(), cell=cell.long())
        return params

    def _host_grid(self, spatial: Sequence[int], u: list[float]) -> dict[str, list[int]]:
        """The elem-mode grid formulas for one grid, in Python numbers from six uniforms ``u``."""
        height, width = spatial

        def pick(bounds: tuple[float, float], v: float) -> float:
            return bounds[0] + v * (bounds[1] - bounds[0])

        n_holes = min(math.floor(pick((self.n_holes[0], self.n_holes[1] + 1), u[0])), self.n_holes[1])
        area = math.floor(pick(self.cut_area_ratio, u[1]) * height * width)
        aspect = pick(self.cut_aspect_ratio, u[2])
        cut_w = math.floor(math.sqrt(area / aspect))
        cut_h = min(max(math.floor(cut_w * aspect), 1), height)
        cut_w = min(max(cut_w, 1), width)
        n_holes = min(n_holes, max(cut_w // 2, 1))
        cell_w = -(-cut_w // n_holes)
        cell_h = max(math.floor(cell_w * pick(self.hole_aspect_ratio, u[3])), 1)
        lo = [math.floor((height - cut_h) * u[4]), math.floor((width - cut_w) * u[5])]
        return {"lo": lo, "size": [cut_h, cut_w], "cell": [cell_h, cell_w]}

    def binary_mask(self, params: Params) -> bool:
        """Its mask is a cut: every pixel shows one image."""
        return True

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        lo, size, cell = params["lo"], params["size"], params["cell"]
        batch, batch_lam = x.shape[0], params.get("batch_lam")
        if batch_lam is not None and all(t.shape[0] == 1 and t.device.type == "cpu" for t in (lo, size, cell)):
            mask, kept = _host_grid_mask(x.shape[2:], lo.tolist()[0], size.tolist()[0], cell.tolist()[0], batch_lam, x.device)
            kept = torch.full((batch,), kept, device=x.device, dtype=torch.float32)
        else:
            lam = params["lam"][: lo.shape[0], None].float()
            hole = cell.float().mul(torch.sqrt(1.0 - lam)).floor_()
            hole = torch.minimum(hole.clamp_(min=1), cell - 1).masked_fill_(lam >= 1, 0)  # lam = 1: paste nothing
            hits = []
            for axis, length in enumerate(x.shape[2:]):  # rows, then columns
                rel = torch.arange(length, device=x.device) - lo[:, axis : axis + 1]
                inside = (rel >= 0) & (rel < size[:, axis : axis + 1])
                hits.append((inside & (rel.remainder(cell[:, axis : axis + 1]) < hole[:, axis : axis + 1])).float())
            rows, cols = hits
            mask = one_minus_outer(hits)
            kept = (1.0 - rows.sum(1) * cols.sum(1) / float(x.shape[2] * x.shape[3])).expand(batch)
        mask = mask.expand(batch, *mask.shape[1:])
        return blend(x, gather_partner(x, params["index"]), mask), kept, mask

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        for name in ("n_holes", "hole_aspect_ratio", "cut_area_ratio", "cut_aspect_ratio"):
            low, high = getattr(self, name)
            fields[name] = low if low == high else (low, high)
        return fields


def _host_grid_mask(
    spatial: Sequence[int],
    lo: list[int],
    size: list[int],
    cell: list[int],
    lam: float,
    device: torch.device,
    *,
    numpy: bool | None = None,
) -> tuple[Tensor, float]:
    """One grid mask ``(1, 1, H, W)`` from host numbers (0 on the holes) and its kept area.

    Along each axis the holes are the first ``hole`` pixels of every cell inside the
    region: the whole cells as one strided view (cells unflattened into their own axis),
    the last, partial cell as one slice. Filling those views needs no index tensors. On
    CPU the two axis profiles are filled in NumPy and the mask is their outer product
    (no copy into torch); elsewhere the views of a device mask are filled. ``numpy``
    forces one way (``None``: by device).
    """
    if lam >= 1.0:
        return torch.ones((1, 1, *spatial), device=device, dtype=torch.float32), 1.0
    # the hole sides in float32, as the per-sample path computes them from the float32 lam
    ratio = np.sqrt(np.float32(1.0) - np.float32(lam))
    pieces, counts = [], []
    for axis in range(2):
        hole = min(max(int(np.floor(np.float32(cell[axis]) * ratio)), 1), cell[axis] - 1)
        whole = size[axis] // cell[axis]
        tail = min(hole, size[axis] - whole * cell[axis])
        axis_pieces = []
        if whole and hole > 0:
            axis_pieces.append((lo[axis], whole, cell[axis], hole))
        if tail > 0:
            axis_pieces.append((lo[axis] + whole * cell[axis], 1, tail, tail))
        pieces.append(axis_pieces)
        counts.append(whole * max(hole, 0) + max(tail, 0))
    kept = 1.0 - counts[0] * counts[1] / (spatial[0] * spatial[1])
    if device.type == "cpu" if numpy is None else numpy:
        hits = []
        for axis_pieces, length in zip(pieces, spatial):
            profile = np.zeros(length, dtype=np.float32)
            for start, n, cell_side, hole in axis_pieces:
                profile[start : start + n * cell_side].reshape(n, cell_side)[:, :hole] = 1.0  # a view of the profile
            hits.append(profile)
        return torch.from_numpy(1.0 - np.outer(hits[0], hits[1])).view(1, 1, *spatial).to(device), kept
    mask = torch.ones((1, 1, *spatial), device=device, dtype=torch.float32)
    for start_w, n_w, cell_w, hole_w in pieces[1]:  # columns first: unflattening them leaves the row axis in place
        cols = mask.narrow(3, start_w, n_w * cell_w).unflatten(3, (n_w, cell_w)).narrow(4, 0, hole_w)
        for start_h, n_h, cell_h, hole_h in pieces[0]:
            cols.narrow(2, start_h, n_h * cell_h).unflatten(2, (n_h, cell_h)).narrow(3, 0, hole_h).fill_(0.0)
    return mask, kept


def _range(
    name: str, value: Any, *, low: float, high: float | None = None, integer: bool = False
) -> tuple[float, float]:
    """``value`` (a number or a ``(min, max)`` pair) as a checked ``(min, max)`` tuple."""
    pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value, value)
    kinds = (int,) if integer else (int, float)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, kinds) for v in pair):
        what = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {what} or a (min, max) pair of them, got {value!r}")
    lo, hi = pair
    if integer:
        ok = low <= lo <= hi
    else:
        ok = low < lo <= hi and (high is None or hi <= high)
    if not ok:
        bound = f"{low} <= min <= max" if integer else f"{low} < min <= max" + (f" <= {high}" if high is not None else "")
        raise ValueError(f"{name} must satisfy {bound}, got {value!r}")
    return (lo, hi) if integer else (float(lo), float(hi))
