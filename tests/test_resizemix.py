"""ResizeMix: the pasted patch is the resized partner, fully inside, and lam is its complement."""

import pytest
import torch
import torch.nn.functional as F

import openmix
from helpers import images

LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def draw(mode="elem", shape=(6, 3, 16, 16), seed=0, **kwargs):
    """Mix a batch of ``shape``; return the input, the output and the drawn parameters."""
    mixer = openmix.build("resizemix", num_classes=5, mode=mode, **kwargs)
    x = torch.rand(shape)
    params = mixer.sample_params(x, torch.Generator().manual_seed(seed))
    return x, mixer.apply_params(x, torch.eye(5)[torch.arange(shape[0]) % 5], params), params


def expected_patch(x, index, lo, hi, interpolation):
    """The partner resized with ``F.interpolate`` to the box ``[lo, hi)``."""
    size = tuple(int(b - a) for a, b in zip(lo, hi))
    if interpolation == "nearest":
        return F.interpolate(x[index], size=size, mode="nearest")
    return F.interpolate(x[index], size=size, mode=LINEAR[len(size)], align_corners=False)


def box(lo, hi):
    return (slice(None), slice(None)) + tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape", [(6, 3, 16, 16), (6, 2, 20, 12), (4, 2, 40), (4, 1, 6, 8, 10)])
def test_batch_patch_is_partner_resized_with_interpolate(shape, interpolation):
    x, out, params = draw("batch", shape=shape, interpolation=interpolation)
    lo, hi = params["lo"][0], params["hi"][0]
    assert bool((hi > lo).all())
    patch = expected_patch(x, out.index, lo, hi, interpolation)
    torch.testing.assert_close(out.x[box(lo, hi)], patch, rtol=0, atol=0 if interpolation == "nearest" else 1e-5)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_elem_patches_are_each_partner_resized(interpolation):
    x, out, params = draw("elem", shape=(8, 3, 24, 24), seed=1, interpolation=interpolation)
    sides = set()
    for i in range(8):
        lo, hi = params["lo"][i], params["hi"][i]
        sides.add(tuple((hi - lo).tolist()))
        patch = expected_patch(x, out.index[i : i + 1], lo, hi, interpolation)
        torch.testing.assert_close(out.x[i : i + 1][box(lo, hi)], patch, rtol=0, atol=1e-5)
    assert len(sides) > 1  # the samples got patches of different sizes


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_outside_the_patch_is_the_original(mode):
    x, out, params = draw(mode)
    inside = torch.zeros(6, 1, 16, 16, dtype=torch.bool)
    for i in range(6):
        row = min(i, params["lo"].shape[0] - 1)
        inside[i][box(params["lo"][row], params["hi"][row])[1:]] = True
    torch.testing.assert_close(out.mask, (~inside).float().expand(6, 1, 16, 16))
    outside = (~inside).expand_as(x)
    assert torch.equal(out.x[outside], x[outside])


def test_lam_is_one_minus_patch_area():
    _, out, params = draw("elem", shape=(64, 1, 16, 16))
    area = (params["hi"] - params["lo"]).prod(1).float()
    torch.testing.assert_close(out.lam, 1 - area / 256)


def test_patch_is_always_inside_and_its_side_in_scope():
    _, _, params = draw("elem", shape=(512, 1, 20, 20), seed=2)
    side = params["hi"] - params["lo"]
    assert bool((params["lo"] >= 0).all()) and bool((params["hi"] <= 20).all())
    assert int(side.min()) == round(0.1 * 20) and int(side.max()) == round(0.8 * 20)
    assert bool((side[:, 0] == side[:, 1]).all())  # tau scales both sides of a square image alike


def test_patch_sides_scale_each_axis():
    _, _, params = draw("batch", shape=(2, 1, 10, 30), scope=(0.5, 0.5))
    assert (params["hi"] - params["lo"]).tolist() == [[5, 15]]


def test_use_alpha_draws_tau_from_beta():
    _, _, params = draw("elem", shape=(64, 1, 32, 32), use_alpha=True, alpha=400.0)
    side = params["hi"] - params["lo"]  # tau ~ Beta(400, 400) is 0.5 +- 0.018; U(0.1, 0.8) would spread
    assert int(side.min()) >= 13 and int(side.max()) <= 19


def test_use_alpha_with_alpha_zero_is_identity():
    x, out, _ = draw("elem", use_alpha=True, alpha=0.0)
    assert torch.equal(out.x, x) and bool((out.lam == 1).all())


def test_skipped_samples_get_no_patch():
    out = openmix.build("resizemix", num_classes=5, mode="elem", prob=0.5, seed=0)(images(32), torch.arange(32) % 5)
    skipped = out.lam == 1
    assert 0 < int(skipped.sum()) < 32 and bool((out.mask[skipped] == 1).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bilinear_keeps_dtype_and_channels_last(dtype):
    x = images(4, dtype=dtype).to(memory_format=torch.channels_last)
    out = openmix.build("resizemix", num_classes=5, mode="elem", interpolation="bilinear", seed=0)(x, torch.arange(4))
    assert out.x.dtype == dtype and out.x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bilinear_low_precision_is_the_float32_result_rounded(mode, dtype):
    """Resampling runs in float32: a half-precision batch gets the float32 result of the same pixels, cast."""
    mixer = openmix.build("resizemix", num_classes=5, mode=mode, interpolation="bilinear", scope=(0.3, 0.8))
    x = (torch.rand(8, 3, 24, 24) * 4 - 2).to(dtype)
    y = torch.eye(5)[torch.arange(8) % 5]
    params = mixer.sample_params(x, torch.Generator().manual_seed(3))
    low = mixer.apply_params(x, y, params).x
    reference = mixer.apply_params(x.float(), y, params).x
    assert low.dtype == dtype and bool(torch.isfinite(low).all())
    torch.testing.assert_close(low, reference.to(dtype), rtol=0, atol=0)


def test_repr_leaves_out_unused_alpha():
    assert "alpha" not in repr(openmix.build("resizemix"))
    text = repr(openmix.build("resizemix", use_alpha=True, alpha=0.5, interpolation="bilinear"))
    assert "alpha=0.5" in text and "use_alpha=True" in text and "interpolation='bilinear'" in text


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scope": (0.8, 0.1)}, ValueError, "scope"),
        ({"scope": (0.1, 1.5)}, ValueError, "scope"),
        ({"scope": (0.5,)}, ValueError, "scope"),
        ({"scope": 0.5}, TypeError, "scope"),
        ({"interpolation": "bicubic"}, ValueError, "interpolation"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        openmix.build("resizemix", **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_nearest_patch_is_interpolate_bit_for_bit(dtype, channels_last):
    """Batch mode resizes by picking rows and columns with F.interpolate's own source indices."""
    mixer = openmix.build("resizemix", num_classes=5, mode="batch", scope=(0.05, 1.0))
    for size in (7, 32, 100, 224):
        x = torch.rand(3, 2, size, size + 5).to(dtype)
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        for seed in range(6):
            params = mixer.sample_params(x, torch.Generator().manual_seed(seed))
            lo, hi = params["lo"][0], params["hi"][0]
            out = mixer.apply_params(x, torch.eye(5)[:3], params)
            assert out.x.stride() == x.stride()
            if bool((hi > lo).all()):
                patch = expected_patch(x, out.index, lo, hi, "nearest")
                assert torch.equal(out.x[box(lo, hi)], patch)
