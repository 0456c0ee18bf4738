"""TokenMix: the official token count, exact masks of blocks (or random tokens) on the patch grid, area labels."""

from __future__ import annotations

import pytest
import torch

import openmix
from helpers import TINY_VIT_CLI, images
from openmix.mixers.tokenmix import token_count, token_masks

NUM_CLASSES = 10


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def right_neighbours(masks: torch.Tensor) -> float:
    """The share of masked tokens whose right neighbour is masked too."""
    pairs = masks[..., :, 1:] & masks[..., :, :-1]
    return float(pairs.sum() / masks[..., :, :-1].sum())


# ------------------------------------------------------------------ how many tokens
def test_the_official_count_is_112_of_196_tokens():
    mixer = openmix.build("tokenmix", num_classes=NUM_CLASSES, mode="elem", seed=0)  # 16-pixel patches
    out = mixer(torch.rand(3, 3, 224, 224), torch.arange(3))
    torch.testing.assert_close(out.lam, torch.full((3,), 1 - 112 / 196))


def test_token_count_adds_the_minimum_and_stops_at_the_grid():
    assert token_count(torch.tensor([0.5, 0.95, 0.0, 0.01]), 196, 14).tolist() == [112, 196, 0, 15]


def test_the_minimum_scales_with_the_grid():
    """None: the official 14 of 196, i.e. round(N / 14): 4 of 49 tokens at 28 px with 4-pixel patches."""
    out = openmix.build("tokenmix", num_classes=NUM_CLASSES, patch_size=4, seed=0)(torch.rand(2, 1, 28, 28),
                                                                                   torch.arange(2))
    torch.testing.assert_close(out.lam, torch.full((2,), 1 - (24 + 4) / 49))


def test_mask_ratio_none_takes_one_minus_lam():
    x = torch.rand(8, 1, 28, 28)
    mixer = openmix.build("tokenmix", num_classes=NUM_CLASSES, patch_size=4, mode="elem", mask_ratio=None,
                          minimum_tokens=0, seed=1)
    params = mixer.sample_params(x)
    expected = torch.clamp((1 - params["lam"]) * 49, max=49).floor()
    assert torch.equal(params["tokens"].flatten(1).sum(1).float(), expected)


# ------------------------------------------------------------------ which tokens
@pytest.mark.parametrize("mask_type", ["block", "random"])
def test_every_mask_has_exactly_its_count(mask_type):
    count = torch.randint(0, 197, (500,), generator=generator())
    masks = token_masks(count, (14, 14), mask_type=mask_type, generator=generator(1))
    assert torch.equal(masks.flatten(1).sum(1), count)


def test_block_masks_are_blocks_not_scattered_tokens():
    count = torch.full((500,), 112)
    block = token_masks(count, (14, 14), mask_type="block", generator=generator())
    scattered = token_masks(count, (14, 14), mask_type="random", generator=generator())
    assert right_neighbours(block) > 0.8 and right_neighbours(scattered) < 0.65  # 0.87 and 0.57 here


def test_the_mask_is_constant_on_each_patch_and_the_lam_is_its_area():
    out = openmix.build("tokenmix", num_classes=NUM_CLASSES, patch_size=4, mode="elem", seed=2)(images(4),
                                                                                              torch.arange(4))
    patches = out.mask[..., ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.equal(out.mask, patches)
    torch.testing.assert_close(out.lam, out.mask.flatten(1).mean(1))


def test_partial_patches_cover_the_rest_of_the_image():
    """30 px with 16-pixel patches: a 2x2 grid whose last row and column are 14 pixels wide."""
    mixer = openmix.build("tokenmix", num_classes=NUM_CLASSES, mode="elem", mask_type="random", minimum_tokens=0,
                          seed=0)
    out = mixer(torch.rand(64, 1, 30, 30), torch.arange(64) % NUM_CLASSES)
    corners = out.mask[..., [0, 16], :][..., [0, 16]]  # one pixel of each token
    expanded = corners.repeat_interleave(torch.tensor([16, 14]), 2).repeat_interleave(torch.tensor([16, 14]), 3)
    assert torch.equal(out.mask, expanded)
    sizes = torch.tensor([[16.0 * 16, 16 * 14], [14 * 16, 14 * 14]]) / 900
    torch.testing.assert_close(out.lam, (corners[:, 0] * sizes).sum((1, 2)))


def test_batch_mode_draws_one_mask_for_the_batch():
    out = openmix.build("tokenmix", num_classes=NUM_CLASSES, patch_size=4, seed=3)(images(5), torch.arange(5))
    assert torch.equal(out.mask, out.mask[:1].expand_as(out.mask))


def test_the_same_seed_draws_the_same_blocks_on_the_device_stream():
    x = torch.rand(6, 1, 28, 28)
    a = openmix.build("tokenmix", num_classes=NUM_CLASSES, patch_size=4, mode="elem", seed=4)(x, torch.arange(6))
    b = openmix.build("tokenmix", num_classes=NUM_CLASSES, patch_size=4, mode="elem", seed=4)(x, torch.arange(6))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask[0], a.mask[1])


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, message", [
    ({"patch_size": 0}, "patch_size"), ({"patch_size": (4, 4, 4)}, "patch_size"), ({"mask_type": "grid"}, "mask_type"),
    ({"mask_ratio": 1.5}, "mask_ratio"), ({"minimum_tokens": -1}, "minimum_tokens"), ({"min_aspect": 0.0}, "min_aspect"),
    ({"min_aspect": 2.0}, "min_aspect"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        openmix.build("tokenmix", num_classes=NUM_CLASSES, **kwargs)


def test_video_and_1d_inputs_are_refused():
    with pytest.raises(ValueError, match="4-D"):
        openmix.build("tokenmix", num_classes=NUM_CLASSES)(torch.rand(2, 3, 16), torch.arange(2))


# ------------------------------------------------------------------ the command line
def test_openmix_train_runs_it_on_a_small_vit(tmp_path):
    from test_cli import run

    result = run(tmp_path, *TINY_VIT_CLI, "mixer=tokenmix", "mixer.patch_size=4", "epochs=1")
    assert result["mixer"] == "tokenmix" and result["model"] == "vit_tiny_patch16_224"
