"""The feature and learned mixers on timm transformers: Manifold Mixup, AlignMix and AutoMix/SAMix/AdAutoMix
on a tiny ViT and a tiny Swin through mix_step, and openmix-train with a ViT (model=vit_tiny)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import openmix
from openmix.cli.train import CONFIG_DIR, train
from openmix.data import build_datamodule
from openmix.mixer import mix_hidden
from openmix.models import split_stages, token_map
from openmix.training import mix_step
from data_files import write_cifar100
from helpers import assert_steps_train_every_parameter, seeded_batch, tiny_vit

NUM_CLASSES = 10
LEARNED = ("automix", "samix", "adautomix")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_swin(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A timm Swin for 16x16 1-channel images: 1x1 patches, width 8, one block per stage, 2x2 windows; its
    stages give 16x16, 8x8, 4x4 and 2x2 NHWC maps."""
    return SwinTransformer(img_size=16, patch_size=1, in_chans=1, num_classes=num_classes, embed_dim=8,
                           depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2)


def tiny_vit_avg(num_classes: int = NUM_CLASSES) -> nn.Module:
    """:func:`helpers.tiny_vit` classifying from the mean of its patch tokens (global_pool='avg')."""
    return VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=num_classes, embed_dim=32, depth=2,
                             num_heads=2, global_pool="avg")


def seeded(make, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return make(**kwargs)


def learned(name: str, model: nn.Module, **kwargs) -> openmix.LearnedMixer:
    """``name`` attached to ``model``, reading its last stage but one: tiny_vit's 2 blocks are 2 stages."""
    stage = len(split_stages(model)) - 2
    return openmix.build(name, num_classes=NUM_CLASSES, seed=0, feature_stage=stage, **kwargs).attach(model)


# ------------------------------------------------------------------ Manifold Mixup
@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_manifoldmix_trains_every_parameter_of_a_transformer(make):
    x, y = seeded_batch()
    mixer = openmix.build("manifoldmix", num_classes=NUM_CLASSES, layers=(0, 1, 2), seed=0)
    assert_steps_train_every_parameter(seeded(make), mixer, x, y, steps=4)


@pytest.mark.parametrize("layer", [1, 2])
@torch.no_grad()
def test_manifoldmix_mixes_a_vits_hidden_tokens_as_they_are(layer):
    model, (x, y) = seeded(tiny_vit).eval(), seeded_batch()
    mixer = openmix.build("manifoldmix", num_classes=NUM_CLASSES, layers=(layer,), seed=0)
    step = mix_step(model, mixer, x, y)
    stages = split_stages(model)
    h = x
    for stage in stages[: layer + 1]:
        h = stage(h)
    lam = float(step.mix.lam[0])
    h = mix_hidden(h, step.mix.index, lam)  # (B, 1 + 16, 32) tokens, the class token among them
    for stage in stages[layer + 1 :]:
        h = stage(h)
    torch.testing.assert_close(step.logits, model.forward_head(h))


def test_manifoldmix_layers_are_checked_against_a_vits_stages():
    x, y = seeded_batch()
    mixer = openmix.build("manifoldmix", num_classes=NUM_CLASSES, layers=(0, 3), seed=0)
    with pytest.raises(ValueError, match=r"layers \[3\] do not exist in VisionTransformer: split_stages gives 3"):
        mix_step(tiny_vit(), mixer, x, y)


# ------------------------------------------------------------------ AlignMix
@pytest.mark.parametrize("make", [tiny_vit_avg, tiny_swin], ids=["vit_avg", "swin"])
def test_alignmix_trains_every_parameter_of_a_transformer(make):
    x, y = seeded_batch()
    mixer = openmix.build("alignmix", num_classes=NUM_CLASSES, align_prob=1.0, seed=0)
    assert_steps_train_every_parameter(seeded(make), mixer, x, y, steps=4)


@torch.no_grad()
def test_alignmix_aligns_a_vits_patch_tokens_and_mixes_its_class_token_plainly(monkeypatch):
    from openmix.mixers.alignmix import align_mix, feature_cost, sinkhorn

    model, (x, y) = seeded(tiny_vit_avg).eval(), seeded_batch()
    heads = []
    monkeypatch.setattr(model, "forward_head", lambda h: heads.append(h) or type(model).forward_head(model, h))
    mixer = openmix.build("alignmix", num_classes=NUM_CLASSES, align_prob=1.0, seed=0)
    step = mix_step(model, mixer, x, y)
    params = openmix.build("alignmix", num_classes=NUM_CLASSES, align_prob=1.0, seed=0).sample_params(x)
    index, lam = step.mix.index, float(step.mix.lam[0])
    tokens = model.forward_features(x)  # (B, 1 + 16, 32)
    grid = token_map(tokens, model)  # (B, 32, 4, 4)
    plan = sinkhorn(feature_cost(grid.flatten(2), grid[index].flatten(2)))
    aligned = align_mix(grid, index, lam, plan, params["direction"])
    (mixed,) = heads
    torch.testing.assert_close(mixed[:, :1], lam * tokens[:, :1] + (1 - lam) * tokens[index, :1])
    torch.testing.assert_close(mixed[:, 1:], aligned.flatten(2).transpose(1, 2))


def test_alignmix_refuses_a_vit_that_classifies_from_its_class_token():
    x, y = seeded_batch()
    mixer = openmix.build("alignmix", num_classes=NUM_CLASSES, seed=0)
    with pytest.raises(TypeError, match=r"classifies from its class token alone \(global_pool='token'\)"):
        mix_step(tiny_vit(), mixer, x, y)


@torch.no_grad()
def test_alignmix_aligns_a_swins_nhwc_map_by_its_positions(monkeypatch):
    from openmix.mixers.alignmix import align_mix, feature_cost, sinkhorn

    model, (x, y) = seeded(tiny_swin).eval(), seeded_batch()
    heads = []
    monkeypatch.setattr(model, "forward_head", lambda h: heads.append(h) or type(model).forward_head(model, h))
    step = mix_step(model, openmix.build("alignmix", num_classes=NUM_CLASSES, align_prob=1.0, seed=0), x, y)
    params = openmix.build("alignmix", num_classes=NUM_CLASSES, align_prob=1.0, seed=0).sample_params(x)
    index, lam = step.mix.index, float(step.mix.lam[0])
    grid = model.forward_features(x).permute(0, 3, 1, 2)  # (B, 64, 2, 2) from NHWC
    aligned = align_mix(grid, index, lam, sinkhorn(feature_cost(grid.flatten(2), grid[index].flatten(2))),
                        params["direction"])
    torch.testing.assert_close(heads[0], aligned.permute(0, 2, 3, 1))


# ------------------------------------------------------------------ AutoMix, SAMix, AdAutoMix
@pytest.mark.parametrize("make", [tiny_vit, tiny_swin], ids=["vit", "swin"])
@pytest.mark.parametrize("name", LEARNED)
def test_learned_mixers_train_a_transformer_and_their_mix_block(name, make):
    model, (x, y) = seeded(make), seeded_batch()
    mixer = learned(name, model)
    assert_steps_train_every_parameter(model, mixer, x, y, steps=2)
    step = mix_step(model, mixer, x, y)
    step.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.mix_block.parameters() if p.requires_grad)


@pytest.mark.parametrize("make, shape", [(tiny_vit, (8, 32, 4, 4)), (tiny_swin, (8, 32, 4, 4))], ids=["vit", "swin"])
def test_the_mix_block_reads_the_teachers_stage_as_a_map(make, shape):
    model, (x, y) = seeded(make), seeded_batch()
    mixer = learned("automix", model)
    seen = []
    mixer.mix_block.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    mix_step(model, mixer, x, y)
    assert mixer.in_channels == shape[1] and seen and set(seen) == {shape}  # ViT: the 4 x 4 patches, no class token


def test_attach_runs_a_vit_at_its_own_image_size():
    model = VisionTransformer(img_size=24, patch_size=4, in_chans=1, num_classes=NUM_CLASSES, embed_dim=16, depth=4,
                              num_heads=2)  # refuses any other input size (timm's strict_img_size)
    mixer = openmix.build("automix", num_classes=NUM_CLASSES, seed=0).attach(model)
    assert mixer.in_channels == 16
    step = mix_step(model, mixer, *seeded_batch(size=24))
    assert step.logits.shape == (8, NUM_CLASSES)


def test_a_learned_mixer_refuses_a_stage_a_small_vit_does_not_have():
    with pytest.raises(TypeError, match="reads stage 3 of the encoder, but VisionTransformer has stages 1..2"):
        openmix.build("automix", num_classes=NUM_CLASSES).attach(tiny_vit())


# ------------------------------------------------------------------ openmix-train with a ViT
def test_openmix_train_runs_manifoldmix_on_a_small_vit(tmp_path):
    overrides = ["~experiment", "data=synthetic", "data.num_samples=32", "data.num_val_samples=16",
                 "data.image_size=16", "data.in_chans=1", "batch_size=16", "epochs=1", "model=vit_tiny",
                 "+model.kwargs.depth=2", "+model.kwargs.embed_dim=32", "+model.kwargs.num_heads=2",
                 "mixer=manifoldmix", "trainer.accelerator=cpu", "print_table=false", "eval.enabled=false",
                 f"+run_dir={tmp_path / 'run'}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
    row = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (row["model"], row["mixer"], row["epochs"]) == ("vit_tiny_patch16_224", "manifoldmix", 1)
    assert row["top1_final"] is not None


# ------------------------------------------------------------------ CIFAR at a ViT's image size
@pytest.mark.parametrize("on_device", [True, False], ids=["device", "dataloader"])
def test_cifar_image_size_resizes_every_batch_after_the_crop(tmp_path, on_device):
    files = write_cifar100(tmp_path, n_train=6, n_test=4)
    dm = build_datamodule("cifar100", root=tmp_path, batch_size=3, image_size=48, on_device=on_device, num_workers=0,
                          crop_padding=0)  # no crop: only the flip and the resize
    dm.setup("fit")
    assert dm.image_size == 48  # what models and mixers are told (DataInfo.of)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 48, 48)
    val_x, val_y = next(iter(dm.val_dataloader()))
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    small = (files["test_x"][:3].float() / 255 - mean) / std
    expected = nn.functional.interpolate(small, size=(48, 48), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(val_x, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(val_y, files["test_y"][:3])


def test_cifar_without_image_size_keeps_its_32_pixels(tmp_path):
    write_cifar100(tmp_path, n_train=6, n_test=4)
    dm = build_datamodule("cifar100", root=tmp_path, batch_size=3)
    dm.setup("fit")
    assert dm.image_size == 32 and next(iter(dm.train_dataloader()))[0].shape == (3, 3, 32, 32)
