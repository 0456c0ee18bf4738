"""Co-Mixup: the official objective in floats, the per-output Potts solver (exact row DP, line ICM), the batched
solver against the official loop (modular penalty + per-output gco swap) and the exhaustive optimum, the mix
(partitions, blocks, shares, sources and targets), the step's passes and losses, openmix-train, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import assert_steps_train_every_parameter, seeded_batch, tiny_convnet
from openmix.losses import softmax_bce
from openmix.mixers.comixup import (CoMixupProblem, comixup_objective, comixup_problem, match_outputs, potts_labels,
                                    solve_comixup)
from openmix.mixers.comixup.objective import ABSENT_COST, block_counts
from openmix.mixers.puzzlemix import input_saliency
from openmix.training import mix_step

NUM_CLASSES = 10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def comixup(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("seed", 0)
    return openmix.build("comixup", **kwargs)


def smooth_saliency(batch: int, size: int, seed: int, power: float = 1.0) -> torch.Tensor:
    """Smoothed noise squared (``power`` > 1: a few peaked regions), float64 ``(B, size, size)``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 1, size + 6, size + 6, generator=gen, dtype=torch.float64)
    return F.avg_pool2d(noise, 7, 1)[:, 0].square().pow(power)


def cnn_saliency(batch: int, size: int, seed: int) -> torch.Tensor:
    """Input-gradient saliency of a small random CNN on smooth images: the maps Co-Mixup sees."""
    torch.manual_seed(seed)
    layers = [m for i in range(3) for m in (torch.nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    gen = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(batch, 3, size // 4, size // 4, generator=gen), size=size, mode="bilinear")
    return input_saliency(model, x, torch.randint(0, 10, (batch,), generator=gen)).double()


def problems(kind: str, parts: int, m: int, grid: int, seed: int) -> CoMixupProblem:
    """``parts`` partitions of ``m`` saliency maps with the official defaults and a Dirichlet(2) prior, float64."""
    size = grid * math.ceil(32 / grid)
    sal = cnn_saliency(parts * m, size, seed) if kind == "cnn" else smooth_saliency(parts * m, size, seed)
    gammas = torch._standard_gamma(torch.full((parts, m), 2.0, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))
    return comixup_problem(sal, grid, m, prior=gammas / gammas.sum(1, keepdim=True))


# ---------------------------------------------------------------- the official code, restated for reference
def official_objective(masks: np.ndarray, cost: np.ndarray, beta: float, gamma: float, thres: float | None) -> float:
    """``obj_fn`` (``thres=None``) or ``obj_fn_thres`` of ``match.py`` for one partition: masks ``(m, G, G, m)``,
    cost ``(m, G, G)``, coefficients already scaled by the grid."""
    counts = masks.reshape(masks.shape[0], -1, masks.shape[-1]).sum(1)
    value = float((masks * cost.transpose(1, 2, 0)[None]).sum())
    value += beta / 2 * float(((masks[:, :-1] - masks[:, 1:]) ** 2).sum() + ((masks[:, :, :-1] - masks[:, :, 1:]) ** 2).sum())
    if thres is None:
        return value + gamma * float((counts.sum(0) ** 2).sum() - (counts**2).sum())
    others = counts.sum(0, keepdims=True) - counts
    return value + gamma * float(((others > thres) * others * counts).sum())


def gco_labels(unary: np.ndarray, pairwise: np.ndarray, beta: float) -> np.ndarray:
    """One alpha-beta swap of gco on a ``G x G`` grid with ``beta`` on every edge (``graphcut_multi``)."""
    import gco

    grid = unary.shape[0]
    edges_v, edges_h = np.full((grid - 1, grid), beta, np.float32), np.full((grid, grid - 1), beta, np.float32)
    return gco.cut_grid_graph(np.ascontiguousarray(unary, dtype=np.float32), pairwise.astype(np.float32), edges_v, edges_h,
                              algorithm="swap").reshape(grid, grid)


def official_output(unary: np.ndarray, used: np.ndarray, beta: float, soft: bool) -> np.ndarray:
    """``graphcut_wrapper``: one output's mask ``(G, G, m)``; with ``soft`` (the official from its second sweep),
    a 50/50 label of the two inputs it uses (cost: their mean - 5e-4; 0.25 to each parent), or three such
    labels of its three most used inputs."""
    m = unary.shape[-1]
    assigned = used > 0
    extra = int(assigned.sum()) if soft else 0
    if extra == 2:
        parents, blend = np.flatnonzero(assigned), np.array([[0.5, 0.5]])
    elif extra >= 3:
        parents, blend = np.sort(np.argsort(-used, kind="stable")[:3]), np.array([[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    else:
        return np.eye(m)[gco_labels(unary, 1 - np.eye(m), beta)]
    k = blend.shape[0]
    full = np.concatenate([unary, unary[..., parents] @ blend.T - 5e-4], -1)
    pairwise = 1 - np.eye(m + k)
    pairwise[m:, parents] = np.where(blend > 0, 0.25, 1.0)  # a 50/50 label next to one of its parents: 0.25
    pairwise[parents, m:] = pairwise[m:, parents].T
    weights = np.zeros((k, m))
    weights[:, parents] = blend
    onehot = np.eye(m + k)[gco_labels(full, pairwise, beta)]
    return onehot[..., :m] + onehot[..., m:] @ weights


def official_solve(cost: np.ndarray, compat: np.ndarray, beta: float, gamma: float, tau: float, rng: np.random.Generator,
                   soft: bool = True, sweeps: int = 4, resolve: bool = True) -> np.ndarray:
    """``get_onehot_matrix`` for one partition (``n_output = n_input = m``), restated: a random labelling, then
    ``sweeps`` passes re-labelling each output by gco with the modular penalty ``2 gamma 1[A p > tau] A p`` of
    the others' use ``p``; ``resolve_label`` after the second last pass; stop when ``obj_fn`` changes by less
    than 1e-6 relatively. Returns the masks ``(m, G, G, m)`` of the last labelling."""
    m, grid, _ = cost.shape
    masks = np.eye(m)[rng.integers(0, m, (m, grid, grid))]
    before = official_objective(masks, cost, beta, gamma, None)
    use = masks.reshape(-1, m).sum(0)
    extra = None
    for sweep in range(sweeps):
        for j in range(m):
            own = masks[j].reshape(-1, m).sum(0)
            use = use - own
            pressure = compat @ use
            penalty = 2 * gamma * (pressure > tau) * pressure
            unary = cost + penalty[:, None, None] + (0 if extra is None else gamma * extra[j][:, None, None])
            masks[j] = official_output(unary.transpose(1, 2, 0), own, beta, soft and sweep > 0)
            use = use + masks[j].reshape(-1, m).sum(0)
        if resolve and sweep == sweeps - 2:
            shown = (masks.reshape(m, -1, m).sum(1) > 0).astype(np.float64)
            same = np.triu(1.0 - np.minimum(np.abs(shown[:, None] - shown[None]).sum(-1), 1.0), 1)
            extra = np.zeros_like(shown)
            for a, b in zip(*np.nonzero(same)):
                inputs = np.flatnonzero(shown[a])
                if len(inputs) > 1:
                    extra[a, inputs[0]] = extra[b, inputs[1]] = 1.0
        after = official_objective(masks, cost, beta, gamma, None)
        if abs(before - after) / abs(after) < 1e-6:
            break
        before = after
    return masks


def official_values(problem: CoMixupProblem, runs: int, soft: bool, seed: int = 0) -> torch.Tensor:
    """The mean objective ``(P,)`` of ``runs`` official solves (random starts) of every partition."""
    rng = np.random.default_rng(seed)
    cost, compat = problem.cost.double().numpy(), problem.compat.double().numpy()
    values = []
    for _ in range(runs):
        masks = np.stack([official_solve(c, a, problem.beta, problem.gamma, problem.tau, rng, soft) for c, a in zip(cost, compat)])
        values.append(comixup_objective(torch.from_numpy(masks), problem.to(torch.float64)))
    return torch.stack(values).mean(0)


def exhaustive_optimum(problem: CoMixupProblem) -> torch.Tensor:
    """The exact optimum ``(P,)``. The outputs share one unary, so the objective depends on the multiset of their
    block counts: every output's best Potts energy for each count vector (over all ``m^N`` labellings), then
    every multiset of ``m`` count vectors."""
    cost, compat = problem.cost.double(), problem.compat.double()
    parts, m, grid, _ = cost.shape
    blocks = grid * grid
    every = torch.tensor(list(itertools.product(range(m), repeat=blocks)))  # (S, N)
    shape = every.view(-1, grid, grid)
    cuts = (shape[:, 1:] != shape[:, :-1]).flatten(1).sum(1) + (shape[:, :, 1:] != shape[:, :, :-1]).flatten(1).sum(1)
    energy = cost.flatten(2)[:, every, torch.arange(blocks)].sum(-1) + problem.beta * cuts  # (P, S)
    keys, which = torch.unique(F.one_hot(every, m).sum(1), dim=0, return_inverse=True)
    best = torch.full((parts, keys.shape[0]), math.inf, dtype=torch.float64).scatter_reduce(
        1, which.expand(parts, -1), energy, reduce="amin")
    combos = torch.tensor(list(itertools.combinations_with_replacement(range(keys.shape[0]), m)))
    optimum = []
    for p in range(parts):  # test reference only: a plain loop is clearest
        counts = keys[combos].double()  # (C, m, m)
        pressure = (counts.sum(1, keepdim=True) - counts) @ compat[p].t()
        penalty = problem.gamma * (counts * torch.where(pressure > problem.tau, pressure, 0.0)).sum((1, 2))
        optimum.append((best[p][combos].sum(1) + penalty).min())
    return torch.stack(optimum)


# ------------------------------------------------------------------------ the objective
@pytest.mark.parametrize("thres", [0.83, 0.0])
def test_the_objective_is_the_official_obj_fn_thres_or_obj_fn(thres):
    problem = problems("smooth", 3, 5, 3, seed=0)
    problem = problem._replace(compat=torch.eye(5, dtype=torch.float64).expand(3, 5, 5), tau=thres * 9)
    labels = torch.randint(0, 5, (3, 5, 3, 3), generator=torch.Generator().manual_seed(1))
    masks = F.one_hot(labels, 5).double()
    expected = [official_objective(masks[p].numpy(), problem.cost[p].numpy(), problem.beta, problem.gamma,
                                   thres * 9 if thres else None) for p in range(3)]
    torch.testing.assert_close(comixup_objective(labels, problem), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(comixup_objective(masks, problem), torch.tensor(expected, dtype=torch.float64))


def test_soft_masks_are_scored_as_the_official_obj_fn_scores_them():
    problem = problems("smooth", 1, 3, 2, seed=2)._replace(compat=torch.eye(3, dtype=torch.float64).unsqueeze(0), tau=0.0)
    masks = torch.zeros(1, 3, 2, 2, 3, dtype=torch.float64)
    masks[0, :, :, :, 0] = 1.0
    masks[0, 0, 0, 0] = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)  # one 50/50 block
    expected = official_objective(masks[0].numpy(), problem.cost[0].numpy(), problem.beta, problem.gamma, None)
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
def test_large_grids_are_solved_no_worse_than_gco_on_average(grid):
    pytest.importorskip("gco")
    unary = -0.2 * torch.rand(16, grid, grid, 20, generator=torch.Generator().manual_seed(grid)) ** 3
    _, energy = potts_labels(unary, 0.02)  # line ICM
    theirs = []
    for u in unary:
        lab = torch.from_numpy(gco_labels(u.numpy(), 1 - np.eye(20), 0.02).astype(np.int64))
        cuts = (lab[1:] != lab[:-1]).sum() + (lab[:, 1:] != lab[:, :-1]).sum()
        theirs.append(u.gather(-1, lab.unsqueeze(-1)).sum() + 0.02 * cuts)
    assert float(energy.mean()) <= float(torch.stack(theirs).mean())


# ------------------------------------------------------------------------ the whole problem vs official and optimum
@pytest.mark.parametrize("kind", ["smooth", "cnn"])
@pytest.mark.parametrize("m, grid, margin", [(4, 2, 0.02), (3, 3, 0.05)])
def test_the_solver_is_near_the_exhaustive_optimum_and_no_worse_than_the_official(kind, m, grid, margin):
    pytest.importorskip("gco")
    problem = problems(kind, 12, m, grid, seed=10 * m + grid)
    optimum = exhaustive_optimum(problem)
    _, ours = solve_comixup(problem, generator=torch.Generator().manual_seed(0), return_objective=True)
    assert bool((ours >= optimum - 1e-6).all())  # the optimum is a bound (up to rounding at the threshold)
    gap = ((ours - optimum) / optimum.abs()).mean()
    assert float(gap) <= margin  # mean relative gap to the optimum (measured: docs/comixup.md)
    official = official_values(problem, runs=3, soft=True)
    assert float(ours.mean()) <= float(official.mean())


@pytest.mark.parametrize("kind", ["smooth", "cnn"])
@pytest.mark.parametrize("m, grid", [(5, 2), (6, 3)])
def test_the_solver_is_no_worse_than_the_official_where_the_optimum_is_out_of_reach(kind, m, grid):
    pytest.importorskip("gco")
    problem = problems(kind, 8, m, grid, seed=m + grid)
    _, ours = solve_comixup(problem, generator=torch.Generator().manual_seed(0), return_objective=True)
    for soft in (True, False):  # as coded (50/50 blocks from the second sweep), and with hard masks only
        assert float(ours.mean()) <= float(official_values(problem, runs=3, soft=soft).mean())


def test_the_solver_beats_the_official_at_the_default_size():
    pytest.importorskip("gco")
    problem = problems("cnn", 2, 20, 4, seed=0)
    _, ours = solve_comixup(problem.to(torch.float32), generator=torch.Generator().manual_seed(0), return_objective=True)
    assert float(ours.mean()) < float(official_values(problem, runs=2, soft=True).mean())


def test_the_objective_returned_is_the_labellings():
    problem = problems("smooth", 6, 6, 3, seed=3)
    labels, value = solve_comixup(problem, generator=torch.Generator().manual_seed(0), return_objective=True)
    torch.testing.assert_close(value, comixup_objective(labels, problem))


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
def mixed(batch: int = 10, partition: int = 4, size: int = 16, **kwargs):
    """A batch, its mix by a seeded Co-Mixup given smooth saliency maps, and the partitions that call drew."""
    x = torch.rand(batch, 2, size, size, generator=torch.Generator().manual_seed(5))
    sal = smooth_saliency(batch, size, 5).float()
    order = comixup(partition=partition, **kwargs).sample_params(x).get("order")  # the same seed draws the same
    out = comixup(partition=partition, **kwargs)(x, torch.arange(batch) % NUM_CLASSES, saliency=sal)
    return x, out, None if order is None else order.split(partition)


def test_every_block_is_a_block_of_an_input_of_the_same_partition():
    x, out, parts = mixed()
    indices, weights = out.sources
    ours, theirs = out.x.unfold(2, 4, 4).unfold(3, 4, 4), x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 4, 4, 4, 4)
    for part in parts:
        for b in part.tolist():  # test reference only
            used = indices[b][weights[b] > 0].tolist()
            assert set(used) <= set(part.tolist())
            for r, c in itertools.product(range(4), range(4)):
                assert any(torch.equal(ours[b, :, r, c], theirs[i, :, r, c]) for i in used)


def test_sources_partition_the_pixels_and_give_the_targets():
    x, out, _ = mixed()
    indices, weights = out.sources
    torch.testing.assert_close(out.source_masks.sum(1), torch.ones(10, 16, 16))
    torch.testing.assert_close(weights, out.source_masks.mean((2, 3)))  # shares = block counts / N
    onehot = F.one_hot(torch.arange(10) % NUM_CLASSES, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, (weights.unsqueeze(-1) * onehot[indices]).sum(1))
    torch.testing.assert_close(out.dense(x), out.x)


def test_lam_is_the_own_share_and_index_the_largest_other():
    _, out, _ = mixed()
    indices, weights = out.sources
    assert torch.equal(indices[:, 0], torch.arange(10))
    torch.testing.assert_close(out.lam, weights[:, 0])
    assert torch.equal(out.index, indices[:, 1])
    assert bool((weights[:, 1] >= weights[:, 2:].max(1).values).all())
    torch.testing.assert_close(out.mask, out.source_masks[:, :1])
    assert out.binary


def test_vector_and_sparse_targets_follow_the_shares():
    _, out, _ = mixed()
    values = torch.randn(10, 3)
    indices, weights = out.sources
    torch.testing.assert_close(out.vector(values), (weights.unsqueeze(-1) * values[indices]).sum(1))
    ids, shares = out.sparse(torch.arange(10) + 100)
    assert torch.equal(ids, indices + 100) and torch.equal(shares, weights)


def test_a_partition_of_one_sample_is_left_unmixed():
    x, out, parts = mixed(batch=9, partition=4)  # partitions of 4, 4 and 1
    single = int(parts[-1])
    torch.testing.assert_close(out.x[single], x[single])
    assert float(out.lam[single]) == 1.0


def test_matching_gives_each_row_the_output_that_shows_its_sample_most():
    counts = torch.tensor([[[1.0, 3.0, 0.0], [4.0, 0.0, 0.0], [0.0, 2.0, 2.0]]])
    assert match_outputs(counts, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[1, 0, 2]]
    absent = torch.tensor([[True, True, False]])
    assert match_outputs(block_counts(torch.zeros(1, 3, 1, 1, dtype=torch.long), 3) * absent.unsqueeze(-1), absent)[0, 2] == 2


def test_the_same_seed_mixes_the_same():
    _, first, _ = mixed()
    _, again, _ = mixed()
    assert torch.equal(first.x, again.x) and torch.equal(first.sources[0], again.sources[0])


def test_alpha_zero_leaves_the_batch_as_it_is():
    x, out, _ = mixed(alpha=0.0)
    assert torch.equal(out.x, x) and torch.equal(out.lam, torch.ones(10))


# ------------------------------------------------------------------------ the step
def test_clean_lam_adds_the_train_mode_clean_loss_of_the_saliency_pass():
    torch.manual_seed(2)
    model, twin = tiny_convnet(), tiny_convnet()
    twin.load_state_dict(model.state_dict())
    x, y = seeded_batch()
    step = mix_step(model, comixup(clean_lam=1.0), x, y)
    clean = 2.0 / NUM_CLASSES * F.cross_entropy(twin.train()(x), y)
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
