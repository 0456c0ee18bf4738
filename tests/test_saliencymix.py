"""SaliencyMix beyond the shared contract: box at the partner's saliency peak, both detectors."""

from __future__ import annotations

import pytest
import torch

import openmix
from openmix.mixers.saliencymix import fine_grained_saliency, saliency_peaks, spectral_residual_saliency

NUM_CLASSES = 4
NEIGHBOURHOODS = (12, 24, 48, 28, 56, 112)


def saliencymix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("saliencymix", **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


def spotted(batch: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gray images with one bright 3x3 spot each, and the spots' centres ``(B, 2)``."""
    gen = torch.Generator().manual_seed(seed)
    spots = torch.randint(3, size - 3, (batch, 2), generator=gen)
    x = torch.full((batch, 3, size, size), 0.2)
    for i, (r, c) in enumerate(spots.tolist()):
        x[i, :, r - 1 : r + 2, c - 1 : c + 2] = 1.0
    return x, spots


def box(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """``(lo, hi)`` of the zeros of one ``(1, H, W)`` mask (a box)."""
    where = (mask[0] == 0).nonzero()
    return where.min(0).values.tolist(), (where.max(0).values + 1).tolist()


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_box_is_centred_on_the_partners_bright_spot(mode):
    x, spots = spotted(16)
    mixer = saliencymix(mode=mode, seed=1)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(2))
    source = params["index"][:1].expand(16) if mode == "batch" else params["index"]
    centre = spots[source]
    cut = ((1 - params["lam"].double()).sqrt() * 32).floor().long()[:, None]
    assert params["lo"].shape == ((1, 2) if mode == "batch" else (16, 2))  # batch mode: one shared box
    torch.testing.assert_close(params["lo"].expand(16, -1), (centre - cut // 2).clamp(min=0))
    torch.testing.assert_close(params["hi"].expand(16, -1), (centre + (cut + 1) // 2).clamp(max=32))


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_the_partners_spot_is_pasted(mode):
    x, spots = spotted(16, seed=3)
    out = saliencymix(mode=mode, seed=4)(x, labels(16))
    source = out.index[:1].expand(16) if mode == "batch" else out.index
    for i in range(16):
        if out.lam[i] < 1:
            (top, left), (bottom, right) = box(out.mask[i])
            r, c = spots[source[i]].tolist()
            assert top <= r < bottom and left <= c < right
            torch.testing.assert_close(out.x[i, :, r, c], x[out.index[i], :, r, c])  # the partner's pixel
            if source[i] == out.index[i]:  # elem mode, and sample 0 in batch mode: the spot itself
                assert bool((out.x[i, :, r, c] == 1).all())


def test_batch_mode_uses_one_box_from_the_partner_of_sample_0():
    x, spots = spotted(8, seed=2)
    out = saliencymix(mode="batch", seed=3)(x, labels(8))
    assert bool((out.mask == out.mask[0]).all())
    peak = saliency_peaks(x[out.index[:1]])
    assert peak.tolist() == [spots[out.index[0]].tolist()]


def test_fine_grained_box_is_centred_on_its_saliency_peak():
    x = torch.rand(12, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    mixer = saliencymix(mode="elem", saliency="fine_grained", seed=5)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(6))
    peaks = saliency_peaks(x, "fine_grained")[params["index"]]
    for i in range(12):
        lo, hi = params["lo"][i], params["hi"][i]
        if bool((hi > lo).all()):
            assert bool(((lo <= peaks[i]) & (peaks[i] < hi)).all())


def test_lam_is_the_kept_area():
    out = saliencymix(mode="elem", seed=7)(torch.rand(32, 3, 20, 28), labels(32))
    kept = (out.mask == 1).flatten(1).float().mean(1)
    torch.testing.assert_close(out.lam, kept)
    assert bool((out.lam < 1).any())


def test_skipped_samples_paste_nothing():
    out = saliencymix(mode="elem", prob=0.5, seed=8)(torch.rand(32, 3, 16, 16), labels(32))
    skipped = out.lam == 1
    assert 0 < int(skipped.sum()) < 32
    assert bool((out.mask[skipped] == 1).all())


def test_box_side_follows_lam_like_cutmix():
    x, _ = spotted(64, size=40, seed=9)
    mixer = saliencymix(mode="elem", seed=10)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(11))
    side = ((1 - params["lam"].double()).sqrt() * 40).floor().long()
    inside = ((params["lo"] > 0) & (params["hi"] < 40)).all(1)
    assert int(inside.sum()) > 5
    torch.testing.assert_close((params["hi"] - params["lo"])[inside], side[inside, None].expand(-1, 2))


@pytest.mark.parametrize("shape", [(4, 3, 16), (4, 3, 8, 8, 8)], ids=["1-D", "3-D"])
def test_only_images(shape):
    with pytest.raises(ValueError, match="4-D"):
        saliencymix()(torch.rand(shape), labels(4))


def test_unknown_saliency_is_refused():
    with pytest.raises(ValueError, match="spectral_residual"):
        saliencymix(saliency="itti")


def test_repr_names_a_non_default_detector():
    assert "saliency='fine_grained'" in repr(saliencymix(saliency="fine_grained"))
    assert "saliency" not in repr(saliencymix())


# ------------------------------------------------------------------ detectors
def reference_fine_grained(gray: torch.Tensor) -> torch.Tensor:
    """OpenCV's fine-grained saliency of one blurred ``(H, W)`` image, pixel by pixel, in float."""
    height, width = gray.shape
    integral = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    integral[1:, 1:] = gray.double().cumsum(0).cumsum(1)
    on = torch.zeros(height, width, dtype=torch.float64)
    off = torch.zeros_like(on)
    for n in NEIGHBOURHOODS:
        for y in range(height):
            for x in range(width):
                y1, x1 = max(y - n + 1, 0), max(x - n + 1, 0)
                y2, x2 = min(y + n + 1, height), min(x + n + 1, width)
                total = integral[y2, x2] + integral[y1, x1] - integral[y2, x1] - integral[y1, x2]
                mean = (total - gray[y, x]) / ((y2 - y1) * (x2 - x1) - 1)
                on[y, x] += max(gray[y, x] - mean, 0)
                off[y, x] += max(mean - gray[y, x], 0)
    return on / on.max() + off / off.max()


def test_fine_grained_matches_a_pixel_by_pixel_reference():
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(1, 1, 9, 14, generator=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    taps = torch.tensor([1.0, 4, 6, 4, 1]) / 16  # two 3x3 binomial blurs
    blurred = torch.nn.functional.conv2d(padded, (taps[:, None] * taps[None, :])[None, None])[0, 0]
    expected = reference_fine_grained(blurred)
    torch.testing.assert_close(fine_grained_saliency(x)[0].double(), expected, rtol=1e-4, atol=1e-4)


def test_fine_grained_is_the_same_for_the_negative_image():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(fine_grained_saliency(1 - x), fine_grained_saliency(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_spectral_residual_peaks_at_a_lone_bright_spot(size):
    x, spots = spotted(6, size=size, seed=size)
    error = (saliency_peaks(x, "spectral_residual") - spots).abs().max()
    assert int(error) <= (0 if size <= 64 else 1)  # larger images are searched at 64x64, then resized back


@pytest.mark.parametrize("detector", [fine_grained_saliency, spectral_residual_saliency])
def test_detectors_read_gray_and_rgb_alike_without_gradient(detector):
    gray = torch.rand(2, 1, 16, 16, requires_grad=True)
    out = detector(gray.expand(-1, 3, -1, -1))
    assert out.shape == (2, 16, 16) and out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(detector(gray), out, rtol=1e-4, atol=1e-5)


def test_fine_grained_ignores_brightness_and_contrast():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(14))
    torch.testing.assert_close(fine_grained_saliency(x * 7 + 3), fine_grained_saliency(x), rtol=1e-3, atol=1e-3)


def test_spectral_residual_ignores_contrast():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(15))
    torch.testing.assert_close(spectral_residual_saliency(x * 7), spectral_residual_saliency(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("detector", [fine_grained_saliency, spectral_residual_saliency])
def test_detectors_are_finite_on_flat_and_tiny_images(detector):
    for x in (torch.full((2, 3, 16, 16), 0.5), torch.rand(2, 3, 2, 2), torch.rand(1, 3, 1, 5)):
        assert bool(torch.isfinite(detector(x)).all())
