"""The corruption suite: shape and range, determinism, strength by severity, hand-checked values, errors."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from openmix.evaluation.corruptions import CORRUPTIONS, FAMILIES, SEVERITIES, corrupt, corruption_names

NAMES = list(CORRUPTIONS)
RANDOM = [name for name in NAMES if CORRUPTIONS[name].random]
FIXED = [name for name in NAMES if not CORRUPTIONS[name].random]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "corruptions.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small convolutions on a shared 2-core runner


def seeded(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def scene(channels: int = 3, size: int = 28, batch: int = 8) -> torch.Tensor:
    """Natural-ish images ``(batch, channels, size, size)``: a smooth gradient, different in each
    image and channel, under a bright square whose place and side vary over the batch (so that no
    single alignment with the pixel grid decides how much a corruption changes)."""
    ramp = torch.linspace(0.1, 0.7, size)
    b = torch.arange(batch).view(-1, 1, 1, 1)
    c = torch.arange(channels).view(1, -1, 1, 1)
    gradient = (ramp.view(-1, 1) * (1 + c) + ramp * (1 + b)) / (2 + b + c)
    top, side = size // 5 + b * size // 23, size // 3 + b % 3
    i = torch.arange(size)
    rows = (i.view(-1, 1) >= top) & (i.view(-1, 1) < top + side)
    cols = (i >= top + 2) & (i < top + side + 3)
    return torch.where(rows & cols, 0.9, gradient)


def point(size: int, row: int, col: int, channels: int = 1) -> torch.Tensor:
    """One black image ``(1, channels, size, size)`` with a single white pixel."""
    x = torch.zeros(1, channels, size, size)
    x[..., row, col] = 1.0
    return x


def blob(size: int, dx: float, dy: float) -> torch.Tensor:
    """A Gaussian spot (sigma 1.5 px) ``(dx, dy)`` pixels from the centre of a black image."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    spot = torch.exp(-((t - dx) ** 2)[None, :] / 4.5 - ((t - dy) ** 2)[:, None] / 4.5)
    return spot.float()[None, None]


def centroid(x: torch.Tensor) -> tuple[float, float]:
    """``(x, y)`` of an image's centre of mass, in pixels from its centre."""
    size = x.shape[-1]
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    image = x[0, 0].double()
    return float((image.sum(0) * t).sum() / image.sum()), float((image.sum(1) * t).sum() / image.sum())


# Every corruption: shape, dtype, range, input untouched, determinism.


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_every_severity_keeps_shape_dtype_and_range(name, channels):
    x = torch.rand(2, channels, 9, 13)
    x[:, :, 0], x[:, :, -1] = 0.0, 1.0
    for severity in SEVERITIES:
        out = corrupt(x, name, severity, generator=seeded())
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_other_float_dtypes_come_back_as_they_went_in(name, dtype):
    out = corrupt(scene(3, batch=2).to(dtype), name, 3, generator=seeded())
    assert out.dtype == dtype and float(out.min()) >= 0 and float(out.max()) <= 1


def test_the_input_is_left_as_it_was():
    x = scene(3, batch=2)
    before = x.clone()
    for name in NAMES:
        corrupt(x, name, 5, generator=seeded())
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", NAMES)
def test_one_seed_gives_the_same_images(name):
    x = scene(3, batch=4)
    assert torch.equal(corrupt(x, name, 4, generator=seeded(7)), corrupt(x, name, 4, generator=seeded(7)))


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_differ_between_seeds(name):
    x = scene(1)
    assert not torch.equal(corrupt(x, name, 4, generator=seeded(1)), corrupt(x, name, 4, generator=seeded(2)))


@pytest.mark.parametrize("name", FIXED)
def test_fixed_corruptions_ignore_the_generator(name):
    x = scene(1, batch=2)
    assert torch.equal(corrupt(x, name, 4, generator=seeded(1)), corrupt(x, name, 4, generator=seeded(2)))
    assert torch.equal(corrupt(x, name, 4, generator=seeded(1)), corrupt(x, name, 4))


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 28), (1, 32), (3, 32), (1, 64)])
@pytest.mark.parametrize("name", NAMES)
def test_the_change_grows_with_severity(name, channels, size):
    x = scene(channels, size)
    change = [float((corrupt(x, name, s, generator=seeded()) - x).abs().mean()) for s in SEVERITIES]
    assert all(a < b for a, b in zip(change, change[1:])), change


# Noise: the tabled strength.


def test_gaussian_and_speckle_noise_have_the_tabled_sigma():
    gray = torch.full((8, 3, 32, 32), 0.5)
    for severity, sigma in zip(SEVERITIES, CORRUPTIONS["gaussian_noise"].severities):
        spread = float((corrupt(gray, "gaussian_noise", severity, generator=seeded()) - gray).std())
        assert spread == pytest.approx(sigma, rel=0.05)
    for severity, sigma in zip(SEVERITIES, CORRUPTIONS["speckle_noise"].severities):
        spread = float((corrupt(gray, "speckle_noise", severity, generator=seeded()) - gray).std())
        assert spread == pytest.approx(0.5 * sigma, rel=0.05)


def test_shot_noise_is_poisson_with_the_tabled_photon_count():
    gray = torch.full((8, 3, 32, 32), 0.5)
    for severity, photons in zip(SEVERITIES, CORRUPTIONS["shot_noise"].severities):
        out = corrupt(gray, "shot_noise", severity, generator=seeded())
        assert float(out.mean()) == pytest.approx(0.5, abs=0.01)
        assert float(out.var()) == pytest.approx(0.5 / photons, rel=0.08)


def test_impulse_noise_sets_the_tabled_fraction_to_black_or_white():
    gray = torch.full((16, 3, 32, 32), 0.5)
    for severity, amount in zip(SEVERITIES, CORRUPTIONS["impulse_noise"].severities):
        out = corrupt(gray, "impulse_noise", severity, generator=seeded())
        assert set(out.unique().tolist()) == {0.0, 0.5, 1.0}
        assert float((out == 0).float().mean()) == pytest.approx(amount / 2, rel=0.2)
        assert float((out == 1).float().mean()) == pytest.approx(amount / 2, rel=0.2)


# Blur: a white point shows the kernel.


def test_gaussian_blur_spreads_a_point_into_scikit_images_truncated_gaussian():
    out = corrupt(point(32, 16, 16), "gaussian_blur", 5)[0, 0]  # sigma 1 px, taps out to 4 sigma
    taps = torch.exp(-torch.arange(-4.0, 5.0) ** 2 / 2)
    taps /= taps.sum()
    torch.testing.assert_close(out[12:21, 12:21], torch.outer(taps, taps))
    assert float(out.sum()) == pytest.approx(1.0)


def test_motion_blur_spreads_a_point_into_imagemagicks_one_sided_gaussian():
    out = corrupt(point(32, 16, 16), "motion_blur", 1, generator=seeded())[0, 0]  # sigma 1 px: taps 0..3
    weights = torch.exp(-torch.arange(4.0) ** 2 / 2)
    assert float(out[16, 16]) == pytest.approx(float(weights[0] / weights.sum()))
    assert float(out.sum()) == pytest.approx(1.0)
    assert int((out > 0).sum()) == 4


def test_defocus_blur_keeps_a_point_whole_below_a_half_pixel_radius():
    out = corrupt(point(32, 16, 16), "defocus_blur", 1)[0, 0]  # radius 0.3: the disk is one pixel
    taps = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * 0.4**2))  # then the 3x3 Gaussian, sigma 0.4
    taps /= taps.sum()
    torch.testing.assert_close(out[15:18, 15:18], torch.outer(taps, taps))


# Digital: the formulas by hand.


def test_contrast_scales_each_channels_deviation_from_its_mean():
    x = torch.empty(1, 3, 8, 8)
    x[:, 0, :, :4], x[:, 0, :, 4:] = 0.2, 0.6
    x[:, 1, :, :4], x[:, 1, :, 4:] = 0.0, 1.0
    x[:, 2] = 0.4
    out = corrupt(x, "contrast", 2)  # factor 0.5
    torch.testing.assert_close(out[0, :, 0, [0, 7]], torch.tensor([[0.3, 0.5], [0.25, 0.75], [0.4, 0.4]]))


def test_brightness_adds_to_the_hsv_value():
    gray = torch.full((1, 1, 8, 8), 0.5)
    for severity, shift in zip(SEVERITIES, CORRUPTIONS["brightness"].severities):
        torch.testing.assert_close(corrupt(gray, "brightness", severity), gray + shift)
    colours = torch.tensor([[0.2, 0.4, 0.5], [0.0, 0.0, 0.0], [0.45, 0.9, 0.0]]).view(3, 3, 1, 1).expand(3, 3, 8, 8)
    out = corrupt(colours, "brightness", 5)[:, :, 0, 0]  # + 0.3: value 0.5 -> 0.8, 0 -> 0.3, 0.9 -> 1
    torch.testing.assert_close(out, torch.tensor([[0.32, 0.64, 0.8], [0.3, 0.3, 0.3], [0.5, 1.0, 0.0]]))


def test_pixelate_averages_the_pixels_pil_bins_together_on_a_checkerboard():
    i = torch.arange(20)
    board = ((i[:, None] + i) % 2).float()[None, None]
    out = corrupt(board, "pixelate", 4)  # 20 -> 15 pixels: in each run of 4, pixels 1 and 2 share one
    paired = (i % 4 == 1) | (i % 4 == 2)
    torch.testing.assert_close(out, torch.where(paired[:, None] | paired, 0.5, board))


@pytest.mark.parametrize("size", [28, 32])
def test_pixelate_matches_pils_box_resize(size):
    image_module = pytest.importorskip("PIL.Image")
    x = torch.rand(1, 1, size, size)
    for severity, fraction in zip(SEVERITIES, CORRUPTIONS["pixelate"].severities):
        small = int(size * fraction)
        picture = image_module.fromarray(x[0, 0].numpy(), mode="F")
        box = image_module.Resampling.BOX
        expected = torch.tensor(np.asarray(picture.resize((small, small), box).resize((size, size), box)))
        torch.testing.assert_close(corrupt(x, "pixelate", severity)[0, 0], expected)


def test_jpeg_codes_one_channel_as_its_gray_rgb_image():
    gray = scene(1, 32, batch=2)
    one = corrupt(gray, "jpeg_compression", 5)
    three = corrupt(gray.expand(-1, 3, -1, -1), "jpeg_compression", 5)
    assert float((three - one).abs().max()) < 0.01
    assert float((one - gray).abs().mean()) > 0.002


# Geometric: where the content goes.


def test_rotate_by_a_half_turn_flips_both_axes_and_by_a_quarter_turn_rotates_exactly():
    x = torch.rand(4, 3, 12, 12)
    half = CORRUPTIONS["rotate"].apply(x, math.pi, seeded())
    torch.testing.assert_close(half, x.flip(-1, -2), atol=1e-5, rtol=0)
    quarter = CORRUPTIONS["rotate"].apply(x, math.pi / 2, seeded())
    for image, turned in zip(x, quarter):
        assert any(torch.allclose(turned, image.rot90(k, (-2, -1)), atol=1e-5) for k in (1, -1))


def test_rotate_turns_about_the_centre_by_the_tabled_radians():
    x = blob(29, 6.0, 0.0)
    for severity, angle in zip(SEVERITIES, CORRUPTIONS["rotate"].severities):
        cx, cy = centroid(corrupt(x, "rotate", severity, generator=seeded()))
        assert cx == pytest.approx(6 * math.cos(angle), abs=0.05)
        assert abs(cy) == pytest.approx(6 * math.sin(angle), abs=0.05)


def test_shear_keeps_the_middle_row_and_slides_the_others():
    x = torch.rand(2, 1, 15, 15)
    out = corrupt(x, "shear", 3, generator=seeded())
    torch.testing.assert_close(out[:, :, 7], x[:, :, 7], atol=1e-5, rtol=0)
    assert not torch.allclose(out[:, :, 3], x[:, :, 3], atol=0.05)


def test_scale_shrinks_towards_the_centre_by_the_tabled_factor():
    x = blob(29, 8.0, 0.0)
    for severity, factor in zip(SEVERITIES, CORRUPTIONS["scale"].severities):
        cx, cy = centroid(corrupt(x, "scale", severity))
        assert (cx, cy) == pytest.approx((8 * factor, 0.0), abs=0.05)


@pytest.mark.parametrize("size, step", [(28, 1), (56, 2)])
def test_translate_moves_a_point_by_the_tabled_pixels_of_a_28_pixel_side(size, step):
    x = point(size, size // 2, size // 2, channels=3)
    for severity, pixels in zip(SEVERITIES, CORRUPTIONS["translate"].severities):
        out = corrupt(x, "translate", severity, generator=seeded(severity))
        lit = out[0, 0].nonzero().tolist()
        assert len(lit) == 1 and float(out.sum()) == 3.0
        assert [abs(v - size // 2) for v in lit[0]] == [pixels * step, pixels * step]


def test_elastic_transform_moves_pixels_by_about_the_expected_distance():
    x = blob(28, 0.0, 0.0).expand(256, 1, 28, 28)
    shift = torch.tensor([centroid(image[None]) for image in corrupt(x, "elastic_transform", 5, generator=seeded())])
    assert 0.6 < float(shift.pow(2).mean().sqrt()) < 1.3  # about the field's 1.24 px rms along each axis, a bit
    # less for a spot 1.5 px wide, which averages the field over its neighbourhood


# The API.


def test_families_split_the_suite_in_order():
    assert sum((corruption_names(family) for family in FAMILIES), []) == corruption_names() == NAMES
    assert [len(corruption_names(family)) for family in FAMILIES] == [4, 3, 4, 5]


def test_the_docs_table_holds_the_parameters():
    rows = [line.split("|")[1:-1] for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    table = {row[0].strip(" `"): row for row in rows}
    for name, record in CORRUPTIONS.items():
        cells = table[name][3:8]
        documented = [[float(v) for v in re.findall(r"\d+(?:\.\d+)?", cell)] for cell in cells]
        tabled = [[float(v) for v in (p if isinstance(p, tuple) else (p,))] for p in record.severities]
        assert documented == tabled, name
        assert table[name][1].strip() == record.family


def test_unknown_names_and_families_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown corruption 'fog'; known: gaussian_noise, shot_noise"):
        corrupt(scene(), "fog", 1)
    with pytest.raises(ValueError, match="unknown family 'weather'; known: noise, blur, digital, geometric"):
        corruption_names("weather")


@pytest.mark.parametrize("severity", [0, 6, 2.5, True])
def test_severities_outside_one_to_five_are_refused(severity):
    with pytest.raises(ValueError, match="severity must be one of 1, 2, 3, 4, 5"):
        corrupt(scene(), "contrast", severity)


@pytest.mark.parametrize("shape", [(2, 2, 16, 16), (2, 4, 16, 16), (2, 1, 7, 16), (1, 16, 16), (0, 1, 16, 16)])
def test_pixels_of_another_shape_are_refused(shape):
    with pytest.raises(ValueError, match=r"pixels must be \(B, C, H, W\)"):
        corrupt(torch.rand(shape), "contrast", 1)


def test_integer_pixels_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        corrupt(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "contrast", 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_corrupts_on_the_device_from_a_cuda_generator(name):
    x = scene(3).cuda()
    out = corrupt(x, name, 3, generator=seeded(0, "cuda"))
    assert out.device == x.device and out.dtype == x.dtype
    assert torch.equal(out, corrupt(x, name, 3, generator=seeded(0, "cuda")))
    if not CORRUPTIONS[name].random:
        torch.testing.assert_close(out.cpu(), corrupt(x.cpu(), name, 3), atol=2e-3, rtol=0)
