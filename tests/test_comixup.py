"""Co-Mixup: the official objective in floats, the per-output Potts solver (exact row DP, line ICM), the batched
solver against the official loop (modular penalty + per-output gco swap) and the exhaustive optimum, the mix
(partitions, blocks, shares, sources and targets), the step's passes and losses, openmix-train, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import assert_steps_train_every_parameter, seeded_batch, tiny_convnet
from openmix.losses import softmax_bce
from openmix.mixers.comixup import comixup_objective, comixup_problem, match_outputs, potts_labels, solve_comixup
from openmix.mixers.comixup.objective import ABSENT_COST, block_counts
from openmix.training import mix_step
from test_benchmark import script

NUM_CLASSES = 10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def comixup(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("seed", 0)
    return openmix.build("comixup", **kwargs)


@pytest.fixture(scope="module")
def bench():
    """benchmarks/comixup_solver.py: the saliency generators, the official solver restated (numpy + gco) and
    the exhaustive optimum, loaded once."""
    with script("comixup_solver") as module:
        yield module


# ------------------------------------------------------------------------ the objective
@pytest.mark.parametrize("thres", [0.83, 0.0])
def test_the_objective_is_the_official_obj_fn_thres_or_obj_fn(bench, thres):
    problem = bench.problems("smooth", 3, 5, 3, seed=0)
    problem = problem._replace(compat=torch.eye(5, dtype=torch.float64).expand(3, 5, 5), tau=thres * 9)
    labels = torch.randint(0, 5, (3, 5, 3, 3), generator=torch.Generator().manual_seed(1))
    masks = F.one_hot(labels, 5).double()
    expected = [bench.official_objective(masks[p].numpy(), problem.cost[p].numpy(), problem.beta, problem.gamma,
                                   thres * 9 if thres else None) for p in range(3)]
    torch.testing.assert_close(comixup_objective(labels, problem), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(comixup_objective(masks, problem), torch.tensor(expected, dtype=torch.float64))


def test_soft_masks_are_scored_as_the_official_obj_fn_scores_them(bench):
    problem = bench.problems("smooth", 1, 3, 2, seed=2)._replace(compat=torch.eye(3, dtype=torch.float64).unsqueeze(0), tau=0.0)
    masks = torch.zeros(1, 3, 2, 2, 3, dtype=torch.float64)
    masks[0, :, :, :, 0] = 1.0
    masks[0, 0, 0, 0] = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)  # one 50/50 block
    expected = bench.official_objective(masks[0].numpy(), problem.cost[0].numpy(), problem.beta, problem.gamma, None)
    assert float(comixup_objective(masks, problem)) == pytest.approx(expected, rel=1e-12)


def test_the_problem_is_the_official_cost_scaled_by_the_grid():
    sal = torch.rand(4, 8, 8, dtype=torch.float64)
    prior = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    problem = comixup_problem(sal, 2, 4, prior=prior, beta=0.32, gamma=1.0, eta=0.05, thres=0.83)
    blocks = sal.view(4, 2, 4, 2, 4).sum((2, 4))
    expected = -blocks / blocks.sum((1, 2), keepdim=True) - 0.05 / 4 * torch.log(prior.view(4, 1, 1) + 1e-8)
    torch.testing.assert_close(problem.cost[0], expected)
    assert (problem.beta, problem.gamma, problem.tau) == pytest.approx((0.08, 0.25, 3.32))


def test_compatibility_is_the_normalised_distance_of_the_most_salient_places():
    sal = torch.zeros(3, 16, 16)
    for b, (r, c) in enumerate([(0, 0), (0, 8), (8, 8)]):
        sal[b, r : r + 8, c : c + 8] = 1.0  # the 8 x 8 pool peaks exactly at (r, c)
    problem = comixup_problem(sal, 4, 3, omega=0.1)
    distance = torch.tensor([[0.0, 8, 16], [8, 0, 8], [16, 8, 0]])
    torch.testing.assert_close(problem.compat[0], 0.9 * torch.eye(3) + 0.1 * distance / distance.sum() * 3)


def test_coinciding_salient_places_give_no_nan_compatibility():
    problem = comixup_problem(torch.ones(3, 16, 16), 4, 3, omega=0.1)  # every argmax at (0, 0): the official divides 0 by 0
    torch.testing.assert_close(problem.compat[0], 0.9 * torch.eye(3))


def test_a_short_last_partition_is_its_own_smaller_problem():
    problem = comixup_problem(torch.rand(7, 8, 8), 2, 3)
    assert problem.present.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    assert bool((problem.cost[2, 1:] == ABSENT_COST).all())
    labels = solve_comixup(problem, generator=torch.Generator().manual_seed(0))
    assert bool((labels[:2] < 3).all()) and bool((labels[2, 0] == 0).all())  # one sample: shown whole


# ------------------------------------------------------------------------ one output: the Potts solver
def brute_force_potts(unary: torch.Tensor, beta: float, labels: int | None = None) -> torch.Tensor:
    """The optimum ``(b,)`` over every labelling with the first ``labels`` labels."""
    batch, grid, _, n = unary.shape
    every = torch.tensor(list(itertools.product(range(labels or n), repeat=grid * grid))).view(-1, grid, grid)
    cuts = (every[:, 1:] != every[:, :-1]).flatten(1).sum(1) + (every[:, :, 1:] != every[:, :, :-1]).flatten(1).sum(1)
    positions = torch.arange(grid * grid)
    return torch.stack([(u.flatten(0, 1)[positions, every.flatten(1)].sum(-1) + beta * cuts).min() for u in unary])


@pytest.mark.parametrize("grid, labels", [(2, 6), (3, 3), (4, 2)])
def test_the_row_dp_finds_the_brute_force_potts_optimum(grid, labels):
    unary = torch.rand(16, grid, grid, labels, generator=torch.Generator().manual_seed(grid), dtype=torch.float64) * 0.1
    _, energy = potts_labels(unary, 0.03)
    torch.testing.assert_close(energy, brute_force_potts(unary, 0.03))


def test_the_row_dp_keeps_every_label_an_optimum_may_use():
    # 20 labels on 3 x 3, but the penalty bans all but 3: within its 8 candidates the DP is exact
    unary = torch.rand(8, 3, 3, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    unary[..., 3:] += 2.0
    labels, energy = potts_labels(unary, 0.02)
    torch.testing.assert_close(energy, brute_force_potts(unary, 0.02, labels=3))
    shown = unary.gather(-1, labels.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
    cuts = (labels[:, 1:] != labels[:, :-1]).flatten(1).sum(1) + (labels[:, :, 1:] != labels[:, :, :-1]).flatten(1).sum(1)
    torch.testing.assert_close(energy, shown + 0.02 * cuts)  # the energy returned is the labels'


@pytest.mark.parametrize("grid", [6, 8])
def test_large_grids_are_solved_no_worse_than_gco_on_average(bench, grid):
    pytest.importorskip("gco")
    unary = -0.2 * torch.rand(16, grid, grid, 20, generator=torch.Generator().manual_seed(grid)) ** 3
    _, energy = potts_labels(unary, 0.02)  # line ICM
    theirs = []
    for u in unary:
        lab = torch.from_numpy(bench.gco_labels(u.numpy(), 1 - np.eye(20), 0.02).astype(np.int64))
        cuts = (lab[1:] != lab[:-1]).sum() + (lab[:, 1:] != lab[:, :-1]).sum()
        theirs.append(u.gather(-1, lab.unsqueeze(-1)).sum() + 0.02 * cuts)
    assert float(energy.mean()) <= float(torch.stack(theirs).mean())


# ------------------------------------------------------------------------ the whole problem vs official and optimum
@pytest.mark.parametrize("kind", ["smooth", "cnn"])
@pytest.mark.parametrize("m, grid, margin", [(4, 2, 0.02), (3, 3, 0.05)])
def test_the_solver_is_near_the_exhaustive_optimum_and_no_worse_than_the_official(bench, kind, m, grid, margin):
    pytest.importorskip("gco")
    problem = bench.problems(kind, 12, m, grid, seed=10 * m + grid)
    optimum = bench.exhaustive_optimum(problem)
    _, ours = solve_comixup(problem, generator=torch.Generator().manual_seed(0), return_objective=True)
    assert bool((ours >= optimum - 1e-6).all())  # the optimum is a bound (up to rounding at the threshold)
    gap = ((ours - optimum) / optimum.abs()).mean()
    assert float(gap) <= margin  # measured on these problems: 0.812% (4 x 2), 3.957% (3 x 3) smooth, 0 cnn (docs/comixup.md)
    official = bench.official_values(problem, runs=3, soft=True)
    assert float(ours.mean()) <= float(official.mean())


@pytest.mark.parametrize("kind", ["smooth", "cnn"])
@pytest.mark.parametrize("m, grid", [(5, 2), (6, 3)])
def test_the_solver_is_no_worse_than_the_official_where_the_optimum_is_out_of_reach(bench, kind, m, grid):
    pytest.importorskip("gco")
    problem = bench.problems(kind, 8, m, grid, seed=m + grid)
    _, ours = solve_comixup(problem, generator=torch.Generator().manual_seed(0), return_objective=True)
    for soft in (True, False):  # as coded (50/50 blocks from the second sweep), and with hard masks only
        assert float(ours.mean()) <= float(bench.official_values(problem, runs=3, soft=soft).mean())


def test_the_solver_beats_the_official_at_the_default_size(bench):
    pytest.importorskip("gco")
    problem = bench.problems("cnn", 2, 20, 4, seed=0)
    _, ours = solve_comixup(problem.to(torch.float32), generator=torch.Generator().manual_seed(0), return_objective=True)
    assert float(ours.mean()) < float(bench.official_values(problem, runs=2, soft=True).mean())


def test_the_benchmark_prints_its_three_tables_on_a_tiny_setting(bench, capsys, tmp_path):
    """benchmarks/comixup_solver.py's main, small sizes and one repeat (with or without gco)."""
    results = bench.main(["--device", "cpu", "--kinds", "smooth", "--small", "3x2", "--parts", "2", "--beyond", "4x2",
                          "--beyond-parts", "2", "--more-restarts", "2", "--more-sweeps", "2", "--runs", "1",
                          "--batch", "8", "--partition", "4", "--grids", "2", "--repeats", "1", "--official-repeats", "1",
                          "--markdown", str(tmp_path / "tables.md")])
    text = capsys.readouterr().out
    written = (tmp_path / "tables.md").read_text()
    for title in ("### a. Gap to the exhaustive optimum", "### b. Mean objective", "### c. Speed, CPU: batch 8 = 2 partitions"):
        assert title in text and title in written
    assert "| smooth | 3 | 2 | 2 |" in text and "| smooth | 4 | 2 | 2 |" in text and "\n| 2 | " in text
    (small,), (beyond,), (timing,) = results["small"], results["beyond"], results["speed"]
    assert small["ours"] >= -1e-9 and 0.0 <= small["optimal"] <= 1.0  # the optimum bounds the solver
    assert beyond["exact"] == beyond["exact_in_solve"] == 1.0  # 4 labels on 2 x 2: the row DP is exact
    assert timing["ms"] > 0 and ("official_ms" in timing) == ("soft" in small)


def test_the_objective_returned_is_the_labellings(bench):
    problem = bench.problems("smooth", 6, 6, 3, seed=3)
    labels, value = solve_comixup(problem, generator=torch.Generator().manual_seed(0), return_objective=True)
    torch.testing.assert_close(value, comixup_objective(labels, problem))


@pytest.mark.parametrize("kind, grid", [("cnn", 8), ("smooth", 4)])
def test_no_partition_ends_worse_than_not_mixing(bench, kind, grid):
    problem = bench.problems(kind, 4, 20, grid, seed=1).to(torch.float32)
    _, value = solve_comixup(problem, restarts=1, sweeps=2, generator=torch.Generator().manual_seed(0),
                             return_objective=True)
    own = torch.arange(20).view(1, 20, 1, 1).expand(4, 20, grid, grid)
    assert bool((value <= comixup_objective(own, problem) + 1e-5).all())  # the identity start's descent


def test_outputs_take_every_inputs_salient_quarter():
    sal = torch.zeros(4, 8, 8)
    sal[0, :4, :4] = sal[1, :4, 4:] = sal[2, 4:, :4] = sal[3, 4:, 4:] = 1.0
    labels = solve_comixup(comixup_problem(sal, 2, 4), generator=torch.Generator().manual_seed(0))
    assert bool((labels[0] == torch.tensor([[0, 1], [2, 3]])).all())  # the hard threshold alone deadlocks here


def test_the_solver_reads_nothing_on_the_host():
    problem = comixup_problem(torch.empty(40, 16, 16, device="meta"), 4, 20, prior=torch.empty(2, 20, device="meta"))
    labels, value = solve_comixup(problem, return_objective=True)
    assert labels.shape == (2, 20, 4, 4) and value.device.type == "meta"


# ------------------------------------------------------------------------ the mix
def mixed(bench, batch: int = 10, partition: int = 4, size: int = 16, **kwargs):
    """A batch, its mix by a seeded Co-Mixup given smooth saliency maps, and the partitions that call drew."""
    x = torch.rand(batch, 2, size, size, generator=torch.Generator().manual_seed(5))
    sal = bench.smooth_saliency(batch, size, 5).float()
    order = comixup(partition=partition, **kwargs).sample_params(x).get("order")  # the same seed draws the same
    out = comixup(partition=partition, **kwargs)(x, torch.arange(batch) % NUM_CLASSES, saliency=sal)
    return x, out, None if order is None else order.split(partition)


def test_every_block_is_a_block_of_an_input_of_the_same_partition(bench):
    x, out, parts = mixed(bench)
    indices, weights = out.sources
    ours, theirs = out.x.unfold(2, 4, 4).unfold(3, 4, 4), x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 4, 4, 4, 4)
    for part in parts:
        for b in part.tolist():  # test reference only
            used = indices[b][weights[b] > 0].tolist()
            assert set(used) <= set(part.tolist())
            for r, c in itertools.product(range(4), range(4)):
                assert any(torch.equal(ours[b, :, r, c], theirs[i, :, r, c]) for i in used)


def test_sources_partition_the_pixels_and_give_the_targets(bench):
    x, out, _ = mixed(bench)
    indices, weights = out.sources
    torch.testing.assert_close(out.source_masks.sum(1), torch.ones(10, 16, 16))
    torch.testing.assert_close(weights, out.source_masks.mean((2, 3)))  # shares = block counts / N
    onehot = F.one_hot(torch.arange(10) % NUM_CLASSES, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, (weights.unsqueeze(-1) * onehot[indices]).sum(1))
    torch.testing.assert_close(out.dense(x), out.x)


def test_lam_is_the_own_share_and_index_the_largest_other(bench):
    _, out, _ = mixed(bench)
    indices, weights = out.sources
    assert torch.equal(indices[:, 0], torch.arange(10))
    torch.testing.assert_close(out.lam, weights[:, 0])
    assert torch.equal(out.index, indices[:, 1])
    assert bool((weights[:, 1] >= weights[:, 2:].max(1).values).all())
    torch.testing.assert_close(out.mask, out.source_masks[:, :1])
    assert out.binary


def test_vector_and_sparse_targets_follow_the_shares(bench):
    _, out, _ = mixed(bench)
    values = torch.randn(10, 3)
    indices, weights = out.sources
    torch.testing.assert_close(out.vector(values), (weights.unsqueeze(-1) * values[indices]).sum(1))
    ids, shares = out.sparse(torch.arange(10) + 100)
    assert torch.equal(ids, indices + 100) and torch.equal(shares, weights)


def test_a_partition_of_one_sample_is_left_unmixed(bench):
    x, out, parts = mixed(bench, batch=9, partition=4)  # partitions of 4, 4 and 1
    single = int(parts[-1])
    torch.testing.assert_close(out.x[single], x[single])
    assert float(out.lam[single]) == 1.0


def test_matching_gives_each_row_the_output_that_shows_its_sample_most():
    counts = torch.tensor([[[1.0, 3.0, 0.0], [4.0, 0.0, 0.0], [0.0, 2.0, 2.0]]])
    assert match_outputs(counts, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[1, 0, 2]]
    absent = torch.tensor([[True, True, False]])
    assert match_outputs(block_counts(torch.zeros(1, 3, 1, 1, dtype=torch.long), 3) * absent.unsqueeze(-1), absent)[0, 2] == 2


def test_the_same_seed_mixes_the_same(bench):
    _, first, _ = mixed(bench)
    _, again, _ = mixed(bench)
    assert torch.equal(first.x, again.x) and torch.equal(first.sources[0], again.sources[0])


def test_alpha_zero_leaves_the_batch_as_it_is(bench):
    x, out, _ = mixed(bench, alpha=0.0)
    assert torch.equal(out.x, x) and torch.equal(out.lam, torch.ones(10))


# ------------------------------------------------------------------------ the step
def test_clean_lam_adds_the_train_mode_clean_loss_of_the_saliency_pass():
    torch.manual_seed(2)
    model, twin = tiny_convnet(), tiny_convnet()
    twin.load_state_dict(model.state_dict())
    x, y = seeded_batch()
    step = mix_step(model, comixup(clean_lam=1.0), x, y)
    clean = 2.0 * F.cross_entropy(twin.train()(x), y)  # beside the soft CE: the official ratio (clean_loss_weight)
    torch.testing.assert_close(step.loss, openmix.losses.soft_cross_entropy(step.logits, step.mix.y) + clean)


def test_without_clean_lam_the_saliency_pass_leaves_bn_and_gradients_alone():
    model = tiny_convnet()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    bn.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    mix_step(model, comixup(clean_lam=0.0), *seeded_batch())
    assert seen == [False, True]  # saliency in eval mode, the mixed batch in train mode


def test_bce_loss_is_the_official_bce_on_softmax():
    model = tiny_convnet()
    step = mix_step(model, comixup(loss="bce", clean_lam=0.0), *seeded_batch())
    torch.testing.assert_close(step.loss, softmax_bce(step.logits, step.mix.y))


def test_training_steps_stay_finite_and_reach_every_parameter():
    assert_steps_train_every_parameter(tiny_convnet(), comixup(), *seeded_batch())


@pytest.mark.parametrize("block_num", [(7,), (2, 4, 7, 14)])
def test_fashion_mnist_sized_images_take_grids_that_divide_28(block_num):
    model = tiny_convnet()
    x, y = torch.rand(12, 1, 28, 28), torch.arange(12) % NUM_CLASSES
    step = mix_step(model, comixup(block_num=block_num), x, y)
    assert step.mix.x.shape == x.shape and torch.isfinite(step.loss)


def test_openmix_train_runs_comixup(tmp_path):
    from test_cli import run

    row = run(tmp_path, "mixer=comixup", "mixer.partition=8", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "comixup" and row["alpha"] == 2.0


# ------------------------------------------------------------------------ errors
def test_forward_without_saliency_says_how_to_train():
    with pytest.raises(TypeError, match="mix_step"):
        comixup()(torch.rand(2, 1, 8, 8), torch.arange(2))


def test_a_grid_that_does_not_divide_the_image_is_refused():
    with pytest.raises(ValueError, match=r"block_num \[5\] does not divide the image sides 28x28: pass block_num from \[2, 4, 7, 14, 28\]"):
        mix_step(tiny_convnet(), comixup(block_num=5), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs", [{"block_num": 1}, {"block_num": ()}, {"partition": 0}, {"loss": "ce"}, {"thres": -1.0},
                                    {"omega": 2.0}, {"clean_lam": 1.0, "num_classes": None}, {"pairing": "flip"},
                                    {"mode": "elem"}, {"sweeps": 0}, {"restarts": 0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        openmix.build("comixup", **{"num_classes": NUM_CLASSES, **kwargs})


def test_registered_as_a_saliency_mixer_with_the_official_defaults():
    mixer = comixup()
    assert openmix.available()["comixup"] == "saliency"
    assert (mixer.alpha, mixer.block_num, mixer.partition, mixer.beta, mixer.gamma, mixer.eta, mixer.thres, mixer.omega,
            mixer.clean_lam, mixer.sweeps) == (2.0, 4, 20, 0.32, 1.0, 0.05, 0.83, 0.001, 1.0, 4)
