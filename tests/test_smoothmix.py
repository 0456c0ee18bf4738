"""SmoothMix beyond the shared contract: a smooth Gaussian mask, its ranges, modes and shapes."""

from __future__ import annotations

import math

import pytest
import torch

import openmix

NUM_CLASSES = 4


def smoothmix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("smoothmix", **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mask_is_in_unit_interval_and_smooth(mode):
    size = 32
    out = smoothmix(mode=mode, seed=0)(torch.rand(64, 3, size, size), labels(64))
    assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
    # |dG/dp| <= 1 / (sigma * sqrt(e)) and sigma >= 0.25 * size: a bounded step between neighbours
    bound = 1 / (0.25 * size * math.sqrt(math.e)) + 1e-6
    assert float(out.mask.diff(dim=2).abs().max()) <= bound
    assert float(out.mask.diff(dim=3).abs().max()) <= bound


def test_mask_is_one_minus_the_drawn_gaussian():
    mixer = smoothmix(mode="elem", seed=1)
    x = torch.rand(6, 3, 12, 20)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(2))
    _, lam, mask = mixer.mix(x, params)
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    c, s = params["centre"][:, :, None, None], params["sigma"][:, :, None, None]
    blob = torch.exp(-((rows - c[:, 0]) ** 2) / (2 * s[:, 0] ** 2) - (cols - c[:, 1]) ** 2 / (2 * s[:, 1] ** 2))
    torch.testing.assert_close(mask[:, 0], 1 - blob)
    torch.testing.assert_close(lam, mask.flatten(1).mean(1))


def test_centre_and_sigma_ranges_follow_openmixup():
    mixer = smoothmix(mode="elem", seed=3)
    params = mixer.sample_params(torch.rand(2000, 1, 16, 24), generator=torch.Generator().manual_seed(4))
    sizes = torch.tensor([16.0, 24.0])
    centre, scale = params["centre"], params["sigma"] / sizes
    assert bool(((centre >= -0.5) & (centre < sizes - 0.5)).all())
    assert float(centre[:, 0].mean()) == pytest.approx(7.5, abs=0.5)
    torch.testing.assert_close(scale[:, 0], scale[:, 1])  # one blob scale for both axes
    assert 0.25 <= float(scale.min()) and float(scale.max()) < 0.5
    assert float(scale.mean()) == pytest.approx(0.375, abs=0.01)


def test_sigma_range_is_configurable():
    params = smoothmix(mode="elem", sigma=(0.1, 0.1), seed=5).sample_params(torch.rand(8, 3, 10, 10))
    torch.testing.assert_close(params["sigma"], torch.full((8, 2), 1.0))


def test_batch_mode_shares_one_mask_and_elem_mode_does_not():
    x = torch.rand(10, 3, 16, 16)
    batch = smoothmix(mode="batch", seed=6)(x, labels(10))
    assert bool((batch.mask == batch.mask[0]).all()) and bool((batch.lam == batch.lam[0]).all())
    elem = smoothmix(mode="elem", seed=6)(x, labels(10))
    assert elem.lam.unique().numel() == 10


def test_skipped_samples_keep_their_pixels_exactly():
    x = torch.rand(32, 3, 16, 16)
    out = smoothmix(mode="elem", prob=0.5, seed=7)(x, labels(32))
    skipped = out.lam == 1
    assert 0 < int(skipped.sum()) < 32
    assert bool((out.mask[skipped] == 1).all())
    assert torch.equal(out.x[skipped], x[skipped])
    assert bool((out.lam[~skipped] < 1).all())


@pytest.mark.parametrize("shape", [(6, 2, 40), (6, 2, 8, 10, 12)], ids=["1-D", "3-D"])
def test_one_and_three_spatial_axes(shape):
    x = torch.rand(shape)
    out = smoothmix(mode="elem", seed=8)(x, labels(6))
    assert out.mask.shape == (6, 1, *shape[2:])
    torch.testing.assert_close(out.x, out.mask * x + (1 - out.mask) * x[out.index])
    torch.testing.assert_close(out.lam, out.mask.flatten(1).mean(1))


def test_has_no_alpha():
    with pytest.raises(TypeError, match="alpha"):
        smoothmix(alpha=0.2)
    assert "alpha" not in repr(smoothmix())


@pytest.mark.parametrize("sigma", [(0.5, 0.25), (0.0, 0.5), (-0.1, 0.2)])
def test_bad_sigma_range(sigma):
    with pytest.raises(ValueError, match="sigma"):
        smoothmix(sigma=sigma)


def test_sigma_must_be_a_pair():
    with pytest.raises(TypeError, match="sigma"):
        smoothmix(sigma=0.3)


def test_repr_shows_a_non_default_sigma():
    assert "sigma=(0.2, 0.3)" in repr(smoothmix(sigma=(0.2, 0.3)))
    assert "sigma" not in repr(smoothmix())
