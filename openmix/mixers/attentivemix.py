"""AttentiveMix (Walawalkar et al., ICASSP 2020; arXiv 2003.13048): each sample keeps the cells of the
feature map a network attends to most, over its partner.

One training step (:meth:`AttentiveMix.step`):

1. **Attention** of the clean batch (:meth:`AttentiveMix.attention`): the last feature map ``(B, C, h, w)``
   of the attention network (``attention_model``: a pretrained network you pass; ``None``: the model being
   trained) in eval mode and without gradients, on the batch resized to ``attention_size`` (bilinear;
   OpenMixup feeds its ImageNet ResNet-18 CIFAR images upsampled to 224), averaged over the channels: a
   grid of ``h x w`` cells (7 x 7 for a ResNet at 224 px, and for ``small_convnet`` at 28 px);
2. the top ``k`` cells of each sample (:func:`top_cells`): ``k = top_k``, the official 6; with
   ``use_alpha``, ``k = clamp(int(h w lam), 1, h w)`` with ``lam ~ Beta(alpha, alpha)`` (OpenMixup's
   "AttentiveMix+", the method of its benchmark tables), upsampled (nearest) to the image as the mask;
3. ``x_mix = mask * x + (1 - mask) * x[index]``: the sample's attended cells pasted over its partner;
   ``lam`` is the mask's mean (``k / (h w)`` where the grid divides the image) and the targets
   ``lam * y + (1 - lam) * y[index]``.

**What the code does.** ``xden2331/attentive_cutmix`` (which OpenMixup cites; whether it is the authors'
is unclear) works per sample in the data pipeline: a random dataset image is the background; an
ImageNet-pretrained torchvision ResNet-50 without its pooling and classifier runs on the image, not
normalised, and its attention is the **last channel** of the 7 x 7 map; its top 6 cells (32 px blocks)
are copied onto the background, labelled ``6/49`` for the image and ``43/49`` for the background.
OpenMixup mixes within the batch: a frozen ImageNet ResNet-18 on the images upsampled to 224, the channel
mean, ``mask * x + (1 - mask) * x[perm]``, ``lam`` the mask's mean; its config's ``top_k=None`` draws
``k`` from ``lam ~ Beta(alpha, alpha)`` (``alpha`` 2; its ``grid_size``/``beta`` keys are read by nothing).

**Where openmix departs.** Partners come from the batch (OpenMixup's way) with the common ``pairing``; the
attention is the channel mean (OpenMixup), not one channel; the attention network always runs in eval mode
(OpenMixup's runs its pretrained BatchNorm in train mode, so its statistics drift); the mask is made for the
whole batch at once, with no loop. The attention network sees the batch as the step gets it: normalise it
for a pretrained network inside the module you pass. Without an ``attention_model`` (the default, so that
nothing is downloaded) the attention is the trained model's, which neither reference does, at the batch's
own size: a CIFAR ResNet at 32 px gives a 4 x 4 grid, where ``top_k=6`` keeps 6/16 of the image instead of
6/49; the experiments reproduce OpenMixup's AttentiveMix+ with a pretrained network at 224 px.

**The attention network.** Pass a module (``timm.create_model("resnet18", pretrained=True, num_classes=0,
in_chans=1)``: timm folds the RGB filters for grey images), or a timm model name: ``attention_model=
"resnet18.tv_in1k"`` (torchvision's ImageNet ResNet-18, OpenMixup's) builds it with
``timm.create_model(name, pretrained=attention_pretrained, num_classes=0)`` before training
(:meth:`~AttentiveMix.configure_data`, which ``MixupClassifier`` calls) or at the first step. That downloads
the weights once (timm's Hugging Face cache) and fails on a machine without internet and without them
cached; loading a checkpoint that holds them builds the network without a download. A grey batch is
repeated to its 3 channels. This is how ``openmix-train`` runs OpenMixup's AttentiveMix+ rows (the
experiments set it); nothing else in openmix downloads. The mixer holds the network as a frozen submodule
(``requires_grad`` off; ``mixer.to(device)`` moves it, and ``state_dict()`` holds its weights).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_bool, check_int
from openmix.losses import Criterion
from openmix.mixer import DataInfo, Draws, Params, blend, gather_partner
from openmix.mixers.puzzlemix.saliency import _modes
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.targets import mix_targets

__all__ = ["AttentiveMix", "top_cells"]


@register("attentivemix")
class AttentiveMix(ModelMixer):
    """AttentiveMix: each sample keeps its most attended feature-map cells over its partner (needs a network).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`) or
    :class:`~openmix.lightning.MixupClassifier`. See the module notes for the step, the official code and
    where openmix departs from it.

    Args:
        alpha: with ``use_alpha``, ``lam ~ Beta(alpha, alpha)`` sets ``k`` (OpenMixup's tables: 2); else unused.
        num_classes: needed for class-id labels.
        top_k: the cells each sample keeps (the official 6 of 7 x 7), at most all of them.
        use_alpha: draw the share of cells kept, ``k = clamp(int(h w lam), 1, h w)``, per batch or per sample
            (OpenMixup's AttentiveMix+); ``top_k`` is then unused, and ``alpha=0`` disables mixing.
        attention_model: the network whose last feature map ``(B, C, h, w)`` is the attention: its
            ``forward_features`` (timm's models), or its ``forward`` when it has none; frozen, always run in eval
            mode without gradients. A string names a timm model (with its pretrained tag, e.g.
            ``"resnet18.tv_in1k"``), built with ``attention_pretrained`` (its weights downloaded once by timm).
            ``None``: the model being trained (in eval mode, without gradients; it needs ``forward_features``).
        attention_pretrained: load the pretrained weights of a named ``attention_model`` (default ``True``).
        attention_size: the side the batch is resized to (bilinear) for the attention network; ``None``: as
            it comes.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments; modes ``batch`` (one ``k``) and ``elem``
            (each sample its own ``k`` and ``prob`` coin).

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("attentivemix", num_classes=10, top_k=3, seed=0)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))  # a 4 x 4 grid at 16 px
        >>> step.mix.lam  # 3 of the 16 cells kept
        tensor([0.1875, 0.1875, 0.1875, 0.1875])
    """

    kind = "saliency"
    mixes = "the cells a network attends to most"
    spatial_dims = (2,)
    modes = ("batch", "elem")  # no pair mode: each sample keeps its own cells, so a pair shares no mask

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        top_k: int = 6,
        use_alpha: bool = False,
        attention_model: nn.Module | str | None = None,
        attention_size: int | None = None,
        attention_pretrained: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        self.top_k = check_int("top_k", top_k, 1)
        self.use_alpha = check_bool("use_alpha", use_alpha)
        self.attention_pretrained = check_bool("attention_pretrained", attention_pretrained)
        self.attention_name = attention_model if isinstance(attention_model, str) else None
        if self.attention_name is not None:  # built before training (configure_data) or at the first step
            attention_model = None
            self._register_load_state_dict_pre_hook(_build_before_loading, with_module=True)
        if attention_model is not None and not isinstance(attention_model, nn.Module):
            raise TypeError(f"attention_model must be an nn.Module (a network with forward_features), a timm model "
                            f"name or None (the model being trained), got {type(attention_model).__name__}")
        self.attention_model = None if attention_model is None else attention_model.requires_grad_(False).eval()
        self.attention_size = None if attention_size is None else check_int("attention_size", attention_size, 1)
        self._warned = False  # that top_k keeps every cell: once

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """``model`` unwrapped with ``forward_features`` when it is the attention network, else as it is."""
        return self.feature_model(model) if self.attention_model is None and self.attention_name is None else model

    def configure_data(self, data: DataInfo) -> None:
        """Build a named ``attention_model`` (timm; its weights downloaded once) before training."""
        self.build_attention_model()

    def build_attention_model(self, pretrained: bool | None = None) -> nn.Module | None:
        """The attention network, building a named one on first use (``pretrained``: default
        ``attention_pretrained``); ``None`` when it is the model being trained."""
        if self.attention_model is None and self.attention_name is not None:
            pretrained = self.attention_pretrained if pretrained is None else pretrained
            self.attention_model = _named_network(self.attention_name, pretrained).requires_grad_(False).eval()
        return self.attention_model

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """The attention of the clean batch, each sample's top cells over its partner, the loss of the mix."""
        index = params["index"]
        attention = self.attention(model, x)
        mask = top_cells(attention, self.cells_kept(params, attention[0].numel()))
        mask = F.interpolate(mask, size=x.shape[2:], mode="nearest")
        mixed = blend(x, gather_partner(x, index), mask)
        lam = mask.mean((1, 2, 3))
        target = mix_targets(soft, index, lam)
        logits = model(mixed)
        out = MixOutput(x=mixed, y=target, lam=lam, index=index, mask=mask, binary=True, mixer=type(self).__name__)
        return StepResult(self.loss_for(criterion)(logits, target), logits, out)

    def attention(self, model: nn.Module, x: Tensor) -> Tensor:
        """The attention ``(B, h, w)`` (float32) of the clean batch: the channel mean of the attention network's
        last feature map, in eval mode without gradients (each submodule's mode restored after).

        Raises:
            TypeError: the network's features are not a 4-D map ``(B, C, h, w)``.
        """
        network = self.build_attention_model()
        if network is None:
            network = model
        elif next(network.parameters(), x).device != x.device:  # built at this step: where the batch is
            network.to(x.device)
        size = self.attention_size
        inputs = x if size is None or tuple(x.shape[2:]) == (size, size) else F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False)
        if self.attention_name is not None and inputs.shape[1] == 1:  # a named timm network takes RGB
            inputs = inputs.expand(-1, 3, -1, -1)
        forward = getattr(network, "forward_features", None)
        with torch.no_grad(), _modes(network, False):
            features = (forward if callable(forward) else network)(inputs)
        if not isinstance(features, Tensor) or features.ndim != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise TypeError(f"{type(self).__name__} ranks the cells of a feature map (B, C, h, w), so its attention "
                            f"network must give a 4-D map (a CNN); {type(network).__name__}'s gives {shape}")
        return features.float().mean(1)

    def cells_kept(self, params: Params, cells: int) -> Tensor:
        """``k`` per sample ``(B,)`` float: ``top_k`` (at most ``cells``), or ``clamp(int(cells * lam), 1, cells)``
        with ``use_alpha``; all ``cells`` where the ``prob`` coin skips the sample (``lam`` 1)."""
        lam = params["lam"]
        if self.use_alpha:
            k = lam.mul(cells).floor_().clamp_(1, cells)
        else:
            if self.top_k >= cells and not self._warned:
                warnings.warn(f"{type(self).__name__}: top_k={self.top_k} keeps every one of the attention's {cells} "
                              "cells, so nothing is mixed; give a smaller top_k, a larger attention_size or use_alpha",
                              stacklevel=2)
                self._warned = True
            k = torch.full_like(lam, min(self.top_k, cells))
        return torch.where(lam >= 1.0, float(cells), k)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """``index`` and ``lam`` ``(B,)``: with ``use_alpha`` the drawn share of cells (the base draws); else 0,
        the fixed ``top_k`` (``alpha`` unused). Either way 1 where the ``prob`` coin skips the sample."""
        if self.use_alpha:
            return super().draw_params(x, draws)
        batch, device = x.shape[0], x.device
        lam = torch.zeros(batch, device=device, dtype=torch.float32)
        if self.mode == "elem" and self.prob < 1.0:
            skip = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32) >= self.prob
            lam = lam.masked_fill_(skip, 1.0)
        return {"lam": lam, "index": self.draw_index(x, draws)}

    def binary_mask(self, params: Params) -> bool:
        """Cells are pasted whole: every pixel shows one image."""
        return True

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        if self.use_alpha:
            fields["use_alpha"] = True
        else:
            del fields["alpha"]
            fields["top_k"] = self.top_k
        if self.attention_name is not None or self.attention_model is not None:
            fields["attention_model"] = self.attention_name or type(self.attention_model).__name__
        if self.attention_size is not None:
            fields["attention_size"] = self.attention_size
        return fields


def _build_before_loading(mixer: "AttentiveMix", state: dict[str, Any], prefix: str, *args: Any) -> None:
    """A state that holds a named attention network's weights: build it first (no download: they are here)."""
    if mixer.attention_model is None and any(key.startswith(prefix + "attention_model.") for key in state):
        mixer.build_attention_model(pretrained=False)


def _named_network(name: str, pretrained: bool) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, num_classes=0)``, with a clear error where the weights
    cannot be had (no internet and no cached copy)."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"attention_model {name!r} is not a timm model name (timm.list_models())") from error
        raise
    except OSError as error:  # no network and nothing in the cache
        raise RuntimeError(f"AttentiveMix could not load the pretrained weights of {name!r} ({error}); connect "
                           "once so that timm caches them, or pass the network as a module") from error


def top_cells(attention: Tensor, k: Tensor) -> Tensor:
    """The mask ``(B, 1, h, w)`` float32 of each sample's ``k[i]`` most attended cells (1 there, 0 elsewhere).

    Cells are ranked by ``attention`` ``(B, h, w)``, ties by position (a stable sort); ``k`` ``(B,)`` may
    differ per sample: one sort for the batch, no loop.

    Example:
        >>> top_cells(torch.tensor([[[0.1, 0.9], [0.5, 0.2]]]), torch.tensor([2]))
        tensor([[[[0., 1.],
                  [1., 0.]]]])
    """
    batch, height, width = attention.shape
    order = attention.reshape(batch, -1).argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(height * width, device=attention.device).expand(batch, -1)
    rank = torch.empty_like(order).scatter_(1, order, ranks)  # each cell's place in its sample's order
    return (rank < k.view(-1, 1)).to(torch.float32).view(batch, 1, height, width)
