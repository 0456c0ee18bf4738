"""The random draws in ``openmix.sampling``: lam, partners, coins, boxes and box masks."""

from __future__ import annotations

import pytest
import torch

from openmix.sampling import beta, box_mask, host_coin, partner_index, random_boxes, uniform


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------- lam
@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_beta_matches_beta_distribution_moments(alpha):
    lam = beta(alpha, 200_000, generator=gen(1)).double()
    variance = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # of Beta(alpha, alpha); its mean is 1/2
    assert float(lam.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(lam.var()) == pytest.approx(variance, rel=0.03)


def test_beta_is_float32_in_unit_interval():
    lam = beta(0.5, 1000, generator=gen())
    assert lam.dtype == torch.float32 and lam.shape == (1000,)
    assert bool(((lam >= 0) & (lam <= 1)).all())


def test_beta_alpha_zero_gives_ones():
    torch.testing.assert_close(beta(0.0, 7), torch.ones(7))


def test_beta_tiny_alpha_gives_no_nan():
    lam = beta(1e-3, 10_000, generator=gen(2))
    assert bool(torch.isfinite(lam).all()) and bool(((lam >= 0) & (lam <= 1)).all())


def test_beta_tiny_alpha_puts_lam_at_the_ends():
    lam = beta(1e-3, 10_000, generator=gen(2))
    near_end = (lam < 1e-3) | (lam > 1 - 1e-3)
    assert float(near_end.float().mean()) > 0.99
    assert 0.4 < float((lam > 0.5).float().mean()) < 0.6  # a fair pick of 0 or 1


def test_beta_generator_makes_draws_repeatable():
    torch.testing.assert_close(beta(1.0, 16, generator=gen(5)), beta(1.0, 16, generator=gen(5)))
    assert not torch.equal(beta(1.0, 16, generator=gen(5)), beta(1.0, 16, generator=gen(6)))


def test_uniform_range_and_shape():
    u = uniform((3, 500), 2.0, 5.0, generator=gen())
    assert u.shape == (3, 500) and u.dtype == torch.float32
    assert bool(((u >= 2.0) & (u < 5.0)).all())
    assert float(u.mean()) == pytest.approx(3.5, abs=0.1)


# --------------------------------------------------------------------- partners
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_random_pairing_is_a_permutation(batch):
    index = partner_index(batch, "random", generator=gen(batch))
    assert index.dtype == torch.int64
    assert sorted(index.tolist()) == list(range(batch))


def test_random_pairing_varies_and_repeats_with_generator():
    first = partner_index(32, "random", generator=gen(3))
    assert torch.equal(first, partner_index(32, "random", generator=gen(3)))
    assert not torch.equal(first, partner_index(32, "random", generator=gen(4)))


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_flip_pairing_matches_timm(batch):
    assert partner_index(batch, "flip").tolist() == torch.arange(batch).flip(0).tolist()


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_roll_pairing_matches_torchvision(batch):
    x = torch.arange(batch)
    assert partner_index(batch, "roll").tolist() == x.roll(1, 0).tolist()


def test_unknown_pairing_raises():
    with pytest.raises(ValueError, match="pairing"):
        partner_index(4, "shuffle")


# ------------------------------------------------------------------------ coins
def test_host_coin_extremes_are_deterministic():
    assert all(host_coin(1.0) for _ in range(20))
    assert not any(host_coin(0.0) for _ in range(20))


def test_host_coin_frequency():
    g = gen(7)
    heads = sum(host_coin(0.3, g) for _ in range(4000))
    assert 0.27 < heads / 4000 < 0.33


# ------------------------------------------------------------------------ boxes
@pytest.mark.parametrize("spatial", [(20,), (12, 20), (6, 8, 10)])
def test_random_boxes_lie_inside_and_have_the_lam_side(spatial):
    """Every box is ``[lo, hi)`` inside the image; its side is the unclipped side unless it touches a border."""
    lam = beta(1.0, 4000, generator=gen(1))
    lo, hi = random_boxes(lam, spatial, generator=gen(2))
    sizes = torch.tensor(spatial)
    assert lo.shape == hi.shape == (4000, len(spatial)) and lo.dtype == hi.dtype == torch.int64
    assert bool(((lo >= 0) & (lo <= hi) & (hi <= sizes)).all())
    cut = ((1 - lam.double()).pow(1 / len(spatial))[:, None] * sizes).floor().long()
    clipped = (lo == 0) | (hi == sizes)
    assert bool(((hi - lo == cut) | clipped).all())
    assert bool((hi - lo <= cut).all())


def test_random_boxes_are_clipped_at_the_borders():
    lam = torch.full((4000,), 0.1)  # sides of ~0.95 of the image: nearly every box is clipped
    lo, hi = random_boxes(lam, (20, 20), generator=gen(3))
    cut = int(20 * 0.9**0.5)
    assert bool((hi - lo < cut).any(1).float().mean() > 0.9)
    assert bool((lo >= 0).all()) and bool((hi <= 20).all())


def test_random_boxes_centre_is_uniform():
    lam = torch.full((20_000,), 0.98)  # side 1 on a 10x10 image: the box is its centre pixel
    lo, hi = random_boxes(lam, (10, 10), generator=gen(4))
    assert bool((hi - lo == 1).all())
    counts = torch.bincount(lo[:, 0] * 10 + lo[:, 1], minlength=100).float()
    assert float(counts.min()) > 140 and float(counts.max()) < 260  # expected 200 per pixel


def test_random_boxes_shared_gives_one_box_for_the_batch():
    lo, hi = random_boxes(torch.full((6,), 0.4), (16, 16), shared=True, generator=gen(5))
    assert bool((lo == lo[0]).all()) and bool((hi == hi[0]).all())


def test_random_boxes_lam_one_is_empty():
    lo, hi = random_boxes(torch.ones(50), (9, 7), generator=gen(6))
    assert bool(((hi - lo).prod(1) == 0).all())


@pytest.mark.parametrize("spatial", [(10,), (6, 9), (4, 5, 6)])
def test_box_mask_is_zero_exactly_inside_the_box(spatial):
    lo = torch.tensor([[1, 2, 0][: len(spatial)], [0, 0, 0][: len(spatial)]])
    hi = torch.tensor([[3, 5, 4][: len(spatial)], [0, 0, 0][: len(spatial)]])
    mask = box_mask(lo, hi, spatial)
    assert mask.shape == (2, 1, *spatial) and mask.dtype == torch.float32
    expected = torch.ones(spatial)
    expected[tuple(slice(int(a), int(b)) for a, b in zip(lo[0], hi[0]))] = 0
    torch.testing.assert_close(mask[0, 0], expected)
    torch.testing.assert_close(mask[1], torch.ones(1, *spatial))  # an empty box keeps everything


def test_box_mask_dtype():
    mask = box_mask(torch.tensor([[0, 0]]), torch.tensor([[2, 2]]), (4, 4), dtype=torch.float16)
    assert mask.dtype == torch.float16 and float(mask.sum()) == 12
