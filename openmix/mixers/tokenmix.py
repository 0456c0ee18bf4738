"""TokenMix (Liu et al., ECCV 2022; arXiv 2207.08409): replace random blocks of patch tokens with the
partner's.

What the official code (``Sense-X/TokenMix``: ``tokenmix.py::generate_mask``, ``Mixup``) does in its
TokenMix branch, and what openmix does:

1. **How many tokens.** The official code draws ``lam ~ Beta(1)`` and discards it: the partner's
   tokens number ``min(N, int(0.5 * N) + 14)`` on its hard-coded 14x14 grid (``lam_constant = 0.5``,
   ``minimum_tokens = 14``), 112 of 196. openmix: ``min(N, int(mask_ratio * N) + minimum_tokens)``
   with the official ``mask_ratio = 0.5`` and ``minimum_tokens`` 1/14 of the grid by default (14 of
   196; at least 1); ``mask_ratio=None`` uses ``1 - lam``, ``lam ~ Beta(alpha)``, as OpenMixup does. A sample the
   ``prob`` coin skips (or ``alpha = 0``) takes no token.
2. **Which tokens.** ``mask_type="block"``: BEiT-style blocks on the patch grid (:func:`token_masks`):
   each block's area is ``U(1, remaining)`` tokens and its aspect ratio log-uniform in
   ``[min_aspect, 1 / min_aspect]`` (0.3), its sides under the grid's, placed uniformly; it is
   accepted when it adds between 1 and ``remaining`` new tokens. The official code tries blocks
   until the count is reached (10 attempts each) and stops short in about 1% of masks; openmix
   makes a fixed number of attempts for every sample at once (``BLOCK_ROUNDS``: 30, more than the
   official loop needs for 99% of its 14x14 masks) and tops up what is still missing (in 0.4% of
   the masks, a few tokens) with single random tokens, so the count is always exact. ``mask_type="random"``: that many tokens
   uniformly, as the official ``generate_mask_random``.
3. **The grid.** Tokens are ``patch_size`` squares from the top-left corner (the official code
   upsamples its 14x14 mask to a hard-coded 224x224); a last row or column of partial patches
   covers the rest of an image whose side the patch does not divide.
4. **The labels: area, not the official label maps.** The official targets come from an offline
   NFNet-F6 dense label-map dataset (ReLabel format): each image's share is the mass of its
   ground-truth class map over the tokens it shows, the two shares not summing to 1, trained with
   BCE. openmix has no such maps: ``lam`` is the fraction of the original's pixels kept (the
   token fraction when the patch divides the image), and the targets ``lam * y + (1 - lam) * y[index]``
   sum to 1. (OpenMixup uses the attention of an extra forward instead, crediting each image with
   the attention of the tokens it *lost*, and collapses the weights to their batch mean.)

Partners come from the common ``pairing`` (random by default; ``pairing="flip"`` is the official
``x.flip(0)``), and the loss is the trainer's (the official trains with BCE).

The official recipe switches per batch between this and mixup (``switch_prob`` 0.5, mixup alpha
0.8): ``openmix.build("random_choice", mixers=[{"name": "mixup", "alpha": 0.8}, "tokenmix"])``.
TokenMix needs no model, so it is an input mixer: give it the model's patch size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from openmix.checks import check_int, check_number
from openmix.mixer import Draws, Mixer, Params, blend, gather_partner
from openmix.registry import register

__all__ = ["TokenMix", "token_masks", "token_count", "BLOCK_ROUNDS"]

MASK_TYPES = ("block", "random")
BLOCK_ROUNDS = 30
"""Block attempts per mask. The official loop makes 14 attempts (median) for a 14x14 mask of 112 tokens, at
most 27 for 99% of them; after 30 rounds 0.4% of 5,000 such masks missed 1 to 4 tokens, which single random tokens make up."""
OFFICIAL_MINIMUM_SHARE = 14 / 196  # the official minimum_tokens on its 14x14 grid


def token_count(ratio: Tensor, total: int, extra: int) -> Tensor:
    """Tokens taken from the partner: ``min(total, floor(ratio * total) + extra)``, 0 where ``ratio <= 0``.

    Example:
        >>> token_count(torch.tensor([0.5, 0.0, 0.99]), 196, 14).tolist()
        [112, 0, 196]
    """
    count = (ratio.float() * total).floor_().long().add_(extra).clamp_(max=total)
    return torch.where(ratio > 0, count, 0)


def token_masks(count: Tensor, grid: tuple[int, int], *, mask_type: str = "block", min_aspect: float = 0.3,
                generator: torch.Generator | None = None) -> Tensor:
    """Masks on a patch grid with exactly ``count[i]`` tokens set each, ``(n, rows, cols)`` bool.

    ``"block"``: ``BLOCK_ROUNDS`` rounds in which every mask proposes one block (area ``U(1, remaining)``,
    aspect ``exp(U(log a, -log a))``, sides ``round(sqrt(area * aspect))`` by ``round(sqrt(area / aspect))``,
    under the grid's, top-left uniform), kept when it adds 1 to ``remaining`` new tokens; then the
    tokens still missing, one by one at random. ``"random"``: ``count[i]`` tokens uniformly.
    All masks at once on ``count``'s device, from ``generator``; no host read.

    Args:
        count: tokens per mask ``(n,)`` int64, at most ``rows * cols``.
        grid: ``(rows, cols)``.
        mask_type: ``"block"`` or ``"random"``.
        min_aspect: the smallest block aspect ratio ``a`` (the largest is ``1 / a``).
        generator: a generator on ``count``'s device.

    Example:
        >>> masks = token_masks(torch.tensor([112, 0]), (14, 14), generator=torch.Generator().manual_seed(0))
        >>> masks.flatten(1).sum(1).tolist()
        [112, 0]
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    n, (rows, cols), device = count.shape[0], grid, count.device
    mask = torch.zeros(n, rows, cols, dtype=torch.bool, device=device)
    if mask_type == "block":
        remaining = count.clone()
        row_ids = torch.arange(rows, device=device).view(1, rows, 1)
        col_ids = torch.arange(cols, device=device).view(1, 1, cols)
        spread = -2.0 * math.log(min_aspect)
        u = torch.rand((BLOCK_ROUNDS, 4, n), device=device, generator=generator, dtype=torch.float32)
        for draw in u:  # rounds of proposals, every mask at once
            area = 1.0 + draw[0] * (remaining.clamp(min=1) - 1).float()
            aspect = torch.exp(math.log(min_aspect) + draw[1] * spread)
            height = (area * aspect).sqrt_().round_().long()
            width = (area / aspect).sqrt_().round_().long()
            top = (draw[2] * (rows - height + 1).float()).floor_().long()
            left = (draw[3] * (cols - width + 1).float()).floor_().long()
            block = ((row_ids >= top.view(n, 1, 1)) & (row_ids < (top + height).view(n, 1, 1))
                     & (col_ids >= left.view(n, 1, 1)) & (col_ids < (left + width).view(n, 1, 1)))
            new = block & ~mask
            added = new.flatten(1).sum(1)
            take = (height < rows) & (width < cols) & (added > 0) & (added <= remaining)
            mask |= new & take.view(n, 1, 1)
            remaining -= added * take
    missing = count - mask.flatten(1).sum(1)
    noise = torch.rand((n, rows * cols), device=device, generator=generator, dtype=torch.float32)
    rank = noise.masked_fill_(mask.flatten(1), 2.0).argsort(1).argsort(1)  # free tokens first, in random order
    return mask | (rank < missing.view(n, 1)).view(n, rows, cols)


@register("tokenmix")
class TokenMix(Mixer):
    """Replace a set of patch tokens (blocks on the patch grid) of each sample with its partner's.

    ``lam`` is the kept share of the pixels (the official labels come from offline label maps, which
    openmix does not have; see the module notes for that and the other departures). ``mode="batch"``
    draws one token mask for the batch, ``"elem"`` one per sample, on the input's device.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)``: sets the token count when ``mask_ratio`` is ``None``;
            otherwise only ``alpha = 0`` matters (no mixing), as in the official code, which draws
            and discards it.
        num_classes: number of classes, for class-id labels.
        patch_size: the model's patch side in pixels, an int or ``(height, width)`` (ViT-S/16: 16).
        mask_type: ``"block"`` (BEiT-style blocks, the official default) or ``"random"`` tokens.
        mask_ratio: the partner's share of the tokens before ``minimum_tokens`` are added (official:
            0.5, fixed); ``None``: ``1 - lam``.
        minimum_tokens: tokens added to ``floor(mask_ratio * N)``; ``None``: the official 14 of 196
            scaled to the grid, ``round(N / 14)``, at least 1.
        min_aspect: the smallest block aspect ratio (the largest is its inverse).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("tokenmix", num_classes=10, patch_size=4, mode="elem", seed=0)
        >>> out = mixer(torch.rand(2, 3, 56, 56), torch.tensor([0, 1]))  # 14x14 tokens
        >>> out.lam  # 112 of 196 tokens from the partner
        tensor([0.4286, 0.4286])
    """

    spatial_dims = (2,)

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        patch_size: int | Sequence[int] = 16,
        mask_type: str = "block",
        mask_ratio: float | None = 0.5,
        minimum_tokens: int | None = None,
        min_aspect: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        sides = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
            raise ValueError(f"patch_size must be a positive int or (height, width), got {patch_size!r}")
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.patch_size = (int(sides[0]), int(sides[1]))
        self.mask_type = mask_type
        self.mask_ratio = None if mask_ratio is None else check_number("mask_ratio", mask_ratio, low=0.0, high=1.0)
        self.minimum_tokens = None if minimum_tokens is None else check_int("minimum_tokens", minimum_tokens, 0)
        self.min_aspect = check_number("min_aspect", min_aspect, low=0.0, high=1.0)
        if self.min_aspect == 0.0:
            raise ValueError("min_aspect must be > 0 (the block aspect ratios lie in [min_aspect, 1 / min_aspect])")

    def grid(self, x: Tensor) -> tuple[int, int]:
        """The token grid ``(rows, cols)`` of images shaped like ``x``: partial patches count."""
        (ph, pw), (height, width) = self.patch_size, x.shape[-2:]
        return -(-height // ph), -(-width // pw)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``tokens``: the partner's tokens, bool ``(1, rows, cols)`` in batch mode (one mask for the
        batch) or ``(B, rows, cols)``, drawn on ``x.device``."""
        params = super().draw_params(x, draws)
        rows, cols = self.grid(x)
        total = rows * cols
        extra = max(1, round(total * OFFICIAL_MINIMUM_SHARE)) if self.minimum_tokens is None else self.minimum_tokens
        lam = params["lam"][:1] if self.mode == "batch" else params["lam"]
        ratio = (1.0 - lam) if self.mask_ratio is None else torch.where(lam < 1.0, self.mask_ratio, 0.0)
        count = token_count(ratio, total, extra)
        params["tokens"] = token_masks(count, (rows, cols), mask_type=self.mask_type, min_aspect=self.min_aspect,
                                       generator=draws.device)
        return params

    def binary_mask(self, params: Params) -> bool:
        """Every pixel shows one image."""
        return True

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """``params`` needs ``index`` and ``tokens`` ``(1 or B, rows, cols)`` covering ``x``'s patch grid."""
        (ph, pw), (height, width) = self.patch_size, x.shape[-2:]
        tokens = params["tokens"]
        keep = (~tokens).to(torch.float32).unsqueeze(1)  # (n, 1, rows, cols)
        mask = keep.repeat_interleave(ph, 2)[:, :, :height].repeat_interleave(pw, 3)[..., :width]
        lam = mask.flatten(1).mean(1).expand(x.shape[0])
        mask = mask.expand(x.shape[0], *mask.shape[1:])
        return blend(x, gather_partner(x, params["index"]), mask), lam, mask

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields["patch_size"] = self.patch_size
        if self.mask_type != "block":
            fields["mask_type"] = self.mask_type
        if self.mask_ratio != 0.5:
            fields["mask_ratio"] = self.mask_ratio
        if self.minimum_tokens is not None:
            fields["minimum_tokens"] = self.minimum_tokens
        if self.min_aspect != 0.3:
            fields["min_aspect"] = self.min_aspect
        return fields
