"""SUMix: the semantic distance, the corrected shares and the uncertainty term by hand, the whole step against
the official loss written out sample by sample, the base mixer's draw kept as it is, the uncertainty head
(attach, gradients), the bases, training through openmix-train, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import seeded_batch, tiny_convnet
from openmix.mixers.sumix import corrected_lam, semantic_distance, uncertainty_loss
from openmix.models import create_model
from openmix.targets import soft_targets
from openmix.training import mix_step

NUM_CLASSES = 10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def attached(model: torch.nn.Module | None = None, **kwargs):
    """A seeded SUMix attached to ``model`` (a fresh tiny convnet by default); returns ``(model, mixer)``."""
    model = tiny_convnet() if model is None else model
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("seed", 0)
    return model, openmix.build("sumix", **kwargs).attach(model)


def official_loss(z_clean, z_mix, u_clean, u_mix, labels, index, lam, scale, gamma):
    """The official ``IN_loss``, sample by sample as its loops are, with each sample's own cross-entropy
    weighted by its own corrected share (openmix's per-sample weights)."""
    batch = labels.shape[0]
    p_o, p_m = z_clean.softmax(1), z_mix.softmax(1)
    p_p = p_o[index].clone()
    p_o = p_o.clone()
    y_b = labels[index]
    for i in range(batch):
        p_o[i, y_b[i]] = 0.0
        p_p[i, labels[i]] = 0.0
    alpha = F.normalize((p_m - p_o).softmax(1), dim=1) * scale
    alpha_p = F.normalize((p_m - p_p).softmax(1), dim=1) * scale
    lam_a = torch.empty(batch)
    for i in range(batch):
        own = lam[i] * math.exp(-alpha[i, labels[i]])
        other = (1 - lam[i]) * math.exp(-alpha_p[i, y_b[i]])
        lam_a[i] = own / (own + other)
    ce_a = F.cross_entropy(z_mix, labels, reduction="none")
    ce_b = F.cross_entropy(z_mix, y_b, reduction="none")
    main = (lam_a * ce_a + (1 - lam_a) * ce_b).mean()
    unc_a = F.cross_entropy(torch.exp(-(u_clean + u_mix + alpha)), labels, reduction="none")
    unc_b = F.cross_entropy(torch.exp(-(u_clean[index] + u_mix + alpha_p)), y_b, reduction="none")
    return main + gamma * (lam * unc_a + (1 - lam) * unc_b).mean(), lam_a


def passes(model, mixer, x):
    """The model's logits and the mixer's uncertainty of ``x``, as the step computes them."""
    features = model.forward_features(x)
    u = F.normalize(mixer.uncertainty(model.forward_head(features, pre_logits=True)).softmax(1), dim=1)
    return model.forward_head(features), u


def test_both_heads_read_one_draw_of_the_head_dropout():
    torch.manual_seed(0)
    model = create_model("small_convnet", num_classes=NUM_CLASSES, in_chans=1, widths=(8, 8, 8), drop_rate=0.5)
    _, mixer = attached(model)
    x, _ = seeded_batch()
    torch.manual_seed(1)
    logits, u = mixer._forward(model, x)
    torch.manual_seed(1)  # the same dropout draw: the pooled features the two heads saw
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(logits, model.get_classifier()(pooled))
    torch.testing.assert_close(u, F.normalize(mixer.uncertainty(pooled).softmax(1), dim=1))


# ------------------------------------------------------------------------ the terms by hand
def test_the_semantic_distance_by_hand():
    z_mix = torch.tensor([[1.0, 0.0, 0.0]])
    z_clean = torch.tensor([[0.0, 1.0, 0.0]])
    p_mix, p = z_mix.softmax(1)[0], z_clean.softmax(1)[0]
    p[2] = 0.0  # the other image's class
    e = torch.exp(p_mix - p)
    expected = 4.0 * (e / e.sum()) / (e / e.sum()).norm()
    torch.testing.assert_close(semantic_distance(z_mix, z_clean, torch.tensor([2]), 4.0)[0], expected)


def test_the_semantic_distance_has_no_gradient():
    z = torch.randn(3, 4, requires_grad=True)
    assert not semantic_distance(z, z, torch.tensor([0, 1, 2]), 1.0).requires_grad


def test_the_corrected_share_by_hand():
    lam, own, partner = torch.tensor([0.3, 0.8]), torch.tensor([2.0, 0.5]), torch.tensor([1.0, 3.0])
    expected = [0.3 * math.exp(-2.0) / (0.3 * math.exp(-2.0) + 0.7 * math.exp(-1.0)),
                0.8 * math.exp(-0.5) / (0.8 * math.exp(-0.5) + 0.2 * math.exp(-3.0))]
    torch.testing.assert_close(corrected_lam(lam, own, partner), torch.tensor(expected))


def test_the_corrected_share_survives_distances_whose_exponentials_underflow():
    """exp(-200) is 0 in float32, so the official ratio is 0 / 0 there; the logit form is not."""
    share = corrected_lam(torch.tensor([0.5, 0.0, 1.0]), torch.tensor([200.0, 300.0, 300.0]), torch.tensor([201.0, 0.0, 0.0]))
    torch.testing.assert_close(share, torch.tensor([1 / (1 + math.exp(-1.0)), 0.0, 1.0]))


def test_the_uncertainty_term_by_hand():
    u_c = torch.tensor([[0.1, 0.2], [0.3, 0.0]])
    u_m = torch.tensor([[0.0, 0.4], [0.2, 0.1]])
    a = torch.tensor([[1.0, 0.5], [0.2, 0.3]])
    a_p = torch.tensor([[0.4, 0.6], [0.9, 0.1]])
    soft, index, lam = torch.eye(2), torch.tensor([1, 0]), torch.tensor([0.25, 0.5])

    def ce(logits, label):
        return -math.log(math.exp(logits[label]) / sum(math.exp(v) for v in logits))

    terms = []
    for i, j in enumerate(index.tolist()):
        own = [math.exp(-(u_c[i, k] + u_m[i, k] + a[i, k])) for k in range(2)]
        other = [math.exp(-(u_c[j, k] + u_m[i, k] + a_p[i, k])) for k in range(2)]
        terms.append(float(lam[i]) * ce(own, i) + float(1 - lam[i]) * ce(other, j))
    expected = torch.tensor(sum(terms) / 2, dtype=torch.float32)
    torch.testing.assert_close(uncertainty_loss(u_c, u_m, a, a_p, soft, index, lam), expected)


# ------------------------------------------------------------------------ the step
@pytest.mark.parametrize("mode, semantic_scale, scale", [
    ("batch", 100.0, 100.0),
    ("elem", 100.0, 100.0),
    ("batch", None, 8.0),  # None: the official scale, the batch size
])
def test_the_step_is_the_official_loss_with_per_sample_weights(mode, semantic_scale, scale):
    model, mixer = attached(mode=mode, gamma=0.5, semantic_scale=semantic_scale)
    x, y = seeded_batch()
    step = mix_step(model, mixer, x, y)
    with torch.no_grad():
        z_c, u_c = passes(model, mixer, x)
        z_m, u_m = passes(model, mixer, step.mix.x)
        expected, lam_a = official_loss(z_c, z_m, u_c, u_m, y, step.mix.index, step.mix.lam, scale, 0.5)
    torch.testing.assert_close(step.loss, expected)
    onehot = F.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(step.mix.y, lam_a[:, None] * onehot + (1 - lam_a[:, None]) * onehot[step.mix.index])


def test_the_base_mixers_draw_is_kept_as_it_is():
    model, mixer = attached(alpha=0.7, mode="elem")
    x, y = seeded_batch()
    step = mix_step(model, mixer, x, y)
    out = openmix.build("cutmix", alpha=0.7, mode="elem", num_classes=NUM_CLASSES, seed=0)(x, y)
    for field in ("x", "lam", "index", "mask"):
        torch.testing.assert_close(getattr(step.mix, field), getattr(out, field))
    assert step.mix.binary  # CutMix's cut: hard class maps follow it
    seg = y.view(-1, 1, 1).expand(8, 16, 16)
    torch.testing.assert_close(step.mix.class_map(seg), out.class_map(seg))


def test_the_classes_read_are_the_targets_argmax_under_label_smoothing():
    x, y = seeded_batch()
    model, smoothed = attached(label_smoothing=0.1)
    twin, plain = attached(tiny_convnet())
    twin.load_state_dict(model.state_dict())
    plain.uncertainty.load_state_dict(smoothed.uncertainty.state_dict())
    a, b = mix_step(model, smoothed, x, y), mix_step(twin, plain, x, y)
    soft = soft_targets(y, NUM_CLASSES, 0.1)
    lam_a = (b.mix.y * F.one_hot(y, NUM_CLASSES)).sum(1)  # the plain run's corrected share of each own class
    lam_a = torch.where(y == y[b.mix.index], torch.ones(8), lam_a)  # where both classes are one, any share fits
    expected = lam_a[:, None] * soft + (1 - lam_a[:, None]) * soft[b.mix.index]
    torch.testing.assert_close(a.mix.y, expected)


def test_the_uncertainty_head_learns_only_through_the_regulariser():
    x, y = seeded_batch()
    for gamma, learns in ((0.5, True), (0.0, False)):
        model, mixer = attached(gamma=gamma)
        mix_step(model, mixer, x, y).loss.backward()
        assert bool(mixer.uncertainty.weight.grad.abs().sum() > 0) is learns


def test_aux_holds_each_term_and_the_share_shift():
    model, mixer = attached()
    x, y = seeded_batch()
    step = mix_step(model, mixer, x, y)
    torch.testing.assert_close(step.aux["mix"] + step.aux["uncertainty"], step.loss.detach())
    share = (step.mix.y * F.one_hot(y, NUM_CLASSES)).sum(1)
    assert float(step.aux["lam_shift"]) > 0 and step.aux["lam_shift"].ndim == 0
    assert not torch.allclose(share, step.mix.lam)


def test_a_skipped_batch_is_a_plain_step_whose_head_gets_a_zero_gradient():
    model, mixer = attached(prob=0.0)
    model.eval()
    x, y = seeded_batch()
    step = mix_step(model, mixer, x, y)
    torch.testing.assert_close(step.logits, model(x))
    step.loss.backward()
    assert torch.equal(mixer.uncertainty.weight.grad, torch.zeros_like(mixer.uncertainty.weight))


@pytest.mark.parametrize("base", ["mixup", "resizemix", "fmix", "smoothmix", "random_choice",
                                  {"name": "cutmix", "correct_lam": False}])
def test_any_input_mixer_is_a_base(base):
    model, mixer = attached(base=base)
    x, y = seeded_batch()
    step = mix_step(model, mixer, x, y)
    step.loss.backward()
    assert torch.isfinite(step.loss)
    torch.testing.assert_close(step.mix.y.sum(1), torch.ones(8))
    torch.testing.assert_close(step.mix.dense(x), step.mix.x)


def test_the_base_draws_with_this_mixers_alpha_as_a_schedule_sets_it():
    from openmix.lightning.schedules import MixSchedule, ScheduledMixers

    model, mixer = attached()
    ScheduledMixers(MixSchedule(alpha_ramp_epochs=2), mixer).start_epoch(0)  # alpha 0 at epoch 0: no mixing
    step = mix_step(model, mixer, *seeded_batch())
    assert mixer.base.alpha == 0.0 and torch.equal(step.mix.lam, torch.ones(8))


# ------------------------------------------------------------------------ attach
def test_attach_sizes_the_head_for_the_models_pooled_features_and_keeps_it():
    model = tiny_convnet().to(torch.float64)
    _, mixer = attached(model)
    head = mixer.uncertainty
    assert (head.in_features, head.out_features, head.weight.dtype) == (8, NUM_CLASSES, torch.float64)
    assert [p for group in mixer.param_groups() for p in group["params"]] == [head.weight, head.bias]
    mixer.attach(model)
    assert mixer.uncertainty is head


def test_a_step_before_attach_says_to_attach():
    mixer = openmix.build("sumix", num_classes=NUM_CLASSES)
    with pytest.raises(RuntimeError, match="attach"):
        mix_step(tiny_convnet(), mixer, *seeded_batch())


def test_a_model_without_forward_features_is_refused():
    with pytest.raises(TypeError, match="forward_features"):
        openmix.build("sumix", num_classes=NUM_CLASSES).attach(torch.nn.Linear(4, 10))


# ------------------------------------------------------------------------ command line and errors
def test_openmix_train_runs_sumix(tmp_path):
    from test_cli import run

    row = run(tmp_path, "mixer=sumix", "mixer.base=resizemix", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "sumix"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"base": "puzzlemix"}, ValueError, "saliency mixer"),
    ({"base": "cutmixx"}, ValueError, "unknown mixer 'cutmixx'"),
    ({"base": {"name": "cutmix", "alpha": 0.2}}, ValueError, r"base sets \['alpha'\]"),
    ({"base": {"correct_lam": True}}, ValueError, "a config with a 'name'"),
    ({"gamma": -1.0}, ValueError, "gamma must be >= 0"),
    ({"mode": "half"}, ValueError, "half mode"),
])
def test_bad_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        openmix.build("sumix", num_classes=NUM_CLASSES, **kwargs)
