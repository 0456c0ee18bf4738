"""mixup-specific behaviour beyond the shared contract: any input rank, the lam distribution, modes."""

from __future__ import annotations

import pytest
import torch

import openmix

NUM_CLASSES = 4


def mixup(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("mixup", **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


def expected_blend(x: torch.Tensor, out: openmix.MixOutput) -> torch.Tensor:
    lam = out.lam.view(-1, *([1] * (x.ndim - 1)))
    return lam * x + (1 - lam) * x[out.index]


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize(
    "shape",
    [(6, 32), (6, 3, 20), (6, 2, 4, 5, 6)],
    ids=["features (B, D)", "1-D (B, C, L)", "3-D (B, C, D, H, W)"],
)
def test_any_rank_is_blended(shape, mode):
    x = torch.randn(shape)
    out = mixup(mode=mode, seed=0)(x, labels(6))
    assert out.x.shape == x.shape and out.mask is None
    torch.testing.assert_close(out.x, expected_blend(x, out))


def test_feature_vectors_keep_targets_consistent():
    x = torch.randn(8, 16)
    out = mixup(mode="elem", seed=1)(x, labels(8))
    onehot = torch.nn.functional.one_hot(labels(8), NUM_CLASSES).float()
    torch.testing.assert_close(out.y, out.lam[:, None] * onehot + (1 - out.lam[:, None]) * onehot[out.index])


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_elem_lam_follows_beta(alpha):
    out = mixup(alpha=alpha, mode="elem", seed=2)(torch.zeros(50_000, 1), labels(50_000))
    lam = out.lam.double()
    assert float(lam.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(lam.var()) == pytest.approx(1.0 / (4.0 * (2.0 * alpha + 1.0)), rel=0.05)


def test_batch_lam_across_calls_follows_beta():
    mixer, x, y = mixup(alpha=0.5, seed=3), torch.zeros(2, 1), labels(2)
    lam = torch.stack([mixer(x, y).lam[0] for _ in range(3000)]).double()
    assert float(lam.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(lam.var()) == pytest.approx(1.0 / 8.0, rel=0.08)


def test_batch_mode_shares_one_lam():
    out = mixup(mode="batch", seed=4)(torch.randn(16, 3, 4, 4), labels(16))
    assert bool((out.lam == out.lam[0]).all())


def test_elem_mode_draws_one_lam_per_sample():
    out = mixup(mode="elem", seed=4)(torch.randn(16, 3, 4, 4), labels(16))
    assert out.lam.unique().numel() == 16


def test_mixed_values_use_the_returned_lam():
    """A sample paired with a constant partner lands exactly at lam between the two values."""
    x = torch.cat([torch.ones(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)])
    out = mixup(pairing="flip", seed=5)(x, labels(2))
    torch.testing.assert_close(out.x[0], out.lam[0].expand(1, 3, 3))
    torch.testing.assert_close(out.x[1], (1 - out.lam[1]).expand(1, 3, 3))


def test_alpha_zero_returns_the_batch_unchanged():
    x = torch.randn(5, 3, 4, 4)
    out = mixup(alpha=0.0, mode="elem", seed=6)(x, labels(5))
    torch.testing.assert_close(out.x, x)
    torch.testing.assert_close(out.lam, torch.ones(5))


def test_tiny_alpha_gives_no_nan():
    x = torch.randn(64, 3, 4, 4)
    out = mixup(alpha=1e-3, mode="elem", seed=7)(x, labels(64))
    assert bool(torch.isfinite(out.x).all()) and bool(torch.isfinite(out.y).all())
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())


@pytest.mark.parametrize("pairing, expected", [("flip", [4, 3, 2, 1, 0]), ("roll", [4, 0, 1, 2, 3])])
def test_fixed_pairing_mixes_with_that_partner(pairing, expected):
    x = torch.arange(5, dtype=torch.float32).view(5, 1)
    out = mixup(pairing=pairing, seed=8)(x, labels(5))
    torch.testing.assert_close(out.x[:, 0], out.lam * x[:, 0] + (1 - out.lam) * x[expected, 0])


def test_random_pairing_changes_between_calls():
    mixer = mixup(seed=9)
    x, y = torch.randn(32, 3), labels(32)
    assert not torch.equal(mixer(x, y).index, mixer(x, y).index)


def test_input_is_not_modified():
    x = torch.randn(6, 3, 4, 4)
    before = x.clone()
    mixup(mode="elem", seed=10)(x, labels(6))
    torch.testing.assert_close(x, before)
