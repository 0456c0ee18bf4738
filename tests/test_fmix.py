"""FMix: Fourier masks, exact kept fraction, 1-D/3-D inputs, soft edges."""

import pytest
import torch

import openmix
from helpers import images
from openmix.mixers.fmix import _descending_order, binarise, fourier_field


def draw(mode="elem", shape=(8, 3, 16, 16), seed=0, **kwargs):
    """Mix a batch of ``shape``; return the mixer's output and the parameters it drew."""
    mixer = openmix.build("fmix", num_classes=5, mode=mode, **kwargs)
    x = torch.rand(shape)
    params = mixer.sample_params(x, torch.Generator().manual_seed(seed))
    return mixer.apply_params(x, torch.eye(5)[torch.arange(shape[0]) % 5], params), params


def neighbour_agreement(mask):
    """Fraction of horizontally adjacent pixel pairs with the same value, per sample."""
    return (mask[..., 1:] == mask[..., :-1]).flatten(1).float().mean(1)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_kept_fraction_is_rounded_lam(mode):
    out, params = draw(mode, seed=1)
    n = 16 * 16
    torch.testing.assert_close(out.lam, (params["lam"] * n).round() / n)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}


def test_batch_mode_shares_one_mask():
    out, _ = draw("batch")
    assert bool((out.mask == out.mask[:1]).all()) and bool((out.lam == out.lam[0]).all())


def test_elem_mode_draws_one_mask_per_sample():
    out, _ = draw("elem")
    assert len({tuple(m.flatten().tolist()) for m in out.mask}) == 8


@pytest.mark.parametrize("shape", [(4, 2, 40), (4, 1, 6, 8, 10)], ids=["1d", "3d"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_one_and_three_spatial_dims(shape, mode):
    out, params = draw(mode, shape=shape)
    n = torch.Size(shape[2:]).numel()
    assert out.x.shape == shape and out.mask.shape == (4, 1, *shape[2:])
    torch.testing.assert_close(out.lam, (params["lam"] * n).round() / n)


def test_masks_are_low_frequency():
    out, params = draw("elem", shape=(16, 1, 32, 32), seed=2)
    white = (torch.rand(16, 1, 32, 32) < params["lam"].view(-1, 1, 1, 1)).float()  # same lam, no structure
    assert float(neighbour_agreement(out.mask).mean()) > 0.85
    assert float(neighbour_agreement(out.mask).mean()) > float(neighbour_agreement(white).mean()) + 0.2


def test_larger_decay_power_gives_smoother_masks():
    smooth, _ = draw("elem", shape=(32, 1, 32, 32), decay_power=4.0)
    rough, _ = draw("elem", shape=(32, 1, 32, 32), decay_power=1.0)
    assert float(neighbour_agreement(smooth.mask).mean()) > float(neighbour_agreement(rough.mask).mean())


def test_max_soft_softens_the_edge():
    out, params = draw("elem", max_soft=0.1, seed=3)
    soft = (out.mask > 0) & (out.mask < 1)
    assert bool(soft.flatten(1).any(1)[(params["lam"] > 0.05) & (params["lam"] < 0.95)].all())
    torch.testing.assert_close(out.lam, (params["lam"] * 256).round() / 256)


def test_binarise_keeps_the_top_pixels():
    field = torch.randn(5, 64)
    lam = torch.tensor([0.0, 0.2, 0.5, 0.93, 1.0])
    mask = binarise(field, lam)
    for row in range(5):
        keep = int(round(float(lam[row]) * 64))
        top = field[row].argsort(descending=True)[:keep]
        assert int(mask[row].sum()) == keep and bool((mask[row, top] == 1).all())


def test_binarise_soft_ramp_follows_the_official_linspace():
    field = torch.arange(20.0, 0.0, -1.0)[None]  # already in descending order
    mask = binarise(field, torch.tensor([0.5]), max_soft=0.15)  # cut at 10, soft = 3 pixels each side
    expected = torch.cat([torch.ones(7), torch.linspace(1, 0, 6), torch.zeros(7)])
    torch.testing.assert_close(mask[0], expected)


def test_flat_field_gives_exact_count_and_no_nan():
    mask = binarise(torch.zeros(3, 4, 4), torch.tensor([0.25, 0.5, 1.0]), max_soft=0.2)
    assert bool(torch.isfinite(mask).all())
    torch.testing.assert_close(mask.sum((1, 2)), torch.tensor([4.0, 8.0, 16.0]))


def test_huge_decay_power_stays_finite():
    field = fourier_field(2, (16, 16), decay_power=1e4, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(field).all())


def test_descending_order_matches_argsort():
    values = torch.randn(7, 300)
    torch.testing.assert_close(_descending_order(values), values.argsort(1, descending=True))


def test_skipped_samples_keep_everything():
    out = openmix.build("fmix", num_classes=5, mode="elem", prob=0.5, seed=0)(images(32), torch.arange(32) % 5)
    skipped = out.lam == 1
    assert 0 < int(skipped.sum()) < 32 and bool((out.mask[skipped] == 1).all())


def test_repr_shows_fmix_arguments():
    text = repr(openmix.build("fmix", decay_power=2, max_soft=0.1))
    assert "decay_power=2.0" in text and "max_soft=0.1" in text


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"decay_power": -1.0}, ValueError),
        ({"decay_power": float("inf")}, ValueError),
        ({"decay_power": "3"}, TypeError),
        ({"max_soft": 0.6}, ValueError),
        ({"max_soft": -0.1}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        openmix.build("fmix", **kwargs)


# ------------------------------------------- the field's distribution (see fourier_field's docstring)
def reflected(field: torch.Tensor) -> torch.Tensor:
    """``f(-n mod size)`` of ``(n, H, W)`` fields: the half-turn under which the official FMix fields are even."""
    return torch.roll(torch.flip(field, (1, 2)), (1, 1), (1, 2))


def test_fields_have_no_half_turn_symmetry():
    """The official code's real spectrum gives ``f(n) = f(-n)`` exactly (correlation 1, symmetric masks);
    openmix's random phases do not: only the constant term is symmetric."""
    field = fourier_field(400, (32, 32), generator=torch.Generator().manual_seed(0)).double()
    field = field - field.mean((1, 2), keepdim=True)
    corr = (field * reflected(field)).sum((1, 2)) / field.square().sum((1, 2))
    assert abs(float(corr.mean())) < 0.1 and float(corr.min()) < -0.5
    masks = binarise(field.float(), torch.full((400,), 0.5))
    agree = (masks == reflected(masks)).flatten(1).float().mean(1)  # 1.0 for every official mask
    assert float(agree.mean()) < 0.75


def test_fields_are_stationary():
    """Every pixel has the same distribution; official fields vary twice as much at ``n = 0`` and ``n = size / 2``."""
    field = fourier_field(4000, (16, 16), generator=torch.Generator().manual_seed(1)).double()
    var = field.var(0)
    for pixel in [(0, 0), (8, 8), (0, 8), (5, 11)]:
        assert float(var[pixel] / var.mean()) == pytest.approx(1.0, abs=0.12), pixel


def test_masks_are_as_rough_along_the_width_as_along_the_height():
    """Isotropic decay; the official masks are rougher along the last axis (its coefficients get half their frequency's decay)."""
    out, _ = draw("elem", shape=(400, 1, 64, 64), seed=4)
    mask = out.mask[:, 0]
    vertical = float((mask[:, 1:] == mask[:, :-1]).float().mean())
    horizontal = float((mask[:, :, 1:] == mask[:, :, :-1]).float().mean())
    assert vertical == pytest.approx(horizontal, abs=0.01)
