"""SnapMix: the class activation maps against an explicit computation, the label weights by hand, the partner's
box resized into a box of another size, one extra forward (in train mode, running statistics moved once), the
targets that need not sum to 1 and what follows them (sparse, vector, accuracy), the other targets of the draw,
errors, and openmix-train."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openmix
from openmix.output import MixOutput
from openmix.mixers.snapmix import class_activation_maps, crop_paste, linear_classifier, snapmix_weights
from openmix.training import mix_step, mixed_accuracy
from helpers import assert_lightning_trains, assert_steps_train_every_parameter, seeded_batch, tiny_convnet, tiny_vit

NUM_CLASSES = 10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapmix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("snapmix", **kwargs)


def boxes(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows)


def forced(mixer: openmix.Mixer, x: torch.Tensor, index: list[int], lo, hi, source_lo, source_hi) -> dict:
    """Hand-made params: partners and both boxes ``(1 or B, 2)`` as ``(row, column)``."""
    params = mixer.sample_params(x)
    params.update(index=torch.tensor(index), lo=lo, hi=hi, source_lo=source_lo, source_hi=source_hi)
    return params


# ------------------------------------------------------------------ class activation maps
def test_the_cam_is_the_official_1x1_convolution_upsampled_and_normalised():
    g = torch.Generator().manual_seed(0)
    features, weight, bias = torch.randn(3, 4, 2, 3, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    labels = torch.tensor([4, 0, 4])
    maps = F.conv2d(features.relu(), weight.view(5, 4, 1, 1), bias)[torch.arange(3), labels]  # get_spm's form
    maps = F.interpolate(maps.unsqueeze(1), size=(6, 9), mode="bilinear", align_corners=False).squeeze(1)
    maps = maps - maps.flatten(1).min(1).values.view(3, 1, 1)
    expected = maps / maps.sum((1, 2), keepdim=True)
    torch.testing.assert_close(class_activation_maps(features, weight, bias, labels, (6, 9)), expected)


def test_a_constant_cam_has_no_mass_instead_of_nan():
    maps = class_activation_maps(torch.ones(2, 3, 2, 2), torch.ones(4, 3), torch.zeros(4), torch.tensor([1, 2]), (4, 4))
    assert torch.equal(maps, torch.zeros(2, 4, 4))


def test_the_step_takes_the_cam_of_each_samples_label_from_the_training_mode_model():
    """The CAM forward runs in the model's (train) mode: BatchNorm normalises with the batch's statistics."""
    model, (x, y) = tiny_convnet(), seeded_batch()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        expected = class_activation_maps(twin.forward_features(x), twin.fc.weight, twin.fc.bias, y, (16, 16))
        in_eval = class_activation_maps(twin.eval().forward_features(x), twin.fc.weight, twin.fc.bias, y, (16, 16))
    cam = snapmix().activation_maps(model, x, y)
    torch.testing.assert_close(cam, expected)
    assert not torch.allclose(cam, in_eval)
    torch.testing.assert_close(cam.sum((1, 2)), torch.ones(8))


# ------------------------------------------------------------------ label weights by hand
def test_label_weights_are_the_cam_mass_kept_and_pasted():
    cam = torch.zeros(2, 4, 4)
    cam[0, :2, :2] = 0.25  # sample 0's mass: all in the top-left 2x2
    cam[1, 3, :] = 0.25  # sample 1's: along the bottom row
    lo, hi = boxes([0, 0]), boxes([1, 4])  # target box: the top row
    source_lo, source_hi = boxes([3, 0]), boxes([4, 3])  # source box: the bottom row's first 3 pixels
    weights = snapmix_weights(cam, torch.tensor([1, 0]), lo, hi, source_lo, source_hi)
    # sample 0 loses half its mass (the top row holds 2 of its 4 cells) and gets 3 of sample 1's 4 cells;
    # sample 1 keeps all (nothing of it in the top row) and gets none of sample 0's (none in the bottom row)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.75], [1.0, 0.0]]))


def test_a_cam_without_mass_falls_back_to_the_area():
    cam = torch.zeros(2, 4, 4)
    cam[1] = 1.0 / 16
    weights = snapmix_weights(cam, torch.tensor([1, 0]), boxes([0, 0]), boxes([2, 2]), boxes([0, 0]), boxes([2, 4]))
    # sample 0's map is empty: it keeps the area 3/4; its partner's map is uniform: 8 of 16 cells in the source box
    # sample 1 keeps 12 of 16 cells of its own map; its partner (sample 0) has no map: the pasted area 1/4
    torch.testing.assert_close(weights, torch.tensor([[0.75, 0.5], [0.75, 0.25]]))


def test_an_empty_box_pastes_nothing_and_weighs_the_sample_alone():
    cam = torch.full((2, 4, 4), 1.0 / 16)
    weights = snapmix_weights(cam, torch.tensor([1, 0]), boxes([1, 1]), boxes([1, 1]), boxes([0, 0]), boxes([2, 2]))
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


# ------------------------------------------------------------------ boxes of different size
def test_the_partners_source_box_is_resized_into_the_samples_box_of_another_size():
    x = torch.rand(2, 3, 12, 12)
    mixer = snapmix()
    params = forced(mixer, x, [1, 0], boxes([2, 3]), boxes([6, 9]), boxes([5, 1]), boxes([7, 4]))  # 4x6 <- 2x3
    mixed, lam, mask = mixer.mix(x, params)
    official = F.interpolate(x[[1, 0], :, 5:7, 1:4], size=(4, 6), mode="bilinear", align_corners=True)
    torch.testing.assert_close(mixed[:, :, 2:6, 3:9], official)
    outside = mask.bool().expand_as(x)
    assert torch.equal(mixed[outside], x[outside]) and int((~outside[:, 0]).sum()) == 2 * 24
    torch.testing.assert_close(lam, torch.full((2,), 1 - 24 / 144))


def test_each_sample_pastes_its_own_boxes_in_elem_mode():
    x = torch.rand(2, 1, 8, 8)
    lo, hi, source_lo, source_hi = boxes([0, 0], [4, 2]), boxes([4, 4], [8, 5]), boxes([0, 0], [6, 6]), boxes([8, 8], [8, 7])
    mixer = snapmix(mode="elem")
    mixed, lam, _ = mixer.mix(x, forced(mixer, x, [1, 0], lo, hi, source_lo, source_hi))
    first = F.interpolate(x[1:, :, :, :], size=(4, 4), mode="bilinear", align_corners=True)  # the whole image into 4x4
    second = F.interpolate(x[:1, :, 6:8, 6:7], size=(4, 3), mode="bilinear", align_corners=True)
    torch.testing.assert_close(mixed[0, :, :4, :4], first[0])
    torch.testing.assert_close(mixed[1, :, 4:8, 2:5], second[0])
    torch.testing.assert_close(lam, torch.tensor([1 - 16 / 64, 1 - 12 / 64]))


def test_drawn_boxes_differ_in_size_and_lie_in_the_image():
    mixer = snapmix(mode="elem", seed=0)
    params = mixer.sample_params(torch.rand(64, 1, 32, 32))
    target, source = params["hi"] - params["lo"], params["source_hi"] - params["source_lo"]
    assert bool((target != source).any(1).float().mean() > 0.9)
    for lo, hi in ((params["lo"], params["hi"]), (params["source_lo"], params["source_hi"])):
        assert bool(((lo >= 0) & (lo <= hi) & (hi <= 32)).all())


def test_crop_paste_nearest_takes_the_closest_source_pixel_of_any_dtype():
    t = torch.arange(4).view(1, 1, 1, 4)
    out = crop_paste(t, boxes([0, 0]), boxes([1, 2]), boxes([0, 0]), boxes([1, 4]), nearest=True)
    assert out.dtype == torch.int64 and out.flatten().tolist() == [0, 0, 1, 1]  # positions 0, 1/3, 2/3, 1


# ------------------------------------------------------------------ the step
class Counting(nn.Module):
    """``tiny_convnet`` counting its ``forward_features`` calls, and whether each one had gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_convnet()
        self.fc, self.calls = self.net.fc, []

    def forward_features(self, x):
        self.calls.append(torch.is_grad_enabled())
        return self.net.forward_features(x)

    def forward_head(self, h):
        return self.net.forward_head(h)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_a_mixed_step_runs_one_extra_forward_without_gradients():
    model, (x, y) = Counting(), seeded_batch()
    mix_step(model, snapmix(seed=0), x, y)
    assert model.calls == [False, True]  # the CAM's, then the training forward on the mix
    model.calls.clear()
    mix_step(model, snapmix(prob=0.0), x, y)
    assert model.calls == [True]  # a skipped batch: the plain step alone


def test_running_statistics_move_once_per_step_as_in_a_plain_step():
    model, (x, y) = tiny_convnet(), seeded_batch()
    twin = copy.deepcopy(model)
    step = mix_step(model, snapmix(seed=0), x, y)
    twin(step.mix.x)  # one training forward on the same mixed batch
    for ours, theirs in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_targets_weigh_each_label_by_its_cam_mass_and_need_not_sum_to_one():
    model, (x, y) = tiny_convnet(), seeded_batch()
    step = mix_step(model, snapmix(mode="elem", seed=1), x, y)
    out, onehot = step.mix, F.one_hot(y, NUM_CLASSES).float()
    own, partner = out.sources[1].unbind(1)
    assert torch.equal(out.sources[0], torch.stack([torch.arange(8), out.index], 1))
    torch.testing.assert_close(out.y, own[:, None] * onehot + partner[:, None] * onehot[out.index])
    assert float((out.y.sum(1) - 1).abs().max()) > 1e-3
    cam = snapmix().activation_maps(copy.deepcopy(model), x, y)  # the model did not change: no optimizer step
    expected = snapmix_weights(cam, out.index, *(out.layout.lo, out.layout.hi, out.layout.source_lo, out.layout.source_hi))
    torch.testing.assert_close(out.sources[1], expected)
    torch.testing.assert_close(step.loss, -(out.y * step.logits.log_softmax(1)).sum(1).mean())


def test_sparse_and_vector_targets_carry_the_label_weights():
    model, (x, y) = tiny_convnet(), seeded_batch()
    out = mix_step(model, snapmix(mode="elem", seed=2), x, y).mix
    ids, weights = out.sparse(y)
    assert torch.equal(ids, torch.stack([y, y[out.index]], 1)) and torch.equal(weights, out.sources[1])
    values = torch.randn(8, 3)
    torch.testing.assert_close(out.vector(values), weights[:, :1] * values + weights[:, 1:] * values[out.index])


def test_mixed_accuracy_weighs_hits_by_the_label_weights_over_their_sum():
    model, (x, y) = tiny_convnet(), seeded_batch()
    step = mix_step(model, snapmix(mode="elem", seed=3), x, y)
    pred, weights = step.logits.argmax(1), step.mix.sources[1]
    hits = torch.stack([pred == y, pred == y[step.mix.index]], 1).float()
    expected = ((hits * weights).sum(1) / weights.sum(1)).mean()
    torch.testing.assert_close(mixed_accuracy(step.logits, y, step.mix), expected)


def test_a_same_class_pair_gets_both_weights_on_its_class():
    model, x = tiny_convnet(), seeded_batch()[0]
    y = torch.full((8,), 3)
    out = mix_step(model, snapmix(mode="elem", seed=4), x, y).mix
    torch.testing.assert_close(out.y[:, 3], out.sources[1].sum(1))
    assert float(out.y.sum(1).max()) > 1.0  # the official doubling aside, more than one unit of label


def test_samples_the_prob_coin_skips_in_elem_mode_are_unmixed_and_weigh_alone():
    model, (x, y) = tiny_convnet(), seeded_batch(n=32)
    out = mix_step(model, snapmix(mode="elem", prob=0.5, seed=5), x, y).mix
    skipped = out.lam == 1
    assert 0 < int(skipped.sum()) < 32
    assert torch.equal(out.x[skipped], x[skipped])
    torch.testing.assert_close(out.sources[1][skipped], torch.tensor([[1.0, 0.0]]).expand(int(skipped.sum()), 2))


def test_the_step_trains_every_parameter_and_lightning_and_the_cli_run_it(tmp_path):
    from test_cli import run

    x, y = seeded_batch()
    assert_steps_train_every_parameter(tiny_convnet(), snapmix(seed=0), x, y)
    assert_lightning_trains({"name": "snapmix"})
    row = run(tmp_path, "mixer=snapmix", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "snapmix"


# ------------------------------------------------------------------ the other targets of the draw
def test_dense_targets_class_maps_boxes_and_points_follow_the_resized_partner():
    """On a hand-made draw as the step records it: the partner's rows 4..8 resized onto the box rows 2..6,
    columns 3..9 (half as wide)."""
    x = torch.rand(2, 1, 12, 12)
    mixer = snapmix()
    params = forced(mixer, x, [1, 0], boxes([2, 3]), boxes([6, 9]), boxes([4, 0]), boxes([8, 12]))
    x_mix, lam, mask = mixer.mix(x, params)
    out = MixOutput(x=x_mix, y=None, lam=lam, index=params["index"], mask=mask,
                    sources=(torch.stack([torch.arange(2), params["index"]], 1), torch.ones(2, 2)),
                    source_masks=torch.cat([mask, 1 - mask], 1), layout=mixer.layout(params, x), binary=True,
                    mixer="SnapMix")
    torch.testing.assert_close(out.dense(x), x_mix)
    seg = torch.tensor([1, 2]).view(2, 1, 1).expand(2, 12, 12)
    expected = torch.where(mask[:, 0].bool(), seg, seg.flip(0))
    assert torch.equal(out.class_map(seg), expected)
    # the partner's box over its source rows 4..8 lands on the target box, whole
    moved, valid, visible = out.boxes(torch.tensor([[[0.0, 4.0, 12.0, 8.0]]]).expand(2, 1, 4))
    assert moved[:, 1].tolist() == [[3.0, 2.0, 9.0, 6.0]] * 2 and bool(valid[:, 1].all())
    torch.testing.assert_close(visible[:, 1], torch.ones(2))
    points, shown = out.keypoints(torch.tensor([[[6.0, 6.0], [6.0, 1.0]]]).expand(2, 2, 2))
    assert points[0, 2].tolist() == [6.0, 4.0] and shown[:, 2].all() and not shown[:, 3].any()


# ------------------------------------------------------------------ errors
def test_a_model_without_a_linear_classifier_is_refused_clearly():
    headless = openmix.models.create_model("small_convnet", num_classes=0, in_chans=1, widths=(8, 8, 8))
    x, y = seeded_batch()
    with pytest.raises(TypeError, match="SnapMix weighs the last feature map by the linear classifier's weights.*"
                                        "SmallConvNet's is Identity"):
        mix_step(headless, snapmix(), x, y)
    with pytest.raises(TypeError, match="fc / classifier / head is an nn.Linear; Linear's is none"):
        linear_classifier(nn.Linear(2, 2))


def test_a_transformer_and_a_mismatched_head_are_refused_clearly():
    x, y = seeded_batch()
    with pytest.raises(TypeError, match=r"forward_features gives a 4-D map \(a CNN\); VisionTransformer's gives \(8, 17, 32\)"):
        mix_step(tiny_vit(), snapmix(), x, y)
    model = tiny_convnet()
    model.fc = nn.Linear(4, NUM_CLASSES)
    with pytest.raises(TypeError, match="map has 8 channels and its classifier takes 4"):
        mix_step(model, snapmix(), x, y)


def test_inputs_and_modes_it_cannot_mix_are_refused():
    with pytest.raises(ValueError, match=r"SnapMix expects 4-D \(B, C, \*spatial\) inputs"):
        mix_step(tiny_convnet(), snapmix(), torch.rand(8, 1, 16), torch.arange(8))
    with pytest.raises(ValueError, match="SnapMix mixes in mode 'batch' or 'elem', not mode='pair'"):
        snapmix(mode="pair")
