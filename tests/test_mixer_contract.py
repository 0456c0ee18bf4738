"""The behaviour every registered input mixer shares, checked in one shape for all.

A mixer added to the registry is picked up here automatically. Every mode holds the contract; in
``half`` mode the output has ``ceil(B/2)`` rows (``helpers.rows``), the first samples of the batch, and
``out.index`` counts rows of the whole batch, so the checks compare with ``x[:rows]``.
"""

import pytest
import torch

import openmix
from helpers import INPUT_MIXERS, MODES, assert_target_rows, images, rows

NUM_CLASSES = 5
# Mixers whose pasted content is not the partner pixel-for-pixel (it is resized first).
TRANSFORMS_PARTNER = {"resizemix"}


def build(name: str, **kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build(name, **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_output_shapes_and_targets(name, mode):
    x, n = images(7), rows(7, mode)
    mixer = build(name, mode=mode, seed=1)
    out = mixer(x, labels(7))
    assert out.x.shape == (n, *x.shape[1:])
    assert out.y.shape == (n, NUM_CLASSES)
    assert_target_rows(mixer, out)
    assert out.lam.shape == (n,) and out.lam.dtype == torch.float32
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    partners = list(range(7 - n, 7)) if mode == "half" else list(range(7))  # half: one each of the last rows
    assert sorted(out.index.tolist()) == partners


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_targets_follow_lam(name, mode):
    x, y = images(6), labels(6)
    out = build(name, mode=mode, seed=2)(x, y)
    onehot = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    expected = out.lam[:, None] * onehot[: rows(6, mode)] + (1 - out.lam[:, None]) * onehot[out.index]
    torch.testing.assert_close(out.y, expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_lam_is_mask_area(name, mode):
    out = build(name, mode=mode, seed=3)(images(8), labels(8))
    if out.mask is None:
        pytest.skip("mixer has no mask")
    torch.testing.assert_close(out.lam, out.mask.float().flatten(1).mean(1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_output_is_blend_of_sample_and_partner(name, mode):
    x = images(6)
    out = build(name, mode=mode, seed=4)(x, labels(6))
    own = x[: rows(6, mode)]
    weight = out.mask if out.mask is not None else out.lam.view(-1, 1, 1, 1)
    if name in TRANSFORMS_PARTNER:  # only the kept part can be checked
        kept = (weight == 1).expand_as(own)
        torch.testing.assert_close(out.x[kept], own[kept])
    else:
        torch.testing.assert_close(out.x, weight * own + (1 - weight) * x[out.index])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_prob_zero_is_identity(name, mode):
    x, y, n = images(6), labels(6), rows(6, mode)
    out = build(name, mode=mode, prob=0.0)(x, y)
    torch.testing.assert_close(out.x, x[:n])
    torch.testing.assert_close(out.y, torch.nn.functional.one_hot(y[:n], NUM_CLASSES).float())
    torch.testing.assert_close(out.lam, torch.ones(n))


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_elem_prob_mixes_some_samples_only(name):
    x = images(64)
    out = build(name, mode="elem", prob=0.5, seed=5)(x, labels(64))
    untouched = (out.x == x).flatten(1).all(1) & (out.index != torch.arange(64))  # not paired with itself
    assert 5 < int(untouched.sum()) < 59
    assert bool((out.lam[untouched] == 1).all())


@pytest.mark.parametrize("pairing", ["flip", "random"])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_pair_mode_mixes_each_pair_both_ways_with_one_draw(name, pairing):
    """Pairs are partners of each other and share lam, mask and the prob coin (some pairs stay whole)."""
    x = images(64)
    out = build(name, mode="pair", pairing=pairing, prob=0.5, seed=6)(x, labels(64))
    assert torch.equal(out.index[out.index], torch.arange(64)) and bool((out.index != torch.arange(64)).all())
    assert torch.equal(out.lam[out.index], out.lam)
    if out.mask is not None:
        assert torch.equal(out.mask[out.index], out.mask)
    untouched = (out.x == x).flatten(1).all(1)
    assert torch.equal(untouched[out.index], untouched) and 5 < int(untouched.sum()) < 59


@pytest.mark.parametrize("mode", ["pair", "half"])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_paired_modes_leave_the_middle_of_an_odd_batch_as_it_was(name, mode):
    """With timm's flip, pairs are (i, B-1-i): in an odd batch the middle sample is its own partner
    (ResizeMix pastes a shrunk copy of it into itself; its label stays whole all the same)."""
    x, y = images(7), labels(7)
    out = build(name, mode=mode, pairing="flip", seed=7)(x, y)
    assert out.index.tolist() == [6, 5, 4, 3, 2, 1, 0][: rows(7, mode)]
    if name not in TRANSFORMS_PARTNER:
        torch.testing.assert_close(out.x[3], x[3])
    torch.testing.assert_close(out.y[3], torch.nn.functional.one_hot(y[3], NUM_CLASSES).float())


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_half_mode_returns_the_first_half_mixed_with_the_second(name):
    x, y = images(8), labels(8)
    out = build(name, mode="half", pairing="flip", seed=8)(x, y)
    assert out.x.shape[0] == 4 and out.index.tolist() == [7, 6, 5, 4] and out.batch_size == 8
    assert not torch.equal(out.x, x[:4])


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_alpha_zero_is_identity(name):
    if "alpha" not in build(name)._repr_fields():
        pytest.skip("mixer has no alpha")
    x = images(6)
    out = build(name, alpha=0.0)(x, labels(6))
    torch.testing.assert_close(out.x, x)
    torch.testing.assert_close(out.lam, torch.ones(6))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_same_seed_same_output(name, mode):
    x, y = images(6), labels(6)
    first = build(name, mode=mode, seed=7)(x, y)
    again = build(name, mode=mode, seed=7)(x, y)
    other = build(name, mode=mode, seed=8)
    torch.testing.assert_close(first.x, again.x)
    torch.testing.assert_close(first.lam, again.lam)
    assert any(not torch.equal(first.x, other(x, y).x) for _ in range(3))


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_generator_argument_overrides_seed(name):
    x, y = images(6), labels(6)
    mixer = build(name, mode="elem", seed=123)
    a = mixer(x, y, generator=torch.Generator().manual_seed(9))
    b = mixer(x, y, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.x, b.x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_keeps_dtype(name, dtype):
    out = build(name, mode="elem", seed=0)(images(4, dtype=dtype), labels(4))
    assert out.x.dtype == dtype
    assert bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_keeps_channels_last(name, mode):
    x = images(4).to(memory_format=torch.channels_last)
    out = build(name, mode=mode, seed=0)(x, labels(4))
    assert out.x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_one_and_three_channels(name, channels):
    out = build(name, mode="elem", seed=0)(images(4, channels=channels), labels(4))
    assert out.x.shape == (4, channels, 16, 16)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_batch_of_one_and_odd_batches(name, mode, batch):
    mixer = build(name, mode=mode, seed=0)
    out = mixer(images(batch), labels(batch))
    assert out.x.shape[0] == rows(batch, mode)
    assert_target_rows(mixer, out)


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_flat_images_give_no_nan(name):
    out = build(name, mode="elem", seed=0)(torch.full((4, 3, 8, 8), 0.5), labels(4))
    assert bool(torch.isfinite(out.x).all()) and bool(torch.isfinite(out.lam).all())


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_soft_labels_chain(name):
    x = images(6)
    first = build("mixup", seed=0)(x, labels(6))
    mixer = build(name, mode="elem", seed=1)
    assert_target_rows(mixer, mixer(first.x, first.y))


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_label_smoothing(name):
    mixer = build(name, label_smoothing=0.1, prob=0.0)
    out = mixer(images(4), labels(4))
    assert float(out.y.min()) == pytest.approx(0.1 / NUM_CLASSES)
    assert_target_rows(mixer, out)


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_gradient_reaches_input(name):
    x = images(4).requires_grad_()
    build(name, mode="elem", seed=0)(x, labels(4)).x.square().sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("pairing", ["flip", "roll"])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_fixed_pairings(name, pairing):
    out = build(name, pairing=pairing, seed=0)(images(5), labels(5))
    expected = {"flip": [4, 3, 2, 1, 0], "roll": [4, 0, 1, 2, 3]}[pairing]
    assert out.index.tolist() == expected


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_repr_names_the_class_and_arguments(name):
    text = repr(build(name, seed=3))
    assert text.startswith(type(build(name)).__name__ + "(") and "seed=3" in text


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", INPUT_MIXERS)
class TestBadInput:
    def test_integer_images(self, name):
        with pytest.raises(TypeError, match="floating point"):
            build(name)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), labels(2))

    def test_wrong_ndim(self, name):
        with pytest.raises(ValueError, match="shape"):
            build(name)(torch.zeros(2), labels(2))

    def test_batch_mismatch(self, name):
        with pytest.raises(ValueError, match="batch size 4"):
            build(name)(images(4), labels(3))

    def test_labels_out_of_range(self, name):
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            build(name)(images(2), torch.tensor([0, 5]))

    def test_negative_labels(self, name):
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            build(name)(images(2), torch.tensor([-1, 0]))

    def test_int_labels_need_num_classes(self, name):
        with pytest.raises(ValueError, match="num_classes"):
            openmix.build(name)(images(2), labels(2))

    def test_soft_labels_wrong_width(self, name):
        with pytest.raises(ValueError, match="num_classes=5"):
            build(name)(images(2), torch.full((2, 4), 0.25))

    def test_float_class_ids(self, name):
        with pytest.raises(TypeError, match="integer"):
            build(name)(images(2), torch.tensor([0.0, 1.0]))

    def test_empty_batch(self, name):
        with pytest.raises(ValueError, match="empty batch"):
            build(name)(images(0), labels(0))

    def test_negative_alpha(self, name):
        if "alpha" not in build(name)._repr_fields():
            pytest.skip("mixer has no alpha")
        with pytest.raises(ValueError, match="alpha"):
            build(name, alpha=-0.1)

    @pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
    def test_alpha_not_finite(self, name, alpha):
        if "alpha" not in build(name)._repr_fields():
            pytest.skip("mixer has no alpha")
        with pytest.raises(ValueError, match="alpha"):
            build(name, alpha=alpha)

    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_label_smoothing_not_finite(self, name, value):
        with pytest.raises(ValueError, match="label_smoothing"):
            build(name, label_smoothing=value)

    @pytest.mark.parametrize("prob", [-0.1, 1.5, float("nan")])
    def test_prob_outside_unit_interval(self, name, prob):
        with pytest.raises(ValueError, match="prob"):
            build(name, prob=prob)

    def test_unknown_mode(self, name):
        with pytest.raises(ValueError, match="mode"):
            build(name, mode="pairs")

    @pytest.mark.parametrize("mode", ["pair", "half"])
    def test_paired_modes_need_pairs(self, name, mode):
        with pytest.raises(ValueError, match="pairing must be 'flip'.*or 'random'"):
            build(name, mode=mode, pairing="roll")

    def test_unknown_pairing(self, name):
        with pytest.raises(ValueError, match="pairing"):
            build(name, pairing="shuffle")

    def test_inputs_not_a_tensor(self, name):
        with pytest.raises(TypeError, match="torch.Tensor"):
            build(name)([[1.0]], labels(1))


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_batch_host_draws_mix_as_the_general_path(name):
    """Batch mode mixes from host numbers (scalar lam, one host box/grid/blob); the same params given
    per sample (as on another device, or built by hand) take the general path and give the same result."""
    x, y = images(6), torch.nn.functional.one_hot(labels(6), NUM_CLASSES).float()
    mixer = build(name, mode="batch", seed=3)
    for _ in range(4):
        params = mixer.sample_params(x)
        if params.get("identity", False):
            continue
        general = {
            key: value.expand(6, -1).contiguous() if torch.is_tensor(value) and value.ndim == 2 and value.shape[0] == 1
            else value
            for key, value in params.items()
            if key != "batch_lam"
        }
        fast, slow = mixer.apply_params(x, y, params), mixer.apply_params(x, y, general)
        torch.testing.assert_close(fast.x, slow.x)
        torch.testing.assert_close(fast.lam, slow.lam)
        torch.testing.assert_close(fast.y, slow.y)
        torch.testing.assert_close(fast.mask, slow.mask)


# ------------------------------------------------------------------ the same draw, any target
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_the_images_are_their_own_dense_target(name, mode):
    """Mixing the batch as a dense target gives the mixed batch: every layout (ResizeMix's resized
    partner too) and every mask is followed."""
    x = images(6)
    out = build(name, mode=mode, seed=4)(x)
    assert out.y is None
    torch.testing.assert_close(out.dense(x), out.x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_soft_class_maps_still_sum_to_one(name, mode):
    out = build(name, mode=mode, seed=5)(images(6))
    maps = torch.softmax(torch.randn(6, NUM_CLASSES, 16, 16), 1)
    torch.testing.assert_close(out.dense(maps).sum(1), torch.ones(rows(6, mode), 16, 16))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_a_class_map_takes_the_owner_of_each_pixel_or_is_refused(name, mode):
    out = build(name, mode=mode, pairing="flip", seed=6)(images(6))
    seg = labels(6).view(6, 1, 1).expand(6, 16, 16)  # sample i is class i everywhere
    if not out.binary:
        with pytest.raises(ValueError, match="no single owner"):
            out.class_map(seg)
        return
    owner = out.mask[:, 0] >= 0.5
    torch.testing.assert_close(out.class_map(seg), torch.where(owner, seg[: rows(6, mode)], seg[out.index]))
    ignored = seg.clone()
    ignored[:, :4] = 255
    assert bool((out.class_map(ignored, ignore_index=255) == 255).sum() > 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_vectors_and_sparse_labels_follow_the_shares(name, mode):
    mixer = build(name, mode=mode, seed=7)
    out, n = mixer(images(6)), rows(6, mode)
    values = torch.randn(6, 3)
    expected = out.lam[:, None] * values[:n] + (1 - out.lam[:, None]) * values[out.index]
    torch.testing.assert_close(out.vector(values), expected)
    ids, weights = out.sparse(labels(6))
    assert torch.equal(ids[:, 0], labels(6)[:n]) and torch.equal(ids[:, 1], labels(6)[out.index])
    if mixer.normalized_targets:
        torch.testing.assert_close(weights.sum(1), torch.ones(n))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_a_whole_image_box_is_as_visible_as_its_image(name, mode):
    """A box over the whole image: the sample's stays as visible as its share of the pixels, the
    partner's as visible as the rest (ResizeMix's partner, shrunk into the patch, wholly)."""
    out, n = build(name, mode=mode, seed=8)(images(6)), rows(6, mode)
    boxes, valid, visible = out.boxes(torch.tensor([[[0.0, 0.0, 16.0, 16.0]]]).expand(6, 1, 4))
    assert boxes.shape == (n, 2, 4) and valid.shape == visible.shape == (n, 2)
    if out.mask is None:
        assert bool(valid.all()) and bool((visible == 1).all())
    elif out.binary:
        torch.testing.assert_close(visible[:, 0], out.lam)
        if name not in TRANSFORMS_PARTNER:
            torch.testing.assert_close(visible[:, 1], 1 - out.lam)
    assert bool(((boxes[..., 2:] <= 16) & (boxes[..., :2] >= 0)).all())


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_video_is_cut_in_space_only(name):
    video = torch.rand(4, 3, 5, 16, 16)
    out = build(name, mode="elem", seed=9, spatial_axes=2)(video)
    assert out.x.shape == video.shape
    torch.testing.assert_close(out.dense(video), out.x)
    if out.mask is not None:
        assert out.mask.shape == (4, 1, 1, 16, 16)  # one mask for every frame


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_targets_of_the_wrong_shape_are_clear_errors(name):
    out = build(name, seed=10)(images(4))
    with pytest.raises(ValueError, match=r"\(B, K, \*spatial\) = \(4, 'K', 16, 16\).*got \(4, 2, 8, 8\)"):
        out.dense(torch.rand(4, 2, 8, 8))
    with pytest.raises(ValueError, match=r"boxes must be \(B, N, 4\) with B = 4, got \(3, 1, 4\)"):
        out.boxes(torch.zeros(3, 1, 4))
    with pytest.raises(TypeError, match="integer class ids"):
        out.class_map(torch.rand(4, 16, 16))
