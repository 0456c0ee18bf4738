"""SaliencyMix (Uddin et al., ICLR 2021): a CutMix box centred on the partner's saliency peak."""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixer import Draws, Mixer, Params
from openmix.mixers.cutmix import paste_boxes
from openmix.registry import register
from openmix.sampling import boxes_at

__all__ = ["SaliencyMix", "fine_grained_saliency", "spectral_residual_saliency", "saliency_peaks"]

# Half-widths of the six centre-surround windows of OpenCV's StaticSaliencyFineGrained.
_NEIGHBOURHOODS = (12, 24, 48, 28, 56, 112)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's RGB -> gray
# OpenCV's 3x3 GaussianBlur (sigma 0) is [1, 2, 1] / 4; twice, with mirrored borders, is this 5-tap filter.
_BINOMIAL5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
_BOX3 = (1 / 3, 1 / 3, 1 / 3)
_GAUSS5 = tuple(math.exp(-(i**2) / (2 * 8.0**2)) for i in range(-2, 3))  # 5x5 GaussianBlur, sigma 8
_GAUSS5 = tuple(w / sum(_GAUSS5) for w in _GAUSS5)


def fine_grained_saliency(x: Tensor) -> Tensor:
    """Fine-grained static saliency (Montabone & Soto, 2010), as OpenCV's ``StaticSaliencyFineGrained``.

    Grayscale, blurred twice with a 3x3 binomial filter; at six window sizes the
    centre value is compared with the mean of its surround (window minus centre),
    giving "on" (brighter) and "off" (darker) contrasts; each is summed over the
    scales and scaled to a maximum of 1, and the two are added. Computed in float
    at full resolution (OpenCV quantises every step to 8 bits).

    Args:
        x: images ``(B, C, H, W)``; 3 channels are read as RGB, others averaged.

    Returns:
        float32 saliency ``(B, H, W)``, larger is more salient.

    Example:
        >>> x = torch.zeros(1, 3, 32, 32); x[0, :, 20, 9] = 1.0
        >>> int(fine_grained_saliency(x).flatten(1).argmax()) == 20 * 32 + 9
        True
    """
    gray = _blur(_gray(x), _BINOMIAL5)[:, 0]
    batch, height, width = gray.shape
    corners, centre_weight, box_weight = _fine_grained_windows(height, width, gray.device)
    # integral image with the batch last, so that picking window corners copies whole rows
    integral = F.pad(gray.cumsum(1).cumsum(2), (1, 0, 1, 0)).view(batch, -1).t().contiguous()
    box = integral.index_select(0, corners[0]).add_(integral.index_select(0, corners[1]))
    box = box.sub_(integral.index_select(0, corners[2])).sub_(integral.index_select(0, corners[3]))
    # centre minus the mean of its surround, (n * g - box) / (n - 1), times the scale's multiplicity
    centre = gray.view(batch, -1).t().contiguous()
    contrast = box.view(-1, height * width, batch).mul_(box_weight).addcmul_(centre, centre_weight)
    net = contrast.sum(0)
    on = contrast.clamp_(min=0).sum(0)  # brighter than the surround, (H * W, B)
    off = on - net  # darker than the surround
    return (_unit_max(on) + _unit_max(off)).t().reshape(batch, height, width)


def spectral_residual_saliency(x: Tensor, size: int = 64) -> Tensor:
    """Spectral-residual saliency (Hou & Zhang, 2007), as OpenCV's ``StaticSaliencySpectralResidual``.

    Grayscale resized down to at most ``size`` per side; FFT; the log amplitude minus
    its 3x3 box blur is recombined with the original phase and inverted; the
    magnitude is blurred (5x5 Gaussian, sigma 8), squared and resized back.

    Unlike OpenCV, smaller images are not enlarged to ``size``: enlarging adds no
    detail, and bilinear 2x enlarging zeroes the Nyquist frequencies, whose log
    amplitude (round-off) then swamps the residual (a CIFAR image's peak becomes
    noise). Amplitudes are floored at ``1e-6`` of the image's largest for the same
    reason.

    Args:
        x: images ``(B, C, H, W)``; 3 channels are read as RGB, others averaged.
        size: largest working side (OpenCV: always 64).

    Returns:
        float32 saliency ``(B, H, W)``, larger is more salient.

    Example:
        >>> x = torch.zeros(1, 1, 32, 32); x[0, 0, 20, 9] = 1.0
        >>> peak = int(spectral_residual_saliency(x).flatten(1).argmax())
        >>> divmod(peak, 32)
        (20, 9)
    """
    height, width = x.shape[-2:]
    work = (min(height, size), min(width, size))
    gray = _gray(x)
    if work != (height, width):
        gray = F.interpolate(gray, size=work, mode="bilinear", align_corners=False)
    spectrum = torch.fft.fft2(gray[:, 0])
    power = _power(spectrum)
    log_amplitude = power.clamp_(min=power.amax((1, 2), keepdim=True).mul_(1e-12).clamp_(min=1e-38)).log_().mul_(0.5)
    # exp(log A - blur(log A)) * phase == spectrum * exp(-blur(log A))
    scale = _blur(log_amplitude[:, None], _BOX3)[:, 0].neg_().exp_()
    residual = torch.fft.ifft2(torch.view_as_complex(torch.view_as_real(spectrum).mul_(scale[..., None])))
    saliency = _blur(_power(residual).sqrt_()[:, None], _GAUSS5).square_()
    if work != (height, width):
        saliency = F.interpolate(saliency, size=(height, width), mode="bilinear", align_corners=False)
    return saliency[:, 0]


SALIENCY: dict[str, Callable[[Tensor], Tensor]] = {
    "spectral_residual": spectral_residual_saliency,
    "fine_grained": fine_grained_saliency,
}


def saliency_peaks(x: Tensor, method: str = "spectral_residual") -> Tensor:
    """Row and column of each image's saliency maximum, int64 ``(B, 2)`` (first one on ties).

    Example:
        >>> x = torch.zeros(2, 3, 32, 32); x[0, :, 19:22, 8:11] = 1.0; x[1, :, 4:7, 25:28] = 1.0
        >>> saliency_peaks(x).tolist()
        [[20, 9], [5, 26]]
    """
    width = x.shape[-1]
    flat = SALIENCY[method](x).flatten(1).argmax(1)
    return torch.stack((torch.div(flat, width, rounding_mode="floor"), flat.remainder(width)), 1)


@register("saliencymix")
class SaliencyMix(Mixer):
    """Paste a CutMix-sized box of the partner, centred on the partner's most salient pixel.

    The box side is ``sqrt(1 - lam)`` of the image side (as CutMix), clipped at the
    border; ``lam`` is the area actually kept. As in the official code, ``batch`` mode
    finds the saliency peak of one image (the partner of sample 0) and uses that box
    for the whole batch; ``elem`` mode centres each sample's box on its own partner's
    peak. Saliency is computed without gradient, in float32; 2-D inputs only.

    The detector is Hou & Zhang's spectral residual by default (sharp peaks on small
    objects that stand out), at the image's resolution up to 64x64. The official code
    and OpenMixup call OpenCV's ``StaticSaliencyFineGrained`` (Montabone & Soto),
    available as ``saliency="fine_grained"`` (full resolution): it adds separately
    normalised "brighter" and "darker" maps, so its maximum is often shared by a
    bright object and a dark spot beside it. (Both official versions also pass it
    normalised float images, which it reads as raw bytes, so their box is not centred
    on the real peak.) Both detectors are re-implemented in torch, batched.

    Args:
        saliency: ``"spectral_residual"`` or ``"fine_grained"``.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("saliencymix", num_classes=10, mode="elem", seed=0)
        >>> out = mixer(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
        >>> torch.allclose(out.lam, out.mask.mean((1, 2, 3)))
        True
    """

    spatial_dims = (2,)

    def __init__(
        self, alpha: float = 1.0, num_classes: int | None = None, *, saliency: str = "spectral_residual", **kwargs: Any
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        if saliency not in SALIENCY:
            raise ValueError(f"saliency must be one of {tuple(SALIENCY)}, got {saliency!r}")
        self.saliency = saliency

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``lo``/``hi``: int64 box bounds on ``x.device``, ``(1, d)`` in batch mode, else ``(B, d)``."""
        params = super().draw_params(x, draws)
        index = params["index"]
        with torch.no_grad():
            if self.mode == "batch":  # one partner's peak places the box for the whole batch
                centre = saliency_peaks(x.index_select(0, index[:1]), self.saliency)
            else:
                centre = saliency_peaks(x, self.saliency).index_select(0, index)
        lam = params["lam"][:1] if self.mode == "batch" else params["lam"]
        params["lo"], params["hi"] = boxes_at(lam, centre, x.shape[2:])
        return params

    def binary_mask(self, params: Params) -> bool:
        """Its mask is a cut: every pixel shows one image."""
        return True

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        return paste_boxes(x, params["index"], params["lo"], params["hi"])

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        if self.saliency != "spectral_residual":
            fields["saliency"] = self.saliency
        return fields


def _gray(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> float32 luminance ``(B, 1, H, W)``, detached."""
    x = x.detach()
    if x.shape[1] != 3:
        return x.float().mean(1, keepdim=True)
    red, green, blue = x[:, 0:1].float(), x[:, 1:2].float(), x[:, 2:3].float()
    return (red * _LUMA[0]).add_(green, alpha=_LUMA[1]).add_(blue, alpha=_LUMA[2])


def _blur(image: Tensor, taps: tuple[float, ...]) -> Tensor:
    """Separable filter of ``(B, 1, H, W)`` with odd ``taps`` on both axes, borders mirrored as OpenCV's default."""
    r = len(taps) // 2
    height, width = image.shape[-2:]
    padded = F.pad(image, (r, r, r, r), mode="reflect" if min(height, width) > r else "replicate")
    rows = padded[..., :height, :] * taps[0]
    for i, tap in enumerate(taps[1:], 1):  # a few shifted adds beat a 1-channel convolution on CPU
        rows.add_(padded[..., i : i + height, :], alpha=tap)
    out = rows[..., :width] * taps[0]
    for i, tap in enumerate(taps[1:], 1):
        out.add_(rows[..., i : i + width], alpha=tap)
    return out


def _power(z: Tensor) -> Tensor:
    """``|z| ** 2`` of a complex tensor, as a real one (torch's complex ``abs`` is slow on CPU)."""
    parts = torch.view_as_real(z)
    real, imag = parts[..., 0], parts[..., 1]
    return real.square().addcmul_(imag, imag)


def _unit_max(saliency: Tensor) -> Tensor:
    """Scale each column of ``(H * W, B)`` maps to a maximum of 1 (all-zero maps stay zero)."""
    return saliency / saliency.amax(0).clamp_(min=torch.finfo(saliency.dtype).tiny)


@functools.lru_cache(maxsize=None)
def _fine_grained_windows(height: int, width: int, device: torch.device) -> tuple[Tensor, ...]:
    """Index and weight tables of the fine-grained windows for one image size, built once per device.

    Window of half-width ``n`` at ``pos``: ``[pos - n + 1, pos + n + 1)`` clipped to the
    image (OpenCV's). Scales with identical clipped windows (all those at least as
    large as the image) are merged, their multiplicity folded into the weights.

    Returns:
        ``corners``: flat indices into the ``(H + 1) x (W + 1)`` integral image of each
        window's bottom-right, top-left, bottom-left and top-right corners, ``(4, k * H * W)``;
        ``centre_weight`` and ``box_weight`` ``(k, H * W, 1)``, such that
        ``contrast = centre_weight * g + box_weight * window_sum``.
    """

    def clipped(size: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(max(p - n + 1, 0) for p in range(size)), tuple(min(p + n + 1, size) for p in range(size))

    scales = collections.Counter(clipped(height, n) + clipped(width, n) for n in _NEIGHBOURHOODS)
    top, bottom, left, right = (torch.tensor([window[i] for window in scales]) for i in range(4))
    top, bottom, left, right = top[:, :, None], bottom[:, :, None], left[:, None, :], right[:, None, :]
    row = width + 1  # flat index = row * (W + 1) + column
    corners = torch.stack([bottom * row + right, top * row + left, bottom * row + left, top * row + right])
    count = ((bottom - top) * (right - left)).float().clamp_(min=2)  # (k, H, W) pixels in each window
    multiplicity = torch.tensor(list(scales.values()), dtype=torch.float32)[:, None, None]
    count = count.view(-1, height * width, 1)
    multiplicity = multiplicity.view(-1, 1, 1)
    tables = (corners.flatten(1), multiplicity * count / (count - 1), -multiplicity / (count - 1))
    return tuple(t.to(device) for t in tables)
