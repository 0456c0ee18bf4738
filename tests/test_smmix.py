"""SMMix: windows by the attention of a clean eval-mode pass (least attended in the sample, most attended in
the partner), area labels, and the official extra losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import TINY_VIT_CLI, seeded_batch, tiny_convnet, tiny_vit
from openmix.losses import soft_cross_entropy
from openmix.mixers.smmix import window_positions, window_sides
from openmix.mixers.transmix import capture_attention, vit_parts
from openmix.training import mix_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NUM_CLASSES = 10


def peaky_vit() -> torch.nn.Module:
    """``tiny_vit`` whose last attention is far from uniform."""
    torch.manual_seed(0)
    model = tiny_vit(NUM_CLASSES)
    with torch.no_grad():
        model.blocks[-1].attn.qkv.weight.mul_(6.0)
    return model


def clean_attention(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean logits and the patch-query mean attention ``(B, 4, 4)`` of ``model`` in eval mode."""
    training = model.training
    model.eval()
    with torch.no_grad(), capture_attention(vit_parts(model, "test"), "patch_mean") as seen:
        logits = model(x)
    model.train(training)
    return logits, seen[-1].view(-1, 4, 4)


def brute_force_windows(attention: torch.Tensor, side: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The official way: every window's sum by unfold, then argmin / argmax, translated to (row, col)."""
    rows, cols = attention.shape[-2:]
    sums = F.unfold(attention.unsqueeze(1), side).sum(1)  # (B, positions), row-major
    width = cols - side + 1
    least, most = sums.argmin(1), sums.argmax(1)
    return ([(int(i) // width, int(i) % width) for i in least], [(int(i) // width, int(i) % width) for i in most])


# ------------------------------------------------------------------ windows
def test_window_sides_are_the_officials():
    assert window_sides((14, 14), 0.25, 0.75) == (3, 10)
    assert window_sides((7, 7), 0.25, 0.75) == (1, 5)
    assert window_sides((4, 6), 0.25, 0.75) == (1, 3)  # the shorter side


@pytest.mark.parametrize("side", [1, 2, 3, 5])
def test_window_positions_agree_with_the_official_unfold(side):
    attention = torch.rand(16, 7, 7, generator=torch.Generator().manual_seed(side))
    least, most = window_positions(attention, torch.full((16,), side))
    expected_least, expected_most = brute_force_windows(attention, side)
    assert [tuple(p) for p in least.tolist()] == expected_least and [tuple(p) for p in most.tolist()] == expected_most


def test_each_map_may_have_its_own_side():
    attention = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    least, most = window_positions(attention, torch.tensor([2, 4]))
    for i, side in enumerate((2, 4)):
        expected_least, expected_most = brute_force_windows(attention[i : i + 1], side)
        assert tuple(least[i].tolist()) == expected_least[0] and tuple(most[i].tolist()) == expected_most[0]


def test_the_partners_most_attended_window_replaces_the_samples_least_attended_one():
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, mode="elem", seed=0), x, y)
    _, attention = clean_attention(model, x)
    side = torch.round(torch.sqrt((1 - step.mix.lam) * 16)).long()  # lam = 1 - s^2 / 16
    expected = x.clone()
    for i in range(8):
        s, j = int(side[i]), int(step.mix.index[i])
        (r, c), (pr, pc) = brute_force_windows(attention[i : i + 1], s)[0][0], brute_force_windows(attention[j : j + 1], s)[1][0]
        expected[i, :, 4 * r : 4 * (r + s), 4 * c : 4 * (c + s)] = x[j, :, 4 * pr : 4 * (pr + s), 4 * pc : 4 * (pc + s)]
    torch.testing.assert_close(step.mix.x, expected)


def test_lam_is_the_kept_area_and_the_targets_follow_it():
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, mode="elem", seed=1), x, y)
    torch.testing.assert_close(step.mix.lam, step.mix.mask.flatten(1).mean(1))
    assert set((16 * (1 - step.mix.lam)).round().long().tolist()) <= {1, 4, 9}  # windows of 1 to 3 tokens
    onehot = F.one_hot(y, NUM_CLASSES).float()
    lam = step.mix.lam[:, None]
    torch.testing.assert_close(step.mix.y, lam * onehot + (1 - lam) * onehot[step.mix.index])


def test_targets_follow_the_moved_window():
    """A partner's keypoint inside its most attended window lands in the sample's least attended one, shown."""
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, pairing="flip", seed=0), x, y)
    _, attention = clean_attention(model, x)
    side = int(torch.round(torch.sqrt((1 - step.mix.lam[0]) * 16)))
    (r, c), (pr, pc) = brute_force_windows(attention[:1], side)[0][0], brute_force_windows(attention[7:8], side)[1][0]
    points = torch.zeros(8, 1, 2)
    points[7, 0] = torch.tensor([4.0 * pc + 0.5, 4.0 * pr + 0.5])  # (x, y) in the partner's window
    moved, shown = step.mix.keypoints(points)
    torch.testing.assert_close(moved[0, 1], torch.tensor([4.0 * c + 0.5, 4.0 * r + 0.5]))
    assert bool(shown[0, 1])


def test_a_box_on_the_partners_window_lands_on_the_samples_window_whole():
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, pairing="flip", seed=0), x, y)
    _, attention = clean_attention(model, x)
    s = int(torch.round(torch.sqrt((1 - step.mix.lam[0]) * 16)))
    (r, c), (pr, pc) = brute_force_windows(attention[:1], s)[0][0], brute_force_windows(attention[7:8], s)[1][0]
    boxes = torch.zeros(8, 1, 4)
    boxes[7, 0] = torch.tensor([4.0 * pc, 4.0 * pr, 4.0 * (pc + s), 4.0 * (pr + s)])  # the partner's window
    moved, valid, visible = step.mix.boxes(boxes)
    torch.testing.assert_close(moved[0, 1], torch.tensor([4.0 * c, 4.0 * r, 4.0 * (c + s), 4.0 * (r + s)]))
    assert bool(valid[0, 1]) and float(visible[0, 1]) == 1.0


# ------------------------------------------------------------------ the passes
def test_a_step_is_a_clean_eval_pass_without_gradients_then_the_mixed_forward():
    model, (x, y) = peaky_vit(), seeded_batch()
    seen = []
    model.patch_embed.register_forward_hook(lambda module, *args: seen.append((module.training, torch.is_grad_enabled())))
    mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, seed=0), x, y)
    assert seen == [(False, False), (True, True)] and model.training


def test_each_submodule_keeps_its_own_mode_after_the_clean_pass():
    model, (x, y) = peaky_vit(), seeded_batch()
    model.train()
    model.blocks[0].eval()  # a block left in eval on purpose (e.g. frozen) stays so
    mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, seed=0), x, y)
    assert model.training and not model.blocks[0].training and model.blocks[1].training


def test_a_model_in_eval_mode_stays_in_it():
    model, (x, y) = peaky_vit().eval(), seeded_batch()
    mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, seed=0), x, y)
    assert not model.training


# ------------------------------------------------------------------ the losses
def test_without_the_extra_losses_it_is_the_mixed_cross_entropy():
    model, (x, y) = peaky_vit(), seeded_batch()
    mixer = openmix.build("smmix", num_classes=NUM_CLASSES, fine_weight=0.0, consistency_weight=0.0, seed=0)
    step = mix_step(model, mixer, x, y)
    torch.testing.assert_close(step.loss, soft_cross_entropy(model(step.mix.x), step.mix.y))
    assert sorted(step.aux) == ["mix"]


def test_the_consistency_loss_is_the_kl_to_the_mixed_clean_logits():
    model, (x, y) = peaky_vit(), seeded_batch()
    mixer = openmix.build("smmix", num_classes=NUM_CLASSES, fine_weight=0.0, seed=0)
    step = mix_step(model, mixer, x, y)
    clean, _ = clean_attention(model, x)
    lam = step.mix.lam[:, None]
    mixed = lam * clean + (1 - lam) * clean[step.mix.index]
    p, log_q = F.softmax(mixed, 1), F.log_softmax(step.logits, 1)
    expected = (p * (p.log() - log_q)).sum(1).mean()
    torch.testing.assert_close(step.aux["consistency"], expected)
    torch.testing.assert_close(step.loss, step.aux["mix"] + expected)


def test_the_fine_loss_classifies_each_regions_mean_token():
    model, (x, y) = peaky_vit(), seeded_batch()
    mixer = openmix.build("smmix", num_classes=NUM_CLASSES, consistency_weight=0.0, seed=0)
    step = mix_step(model, mixer, x, y)
    tokens = model.forward_features(step.mix.x)[:, 1:]  # (B, 16, D), the class token dropped
    pasted = (step.mix.mask[:, 0, ::4, ::4] == 0).flatten(1).float()[..., None]  # (B, 16, 1)
    own_mean = (tokens * (1 - pasted)).sum(1) / (1 - pasted).sum(1)
    pasted_mean = (tokens * pasted).sum(1) / pasted.sum(1)
    onehot = F.one_hot(y, NUM_CLASSES).float()
    expected = 0.5 * (soft_cross_entropy(model.head(own_mean), onehot)
                      + soft_cross_entropy(model.head(pasted_mean), onehot[step.mix.index]))
    torch.testing.assert_close(step.aux["fine"], expected)


def test_samples_the_prob_coin_skips_have_no_window_and_finite_losses():
    model, (x, y) = peaky_vit(), seeded_batch(n=16)
    step = mix_step(model, openmix.build("smmix", num_classes=NUM_CLASSES, mode="elem", prob=0.5, seed=2), x, y)
    whole = step.mix.lam == 1
    assert 0 < int(whole.sum()) < 16
    assert torch.equal(step.mix.x[whole], x[whole]) and all(torch.isfinite(v) for v in step.aux.values())


# ------------------------------------------------------------------ errors
def test_a_cnn_is_refused():
    with pytest.raises(TypeError, match="SMMix .* needs a timm VisionTransformer.*got SmallConvNet"):
        openmix.build("smmix", num_classes=NUM_CLASSES).check_model(tiny_convnet())


def test_it_takes_no_alpha():
    with pytest.raises(TypeError, match="no alpha"):
        openmix.build("smmix", num_classes=NUM_CLASSES, alpha=1.0)


@pytest.mark.parametrize("kwargs", [{"max_side_ratio": 1.0}, {"min_side_ratio": 0.8}, {"fine_weight": -1.0},
                                    {"consistency_weight": float("nan")}])
def test_bad_settings_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        openmix.build("smmix", num_classes=NUM_CLASSES, **kwargs)


def test_drawing_before_a_step_says_what_it_needs():
    with pytest.raises(RuntimeError, match="patch grid.*mixer.step"):
        openmix.build("smmix", num_classes=NUM_CLASSES).sample_params(torch.rand(2, 1, 16, 16))


def test_a_grid_of_one_patch_is_a_clear_error():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=16, in_chans=1, num_classes=NUM_CLASSES, embed_dim=32, depth=1,
                            num_heads=2)
    x, y = seeded_batch()
    with pytest.raises(ValueError, match="at least 2x2"):
        mix_step(vit, openmix.build("smmix", num_classes=NUM_CLASSES, seed=0), x, y)


# ------------------------------------------------------------------ the command line
def test_openmix_train_runs_it_on_a_small_vit(tmp_path):
    from test_cli import run

    result = run(tmp_path, *TINY_VIT_CLI, "mixer=smmix", "epochs=1")
    assert result["mixer"] == "smmix" and result["model"] == "vit_tiny_patch16_224"
