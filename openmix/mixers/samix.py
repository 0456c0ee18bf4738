"""SAMix (Li et al., arXiv 2111.15454): AutoMix with SAMix's Mix Block and mask loss.

The same training step as :class:`~openmix.mixers.automix.AutoMix`; what changes is
configuration, as in OpenMixup's CIFAR SAMix config (checked against the code):

- **adaptive lambda:** the Mix Block scales the features by ``1 + λ'`` and the partner's by
  ``1 + (1 - λ')``, ``λ' = rescale_lam(λ, 0.25)`` (:func:`~openmix.layers.rescale_lam`);
- **q/k** from two 1x1 convs, both on the concatenated features (``qk="concat"``);
- **value net** conv(C→C/2)-BN-ELU-conv(→1): 256→128→1 on a CIFAR ResNet-18 (``value_hidden=None``);
- **bilinear** upsampling of the logits (sigmoid after it);
- **mask loss** ``0.1 * (max(|mean(own mask) - λ| - 0.1, 0) - 2 Var(mask))``: the variance term
  pushes the masks towards 0 and 1.

**The η-balanced loss.** The paper trains the Mix Block with an η-balanced mixup loss
(local smoothness between the two mixed classes plus η times global discrimination).
openmix offers it as ``eta``: the decoupled mixup loss
(:func:`~openmix.losses.decoupled_mixup_loss`) on the teacher's predictions. The default is
``eta=0``, the plain mixup loss. That is what OpenMixup's published CIFAR config actually
computes: its ``neg_weight=0.5`` only multiplies the zero-target terms of a softmax soft
cross-entropy, so it has no effect.

Not carried over: OpenMixup's 800-epoch ``mask_adjust=0.25`` (it rescales the online
masks towards the *Mix Block's* lambda while the labels use the online one), and the
self-supervised SAMix (a separate MoCo-based model there).
"""

from __future__ import annotations

from typing import Any

from openmix.mixers.automix import AutoMix
from openmix.registry import register

__all__ = ["SAMix"]


@register("samix")
class SAMix(AutoMix):
    """SAMix: :class:`~openmix.mixers.automix.AutoMix` with SAMix's Mix Block and mask loss.

    Args:
        See :class:`~openmix.mixers.automix.AutoMix`; only the defaults differ: ``qk="concat"``,
        ``value_hidden=None`` (half the channels), ``lam_scaling=0.25``, ``upsample="bilinear"``, ``mask_variance=2``,
        ``eta=0`` (η-balanced loss off, as OpenMixup's config effectively runs).

    Example:
        >>> import openmix
        >>> mixer = openmix.build("samix", num_classes=100, in_channels=256)
        >>> block = mixer.mix_block
        >>> block.qk, block.lam_scaling, block.upsample, block.query.in_channels, len(block.value)
        ('concat', 0.25, 'bilinear', 512, 4)
    """

    def __init__(
        self,
        alpha: float = 2.0,
        num_classes: int | None = None,
        *,
        qk: str = "concat",
        value_hidden: int | None = None,
        lam_scaling: float | None = 0.25,
        upsample: str = "bilinear",
        mask_variance: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            alpha,
            num_classes,
            qk=qk,
            value_hidden=value_hidden,
            lam_scaling=lam_scaling,
            upsample=upsample,
            mask_variance=mask_variance,
            **kwargs,
        )
