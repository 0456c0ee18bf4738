"""GuidedMixup: the greedy saliency cycle (by hand and against the official algorithm), the pixel ratio and
its label, the blur and normalisation, the saliency passes (input gradient, spectral residual), the options,
training through mix_step and openmix-train, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import seeded_batch, tiny_convnet
from openmix.losses import soft_cross_entropy, softmax_bce
from openmix.mixers.guidedmixup import (gaussian_taps, greedy_cycle, greedy_pairing, guided_mask, guided_saliency,
                                        spectral_residual)
from openmix.mixers.puzzlemix import input_saliency
from openmix.targets import soft_targets
from openmix.training import mix_step

NUM_CLASSES = 10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def guided(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("prob", 1.0)
    kwargs.setdefault("seed", 0)
    return openmix.build("guidedmixup", **kwargs)


def official_cycle(distance: np.ndarray) -> list[int]:
    """The official ``onecycle_cover`` as FGVC's ``greedy_c`` calls it (diagonal masked first), restated with
    numpy: start at the most distant pair, walk to the farthest unvisited sample, close the cycle."""
    d = distance.astype(np.float64).copy()
    np.fill_diagonal(d, -np.inf)
    batch = d.shape[0]
    row, col = divmod(int(np.argmax(d)), batch)
    first, partner = row, [-1] * batch
    partner[row] = col
    d[:, row] = -np.inf
    for _ in range(batch - 2):
        row = col
        col = int(np.argmax(d[row]))
        partner[row] = col
        d[:, row] = -np.inf
    partner[col] = first
    return partner


# ------------------------------------------------------------------------ the greedy cycle
def test_the_cycle_walks_to_the_farthest_unvisited_sample_by_hand():
    d = torch.tensor([
        [0.0, 9.0, 1.0, 2.0, 3.0],
        [9.0, 0.0, 4.0, 7.0, 1.0],
        [1.0, 4.0, 0.0, 6.0, 8.0],
        [2.0, 7.0, 6.0, 0.0, 5.0],
        [3.0, 1.0, 8.0, 5.0, 0.0],
    ])
    # start 0 -> 1 (9); from 1 the farthest unvisited is 3 (7); from 3: 2 (6); from 2: 4 (8); 4 closes to 0
    assert greedy_cycle(d).tolist() == [1, 3, 4, 2, 0]


@pytest.mark.parametrize("batch", [3, 8, 17])
def test_the_cycle_is_the_official_onecycle_cover(batch):
    g = torch.Generator().manual_seed(batch)
    points = torch.randn(batch, 5, generator=g)
    d = torch.cdist(points, points)
    assert greedy_cycle(d).tolist() == official_cycle(d.numpy())


@pytest.mark.parametrize("batch", [2, 5, 16])
def test_the_cycle_is_one_permutation_through_every_sample(batch):
    g = torch.Generator().manual_seed(0)
    points = torch.randn(batch, 3, generator=g)
    index = greedy_cycle(torch.cdist(points, points))
    assert sorted(index.tolist()) == list(range(batch))
    seen, node = [], 0
    for _ in range(batch):  # following the partners visits every sample once before coming back
        seen.append(node)
        node = int(index[node])
    assert node == 0 and sorted(seen) == list(range(batch))


def test_equal_distances_still_give_a_permutation_where_the_official_argmax_does_not():
    """With every distance 0 the official argmax over the whole matrix lands on the diagonal and the
    result repeats a partner; openmix starts off the diagonal (ties to the lowest index)."""
    assert greedy_cycle(torch.zeros(4, 4)).tolist() == [1, 2, 3, 0]


def test_a_batch_of_one_is_its_own_partner():
    assert greedy_cycle(torch.zeros(1, 1)).tolist() == [0]


def test_pairing_by_saliency_maps_puts_salient_regions_apart():
    maps = torch.zeros(4, 4, 4)
    maps[0, :2, :2] = maps[1, :2, :2] = 1.0  # 0 and 1: top left
    maps[2, 2:, 2:] = maps[3, 2:, 2:] = 1.0  # 2 and 3: bottom right
    maps[1, 0, 0] = maps[3, 3, 3] = 2.0  # so that no two distances tie
    index = greedy_pairing(guided_saliency(maps, blur_size=0))
    corner = [0, 0, 1, 1]
    assert all(corner[i] != corner[j] for i, j in enumerate(index.tolist()))


# ------------------------------------------------------------------------ saliency, ratio, label
def test_the_blur_is_torchvisions_gaussian_7x7_sigma_3():
    from torchvision.transforms.v2.functional import gaussian_blur

    s = torch.rand(3, 12, 12)
    blurred = gaussian_blur(s.unsqueeze(1), [7, 7], [3.0, 3.0]).squeeze(1)
    expected = blurred / blurred.sum((1, 2), keepdim=True)
    torch.testing.assert_close(guided_saliency(s), expected)


def test_gaussian_taps_sum_to_one_and_peak_in_the_middle():
    taps = gaussian_taps(7, 3.0)
    assert len(taps) == 7 and abs(sum(taps) - 1.0) < 1e-12 and max(taps) == taps[3]


def test_the_mask_is_the_ratio_of_the_two_maps_by_hand():
    s = torch.tensor([[[0.1, 0.3], [0.2, 0.4]], [[0.3, 0.1], [0.2, 0.4]], [[0.0, 0.0], [0.5, 0.5]]])
    mask = guided_mask(s, torch.tensor([1, 2, 0]))
    expected = torch.tensor([[[0.25, 0.75], [0.5, 0.5]], [[1.0, 1.0], [2 / 7, 4 / 9]], [[0.0, 0.0], [5 / 7, 5 / 9]]])
    torch.testing.assert_close(mask, expected.unsqueeze(1))


def test_two_samples_partnered_both_ways_share_every_pixel():
    s = guided_saliency(torch.rand(2, 5, 5))
    mask = guided_mask(s, torch.tensor([1, 0]))
    torch.testing.assert_close(mask[0] + mask[1], torch.ones(1, 5, 5))


def test_zero_maps_mix_half_and_half_not_nan():
    out = guided()(torch.rand(4, 1, 8, 8), torch.arange(4), saliency=torch.zeros(4, 8, 8))
    torch.testing.assert_close(out.mask, torch.full((4, 1, 8, 8), 0.5))


def test_the_mix_its_lam_and_targets_by_hand():
    x, y = torch.rand(6, 2, 8, 8), torch.arange(6)
    raw = torch.rand(6, 8, 8)
    out = guided()(x, y, saliency=raw)
    s = guided_saliency(raw)
    index = greedy_pairing(s)
    m = (s / (s + s[index])).unsqueeze(1)
    torch.testing.assert_close(out.index, index)
    torch.testing.assert_close(out.x, m * x + (1 - m) * x[index])
    torch.testing.assert_close(out.lam, m.mean((1, 2, 3)))
    onehot = F.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, out.lam[:, None] * onehot + (1 - out.lam[:, None]) * onehot[index])


def test_the_mixed_batch_is_its_own_dense_target_and_has_no_hard_class_map():
    x = torch.rand(4, 1, 8, 8)
    out = guided()(x, torch.arange(4), saliency=torch.rand(4, 8, 8))
    torch.testing.assert_close(out.dense(x), out.x)
    assert not out.binary
    with pytest.raises(ValueError, match="no single owner"):
        out.class_map(torch.zeros(4, 8, 8, dtype=torch.long))


# ------------------------------------------------------------------------ the saliency passes
def test_ap_saliency_is_puzzlemixs_input_gradient_in_the_models_mode():
    model, (x, y) = tiny_convnet(), seeded_batch()
    expected = guided_saliency(input_saliency(model, x, soft_targets(y, NUM_CLASSES), eval_mode=False))
    mixer = guided()
    step = mix_step(model, mixer, x, y)
    index = greedy_pairing(expected)
    torch.testing.assert_close(step.mix.index, index)
    torch.testing.assert_close(step.mix.mask, guided_mask(expected, index))


def test_ap_saliency_pass_runs_in_train_mode_as_the_official_and_leaves_no_gradient():
    model, (x, y) = tiny_convnet(), seeded_batch()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mix_step(model, guided(), x, y)
    assert int(bn.num_batches_tracked) == 2  # the saliency pass and the mixed batch
    assert all(p.grad is None for p in model.parameters())


def test_sr_mixes_without_the_model():
    x, y = torch.rand(4, 3, 16, 16), torch.arange(4)
    out = guided(saliency="sr")(x, y)
    s = spectral_residual(x)
    index = greedy_pairing(s)
    torch.testing.assert_close(out.index, index)
    torch.testing.assert_close(out.mask, guided_mask(s, index))


def test_sr_step_runs_the_model_once():
    model, (x, y) = tiny_convnet(), seeded_batch()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    step = mix_step(model, guided(saliency="sr"), x, y)
    assert len(calls) == 1 and torch.isfinite(step.loss)


# ------------------------------------------------------------------------ options
def test_without_greedy_the_pairing_is_the_draw():
    out = guided(greedy=False, pairing="flip")(torch.rand(4, 1, 8, 8), torch.arange(4), saliency=torch.rand(4, 8, 8))
    assert out.index.tolist() == [3, 2, 1, 0]


def test_samples_skipped_by_elem_prob_stay_unmixed():
    out = guided(mode="elem", prob=0.5)(torch.rand(16, 1, 8, 8), torch.arange(16) % 10, saliency=torch.rand(16, 8, 8))
    skipped = out.lam == 1.0
    assert 0 < int(skipped.sum()) < 16
    assert bool((out.mask[skipped] == 1.0).all())


def test_prob_zero_is_a_plain_step_without_saliency_pass():
    model, (x, y) = tiny_convnet(), seeded_batch()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    step = mix_step(model, guided(prob=0.0), x, y)
    assert len(calls) == 1 and torch.equal(step.mix.lam, torch.ones(8))


def test_bce_loss_is_the_official_bce_on_softmax():
    model, (x, y) = tiny_convnet(), seeded_batch()
    step = mix_step(model, guided(loss="bce"), x, y)
    torch.testing.assert_close(step.loss, softmax_bce(step.logits, step.mix.y))


def test_clean_lam_adds_the_clean_loss_of_the_saliency_pass():
    model, (x, y) = tiny_convnet(), seeded_batch()
    step = mix_step(model, guided(clean_lam=1.0), x, y)
    clean = 2.0 * soft_cross_entropy(model(x), soft_targets(y, NUM_CLASSES))  # beside the soft CE (clean_loss_weight)
    torch.testing.assert_close(step.loss, soft_cross_entropy(step.logits, step.mix.y) + clean)


def test_the_default_is_the_official_guided_ap():
    mixer = openmix.build("guidedmixup", num_classes=NUM_CLASSES)
    assert (mixer.saliency, mixer.prob, mixer.greedy, mixer.blur_size, mixer.blur_sigma) == ("ap", 0.8, True, 7, 3.0)


# ------------------------------------------------------------------------ training and errors
def test_training_steps_stay_finite_and_reach_every_parameter():
    from helpers import assert_steps_train_every_parameter

    assert_steps_train_every_parameter(tiny_convnet(), guided(), *seeded_batch())


def test_openmix_train_runs_guidedmixup(tmp_path):
    from test_cli import run

    row = run(tmp_path, "mixer=guidedmixup", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "guidedmixup" and row["alpha"] is None


def test_openmix_train_runs_guided_sr(tmp_path):
    from test_cli import run

    row = run(tmp_path, "mixer=guidedmixup", "mixer.saliency=sr", "mixer.prob=0.5", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "guidedmixup"


def test_forward_with_ap_and_no_saliency_says_how_to_train():
    with pytest.raises(TypeError, match="mix_step"):
        guided()(torch.rand(2, 1, 8, 8), torch.arange(2))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": 1.0}, TypeError, "takes no alpha"),
    ({"saliency": "gradcam"}, ValueError, "saliency must be one of"),
    ({"blur_size": 4}, ValueError, "blur_size must be odd"),
    ({"blur_sigma": 0.0}, ValueError, "blur_sigma must be > 0"),
    ({"clean_lam": 1.0, "saliency": "sr"}, ValueError, "clean_lam > 0"),
    ({"mode": "pair"}, ValueError, "mode 'batch' or 'elem'"),
    ({"loss": "mse"}, ValueError, "loss must be one of"),
])
def test_bad_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        guided(**kwargs)


def test_bad_inputs_raise():
    mixer = guided()
    with pytest.raises(ValueError, match=r"saliency must be \(B, H, W\)"):
        mixer(torch.rand(2, 1, 8, 8), torch.arange(2), saliency=torch.rand(2, 8, 7))
    with pytest.raises(ValueError, match="4-D"):
        mixer(torch.rand(2, 1, 8), torch.arange(2), saliency=torch.rand(2, 8))
