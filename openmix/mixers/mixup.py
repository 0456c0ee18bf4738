"""mixup (Zhang et al., ICLR 2018): a convex combination of two samples and their labels."""

from __future__ import annotations

from torch import Tensor

from openmix.mixer import Mixer, Params, blend, gather_partner
from openmix.registry import register

__all__ = ["MixUp"]


@register("mixup")
class MixUp(Mixer):
    """``x_mixed = lam * x + (1 - lam) * x[index]``, ``lam ~ Beta(alpha, alpha)``.

    Works on any ``(B, C, ...)`` tensor: images, sequences, volumes or feature vectors.
    See :class:`~openmix.mixer.Mixer` for the common arguments. Batch mode mixes with one
    scalar ``lerp`` (``lam`` drawn on the host), elem mode with a per-sample weight.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("mixup", alpha=1.0, num_classes=10, seed=0)
        >>> out = mixer(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> out.x.shape, out.y.shape, out.lam.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]), torch.Size([8]))
    """

    spatial_dims = None

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, None]:
        partner = gather_partner(x, params["index"])
        lam = params.get("batch_lam")
        if lam is not None:  # batch mode: one scalar lerp
            return partner.lerp_(x, lam), params["lam"], None
        lam = params["lam"]
        return blend(x, partner, lam.view(-1, *([1] * (x.ndim - 1)))), lam, None
