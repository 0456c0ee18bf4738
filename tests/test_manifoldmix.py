"""Manifold Mixup: the layer draw, mixing at the input and at hidden layers, training through
mix_step, MixupClassifier and openmix-train, errors, reproducibility."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import nn

import openmix
from openmix.losses import soft_cross_entropy
from openmix.losses import softmax_bce
from openmix.models.stages import feature_stages
from openmix.models import create_model, split_stages
from helpers import assert_lightning_trains, assert_steps_train_every_parameter
from helpers import seeded_batch as batch
from helpers import tiny_convnet as convnet
from openmix.training import mix_step

NUM_CLASSES = 10  # as helpers.tiny_convnet and helpers.seeded_batch
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def resnet() -> nn.Module:
    """A narrow CIFAR ResNet-18: stem + 4 stages, so layers 0..4."""
    return create_model("cifar_resnet18", num_classes=NUM_CLASSES, channels=[8, 8, 8, 8], stem_width=8)


def manifoldmix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("manifoldmix", **kwargs)


def run_mixed_by_hand(model: nn.Module, x: torch.Tensor, layer: int, lam: torch.Tensor, index: torch.Tensor):
    """The step's forward written out: stages up to ``layer``, mix, the rest, the head."""
    stages = split_stages(model)
    w = lam.view(-1, *[1] * (x.ndim - 1))
    if layer == 0:
        return model(w * x + (1 - w) * x[index])
    h = x
    for stage in stages[: layer + 1]:
        h = stage(h)
    h = w * h + (1 - w) * h[index]
    for stage in stages[layer + 1 :]:
        h = stage(h)
    return model.forward_head(h)


# ------------------------------------------------------------------------ training
@pytest.mark.parametrize("layers", [(0, 1, 2), (3,)])
def test_mix_step_trains_and_reaches_every_parameter(layers):
    assert_steps_train_every_parameter(convnet(), manifoldmix(layers=layers, seed=0), *batch())


def test_lightning_classifier_trains_with_manifoldmix():
    module = assert_lightning_trains({"name": "manifoldmix"})
    assert module.mixer._calls == 3  # one draw per step


def test_openmix_train_runs_manifoldmix(tmp_path):
    from test_cli import run

    row = run(tmp_path, "mixer=manifoldmix", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "manifoldmix"


# ------------------------------------------------------------------------ draws
def test_layer_draw_covers_exactly_the_configured_layers():
    mixer = manifoldmix(layers=(0, 2, 3), seed=0)
    x, _ = batch()
    counts = collections.Counter(mixer.sample_params(x)["layer"] for _ in range(600))
    assert set(counts) == {0, 2, 3}
    assert all(150 <= n <= 250 for n in counts.values()), counts  # uniform: 200 each


def test_same_seed_same_draws_and_steps():
    x, y = batch()
    a, b, c = manifoldmix(seed=3), manifoldmix(seed=3), manifoldmix(seed=4)
    draws = [[(p["layer"], p["batch_lam"], p["index"].tolist()) for p in (m.sample_params(x) for _ in range(5))]
             for m in (a, b, c)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    model = convnet()
    twin = copy.deepcopy(model)
    first, second = manifoldmix(seed=7), manifoldmix(seed=7)
    for _ in range(3):
        torch.testing.assert_close(mix_step(model, first, x, y).logits, mix_step(twin, second, x, y).logits)


def test_seeded_draws_leave_the_global_rng_alone():
    mixer = manifoldmix(seed=0)
    x, y = batch()
    model = convnet()
    state = torch.get_rng_state()
    mixer.sample_params(x)
    assert torch.equal(state, torch.get_rng_state())
    mix_step(model, mixer, x, y)
    assert torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------------------------ mixing
def test_layer_0_is_input_mixup_with_the_same_lam_and_index():
    x, y = batch()
    model = convnet()
    step = mix_step(model, manifoldmix(layers=(0,), seed=11), x, y)
    ref = openmix.build("mixup", alpha=2.0, num_classes=NUM_CLASSES, seed=11)(x, y)  # same streams, same draws
    torch.testing.assert_close(step.mix.lam, ref.lam)
    assert torch.equal(step.mix.index, ref.index)
    torch.testing.assert_close(step.mix.x, ref.x)  # MixOutput.x: the mixed input
    torch.testing.assert_close(step.mix.y, ref.y)
    torch.testing.assert_close(step.logits, model(ref.x))


@pytest.mark.parametrize("make, layer", [(convnet, 1), (convnet, 3), (resnet, 1), (resnet, 2), (resnet, 4)])
def test_hidden_layer_mix_equals_the_stagewise_forward(make, layer):
    model = make()
    x, y = batch(channels=1 if make is convnet else 3)
    step = mix_step(model, manifoldmix(layers=(layer,), seed=2), x, y)
    out = step.mix
    assert torch.equal(out.x, x)  # mixed a hidden state: MixOutput.x is the input as it came
    assert torch.allclose(out.lam, out.lam[:1].expand_as(out.lam)) and 0 < float(out.lam[0]) < 1
    torch.testing.assert_close(step.logits, run_mixed_by_hand(model, x, layer, out.lam, out.index))
    onehot = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, out.lam[:, None] * onehot + (1 - out.lam[:, None]) * onehot[out.index])
    torch.testing.assert_close(step.loss, soft_cross_entropy(step.logits, out.y))


def test_layer_1_is_after_the_stem_and_first_stage():
    """The official {input, conv1 + layer1, layer2}: layer 1 mixes the output of layer1, not of the stem."""
    model = resnet()
    x, y = batch(channels=3)
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.setdefault("layer1", o))
    model.layer2.register_forward_hook(lambda m, i, o: seen.setdefault("layer2_in", i[0]))
    step = mix_step(model, manifoldmix(layers=(1,), seed=0), x, y)
    lam, index = step.mix.lam.view(-1, 1, 1, 1), step.mix.index
    torch.testing.assert_close(seen["layer2_in"], lam * seen["layer1"] + (1 - lam) * seen["layer1"][index])


def test_elem_mode_mixes_each_sample_with_its_own_lam():
    x, y = batch()
    model = convnet()
    step = mix_step(model, manifoldmix(layers=(2,), mode="elem", seed=0), x, y)
    assert step.mix.lam.unique().numel() > 1
    torch.testing.assert_close(step.logits, run_mixed_by_hand(model, x, 2, step.mix.lam, step.mix.index))


def test_prob_zero_is_a_plain_step():
    x, y = batch()
    model = convnet()
    step = mix_step(model, manifoldmix(prob=0.0, seed=0), x, y)
    assert torch.equal(step.mix.lam, torch.ones(8)) and torch.equal(step.mix.index, torch.arange(8))
    torch.testing.assert_close(step.logits, model(x))


def test_bce_loss_is_the_official_bce_on_softmax():
    logits, target = torch.randn(6, NUM_CLASSES), torch.softmax(torch.randn(6, NUM_CLASSES), 1)
    expected = nn.BCELoss()(torch.softmax(logits, 1), target)
    torch.testing.assert_close(softmax_bce(logits, target), expected)
    x, y = batch()
    model = convnet()
    step = mix_step(model, manifoldmix(loss="bce", seed=0), x, y)
    torch.testing.assert_close(step.loss, nn.BCELoss()(torch.softmax(step.logits, 1), step.mix.y))


# ------------------------------------------------------------------------ errors
class Unsplittable(nn.Module):
    """Has the forward_features/forward_head split, but a layout split_stages does not know."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, h):
        return self.fc(h.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.mark.parametrize("model, named", [
    (nn.Sequential(nn.Flatten(), nn.Linear(256, NUM_CLASSES)), "got Sequential, which has no forward_features / forward_head"),
    (Unsplittable(), "got Unsplittable: split_stages supports"),
])
def test_a_model_the_stage_api_cannot_split_is_a_clear_error(model, named):
    x, y = batch()
    with pytest.raises(TypeError, match="ManifoldMix mixes hidden features") as err:
        mix_step(model, manifoldmix(seed=0), x, y)
    assert named in str(err.value)
    with pytest.raises(TypeError, match=named):  # a wrapped model is looked at inside its wrapper
        feature_stages(nn.parallel.DataParallel(model), "ManifoldMix")


def test_layers_beyond_the_model_are_a_clear_error():
    x, y = batch()
    with pytest.raises(ValueError, match=r"layers \[4\] do not exist in SmallConvNet.*from 0 \(the input\) to 3"):
        mix_step(convnet(), manifoldmix(layers=(0, 4), seed=0), x, y)


def test_forward_without_the_model_explains_what_to_do():
    x, y = batch()
    with pytest.raises(TypeError, match="needs the model.*mix_step"):
        manifoldmix()(x, y)


@pytest.mark.parametrize("kwargs", [{"layers": ()}, {"layers": (-1,)}, {"layers": (1, 1)}, {"layers": (0.5,)},
                                    {"layers": (True,)}, {"loss": "mse"}, {"alpha": -1.0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        manifoldmix(**kwargs)


def test_registered_as_a_feature_mixer_with_a_repr():
    assert openmix.available()["manifoldmix"] == "feature"
    assert "layers=(0, 1, 2)" in repr(manifoldmix()) and "alpha=2.0" in repr(manifoldmix())
