"""GridMix: a grid of holes inside a region shows the partner; lam is the kept area."""

import math

import pytest
import torch

import openmix
from helpers import images


def draw(mode="elem", shape=(8, 3, 32, 32), seed=0, **kwargs):
    """Mix a batch of ``shape``; return the input, the output and the drawn parameters."""
    mixer = openmix.build("gridmix", num_classes=5, mode=mode, **kwargs)
    x = torch.rand(shape)
    params = mixer.sample_params(x, torch.Generator().manual_seed(seed))
    return x, mixer.apply_params(x, torch.eye(5)[torch.arange(shape[0]) % 5], params), params


def reference_holes(lam, lo, size, cell, height, width):
    """OpenMixup's ``rand_grid`` hole loop for one sample's drawn grid: 1 where the partner shows."""
    (top, left), (cut_h, cut_w), (cell_h, cell_w) = lo, size, cell
    ratio = math.sqrt(1 - lam)
    hole_w = min(max(int(cell_w * ratio), 1), cell_w - 1)
    hole_h = min(max(int(cell_h * ratio), 1), cell_h - 1)
    mask = torch.zeros(height, width)
    for i in range(math.ceil(cut_w / cell_w) + 1):
        for j in range(math.ceil(cut_h / cell_h) + 1):
            x1, y1 = min(cell_w * i, cut_w), min(cell_h * j, cut_h)
            x2, y2 = min(x1 + hole_w, cut_w), min(y1 + hole_h, cut_h)
            mask[top + y1 : top + y2, left + x1 : left + x2] = 1
    return mask


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mask_matches_openmixup_hole_loop(mode):
    _, out, params = draw(mode, seed=1)
    for i in range(params["lo"].shape[0]):
        args = [params[k][i].tolist() for k in ("lo", "size", "cell")]
        holes = reference_holes(float(params["lam"][i]), *args, 32, 32)
        torch.testing.assert_close(out.mask[i, 0], 1 - holes)


def test_grid_geometry_follows_the_drawn_ratios():
    _, _, params = draw("elem", shape=(256, 1, 32, 32), seed=2)
    size, cell = params["size"].float(), params["cell"].float()
    area = size.prod(1) / 1024
    assert bool((area >= 0.5 - 2 / 32).all()) and bool((area <= 1).all())
    assert bool((size[:, 0] <= 32).all()) and bool((params["lo"] + params["size"] <= 32).all())
    holes_across = (size[:, 1] / cell[:, 1]).ceil()
    assert set(holes_across.long().tolist()) <= set(range(2, 7))
    assert bool((cell[:, 0] == cell[:, 1]).all())  # hole_aspect_ratio = 1: square cells


def test_fixed_arguments_give_a_fixed_grid():
    _, out, params = draw("elem", shape=(4, 1, 32, 32), n_holes=4, cut_area_ratio=1.0, cut_aspect_ratio=1.0)
    assert params["lo"].tolist() == [[0, 0]] * 4 and params["cell"].tolist() == [[8, 8]] * 4
    partner_cols = (out.mask[:, 0] == 0).any(1)  # (B, W): columns holding a hole
    starts = partner_cols[:, 1:] & ~partner_cols[:, :-1]
    assert (starts.sum(1) + partner_cols[:, 0]).tolist() == [4] * 4


def test_region_and_cells_follow_openmixup_formulas():
    kwargs = dict(n_holes=3, cut_area_ratio=0.6, cut_aspect_ratio=1.5, hole_aspect_ratio=0.7)
    _, _, params = draw("batch", **kwargs)
    cut_w = int(math.sqrt(int(32 * 32 * 0.6) / 1.5))  # OpenMixup's rand_grid, by hand
    cell_w = math.ceil(cut_w / 3)
    assert params["size"].tolist() == [[int(cut_w * 1.5), cut_w]]
    assert params["cell"].tolist() == [[int(cell_w * 0.7), cell_w]]


def test_hole_size_follows_lam():
    mixer = openmix.build("gridmix", num_classes=5, mode="elem", seed=0)
    x = images(3, size=32)
    params = mixer.sample_params(x)
    params["lam"] = torch.tensor([0.0, 0.5, 0.95])
    params.update({k: v[:1].expand(3, 2) for k, v in params.items() if k in ("lo", "size", "cell")})
    _, lam, _ = mixer.mix(x, params)
    assert float(lam[0]) < float(lam[1]) < float(lam[2]) < 1.0


def test_lam_one_pastes_nothing():
    mixer = openmix.build("gridmix", num_classes=5, mode="elem", seed=0)
    x = images(2, size=32)
    params = mixer.sample_params(x)
    params["lam"] = torch.ones(2)
    mixed, lam, mask = mixer.mix(x, params)
    assert torch.equal(mixed, x) and bool((lam == 1).all()) and bool((mask == 1).all())


def test_batch_mode_shares_one_grid():
    _, out, params = draw("batch")
    assert params["lo"].shape == (1, 2) and bool((out.mask == out.mask[:1]).all())


def test_elem_mode_draws_one_grid_per_sample():
    _, out, _ = draw("elem")
    assert len({tuple(m.flatten().tolist()) for m in out.mask}) == 8


def test_small_images_clamp_the_number_of_holes():
    _, out, params = draw("elem", shape=(16, 1, 8, 8), n_holes=6)  # OpenMixup asserts n_holes <= width // 2
    assert bool(((params["size"][:, 1] / params["cell"][:, 1]).ceil() <= 4).all())
    assert bool(torch.isfinite(out.x).all())


def test_only_images_are_accepted():
    with pytest.raises(ValueError, match="4-D"):
        openmix.build("gridmix", num_classes=5)(torch.rand(2, 3, 16), torch.arange(2))


def test_repr_shows_grid_arguments():
    text = repr(openmix.build("gridmix", n_holes=3, hole_aspect_ratio=(0.5, 2)))
    assert "n_holes=3" in text and "hole_aspect_ratio=(0.5, 2.0)" in text and "cut_area_ratio=(0.5, 1.0)" in text


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n_holes": 0}, ValueError),
        ({"n_holes": (6, 2)}, ValueError),
        ({"n_holes": 2.5}, TypeError),
        ({"n_holes": (1, 2, 3)}, TypeError),
        ({"hole_aspect_ratio": 0.0}, ValueError),
        ({"cut_area_ratio": (0.5, 1.5)}, ValueError),
        ({"cut_aspect_ratio": "wide"}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        openmix.build("gridmix", **kwargs)


def test_host_grid_mask_numpy_and_device_views_agree():
    """Batch mode's grid mask: NumPy profiles (CPU) and filled views of a device mask (accelerators)."""
    from openmix.mixers.gridmix import _host_grid_mask

    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        height, width = (int(v) for v in torch.randint(4, 40, (2,), generator=gen))
        size = [int(torch.randint(1, height + 1, (), generator=gen)), int(torch.randint(1, width + 1, (), generator=gen))]
        lo = [int(torch.randint(0, height - size[0] + 1, (), generator=gen)), int(torch.randint(0, width - size[1] + 1, (), generator=gen))]
        cell = [int(torch.randint(1, max(2, s) + 1, (), generator=gen)) for s in size]
        lam = float(torch.rand((), generator=gen))
        a, kept_a = _host_grid_mask((height, width), lo, size, cell, lam, torch.device("cpu"), numpy=True)
        b, kept_b = _host_grid_mask((height, width), lo, size, cell, lam, torch.device("cpu"), numpy=False)
        assert torch.equal(a, b) and kept_a == kept_b and a.dtype == b.dtype == torch.float32
