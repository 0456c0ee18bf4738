"""Losses: identities between them, parity with timm, the decoupled mixup regulariser, bad input."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy as TimmBCE

import openmix
from openmix import losses
from openmix.losses import (
    BinaryCrossEntropy,
    DecoupledMixupLoss,
    MixupCrossEntropy,
    SoftTargetCrossEntropy,
    binary_cross_entropy,
    decoupled_mixup_loss,
    mixup_cross_entropy,
    soft_cross_entropy,
)

B, C = 6, 5


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(B, C, generator=torch.Generator().manual_seed(0)) * 3


def ids(seed: int) -> torch.Tensor:
    return torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed))


def soft(seed: int) -> torch.Tensor:
    return torch.rand(B, C, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def onehot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, C).float()


# ------------------------------------------------------------- cross-entropy
def test_soft_cross_entropy_of_one_hot_targets_is_cross_entropy(logits):
    y = ids(1)
    torch.testing.assert_close(soft_cross_entropy(logits, onehot(y)), F.cross_entropy(logits, y))
    torch.testing.assert_close(soft_cross_entropy(logits, y, "none"), F.cross_entropy(logits, y, reduction="none"))


@pytest.mark.parametrize("lam", [0.3, torch.tensor(0.8), torch.linspace(0, 1, B)], ids=["float", "0-d", "per-sample"])
@pytest.mark.parametrize("kind", ["ids", "soft"])
def test_mixup_cross_entropy_is_soft_cross_entropy_of_the_mixed_target(logits, lam, kind):
    y_a, y_b = (ids(1), ids(2)) if kind == "ids" else (soft(1), soft(2))
    dense_a, dense_b = (onehot(y_a), onehot(y_b)) if kind == "ids" else (y_a, y_b)
    weight = lam.view(-1, 1) if isinstance(lam, torch.Tensor) and lam.ndim else lam
    mixed = weight * dense_a + (1 - weight) * dense_b
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            mixup_cross_entropy(logits, y_a, y_b, lam, reduction), soft_cross_entropy(logits, mixed, reduction)
        )


def test_mixup_cross_entropy_of_a_mixer_output(logits):
    y = ids(3)
    out = openmix.build("mixup", num_classes=C, mode="elem", seed=0)(torch.rand(B, 3, 4, 4), y)
    torch.testing.assert_close(mixup_cross_entropy(logits, y, y[out.index], out.lam), soft_cross_entropy(logits, out.y))


# ----------------------------------------------------------------------- BCE
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"smoothing": 0.1}, {"target_threshold": 0.2}, {"smoothing": 0.2, "pos_weight": 2.0},
     {"pos_weight": [1.0, 2.0, 3.0, 4.0, 5.0]}],
)
@pytest.mark.parametrize("kind", ["ids", "soft"])
def test_binary_cross_entropy_matches_timm(logits, kwargs, kind):
    target = ids(4) if kind == "ids" else soft(4)
    timm_kwargs = {"smoothing": 0.0, **kwargs}
    if isinstance(timm_kwargs.get("pos_weight"), list):
        timm_kwargs["pos_weight"] = torch.tensor(timm_kwargs["pos_weight"])
    expected = TimmBCE(**timm_kwargs)(logits, target)
    torch.testing.assert_close(binary_cross_entropy(logits, target, **kwargs), expected)
    torch.testing.assert_close(BinaryCrossEntropy(**kwargs)(logits, target), expected)


def test_binary_cross_entropy_reductions(logits):
    target = soft(5)
    full = binary_cross_entropy(logits, target, reduction="none")
    assert full.shape == (B, C)
    torch.testing.assert_close(binary_cross_entropy(logits, target, reduction="sum"), full.sum())
    torch.testing.assert_close(binary_cross_entropy(logits, target), full.mean())


# ------------------------------------------------------------ decoupled mixup
def test_decoupled_equals_cross_entropy_without_mixing(logits):
    y_a, y_b = ids(6), ids(7)
    ce = F.cross_entropy(logits, y_a)
    torch.testing.assert_close(decoupled_mixup_loss(logits, (y_a, y_b, 1.0)), ce)
    torch.testing.assert_close(decoupled_mixup_loss(logits, (y_a, y_a, 0.4)), ce)  # paired with its own class
    torch.testing.assert_close(decoupled_mixup_loss(logits, onehot(y_a)), ce)


def test_decoupled_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    lam, eta = 0.7, 0.3
    e = [math.exp(v) for v in (1.0, 2.0, 3.0, 0.5)]
    mce = -(lam * math.log(e[0] / sum(e)) + (1 - lam) * math.log(e[2] / sum(e)))
    # class 0 scored without class 2, class 2 without class 0
    dm = -(lam * math.log(e[0] / (e[0] + e[1] + e[3])) + (1 - lam) * math.log(e[2] / (e[2] + e[1] + e[3])))
    got = decoupled_mixup_loss(z, (torch.tensor([0]), torch.tensor([2]), lam), eta=eta)
    assert float(got) == pytest.approx(mce + eta * dm, rel=1e-6)


def test_decoupled_with_eta_zero_is_mixup_cross_entropy(logits):
    y_a, y_b, lam = ids(8), ids(9), torch.rand(B)
    torch.testing.assert_close(
        decoupled_mixup_loss(logits, (y_a, y_b, lam), eta=0.0), mixup_cross_entropy(logits, y_a, y_b, lam)
    )


def test_decoupled_is_symmetric_in_the_pair(logits):
    y_a, y_b, lam = ids(10), ids(11), torch.rand(B)
    torch.testing.assert_close(
        decoupled_mixup_loss(logits, (y_a, y_b, lam), reduction="none"),
        decoupled_mixup_loss(logits, (y_b, y_a, 1 - lam), reduction="none"),
    )


def test_decoupled_accepts_a_mixer_output_and_soft_targets(logits):
    y = ids(12)
    out = openmix.build("cutmix", num_classes=C, mode="elem", seed=1)(torch.rand(B, 3, 8, 8), y)
    expected = decoupled_mixup_loss(logits, (y, y[out.index], out.lam))
    torch.testing.assert_close(decoupled_mixup_loss(logits, out), expected)
    torch.testing.assert_close(decoupled_mixup_loss(logits, out.y), expected)
    torch.testing.assert_close(DecoupledMixupLoss()(logits, out), expected)


def test_label_smoothing_changes_only_the_cross_entropy_part(logits):
    y_a, y_b, lam = ids(13), ids(14), torch.rand(B) * 0.8 + 0.1
    mixed = lam[:, None] * onehot(y_a) + (1 - lam[:, None]) * onehot(y_b)
    smoothed = mixed * 0.8 + 0.2 / C
    plain = decoupled_mixup_loss(logits, mixed, reduction="none") - soft_cross_entropy(logits, mixed, "none")
    smooth = decoupled_mixup_loss(logits, smoothed, reduction="none") - soft_cross_entropy(logits, smoothed, "none")
    torch.testing.assert_close(smooth, plain)
    assert bool((plain[y_a != y_b] > 0).all())


def test_decoupled_is_finite_with_a_gradient_for_extreme_logits():
    z = (torch.randn(B, C, generator=torch.Generator().manual_seed(15)) * 1e4).requires_grad_()
    loss = decoupled_mixup_loss(z, (ids(16), ids(17), torch.rand(B)))
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(z.grad).all()) and bool(z.grad.abs().sum() > 0)


def test_decoupled_with_every_class_mixed_is_finite():
    z = torch.randn(3, 2, requires_grad=True)
    loss = decoupled_mixup_loss(z, (torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]), 0.3))
    loss.backward()
    assert bool(torch.isfinite(z.grad).all())


# -------------------------------------------------------- modules, bad input
def test_modules_call_their_functions(logits):
    y_a, y_b = ids(18), ids(19)
    torch.testing.assert_close(SoftTargetCrossEntropy("sum")(logits, y_a), soft_cross_entropy(logits, y_a, "sum"))
    torch.testing.assert_close(MixupCrossEntropy()(logits, y_a, y_b, 0.3), mixup_cross_entropy(logits, y_a, y_b, 0.3))
    torch.testing.assert_close(
        DecoupledMixupLoss(eta=0.5, reduction="none")(logits, (y_a, y_b, 0.3)),
        decoupled_mixup_loss(logits, (y_a, y_b, 0.3), eta=0.5, reduction="none"),
    )


@pytest.mark.parametrize("module", [SoftTargetCrossEntropy, MixupCrossEntropy, BinaryCrossEntropy, DecoupledMixupLoss])
def test_modules_check_reduction_when_built(module):
    with pytest.raises(ValueError, match="reduction"):
        module(reduction="avg")


@pytest.mark.parametrize(
    "call",
    [
        lambda z, t: soft_cross_entropy(z, t),
        lambda z, t: mixup_cross_entropy(z, t, t, 0.5),
        lambda z, t: binary_cross_entropy(z, t),
        lambda z, t: decoupled_mixup_loss(z, t),
    ],
    ids=["soft", "mixup", "bce", "decoupled"],
)
@pytest.mark.parametrize(
    "target", [torch.zeros(B, C + 1), torch.zeros(B + 1, dtype=torch.long)], ids=["width", "batch"]
)
def test_shape_mismatch_names_both_shapes(logits, call, target):
    with pytest.raises(ValueError, match=re.escape(f"{tuple(target.shape)}") + ".*" + re.escape(f"{(B, C)}")):
        call(logits, target)


def test_bad_lam_shape(logits):
    with pytest.raises(ValueError, match="lam"):
        mixup_cross_entropy(logits, ids(1), ids(2), torch.rand(B + 1))


def test_bad_reduction(logits):
    with pytest.raises(ValueError, match="reduction"):
        soft_cross_entropy(logits, soft(1), "avg")


def test_decoupled_target_type(logits):
    with pytest.raises(TypeError, match="MixOutput"):
        decoupled_mixup_loss(logits, [ids(1), ids(2)])


def test_public_names():
    functions = {"soft_cross_entropy", "mixup_cross_entropy", "binary_cross_entropy", "decoupled_mixup_loss"}
    assert set(losses.__all__) >= functions
