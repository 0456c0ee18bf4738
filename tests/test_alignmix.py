"""AlignMix: the Sinkhorn plan (marginals, the official iterates and stopping rule), the aligned
mix, the training step through mix_step, MixupClassifier and openmix-train, errors, draws."""

from __future__ import annotations

import collections
import copy
import math

import pytest
import torch
from torch import nn

import openmix
from openmix.losses import soft_cross_entropy
from openmix.mixers.alignmix import align_mix, feature_cost, sinkhorn
from helpers import assert_lightning_trains, assert_steps_train_every_parameter
from helpers import seeded_batch as batch
from helpers import tiny_convnet as convnet
from openmix.training import mix_step

NUM_CLASSES = 10  # as helpers.tiny_convnet and helpers.seeded_batch
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def alignmix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("alignmix", **kwargs)


def official_sinkhorn(cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, tol: float = 0.1):
    """The official SinkhornDistance restated: potentials in cost units, a host check every iteration.
    Returns the plan and the number of iterations run."""
    batch, n, m = cost.shape
    log_mu = torch.log(torch.full((batch, n), 1.0 / n, dtype=cost.dtype) + 1e-8)
    log_nu = torch.log(torch.full((batch, m), 1.0 / m, dtype=cost.dtype) + 1e-8)
    u, v = torch.zeros(batch, n, dtype=cost.dtype), torch.zeros(batch, m, dtype=cost.dtype)

    def scaled(u, v):
        return (-cost + u[:, :, None] + v[:, None, :]) / eps

    for it in range(1, max_iter + 1):
        previous = u
        u = eps * (log_mu - torch.logsumexp(scaled(u, v), dim=2)) + u
        v = eps * (log_nu - torch.logsumexp(scaled(u, v), dim=1)) + v
        if (u - previous).abs().sum(1).mean() < tol:
            break
    return torch.exp(scaled(u, v)), it


def random_costs(scale: float, seed: int = 0, batch: int = 6, n: int = 9, m: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(batch, 4, n, generator=g, dtype=torch.float64), torch.randn(batch, 4, m, generator=g, dtype=torch.float64)
    return feature_cost(a * scale, b * scale)


# ------------------------------------------------------------------------ Sinkhorn
@pytest.mark.parametrize("scale", [0.1, 0.3, 1.0])
def test_sinkhorn_marginals_are_uniform(scale):
    cost = random_costs(scale, n=9, m=6)
    plan = sinkhorn(cost)
    assert plan.shape == (6, 9, 6)
    torch.testing.assert_close(plan.sum(1), torch.full((6, 6), 1 / 6, dtype=torch.float64), rtol=0, atol=1e-7)
    # rows: the next update would move u_i by eps * |log(N * row_i)|; the rule stopped once the
    # updates summed over i (batch mean) fell below tol, and they shrink
    row_error = 0.1 * (9 * plan.sum(2)).log().abs().sum(1).mean()
    assert row_error < 0.1
    torch.testing.assert_close(plan.sum((1, 2)), torch.ones(6, dtype=torch.float64))
    tight = sinkhorn(cost, tol=1e-9, max_iter=5000)  # run to convergence: rows exact too
    torch.testing.assert_close(tight.sum(2), torch.full((6, 9), 1 / 9, dtype=torch.float64), rtol=1e-3, atol=0)


def test_sinkhorn_plan_is_detached():
    cost = random_costs(1.0).float().requires_grad_(True)
    with torch.enable_grad():
        plan = sinkhorn(cost)
    assert not plan.requires_grad and plan.grad_fn is None


@pytest.mark.parametrize("scale", [0.2, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("check_every", [None, 0, 1, 3, 10])
def test_sinkhorn_is_the_official_iteration_and_stopping_rule(scale, check_every):
    cost = random_costs(scale)
    expected, iterations = official_sinkhorn(cost)
    torch.testing.assert_close(sinkhorn(cost, check_every=check_every), expected, rtol=1e-9, atol=1e-12)
    if 1 < iterations < 100:  # the stopping iteration matters: one more or one fewer differs
        for other in (iterations - 1, iterations + 1):
            off, _ = official_sinkhorn(cost, max_iter=other, tol=0.0)
            assert not torch.allclose(off, expected, rtol=1e-6, atol=1e-9)


def test_sinkhorn_on_raw_cnn_features_runs_max_iter_and_keeps_columns():
    """Squared distances of hundreds against eps = 0.1: the rule is not met within 100 iterations
    (as in the official code); the plan then has exact columns and rows off 1/N."""
    cost = random_costs(8.0, n=16, m=16)
    expected, iterations = official_sinkhorn(cost)
    assert iterations == 100
    plan = sinkhorn(cost, check_every=10)
    torch.testing.assert_close(plan, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(plan.sum(1), torch.full((6, 16), 1 / 16, dtype=torch.float64), rtol=0, atol=1e-7)


def test_sinkhorn_without_host_checks_never_reads_the_device():
    """check_every=0 (the default off the CPU) picks the stopping iteration on the device: it runs on
    meta tensors, which have no values a host read could fetch."""
    plan = sinkhorn(torch.empty(3, 5, 4, device="meta"))
    assert plan.shape == (3, 5, 4) and plan.device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        sinkhorn(torch.empty(3, 5, 4, device="meta"), check_every=10)


def test_sinkhorn_float32_and_2d_costs():
    cost = random_costs(0.5)
    plan32 = sinkhorn(cost.float(), tol=0.0, max_iter=40)  # the same iterations in both precisions
    assert plan32.dtype == torch.float32
    torch.testing.assert_close(plan32.double(), sinkhorn(cost, tol=0.0, max_iter=40), rtol=1e-4, atol=1e-6)
    # one problem alone: the same iterates (the stopping rule is a batch mean, so fix the count)
    torch.testing.assert_close(sinkhorn(cost[0], tol=0.0, max_iter=30), sinkhorn(cost, tol=0.0, max_iter=30)[0])


def test_sinkhorn_keeps_mass_where_it_costs_nothing():
    cost = torch.ones(4, 4) - torch.eye(4)  # a cost of 1 against eps 0.1 off the diagonal
    torch.testing.assert_close(sinkhorn(cost, tol=1e-9, max_iter=500), torch.eye(4) / 4, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"max_iter": 0}, {"check_every": -1}])
def test_sinkhorn_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        sinkhorn(torch.rand(2, 3, 3), **kwargs)


def test_feature_cost_is_the_squared_distance_of_position_vectors():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 6, generator=g)
    brute = (a.unsqueeze(3) - b.unsqueeze(2)).square().sum(1)  # (B, N, M)
    torch.testing.assert_close(feature_cost(a, b), brute, rtol=1e-5, atol=1e-5)


def test_feature_cost_stays_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    a, b = 10 * torch.randn(2, 64, 4, generator=g), 10 * torch.randn(2, 64, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = feature_cost(a, b)
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, feature_cost(a, b))


def test_aligned_step_under_bf16_autocast():
    model = convnet()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = mix_step(model, alignmix(align_prob=1.0, seed=0), x, y)
    assert torch.isfinite(step.loss)
    step.loss.backward()


# ------------------------------------------------------------------------ aligned mix
@pytest.mark.parametrize("direction", [0, 1])
def test_identity_plan_reduces_to_feature_mixup(direction):
    g = torch.Generator().manual_seed(0)
    feats, index = torch.randn(4, 3, 2, 3, generator=g), torch.tensor([2, 0, 3, 1])
    identity = torch.eye(6).expand(4, 6, 6) / 6
    lam = torch.tensor([0.2, 0.5, 0.7, 0.9])
    w = lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(align_mix(feats, index, lam, identity, direction), w * feats + (1 - w) * feats[index])
    torch.testing.assert_close(align_mix(feats, index, 0.3, identity, direction), 0.3 * feats + 0.7 * feats[index])


def test_permutation_plan_moves_positions_in_each_direction():
    g = torch.Generator().manual_seed(0)
    feats, index = torch.randn(2, 3, 2, 2, generator=g), torch.tensor([1, 0])
    sigma = torch.tensor([2, 0, 3, 1])  # R[i, sigma(i)] = 1
    plan = torch.zeros(2, 4, 4)
    plan[:, torch.arange(4), sigma] = 0.25
    own, partner = feats.flatten(2), feats[index].flatten(2)
    to_own = align_mix(feats, index, 0.0, plan, 0).flatten(2)  # lam 0: only A' R^T
    torch.testing.assert_close(to_own, partner[:, :, sigma])  # position i takes the partner's sigma(i)
    to_partner = align_mix(feats, index, 1.0, plan, 1).flatten(2)  # lam 1: only A R
    torch.testing.assert_close(to_partner, own[:, :, torch.argsort(sigma)])  # position j takes own sigma^-1(j)


def test_sinkhorn_aligns_a_spatially_shuffled_partner():
    """Sample 1 is sample 0 with its positions shuffled: the plan finds the shuffle, so the aligned
    partner is the sample itself and the mix changes nothing."""
    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, 16, 3, 3, generator=g)
    shuffle = torch.randperm(9, generator=g)
    feats = torch.cat([first, first.flatten(2)[:, :, shuffle].view(1, 16, 3, 3)])
    index = torch.tensor([1, 0])
    plan = sinkhorn(feature_cost(feats.flatten(2), feats[index].flatten(2)))
    for direction in (0, 1):
        mixed = align_mix(feats, index, 0.4, plan, direction)
        expected = feats if direction == 0 else feats[index]  # A' R^T lands on A; A R lands on A'
        torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-4)


def test_align_mix_rejects_wrong_shapes():
    feats = torch.rand(2, 3, 2, 2)
    with pytest.raises(ValueError, match="plan must be"):
        align_mix(feats, torch.tensor([1, 0]), 0.5, torch.rand(2, 3, 3), 0)
    with pytest.raises(ValueError, match="direction"):
        align_mix(feats, torch.tensor([1, 0]), 0.5, torch.rand(2, 4, 4), 2)


# ------------------------------------------------------------------------ the training step
def test_aligned_step_is_sinkhorn_then_align_mix_then_head():
    model = convnet()
    x, y = batch()
    mixer = alignmix(align_prob=1.0, seed=5)
    params = alignmix(align_prob=1.0, seed=5).sample_params(x)  # the same first draw
    step = mix_step(model, mixer, x, y)
    out = step.mix
    assert torch.equal(out.x, x)  # mixed features: MixOutput.x is the input as it came
    assert torch.equal(out.index, params["index"]) and float(out.lam[0]) == pytest.approx(params["batch_lam"])
    feats = model.forward_features(x)
    plan = sinkhorn(feature_cost(feats.flatten(2), feats[out.index].flatten(2)))
    expected = model.forward_head(align_mix(feats, out.index, out.lam, plan, params["direction"]))
    torch.testing.assert_close(step.logits, expected, rtol=1e-4, atol=1e-5)
    onehot = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, out.lam[:, None] * onehot + (1 - out.lam[:, None]) * onehot[out.index])
    torch.testing.assert_close(step.loss, soft_cross_entropy(step.logits, out.y))


def test_input_branch_is_input_mixup_with_the_same_lam_and_index():
    model = convnet()
    x, y = batch()
    step = mix_step(model, alignmix(align_prob=0.0, seed=11), x, y)
    ref = openmix.build("mixup", alpha=2.0, num_classes=NUM_CLASSES, seed=11)(x, y)
    torch.testing.assert_close(step.mix.x, ref.x)
    torch.testing.assert_close(step.mix.y, ref.y)
    torch.testing.assert_close(step.logits, model(ref.x))


def test_branch_and_direction_are_fair_coins():
    mixer = alignmix(seed=0)
    x, _ = batch()
    counts = collections.Counter((p["align"], p["direction"]) for p in (mixer.sample_params(x) for _ in range(800)))
    assert set(counts) == {(False, 0), (False, 1), (True, 0), (True, 1)}
    assert all(150 <= n <= 250 for n in counts.values()), counts  # 200 each


@pytest.mark.parametrize("align_prob", [0.5, 1.0])
def test_mix_step_trains_and_reaches_every_parameter(align_prob):
    assert_steps_train_every_parameter(convnet(), alignmix(align_prob=align_prob, seed=0), *batch())


@pytest.mark.parametrize("direction", [0, 1])
def test_gradients_flow_through_both_feature_maps_and_not_the_plan(direction):
    feats = (3 * torch.randn(3, 4, 2, 2)).requires_grad_(True)
    index = torch.tensor([1, 2, 0])
    plan = sinkhorn(feature_cost(feats.flatten(2), feats[index].flatten(2)))
    align_mix(feats, index, 0.3, plan, direction).sum().backward()
    r = 4 * plan  # R; the gradient of a sum through A R is R's row sums, through A' R^T its column sums
    if direction == 0:  # lam A + (1 - lam) A' R^T: sample b is the partner of argsort(index)[b]
        expected = 0.3 + 0.7 * r.sum(1)[torch.argsort(index)]
    else:  # lam A R + (1 - lam) A'
        expected = 0.3 * r.sum(2) + 0.7
    torch.testing.assert_close(feats.grad, expected.view(3, 1, 2, 2).expand(3, 4, 2, 2))
    if direction == 1:
        assert (r.sum(2) - 1).abs().max() > 1e-3  # R's rows are not normalised: the test sees them


def test_lightning_classifier_trains_with_alignmix():
    assert_lightning_trains({"name": "alignmix"})


def test_openmix_train_runs_alignmix(tmp_path):
    from test_cli import run

    row = run(tmp_path, "mixer=alignmix", "mixer.align_prob=1.0", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "alignmix"


def test_same_seed_same_draws_and_steps():
    x, y = batch()
    a, b, c = alignmix(seed=3), alignmix(seed=3), alignmix(seed=4)
    keys = ("align", "direction", "batch_lam")
    draws = [[tuple(p[k] for k in keys) + (p["index"].tolist(),) for p in (m.sample_params(x) for _ in range(6))]
             for m in (a, b, c)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    model = convnet()
    twin = copy.deepcopy(model)
    first, second = alignmix(seed=7), alignmix(seed=7)
    state = torch.get_rng_state()
    for _ in range(4):
        torch.testing.assert_close(mix_step(model, first, x, y).logits, mix_step(twin, second, x, y).logits)
    assert torch.equal(state, torch.get_rng_state())  # seeded: the global stream is untouched


def test_prob_zero_is_a_plain_step():
    x, y = batch()
    model = convnet()
    step = mix_step(model, alignmix(prob=0.0, seed=0), x, y)
    assert torch.equal(step.mix.index, torch.arange(8))
    torch.testing.assert_close(step.logits, model(x))


# ------------------------------------------------------------------------ errors
class TokenModel(nn.Module):
    """forward_features returns tokens (B, N, C), as a ViT does."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(256, 8)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward_features(self, x):
        return self.proj(x.flatten(2))

    def forward_head(self, h):
        return self.fc(h.mean(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_a_model_without_the_feature_split_is_a_clear_error():
    x, y = batch()
    with pytest.raises(TypeError, match="AlignMix mixes the last feature map.*got Sequential, which has no "
                                        "forward_features / forward_head"):
        mix_step(nn.Sequential(nn.Flatten(), nn.Linear(256, NUM_CLASSES)), alignmix(seed=0), x, y)


def test_a_model_without_a_feature_map_is_a_clear_error():
    x, y = batch()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) feature map; TokenModel.forward_features returned \(8, 1, 8\)"):
        mix_step(TokenModel(), alignmix(align_prob=1.0, seed=0), x, y)


def test_forward_without_the_model_explains_what_to_do():
    x, y = batch()
    with pytest.raises(TypeError, match="needs the model.*mix_step"):
        alignmix()(x, y)


@pytest.mark.parametrize("kwargs", [{"align_prob": 1.5}, {"eps": 0.0}, {"max_iter": 0}, {"tol": -1.0},
                                    {"check_every": -1}, {"alpha": -1.0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        alignmix(**kwargs)


def test_registered_as_a_feature_mixer_with_a_repr():
    assert openmix.available()["alignmix"] == "feature"
    text = repr(alignmix())
    assert "alpha=2.0" in text and "align_prob=0.5" in text and "eps=0.1" in text and math.isclose(alignmix().tol, 0.1)


def test_step_cost_benchmark_prints_a_table(capsys):
    """benchmarks/step_cost.py on a tiny CNN: every method that trains it and each variant gets a row."""
    from test_benchmark import script

    with script("step_cost") as bench:
        rows = bench.main(["--device", "cpu", "--model", "small_convnet", "--batch", "4", "--size", "8",
                           "--repeat", "1", "--warmup", "1", "--parts", "1"])["cpu"]
    assert [(r.method, r.variant) for r in rows] == [
        ("vanilla", ""), ("mixup", ""), ("puzzlemix", "G=2"), ("puzzlemix", "G=4"), ("puzzlemix", "G=8"),
        ("alignmix", "aligned"), ("alignmix", "input mixup"),
        ("manifoldmix", "layer 0"), ("manifoldmix", "layer 1"), ("manifoldmix", "layer 2"),
        ("automix", ""), ("samix", ""), ("adautomix", ""), ("attentivemix", "own model"), ("attentivemix", "ResNet-18, 224 px"), ("guidedmixup", "prob 1"), ("snapmix", ""),
        ("sumix", ""), ("comixup", ""), ("tokenmix", "")]  # not transmix, smmix: they need a ViT
    assert all(r.ms > 0 for r in rows)
    assert rows[5].parts["sinkhorn"] > 0 and "masks+transport" in rows[2].parts
    text = capsys.readouterr().out
    assert "| **alignmix** | mean |" in text and "sinkhorn" in text and "masks+transport" in text
    assert "transmix: left out, it cannot train small_convnet" in text
