"""SMMix (Chen et al., ICCV 2023; arXiv 2212.12977): self-motivated image mixing on a ViT, the partner's
most attended window pasted over the sample's least attended one.

One training step (:meth:`SMMix.step`), as the official code (``ChenMnZ/SMMix``: ``smmix.py::SMMix``,
``deit.py``, ``engine.py``) does it:

1. **A clean pass**: the model in eval mode, without gradients, on the unmixed batch; its logits
   ``z`` and its last block's softmax attention averaged over the heads **and over the patch
   queries**, the attention each patch *receives* ``(B, N)`` (not the class token's row).
   openmix hooks it out of that pass (:func:`~openmix.mixers.transmix.capture_attention`, statistic
   ``"patch_mean"``); the model's mode is restored afterwards.
2. **Windows**: one square side ``s`` in tokens, uniform over ``int(0.25 g) ... int(0.75 g)`` on a
   ``g x g`` patch grid (3 to 10 at 14x14; ``g`` the grid's shorter side here); the attention summed
   over every ``s x s`` window at stride 1 (:func:`window_positions`). The sample's **least** attended
   window is replaced by its partner's **most** attended one, token by token from wherever it lies
   (the partner's content moves: :class:`ShiftLayout` moves targets with it).
3. ``lam = 1 - s^2 / N``, the sample's own share (the pixels it keeps), and the soft targets
   ``lam * y + (1 - lam) * y[index]``.
4. **The losses**, all weighted 1 in the official code: the soft cross-entropy of the mixed batch;
   ``fine_weight`` times the mean of the cross-entropies of a token head on the mean of each region's
   final patch tokens against its own label (the sample's region, the pasted window); and
   ``consistency_weight`` times ``KL(softmax(lam z + (1 - lam) z[index]) || softmax(logits))``
   (``batchmean``), the clean logits mixed *before* the softmax.

**Defaults: as the official code trains**, both extra losses on (weights 1). OpenMixup's SMMix trains
the mixed cross-entropy only (its "official" branch is dead code) and reads the class token's
attention row instead; set ``fine_weight=0, consistency_weight=0`` for that loss.

**Where openmix departs.** The token head is the model's own classifier (``fc_norm``, ``head_drop``,
``head`` on the region means): the official DeiT has a second linear ``token_head``, and its authors
note that sharing the classifier or not "does not affect performance"; openmix adds no parameters to
the model. The official recipe switches per batch between SMMix and mixup (``switch_prob`` 0.5,
mixup alpha 0.8), in batch mode with flip pairing; openmix's mixer is the SMMix branch alone, with the
common modes (``batch``, ``elem``: a side per sample, ``pair``), pairings and the ``prob`` coin. The
window side is drawn on the model's patch grid, which :meth:`SMMix.check_model` reads at the start of
each step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_number
from openmix.losses import Criterion
from openmix.mixer import Draws, Params, blend, gather_partner, no_autocast
from openmix.mixers.transmix import capture_attention, last_attention, token_grid, vit_parts
from openmix.mixers.puzzlemix.saliency import _modes
from openmix.model_mixer import ModelMixer
from openmix.output import Layout, StepResult
from openmix.registry import register
from openmix.sampling import host_uniform
from openmix.targets import mix_targets

__all__ = ["SMMix", "ShiftLayout", "window_positions", "window_sides"]


def window_sides(grid: tuple[int, int], min_side_ratio: float, max_side_ratio: float) -> tuple[int, int]:
    """The smallest and largest window side in tokens: ``int(g * min_side_ratio) ... int(g * max_side_ratio)``
    of the grid's shorter side ``g``, at least 1.

    Example:
        >>> window_sides((14, 14), 0.25, 0.75)
        (3, 10)
    """
    short = min(grid)
    low = max(1, int(short * min_side_ratio))
    return low, max(low, int(short * max_side_ratio))


def window_positions(attention: Tensor, side: Tensor) -> tuple[Tensor, Tensor]:
    """The top-left token ``(row, col)`` of each map's least and most attended ``side x side`` window.

    Windows lie inside the grid, at stride 1; sums come from one integral image, so every map may have
    its own side. Ties go to the first window in row-major order (as ``argmin`` over the official
    ``unfold``).

    Args:
        attention: ``(B, rows, cols)``.
        side: window sides ``(B,)`` int64, each in ``[1, min(rows, cols)]`` (0 is read as 1).

    Returns:
        ``(least, most)``, each int64 ``(B, 2)``.

    Example:
        >>> a = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 9.0], [0.0, 0.0, 0.0]]])
        >>> least, most = window_positions(a, torch.tensor([2]))
        >>> least.tolist(), most.tolist()
        ([[1, 0]], [[0, 1]])
    """
    batch, rows, cols = attention.shape
    integral = F.pad(attention.float().cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(1)  # (B, (rows+1) (cols+1))
    s = side.clamp(min=1).view(batch, 1, 1)
    r = torch.arange(rows, device=attention.device).view(1, rows, 1)
    c = torch.arange(cols, device=attention.device).view(1, 1, cols)
    valid = (r + s <= rows) & (c + s <= cols)
    r2, c2 = (r + s).clamp(max=rows), (c + s).clamp(max=cols)
    width = cols + 1

    def at(i: Tensor, j: Tensor) -> Tensor:
        return integral.gather(1, (i * width + j).expand(batch, rows, cols).flatten(1)).view(batch, rows, cols)

    sums = at(r2, c2) - at(r, c2) - at(r2, c) + at(r, c)
    least = sums.masked_fill(~valid, float("inf")).flatten(1).argmin(1)
    most = sums.masked_fill(~valid, float("-inf")).flatten(1).argmax(1)
    return (torch.stack([least // cols, least % cols], 1), torch.stack([most // cols, most % cols], 1))


def _shift(t: Tensor, offset: Tensor) -> Tensor:
    """``t`` ``(B, K, H, W)`` with each map read ``offset`` ``(B, 2)`` pixels ``(rows, cols)`` further on:
    ``out[b, :, i, j] = t[b, :, i + dy, j + dx]``, clamped at the border; one gather."""
    batch, channels, height, width = t.shape
    rows = (torch.arange(height, device=t.device).view(1, height, 1) + offset[:, 0].view(batch, 1, 1)).clamp(0, height - 1)
    cols = (torch.arange(width, device=t.device).view(1, 1, width) + offset[:, 1].view(batch, 1, 1)).clamp(0, width - 1)
    index = (rows * width + cols).view(batch, 1, height * width).expand(batch, channels, height * width)
    return t.reshape(batch, channels, height * width).gather(2, index).view(batch, channels, height, width)


class ShiftLayout(Layout):
    """SMMix's layout: the sample in place, the partner's window moved by ``offset`` ``(B, 2)`` pixels
    ``(rows, cols)``: the mixed pixel ``(i, j)`` of the window shows the partner's ``(i + dy, j + dx)``."""

    def __init__(self, offset: Tensor) -> None:
        self.offset = offset

    def partner(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        folded = t.flatten(1, t.ndim - 3)  # (B, K, H, W)
        return _shift(folded, self.offset.to(t.device)).view(t.shape)

    def move_partner(self, points: Tensor) -> Tensor:
        """Points ``(B, N, 2)`` as ``(x, y)`` of the partner, where its content lands."""
        offset = self.offset.to(points.device).to(points.dtype)
        return points - offset.flip(1).unsqueeze(1)


@register("smmix")
class SMMix(ModelMixer):
    """Paste the partner's most attended window of patches over the sample's least attended one (needs a
    timm ``VisionTransformer``), with the official extra losses.

    ``lam`` is the kept share of the pixels (``1 - s^2 / N``); ``MixOutput.mask`` is 0 on the pasted
    window, whose content comes from elsewhere in the partner (``layout``). ``StepResult.aux`` holds the
    terms: ``mix`` (the mixed cross-entropy), ``fine`` and ``consistency``. See the module notes for the
    official step and where openmix departs.

    Args:
        num_classes: number of classes.
        min_side_ratio, max_side_ratio: the window side in tokens is uniform over
            ``int(g * min_side_ratio) ... int(g * max_side_ratio)``, ``g`` the patch grid's shorter side
            (official 0.25 and 0.75); ``max_side_ratio < 1``, so the sample keeps tokens of its own.
        fine_weight: weight of the region losses (the official ``loss_fine``; 0 turns it off).
        consistency_weight: weight of the KL to the mixed clean logits (the official ``loss_con``; 0: off).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (no ``alpha``: the window side sets
            the mix).

    Example:
        >>> import torch, openmix
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=8, depth=1, num_heads=2)
        >>> mixer = openmix.build("smmix", num_classes=10, seed=0)
        >>> step = mixer.step(vit, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> sorted(step.aux)
        ['consistency', 'fine', 'mix']
    """

    kind = "saliency"
    mixes = "windows of patch tokens chosen by the ViT's attention"
    spatial_dims = (2,)

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        min_side_ratio: float = 0.25,
        max_side_ratio: float = 0.75,
        fine_weight: float = 1.0,
        consistency_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if "alpha" in kwargs:
            raise TypeError("SMMix takes no alpha: the window side (min_side_ratio, max_side_ratio) sets the mix")
        super().__init__(1.0, num_classes, **kwargs)
        self.min_side_ratio = check_number("min_side_ratio", min_side_ratio, low=0.0, high=1.0, high_open=True)
        self.max_side_ratio = check_number("max_side_ratio", max_side_ratio, low=0.0, high=1.0, high_open=True)
        if self.min_side_ratio > self.max_side_ratio:
            raise ValueError(f"min_side_ratio must be <= max_side_ratio, got {min_side_ratio} > {max_side_ratio}")
        self.fine_weight = check_number("fine_weight", fine_weight, low=0.0)
        self.consistency_weight = check_number("consistency_weight", consistency_weight, low=0.0)
        self._patch: tuple[int, int, bool] | None = None  # the model's patch size and padding, read by check_model

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """The ViT unwrapped (``TypeError`` for anything but a timm ``VisionTransformer``); its patch size is
        kept for this step's draws."""
        parts = vit_parts(model, type(self).__name__, class_token=False)
        self._patch = (*parts.patch, bool(parts.model.patch_embed.dynamic_img_pad))
        return parts.model

    def grid(self, x: Tensor) -> tuple[int, int]:
        """The model's patch grid ``(rows, cols)`` for images shaped like ``x`` (known once a step has read the model)."""
        if self._patch is None:
            raise RuntimeError("SMMix draws its window on the model's patch grid: run mixer.step(model, x, y) (or "
                               "mixer.check_model(model)) before drawing")
        ph, pw, pad = self._patch
        height, width = x.shape[-2:]
        rows, cols = (-(-height // ph), -(-width // pw)) if pad else (height // ph, width // pw)
        if min(rows, cols) < 2:
            raise ValueError(f"SMMix pastes a window of patches inside a patch grid of at least 2x2; {height}x{width} "
                             f"images with {ph}x{pw} patches make {rows}x{cols}")
        return rows, cols

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """``index``, the window side in tokens ``side`` ``(B,)`` (0 for a sample the ``prob`` coin skips;
        one host draw in batch mode) and ``lam``, the kept share of the pixels."""
        batch, device = x.shape[0], x.device
        index = self.draw_index(x, draws)
        rows, cols = self.grid(x)
        low, high = window_sides((rows, cols), self.min_side_ratio, self.max_side_ratio)
        if self.mode == "batch":
            side = low + min(int(host_uniform(1, draws.host)[0] * (high - low + 1)), high - low)
            sides = torch.full((batch,), side, device=device, dtype=torch.long)
        else:
            u = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32)
            sides = (u * (high - low + 1)).long().clamp_(max=high - low).add_(low)
            if self.prob < 1.0:
                skip = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32) >= self.prob
                sides = sides.masked_fill_(skip, 0)
        ph, pw, _ = self._patch
        lam = 1.0 - sides.square().float() * (ph * pw / (x.shape[-2] * x.shape[-1]))
        return {"index": index, "side": sides, "lam": lam}

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """The clean eval-mode pass (attention, logits), the windows, the mixed forward and the three losses."""
        name = type(self).__name__
        parts = vit_parts(model, name, class_token=False)
        rows, cols = token_grid(parts, x)
        with torch.no_grad(), _modes(model, False), capture_attention(parts, "patch_mean") as seen:
            clean = model(x)  # eval mode; each submodule's own mode back after
        attention = last_attention(seen, (rows, cols), name).view(-1, rows, cols)
        index, side = params["index"], params["side"]
        batch = side.shape[0]
        # the sample's least attended window, and its partner's most attended one of the sample's side
        least, most = window_positions(torch.cat([attention, attention.index_select(0, index)]), side.repeat(2))
        params = {**params, "dst": least[:batch], "src": most[batch:], "patch": parts.patch}
        out = self.apply_params(x, soft, params)
        loss_of = self.loss_for(criterion)
        features = model.forward_features(out.x)
        logits = model.forward_head(features)
        loss = loss_of(logits, out.y)
        aux = {"mix": loss.detach()}
        if self.fine_weight > 0:
            fine = self._region_loss(model, features, soft, params, tuple(x.shape[-2:]), loss_of)
            loss = loss + self.fine_weight * fine
            aux["fine"] = fine.detach()
        if self.consistency_weight > 0:
            with no_autocast(x.device):
                lam = out.lam.view(-1, 1)
                mixed_clean = lam * clean.float() + (1.0 - lam) * clean.float().index_select(0, index)
                consistency = F.kl_div(F.log_softmax(logits.float(), 1), F.softmax(mixed_clean, 1), reduction="batchmean")
            loss = loss + self.consistency_weight * consistency
            aux["consistency"] = consistency.detach()
        return StepResult(loss, logits, out, aux)

    # ------------------------------------------------------------------ mixing
    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """``params`` needs ``index``, ``side`` ``(B,)``, the windows' top-left tokens ``dst`` (the sample's)
        and ``src`` (the partner's), ``(B, 2)``, and ``patch`` ``(ph, pw)``."""
        inside = self._window(params, x.shape[-2:])
        mask = (~inside).to(torch.float32).unsqueeze(1)
        mixed = blend(x, _shift(gather_partner(x, params["index"]), self._offset(params)), mask)
        return mixed, mask.flatten(1).mean(1), mask

    def binary_mask(self, params: Params) -> bool:
        """Every pixel shows one image."""
        return True

    def layout(self, params: Params, x: Tensor) -> Layout:
        """The partner's window moved from ``src`` to ``dst`` (:class:`ShiftLayout`)."""
        return ShiftLayout(self._offset(params))

    @staticmethod
    def _offset(params: Params) -> Tensor:
        (ph, pw), moved = params["patch"], params["src"] - params["dst"]
        return torch.stack([moved[:, 0] * ph, moved[:, 1] * pw], 1)  # pixels (rows, cols); no host-to-device copy

    @staticmethod
    def _window(params: Params, spatial: tuple[int, int]) -> Tensor:
        """Whether each pixel lies in the sample's pasted window, ``(B, H, W)`` bool."""
        (ph, pw), (height, width) = params["patch"], spatial
        dst, side = params["dst"], params["side"]
        batch = side.shape[0]
        rows = torch.arange(height, device=side.device).view(1, height, 1)
        cols = torch.arange(width, device=side.device).view(1, 1, width)
        top, left = (dst[:, 0] * ph).view(batch, 1, 1), (dst[:, 1] * pw).view(batch, 1, 1)
        extent_h, extent_w = (side * ph).view(batch, 1, 1), (side * pw).view(batch, 1, 1)
        return (rows >= top) & (rows < top + extent_h) & (cols >= left) & (cols < left + extent_w)

    def _region_loss(self, model: nn.Module, features: Tensor, soft: Tensor, params: Params,
                     image_size: tuple[int, int], loss_of: Criterion) -> Tensor:
        """The official ``loss_fine`` with the model's classifier as the token head: each region's mean patch
        token against its label, averaged over the two regions. A sample without a window (skipped by the
        ``prob`` coin) is one region, its own, in both terms."""
        from openmix.models.stages import token_map

        tokens = token_map(features, model, image_size)  # (B, D, rows, cols): the patch tokens after the final norm
        window = self._window({**params, "patch": (1, 1)}, tokens.shape[-2:]).unsqueeze(1).to(tokens.dtype)
        own = 1.0 - window

        def pooled(weight: Tensor) -> Tensor:
            return (tokens * weight).sum((2, 3)) / weight.sum((2, 3)).clamp(min=1.0)

        has_window = (params["side"] > 0).view(-1, 1)
        own_mean = pooled(own)
        pasted_mean = torch.where(has_window, pooled(window), own_mean)
        pasted_target = torch.where(has_window, soft.index_select(0, params["index"]), soft)

        def head(h: Tensor) -> Tensor:  # the model's classifier after its pooling
            return model.head(model.head_drop(model.fc_norm(h)))

        return 0.5 * (loss_of(head(own_mean), soft) + loss_of(head(pasted_mean), pasted_target))

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        del fields["alpha"]
        for name, default in (("min_side_ratio", 0.25), ("max_side_ratio", 0.75), ("fine_weight", 1.0),
                              ("consistency_weight", 1.0)):
            if getattr(self, name) != default:
                fields[name] = getattr(self, name)
        return fields
