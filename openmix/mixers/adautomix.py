"""AdAutoMix (Qin et al., ICLR 2024; arXiv 2312.11954): an adversarial mask generator mixing three images.

The AutoMix step (:class:`~openmix.mixers.automix.AutoMix`: EMA teacher, Mix Block on the
teacher's stage-3 features, detached masks for the model's batch) with AdAutoMix's changes,
as in the official code (checked against it):

- **three images per mixed sample**, with shares ``λ_i ~ Beta(1, 1)`` normalised to sum 1
  (the same shares for the generator's and the model's batch, each with its own partners),
  targets ``Σ λ_i y_i``;
- **co-attention Mix Block** (:class:`~openmix.layers.MixBlock` with
  ``attention="co"``): separate q/k, bilinear upsampling, a softmax across the three masks;
  no mask loss;
- **the generator is adversarial every other step** (steps 0, 2, 4, ...):
  ``-0.3 · CE(teacher(mixed), targets) + 0.7 · S`` with
  ``S = mean_b Σ_i λ_i cos(teacher logits of the mixed sample, teacher logits of image i)``;
  on the other steps it minimises ``+CE`` like AutoMix. The sign of ``S`` is as coded;
- **the model's loss** adds ``0.5 · CE(clean) + 0.5 · CE(linear 3-way mixup with the same
  shares and partners)`` to the mixup loss on the generated batch;
- **fallback** to constant masks (the linear 3-way mixup) when the sample's own share
  ``λ_0 <= 0.03`` or ``>= 0.97``.

The official code mixes ``x[p_0]``, ``x[p_1]``, ``x[p_2]`` for three random permutations;
openmix takes ``p_0`` as the identity, which gives the same batch up to its order. The
teacher's logits of each source come from one teacher pass on the clean batch (gathered by
the partner indices), the same values as the official pass per source (batch statistics
do not depend on the order). OpenMixup's port of the fallback test reads
``lam_margin < 1 - λ_0``, which falls back on almost every step; openmix follows the
official repository (``>``).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.mixer import Draws, Params
from openmix.losses import Criterion
from openmix.mixers.automix import AutoMix, constant_masks, mix_source_targets, mix_sources
from openmix.registry import register

__all__ = ["AdAutoMix"]


@register("adautomix")
class AdAutoMix(AutoMix):
    """AdAutoMix: AutoMix with three images per sample and an adversarial generator (needs the model).

    Args:
        alpha: each share is ``Beta(alpha, alpha)`` before normalising (published: 1.0).
        mixed_samples: images per mixed sample (3).
        adv_weight: ``β`` of the adversarial generator loss ``-β CE + (1 - β) S`` (0.3).
        adv_every: the generator is adversarial on steps ``0, adv_every, 2 adv_every, ...`` (2).
        linear_weight: the model's extra loss is ``(1 - w) CE(clean) + w CE(linear mixup)`` (0.5).
        lam_margin: fallback to constant masks when ``λ_0 <= lam_margin`` or ``>= 1 - lam_margin`` (0.03).
        **kwargs: as :class:`~openmix.mixers.automix.AutoMix` (teacher momentum, ``feature_stage``,
            ``in_channels``, ``lr``, the Mix Block's ``upsample``/``reduction``/``lam_channel``, ...).

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("adautomix", num_classes=10, seed=0).attach(model)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.mix.sources[0].shape, sorted(step.aux)
        (torch.Size([4, 3]), ['block_cosine', 'block_mix', 'online_clean', 'online_linear', 'online_mix'])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        mixed_samples: int = 3,
        attention: str = "co",
        upsample: str = "bilinear",
        adv_weight: float = 0.3,
        adv_every: int = 2,
        linear_weight: float = 0.5,
        lam_margin: float = 0.03,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            alpha,
            num_classes,
            mixed_samples=mixed_samples,
            attention=attention,
            upsample=upsample,
            lam_margin=lam_margin,
            mask_loss=0.0,  # AdAutoMix has no mask loss
            **kwargs,
        )
        self.adv_weight = check_number("adv_weight", adv_weight, low=0.0, high=1.0)
        self.adv_every = check_int("adv_every", adv_every, 1)
        self.linear_weight = check_number("linear_weight", linear_weight, low=0.0, high=1.0)

    def _draw_batches(self, x: Tensor, draws: Draws) -> tuple[Tensor, list[float], Tensor, list[float]]:
        """As AutoMix, but one set of shares for both batches (each with its own partners)."""
        online_index, shares = self._draw_sources(x, draws)
        return self._draw_partners(x, draws), shares, online_index, shares

    def adversarial(self, step: int) -> bool:
        """Whether the generator is adversarial at (0-based) training step ``step``."""
        return step % self.adv_every == 0

    def _needs_teacher_logits(self) -> bool:
        """The adversarial steps' cosine compares with the teacher's logits of the sources."""
        return self.adversarial(self._step_index)

    def _block_losses(
        self, criterion: Criterion, logits: Tensor, target: Tensor, masks: Tensor, params: Params, teacher_logits: Tensor | None
    ) -> dict[str, Tensor]:
        """``+CE``, or on adversarial steps ``-β CE + (1 - β) S`` (``S``: the λ-weighted logit cosine)."""
        mix = criterion(logits, target)
        if not self.adversarial(self._step_index):
            return {"block_mix": mix, "block_cosine": mix.new_zeros(())}
        index, shares = params["block_index"], params["block_lam"]
        cosine = sum(share * F.cosine_similarity(logits, teacher_logits[index[k]], dim=-1) for k, share in enumerate(shares))
        return {"block_mix": -self.adv_weight * mix, "block_cosine": (1.0 - self.adv_weight) * cosine.mean()}

    def _online_losses(self, model: nn.Module, criterion: Criterion, x: Tensor, soft: Tensor, params: Params) -> dict[str, Tensor]:
        """``(1 - w) CE(clean) + w CE(linear mixup of the online sources)``; a term of weight 0 costs no pass."""
        index, shares = params["online_index"], params["online_lam"]
        terms = {}
        if self.linear_weight < 1.0:
            terms["online_clean"] = (1.0 - self.linear_weight) * criterion(model(x), soft)
        if self.linear_weight > 0.0:
            linear = mix_sources(x, index, constant_masks(x, shares))
            terms["online_linear"] = self.linear_weight * criterion(model(linear), mix_source_targets(soft, index, shares))
        return terms
