"""TransMix: CutMix boxes on the pixels, labels weighted half by area and half by the class token's attention
over the pasted patches (per sample), that attention hooked out of the step's one forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import TINY_VIT_CLI, seeded_batch, tiny_convnet, tiny_vit
from openmix.mixers.transmix import attention_statistic, capture_attention, pasted_tokens, transmix_lam, vit_parts
from openmix.training import mix_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NUM_CLASSES = 10


def peaky_vit() -> torch.nn.Module:
    """``tiny_vit`` whose last attention is far from uniform (larger queries and keys), in eval mode."""
    torch.manual_seed(0)
    model = tiny_vit(NUM_CLASSES).eval()
    with torch.no_grad():
        model.blocks[-1].attn.qkv.weight.mul_(6.0)
    return model


def timm_attention(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's softmax attention ``(B, heads, tokens, tokens)`` as timm's own unfused path makes it."""
    attention = model.blocks[-1].attn
    seen = []
    handle = attention.attn_drop.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    attention.fused_attn = False
    try:
        with torch.no_grad():
            model(x)
    finally:
        attention.fused_attn = True
        handle.remove()
    return seen[-1]


# ------------------------------------------------------------------ the label weights
def test_the_label_weight_is_half_area_half_attention_by_hand():
    area = torch.tensor([0.75, 0.5])
    pasted = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    attention = torch.tensor([[0.5, 0.1, 0.1, 0.3], [0.1, 0.1, 0.2, 0.2]])  # row 2 unnormalised: only ratios count
    # kept attention share: 0.5 and 0.3 / 0.6 = 0.5; lam = (area + share) / 2
    torch.testing.assert_close(transmix_lam(area, pasted, attention), torch.tensor([0.625, 0.5]))


def test_a_patch_counts_as_pasted_when_its_sampled_pixel_lies_in_the_box():
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 1:6, 2:8] = 0.0  # a box not on the 4-pixel patch grid
    expected = torch.nn.Upsample(size=(2, 2))(1.0 - mask).flatten(1)  # the official resize
    torch.testing.assert_close(pasted_tokens(mask, (2, 2)), expected)
    assert pasted_tokens(mask, (2, 2)).tolist() == [[0.0, 0.0, 0.0, 1.0]]  # only patch (1, 1)'s pixel (4, 4) is in it


def test_the_step_weighs_each_sample_by_the_attention_of_the_mixed_batch():
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("transmix", num_classes=NUM_CLASSES, seed=0), x, y)
    attention = timm_attention(model, step.mix.x)[:, :, 0, 1:].mean(1)  # the class token's row, patch keys
    area = step.mix.mask.flatten(1).mean(1)
    torch.testing.assert_close(step.mix.lam, transmix_lam(area, pasted_tokens(step.mix.mask, (4, 4)), attention))
    onehot = F.one_hot(y, NUM_CLASSES).float()
    lam = step.mix.lam[:, None]
    torch.testing.assert_close(step.mix.y, lam * onehot + (1 - lam) * onehot[step.mix.index])


def test_the_area_term_is_the_boxs_kept_area_even_without_correct_lam():
    """CutMix's lam is its draw when correct_lam is off (a box clipped at the border covers less);
    the official TransMix weighs the box's real area."""
    model, (x, y) = peaky_vit(), seeded_batch(n=16)
    mixer = openmix.build("transmix", num_classes=NUM_CLASSES, mode="elem", correct_lam=False, seed=2)
    step = mix_step(model, mixer, x, y)
    attention = timm_attention(model, step.mix.x)[:, :, 0, 1:].mean(1)
    area = step.mix.mask.flatten(1).mean(1)
    torch.testing.assert_close(step.mix.lam, transmix_lam(area, pasted_tokens(step.mix.mask, (4, 4)), attention))
    drawn = openmix.build("cutmix", num_classes=NUM_CLASSES, mode="elem", correct_lam=False, seed=2)(x, y).lam
    assert bool((drawn - area).abs().max() > 1e-3)  # some box was clipped: the draw is not the area


def test_batch_mode_keeps_a_label_weight_per_sample():
    """One box for the batch, but each sample's own attention: the weights are not collapsed to their mean
    (OpenMixup's loss does that)."""
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("transmix", num_classes=NUM_CLASSES, seed=0), x, y)
    assert torch.equal(step.mix.mask, step.mix.mask[:1].expand_as(step.mix.mask))
    assert float(step.mix.lam.max() - step.mix.lam.min()) > 0.01


def test_a_sample_the_prob_coin_skips_keeps_its_label():
    model, (x, y) = peaky_vit(), seeded_batch(n=16)
    step = mix_step(model, openmix.build("transmix", num_classes=NUM_CLASSES, mode="elem", prob=0.5, seed=1), x, y)
    whole = (step.mix.mask == 1).flatten(1).all(1)
    assert 0 < int(whole.sum()) < 16
    assert torch.equal(step.mix.lam[whole], torch.ones(int(whole.sum())))


# ------------------------------------------------------------------ the box
def test_the_box_is_cutmixs_draw_on_the_pixels():
    """The same seed draws the same box as CutMix, and the boxes are not snapped to the 4-pixel patches
    (the official code cuts on the pixels)."""
    x, y = seeded_batch(n=16)
    mixer = openmix.build("transmix", num_classes=NUM_CLASSES, mode="elem", seed=3)
    step = mix_step(tiny_vit(NUM_CLASSES), mixer, x, y)
    cut = openmix.build("cutmix", num_classes=NUM_CLASSES, mode="elem", seed=3)(x, y)
    assert torch.equal(step.mix.mask, cut.mask) and torch.equal(step.mix.x, cut.x)
    rows = (step.mix.mask[:, 0] == 0).any(2)  # (B, H): rows the box covers
    assert bool((rows[:, 1:] != rows[:, :-1])[:, [i - 1 for i in range(1, 16) if i % 4]].any())


def test_class_maps_follow_the_pixels_not_the_label_weights():
    model, (x, y) = peaky_vit(), seeded_batch()
    step = mix_step(model, openmix.build("transmix", num_classes=NUM_CLASSES, pairing="flip", seed=0), x, y)
    seg = torch.arange(8).view(8, 1, 1).expand(8, 16, 16)
    expected = torch.where(step.mix.mask[:, 0] == 1, seg, seg.flip(0))
    assert step.mix.binary and torch.equal(step.mix.class_map(seg), expected)


# ------------------------------------------------------------------ the attention, from one forward
@pytest.mark.parametrize("statistic", ["cls", "patch_mean"])
def test_the_hooked_attention_equals_timms_own_weights(statistic):
    model, (x, _) = peaky_vit(), seeded_batch()
    with capture_attention(vit_parts(model, "test"), statistic) as seen:
        with torch.no_grad():
            model(x)
    weights = timm_attention(model, x)
    expected = weights[:, :, 0, 1:].mean(1) if statistic == "cls" else weights[:, :, 1:, 1:].mean((1, 2))
    torch.testing.assert_close(seen[-1], expected)


def test_attention_statistic_is_the_softmax_of_scaled_query_key_products():
    torch.manual_seed(0)
    module = tiny_vit().blocks[-1].attn
    qkv = torch.randn(2, 5, 3 * 32)
    q, k = qkv[..., :32].view(2, 5, 2, 16).transpose(1, 2), qkv[..., 32:64].view(2, 5, 2, 16).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 16**0.5, -1)  # (B, heads, 5, 5)
    torch.testing.assert_close(attention_statistic(qkv, module, prefix=1), weights[:, :, 0, 1:].mean(1))


def test_a_step_is_one_forward():
    model, (x, y) = tiny_vit(NUM_CLASSES), seeded_batch()
    calls = []
    model.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    mix_step(model, openmix.build("transmix", num_classes=NUM_CLASSES, seed=0), x, y).loss.backward()
    assert len(calls) == 1


def test_the_hook_is_gone_after_the_step():
    model, (x, y) = tiny_vit(NUM_CLASSES), seeded_batch()
    mix_step(model, openmix.build("transmix", num_classes=NUM_CLASSES, seed=0), x, y)
    assert not model.blocks[-1].attn.qkv._forward_hooks


# ------------------------------------------------------------------ errors
def test_a_cnn_is_refused():
    mixer = openmix.build("transmix", num_classes=NUM_CLASSES)
    with pytest.raises(TypeError, match="TransMix .* needs a timm VisionTransformer.*got SmallConvNet"):
        mixer.check_model(tiny_convnet())


def test_a_vit_without_a_class_token_is_refused():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=NUM_CLASSES, embed_dim=32, depth=1,
                            num_heads=2, class_token=False, global_pool="avg")
    with pytest.raises(TypeError, match="class token"):
        openmix.build("transmix", num_classes=NUM_CLASSES).check_model(vit)


def test_patch_dropout_is_a_clear_error():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=NUM_CLASSES, embed_dim=32, depth=1,
                            num_heads=2, patch_drop_rate=0.5)
    x, y = seeded_batch()
    with pytest.raises(ValueError, match="4x4 patch grid.*patch dropout"):
        mix_step(vit, openmix.build("transmix", num_classes=NUM_CLASSES, seed=0), x, y)


# ------------------------------------------------------------------ the command line
def test_openmix_train_runs_it_on_a_small_vit(tmp_path):
    from test_cli import run

    result = run(tmp_path, *TINY_VIT_CLI, "mixer=transmix", "epochs=1")
    assert result["mixer"] == "transmix" and result["model"] == "vit_tiny_patch16_224"
