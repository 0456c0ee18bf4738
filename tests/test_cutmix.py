"""CutMix-specific behaviour beyond the shared contract: boxes in 1-D/2-D/3-D, modes, minmax, lam."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch
from scipy.stats import chi2_contingency

import openmix

NUM_CLASSES = 4


def cutmix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("cutmix", **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


def box_of(mask: torch.Tensor) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` per spatial axis of the zeros of one ``(1, *spatial)`` mask; asserts they form a box."""
    inside = mask[0] == 0
    bounds = []
    for axis in range(inside.ndim):
        other = tuple(a for a in range(inside.ndim) if a != axis)
        hit = inside.any(other) if other else inside
        where = hit.nonzero().flatten()
        bounds.append((int(where.min()), int(where.max()) + 1))
    expected = torch.zeros_like(inside)
    expected[tuple(slice(lo, hi) for lo, hi in bounds)] = True
    assert torch.equal(inside, expected), "the pasted region is not one box"
    return bounds


@pytest.mark.parametrize("shape", [(8, 2, 40), (8, 2, 12, 12, 12)], ids=["1-D", "3-D"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_boxes_in_1d_and_3d(shape, mode):
    x = torch.randn(shape)
    out = cutmix(mode=mode, seed=1)(x, labels(8))
    assert out.mask.shape == (8, 1, *shape[2:])
    torch.testing.assert_close(out.x, out.mask * x + (1 - out.mask) * x[out.index])
    torch.testing.assert_close(out.lam, out.mask.flatten(1).mean(1))
    for i in range(8):
        if out.lam[i] < 1:
            box_of(out.mask[i])


def test_3d_box_is_a_cube_of_the_lam_side_when_inside():
    mixer = cutmix(mode="elem", correct_lam=False, seed=2)
    x = torch.randn(128, 1, 16, 16, 16)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(3))
    out = mixer.apply_params(x, torch.eye(NUM_CLASSES)[labels(128)], params)
    side = ((1 - params["lam"].double()).pow(1 / 3) * 16).floor().long()
    checked = 0
    for i in range(128):
        if out.mask[i].min() == 0:
            bounds = box_of(out.mask[i])
            if all(0 < lo and hi < 16 for lo, hi in bounds):
                assert [hi - lo for lo, hi in bounds] == [int(side[i])] * 3
                checked += 1
    assert checked > 5


def test_batch_mode_shares_one_box():
    out = cutmix(mode="batch", seed=3)(torch.randn(10, 3, 16, 16), labels(10))
    assert bool((out.mask == out.mask[0]).all())
    assert bool((out.lam == out.lam[0]).all())


def test_elem_mode_draws_one_box_per_sample():
    out = cutmix(mode="elem", seed=3)(torch.randn(10, 3, 16, 16), labels(10))
    distinct = {tuple(out.mask[i].flatten().tolist()) for i in range(10)}
    assert len(distinct) >= 8
    assert out.lam.unique().numel() >= 8


def test_mask_area_is_kept_fraction_with_correct_lam():
    out = cutmix(mode="elem", seed=4)(torch.randn(32, 3, 9, 13), labels(32))
    torch.testing.assert_close(out.lam, out.mask.flatten(1).mean(1))


def test_correct_lam_false_returns_the_drawn_lam():
    mixer = cutmix(mode="elem", correct_lam=False)
    x = torch.randn(3, 1, 10, 10)
    params = {
        "lam": torch.tensor([0.36, 0.75, 0.5]),
        "index": torch.tensor([2, 0, 1]),
        "lo": torch.tensor([[0, 0], [2, 2], [7, 5]]),  # boxes as clipped at the border
        "hi": torch.tensor([[5, 3], [7, 7], [10, 10]]),
    }
    out = mixer.apply_params(x, torch.eye(NUM_CLASSES)[labels(3)], params)
    torch.testing.assert_close(out.lam, params["lam"])
    assert not torch.allclose(out.lam, out.mask.flatten(1).mean(1))


def test_correct_lam_uses_the_clipped_area():
    mixer = cutmix(mode="elem")
    params = {
        "lam": torch.tensor([0.36]),
        "index": torch.tensor([0]),
        "lo": torch.tensor([[0, 0]]),
        "hi": torch.tensor([[5, 3]]),  # an 8x8 box clipped to 5x3 at the corner
    }
    out = mixer.apply_params(torch.randn(1, 1, 10, 10), torch.eye(NUM_CLASSES)[labels(1)], params)
    torch.testing.assert_close(out.lam, torch.tensor([1 - 15 / 100]))


def test_boxes_are_clipped_at_the_borders():
    """Large boxes placed at random spill over the border; the mask keeps only their inside part."""
    mixer = cutmix(mode="elem", correct_lam=False, seed=5)
    x = torch.randn(200, 1, 12, 12)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(6))
    out = mixer.apply_params(x, torch.eye(NUM_CLASSES)[labels(200)], params)
    side = ((1 - params["lam"].double()).sqrt() * 12).floor()
    kept_area = (1 - out.mask.flatten(1).mean(1).double()) * 144
    assert bool((kept_area <= side**2 + 1e-3).all())
    assert bool((kept_area < side**2 - 1e-3).float().mean() > 0.3)  # many boxes lose a part


def test_unclipped_box_area_matches_one_minus_lam():
    """Away from the borders, the box area fraction is 1 - lam up to the floor of the side."""
    size = 64
    mixer = cutmix(mode="elem", correct_lam=False, seed=7)
    x = torch.empty(4000, 1, size, size)
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(8))
    lo, hi, lam = params["lo"], params["hi"], params["lam"].double()
    inside = ((lo > 0) & (hi < size)).all(1)
    area = (hi - lo).prod(1).double()[inside] / size**2
    gap = (1 - lam[inside]) - area
    assert int(inside.sum()) > 500
    assert bool((gap >= -1e-9).all()) and bool((gap <= 2 / size).all())  # floor loses < 1 pixel per side
    assert float(gap.mean()) < 1 / size


def test_mean_box_area_matches_the_expected_clipped_area():
    """With a uniform centre, the mean pasted area equals the exact expectation under clipping."""
    size, lam = 20, 0.64  # side floor(20 * 0.6) = 12
    lam_batch = torch.full((20_000,), lam)
    lo, hi = openmix.sampling.random_boxes(lam_batch, (size, size), generator=torch.Generator().manual_seed(11))
    cut = 12
    centres = torch.arange(size)
    per_axis = (torch.clamp(centres + (cut + 1) // 2, max=size) - torch.clamp(centres - cut // 2, min=0)).double().mean()
    expected = float(per_axis**2) / size**2
    measured = float((hi - lo).prod(1).double().mean()) / size**2
    assert measured == pytest.approx(expected, rel=0.01)
    assert expected < 1 - lam  # clipping makes boxes smaller on average


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("minmax", [(0.2, 0.8), (0.5, 0.6)])
def test_minmax_boxes_lie_inside_with_sides_in_range(minmax, mode):
    h, w = 20, 30
    mixer = cutmix(minmax=minmax, mode=mode, seed=12)
    for _ in range(40):
        out = mixer(torch.randn(6, 1, h, w), labels(6))
        for i in range(6):
            (top, bottom), (left, right) = box_of(out.mask[i])
            assert int(h * minmax[0]) <= bottom - top < int(h * minmax[1])
            assert int(w * minmax[0]) <= right - left < int(w * minmax[1])
        torch.testing.assert_close(out.lam, out.mask.flatten(1).mean(1))


def test_minmax_batch_mode_shares_the_box():
    out = cutmix(minmax=(0.2, 0.8), mode="batch", seed=13)(torch.randn(6, 1, 16, 16), labels(6))
    assert bool((out.mask == out.mask[0]).all())


def test_minmax_sides_cover_their_range():
    mixer = cutmix(minmax=(0.25, 0.75), mode="elem", seed=14)
    params = mixer.sample_params(torch.empty(4000, 1, 16, 16), generator=torch.Generator().manual_seed(15))
    sides = params["hi"] - params["lo"]
    assert set(sides.flatten().tolist()) == set(range(4, 12))
    assert set(params["lo"][:, 0].tolist()) >= {0, 16 - 4}  # top-left corner in [0, size - side]


@pytest.mark.parametrize("minmax", [(0.8, 0.2), (0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (0.2,), (0.1, 0.2, 0.3)])
def test_invalid_minmax_raises(minmax):
    with pytest.raises(ValueError, match="minmax"):
        cutmix(minmax=minmax)


@pytest.mark.parametrize("pairing, expected", [("flip", [3, 2, 1, 0]), ("roll", [3, 0, 1, 2])])
def test_fixed_pairing_pastes_from_that_partner(pairing, expected):
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    out = cutmix(pairing=pairing, mode="elem", seed=16)(x, labels(4))
    for i in range(4):
        assert set(out.x[i][out.mask[i] == 0].tolist()) <= {float(expected[i])}


def test_tiny_alpha_gives_no_nan():
    out = cutmix(alpha=1e-3, mode="elem", seed=17)(torch.randn(64, 3, 8, 8), labels(64))
    assert bool(torch.isfinite(out.x).all()) and bool(torch.isfinite(out.lam).all())


def test_prob_skipped_elements_get_no_box():
    out = cutmix(mode="elem", prob=0.5, seed=18)(torch.randn(64, 1, 8, 8), labels(64))
    skipped = out.lam == 1
    assert 5 < int(skipped.sum()) < 59
    assert bool((out.mask[skipped] == 1).all())


# ------------------------------------------------ box positions against timm's rand_bbox
def timm_boxes(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``n`` boxes ``(lo_y, hi_y, lo_x, hi_x)`` from timm's ``rand_bbox``, one per ``Beta(1, 1)`` lam."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        lam = np.random.beta(1.0, 1.0, n)
        return np.array([timm_mixup.rand_bbox(size, float(v)) for v in lam])
    finally:
        np.random.set_state(state)


def same_distribution(ours, theirs, min_count: int = 10) -> float:
    """p-value of a chi-square test that two samples of integers share one distribution.

    Values seen fewer than ``min_count`` times in both samples together are pooled.
    """
    a, b = collections.Counter(ours), collections.Counter(theirs)
    table, rare = [], [0, 0]
    for value in sorted(set(a) | set(b)):
        if a[value] + b[value] >= min_count:
            table.append([a[value], b[value]])
        else:
            rare[0] += a[value]
            rare[1] += b[value]
    if sum(rare):
        table.append(rare)
    return chi2_contingency(np.array(table).T).pvalue


def bounds(lo: torch.Tensor, hi: torch.Tensor) -> list[list[int]]:
    """Columns ``lo_y, hi_y, lo_x, hi_x`` as in ``rand_bbox``."""
    return [lo[:, 0].tolist(), hi[:, 0].tolist(), lo[:, 1].tolist(), hi[:, 1].tolist()]


def test_elem_boxes_each_have_their_own_position():
    """One batch of per-sample boxes: centres vary within the batch and bounds follow timm's per-sample boxes."""
    n, size = 4000, (24, 24)
    params = cutmix(mode="elem", correct_lam=False, seed=21).sample_params(torch.empty(n, 1, *size))
    lo, hi = params["lo"], params["hi"]
    inside = ((lo > 0) & (hi < 24)).all(1)  # unclipped: floor((lo + hi) / 2) is the drawn centre
    centres = ((lo + hi) // 2)[inside]
    assert int(inside.sum()) > 500
    assert len(set(map(tuple, centres.tolist()))) > 200 and bool((centres.float().var(0) > 10).all())
    theirs = timm_boxes(n, size, seed=22)
    for axis, ours in enumerate(bounds(lo, hi)):
        assert same_distribution(ours, theirs[:, axis].tolist()) > 1e-3, ("lo_y", "hi_y", "lo_x", "hi_x")[axis]


def test_batch_boxes_are_one_per_call_and_follow_timm():
    """Batch mode: one shared box per call (drawn on the host), distributed over calls as timm's batch box."""
    mixer = cutmix(mode="batch", correct_lam=False, seed=23)
    x = torch.empty(2, 1, 24, 24)
    los, his = [], []
    for _ in range(3000):
        params = mixer.sample_params(x)
        assert params["lo"].shape == params["hi"].shape == (1, 2)
        los.append(params["lo"])
        his.append(params["hi"])
    theirs = timm_boxes(3000, (24, 24), seed=24)
    for axis, ours in enumerate(bounds(torch.cat(los), torch.cat(his))):
        assert same_distribution(ours, theirs[:, axis].tolist()) > 1e-3, ("lo_y", "hi_y", "lo_x", "hi_x")[axis]


def test_a_shared_centre_would_fail_the_comparison():
    """The check above has power: boxes around one centre for the whole batch are told apart from timm's."""
    lam = openmix.sampling.beta(1.0, 4000, generator=torch.Generator().manual_seed(25))
    lo, hi = openmix.sampling.random_boxes(lam, (24, 24), shared=True, generator=torch.Generator().manual_seed(26))
    theirs = timm_boxes(4000, (24, 24), seed=27)
    assert min(same_distribution(ours, theirs[:, a].tolist()) for a, ours in enumerate(bounds(lo, hi))) < 1e-6


@pytest.mark.parametrize("shape", [(6, 3, 12, 20), (6, 2, 30), (4, 2, 6, 8, 10)])
def test_paste_box_slices_and_blend_agree(shape):
    """The slice paste (accelerators) and the masked blend (CPU) give the same pixels, bit for bit."""
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(shape, generator=gen)
    if len(shape) == 4:
        x = x.to(memory_format=torch.channels_last)
    index = torch.randperm(shape[0], generator=gen)
    for lam in (0.0, 0.3, 0.8, 1.0):
        lo, hi = openmix.sampling.host_box(lam, shape[2:], gen)
        sliced = openmix.mixers.cutmix.paste_box(x, index, lo, hi, slices=True)
        blended = openmix.mixers.cutmix.paste_box(x, index, lo, hi, slices=False)
        assert torch.equal(sliced[0], blended[0]) and sliced[1] == blended[1] and torch.equal(sliced[2], blended[2])
        assert sliced[0].stride() == blended[0].stride() == x.stride()
