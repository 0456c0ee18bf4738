"""TransMix (Chen et al., CVPR 2022; arXiv 2111.09833): CutMix on a ViT, its labels re-weighted by the
class token's attention over the pasted patches.

One training step (:meth:`TransMix.step`), as the official code (``Beckschen/TransMix``:
``transmix.py::Mixup_transmix``, its patched ``vision_transformer.py``) does it:

1. a CutMix box on the **pixels** (timm's ``cutmix_bbox_and_lam`` with ``correct_lam``: sides
   ``sqrt(1 - lam)`` of the image's, centre uniform, clipped at the border), pasted from the
   partner; the box is **not** snapped to the patch grid;
2. the **one** forward of the model on the mixed batch; the last block's softmax attention of the
   class-token query over the patch keys, averaged over the heads, detached, ``a`` ``(B, N)``;
3. the pixel mask resized (nearest) to the patch grid: a patch counts as pasted when its sampled
   pixel (its top-left one) lies in the box;
4. the partner's label weight is the mean of the pasted **area** and the pasted share of the
   attention, per sample: ``(area + sum_pasted a / sum a) / 2`` (the official ``lam = (lam0 + lam1) / 2``;
   its ``ratio`` argument is unused), and the loss is the soft cross-entropy with
   ``lam * y + (1 - lam) * y[index]``, ``lam`` the original's weight.

**The attention without a second pass.** timm's ViTs use fused attention, which returns no weights.
:func:`capture_attention` hooks the ``qkv`` projection of the last block while the model runs on
the mixed batch, and computes ``softmax(q_cls k^T / sqrt(d))`` from its output
(:func:`attention_statistic`, in float32, after the block's ``q_norm``/``k_norm``): the step is one
forward and one backward.

**Where openmix departs.** The official recipe switches per batch between this and plain mixup
(``switch_prob`` 0.5 for DeiT-S, whose YAML key is never read, 0.8 for DeiT-B), in batch mode with
timm's flip pairing on an even batch; openmix's mixer is the TransMix branch alone, with the common
modes (``batch``, ``elem``, ``pair``), pairings and the ``prob`` coin (a skipped batch is a plain
step). OpenMixup collapses the per-sample weights to their batch mean and, in its distributed branch,
swaps the two attention sums; openmix keeps the official per-sample weights.

:class:`~openmix.output.MixOutput`: ``mask`` is the CutMix pixel mask (binary: class maps and boxes
follow the pixels), ``lam`` the label weight above, which is **not** the mask's mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.losses import Criterion
from openmix.mixer import Params, no_autocast
from openmix.mixers.cutmix import CutMix
from openmix.model_mixer import ModelMixer
from openmix.output import StepResult
from openmix.registry import register
from openmix.targets import mix_targets

__all__ = ["TransMix", "ViTParts", "vit_parts", "token_grid", "capture_attention", "attention_statistic",
           "transmix_lam", "pasted_tokens"]

STATISTICS = ("cls", "patch_mean")


class ViTParts(NamedTuple):
    """What an attention mixer reads from a timm ``VisionTransformer`` (see :func:`vit_parts`)."""

    model: nn.Module
    """The model, unwrapped from DDP / ``torch.compile``."""
    attention: nn.Module
    """The last block's attention module (its ``qkv`` projection is hooked)."""
    prefix: int
    """Tokens before the patch tokens (the class token, distillation and register tokens)."""
    patch: tuple[int, int]
    """The patch size ``(height, width)`` in pixels."""


def vit_parts(model: nn.Module, mixer: str, *, class_token: bool = True) -> ViTParts:
    """The parts of a timm ``VisionTransformer`` that the attention mixers read.

    Args:
        model: the model, possibly wrapped in DDP or ``torch.compile``.
        mixer: the mixer's name, for the error.
        class_token: require a class token (TransMix reads its attention row).

    Raises:
        TypeError: ``model`` is not a timm ``VisionTransformer`` with a standard ``qkv`` attention in its
            last block (a CNN, a ViT without a class token where one is needed, ...).

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=8, depth=1, num_heads=2)
        >>> parts = vit_parts(vit, "TransMix")
        >>> parts.prefix, parts.patch
        (1, (4, 4))
    """
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import VisionTransformer

    from openmix.models.stages import unwrap_model

    inner = unwrap_model(model)
    need = "a timm VisionTransformer (patch tokens, a standard qkv attention in its last block)"
    if not isinstance(inner, VisionTransformer):
        raise TypeError(f"{mixer} reads the attention of a vision transformer's last block, so it needs {need}; "
                        f"got {type(inner).__name__}")
    attention = inner.blocks[-1].attn if len(inner.blocks) else None
    if type(attention) is not Attention:
        got = type(attention).__name__ if attention is not None else "no blocks"
        raise TypeError(f"{mixer} computes the last block's attention from its qkv projection, so it needs {need}; "
                        f"its last block has {got}")
    if class_token and not getattr(inner, "has_class_token", False):
        raise TypeError(f"{mixer} reads the class token's attention, so it needs a ViT with a class token "
                        f"(class_token=True); {type(inner).__name__} has none")
    patch = tuple(int(p) for p in inner.patch_embed.patch_size)
    return ViTParts(inner, attention, int(inner.num_prefix_tokens), (patch[0], patch[1]))


def token_grid(parts: ViTParts, x: Tensor) -> tuple[int, int]:
    """The patch grid ``(rows, columns)`` the model makes of images shaped like ``x`` ``(B, C, H, W)``."""
    rows, cols = parts.model.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
    return int(rows), int(cols)


def attention_statistic(qkv: Tensor, attention: nn.Module, prefix: int, statistic: str = "cls") -> Tensor:
    """The last block's softmax attention, from the output of its ``qkv`` projection, averaged over the heads.

    ``softmax(q k^T * scale)`` over all keys (the prefix tokens too), then the patch columns:
    ``"cls"``: the class token's query row (TransMix), ``(B, N)``; ``"patch_mean"``: the mean over the
    patch queries, the attention each patch *receives* (SMMix), ``(B, N)``. ``N`` counts the patch
    tokens. Computed in float32 with no gradient, after the module's ``q_norm``/``k_norm``.

    Args:
        qkv: ``(B, prefix + N, 3 * heads * head_dim)``, the ``qkv`` projection's output.
        attention: the timm ``Attention`` module it came from (``num_heads``, ``head_dim``, ``scale``,
            ``q_norm``, ``k_norm``).
        prefix: tokens before the patch tokens.
        statistic: ``"cls"`` or ``"patch_mean"``.

    Example:
        >>> from timm.layers.attention import Attention
        >>> module = Attention(8, num_heads=2)
        >>> attention_statistic(torch.randn(3, 5, 24), module, prefix=1).shape
        torch.Size([3, 4])
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    with torch.no_grad(), no_autocast(qkv.device):
        batch, tokens, _ = qkv.shape
        q, k, _ = qkv.detach().view(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attention.q_norm(q).float(), attention.k_norm(k).float()  # (B, heads, tokens, head_dim)
        queries = q[:, :, :1] if statistic == "cls" else q[:, :, prefix:]
        weights = (queries * attention.scale).matmul(k.transpose(-2, -1)).softmax(-1)[..., prefix:]
        return weights.mean((1, 2))


@contextlib.contextmanager
def capture_attention(parts: ViTParts, statistic: str = "cls") -> Iterator[list[Tensor]]:
    """Within the block, every forward of ``parts.model`` appends :func:`attention_statistic` of its last
    block to the yielded list, read from the ``qkv`` projection's output during that forward (no second
    pass; fused attention stays fused).

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=8, depth=1, num_heads=2)
        >>> with capture_attention(vit_parts(vit, "TransMix")) as seen:
        ...     logits = vit(torch.rand(2, 1, 16, 16))
        >>> seen[-1].shape  # 16 patches
        torch.Size([2, 16])
    """
    seen: list[Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        seen.append(attention_statistic(output, parts.attention, parts.prefix, statistic))

    handle = parts.attention.qkv.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def last_attention(seen: list[Tensor], grid: tuple[int, int], mixer: str) -> Tensor:
    """The attention of the latest forward ``(B, rows * cols)``, checked against the patch grid."""
    if not seen:
        raise RuntimeError(f"{mixer}: the model's forward did not run its last block's attention")
    attention = seen[-1]
    if attention.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{mixer} maps the patch tokens onto the {grid[0]}x{grid[1]} patch grid, but the last block "
                         f"saw {attention.shape[1]} patch tokens (patch dropout? turn it off)")
    return attention


def pasted_tokens(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Which patches count as pasted: ``1 - mask`` ``(B, 1, H, W)`` resized (nearest) to the patch grid,
    ``(B, rows * cols)`` float; the official ``nn.Upsample(size=grid)`` of the box mask.

    Example:
        >>> mask = torch.ones(1, 1, 8, 8); mask[..., :4, :3] = 0.0  # a 4x3 box pasted
        >>> pasted_tokens(mask, (2, 2)).tolist()  # a patch counts when its top-left pixel is in the box
        [[1.0, 0.0, 0.0, 0.0]]
    """
    return F.interpolate(1.0 - mask.float(), size=grid, mode="nearest").flatten(1)


def transmix_lam(area: Tensor, pasted: Tensor, attention: Tensor) -> Tensor:
    """The original's label weight ``(B,)``: the mean of its kept area and its kept share of the attention.

    Args:
        area: the kept fraction of the pixels ``(B,)``.
        pasted: the pasted patches ``(B, N)`` (1 pasted, 0 kept).
        attention: the class token's attention over the patches ``(B, N)``.

    Example:
        >>> transmix_lam(torch.tensor([0.75]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.5, 0.1, 0.1, 0.3]]))
        tensor([0.6250])
    """
    attention = attention.float()
    kept = 1.0 - (attention * pasted).sum(1) / attention.sum(1)
    return (area.float() + kept) * 0.5


@register("transmix")
class TransMix(ModelMixer, CutMix):
    """CutMix whose labels follow the class token's attention: needs a timm ``VisionTransformer``.

    The box is CutMix's (:class:`~openmix.mixers.cutmix.CutMix`, whose arguments it takes: ``minmax``,
    ``correct_lam``); the original's label weight is ``lam = (kept area + kept attention share) / 2``
    per sample (:func:`transmix_lam`), the attention taken during the step's one forward
    (:func:`capture_attention`). See the module notes for the official step and where openmix departs.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` for the box (the official CutMix alpha: 1.0).
        num_classes: number of classes.
        **kwargs: CutMix's ``minmax`` and ``correct_lam``, and the common
            :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=8, depth=1, num_heads=2)
        >>> mixer = openmix.build("transmix", num_classes=10, seed=0)
        >>> step = mixer.step(vit, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.mix.mask.shape, bool(torch.allclose(step.mix.y.sum(1), torch.ones(4)))
        (torch.Size([4, 1, 16, 16]), True)
    """

    kind = "saliency"
    mixes = "a CutMix box whose labels follow the ViT's class-token attention"
    spatial_dims = (2,)

    def check_model(self, model: nn.Module) -> nn.Module:
        """The ViT unwrapped; ``TypeError`` for anything but a timm ``VisionTransformer`` with a class token."""
        return vit_parts(model, type(self).__name__).model

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Paste the boxes, run the model once while hooking its last attention, re-weight the labels."""
        parts = vit_parts(model, type(self).__name__)
        out = self.apply_params(x, None, params)  # the pasted batch; its targets follow the attention below
        with capture_attention(parts, "cls") as seen:
            logits = model(out.x)
        grid = token_grid(parts, x)
        attention = last_attention(seen, grid, type(self).__name__)
        area = out.mask.flatten(1).float().mean(1)  # the box's kept area (CutMix's lam is the draw without correct_lam)
        lam = transmix_lam(area, pasted_tokens(out.mask, grid), attention)
        target = mix_targets(soft, out.index, lam)
        out = dataclasses.replace(out, y=target, lam=lam)
        return StepResult(self.loss_for(criterion)(logits, target), logits, out)
