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
    See :class:`~openmix.mixer.Mixer` for the common arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("mixup", alpha=1.0, num_classes=10, seed=0)
        >>> out = mixer(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> out.x.shape, out.y.shape, out.lam.shape
        (torch.Size([8, 3, 32, 32]), torch.Size([8, 10]), torch.Size([8]))
    """

    spatial_dims = None

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, None]:
        lam = params["lam"]
        weight = lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return blend(x, gather_partner(x, params["index"]), weight), lam, None
