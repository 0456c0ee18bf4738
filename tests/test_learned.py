"""Learned mixers (AutoMix, SAMix, AdAutoMix): the Mix Block's masks, lam and targets, where the
gradients go, the EMA teacher, checkpoints, training through mix_step and MixupClassifier,
AdAutoMix's three sources and adversarial steps, errors, inference with the model alone."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openmix
from openmix.losses import soft_cross_entropy
from openmix.mixers.automix import constant_masks, ema_momentum, mix_source_targets, mix_sources
from openmix.layers import MixBlock, rescale_lam
from openmix.models import create_model, split_stages
from openmix.output import MixOutput
from helpers import assert_lightning_trains
from helpers import seeded_batch as batch
from helpers import tiny_convnet as convnet
from openmix.training import mix_step, mixed_accuracy

NUM_CLASSES = 10  # as helpers.tiny_convnet and helpers.seeded_batch
NAMES = ("automix", "samix", "adautomix")
SHARES = {"automix": [0.6, 0.4], "samix": [0.6, 0.4], "adautomix": [0.5, 0.3, 0.2]}  # outside every fallback margin
SIZE = (16, 16)  # helpers.seeded_batch images; tiny_convnet's stage 3 is 8 x 4 x 4 on them
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def learned(name: str, **kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("seed", 0)
    return openmix.build(name, **kwargs)


def attached(name: str, **kwargs) -> tuple[nn.Module, openmix.Mixer]:
    model = convnet()
    return model, learned(name, **kwargs).attach(model)


def sgd(model: nn.Module, mixer: openmix.Mixer) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": model.parameters()}, *mixer.param_groups()], lr=0.1, momentum=0.9)


def train_step(model, mixer, opt, x, y):
    step = mix_step(model, mixer, x, y)
    opt.zero_grad()
    step.loss.backward()
    opt.step()
    return step


def rolled(batch_size: int, *shifts: int) -> torch.Tensor:
    """Indices ``(1 + len(shifts), B)``: ``arange(B)``, then ``arange(B)`` rolled by each shift."""
    row = torch.arange(batch_size)
    return torch.stack([row, *(row.roll(s) for s in shifts)])


def force_draws(mixer: openmix.Mixer, *, online=None, block=None) -> None:
    """Every later call draws the given ``(indices, shares)`` for the online and/or the Mix Block batch."""
    draw = mixer.draw_params

    def forced(x, draws):
        params = draw(x, draws)
        if online is not None:
            index, shares = online
            params.update(online_index=index, online_lam=list(shares), index=index[1], batch_lam=shares[0],
                          lam=torch.full((x.shape[0],), shares[0]))
        if block is not None:
            params.update(block_index=block[0], block_lam=list(block[1]))
        return params

    mixer.draw_params = forced


def teacher_features(mixer: openmix.Mixer, x: torch.Tensor) -> torch.Tensor:
    """The teacher's stage-3 features, stage by stage."""
    h = x
    with torch.no_grad():
        for stage in split_stages(mixer.teacher)[:4]:
            h = stage(h)
    return h


def mixed_by_hand(x: torch.Tensor, indices: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return sum(masks[:, k : k + 1] * x[indices[k]] for k in range(indices.shape[0]))


def onehot(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, NUM_CLASSES).float()


def inert(name: str) -> set[str]:
    """Mix Block parameters whose gradient is 0 by construction: a key bias shifts every key's score
    for a query by the same amount (softmax ignores it); with co attention the value bias shifts
    every source's logit by the same amount (the softmax across sources ignores it)."""
    return {"key.bias", "value.bias"} if name == "adautomix" else {"key.bias"}


# ------------------------------------------------------------------------ mix_sources & co, by hand
def test_mix_sources_weighs_each_source_by_its_mask():
    x = torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1)
    indices = torch.tensor([[0, 1, 2], [1, 2, 0]])
    masks = torch.tensor([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]]).view(3, 2, 1, 1)
    assert mix_sources(x, indices, masks).flatten().tolist() == [7.75, 55.0, 100.0]


def test_mix_sources_with_pixel_masks_and_three_sources():
    x = torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1).expand(3, 1, 1, 2)
    indices = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    masks = torch.zeros(3, 3, 1, 2)
    masks[:, 0, 0, 0] = 1.0  # left pixel: the sample itself
    masks[:, 1, 0, 1] = 0.5  # right pixel: half each partner
    masks[:, 2, 0, 1] = 0.5
    expected = torch.tensor([[1.0, 55.0], [10.0, 50.5], [100.0, 5.5]]).view(3, 1, 1, 2)
    assert torch.equal(mix_sources(x, indices, masks), expected)


def test_mix_source_targets_sum_the_shared_labels():
    indices = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    target = mix_source_targets(torch.eye(3), indices, [0.5, 0.25, 0.25])
    assert target.tolist() == [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]


def test_constant_masks_hold_the_shares_per_sample():
    masks = constant_masks(torch.zeros(2, 3, 4, 4), [0.5, 0.25, 0.25])
    assert masks.shape == (2, 3, 1, 1)
    assert masks.flatten(1).tolist() == [[0.5, 0.25, 0.25]] * 2


# ------------------------------------------------------------------------ masks
@pytest.mark.parametrize("name", NAMES)
def test_mix_block_masks_lie_in_0_1_and_sum_to_1_over_sources(name):
    _, mixer = attached(name)
    block = mixer.mix_block
    with torch.no_grad():  # weights far from the near-uniform init: sharp masks test the normalisation
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, 1.0)
    k = block.sources
    with torch.no_grad():
        masks = block(3 * torch.randn(8, 8, 4, 4), rolled(8, *range(1, k)), SHARES[name], size=SIZE)
    assert masks.shape == (8, k, *SIZE)
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    torch.testing.assert_close(masks.sum(1), torch.ones(8, *SIZE))
    assert float(masks.max() - masks.min()) > 0.5  # not a trivially flat mask


def conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution written out: ``(B, C, h, w)`` to ``(B, out, h*w)``."""
    return torch.einsum("oc,bcp->bop", conv.weight[:, :, 0, 0], x.flatten(2)) + conv.bias[None, :, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(qᵀ k / √d) vᵀ`` per sample for ``q``, ``k`` ``(B, d, P)`` and ``v`` ``(B, 1, P)``: ``(B, P)``."""
    scores = torch.einsum("bdp,bdq->bpq", q, k) / q.shape[1] ** 0.5
    return torch.einsum("bpq,bq->bp", scores.softmax(-1), v[:, 0])


def sharp_block(**kwargs) -> MixBlock:
    block = MixBlock(8, **kwargs)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, 1.0)
                module.bias.normal_(0.0, 1.0)
    return block


def pair_logits(block: MixBlock, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The partner's logits ``(B, 1, h, w)`` by hand (shared q/k, no lam scaling)."""
    own, partner = features[indices[0]], features[indices[1]]
    logits = attend(conv1x1(own, block.query), conv1x1(partner, block.query), conv1x1(partner, block.value))
    return logits.view(features.shape[0], 1, *features.shape[2:])


def test_pair_attention_by_hand():
    """Shared q/k: q from the sample, k from its partner, one conv; v from the partner; the partner's
    mask is the sigmoid of the attended value, the sample keeps the rest."""
    block, features, indices = sharp_block(), torch.randn(4, 8, 2, 2), rolled(4, 1)
    with torch.no_grad():
        masks = block(features, indices, [0.6, 0.4], size=(2, 2))  # the feature size: no resampling
        partner = torch.sigmoid(pair_logits(block, features, indices))
    torch.testing.assert_close(masks[:, 1:], partner)
    torch.testing.assert_close(masks[:, :1], 1 - partner)


def test_co_attention_by_hand():
    """Source i attends with its query to the sum of the other sources' keys; a softmax across the
    sources turns the attended values into masks."""
    block, features, indices = sharp_block(sources=3, attention="co"), torch.randn(4, 8, 2, 2), rolled(4, 1, 2)
    with torch.no_grad():
        masks = block(features, indices, [0.5, 0.3, 0.2], size=(2, 2))
        sources = [features[i] for i in indices]
        keys = [conv1x1(s, block.key) for s in sources]
        logits = torch.stack([
            attend(conv1x1(s, block.query), sum(keys) - keys[i], conv1x1(s, block.value)) for i, s in enumerate(sources)
        ], dim=1)
    torch.testing.assert_close(masks, logits.softmax(1).view(4, 3, 2, 2))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsampling_resizes_the_logits_before_the_sigmoid(mode):
    block, features, indices = sharp_block(upsample=mode), torch.randn(4, 8, 2, 2), rolled(4, 1)
    with torch.no_grad():
        masks = block(features, indices, [0.6, 0.4], size=(8, 8))
        logits = pair_logits(block, features, indices)
    assert float(logits.max() - logits.min()) > 2  # sigmoid far from linear: the order of the two matters
    torch.testing.assert_close(masks[:, 1:], torch.sigmoid(F.interpolate(logits, size=(8, 8), mode=mode)))


def test_rescale_lam_by_hand():
    lam = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(rescale_lam(lam, 0.25), torch.tensor([0.0, 5 / 14, 0.5, 1.0], dtype=torch.float64))
    assert rescale_lam(0.25, 0.0) == pytest.approx((1 / 48 - 1 / 8 + 1 / 4) / (1 / 3))


def test_each_mixer_configures_its_mix_block():
    automix, samix, adautomix = (attached(name)[1].mix_block for name in NAMES)
    assert (automix.attention, automix.qk, automix.key, automix.lam_scaling, automix.upsample, automix.sources) == (
        "pair", "shared", None, None, "nearest", 2)
    assert isinstance(automix.value, nn.Conv2d)
    assert (samix.attention, samix.qk, samix.lam_scaling, samix.upsample, samix.sources) == (
        "pair", "concat", 0.25, "bilinear", 2)
    assert samix.query.in_channels == 16 and isinstance(samix.value[1], nn.BatchNorm2d)
    assert (adautomix.attention, adautomix.qk, adautomix.upsample, adautomix.sources) == ("co", "separate", "bilinear", 3)


@pytest.mark.parametrize("name, reads_lam", [("automix", False), ("samix", True)])
def test_only_samix_masks_read_lam(name, reads_lam):
    block = attached(name)[1].mix_block
    features, indices = torch.randn(8, 8, 4, 4), rolled(8, 1)
    with torch.no_grad():
        low, high = (block(features, indices, [lam, 1 - lam], SIZE) for lam in (0.2, 0.8))
    assert torch.equal(low, high) != reads_lam


def test_param_groups_hold_the_mix_block_with_its_lr():
    model = convnet()
    plain, tuned = learned("automix").attach(model), learned("automix", lr=0.05).attach(model)
    assert [id(p) for p in plain.param_groups()[0]["params"]] == [id(p) for p in plain.mix_block.parameters()]
    assert "lr" not in plain.param_groups()[0] and tuned.param_groups()[0]["lr"] == 0.05


@pytest.mark.parametrize("name", NAMES)
def test_step_mask_is_the_own_share_map_in_0_1(name):
    model, mixer = attached(name)
    step = mix_step(model, mixer, *batch())
    mask = step.mix.mask
    assert mask.shape == (8, 1, *SIZE)
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_online_batch_is_the_teachers_mask_mix_by_hand(name):
    x, y = batch()
    model, mixer = attached(name)
    mix_step(model, mixer, x, y)
    with torch.no_grad():  # the model moves away from the teacher: the masks must come from the teacher
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    index = rolled(8, 1, 3)[: len(SHARES[name])]
    force_draws(mixer, online=(index, SHARES[name]))
    step = mix_step(model, mixer, x, y)
    with torch.no_grad():
        masks = mixer.mix_block(teacher_features(mixer, x), index, SHARES[name], SIZE)
    assert float(masks.std()) > 0  # learned masks, not the constant fallback
    torch.testing.assert_close(step.mix.x, mixed_by_hand(x, index, masks))
    torch.testing.assert_close(step.mix.x, mix_sources(x, index, masks))
    torch.testing.assert_close(step.mix.mask, masks[:, :1])
    assert torch.equal(step.mix.index, index[1])


# ------------------------------------------------------------------------ lam and the masks
FALLBACK = [
    ("automix", [0.079, 0.921]),
    ("automix", [0.95, 0.05]),
    ("samix", [0.02, 0.98]),
    ("adautomix", [0.029, 0.5, 0.471]),
    ("adautomix", [0.975, 0.015, 0.01]),
]


@pytest.mark.parametrize("name, shares", FALLBACK)
def test_lam_in_the_margin_gives_constant_masks_whose_mean_is_lam(name, shares):
    x, y = batch()
    model, mixer = attached(name)
    index = rolled(8, 1, 3)[: len(shares)]
    force_draws(mixer, online=(index, shares))
    step = mix_step(model, mixer, x, y)
    lam = torch.tensor(shares[0])  # float32, as the masks
    assert torch.all(step.mix.mask == lam)
    assert step.mix.mask.double().mean().item() == lam.item()
    assert torch.all(step.mix.lam == lam)
    assert torch.equal(step.mix.x, mix_sources(x, index, constant_masks(x, shares)))
    torch.testing.assert_close(step.mix.x, sum(s * x[i] for s, i in zip(shares, index)))


@pytest.mark.parametrize("name, shares", [("automix", [0.081, 0.919]), ("samix", [0.919, 0.081]),
                                          ("adautomix", [0.031, 0.5, 0.469])])
def test_lam_just_outside_the_margin_gives_learned_masks(name, shares):
    x, y = batch()
    model, mixer = attached(name)
    force_draws(mixer, online=(rolled(8, 1, 3)[: len(shares)], shares))
    mask = mix_step(model, mixer, x, y).mix.mask
    assert float(mask.std()) > 0


def block_losses(mixer, own: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """``_block_losses`` for hand-made masks (own mask ``own``, partner ``1 - own``) and Mix Block shares ``[lam, 1 - lam]``."""
    own = own.view(1, 1, 2, 2).expand(4, 1, 2, 2)
    masks = torch.cat([own, 1.0 - own], dim=1)
    logits, target = torch.zeros(4, NUM_CLASSES), onehot(torch.arange(4))
    return mixer._block_losses(soft_cross_entropy, logits, target, masks, {"block_lam": [lam, 1.0 - lam]}, None)


@pytest.mark.parametrize("own, lam, expected", [
    ([0.5, 0.5, 0.5, 0.5], 0.5, 0.0),  # gap 0
    ([0.25, 0.25, 1.0, 1.0], 0.5625, 0.0),  # mean 0.625, gap 0.0625 <= 0.1
    ([0.25, 0.25, 1.0, 1.0], 0.5, 0.1 * (0.125 - 0.1)),  # gap 0.125
    ([0.0, 0.5, 0.5, 0.0], 0.5, 0.1 * (0.25 - 0.1)),  # mean 0.25 below lam: |gap| counts
    ([1.0, 1.0, 1.0, 1.0], 0.0, 0.1 * (1.0 - 0.1)),
])
def test_automix_mask_loss_is_zero_within_the_margin_and_linear_outside(own, lam, expected):
    terms = block_losses(learned("automix"), torch.tensor(own), lam)
    assert terms["block_mask"].item() == pytest.approx(expected, abs=1e-7)
    torch.testing.assert_close(terms["block_mix"], torch.tensor(math.log(NUM_CLASSES)))  # the criterion itself


def test_samix_mask_loss_subtracts_twice_the_mask_variance():
    own = torch.tensor([0.25, 0.25, 1.0, 1.0])  # mean 0.625, variance 0.375 ** 2
    terms = block_losses(learned("samix"), own, 0.5)
    assert terms["block_mask"].item() == pytest.approx(0.1 * ((0.125 - 0.1) - 2 * 0.375**2), abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_step_targets_mix_the_labels_with_the_drawn_shares(name):
    x, y = batch()
    model, mixer = attached(name)
    step = mix_step(model, mixer, x, y)
    out, soft = step.mix, onehot(y)
    if name == "adautomix":
        indices, weights = out.sources
        expected = sum(weights[:, k : k + 1] * soft[indices[:, k]] for k in range(3))
    else:
        assert out.sources is None
        lam = out.lam[:, None]
        expected = lam * soft + (1 - lam) * soft[out.index]
    assert torch.all(out.lam == out.lam[0]) and 0 < float(out.lam[0]) < 1  # one lam for the batch
    torch.testing.assert_close(out.y, expected)
    torch.testing.assert_close(out.y.sum(1), torch.ones(8))
    torch.testing.assert_close(step.logits, model(out.x))
    torch.testing.assert_close(step.aux["online_mix"], soft_cross_entropy(step.logits, out.y))
    torch.testing.assert_close(step.loss, torch.stack(list(step.aux.values())).sum())


@pytest.mark.parametrize("name", ["automix", "samix"])
def test_block_terms_by_hand(name):
    x, y = batch()
    model, mixer = attached(name)
    block_index, shares = rolled(8, 2), [0.7, 0.3]
    force_draws(mixer, block=(block_index, shares))
    step = mix_step(model, mixer, x, y)
    with torch.no_grad():
        masks = mixer.mix_block(teacher_features(mixer, x), block_index, shares, SIZE)
        logits = mixer.teacher(mixed_by_hand(x, block_index, masks))
        target = 0.7 * onehot(y) + 0.3 * onehot(y)[block_index[1]]
        own = masks[:, 0]
        gap = max(abs(own.mean().item() - 0.7) - 0.1, 0.0)
        variance = own.var(unbiased=False).item() if name == "samix" else 0.0
    torch.testing.assert_close(step.aux["block_mix"], soft_cross_entropy(logits, target))
    assert step.aux["block_mask"].item() == pytest.approx(0.1 * (gap - 2.0 * variance), abs=1e-7)


# ------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_the_mix_block_and_the_model_but_not_the_teacher(name):
    model, mixer = attached(name)
    mix_step(model, mixer, *batch()).loss.backward()
    grads = {n: p.grad for n, p in mixer.mix_block.named_parameters()}
    largest = max(float(g.abs().max()) for g in grads.values())
    for n, g in grads.items():
        assert g is not None, n
        if n in inert(name):
            assert float(g.abs().max()) < 1e-3 * largest, n
        else:
            assert float(g.abs().sum()) > 0, n
    for n, p in mixer.teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    for n, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, n


@pytest.mark.parametrize("name", NAMES)
def test_online_terms_send_no_gradient_into_the_mix_block(name):
    x, y = batch()
    model, mixer = attached(name)
    force_draws(mixer, online=(rolled(8, 1, 3)[: len(SHARES[name])], SHARES[name]))  # learned online masks
    early = {}
    backward_early = mixer._backward_early

    def spy(block_loss):
        params = list(mixer.mix_block.parameters())
        early["grads"] = torch.autograd.grad(block_loss, params, retain_graph=True)
        return backward_early(block_loss)

    mixer._backward_early = spy
    step = mix_step(model, mixer, x, y)
    assert not step.mix.x.requires_grad and not step.mix.mask.requires_grad
    total = torch.autograd.grad(step.loss, list(mixer.mix_block.parameters()))
    assert all(torch.equal(t, g) for t, g in zip(total, early["grads"]))  # the model's terms add nothing
    assert any(g.any() for g in early["grads"])  # the check above could see a gradient


@pytest.mark.parametrize("name", NAMES)
def test_early_mix_block_backward_gives_the_plain_sums_loss_and_gradients(name):
    """The step takes the Mix Block's gradients before the model's passes (to free the teacher's
    activations); loss and every gradient equal those of the plain sum of the terms."""
    x, y = batch()
    model, mixer = attached(name)
    twin_model, twin = copy.deepcopy(model), copy.deepcopy(mixer)
    twin._backward_early = lambda block_loss: block_loss  # the plain graph: one backward through everything
    step, plain = mix_step(model, mixer, x, y), mix_step(twin_model, twin, x, y)
    torch.testing.assert_close(step.loss, plain.loss)
    torch.testing.assert_close(step.loss, sum(step.aux.values()))
    step.loss.backward()
    plain.loss.backward()
    for (name_, p), q in zip([*model.named_parameters(), *mixer.mix_block.named_parameters()],
                             [*twin_model.parameters(), *twin.mix_block.parameters()]):
        torch.testing.assert_close(p.grad, q.grad, msg=name_)


# ------------------------------------------------------------------------ EMA teacher
def test_ema_momentum_schedule():
    assert ema_momentum(0, 1000) == 0.999
    assert ema_momentum(99, 1000) == 0.999  # held for the first 10%
    assert ema_momentum(100, 1000) == pytest.approx(0.999999 - 0.000999 * (math.cos(math.pi / 10) + 1) / 2, abs=1e-12)
    assert ema_momentum(500, 1000) == pytest.approx(0.9994995, abs=1e-12)
    assert ema_momentum(1000, 1000) == pytest.approx(0.999999, abs=1e-12)
    assert ema_momentum(5000, 1000) == pytest.approx(0.999999, abs=1e-12)  # past the end: the end value
    assert ema_momentum(50, 100, base=0.9, end=1.0) == pytest.approx(0.95, abs=1e-12)
    assert ema_momentum(10**6, None) == 0.999  # no total_steps: the base
    values = [ema_momentum(step, 1000) for step in range(0, 1001, 10)]
    assert values == sorted(values)


def test_step_0_copies_the_model_into_the_teacher():
    x, y = batch()
    model, mixer = attached("automix")
    with torch.no_grad():  # the model changes after attach: only step 0's copy can make them equal
        for t in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            t.add_(0.5)
    model.eval(), mixer.eval()  # no BatchNorm statistics updates: every tensor can be compared
    mix_step(model, mixer, x, y)
    teacher = mixer.teacher.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(teacher[key], value), key


def test_teacher_moves_by_the_scheduled_ema_of_the_model():
    x, y = batch()
    total = 4  # call 1 uses ema_momentum(0, 4) (held), call 2 ema_momentum(1, 4) (cosine)
    assert ema_momentum(0, total) == 0.999 and ema_momentum(1, total) > 0.99914
    model, mixer = attached("automix", total_steps=total)
    mix_step(model, mixer, x, y)
    for call in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        teacher = [p.double() for p in mixer.teacher.parameters()]
        online = [p.detach().double() for p in model.parameters()]
        mix_step(model, mixer, x, y)
        m = ema_momentum(call - 1, total)
        for t, o, new in zip(teacher, online, mixer.teacher.parameters()):
            torch.testing.assert_close(new.double(), m * t + (1 - m) * o, rtol=0, atol=1e-6)


def test_momentum_1_keeps_the_teacher_fixed_after_step_0():
    x, y = batch()
    model, mixer = attached("automix", momentum=1.0, end_momentum=1.0, total_steps=3)
    mix_step(model, mixer, x, y)
    frozen = [p.clone() for p in mixer.teacher.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.parameters()))
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        mix_step(model, mixer, x, y)
    assert all(torch.equal(a, b) for a, b in zip(frozen, mixer.teacher.parameters()))


def test_momentum_1_alone_is_accepted_and_an_end_below_momentum_is_not():
    assert learned("automix", momentum=1.0).momentum == 1.0
    with pytest.raises(ValueError, match="end_momentum must be >= momentum"):
        learned("automix", momentum=0.999, end_momentum=0.99)


# ------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_resumes_exactly(name):
    x, y = batch()
    model, mixer = attached(name)
    opt = sgd(model, mixer)
    for _ in range(2):
        train_step(model, mixer, opt, x, y)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "mixer": mixer.state_dict(), "opt": opt.state_dict()}, saved)
    uninterrupted = [train_step(model, mixer, opt, x, y) for _ in range(2)]

    torch.manual_seed(1)  # other initial weights: only the checkpoint can make the runs agree
    model2, mixer2 = attached(name)
    opt2 = sgd(model2, mixer2)
    saved.seek(0)
    state = torch.load(saved)
    model2.load_state_dict(state["model"])
    mixer2.load_state_dict(state["mixer"])
    opt2.load_state_dict(state["opt"])
    resumed = [train_step(model2, mixer2, opt2, x, y) for _ in range(2)]
    for a, b in zip(uninterrupted, resumed):
        assert torch.equal(a.loss, b.loss)
        assert a.aux.keys() == b.aux.keys() and all(torch.equal(a.aux[k], b.aux[k]) for k in a.aux)
        assert torch.equal(a.mix.x, b.mix.x)
    if name == "adautomix":  # steps 2 and 3: adversarial, then not
        assert resumed[0].aux["block_cosine"] != 0 and resumed[1].aux["block_cosine"] == 0


# ------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", NAMES)
def test_sgd_steps_train_the_model_and_the_mix_block(name):
    x, y = batch()
    model, mixer = attached(name)
    opt = sgd(model, mixer)
    model_before = copy.deepcopy(dict(model.named_parameters()))
    block_before = copy.deepcopy(dict(mixer.mix_block.named_parameters()))
    for _ in range(3):
        step = train_step(model, mixer, opt, x, y)
        assert torch.isfinite(step.loss) and all(torch.isfinite(v) for v in step.aux.values())
    for n, p in model.named_parameters():
        assert not torch.equal(p, model_before[n]), n
    for n, p in mixer.mix_block.named_parameters():
        if n not in inert(name):
            assert not torch.equal(p, block_before[n]), n


@pytest.mark.parametrize("name", NAMES)
def test_lightning_classifier_trains_the_mix_block_in_its_own_group(name):
    module = assert_lightning_trains({"name": name, "lr": 0.05})
    trainer, mixer = module.trainer, module.mixer
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in mixer.mix_block.parameters()]
    assert groups[0]["initial_lr"] == 0.1 and groups[1]["initial_lr"] == 0.05
    assert mixer.total_steps == 3 and mixer._calls == 3
    aux = {"online_mix", "online_clean", "block_mix"} | ({"block_cosine", "online_linear"} if name == "adautomix"
                                                         else {"block_mask"})
    for term in aux:
        assert torch.isfinite(trainer.callback_metrics[f"train/{term}"]), term


# ------------------------------------------------------------------------ AdAutoMix
def test_adautomix_shares_sum_to_1_and_serve_both_draws():
    x, _ = batch()
    mixer, partners_differ = learned("adautomix"), False
    for _ in range(5):
        p = mixer.sample_params(x)
        assert p["block_lam"] == p["online_lam"] and len(p["online_lam"]) == 3
        assert all(s > 0 for s in p["online_lam"]) and sum(p["online_lam"]) == pytest.approx(1.0, abs=1e-12)
        assert p["batch_lam"] == p["online_lam"][0] and torch.all(p["lam"] == torch.tensor(p["online_lam"][0]))
        for indices in (p["block_index"], p["online_index"]):
            assert indices.shape == (3, 8) and torch.equal(indices[0], torch.arange(8))
            assert all(torch.equal(row.sort().values, torch.arange(8)) for row in indices)
        partners_differ |= not torch.equal(p["block_index"], p["online_index"])
    assert partners_differ  # each batch has its own partners
    automix = learned("automix").sample_params(x)
    assert automix["block_lam"] != automix["online_lam"]  # AutoMix: two independent lam draws


def test_adautomix_generator_is_adversarial_on_even_steps():
    x, y = batch()
    model, mixer = attached("adautomix")
    assert [mixer.adversarial(s) for s in range(4)] == [True, False, True, False]
    for call in range(4):
        aux = mix_step(model, mixer, x, y).aux
        if call % 2 == 0:
            assert aux["block_mix"] < 0 and aux["block_cosine"] != 0, call
        else:
            assert aux["block_mix"] > 0 and aux["block_cosine"] == 0, call


def test_adautomix_adversarial_terms_by_hand():
    x, y = batch()
    model, mixer = attached("adautomix")
    shares, block_index = [0.5, 0.3, 0.2], rolled(8, 3, 5)
    force_draws(mixer, online=(rolled(8, 1, 2), shares), block=(block_index, shares))
    step = mix_step(model, mixer, x, y)  # step 0: adversarial
    teacher, soft = mixer.teacher, onehot(y)
    with torch.no_grad():
        clean = teacher(x)
        masks = mixer.mix_block(teacher_features(mixer, x), block_index, shares, SIZE)
        logits = teacher(mixed_by_hand(x, block_index, masks))
        target = sum(s * soft[i] for s, i in zip(shares, block_index))
        cosine = sum(s * F.cosine_similarity(logits, clean[i], dim=-1) for s, i in zip(shares, block_index)).mean()
    torch.testing.assert_close(step.aux["block_mix"], -0.3 * soft_cross_entropy(logits, target))
    torch.testing.assert_close(step.aux["block_cosine"], 0.7 * cosine)


def test_adautomix_online_terms_by_hand():
    x, y = batch()
    model, mixer = attached("adautomix")
    shares, index = [0.5, 0.3, 0.2], rolled(8, 1, 2)
    force_draws(mixer, online=(index, shares))
    step = mix_step(model, mixer, x, y)
    soft = onehot(y)
    target = sum(s * soft[i] for s, i in zip(shares, index))
    with torch.no_grad():
        linear = model(sum(s * x[i] for s, i in zip(shares, index)))
        clean = model(x)
    torch.testing.assert_close(step.aux["online_linear"], 0.5 * soft_cross_entropy(linear, target))
    torch.testing.assert_close(step.aux["online_clean"], 0.5 * soft_cross_entropy(clean, soft))
    torch.testing.assert_close(step.mix.y, target)


def test_adautomix_output_lists_three_sources_and_accuracy_weighs_them():
    x, y = batch()
    model, mixer = attached("adautomix")
    shares, index = [0.5, 0.3, 0.2], rolled(8, 1, 2)
    force_draws(mixer, online=(index, shares))
    out = mix_step(model, mixer, x, y).mix
    indices, weights = out.sources
    assert indices.shape == (8, 3) and weights.shape == (8, 3)
    assert torch.equal(indices, index.t()) and torch.equal(out.index, index[1])
    torch.testing.assert_close(weights, torch.tensor([shares] * 8))
    for k, share in enumerate(shares):  # predict source k's label everywhere: accuracy is its share
        logits = onehot(y[index[k]])
        assert mixed_accuracy(logits, y, out).item() == pytest.approx(share)
    mixup_only = MixOutput(out.x, out.y, out.lam, out.index)  # two sources: lam and 1 - lam
    assert mixed_accuracy(onehot(y[index[1]]), y, mixup_only).item() == pytest.approx(0.5)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", NAMES)
def test_forward_without_the_model_is_a_type_error(name):
    with pytest.raises(TypeError, match="needs the model"):
        learned(name)(*batch())


@pytest.mark.parametrize("name", NAMES)
def test_step_before_attach_is_a_runtime_error(name):
    with pytest.raises(RuntimeError, match=r"attach\(model\)"):
        mix_step(convnet(), learned(name), *batch())


@pytest.mark.parametrize("name", NAMES)
def test_model_without_the_feature_stage_is_refused_at_attach(name):
    with pytest.raises(TypeError, match=r"stage 5 .*SmallConvNet has stages 1\.\.3"):
        learned(name, feature_stage=5).attach(convnet())


@pytest.mark.parametrize("name", NAMES)
def test_model_that_split_stages_does_not_know_is_refused_at_attach(name):
    with pytest.raises(TypeError, match="Sequential"):
        learned(name).attach(nn.Sequential(nn.Flatten(), nn.Linear(256, NUM_CLASSES)))


def test_in_channels_that_disagree_with_the_model_fail_when_the_classifier_is_built():
    from openmix.lightning import MixupClassifier

    with pytest.raises(ValueError, match=r"in_channels=7.*stage 3 of SmallConvNet has 8 channels"):
        MixupClassifier(convnet(), num_classes=NUM_CLASSES, mixer={"name": "automix", "in_channels": 7})


def test_stepping_another_model_is_refused():
    _, mixer = attached("automix")
    other = create_model("cifar_resnet18", num_classes=NUM_CLASSES, in_chans=1, channels=[8, 8, 8, 8], stem_width=8)
    with pytest.raises(ValueError, match="attached to another model"):
        mix_step(other, mixer, *batch())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kwargs", [{"mode": "elem"}, {"prob": 0.5}])
def test_elem_mode_and_prob_are_refused(name, kwargs):
    with pytest.raises(ValueError, match="mode must be 'batch' and prob 1"):
        learned(name, **kwargs)


@pytest.mark.parametrize("name, kwargs, match", [
    ("automix", {"qk": "bad"}, "qk must be one of"),
    ("samix", {"upsample": "bicubic"}, "upsample must be one of"),
    ("automix", {"mixed_samples": 3}, "pair attention mixes 2 sources"),
    ("adautomix", {"attention": "pair"}, "pair attention mixes 2 sources"),
    ("automix", {"attention": "self"}, "attention must be one of"),
])
def test_bad_mix_block_settings_are_refused_when_the_mixer_is_built(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        learned(name, **kwargs)


@pytest.mark.parametrize("kwargs", [{"qk": "bad"}, {"upsample": "bicubic"}, {"attention": "pair", "sources": 3}])
def test_bad_mix_block_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        MixBlock(8, **kwargs)


def test_attach_puts_the_mix_block_on_the_models_device():
    model = convnet().to("meta")
    mixer = learned("automix").attach(model)
    assert all(p.device.type == "meta" for p in [*mixer.mix_block.parameters(), *mixer.teacher.parameters()])


def test_attach_puts_a_configured_mix_block_on_the_models_device():
    model = convnet().to("meta")
    mixer = learned("automix", in_channels=8).attach(model)
    assert all(p.device.type == "meta" for p in mixer.mix_block.parameters())


# ------------------------------------------------------------------------ inference and other models
@pytest.mark.parametrize("name", NAMES)
def test_classifier_forward_and_validation_run_the_model_alone(name):
    from openmix.lightning import MixupClassifier

    module = MixupClassifier(convnet(), num_classes=NUM_CLASSES, mixer={"name": name}, mix_seed=0)

    def refuse(*_):
        raise AssertionError("the mixer ran at inference")

    for submodule in module.mixer.modules():  # the teacher, its stages and the Mix Block
        submodule.register_forward_pre_hook(refuse)
    module.eval()
    x, y = batch()
    with torch.no_grad():
        assert torch.equal(module(x), module.model(x))
        module.on_validation_epoch_start()
        module.validation_step((x, y), 0)


def cifar_resnet() -> nn.Module:
    return create_model("cifar_resnet18", num_classes=NUM_CLASSES, channels=[8, 8, 8, 8], stem_width=8)


def timm_resnet() -> nn.Module:
    return create_model("resnet10t", num_classes=NUM_CLASSES)  # the cheapest timm ResNet


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("make, channels", [(cifar_resnet, 8), (timm_resnet, 256)], ids=["cifar_resnet18", "timm_resnet10t"])
def test_resnets_attach_and_train_one_step(name, make, channels):
    model = make()
    mixer = learned(name).attach(model)
    assert mixer.in_channels == channels
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    step = mix_step(model, mixer, x, y)
    step.loss.backward()
    assert torch.isfinite(step.loss) and step.mix.x.shape == x.shape
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is not None for p in mixer.mix_block.parameters())


# ------------------------------------------------------------------------ command line
@pytest.mark.parametrize("name", NAMES)
def test_openmix_train_runs_the_learned_mixer(tmp_path, name):
    from test_cli import run

    row = run(tmp_path, f"mixer={name}", "+trainer.fast_dev_run=true")
    assert row["mixer"] == name


def test_adautomix_has_no_mask_loss_to_set():
    with pytest.raises(TypeError, match="mask_loss"):
        learned("adautomix", mask_loss=0.1)


def test_fp16_autocast_leaves_the_mix_block_backward_to_the_caller():
    """Only the caller's backward is loss-scaled, so under fp16 the Mix Block's loss keeps its graph."""
    x, y = batch()
    model, mixer = attached("automix")
    seen = []
    backward_early = mixer._backward_early

    def spy(loss):
        out = backward_early(loss)
        seen.append(out is loss)
        return out

    mixer._backward_early = spy
    with torch.autocast("cpu", dtype=torch.float16):
        mix_step(model, mixer, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mix_step(model, mixer, x, y)
    assert seen == [True, False]


@pytest.mark.parametrize("name", ["samix", "adautomix"])
def test_lightning_resume_from_a_checkpoint_continues_exactly(tmp_path, name):
    """Fit 3 epochs (one batch each), or 2, save, and resume for the 3rd: same weights, Mix Block and teacher."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from openmix.lightning import MixupClassifier

    x, y = batch()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))

    def fit(epochs: int, ckpt=None, init=None):
        torch.manual_seed(0)
        module = MixupClassifier(convnet(), num_classes=NUM_CLASSES, mixer={"name": name}, mix_seed=0,
                                 scheduler={"name": "none"})
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, loader, ckpt_path=ckpt)
        return module, trainer

    straight, _ = fit(3)
    _, first = fit(2)
    first.save_checkpoint(tmp_path / "two.ckpt")
    resumed, _ = fit(3, ckpt=str(tmp_path / "two.ckpt"))
    after = resumed.state_dict()
    for key, value in straight.state_dict().items():
        assert torch.equal(value, after[key]) if torch.is_tensor(value) else value == after[key], key
    assert resumed.mixer._calls == straight.mixer._calls == 3


# ------------------------------------------------------------------------ published recipes
@pytest.mark.parametrize("experiment, name, expected, min_lr", [
    ("cifar100_r18", "automix", {"lam_channel": False, "end_momentum": 0.999999, "lr": None, "min_lr": None}, 0.05),
    ("cifar100_wrn28_8", "samix", {"lam_scaling": 0.25}, 0.0),
    ("tinyimagenet_r18", "samix", {"lam_scaling": -1, "lr": 0.1, "min_lr": 0.001}, 0.05),
    ("imagenet_r50", "automix", {"lam_channel": True, "end_momentum": 0.99999, "mask_loss_anneal": True,
                                 "lr": 0.1, "min_lr": 0.001}, 0.0),
    ("imagenet_r50", "samix", {"lam_scaling": -1, "value_dropout": 0.1, "mask_loss_anneal": True}, 0.0),
    ("imagenet_r50", "mixup", {}, 0.0),
])
def test_experiments_carry_the_published_learned_mixer_settings(experiment, name, expected, min_lr):
    from omegaconf import OmegaConf

    from test_cli import compose_cfg

    cfg = compose_cfg(f"experiment={experiment}", f"mixer={name}")
    mixer = OmegaConf.to_container(cfg.mixer, resolve=True)
    assert {key: mixer[key] for key in expected} == expected
    assert cfg.optim.scheduler.min_lr == min_lr
    if name != "mixup":
        openmix.build(**mixer, num_classes=10)  # every setting is one the mixer takes


def test_lam_scaling_minus_one_scales_by_lambda_itself():
    features = torch.randn(4, 8, 2, 2)
    indices = torch.stack([torch.arange(4), torch.tensor([1, 0, 3, 2])])
    raw, by_hand = MixBlock(8, lam_scaling=-1), MixBlock(8)
    by_hand.load_state_dict(raw.state_dict())
    lam = 0.3  # own features x (1 + lam), the partner's x (1 + (1 - lam))
    got = raw(features, indices, [lam, 1 - lam], size=(4, 4))
    own, partner = features * (1 + lam), features[indices[1]] * (2 - lam)
    logits = (torch.softmax((by_hand.query(own).flatten(2).transpose(1, 2) @ by_hand.query(partner).flatten(2))
                            / by_hand.inter_channels**0.5, -1) @ by_hand.value(partner).flatten(2).transpose(1, 2))
    expected = torch.sigmoid(torch.nn.functional.interpolate(logits.view(4, 1, 2, 2), size=(4, 4), mode="nearest"))
    torch.testing.assert_close(got[:, 1:], expected)


def test_mask_loss_anneals_to_zero_over_the_run():
    mixer = learned("automix", mask_loss_anneal=True, total_steps=100)
    weights = []
    for call in (1, 51, 101, 200):
        mixer._calls = call  # the step being computed is call - 1
        weights.append(mixer.mask_loss_weight())
    assert weights[0] == pytest.approx(0.1) and weights[1] == pytest.approx(0.05)
    assert weights[2] == pytest.approx(0.0, abs=1e-12) and weights[3] == pytest.approx(0.0, abs=1e-12)
    assert learned("automix", total_steps=100).mask_loss_weight() == 0.1  # off by default


def test_classifier_gives_the_mix_block_its_own_cosine_floor():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from openmix.lightning import MixupClassifier

    x, y = batch()
    module = MixupClassifier(convnet(), num_classes=NUM_CLASSES, mixer={"name": "automix", "lr": 0.1, "min_lr": 0.001},
                             mix_seed=0, optimizer={"lr": 0.2}, scheduler={"name": "cosine", "interval": "step"})
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    model_group, block_group = trainer.optimizers[0].param_groups
    # after 4 of 4 steps the cosines sit at their floors: the model's 0, the Mix Block's 0.001
    assert model_group["lr"] == pytest.approx(0.0, abs=1e-9)
    assert block_group["lr"] == pytest.approx(0.001)


def test_repr_names_the_teacher_instead_of_printing_the_model_again():
    model, mixer = attached("automix")
    text = repr(mixer)
    assert f"teacher=EMA copy of {type(model).__name__}" in text and "(mix_block): MixBlock(" in text
    assert "stages" not in text  # the model's modules are not listed a second time


def test_a_refused_batch_leaves_the_teacher_and_the_streams_alone():
    x, y = batch()
    model, mixer = attached("automix")
    mix_step(model, mixer, x, y)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in mixer.teacher.parameters()]
    with pytest.raises(ValueError):
        mix_step(model, mixer, x, y[:-1])  # labels for another batch size
    assert mixer._calls == 1
    assert all(torch.equal(a, b) for a, b in zip(before, mixer.teacher.parameters()))


def test_samix_value_net_is_half_the_feature_channels_wide_and_takes_dropout():
    model = convnet()
    block = learned("samix").attach(model).mix_block
    assert block.value[0].out_channels == block.in_channels // 2
    with_dropout = learned("samix", value_dropout=0.1).attach(model).mix_block
    assert isinstance(with_dropout.value[-1], torch.nn.Dropout) and with_dropout.value[-1].p == 0.1
    assert not any(isinstance(m, torch.nn.Dropout) for m in block.modules())
