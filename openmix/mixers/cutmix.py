"""CutMix (Yun et al., ICCV 2019): paste a box of the partner into each sample."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from openmix.mixer import Draws, Mixer, Params, blend, gather_partner
from openmix.registry import register
from openmix.sampling import _sizes, box_mask, host_box, host_rows, host_uniform, random_boxes

__all__ = ["CutMix", "paste_boxes", "paste_box"]


@register("cutmix")
class CutMix(Mixer):
    """Replace a box of each sample with the same box of its partner.

    Box sides are ``(1 - lam) ** (1/d)`` of the ``d`` image sides (square in 2-D), the
    centre is uniform over the pixels and the box is clipped at the border (timm's
    ``rand_bbox``). With ``correct_lam`` (the default) ``lam`` becomes the area actually
    kept, so targets match the pixels. ``mode="batch"`` draws one ``lam`` and one box on
    the host and pastes it as a slice, as timm does; ``mode="elem"`` draws a ``lam`` and a
    box position per sample on the input's device. Works on 1-D, 2-D and 3-D inputs.

    Args:
        minmax: timm's ``cutmix_minmax``: each box side uniform in
            ``[min, max)`` of the image side, placed fully inside, ``lam`` from the
            area (``alpha`` is then unused).
        correct_lam: set ``lam`` to the kept area after clipping (``minmax`` always does).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("cutmix", alpha=1.0, num_classes=10, mode="elem", seed=0)
        >>> out = mixer(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> torch.allclose(out.lam, out.mask.mean((1, 2, 3)))
        True
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        minmax: Sequence[float] | None = None,
        correct_lam: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        if minmax is not None:
            minmax = tuple(float(v) for v in minmax)
            if len(minmax) != 2 or not 0.0 <= minmax[0] < minmax[1] <= 1.0:
                raise ValueError(f"minmax must be (min, max) with 0 <= min < max <= 1, got {minmax}")
        self.minmax = minmax
        self.correct_lam = correct_lam

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``lo``/``hi``: int64 box bounds, ``(1, d)`` CPU tensors in batch mode (one box drawn on
        the host, pasted as a slice) or ``(B, d)`` on ``x.device`` in elem mode (one box per sample)."""
        params = super().draw_params(x, draws)
        spatial = x.shape[2:]
        if self.mode == "batch":
            if self.minmax is None:
                lo, hi = host_box(params["batch_lam"], spatial, draws.host)
            else:
                lo, hi = self._host_minmax_box(spatial, draws.host)
            params["lo"], params["hi"] = host_rows(lo, hi)
        elif self.minmax is None:
            params["lo"], params["hi"] = random_boxes(params["lam"], spatial, generator=draws.device)
        else:
            params["lo"], params["hi"] = self._minmax_boxes(params["lam"], spatial, draws.device)
        return params

    def _host_minmax_box(self, spatial: Sequence[int], generator: torch.Generator | None) -> tuple[list[int], list[int]]:
        """timm's ``cutmix_minmax`` box on the host: sides in ``[floor(min * size), floor(max * size))``, inside."""
        d = len(spatial)
        draws = host_uniform(2 * d, generator)
        lo, hi = [], []
        for axis, size in enumerate(spatial):
            low, high = int(size * self.minmax[0]), int(size * self.minmax[1])
            cut = int(low + draws[axis] * (high - low))
            start = int(draws[d + axis] * (size - cut + 1))
            lo.append(start)
            hi.append(start + cut)
        return lo, hi

    def _minmax_boxes(self, lam: Tensor, spatial: Sequence[int], generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        sizes = _sizes(tuple(spatial), lam.device)
        low, high = (sizes * self.minmax[0]).floor(), (sizes * self.minmax[1]).floor()
        draws = torch.rand((2, lam.shape[0], len(spatial)), device=lam.device, generator=generator, dtype=torch.float32)
        cut = (low + draws[0] * (high - low)).floor_()
        lo = (draws[1] * (sizes - cut + 1)).floor_()
        cut = torch.where(lam[:, None] < 1.0, cut, 0.0)  # samples skipped by prob get no box
        return lo.long(), (lo + cut).long()

    def binary_mask(self, params: Params) -> bool:
        """Its mask is a cut: every pixel shows one image."""
        return True

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi, index = params["lo"], params["hi"], params["index"]
        if lo.shape[0] == 1 and lo.device.type == "cpu" and hi.device.type == "cpu":  # one box known on the host
            mixed, kept, mask = paste_box(x, index, lo.tolist()[0], hi.tolist()[0])
            kept = torch.full((x.shape[0],), kept, device=x.device, dtype=torch.float32)
        else:
            mixed, kept, mask = paste_boxes(x, index, lo, hi)
        if self.correct_lam or self.minmax is not None:
            return mixed, kept, mask
        return mixed, params["lam"].expand(x.shape[0]), mask

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        if self.minmax is not None:
            fields["minmax"] = self.minmax
        if not self.correct_lam:
            fields["correct_lam"] = False
        return fields


def paste_box(
    x: Tensor, index: Tensor, lo: Sequence[int], hi: Sequence[int], *, slices: bool | None = None
) -> tuple[Tensor, float, Tensor]:
    """Paste one box ``[lo, hi)`` (host ints, one per spatial axis) of each sample's partner into ``x``.

    On an accelerator: a copy of ``x`` (its memory format kept) and one slice assignment
    of the partners' box, as timm's batch mode. On CPU one blend of the gathered partners
    with the box mask measures faster (small strided slice copies cost more there than a
    full vectorised pass); the result is the same, bit for bit. No device round trip.
    ``slices`` forces one way (``None``: by device).

    Returns:
        ``(mixed, lam, mask)``: mixed ``x``; the kept area ``lam`` as a Python float; the
        original's weight ``mask``, an expanded ``(B, 1, *spatial)`` view of one mask.

    Example:
        >>> x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 2, 2)
        >>> mixed, lam, _ = paste_box(x, torch.tensor([1, 0]), [0, 0], [1, 2])
        >>> mixed[0, 0], lam
        (tensor([[1., 1.],
                [0., 0.]]), 0.5)
    """
    batch, spatial = x.shape[0], x.shape[2:]
    box = (slice(None), slice(None)) + tuple(slice(a, max(a, b)) for a, b in zip(lo, hi))
    area = 1
    for a, b in zip(lo, hi):
        area *= max(b - a, 0)
    mask = torch.ones((1, 1, *spatial), device=x.device, dtype=torch.float32)
    if area:
        mask[box] = 0.0
    if not (x.device.type != "cpu" if slices is None else slices):
        mixed = blend(x, gather_partner(x, index), mask)
    else:
        mixed = x.clone()
        if area:
            mixed[box] = x[box].index_select(0, index)
    return mixed, 1.0 - area / spatial.numel(), mask.expand(batch, *mask.shape[1:])


def paste_boxes(x: Tensor, index: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Paste the boxes ``[lo, hi)`` of each sample's partner ``x[index]`` into ``x``.

    Args:
        x: ``(B, C, *spatial)``.
        index: partners ``(B,)``.
        lo, hi: int64 box bounds ``(B, d)``, or ``(1, d)`` for one box shared by the batch.

    Returns:
        ``(mixed, lam, mask)``: mixed ``x``; the kept area ``lam`` ``(B,)``; the original's
        weight ``mask`` ``(B, 1, *spatial)`` (an expanded view for a shared box).

    Example:
        >>> x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 2, 2)
        >>> mixed, lam, _ = paste_boxes(x, torch.tensor([1, 0]), torch.tensor([[0, 0]]), torch.tensor([[1, 2]]))
        >>> mixed[0, 0], lam
        (tensor([[1., 1.],
                [0., 0.]]), tensor([0.5000, 0.5000]))
    """
    batch, spatial = x.shape[0], x.shape[2:]
    mask = box_mask(lo, hi, spatial)
    lam = (hi - lo).clamp_(min=0).prod(1).float().div_(-float(torch.Size(spatial).numel())).add_(1.0)
    mixed = blend(x, gather_partner(x, index), mask)
    return mixed, lam.expand(batch), mask.expand(batch, *mask.shape[1:])
