"""AttentiveMix: the top cells by hand, each sample's attended cells over its partner, k fixed or drawn, the
attention network (yours or the model being trained) in eval mode without gradients, one extra forward,
errors, and openmix-train."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openmix
from openmix.mixer import DataInfo
from openmix.mixers.attentivemix import top_cells
from openmix.training import mix_step
from helpers import assert_lightning_trains, assert_steps_train_every_parameter, seeded_batch, tiny_convnet, tiny_vit

NUM_CLASSES = 10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def attentivemix(**kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("attentivemix", **kwargs)


class Pooled(nn.Module):
    """An attention network whose 4 x 4 feature map is the image's 4 x 4 average pooling (two equal channels
    and one constant, so the channel mean ranks cells as the pooled image does), with a BatchNorm to watch."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.seen: list[tuple[tuple[int, ...], bool, bool]] = []  # (input shape, grad enabled, training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(x.shape), torch.is_grad_enabled(), self.training))
        self.norm(x[:, :1])  # moves the running statistics in train mode only
        pooled = F.adaptive_avg_pool2d(x[:, :1], 4)
        return torch.cat([pooled, pooled, torch.ones_like(pooled)], 1)


def cells_of(x: torch.Tensor) -> torch.Tensor:
    """What :class:`Pooled` makes the attention ``(B, 4, 4)``."""
    return F.adaptive_avg_pool2d(x[:, :1], 4)[:, 0] * (2 / 3) + 1 / 3


# ------------------------------------------------------------------ the mask
def test_top_cells_keep_each_samples_k_highest_cells_ties_by_position():
    attention = torch.tensor([[[0.1, 0.9], [0.5, 0.2]], [[1.0, 1.0], [1.0, 0.0]]])
    mask = top_cells(attention, torch.tensor([1, 2]))
    assert mask.shape == (2, 1, 2, 2) and mask.dtype == torch.float32
    assert mask[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert mask[1, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]  # three tie: the first two by position


def test_each_sample_keeps_its_top_k_cells_over_its_partner():
    x, y = seeded_batch()
    mixer = attentivemix(top_k=5, attention_model=Pooled(), seed=0)
    step = mix_step(tiny_convnet(), mixer, x, y)
    out = step.mix
    expected = F.interpolate(top_cells(cells_of(x), torch.full((8,), 5)), size=(16, 16), mode="nearest")
    assert torch.equal(out.mask, expected)
    assert torch.equal(out.x, torch.where(expected.bool(), x, x[out.index]))
    torch.testing.assert_close(out.lam, torch.full((8,), 5 / 16))
    onehot = F.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(out.y, 5 / 16 * onehot + 11 / 16 * onehot[out.index])
    assert out.binary and torch.equal(out.class_map(y.view(8, 1, 1).expand(8, 16, 16)),
                                      torch.where(expected[:, 0].bool(), y.view(8, 1, 1), y[out.index].view(8, 1, 1)))


def test_lam_is_the_share_of_the_image_the_cells_cover_where_the_grid_does_not_divide_it():
    x, y = torch.rand(4, 1, 18, 18), torch.arange(4)
    out = mix_step(tiny_convnet(), attentivemix(top_k=3, attention_model=Pooled(), seed=0), x, y).mix
    torch.testing.assert_close(out.lam, out.mask.mean((1, 2, 3)))
    assert not torch.allclose(out.lam, torch.full((4,), 3 / 16))  # nearest upsampling: cells of 4 or 5 pixels


# ------------------------------------------------------------------ how many cells
def test_use_alpha_keeps_int_cells_times_lam_at_least_one_and_all_where_the_coin_skips():
    mixer = attentivemix(use_alpha=True, mode="elem")
    params = {"lam": torch.tensor([0.3, 0.01, 0.99, 1.0]), "index": torch.arange(4)}
    assert mixer.cells_kept(params, 16).tolist() == [4.0, 1.0, 15.0, 16.0]
    fixed = attentivemix(top_k=6)
    assert fixed.cells_kept({"lam": torch.tensor([0.0, 1.0])}, 49).tolist() == [6.0, 49.0]
    with pytest.warns(UserWarning, match="top_k=6 keeps every one of the attention's 4 cells, so nothing is mixed"):
        assert fixed.cells_kept({"lam": torch.tensor([0.0])}, 4).tolist() == [4.0]  # top_k above the grid: all


def test_alpha_sets_k_only_with_use_alpha():
    x, y = seeded_batch()
    fixed = mix_step(tiny_convnet(), attentivemix(alpha=0.0, top_k=4, attention_model=Pooled(), seed=0), x, y).mix
    torch.testing.assert_close(fixed.lam, torch.full((8,), 4 / 16))
    drawn = mix_step(tiny_convnet(), attentivemix(alpha=0.0, use_alpha=True, attention_model=Pooled(), seed=0), x, y).mix
    torch.testing.assert_close(drawn.lam, torch.ones(8))  # alpha 0: no mixing
    lams = {float(mix_step(tiny_convnet(), attentivemix(alpha=2.0, use_alpha=True, seed=s), x, y).mix.lam[0])
            for s in range(4)}
    assert len(lams) > 1 and all(v in {k / 16 for k in range(1, 17)} for v in lams)


def test_elem_mode_draws_k_and_the_coin_per_sample():
    x, y = seeded_batch(n=32)
    out = mix_step(tiny_convnet(), attentivemix(use_alpha=True, alpha=2.0, mode="elem", prob=0.5, seed=1), x, y).mix
    skipped = out.lam == 1
    assert 0 < int(skipped.sum()) < 32 and torch.equal(out.x[skipped], x[skipped])
    assert len(set(out.lam[~skipped].tolist())) > 1


# ------------------------------------------------------------------ the attention network
def test_your_attention_network_is_frozen_run_in_eval_mode_without_gradients_and_resized_to():
    network = Pooled()
    mixer = attentivemix(attention_model=network, attention_size=32, seed=0)
    mixer.train()  # as MixupClassifier.train() would
    before = copy.deepcopy(network.norm.state_dict())
    x, y = seeded_batch()
    mix_step(tiny_convnet(), mixer, x, y).loss.backward()
    assert network.seen == [((8, 1, 32, 32), False, False)]
    assert all(torch.equal(v, network.norm.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad or p.grad is not None for p in network.parameters())
    assert any(key.startswith("attention_model.") for key in mixer.state_dict())  # checkpoints hold it


# ------------------------------------------------------------------ a named timm network
@pytest.fixture
def timm_calls(monkeypatch):
    """``timm.create_model`` replaced by a recorder that gives a :class:`Pooled` (nothing is downloaded)."""
    import timm

    calls = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: calls.append((name, kwargs)) or Pooled())
    return calls


def test_a_named_network_is_built_pretrained_by_timm_before_training_not_at_construction(timm_calls):
    mixer = attentivemix(attention_model="resnet18.tv_in1k", attention_size=224)
    assert timm_calls == [] and mixer.attention_model is None  # openmix-train's checks download nothing
    mixer.configure_data(DataInfo(in_chans=1, num_classes=NUM_CLASSES))  # MixupClassifier.setup calls it
    assert timm_calls == [("resnet18.tv_in1k", {"pretrained": True, "num_classes": 0})]
    assert isinstance(mixer.attention_model, Pooled) and not mixer.attention_model.training
    assert "attention_model='resnet18.tv_in1k'" in repr(mixer)


def test_a_named_network_sees_a_grey_batch_as_rgb_and_is_built_at_the_first_step_otherwise(timm_calls):
    mixer = attentivemix(attention_model="resnet18.tv_in1k", attention_pretrained=False, seed=0)
    x, y = seeded_batch()
    mix_step(tiny_convnet(), mixer, x, y)
    assert timm_calls == [("resnet18.tv_in1k", {"pretrained": False, "num_classes": 0})]
    assert mixer.attention_model.seen == [((8, 3, 16, 16), False, False)]


def test_a_checkpoint_of_a_named_network_loads_without_a_download(timm_calls):
    trained = attentivemix(attention_model="resnet18.tv_in1k")
    trained.configure_data(DataInfo())
    with torch.no_grad():
        trained.attention_model.norm.running_mean.fill_(3.0)
    resumed = attentivemix(attention_model="resnet18.tv_in1k")
    resumed.load_state_dict(trained.state_dict())
    assert [kwargs["pretrained"] for _, kwargs in timm_calls] == [True, False]  # the weights come from the state
    assert float(resumed.attention_model.norm.running_mean) == 3.0


def test_the_default_attention_is_the_trained_models_in_eval_mode_and_it_trains_on_after():
    model, (x, y) = tiny_convnet(), seeded_batch()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        attention = twin.eval().forward_features(x).mean(1)
    expected = F.interpolate(top_cells(attention, torch.full((8,), 6)), size=(16, 16), mode="nearest")
    out = mix_step(model, attentivemix(seed=0), x, y).mix
    assert torch.equal(out.mask, expected)
    assert model.training and all(m.training for m in model.modules())
    twin.train()(out.x)  # the only forward that moves the running statistics is the training one
    for ours, theirs in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_mixed_step_runs_one_extra_forward_without_gradients():
    model, (x, y) = tiny_convnet(), seeded_batch()
    calls = []
    model.stages[0].register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    mix_step(model, attentivemix(seed=0), x, y)
    assert calls == [False, True]
    calls.clear()
    mix_step(model, attentivemix(attention_model=Pooled(), seed=0), x, y)
    assert calls == [True]  # your network's forward is the extra one


def test_the_step_trains_every_parameter_and_lightning_and_the_cli_run_it(tmp_path):
    from test_cli import run

    x, y = seeded_batch()
    assert_steps_train_every_parameter(tiny_convnet(), attentivemix(top_k=8, seed=0), x, y)
    assert_lightning_trains({"name": "attentivemix", "top_k": 8})
    row = run(tmp_path, "mixer=attentivemix", "mixer.use_alpha=true", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "attentivemix"


# ------------------------------------------------------------------ errors
def test_what_it_cannot_use_is_refused_clearly():
    x, y = seeded_batch()
    with pytest.raises(TypeError, match="attention_model must be an nn.Module .*, a timm model name .* got int"):
        attentivemix(attention_model=18)
    with pytest.raises(ValueError, match="attention_model 'resnet1800' is not a timm model name"):
        attentivemix(attention_model="resnet1800").configure_data(DataInfo())
    with pytest.raises(TypeError, match=r"network must give a 4-D map \(a CNN\); VisionTransformer's gives \(8, 17, 32\)"):
        mix_step(tiny_vit(), attentivemix(), x, y)
    with pytest.raises(TypeError, match="needs a model with forward_features"):
        mix_step(nn.Sequential(nn.Flatten(), nn.Linear(256, NUM_CLASSES)), attentivemix(), x, y)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0"):
        attentivemix(top_k=0)
    with pytest.raises(ValueError, match="AttentiveMix mixes in mode 'batch' or 'elem', not mode='pair'"):
        attentivemix(mode="pair")
