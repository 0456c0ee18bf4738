"""Properties every registered input mixer keeps over random shapes, dtypes and settings (hypothesis).

The registry is iterated, so a newly registered mixer is checked too; one whose
``spatial_dims`` excludes 2 is skipped here (these checks use 2-D images).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import openmix
from helpers import INPUT_MIXERS

NUM_CLASSES = 7
TRANSFORMS_PARTNER = {"resizemix"}  # pastes a resized partner: only the kept part is checked
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TOLERANCE = {  # (rtol, atol) of the blend check; low precision rounds the weight and the result
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-7, 1e-7),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

case = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 9),
        "channels": st.integers(1, 4),
        "height": st.integers(1, 20),
        "width": st.integers(1, 20),
        "dtype": st.sampled_from(DTYPES),
        "mode": st.sampled_from(["batch", "elem"]),
        "pairing": st.sampled_from(["random", "flip", "roll"]),
        "alpha": st.sampled_from([0.0, 1e-3, 0.2, 1.0, 4.0]),
        "prob": st.sampled_from([0.0, 0.5, 1.0]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def accepts_2d(name: str) -> bool:
    dims = openmix.registry.get(name).spatial_dims
    return dims is None or 2 in dims


def build(name: str, c: dict) -> openmix.Mixer:
    kwargs = {"num_classes": NUM_CLASSES, "mode": c["mode"], "pairing": c["pairing"], "prob": c["prob"], "seed": c["seed"]}
    if "alpha" in openmix.build(name, num_classes=NUM_CLASSES)._repr_fields():
        kwargs["alpha"] = c["alpha"]
    return openmix.build(name, **kwargs)


@pytest.mark.parametrize("name", INPUT_MIXERS)
@settings(max_examples=25, deadline=None)
@given(c=case)
def test_mixer_properties(name, c):
    if not accepts_2d(name):
        pytest.skip(f"{name} does not take 2-D inputs")
    gen = torch.Generator().manual_seed(c["seed"])
    shape = (c["batch"], c["channels"], c["height"], c["width"])
    x = torch.rand(shape, generator=gen).to(c["dtype"])
    y = torch.randint(0, NUM_CLASSES, (c["batch"],), generator=gen)
    out = build(name, c)(x, y)

    # shapes, dtypes, finiteness
    assert out.x.shape == x.shape and out.x.dtype == x.dtype
    assert bool(torch.isfinite(out.x).all())
    assert out.y.shape == (c["batch"], NUM_CLASSES) and bool(torch.isfinite(out.y).all())
    torch.testing.assert_close(out.y.sum(1), torch.ones(c["batch"], dtype=out.y.dtype))
    assert out.lam.shape == (c["batch"],) and out.lam.dtype == torch.float32
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    assert out.index.shape == (c["batch"],) and sorted(out.index.tolist()) == list(range(c["batch"]))

    # lam is the mask's mean
    if out.mask is not None:
        assert out.mask.shape == (c["batch"], 1, c["height"], c["width"])
        torch.testing.assert_close(out.lam, out.mask.float().flatten(1).mean(1))

    # the output is the blend of x and its partner under the mask (or lam)
    x64 = x.double()
    weight = (out.mask if out.mask is not None else out.lam.view(-1, 1, 1, 1)).double()
    rtol, atol = TOLERANCE[c["dtype"]]
    if name in TRANSFORMS_PARTNER:
        kept = (weight == 1).expand_as(x64)
        torch.testing.assert_close(out.x.double()[kept], x64[kept], rtol=rtol, atol=atol)
    else:
        expected = weight * x64 + (1 - weight) * x64[out.index]
        torch.testing.assert_close(out.x.double(), expected, rtol=rtol, atol=atol)
