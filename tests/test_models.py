"""openmix.models: CIFAR-stem backbones, timm pass-through, the forward split and the stage split."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
import torch.nn as nn

from openmix.models import (
    PreActResNet,
    available_models,
    create_model,
    prefix_tokens,
    split_stages,
    token_map,
    tokens_from_map,
)

CIFAR_MODELS = (
    "cifar_preact_resnet18",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
    "cifar_resnext50_32x4d",
    "cifar_wrn28_8",
)
SMALL = ("cifar_resnet18", "cifar_preact_resnet18")  # cheap enough for backward, autocast, channels-last

# Exact parameter counts for 100 classes and 3 input channels, with the well-known values:
# ResNet-18 11.2M, ResNet-34 21.3M, ResNet-50 23.7M, PreAct-ResNet-18 11.2M (kuangliu/pytorch-cifar),
# ResNeXt-50 32x4d 23.2M (23.0M without the 100-class fc), WRN-28-8 23.4M (Zagoruyko & Komodakis).
PARAM_COUNTS = {
    "cifar_resnet18": (11_220_132, 11.2),
    "cifar_resnet34": (21_328_292, 21.3),
    "cifar_resnet50": (23_705_252, 23.7),
    "cifar_resnext50_32x4d": (23_177_124, 23.2),
    "cifar_preact_resnet18": (11_217_316, 11.2),
    "cifar_wrn28_8": (23_401_012, 23.4),
}


def mini_wrn(**kwargs) -> PreActResNet:
    """A narrow WRN-10-1: the code path of ``cifar_wrn28_8`` (3 stages, final BN-ReLU) at a fraction of the cost."""
    return PreActResNet((1, 1, 1), (16, 32, 64), 16, num_classes=10, final_norm=True, **kwargs)


# Real-valued checks run on the small models (and the mini WRN); the big ones share their code
# (CifarResNet, PreActResNet) and are checked for shapes on the meta device, which computes nothing.
NUMERIC = {name: functools.partial(create_model, name, num_classes=10) for name in (*SMALL, "small_convnet")} | {
    "mini_wrn": mini_wrn}


@functools.cache
def meta_model(name: str, in_chans: int = 3, num_classes: int = 10) -> nn.Module:
    """The model on the meta device: shapes propagate, nothing is computed or allocated."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes, in_chans=in_chans).eval()


@functools.cache
def built(name: str) -> nn.Module:
    """One eval-mode model per name for the forward-only tests (never trained or changed in place)."""
    return NUMERIC[name]().eval()


def images(in_chans: int = 3, size: int = 32, device: str = "cpu") -> torch.Tensor:
    if device == "meta":
        return torch.empty(2, in_chans, size, size, device="meta")
    return torch.rand(2, in_chans, size, size, generator=torch.Generator().manual_seed(0))


def run_stages(stages, x: torch.Tensor) -> torch.Tensor:
    return functools.reduce(lambda h, stage: stage(h), stages, x)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # convolutions on a shared 2-core runner


def test_available_models_lists_openmix_names_sorted():
    assert available_models() == sorted((*CIFAR_MODELS, "small_convnet"))


@torch.no_grad()
def test_small_convnet_fits_fashion_mnist_and_splits_into_stages():
    model = create_model("small_convnet", num_classes=10, in_chans=1).eval()
    assert sum(p.numel() for p in model.parameters()) == 45_274
    x = images(in_chans=1, size=28)
    stages = split_stages(model)
    assert len(stages) == 4 and run_stages(stages, x).shape == (2, 96, 7, 7)
    torch.testing.assert_close(model.forward_head(run_stages(stages, x)), model(x))
    with pytest.raises(ValueError, match="widths"):
        create_model("small_convnet", widths=(8, 16))


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_parameter_count(name):
    count = sum(p.numel() for p in meta_model(name, num_classes=100).parameters())
    exact, millions = PARAM_COUNTS[name]
    assert count == exact
    assert round(count / 1e6, 1) == millions


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_output_shape(name, in_chans):
    model = meta_model(name, in_chans)
    assert model(images(in_chans, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("name", SMALL)
@torch.no_grad()
def test_one_channel_28px_input_like_fashion_mnist(name):
    model = create_model(name, num_classes=10, in_chans=1).eval()
    assert model(images(in_chans=1, size=28)).shape == (2, 10)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_stem_is_stride_1_and_stage_shapes_match_feature_info(name):
    model = meta_model(name)
    h = images(device="meta")
    shapes = []
    for stage in model.stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes[1][1:] == (32, 32)  # stage 1 at full resolution: 3x3 stride-1 stem, no max-pool
    expected = [(info["num_chs"], 32 // info["reduction"], 32 // info["reduction"]) for info in model.feature_info]
    assert shapes == expected


@pytest.mark.parametrize("name", NUMERIC)
@torch.no_grad()
def test_forward_equals_head_of_features(name):
    model, x = built(name), images()
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize("name", NUMERIC)
@torch.no_grad()
def test_stages_in_order_equal_forward(name):
    model, x = built(name), images()
    torch.testing.assert_close(model.forward_head(run_stages(model.stages, x)), model(x))


def test_stages_hold_the_models_own_modules():
    resnet, preact, wrn = built("cifar_resnet18"), built("cifar_preact_resnet18"), meta_model("cifar_wrn28_8")
    assert resnet.stages[1:] == [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
    assert resnet.stages[0][0] is resnet.conv1
    assert isinstance(preact.stages, nn.ModuleList) and len(preact.stages) == 5
    assert len(wrn.stages) == 4  # stem + 3 stages


@pytest.mark.parametrize(
    "timm_name",
    ["resnet18", "resnetv2_18", "convnext_atto", "regnetx_002", "cs3darknet_s", "gernet_s", "nf_regnet_b0"],
)
@torch.no_grad()
def test_split_stages_of_timm_families_equals_forward(timm_name):
    model, x = create_model(timm_name, num_classes=10).eval(), images()
    stages = split_stages(model)
    assert len(stages) >= 4
    torch.testing.assert_close(model.forward_head(run_stages(stages, x)), model(x))


def small_transformer(kind: str) -> nn.Module:
    """A small timm transformer of each family split_stages knows, for 16x16 3-channel images."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2
    from timm.models.vision_transformer import VisionTransformer

    vit = dict(img_size=16, patch_size=4, num_classes=10, embed_dim=16, depth=6, num_heads=2)
    swin = dict(img_size=16, patch_size=1, num_classes=10, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                window_size=2)
    return {
        "vit": lambda: VisionTransformer(**vit),
        "vit_avg_registers_dynamic": lambda: VisionTransformer(**vit, global_pool="avg", reg_tokens=2,
                                                               dynamic_img_size=True),
        "deit_distilled": lambda: VisionTransformerDistilled(**vit),
        "swin": lambda: SwinTransformer(**swin),
        "swin_v2": lambda: SwinTransformerV2(**swin),
    }[kind]().eval()


TRANSFORMERS = ("vit", "vit_avg_registers_dynamic", "deit_distilled", "swin", "swin_v2")


@pytest.mark.parametrize("kind", TRANSFORMERS)
@torch.no_grad()
def test_split_stages_of_timm_transformers_equals_forward(kind):
    model, x = small_transformer(kind), images(size=16)
    stages = split_stages(model)
    assert len(stages) == 5
    torch.testing.assert_close(run_stages(stages, x), model.forward_features(x))
    torch.testing.assert_close(model.forward_head(run_stages(stages, x)), model(x))


@torch.no_grad()
def test_split_stages_of_a_dynamic_size_vit_takes_other_image_sizes():
    model, x = small_transformer("vit_avg_registers_dynamic"), torch.rand(2, 3, 24, 16)  # a 6 x 4 patch grid
    torch.testing.assert_close(model.forward_head(run_stages(split_stages(model), x)), model(x))


@pytest.mark.parametrize("depth, sizes", [(12, [3, 3, 3, 3]), (6, [1, 1, 2, 2]), (2, [1, 1]), (1, [1])])
def test_vit_blocks_are_grouped_into_four_stages_of_equal_depth(depth, sizes):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=depth, num_heads=1)
    stages = split_stages(model)
    blocks = [list(stage[0]) if stage is stages[-1] else list(stage) for stage in stages[1:]]
    assert [len(group) for group in blocks] == sizes
    assert [block for group in blocks for block in group] == list(model.blocks)  # in order, each once
    assert stages[-1][-1] is model.norm  # the final norm ends the last stage


def test_vit_stem_holds_the_embedding_and_shares_its_parameters():
    model = small_transformer("deit_distilled")
    stem = split_stages(model)[0]
    assert stem.patch_embed is model.patch_embed and stem.norm_pre is model.norm_pre
    owned = {id(p) for p in stem.parameters()}
    assert {id(model.cls_token), id(model.dist_token), id(model.pos_embed)} <= owned
    assert owned <= {id(p) for p in model.parameters()}
    assert stem(images(size=16)).shape == (2, 2 + 16, 16)  # class and distillation tokens, then 4 x 4 patches


def test_swin_stages_are_its_layers():
    model = small_transformer("swin")
    stages = split_stages(model)
    assert stages[0] is model.patch_embed and stages[1:4] == list(model.layers)[:3]
    assert list(stages[4]) == [model.layers[3], model.norm]


def test_token_map_lays_vit_patches_on_their_grid_without_prefix_tokens():
    model = small_transformer("vit_avg_registers_dynamic")  # 1 class + 2 register tokens
    tokens = torch.randn(2, 3 + 6 * 4, 16)
    fmap = token_map(tokens, model, image_size=(24, 16))
    assert fmap.shape == (2, 16, 6, 4)
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 3 + 1 * 4 + 2])  # row-major patches after the prefix
    torch.testing.assert_close(prefix_tokens(tokens, model), tokens[:, :3])
    torch.testing.assert_close(tokens_from_map(fmap, model, prefix_tokens(tokens, model)), tokens)


def test_token_map_of_a_fixed_size_vit_uses_its_patch_grid():
    model = small_transformer("vit")
    assert token_map(torch.randn(2, 1 + 16, 16), model).shape == (2, 16, 4, 4)


def test_token_map_permutes_swin_nhwc_and_passes_cnn_maps_through():
    swin, cnn = small_transformer("swin"), built("small_convnet")
    nhwc = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(token_map(nhwc, swin), nhwc.permute(0, 3, 1, 2))
    torch.testing.assert_close(tokens_from_map(token_map(nhwc, swin), swin), nhwc)
    nchw = torch.randn(2, 8, 3, 3)
    assert token_map(nchw, cnn) is nchw and tokens_from_map(nchw, cnn) is nchw
    assert prefix_tokens(nhwc, swin) is None and prefix_tokens(nchw, cnn) is None


@pytest.mark.parametrize("kind, shape, match", [
    ("vit", (2, 1 + 15, 16), "15 patch tokens do not fill the patch grid"),
    ("vit", (2, 16, 4, 4), "tokens \\(B, N, C\\)"),
    ("swin", (2, 16, 8), "4 dimensions"),
])
def test_token_map_of_a_wrong_shape_is_a_clear_error(kind, shape, match):
    with pytest.raises(ValueError, match=match):
        token_map(torch.randn(*shape), small_transformer(kind))


def test_tokens_from_map_needs_the_prefix_tokens_of_a_vit():
    with pytest.raises(ValueError, match="1 prefix tokens: pass prefix of shape \\(2, 1, 16\\)"):
        tokens_from_map(torch.randn(2, 16, 4, 4), small_transformer("vit"))


def test_split_stages_of_our_models_is_model_stages():
    model = built("mini_wrn")
    assert split_stages(model) == list(model.stages)


def test_split_stages_rejects_unknown_family():
    with pytest.raises(TypeError, match="Linear"):
        split_stages(nn.Linear(3, 3))


@torch.no_grad()
def test_timm_name_builds_a_timm_model():
    model = create_model("resnet18", num_classes=10, in_chans=1).eval()
    x = images(in_chans=1, size=64)
    assert type(model).__module__.startswith("timm.")
    assert model(x).shape == (2, 10)
    assert model.conv1.stride == (2, 2)  # timm's ImageNet stem, untouched


def test_unknown_name_lists_cifar_models_and_mentions_timm():
    with pytest.raises(ValueError, match="timm") as info:
        create_model("cifar_resnet19")
    assert all(name in str(info.value) for name in CIFAR_MODELS)


def test_timm_weights_are_not_requested_by_default(monkeypatch):
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: calls.append(kwargs))
    create_model("resnet50", num_classes=10)
    assert calls == [{"pretrained": False, "in_chans": 3, "num_classes": 10}]


def test_pretrained_cifar_model_is_refused():
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("cifar_resnet18", pretrained=True)


@pytest.mark.parametrize("kwargs", [{"num_classes": -1}, {"num_classes": 2.0}, {"in_chans": 0}])
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        create_model("cifar_resnet18", **kwargs)


def test_non_string_name_raises():
    with pytest.raises(TypeError, match="str"):
        create_model(nn.Linear)


def test_cifar_resnet_rejects_stem_options():
    with pytest.raises(TypeError, match="stem_type"):
        create_model("cifar_resnet18", stem_type="deep")


@pytest.mark.parametrize("name", SMALL)
@torch.no_grad()
def test_zero_classes_returns_pooled_features(name):
    model = create_model(name, num_classes=0).eval()
    assert model(images()).shape == (2, 512)


def test_wrn_dropout_is_off_by_default_and_set_in_every_block():
    def dropouts(model):
        return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]

    assert dropouts(mini_wrn()) == []
    assert dropouts(mini_wrn(dropout=0.3)) == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("name", NUMERIC)
def test_gradients_reach_every_parameter(name):
    model = NUMERIC[name]()
    model(images()).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0  # the stem conv (first parameter in every model here) learns


@pytest.mark.parametrize("name", NUMERIC)
@torch.no_grad()
def test_channels_last_matches_contiguous(name):
    model, x = built(name), images()
    model_cl, x_cl = copy.deepcopy(model).to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    assert model_cl.forward_features(x_cl).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(x_cl), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NUMERIC)
@torch.no_grad()
def test_bf16_autocast_forward(name):
    model, x = built(name), images()
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=0.1 * expected.abs().max().item(), rtol=0.1)
