"""Image corruptions at five severities, after CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) and
MNIST-C (Mu & Gilmer, 2019): sixteen in four families, noise, blur, digital and geometric.

Every corruption takes pixels ``(B, C, H, W)``, float in ``[0, 1]`` with ``C`` 1 or 3 and
``H, W >= 8``, works on the whole batch at once on the input's device (torch and kornia, no loop
over samples) and returns the input's shape, dtype and device, clamped to ``[0, 1]``. Every
random draw comes from the ``generator`` passed in (on the input's device; the global generator
when ``None``), so one seed gives every model the same corrupted test set. Half-precision
inputs are corrupted in float32 and rounded back once.

Each corruption works on 1 and 3 channels alike: noise is drawn per value, brightness adds to the
HSV value (``max`` over channels, which for one channel is the intensity itself) and a
1-channel JPEG is coded as a gray RGB image. Geometric corruptions fill what comes from outside
the image with black, as MNIST-C does. Parameters that are lengths in pixels were published for
32-pixel (CIFAR-10-C) or 28-pixel (MNIST-C) images and scale with the image side.
``docs/corruptions.md`` tabulates every parameter at every severity, where each number comes
from and how it scales; :data:`CORRUPTIONS` holds them.

Example:
    >>> x = torch.rand(4, 1, 28, 28)
    >>> y = corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(0))
    >>> y.shape, bool(((y >= 0) & (y <= 1)).all())
    (torch.Size([4, 1, 28, 28]), True)
    >>> corruption_names("blur")
    ['defocus_blur', 'gaussian_blur', 'motion_blur']
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from torch import Tensor

__all__ = ["CORRUPTIONS", "FAMILIES", "SEVERITIES", "Corruption", "corrupt", "corruption_names"]

FAMILIES: tuple[str, ...] = ("noise", "blur", "digital", "geometric")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

Generator = torch.Generator | None


@dataclass(frozen=True)
class Corruption:
    """One corruption of the suite.

    Attributes:
        family: one of :data:`FAMILIES`.
        severities: its parameter at severities 1 to 5 (units in ``docs/corruptions.md``).
        apply: ``apply(pixels, parameter, generator)`` on float pixels ``(B, C, H, W)``; the
            result may leave ``[0, 1]`` (:func:`corrupt` clamps it).
        random: whether it draws from the generator; if not, one image always gives one result.
    """

    family: str
    severities: tuple[Any, ...]
    apply: Callable[[Tensor, Any, Generator], Tensor]
    random: bool


def corrupt(pixels: Tensor, name: str, severity: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``pixels`` under corruption ``name`` at ``severity``.

    Args:
        pixels: float images ``(B, C, H, W)`` in ``[0, 1]``, ``C`` 1 or 3, ``H, W >= 8``.
        name: one of :func:`corruption_names`.
        severity: 1 (mildest) to 5.
        generator: the source of every random draw, on ``pixels``' device.

    Returns:
        ``(B, C, H, W)`` in ``[0, 1]``, of ``pixels``' dtype and device.

    Raises:
        ValueError: an unknown name, a severity outside 1..5, or pixels of another shape.
        TypeError: pixels that are not a floating-point tensor.

    Example:
        >>> x = torch.full((1, 3, 8, 8), 0.5)
        >>> corrupt(x, "brightness", 5)[0, :, 0, 0]
        tensor([0.8000, 0.8000, 0.8000])
        >>> corrupt(x, "fog", 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown corruption 'fog'; known: gaussian_noise, shot_noise, ..., elastic_transform
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {severity!r}")
    _check_pixels(pixels)
    record = CORRUPTIONS[name]
    x = pixels.float() if pixels.dtype in (torch.float16, torch.bfloat16) else pixels
    out = record.apply(x, record.severities[int(severity) - 1], generator)
    return out.clamp(0, 1).to(pixels.dtype)


def corruption_names(family: str | None = None) -> list[str]:
    """The corruptions' names in suite order, all of them or those of one of :data:`FAMILIES`.

    Example:
        >>> corruption_names("digital")
        ['contrast', 'brightness', 'pixelate', 'jpeg_compression']
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return [name for name, record in CORRUPTIONS.items() if family in (None, record.family)]


def _check_pixels(pixels: Tensor) -> None:
    if not isinstance(pixels, Tensor) or not pixels.is_floating_point():
        got = pixels.dtype if isinstance(pixels, Tensor) else type(pixels).__name__
        raise TypeError(f"pixels must be a floating-point tensor in [0, 1], got {got}")
    if pixels.ndim != 4 or len(pixels) == 0 or pixels.shape[1] not in (1, 3) or min(pixels.shape[2:]) < 8:
        raise ValueError(f"pixels must be (B, C, H, W) with B >= 1, C 1 or 3 and H, W >= 8, got {tuple(pixels.shape)}")


# Random draws, all on the input's device from the caller's generator.


def _randn(x: Tensor, g: Generator) -> Tensor:
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _uniform(shape: tuple[int, ...], low: float, high: float, x: Tensor, g: Generator) -> Tensor:
    return torch.rand(shape, generator=g, device=x.device, dtype=x.dtype) * (high - low) + low


def _signs(shape: tuple[int, ...], x: Tensor, g: Generator) -> Tensor:
    """Integer ``-1`` or ``+1`` with equal odds."""
    return torch.randint(0, 2, shape, generator=g, device=x.device) * 2 - 1


def _side(x: Tensor, reference: int) -> float:
    """How much larger the image's shorter side is than the ``reference`` side the parameters were set for."""
    return min(x.shape[-2:]) / reference


# Noise: CIFAR-10-C's four, drawn independently for every value.


def _gaussian_noise(x: Tensor, sigma: float, g: Generator) -> Tensor:
    return x + sigma * _randn(x, g)


def _shot_noise(x: Tensor, photons: float, g: Generator) -> Tensor:
    return torch.poisson(x.clamp(min=0) * photons, generator=g) / photons


def _impulse_noise(x: Tensor, amount: float, g: Generator) -> Tensor:
    """A fraction ``amount`` of the values set to 0 or 1 with equal odds (salt and pepper)."""
    u = _uniform(x.shape, 0.0, 1.0, x, g)
    return torch.where(u < amount, (u >= amount / 2).to(x.dtype), x)


def _speckle_noise(x: Tensor, sigma: float, g: Generator) -> Tensor:
    return x + x * sigma * _randn(x, g)


# Blur: lengths in pixels of a 32-pixel image.


def _defocus_blur(x: Tensor, disk: tuple[float, float], g: Generator) -> Tensor:
    """A disk of radius ``disk[0]`` blurred by a 3x3 Gaussian of sigma ``disk[1]`` (CIFAR-10-C's
    anti-aliasing of the kernel), reflecting at the border as OpenCV does."""
    radius, alias = (value * _side(x, 32) for value in disk)
    taps = _gaussian_taps(alias, x, radius=1)
    kernel = F.conv2d(_disk(radius, x)[None, None], torch.outer(taps, taps)[None, None], padding=2)[0, 0]
    return _filter(x, kernel, "reflect")


def _disk(radius: float, like: Tensor, subsamples: int = 16) -> Tensor:
    """``(k, k)``: how much of each pixel a disk of ``radius`` about the centre pixel's centre
    covers (``subsamples`` squared points a pixel), normalised to sum 1."""
    half = math.ceil(radius + 0.5) - 1  # the farthest pixel the disk reaches
    side = 2 * half + 1
    t = (torch.arange(side * subsamples, device=like.device, dtype=like.dtype) + 0.5) / subsamples - half - 0.5
    inside = (t[:, None] ** 2 + t[None, :] ** 2 <= radius**2).to(like.dtype)
    cover = inside.view(side, subsamples, side, subsamples).sum((1, 3))
    return cover / cover.sum()


def _gaussian_blur(x: Tensor, sigma: float, g: Generator) -> Tensor:
    """Replicating the border, as ``skimage.filters.gaussian``."""
    taps = _gaussian_taps(sigma * _side(x, 32), x)
    return _filter(_filter(x, taps[None, :], "replicate"), taps[:, None], "replicate")


def _gaussian_taps(sigma: float, like: Tensor, radius: int | None = None) -> Tensor:
    """``(2 * radius + 1,)`` normalised Gaussian weights; ``radius`` 4 sigma by default, as scikit-image."""
    radius = int(4 * sigma + 0.5) if radius is None else radius
    t = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    taps = torch.exp(-(t**2) / (2 * sigma**2))
    return taps / taps.sum()


def _filter(x: Tensor, kernel: Tensor, border: str) -> Tensor:
    """``x`` correlated with ``kernel`` ``(kh, kw)`` (odd sides) in every image and channel, padded
    by ``border`` (``"reflect"``, ``"replicate"`` or ``"constant"``). One grouped convolution: on
    the CPU several times faster than a batch of one-channel ones."""
    b, c, h, w = x.shape
    rh, rw = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = F.pad(x.reshape(1, b * c, h, w), (rw, rw, rh, rh), mode=border)
    return F.conv2d(padded, kernel.expand(b * c, 1, -1, -1), groups=b * c).view(b, c, h, w)


def _motion_blur(x: Tensor, blur: tuple[float, float], g: Generator) -> Tensor:
    """ImageMagick's motion blur: a one-sided Gaussian of sigma ``blur[1]`` along an angle
    uniform in [-45, 45] degrees, its taps at whole pixels up to ``2 * ceil(blur[0])`` (and
    ``ceil(3 sigma)``) away, replicating the border."""
    radius, sigma = (value * _side(x, 32) for value in blur)
    reach = min(2 * math.ceil(radius), math.ceil(3 * sigma))
    taps = torch.arange(reach + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    angle = torch.deg2rad(_uniform((x.shape[0],), -45.0, 45.0, x, g))
    direction = torch.stack([angle.cos(), angle.sin()])[:, None]  # (2, 1, B)
    offsets = torch.ceil(taps[:, None] * direction - 0.5).long()  # (2, taps, B), rounded as ImageMagick does
    blurred = sum(w * _shift(x, dx, dy, reach, "replicate") for w, dx, dy in zip(weights, *offsets))
    return blurred / weights.sum()


def _shift(x: Tensor, dx: Tensor, dy: Tensor, reach: int, border: str) -> Tensor:
    """Each image ``b`` read ``(dx[b], dy[b])`` whole pixels away (``x`` right, ``y`` down; at most
    ``reach``), padded by ``border`` (``"replicate"`` or ``"constant"``, black)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (reach,) * 4, mode=border).permute(0, 2, 3, 1)
    batch = torch.arange(b, device=x.device)[:, None, None]
    rows = torch.arange(h, device=x.device)[:, None] + reach + dy[:, None, None]
    cols = torch.arange(w, device=x.device) + reach + dx[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


# Digital.


def _contrast(x: Tensor, factor: float, g: Generator) -> Tensor:
    """Each channel's deviation from its image mean times ``factor``."""
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _brightness(x: Tensor, shift: float, g: Generator) -> Tensor:
    """HSV value ``V = max`` over channels raised by ``shift`` (at most to 1) at the same hue and
    saturation: every channel scales by ``V' / V``, and black becomes gray ``V'``. On one channel
    this is ``min(x + shift, 1)``."""
    value = x.amax(1, keepdim=True)
    raised = (value + shift).clamp(max=1)
    return torch.where(value > 0, x / value.clamp(min=torch.finfo(x.dtype).tiny) * raised, raised)


def _pixelate(x: Tensor, fraction: float, g: Generator) -> Tensor:
    """Down to ``int(side * fraction)`` pixels and back up, both with PIL's box filter."""
    _, _, h, w = x.shape
    return _box_resize(h, int(h * fraction), x) @ x @ _box_resize(w, int(w * fraction), x)


def _box_resize(n: int, m: int, like: Tensor) -> Tensor:
    """``(n, n)``, symmetric: PIL's box filter from ``n`` pixels down to ``m < n`` and back up.

    Pixel ``i``'s centre falls in small pixel ``floor((i + 1/2) m / n)``. Going down, a small
    pixel averages the pixels whose centres it holds; going up, each pixel copies the small pixel
    that holds its centre: so each pixel becomes the mean of the pixels that share its small one.
    (A centre exactly on an edge, as from 9 to 8 pixels, goes to the upper small pixel; Pillow's
    floating-point edges may decide otherwise. No centre falls on an edge at 28 or 32 pixels.)"""
    centres = 2 * torch.arange(n, device=like.device) + 1
    member = F.one_hot(centres * m // (2 * n), m).to(like.dtype)  # (n, m)
    return member @ (member / member.sum(0)).T


def _jpeg_compression(x: Tensor, quality: float, g: Generator) -> Tensor:
    """kornia's differentiable JPEG (4:2:0, standard tables, the sides padded to whole 16-pixel
    blocks by replication); one channel goes in as gray RGB and comes out as the mean of the three."""
    h, w = x.shape[-2:]
    rgb = F.pad(x.expand(-1, 3, -1, -1), (0, -w % 16, 0, -h % 16), mode="replicate")
    q = torch.full((1,), float(quality), device=x.device, dtype=x.dtype)
    coded = jpeg_codec_differentiable(rgb, q)[..., :h, :w]
    return coded if x.shape[1] == 3 else coded.mean(1, keepdim=True)


# Geometric: MNIST-C's maps from output to input pixels about the image centre, black outside.


def _pixels(x: Tensor) -> Tensor:
    """``(H, W, 2)``: each pixel's ``(x, y)`` in pixels from the image centre, ``x`` right and ``y`` down."""
    h, w = x.shape[-2:]
    xs = torch.arange(w, device=x.device, dtype=x.dtype) - (w - 1) / 2
    ys = torch.arange(h, device=x.device, dtype=x.dtype) - (h - 1) / 2
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)


def _sample(x: Tensor, where: Tensor) -> Tensor:
    """``x`` read bilinearly at ``where`` ``(B, H, W, 2)``, points in :func:`_pixels`' coordinates; black outside."""
    h, w = x.shape[-2:]
    half = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=x.device, dtype=x.dtype)
    return F.grid_sample(x, where / half, mode="bilinear", padding_mode="zeros", align_corners=True)


def _affine(x: Tensor, linear: Tensor) -> Tensor:
    """Each pixel ``p`` read at ``linear @ p`` (``linear`` ``(B, 2, 2)``), bilinearly."""
    return _sample(x, torch.einsum("bij,hwj->bhwi", linear, _pixels(x)))


def _matrices(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """``(B, 2, 2)`` matrices ``[[a, b], [c, d]]`` from ``(B,)`` entries."""
    return torch.stack([a, b, c, d], -1).view(-1, 2, 2)


def _rotate(x: Tensor, angle: float, g: Generator) -> Tensor:
    """By ``angle`` radians, clockwise or anticlockwise with equal odds."""
    a = angle * _signs((x.shape[0],), x, g).to(x.dtype)
    return _affine(x, _matrices(a.cos(), -a.sin(), a.sin(), a.cos()))


def _shear(x: Tensor, angle: float, g: Generator) -> Tensor:
    """scikit-image's (so MNIST-C's) shear by ``angle`` radians, either way: each pixel ``p`` read
    at ``[[1, -sin], [0, cos]] @ p``."""
    a = angle * _signs((x.shape[0],), x, g).to(x.dtype)
    return _affine(x, _matrices(torch.ones_like(a), -a.sin(), torch.zeros_like(a), a.cos()))


def _scale(x: Tensor, factor: float, g: Generator) -> Tensor:
    """Shrunk to ``factor`` of its size about the centre."""
    return _affine(x, torch.eye(2, device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 2) / factor)


def _translate(x: Tensor, pixels: float, g: Generator) -> Tensor:
    """By ``pixels`` of a 28-pixel side along each axis, rounded to whole pixels, each way with equal odds."""
    b, _, h, w = x.shape
    steps = round(pixels * w / 28), round(pixels * h / 28)
    signs = _signs((2, b), x, g)
    return _shift(x, steps[0] * signs[0], steps[1] * signs[1], max(steps), "constant")


def _elastic_transform(x: Tensor, alpha: float, g: Generator) -> Tensor:
    """Simard et al.'s elastic field, as kornia's ``elastic_transform2d`` draws it: uniform noise
    in [-1, 1] per pixel and axis, smoothed by a Gaussian of 4 pixels (of a 28-pixel side, zero
    outside the image) and times ``alpha`` pixels; each pixel is read that far away, bilinearly."""
    b, _, h, w = x.shape
    sigma, alpha = 4 * _side(x, 28), alpha * _side(x, 28)
    taps = _gaussian_taps(sigma, x)
    noise = _uniform((b, 2, h, w), -1.0, 1.0, x, g)
    field = _filter(_filter(noise, taps[None, :], "constant"), taps[:, None], "constant") * alpha
    return _sample(x, _pixels(x) + field.permute(0, 2, 3, 1))


CORRUPTIONS: Mapping[str, Corruption] = types.MappingProxyType(
    {
        "gaussian_noise": Corruption("noise", (0.04, 0.06, 0.08, 0.09, 0.10), _gaussian_noise, True),
        "shot_noise": Corruption("noise", (500, 250, 100, 75, 50), _shot_noise, True),
        "impulse_noise": Corruption("noise", (0.01, 0.02, 0.03, 0.05, 0.07), _impulse_noise, True),
        "speckle_noise": Corruption("noise", (0.06, 0.10, 0.12, 0.16, 0.20), _speckle_noise, True),
        "defocus_blur": Corruption(
            "blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)), _defocus_blur, False
        ),
        "gaussian_blur": Corruption("blur", (0.4, 0.6, 0.7, 0.8, 1.0), _gaussian_blur, False),
        "motion_blur": Corruption("blur", ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.25), (9, 2.5)), _motion_blur, True),
        "contrast": Corruption("digital", (0.75, 0.5, 0.4, 0.3, 0.15), _contrast, False),
        "brightness": Corruption("digital", (0.05, 0.1, 0.15, 0.2, 0.3), _brightness, False),
        "pixelate": Corruption("digital", (0.95, 0.9, 0.85, 0.75, 0.65), _pixelate, False),
        "jpeg_compression": Corruption("digital", (80, 65, 58, 50, 40), _jpeg_compression, False),
        "rotate": Corruption("geometric", (0.2, 0.4, 0.6, 0.8, 1.0), _rotate, True),
        "shear": Corruption("geometric", (0.2, 0.4, 0.6, 0.8, 1.0), _shear, True),
        "scale": Corruption("geometric", (0.9, 0.8, 0.7, 0.6, 0.5), _scale, False),
        "translate": Corruption("geometric", (1, 2, 3, 4, 5), _translate, True),
        "elastic_transform": Corruption("geometric", (6.8, 13.6, 20.4, 27.2, 34.0), _elastic_transform, True),
    }
)
