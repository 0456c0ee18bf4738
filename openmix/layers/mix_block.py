"""The Mix Block: a small attention network that turns encoder features into mixing masks.

AutoMix (arXiv 2103.13027), SAMix (arXiv 2111.15454) and AdAutoMix (arXiv 2312.11954) all
generate their masks with this block, in different configurations (OpenMixup's
``PixelMixBlock`` and ``AdaptiveMask``, checked against them):

================  ============  ========================  ============
setting           AutoMix       SAMix                     AdAutoMix
================  ============  ========================  ============
``attention``     ``"pair"``    ``"pair"``                ``"co"``
``qk``            ``"shared"``  ``"concat"``              ``"separate"``
``value_hidden``  0 (1x1 conv)  C/2 (conv-BN-ELU-conv)    0
``lam_scaling``   ``None``      0.25 (-1 on ImageNet)     ``None``
``upsample``      nearest       bilinear                  bilinear
sources           2             2                         3
================  ============  ========================  ============

**Pair attention** (two sources: the sample and its partner). With ``a``, ``b`` the
(lambda-encoded) features of the sample and of its partner, the partner's mask logits are
``softmax(q kᵀ / √d) v``: ``q`` from ``a`` and ``k`` from ``b`` through one shared 1x1 conv
(``"shared"``), two convs (``"separate"``), or two convs both on ``cat(a, b)`` (``"concat"``);
``v`` is the value net on ``b``. The logits are upsampled to the image, and a sigmoid after
upsampling gives the partner's mask ``m``; the sample keeps ``1 - m``.

**Co attention** (``K >= 2`` sources, AdAutoMix): source ``i`` gets the logits
``softmax(q_i (Σ_{j≠i} k_j)ᵀ / √d) v_i``, upsampled, and a softmax across the ``K`` sources
gives masks that sum to 1 at every pixel. ``Σ_{j≠i} k_j`` is the total minus ``k_i``, so the
block costs one attention product per source.

Attention, upsampling and the mask normalisation run in float32 (under autocast too), as
the official code forces.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.mixer import no_autocast

__all__ = ["MixBlock", "rescale_lam"]

ATTENTIONS = ("pair", "co")
QK_MODES = ("shared", "separate", "concat")
UPSAMPLE_MODES = ("nearest", "bilinear")


def rescale_lam(lam: float | Tensor, k: float) -> float | Tensor:
    """SAMix's adaptive lambda: ``(4/3 λ³ - 2 λ² + k' λ) / (k' - 2/3)`` with ``k' = k + 1``.

    A monotone cubic through ``(0, 0)``, ``(0.5, 0.5)`` and ``(1, 1)`` whose slope at the ends
    grows with ``k`` (OpenMixup ``PixelMixBlock.rescale_lam_mult``).

    Example:
        >>> rescale_lam(torch.tensor([0.0, 0.5, 1.0]), 0.25)
        tensor([0.0000, 0.5000, 1.0000])
    """
    k1 = k + 1.0
    return (4.0 / 3.0 * lam**3 - 2.0 * lam**2 + k1 * lam) / (k1 - 2.0 / 3.0)


class MixBlock(nn.Module):
    """Mask generator on encoder features; see the module notes for the configurations.

    Args:
        in_channels: channels of the feature map it reads.
        sources: images mixed per sample (2 for pair attention).
        attention: ``"pair"`` (AutoMix, SAMix) or ``"co"`` (AdAutoMix).
        qk: how queries and keys are made (pair attention): ``"shared"``, ``"separate"`` or
            ``"concat"``; co attention uses separate convs.
        reduction: query/key channels are ``in_channels // reduction``.
        value_hidden: ``0``: the value net is one 1x1 conv; ``> 0``: conv(→hidden)-BN-ELU-conv(→1),
            1x1 and without biases (SAMix's ``ConvNeck``); ``None``: that net with ``in_channels // 2``
            hidden channels (SAMix: 128 on a ResNet-18's 256, 512 on a ResNet-50's 1024).
        value_dropout: dropout on the value net's output (OpenMixup's ImageNet SAMix: 0.1).
        lam_scaling: pair attention: scale the features by ``1 + λ'`` and the partner's by
            ``1 + (1 - λ')``, ``λ' = rescale_lam(λ, lam_scaling)`` (SAMix on CIFAR: 0.25); ``-1``:
            ``λ' = λ`` (OpenMixup's ``lam_mul_k=-1``: SAMix on Tiny-ImageNet and ImageNet); ``None``: off.
        lam_channel: append a constant channel ``λ`` to each source's features (pair: ``λ`` and
            ``1 - λ``; OpenMixup's ImageNet AutoMix); off on CIFAR.
        upsample: ``"nearest"`` or ``"bilinear"`` upsampling of the logits to the image.
        init_std: convolution weights start from ``N(0, init_std²)``, biases 0 (official: 0.01).

    Shapes: ``features`` ``(B, C, h, w)``; ``indices`` ``(K, B)`` (row 0 is ``arange(B)``,
    the samples themselves); ``lam``: the ``K`` shares as host floats (read only by
    ``lam_scaling`` and ``lam_channel``; floats keep the step free of host-device copies); returns masks ``(B, K, H, W)`` that sum to 1
    over ``K``: mask ``k`` weighs ``x[indices[k]]``.

    Example:
        >>> block = MixBlock(16)
        >>> features = torch.randn(4, 16, 2, 2)
        >>> indices = torch.stack([torch.arange(4), torch.tensor([1, 0, 3, 2])])
        >>> masks = block(features, indices, [0.7, 0.3], size=(8, 8))
        >>> masks.shape, bool(torch.allclose(masks.sum(1), torch.ones(4, 8, 8)))
        (torch.Size([4, 2, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        *,
        sources: int = 2,
        attention: str = "pair",
        qk: str = "shared",
        reduction: int = 2,
        value_hidden: int | None = 0,
        value_dropout: float = 0.0,
        lam_scaling: float | None = None,
        lam_channel: bool = False,
        upsample: str = "nearest",
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.sources = check_int("sources", sources, 2)
        reduction = check_int("reduction", reduction, 1)
        value_hidden = max(in_channels // 2, 1) if value_hidden is None else check_int("value_hidden", value_hidden, 0)
        check_number("value_dropout", value_dropout, low=0.0, high=1.0, high_open=True)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if qk not in QK_MODES:
            raise ValueError(f"qk must be one of {QK_MODES}, got {qk!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if attention == "pair" and sources != 2:
            raise ValueError(f"pair attention mixes 2 sources, got sources={sources}; use attention='co'")
        if lam_scaling is not None:
            if check_number("lam_scaling", lam_scaling, low=-1.0) < 0 and lam_scaling != -1:
                raise ValueError(f"lam_scaling must be >= 0, -1 (lambda itself) or None, got {lam_scaling}")
            if attention != "pair":
                raise ValueError("lam_scaling is defined for pair attention (SAMix)")
        self.attention = attention
        self.qk = qk if attention == "pair" else "separate"
        self.lam_scaling = lam_scaling
        self.lam_channel = bool(lam_channel)
        self.upsample = upsample
        self.inter_channels = max(in_channels // reduction, 1)
        feat = in_channels + int(self.lam_channel)
        qk_in = 2 * feat if self.qk == "concat" else feat
        self.query = nn.Conv2d(qk_in, self.inter_channels, 1)
        self.key = None if self.qk == "shared" else nn.Conv2d(qk_in, self.inter_channels, 1)
        if value_hidden:
            self.value = nn.Sequential(
                nn.Conv2d(feat, value_hidden, 1, bias=False),
                nn.BatchNorm2d(value_hidden),
                nn.ELU(),
                nn.Conv2d(value_hidden, 1, 1, bias=False),
            )
        else:
            self.value = nn.Conv2d(feat, 1, 1)
        if value_dropout:
            self.value = nn.Sequential(*(self.value if value_hidden else [self.value]), nn.Dropout(value_dropout))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Tensor, indices: Tensor, lam: Sequence[float], size: Sequence[int]) -> Tensor:
        """Masks ``(B, K, *size)`` for mixing ``x[indices[k]]`` (see the class notes)."""
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"the Mix Block reads (B, {self.in_channels}, h, w) features, got shape {tuple(features.shape)}"
            )
        if indices.shape != (self.sources, features.shape[0]):
            raise ValueError(f"indices must be ({self.sources}, B={features.shape[0]}), got {tuple(indices.shape)}")
        lam = [float(share) for share in lam]
        if len(lam) != self.sources:
            raise ValueError(f"lam must hold {self.sources} shares, got {len(lam)}")
        with no_autocast(features.device):
            # the convolutions in the block's own dtype (bf16/fp16 weights under Lightning's "-true"
            # precisions), attention and masks in float32
            sources = features.to(self.query.weight.dtype)[indices]  # (K, B, C, h, w)
            if self.lam_channel:
                shares = lam if self.attention == "co" else [lam[0], 1.0 - lam[0]]
                _, batch, _, height, width = sources.shape
                planes = torch.stack([sources.new_full((batch, 1, height, width), share) for share in shares])
                sources = torch.cat([sources, planes], dim=2)
            logits = self._pair_logits(sources, lam) if self.attention == "pair" else self._co_logits(sources)
            logits = F.interpolate(logits, size=tuple(size), mode=self.upsample)
            if self.attention == "pair":
                partner = torch.sigmoid(logits)
                return torch.cat([1.0 - partner, partner], dim=1)
            return logits.softmax(dim=1)

    def _pair_logits(self, sources: Tensor, lam: list[float]) -> Tensor:
        """The partner's logits ``(B, 1, h, w)`` from the two sources ``(2, B, C, h, w)``."""
        own, partner = sources[0], sources[1]
        if self.lam_scaling is not None:
            scaled = lam[0] if self.lam_scaling == -1 else rescale_lam(lam[0], self.lam_scaling)
            own, partner = own * (1.0 + scaled), partner * (2.0 - scaled)
        batch, _, height, width = own.shape
        value = self.value(partner).flatten(2).transpose(1, 2)  # (B, hw, 1)
        if self.qk == "concat":
            both = torch.cat([own, partner], dim=1)
            q, k = self.query(both), self.key(both)
        else:
            q, k = self.query(own), (self.query if self.key is None else self.key)(partner)
        attention = self._attend(q.flatten(2).transpose(1, 2), k.flatten(2))
        return (attention @ value.float()).view(batch, 1, height, width)

    def _co_logits(self, sources: Tensor) -> Tensor:
        """Each source's logits ``(B, K, h, w)`` from ``(K, B, C, h, w)``: attention to the others' keys."""
        count, batch, _, height, width = sources.shape
        flat = sources.flatten(0, 1)  # (K*B, C, h, w)
        q = self.query(flat).flatten(2).transpose(1, 2)  # (K*B, hw, d)
        k = self.key(flat).flatten(2).view(count, batch, self.inter_channels, -1)  # (K, B, d, hw)
        others = (k.sum(0, keepdim=True) - k).flatten(0, 1)  # Σ_{j≠i} k_j
        value = self.value(flat).flatten(2).transpose(1, 2)  # (K*B, hw, 1)
        logits = self._attend(q, others) @ value.float()  # (K*B, hw, 1)
        return logits.view(count, batch, height, width).transpose(0, 1)

    def _attend(self, q: Tensor, k: Tensor) -> Tensor:
        """``softmax(q k / √d)`` for ``q`` ``(N, hw, d)`` and ``k`` ``(N, d, hw)``."""
        return torch.softmax((q.float() @ k.float()) / self.inter_channels**0.5, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, sources={self.sources}, attention={self.attention!r}, qk={self.qk!r}, "
            f"lam_scaling={self.lam_scaling}, lam_channel={self.lam_channel}, upsample={self.upsample!r}"
        )
