"""SmoothMix (Lee et al., CVPR-W 2020): blend the partner in through a soft Gaussian blob."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from openmix.mixer import Draws, Mixer, Params, blend, gather_partner
from openmix.registry import register
from openmix.sampling import host_rows, host_uniform, one_minus_outer

__all__ = ["SmoothMix"]


@register("smoothmix")
class SmoothMix(Mixer):
    """Paste the partner with a Gaussian weight ``G``: ``x_mixed = (1 - G) * x + G * x[index]``.

    ``G = exp(-|p - c|^2 / (2 sigma^2))`` per pixel ``p`` (each axis scaled by its own
    ``sigma``), with the centre ``c`` uniform over the image and
    ``sigma = s * side``, ``s ~ U[sigma[0], sigma[1])`` (OpenMixup's defaults:
    ``[0.25, 0.5)``). The mask is ``1 - G`` and ``lam`` is its mean, the original's
    share (OpenMixup mixes the images alike but gives the blob's share to the
    original's label). There is no ``alpha``: the blob alone sets the mixing ratio
    (OpenMixup draws a Beta ``lam`` and discards it). Works on 1-D, 2-D and 3-D inputs.

    Args:
        sigma: ``(low, high)`` range of the blob's standard deviation, as a fraction
            of each image side.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (no ``alpha``).

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("smoothmix", num_classes=10, mode="elem", seed=0)
        >>> out = mixer(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> torch.allclose(out.lam, out.mask.mean((1, 2, 3)))
        True
    """

    def __init__(self, num_classes: int | None = None, *, sigma: Sequence[float] = (0.25, 0.5), **kwargs: Any) -> None:
        if "alpha" in kwargs:
            raise TypeError("SmoothMix takes no alpha: the Gaussian blob (its sigma range) sets the mixing ratio")
        super().__init__(1.0, num_classes, **kwargs)
        try:
            low, high = (float(v) for v in sigma)
        except (TypeError, ValueError):
            raise TypeError(f"sigma must be a pair of numbers (low, high), got {sigma!r}") from None
        if not 0.0 < low <= high:
            raise ValueError(f"sigma must be (low, high) with 0 < low <= high, got {tuple(sigma)}")
        self.sigma = (low, high)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Draw ``index``, the blob ``centre`` and ``sigma`` (``(1 or B, d)``, in pixels), ``lam``.

        Batch mode draws its one blob on the host (``centre``/``sigma`` are then CPU
        tensors); elem mode draws one per sample on ``x.device``."""
        batch, device, spatial = x.shape[0], x.device, x.shape[2:]
        index = self.draw_index(x, draws)
        low, high = self.sigma
        if self.mode == "batch":  # one blob, drawn on the host; its mean weight computed there too
            u = host_uniform(len(spatial) + 1, draws.host)
            scale = low + u[-1] * (high - low)
            centre = np.array([v * size - 0.5 for v, size in zip(u, spatial)], dtype=np.float32)
            sigma = np.array([scale * size for size in spatial], dtype=np.float32)
            centre, sigma = centre.tolist(), sigma.tolist()  # float32 values, as the mask uses them
            share = 1.0
            for size, c, s in zip(spatial, centre, sigma):
                share *= float(np.exp(-0.5 * np.square((np.arange(size) - c) / s)).mean())
            lam = 1.0 - share
            centre, sigma = host_rows(centre, sigma, dtype=torch.float32)
            lam_all = torch.full((batch,), lam, device=device, dtype=torch.float32)
            return {"index": index, "centre": centre, "sigma": sigma, "lam": lam_all}
        params = self._draw_blobs(x, draws, index)
        profiles = self._profiles(params, spatial, device)
        share = profiles[0].mean(1)
        for profile in profiles[1:]:
            share = share * profile.mean(1)  # the mean of a separable blob is the product of its axis means
        params["lam"] = (1.0 - share).expand(batch)
        return params

    def _draw_blobs(self, x: Tensor, draws: Draws, index: Tensor) -> Params:
        batch, device, spatial = x.shape[0], x.device, x.shape[2:]
        low, high = self.sigma
        u = torch.rand((batch, len(spatial) + 1), device=device, generator=draws.device, dtype=torch.float32)
        scale = u[:, -1] * (high - low) + low  # one sigma per blob, as a fraction of each side
        centre = torch.stack([u[:, i] * size - 0.5 for i, size in enumerate(spatial)], 1)
        sigma = torch.stack([scale * size for size in spatial], 1)
        params = {"index": index, "centre": centre, "sigma": sigma}
        if self.prob < 1.0:  # skipped samples get no blob
            params["skip"] = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32) >= self.prob
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        mask = _host_mask(params, x.shape[2:]) if x.device.type == "cpu" else None
        if mask is None:
            mask = one_minus_outer(self._profiles(params, x.shape[2:], x.device))
        mask = mask.expand(x.shape[0], *mask.shape[1:])  # batch mode: one mask for all
        return blend(x, gather_partner(x, params["index"]), mask), params["lam"], mask

    @staticmethod
    def _profiles(params: Params, spatial: Sequence[int], device: torch.device) -> list[Tensor]:
        """The blob along each axis: ``exp(-(i - c)^2 / (2 sigma^2))``, each ``(1 or B, size)``, on ``device``.

        One blob given as CPU tensors (batch mode's host draw) enters as Python numbers, so
        no host-to-device copy is made."""
        centre, sigma = params["centre"], params["sigma"]
        host = centre.shape[0] == 1 and centre.device.type == "cpu" and sigma.device.type == "cpu"
        if host:
            centre, sigma = centre[0].tolist(), sigma[0].tolist()
        profiles = []
        for axis, size in enumerate(spatial):
            coords = torch.arange(size, device=device, dtype=torch.float32)
            if host:
                offset = coords.sub_(centre[axis]).div_(sigma[axis])[None]
            else:
                offset = (coords - centre[:, axis : axis + 1]) / sigma[:, axis : axis + 1]
            profiles.append(offset.square_().mul_(-0.5).exp_())
        if "skip" in params:
            profiles[0] = profiles[0].masked_fill(params["skip"][:, None], 0.0)
        return profiles

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        del fields["alpha"]
        if self.sigma != (0.25, 0.5):
            fields["sigma"] = self.sigma
        return fields


def _host_mask(params: Params, spatial: Sequence[int]) -> Tensor | None:
    """The one blob of batch mode (CPU ``centre``/``sigma`` rows) as a float32 ``(1, 1, *spatial)`` mask
    built in NumPy, for CPU inputs (no copy into torch); ``None`` for per-sample blobs."""
    centre, sigma = params["centre"], params["sigma"]
    if centre.shape[0] != 1 or centre.device.type != "cpu" or sigma.device.type != "cpu" or "skip" in params:
        return None
    blob = np.ones((), dtype=np.float32)
    for axis, (size, c, s) in enumerate(zip(spatial, centre.tolist()[0], sigma.tolist()[0])):
        shape = [1] * len(spatial)
        shape[axis] = size
        offset = (np.arange(size, dtype=np.float32) - np.float32(c)) / np.float32(s)
        blob = blob * np.exp(np.float32(-0.5) * offset * offset).reshape(shape)
    return torch.from_numpy(np.float32(1.0) - blob).view(1, 1, *spatial)
