"""PuzzleMix: the official energy, the batched solver's quality, transport, the training step, per-dataset settings."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openmix
from openmix.mixers.puzzlemix import (
    PuzzleProblem,
    input_saliency,
    mask_transport,
    puzzle_energy,
    puzzle_masks,
    puzzle_problem,
    solve_puzzle,
    transport_blocks,
)
from openmix.mixers.puzzlemix.solver import _viterbi
from openmix.mixers.puzzlemix.transport import transport_cost
from openmix.training import build_mixer, mix_step

NUM_CLASSES = 5


def random_problems(batch: int, grid: int, seed: int, *, size: int = 32, sharp: bool = False) -> PuzzleProblem:
    """Smooth random saliency and images, a random lam per sample; float64."""
    gen = torch.Generator().manual_seed(seed)
    sal = F.avg_pool2d(torch.randn(batch, 1, size + 6, size + 6, generator=gen, dtype=torch.float64), 7, 1)[:, 0].square()
    if sharp:
        sal = sal.pow(3)
    images = F.avg_pool2d(torch.rand(batch, 3, size + 4, size + 4, generator=gen, dtype=torch.float64), 5, 1)
    index = torch.randperm(batch, generator=gen)
    lam = torch.rand(batch, generator=gen, dtype=torch.float64)
    return puzzle_problem(sal, images, index, lam, grid)


def brute_force_minimum(problem: PuzzleProblem) -> torch.Tensor:
    """The optimal energy of every sample, by evaluating all L^(G*G) labellings."""
    batch, grid, _, n_labels = problem.unary.shape
    every = torch.tensor(list(itertools.product(range(n_labels), repeat=grid * grid))).view(-1, grid, grid)
    best = torch.full((batch,), float("inf"), dtype=problem.unary.dtype)
    for chunk in every.split(4096):
        for b in range(batch):  # test reference only: a plain loop is clearest
            one = PuzzleProblem(*(t[b : b + 1].expand(chunk.shape[0], *t.shape[1:]) for t in problem))
            best[b] = torch.minimum(best[b], puzzle_energy(chunk, one).min())
    return best


def official_plan_dense(mask: torch.Tensor, saliency: torch.Tensor, t_eps: float) -> torch.Tensor:
    """The official greedy transport, restated densely: (B, N, N) 0/1 plan, rows = sources."""
    batch, grid, _ = mask.shape
    n = grid * grid
    visible = (mask > 0).to(saliency.dtype).reshape(batch, 1, n)
    cost = t_eps * transport_cost(grid, dtype=saliency.dtype) - saliency.reshape(batch, n, 1) * visible
    for _ in range(grid):
        plan = F.one_hot(cost.argmin(-1), n).to(cost.dtype)  # each source takes its cheapest target
        fight = plan * cost  # sources not contesting a target show 0 there
        winner = F.one_hot(fight.argmin(-2), n).transpose(1, 2).to(cost.dtype) * plan
        cost = cost + (1 - winner) * plan
    return winner


def tiny_model(channels: int = 3) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(24, NUM_CLASSES),
    )


def puzzlemix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("puzzlemix", **kwargs)


# ------------------------------------------------------------------------ energy
def test_energy_terms_equal_the_official_code():
    # numbers printed by snu-mllab/PuzzleMix mixup_graph (e2dbf3a) on this input: unary of
    # the labels and the edge weights it hands to gco (before its int32 scaling)
    gen_x = torch.sin(torch.arange(2 * 2 * 8 * 8, dtype=torch.float32) * 1.7).view(2, 2, 8, 8)
    sal = torch.cos(torch.arange(2 * 8 * 8, dtype=torch.float32) * 0.9).view(2, 8, 8) ** 2
    problem = puzzle_problem(sal, gen_x, torch.tensor([1, 0]), 0.3, 2, neigh_size=2, mean=[0.5, 0.4], std=[0.2, 0.3])
    unary = [[0.3791159, 0.3001061, 0.2904112, 0.3736527, 0.2984698, 0.2926015,
              0.3752019, 0.2982261, 0.290565, 0.3730582, 0.2957629, 0.2877823],
             [0.3751409, 0.3001061, 0.2943861, 0.3773313, 0.2984698, 0.288923,
              0.3752948, 0.2982261, 0.2904721, 0.3725121, 0.2957629, 0.2883284]]
    torch.testing.assert_close(problem.unary.flatten(1), torch.tensor(unary), atol=2e-7, rtol=0)
    torch.testing.assert_close(problem.w_v.flatten(1), torch.tensor([[0.03681711, 0.03725534]] * 2), atol=1e-8, rtol=0)
    torch.testing.assert_close(problem.w_h.flatten(1), torch.tensor([[0.03536315, 0.03501773]] * 2), atol=1e-8, rtol=0)


def test_constant_images_leave_saliency_prior_and_beta():
    # no colour edges: unary = m s' + (1 - m) s + eta/G^2 (-log P(l)), edges = beta / (16 G)
    sal = torch.rand(2, 8, 8, dtype=torch.float64)
    problem = puzzle_problem(sal, torch.ones(2, 3, 8, 8), torch.tensor([1, 0]), 0.25, 4)
    s = sal.view(2, 4, 2, 4, 2).sum((2, 4))
    s = s / s.sum((1, 2), keepdim=True)
    prior = -torch.log(torch.tensor([0.25**2, 2 * 0.25 * 0.75, 0.75**2], dtype=torch.float64) + 1e-8) * 0.2 / 16
    m = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    expected = m * s.flip(0).unsqueeze(-1) + (1 - m) * s.unsqueeze(-1) + prior
    torch.testing.assert_close(problem.unary, expected)
    torch.testing.assert_close(problem.w_v, torch.full((2, 3, 4), 1.2 / 64, dtype=torch.float64))


@pytest.mark.parametrize("grid", [2, 3])
def test_exact_solver_finds_the_brute_force_optimum(grid):
    problem = random_problems(8, grid, seed=grid, size=24)
    labels = solve_puzzle(problem)  # auto: exact row DP on these grids
    torch.testing.assert_close(puzzle_energy(labels, problem), brute_force_minimum(problem), rtol=1e-12, atol=0)


@pytest.mark.parametrize("grid", [2, 3])
def test_dual_solver_is_within_one_percent_of_the_optimum(grid):
    problem = random_problems(8, grid, seed=10 + grid, size=24, sharp=True)
    labels, bound = solve_puzzle(problem, method="dual", return_bound=True)
    best = brute_force_minimum(problem)
    assert bool((puzzle_energy(labels, problem) <= best * 1.01).all())
    assert bool((bound <= best * (1 + 1e-9)).all())  # the dual value never exceeds the optimum


@pytest.mark.parametrize("grid", [8, 16])
def test_dual_bound_certifies_near_optimal_masks(grid):
    problem = random_problems(24, grid, seed=grid)
    labels, bound = solve_puzzle(problem, return_bound=True)
    energy = puzzle_energy(labels, problem)
    assert bool((bound <= energy * (1 + 1e-9)).all())
    assert float((energy / bound - 1).mean()) < 2e-3  # within 0.2% of optimal on average, certified


def cnn_saliency_problems(grid: int) -> PuzzleProblem:
    """Input-gradient saliency of a small CNN on smooth images: the maps PuzzleMix really sees."""
    torch.manual_seed(0)
    layers = [m for i in range(4) for m in (torch.nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1),
                                            torch.nn.BatchNorm2d(16), torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(1)
    x = F.interpolate(torch.rand(16, 3, 8, 8, generator=gen), size=32, mode="bilinear")
    sal = input_saliency(model, x, torch.randint(0, 10, (16,), generator=gen))
    return puzzle_problem(sal.double(), x.double(), torch.randperm(16, generator=gen), 0.3, grid)


def test_input_gradient_saliency_at_g16_is_solved_near_optimally():
    # strongly coupled: plain parallel min-marginal averaging oscillated here (1.7% above the bound);
    # decoding each block from its own min-marginals ended 0.05% above it, line decoding 0.01%
    problem = cnn_saliency_problems(16)
    labels, bound = solve_puzzle(problem.to(torch.float32), return_bound=True)
    assert float((puzzle_energy(labels, problem) / bound.double() - 1).mean()) < 2.5e-4


def test_chain_solver_finds_the_exact_chain_minimum():
    gen = torch.Generator().manual_seed(0)
    unary = torch.rand(5, 4, 3, generator=gen, dtype=torch.float64)  # 5 positions, 4 chains, 3 labels
    edge = torch.rand(4, 4, 1, 1, generator=gen, dtype=torch.float64) * 2
    levels = torch.arange(3.0, dtype=torch.float64)
    along = edge * (levels.view(-1, 1) - levels.view(1, -1)).square()  # (4 edges, 4 chains, 3, 3)
    labels = _viterbi(unary, along)

    def chain_energy(lab: torch.Tensor) -> torch.Tensor:  # lab (5, chains)
        u = unary.gather(2, lab.unsqueeze(-1)).squeeze(-1).sum(0)
        return u + along.flatten(2).gather(2, (lab[:-1] * 3 + lab[1:]).unsqueeze(-1)).squeeze(-1).sum(0)

    every = torch.tensor(list(itertools.product(range(3), repeat=5)))  # (243, 5)
    best = torch.stack([chain_energy(lab.view(5, 1).expand(5, 4)) for lab in every]).min(0).values
    torch.testing.assert_close(chain_energy(labels), best)


def test_dual_solver_matches_exact_dp_on_4x4():
    problem = random_problems(32, 4, seed=4, sharp=True)
    exact = puzzle_energy(solve_puzzle(problem, method="exact"), problem)
    dual = puzzle_energy(solve_puzzle(problem, method="dual"), problem)
    assert bool((dual >= exact * (1 - 1e-12)).all())
    assert float((dual / exact - 1).mean()) < 1e-3


def test_float_energy_survives_where_the_official_int32_scaling_overflows():
    grid = 16
    sal = torch.full((2, 32, 32), 1e-3, dtype=torch.float64)
    sal[0, :2, :2] = 3.0  # sample 0: block (0, 0) holds ~92% of the saliency; sample 1 is flat
    problem = puzzle_problem(sal, torch.rand(2, 3, 32, 32), torch.tensor([1, 0]), 0.5, grid)
    hiding = problem.unary[0, 0, 0, 2]  # cost of covering that block with the partner
    assert float(hiding) > 0.08
    # official: int32(1000 G^2 * unary), then gco's float path multiplies by 1e5 into int32
    scaled = np.int64(np.int32(1000 * grid**2 * float(hiding))) * 100000
    assert scaled > np.iinfo(np.int32).max
    labels, bound = solve_puzzle(problem.to(torch.float32), return_bound=True)
    energy = puzzle_energy(labels, problem)
    assert bool(torch.isfinite(energy).all()) and bool((energy >= bound - 1e-6).all())
    assert int(labels[0, 0, 0]) == 0  # sample 0 keeps its salient block
    assert int(labels[1, 0, 0]) == 2  # sample 1 shows it (its partner's) there


# ------------------------------------------------------------------------ masks
def test_masks_take_the_mixing_levels():
    gen = torch.Generator().manual_seed(0)
    masks = puzzle_masks(torch.rand(6, 16, 16, generator=gen), torch.rand(6, 3, 16, 16, generator=gen),
                         torch.randperm(6, generator=gen), torch.rand(6, generator=gen), 4)
    assert masks.shape == (6, 4, 4)
    assert set(masks.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_salient_halves_are_kept():
    sal = torch.zeros(2, 8, 8)
    sal[0, :4], sal[1, 4:] = 1.0, 1.0  # sample 0: top half, sample 1: bottom half
    masks = puzzle_masks(sal, torch.rand(2, 1, 8, 8), torch.tensor([1, 0]), 0.5, 2)
    torch.testing.assert_close(masks[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(masks[1], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))  # own bottom, the partner's top


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixer_lam_is_the_mask_mean_and_targets_follow(mode):
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % NUM_CLASSES
    out = puzzlemix(block_nums=(2, 4), mode=mode, seed=3, transport=False)(x, y, saliency=torch.rand(8, 16, 16))
    assert set(out.mask.unique().tolist()) <= {0.0, 0.5, 1.0}
    torch.testing.assert_close(out.lam, out.mask.flatten(1).mean(1))
    torch.testing.assert_close(out.x, out.mask * x + (1 - out.mask) * x[out.index])
    onehot = F.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, out.lam[:, None] * onehot + (1 - out.lam[:, None]) * onehot[out.index])


def test_prob_zero_is_a_plain_step_without_saliency_pass():
    model, calls = tiny_model(), []
    model.register_forward_hook(lambda *_: calls.append(1))
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    step = mix_step(model, puzzlemix(block_nums=(2,), prob=0.0), x, y)
    assert len(calls) == 1  # one forward: no saliency pass
    torch.testing.assert_close(step.mix.lam, torch.ones(4))
    torch.testing.assert_close(step.loss, F.cross_entropy(model(x), y))


def test_samples_skipped_by_elem_prob_stay_unmixed():
    x = torch.rand(32, 3, 16, 16)
    out = puzzlemix(block_nums=(4,), mode="elem", prob=0.5, seed=9)(x, torch.arange(32) % NUM_CLASSES,
                                                                    saliency=torch.rand(32, 16, 16))
    skipped = out.lam == 1
    assert 3 < int(skipped.sum()) < 29
    torch.testing.assert_close(out.x[skipped], x[skipped])


def test_same_seed_same_mix():
    x, y, sal = torch.rand(6, 3, 16, 16), torch.arange(6) % NUM_CLASSES, torch.rand(6, 16, 16)
    first = puzzlemix(seed=5, block_nums=(4, 8))(x, y, saliency=sal)
    again = puzzlemix(seed=5, block_nums=(4, 8))(x, y, saliency=sal)
    torch.testing.assert_close(first.x, again.x)


# --------------------------------------------------------------------- transport
@pytest.mark.parametrize("grid", [2, 4, 8])
def test_transport_reproduces_the_official_greedy_plan(grid):
    gen = torch.Generator().manual_seed(grid)
    mask = torch.randint(0, 3, (32, grid, grid), generator=gen).float() / 2
    mask[:8] = (torch.rand(8, grid, grid, generator=gen) < 0.15).float()  # mostly hidden: crowded targets
    sal = torch.rand(32, grid, grid, generator=gen) ** 4
    sal[8:16] = (sal[8:16] > 0.3).float() + 1e-6  # many equal costs: ties
    sal = sal / sal.sum((1, 2), keepdim=True)
    plan = official_plan_dense(mask, sal, 0.8)
    expected = torch.where(plan.sum(1) > 0, plan.argmax(1), -1)
    assert torch.equal(mask_transport(mask, sal, 0.8), expected)


def test_transport_moves_hidden_saliency_into_view_and_keeps_blocks_distinct():
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(64, 4, 4, generator=gen) > 0.5).float()
    sal = torch.rand(64, 4, 4, generator=gen) ** 6
    sal = sal / sal.sum((1, 2), keepdim=True)
    src = mask_transport(mask, sal, 0.8)
    won = src[src >= 0]
    for row in src:  # every source lands at most once: a partial permutation
        kept = row[row >= 0]
        assert kept.unique().numel() == kept.numel()
    assert won.numel() > 0
    x = torch.rand(64, 2, 8, 8)
    moved = transport_blocks(x, src, 4)
    blocks = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(64, 2, 16, 4)
    out_blocks = moved.unfold(2, 2, 2).unfold(3, 2, 2).reshape(64, 2, 16, 4)
    for b in range(3):
        for j in range(16):
            expect = blocks[b, :, src[b, j]] if src[b, j] >= 0 else torch.zeros(2, 4)
            torch.testing.assert_close(out_blocks[b, :, j], expect)
    # visible targets never lose their block, and nothing moves where every cell is visible
    assert bool((src[mask.flatten(1) > 0] >= 0).all())
    assert torch.equal(mask_transport(torch.ones(4, 4, 4), sal[:4], 0.8), torch.arange(16).expand(4, 16))


def test_a_hidden_salient_block_moves_to_the_free_visible_neighbour():
    sal = torch.tensor([[[0.0, 0.9], [0.05, 0.05]]])
    src = mask_transport(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), sal + 1e-9, 0.8)
    assert int(src[0, 0]) == 1  # the salient hidden cell 1 takes visible cell 0
    assert int(src[0, 1]) == -1  # hidden cell 1 is left empty (zeros), as in the official code


# ------------------------------------------------------------------ training
def test_training_steps_stay_finite_and_reach_every_parameter():
    torch.manual_seed(0)
    model, mixer = tiny_model(), puzzlemix(block_nums=(2, 4, 8), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % NUM_CLASSES
    losses = []
    for _ in range(3):
        step = mix_step(model, mixer, x, y)
        step.loss.backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
        opt.step()
        opt.zero_grad()
        losses.append(float(step.loss.detach()))
    assert all(np.isfinite(losses)) and max(losses) < 10 * np.log(NUM_CLASSES)
    torch.testing.assert_close(step.mix.lam, step.mix.mask.flatten(1).mean(1))


def test_saliency_pass_leaves_no_gradient_and_no_bn_update():
    torch.manual_seed(1)
    model, mixer = tiny_model(), puzzlemix(block_nums=(4,), seed=1)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % NUM_CLASSES
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # a user's accumulated gradient must survive the saliency pass
    bn = model[1]
    seen = []
    bn.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    reference = tiny_model()
    reference.load_state_dict(model.state_dict())
    step = mix_step(model, mixer, x, y)
    assert seen == [False, True]  # saliency forward in eval mode, the mixed forward in train mode
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    for p in model.parameters():
        p.grad = None
    step.loss.backward()
    logits = reference(step.mix.x)  # the mixed loss alone, on a twin model (BN stats: one update)
    expected = torch.autograd.grad(openmix.losses.soft_cross_entropy(logits, step.mix.y), list(reference.parameters()))
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(bn.running_mean, reference[1].running_mean)


def test_modes_are_restored_module_by_module():
    model, mixer = tiny_model(), puzzlemix(block_nums=(4,), seed=2)
    model.train()
    model[1].eval()  # a frozen BN stays frozen
    mix_step(model, mixer, torch.rand(4, 3, 8, 8), torch.arange(4))
    assert model.training and not model[1].training and model[0].training


def test_clean_lam_adds_the_train_mode_clean_loss():
    torch.manual_seed(2)
    model, mixer = tiny_model(), puzzlemix(block_nums=(4,), seed=4, clean_lam=1.0)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % NUM_CLASSES
    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    step = mix_step(model, mixer, x, y)
    mixed = openmix.losses.soft_cross_entropy(step.logits, step.mix.y)
    clean = 2.0 * F.cross_entropy(twin.train()(x), y)  # beside the soft CE: the official ratio (clean_loss_weight)
    torch.testing.assert_close(step.loss, mixed + clean)


def test_beside_the_official_bce_the_clean_loss_has_the_official_weight():
    torch.manual_seed(2)
    model, mixer = tiny_model(), puzzlemix(block_nums=(4,), seed=4, clean_lam=1.0, loss="bce")
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % NUM_CLASSES
    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    step = mix_step(model, mixer, x, y)
    mixed = torch.nn.BCELoss()(step.logits.softmax(1), step.mix.y)
    clean = 2.0 / NUM_CLASSES * F.cross_entropy(twin.train()(x), y)  # main.py: 2 * clean_lam / num_classes
    torch.testing.assert_close(step.loss, mixed + clean)


def test_bce_loss_is_the_official_bce_on_softmax():
    torch.manual_seed(3)
    model, mixer = tiny_model(), puzzlemix(block_nums=(2,), seed=6, loss="bce")
    step = mix_step(model, mixer, torch.rand(6, 3, 8, 8), torch.arange(6) % NUM_CLASSES)
    expected = torch.nn.BCELoss()(step.logits.softmax(1), step.mix.y)
    torch.testing.assert_close(step.loss, expected)


def test_adversarial_step_stays_within_eps_and_runs():
    torch.manual_seed(4)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    model = tiny_model()
    mixer = puzzlemix(block_nums=(4,), seed=7, adv_p=1.0, adv_eps=10.0, transport=False, mean=mean, std=std)
    x = (torch.rand(6, 3, 8, 8) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    step = mix_step(model, mixer, x, torch.arange(6) % NUM_CLASSES)
    clean = step.mix.mask * x + (1 - step.mix.mask) * x[step.mix.index]
    pixel_change = (step.mix.x - clean) * torch.tensor(std).view(1, 3, 1, 1)
    assert 0 < float(pixel_change.abs().max()) <= 10 / 255 + 1e-6
    assert torch.isfinite(step.loss)


def test_one_channel_images():
    model, mixer = tiny_model(1), puzzlemix(block_nums=(2, 4, 7, 14), seed=8)
    step = mix_step(model, mixer, torch.rand(6, 1, 28, 28), torch.arange(6) % NUM_CLASSES)
    assert step.mix.x.shape == (6, 1, 28, 28)
    torch.testing.assert_close(step.mix.lam, step.mix.mask.flatten(1).mean(1))


def test_input_saliency_is_rms_of_the_input_gradient():
    model = tiny_model().eval()
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    torch.testing.assert_close(input_saliency(model, x, y), grad.square().mean(1).sqrt())


def test_default_grids_are_the_official_ones_that_fit_the_image():
    model, mixer = tiny_model(), puzzlemix(seed=0)
    drawn = {mixer.sample_params(torch.rand(2, 3, 28, 28))["block_num"] for _ in range(40)}
    assert drawn == {2, 4}  # 28 px: of {2, 4, 8, 16}, the sides that divide it
    assert {mixer.sample_params(torch.rand(2, 3, 32, 32))["block_num"] for _ in range(60)} == {2, 4, 8, 16}
    assert torch.isfinite(mix_step(model, mixer, torch.rand(2, 3, 28, 28), torch.tensor([0, 1])).loss)


# ---------------------------------------------------------- per-dataset settings
def composed_puzzlemix(experiment: str) -> openmix.Mixer:
    """The PuzzleMix that ``openmix-train experiment=<experiment> mixer=puzzlemix`` builds."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from openmix.cli.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "mixer=puzzlemix"])
    return build_mixer(OmegaConf.to_container(cfg.mixer, resolve=True), num_classes=NUM_CLASSES, seed=0)


@pytest.mark.parametrize("experiment", ["imagenet_r50", "imagenet_r50_300ep"])
def test_imagenet_experiments_transport_whole_blocks_on_grids_up_to_8(experiment):
    # OpenMixup's ImageNet config: t_size=-1, block_num=4 (grid sides 2 ** randint(1, 4))
    mixer = composed_puzzlemix(experiment)
    assert mixer.t_size == -1 and mixer.block_nums == (2, 4, 8)
    assert {mixer.sample_params(torch.rand(2, 3, 224, 224))["block_num"] for _ in range(40)} == {2, 4, 8}


@pytest.mark.parametrize("experiment", ["cifar100_r18", "tinyimagenet_r18"])
def test_cifar_and_tiny_imagenet_experiments_keep_the_official_settings(experiment):
    # OpenMixup's CIFAR and Tiny-ImageNet configs: t_size=4, block_num=5 (grid sides {2, 4, 8, 16})
    mixer = composed_puzzlemix(experiment)
    assert mixer.t_size == 4 and mixer.block_nums is None


def test_transport_in_small_cells_of_large_images_warns_once_and_names_t_size():
    # 224 px in 4-pixel cells: a 56 x 56 transport grid, 2 B N^2 floats = 4.7 GiB for 64 images
    x, y = torch.empty(64, 3, 224, 224, device="meta"), torch.zeros(64, dtype=torch.long, device="meta")
    sal = torch.empty(64, 224, 224, device="meta")
    mixer = puzzlemix(block_nums=(8,))
    with pytest.warns(UserWarning, match=r"4-pixel cells \(t_size=4\), a 56x56 grid .* 4\.7 GiB .* t_size=-1"):
        mixer(x, y, saliency=sal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixer(x, y, saliency=sal)  # once per mixer
        puzzlemix(block_nums=(8,), t_size=-1)(x, y, saliency=sal)  # whole blocks: an 8 x 8 grid


# -------------------------------------------------------------------- errors
def test_sizes_the_grid_does_not_divide_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"block_num \[8, 16\] does not divide the image side 28"):
        mix_step(model, puzzlemix(block_nums=(2, 4, 8, 16)), torch.rand(2, 3, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"none of the official grid sides \(2, 4, 8, 16\) divides the image side 7"):
        mix_step(model, puzzlemix(), torch.rand(2, 3, 7, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="square"):
        puzzlemix(block_nums=(2,))(torch.rand(2, 3, 16, 8), torch.tensor([0, 1]), saliency=torch.rand(2, 16, 8))
    with pytest.raises(ValueError, match="expects 4-D"):
        puzzlemix()(torch.rand(2, 3, 16), torch.tensor([0, 1]), saliency=torch.rand(2, 16))
    with pytest.raises(ValueError, match="mean/std need 1 or 3 values"):
        puzzlemix(block_nums=(2,), mean=[0.5, 0.5], std=[0.2, 0.2])(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]),
                                                                  saliency=torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="saliency must be"):
        puzzlemix(block_nums=(2,))(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), saliency=torch.rand(2, 4, 4))


def test_forward_without_saliency_explains_what_to_do():
    with pytest.raises(TypeError, match="mix_step"):
        puzzlemix()(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs", [{"block_nums": (1, 2)}, {"loss": "ce"}, {"n_labels": 1}, {"t_size": 0},
                                    {"adv_p": 2.0}, {"clean_lam": 1.0, "num_classes": None}, {"solver": "gco"}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        openmix.build("puzzlemix", **{"num_classes": NUM_CLASSES, **kwargs})


def test_registered_as_a_saliency_mixer():
    assert openmix.available()["puzzlemix"] == "saliency"
    assert "block_nums=None" in repr(puzzlemix()) and "block_nums=(2, 4)" in repr(puzzlemix(block_nums=(2, 4)))


# ------------------------------------------------------------------- vs gco
@pytest.mark.parametrize("source", ["smooth", "cnn"])
@pytest.mark.parametrize("grid", [4, 8, 12, 16])
def test_no_worse_than_the_official_gco_swap_on_average(grid, source):
    gco = pytest.importorskip("gco")
    if source == "cnn" and grid == 12:
        pytest.skip("the CNN maps are 32 px")
    problem = random_problems(16, grid, seed=100 + grid, size=48 if grid == 12 else 32) if source == "smooth" else cnn_saliency_problems(grid)
    scale = 1000 * grid**2  # the official int32 scaling (graphcut_multi)
    assert float(problem.unary.max()) * scale * 1e5 < np.iinfo(np.int32).max  # no overflow in this sample
    labels = []
    for unary, w_v, w_h in zip(*problem):  # the official per-sample loop
        pairwise = ((np.arange(3)[:, None] - np.arange(3)[None]) ** 2 / 4).astype(np.float32)
        cut = gco.cut_grid_graph((scale * unary.numpy()).astype(np.int32), pairwise, (scale * w_v.numpy()).astype(np.int32),
                                 (scale * w_h.numpy()).astype(np.int32), algorithm="swap")
        labels.append(torch.from_numpy(cut.astype(np.int64)).view(grid, grid))
    theirs = puzzle_energy(torch.stack(labels), problem)
    ours = puzzle_energy(solve_puzzle(problem.to(torch.float32)), problem)
    # smooth maps: below gco. CNN maps: gco's swap finds the optimum there (to float precision) and
    # the default 12 dual iterations trail it by ~0.0005% at G = 16 (24 iterations match it; before
    # line decoding 12 iterations trailed it by 0.04%)
    slack = 1e-6 if source == "smooth" else 2e-5
    assert float(ours.mean()) <= float(theirs.mean()) * (1 + slack)


def test_more_dual_iterations_reach_gco_on_cnn_maps_at_g16():
    gco = pytest.importorskip("gco")
    problem = cnn_saliency_problems(16)
    scale = 1000 * 16**2
    pairwise = ((np.arange(3)[:, None] - np.arange(3)[None]) ** 2 / 4).astype(np.float32)
    theirs = torch.stack([torch.from_numpy(gco.cut_grid_graph(
        (scale * u.numpy()).astype(np.int32), pairwise, (scale * v.numpy()).astype(np.int32),
        (scale * h.numpy()).astype(np.int32), algorithm="swap").astype(np.int64)).view(16, 16) for u, v, h in zip(*problem)])
    ours = solve_puzzle(problem.to(torch.float32), iters=24)
    assert float(puzzle_energy(ours, problem).mean()) <= float(puzzle_energy(theirs, problem).mean()) * (1 + 1e-6)
