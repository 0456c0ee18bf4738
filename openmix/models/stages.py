"""Model introspection for the model-aware mixers: a backbone's body as an ordered list of stages.

:func:`split_stages` cuts a model into ``[stem, stage1, ..., stageN]``; :func:`feature_stages`
and :func:`check_head` are what a mixer calls, with errors that say what it needs from the model;
:func:`unwrap_model` finds the model inside a DDP or ``torch.compile`` wrapper.

**Transformers.** A stage's output is the model's own hidden state: ``(B, C, h, w)`` for a CNN,
tokens ``(B, P + h w, C)`` for a timm ViT (``P`` prefix tokens: class, distillation, register
tokens), ``(B, h, w, C)`` (NHWC) for a timm Swin. A mixer that mixes states as they are (Manifold
Mixup) needs nothing more; one that needs positions on a grid reads :func:`token_map`, a
``(B, C, h, w)`` view of any of them, and :func:`tokens_from_map` turns such a map back.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor
from timm.models.byobnet import ByobNet
from timm.models.convnext import ConvNeXt
from timm.models.cspnet import CspNet
from timm.models.nfnet import NormFreeNet
from timm.models.regnet import RegNet
from timm.models.resnet import ResNet
from timm.models.resnetv2 import ResNetV2
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer

from openmix.models.preact_resnet import PreActResNet
from openmix.models.resnet import resnet_stages
from openmix.models.small import SmallConvNet

__all__ = ["split_stages", "feature_stages", "check_head", "unwrap_model", "token_map", "tokens_from_map",
           "prefix_tokens", "ViTStem", "VIT_STAGES"]

# timm families whose forward_features is stem -> stages -> tail: (class, tail attributes).
_STEM_STAGES_TAIL: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (ResNetV2, ("norm",)),
    (ConvNeXt, ("norm_pre",)),
    (CspNet, ()),
    (ByobNet, ("final_conv",)),
    (NormFreeNet, ("final_conv", "final_act")),
)
_SWIN = (SwinTransformer, SwinTransformerV2)  # patch_embed -> layers -> norm, NHWC maps throughout
VIT_STAGES = 4
"""Stages of a timm ViT's blocks (fewer when it has fewer blocks): four, as a ResNet's."""
_SUPPORTED = ("openmix models (CIFAR-stem ResNets, small_convnet) and timm's ResNet/ResNeXt, ResNetV2, ConvNeXt, "
              "RegNet, CspNet, ByobNet, NormFreeNet, VisionTransformer (ViT, DeiT), SwinTransformer (V1, V2)")


def split_stages(model: nn.Module) -> list[nn.Module]:
    """The body of ``model`` as ``[stem, stage1, ..., stageN]``.

    Applying the modules in order to ``x`` gives ``model.forward_features(x)``, so
    ``model.forward_head(h)`` of the result equals ``model(x)``; a feature mixer can run the
    first ``k`` stages, mix the hidden ``h``, and run the rest. The modules share the model's
    parameters. A final norm/conv that timm runs after the last stage (ConvNeXt's
    ``norm_pre``, ResNetV2's ``norm``, a ViT's or Swin's ``norm``, ...) is folded into the last
    stage; timm ResNets get a stem ``nn.Sequential(conv1, bn1, act1, maxpool)``.

    **Transformers.** A timm ``VisionTransformer`` (ViT, DeiT, the distilled DeiT) has the stem
    :class:`ViTStem` (patch embedding, prefix tokens and position embedding, patch dropout,
    ``norm_pre``, as its ``forward_features`` runs them) and its blocks in :data:`VIT_STAGES` = 4
    consecutive groups of as equal sizes as can be (the later groups take the extra blocks; a ViT
    of fewer blocks has one stage per block): 12 blocks are 4 stages of 3, so stage ``k`` ends
    ``k / 4`` of the way through the body, as a ResNet-18's stage ``k`` of 4 does. The
    settings written for CNNs then keep their meaning by depth: AutoMix's ``feature_stage=3``
    reads the tokens after 9 of 12 blocks, as it reads a ResNet's layer3, Manifold Mixup's
    default layers ``(0, 1, 2)`` are the input and the tokens after 3 and 6 blocks, and
    OpenMixup's DeiT-S AutoMix (block 6 of 12) is ``feature_stage=2``. (A ViT keeps its
    resolution, so the analogy is one of depth only.) A ``SwinTransformer`` (V1 or
    V2) is ``[patch_embed, *layers]``: its four resolution stages, each starting with its patch
    merging, as timm builds them. Their outputs are tokens and NHWC maps; :func:`token_map` makes
    ``(B, C, h, w)`` maps of them.

    Args:
        model: an openmix CIFAR model or a timm model of a supported family.

    Returns:
        Stem and stages: 5 modules for ResNets, ViTs of 4 or more blocks and Swins, 4 for WRN-28-8,
        1 + number of stages otherwise.

    Raises:
        TypeError: for a model family whose layout is not known here, or a ViT without blocks.

    Example:
        >>> import torch
        >>> from openmix.models import create_model
        >>> model = create_model("convnext_atto", num_classes=10).eval()  # a timm model
        >>> x = torch.rand(2, 3, 64, 64)
        >>> h = x
        >>> for stage in split_stages(model):
        ...     h = stage(h)
        >>> torch.allclose(model.forward_head(h), model(x))
        True
    """
    if isinstance(model, (PreActResNet, SmallConvNet)):
        return list(model.stages)
    if isinstance(model, ResNet):
        return resnet_stages(model)
    stem = getattr(model, "stem", None)
    if isinstance(model, VisionTransformer):
        stem, stages, tail = ViTStem(model), _block_groups(model), [model.norm]
    elif isinstance(model, _SWIN):
        stem, stages, tail = model.patch_embed, list(model.layers), [model.norm]
    elif isinstance(model, RegNet):
        stages = [model.s1, model.s2, model.s3, model.s4]
        tail = [model.final_conv]
    else:
        for cls, tail_names in _STEM_STAGES_TAIL:
            if isinstance(model, cls):
                stages, tail = list(model.stages), [getattr(model, name) for name in tail_names]
                break
        else:
            raise TypeError(f"split_stages supports {_SUPPORTED}; got {type(model).__name__}")
    tail = [module for module in tail if not isinstance(module, nn.Identity)]
    if tail:
        stages[-1] = nn.Sequential(stages[-1], *tail)
    return [stem, *stages]


class ViTStem(nn.Module):
    """A timm ViT's embedding, as its ``forward_features`` runs it before the blocks.

    ``patch_embed``, then the model's own ``_pos_embed`` (the class, distillation and register
    tokens, and the position embedding, resampled to the patch grid when the model was built with
    ``dynamic_img_size``), ``patch_drop`` and ``norm_pre``: ``(B, C_in, H, W)`` in, tokens
    ``(B, P + h w, C)`` out. It holds the model's modules and its token and position parameters
    (shared, not copied).

    Example:
        >>> import torch
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=1)
        >>> ViTStem(vit)(torch.rand(2, 3, 16, 16)).shape  # the class token and 4 x 4 patches
        torch.Size([2, 17, 8])
    """

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.patch_embed, self.patch_drop, self.norm_pre = model.patch_embed, model.patch_drop, model.norm_pre
        for name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
            if isinstance(getattr(model, name, None), nn.Parameter):
                setattr(self, name, getattr(model, name))  # registered here too, so stem.parameters() has them
        self._embed_tokens = model._pos_embed  # a bound method: the model itself is not a submodule of its stem

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_pre(self.patch_drop(self._embed_tokens(self.patch_embed(x))))


def _block_groups(model: VisionTransformer) -> list[nn.Module]:
    """A ViT's blocks in :data:`VIT_STAGES` consecutive groups (fewer for fewer blocks), later groups larger."""
    blocks = list(model.blocks)
    if not blocks:
        raise TypeError(f"split_stages needs a {type(model).__name__} with at least one block; it has none")
    groups = min(VIT_STAGES, len(blocks))
    size, extra = divmod(len(blocks), groups)
    sizes = [size] * (groups - extra) + [size + 1] * extra
    ends = [sum(sizes[:k]) for k in range(groups + 1)]
    return [nn.Sequential(*blocks[a:b]) for a, b in zip(ends, ends[1:])]


def token_map(h: Tensor, model: nn.Module, image_size: tuple[int, int] | None = None) -> Tensor:
    """A stage's output of ``model`` (:func:`split_stages`) as a ``(B, C, h, w)`` feature map.

    * ViT (timm ``VisionTransformer``): tokens ``(B, P + h w, C)``; the ``P`` prefix tokens
      (``model.num_prefix_tokens``: class, distillation, register tokens) are dropped and the patch
      tokens laid out on their grid, row by row as the patch embedding made them. The grid is
      that of ``image_size`` (the input's ``(H, W)``; needed for a non-square input to a
      ``dynamic_img_size`` model), else the model's own ``patch_embed.grid_size``, else the
      square that holds the tokens.
    * Swin (V1, V2): NHWC ``(B, h, w, C)``, permuted.
    * Any other model: a ``(B, C, h, w)`` map is returned as it is.

    The map is a copy (ViT), a permuted view (Swin) or ``h`` itself; gradients flow through it.

    Raises:
        ValueError: ``h`` has another shape than the model's stages give (e.g. a ViT whose
            patch dropout removed tokens), or the patch grid cannot be told.

    Example:
        >>> import torch
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=1)
        >>> tokens = torch.rand(2, 17, 8)                    # the class token + 4 x 4 patches
        >>> fmap = token_map(tokens, vit)
        >>> fmap.shape, torch.equal(fmap[:, :, 0, 1], tokens[:, 2])  # position (0, 1) is patch 1
        (torch.Size([2, 8, 4, 4]), True)
    """
    model = unwrap_model(model)
    if isinstance(model, VisionTransformer):
        if h.ndim != 3:
            raise ValueError(f"a {type(model).__name__} stage gives tokens (B, N, C), got shape {tuple(h.shape)}")
        patches = h[:, model.num_prefix_tokens :]
        rows, cols = _patch_grid(model, patches.shape[1], image_size)
        return patches.transpose(1, 2).reshape(h.shape[0], h.shape[2], rows, cols)
    if h.ndim != 4:
        raise ValueError(f"a (B, C, H, W) feature map has 4 dimensions; {type(model).__name__} gave {tuple(h.shape)}")
    if isinstance(model, _SWIN):
        return h.permute(0, 3, 1, 2)
    return h


def prefix_tokens(h: Tensor, model: nn.Module) -> Tensor | None:
    """A ViT stage's prefix tokens ``(B, P, C)`` (class, distillation, register tokens; ``P`` may be 0), the
    tokens :func:`token_map` drops; ``None`` for a model without prefix tokens in its layout (CNN, Swin).

    Example:
        >>> import torch
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=1)
        >>> prefix_tokens(torch.rand(2, 17, 8), vit).shape
        torch.Size([2, 1, 8])
    """
    model = unwrap_model(model)
    return h[:, : model.num_prefix_tokens] if isinstance(model, VisionTransformer) else None


def tokens_from_map(fmap: Tensor, model: nn.Module, prefix: Tensor | None = None) -> Tensor:
    """The inverse of :func:`token_map`: a ``(B, C, h, w)`` map in ``model``'s own layout.

    ViT: tokens ``(B, P + h w, C)``, with ``prefix`` ``(B, P, C)`` (its prefix tokens,
    :func:`prefix_tokens`; required when the model has any) in front; Swin: NHWC; any other model:
    ``fmap`` itself.

    Example:
        >>> import torch
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=1)
        >>> tokens = torch.rand(2, 17, 8)
        >>> torch.equal(tokens_from_map(token_map(tokens, vit), vit, prefix=tokens[:, :1]), tokens)
        True
    """
    model = unwrap_model(model)
    if isinstance(model, VisionTransformer):
        tokens = fmap.flatten(2).transpose(1, 2)
        wanted = model.num_prefix_tokens
        if wanted == 0:
            return tokens
        if prefix is None or prefix.shape != (fmap.shape[0], wanted, fmap.shape[1]):
            shape = None if prefix is None else tuple(prefix.shape)
            raise ValueError(f"{type(model).__name__} has {wanted} prefix tokens: pass prefix of shape "
                             f"{(fmap.shape[0], wanted, fmap.shape[1])}, got {shape}")
        return torch.cat([prefix, tokens], dim=1)
    if isinstance(model, _SWIN):
        return fmap.permute(0, 2, 3, 1)
    return fmap


def _patch_grid(model: VisionTransformer, tokens: int, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """``(rows, cols)`` of a ViT's ``tokens`` patch tokens (see :func:`token_map`)."""
    embed = model.patch_embed
    if image_size is not None:
        grid = tuple(embed.dynamic_feat_size(tuple(image_size)))
    elif embed.grid_size is not None and math.prod(embed.grid_size) == tokens:
        grid = tuple(embed.grid_size)
    else:
        side = math.isqrt(tokens)
        grid = (side, side)
    if math.prod(grid) != tokens:
        raise ValueError(f"{tokens} patch tokens do not fill the patch grid {grid} of {type(model).__name__}"
                         + ("" if image_size is not None else "; pass image_size=(H, W) of the input"))
    return grid


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, any number deep; ``model`` itself when unwrapped. They share parameters.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(inner)) is inner
        True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def check_head(model: nn.Module, mixer: str, what: str = "hidden features") -> nn.Module:
    """``model`` unwrapped (:func:`unwrap_model`), if it has ``forward_features`` and ``forward_head``.

    Raises:
        TypeError: naming the mixer, what it mixes, and the missing methods.
    """
    inner = unwrap_model(model)
    missing = [name for name in ("forward_features", "forward_head") if not callable(getattr(inner, name, None))]
    if missing:
        raise TypeError(
            f"{mixer} mixes {what}, so it needs a model with forward_features and forward_head (openmix's models "
            f"and timm's have both); got {type(inner).__name__}, which has no {' / '.join(missing)}"
        )
    return inner


def feature_stages(model: nn.Module, mixer: str = "a feature mixer") -> list[nn.Module]:
    """:func:`split_stages` of ``model`` unwrapped, with an error that says what a feature mixer needs.

    Raises:
        TypeError: ``model`` lacks ``forward_features``/``forward_head``, or :func:`split_stages`
            does not know its layout.

    Example:
        >>> feature_stages(nn.Linear(2, 2), "ManifoldMix")
        Traceback (most recent call last):
        ...
        TypeError: ManifoldMix mixes hidden features, so it needs a model with forward_features and forward_head (openmix's models and timm's have both); got Linear, which has no forward_features / forward_head
    """
    inner = check_head(model, mixer)
    try:
        return split_stages(inner)
    except TypeError as err:
        raise TypeError(f"{mixer} mixes hidden features, so it runs the model stage by stage and needs a layout "
                        f"split_stages knows; got {type(inner).__name__}: {err}") from None
