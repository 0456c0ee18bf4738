"""RandomChoice: the host-side pick between mixers, its probabilities, and how children are built."""

from __future__ import annotations

import pytest
import torch

import openmix
from openmix.mixer import Mixer
from openmix.model_mixer import ModelMixer
from openmix.mixers import CutMix, MixUp, RandomChoice

NUM_CLASSES = 5


def choice(**kwargs) -> RandomChoice:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build("random_choice", **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


def picks(mixer: RandomChoice, calls: int, **call_kwargs) -> list[str]:
    """Name of the mixer that handled each of ``calls`` calls (mixup has no mask, cutmix has one)."""
    x, y = torch.rand(2, 1, 4, 4), labels(2)
    return ["cutmix" if mixer(x, y, **call_kwargs).mask is not None else "mixup" for _ in range(calls)]


def test_defaults_are_timms_mixup_cutmix_switch():
    mixer = choice()
    assert [type(m) for m in mixer.mixers] == [MixUp, CutMix]
    assert [m.alpha for m in mixer.mixers] == [0.8, 1.0]
    assert mixer.p == (0.5, 0.5)


def test_mixers_are_picked_at_their_rates():
    names = picks(choice(mixers=["mixup", "cutmix"], p=[0.25, 0.75], seed=0), 800)
    assert names.count("cutmix") / 800 == pytest.approx(0.75, abs=0.05)


def test_uniform_by_default():
    names = picks(choice(seed=1), 800)
    assert names.count("mixup") / 800 == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("p, only", [([1.0, 0.0], "mixup"), ([0.0, 1.0], "cutmix")])
def test_probability_one_always_picks_that_mixer(p, only):
    assert set(picks(choice(p=p, seed=2), 100)) == {only}


def test_pick_follows_a_cpu_generator_argument():
    mixer = choice(seed=3)
    first = picks(mixer, 40, generator=torch.Generator().manual_seed(4))
    again = picks(mixer, 40, generator=torch.Generator().manual_seed(4))
    assert first == again and len(set(first)) == 2


def test_pick_uses_torchs_global_cpu_rng_without_seed():
    mixer = choice()
    torch.manual_seed(5)
    first = picks(mixer, 40)
    torch.manual_seed(5)
    assert picks(mixer, 40) == first


@pytest.mark.parametrize(
    "p, match",
    [([1.0], "one probability per mixer"), ([0.5, 0.3, 0.2], "one probability per mixer"),
     ([1.5, -0.5], "non-negative"), ([0.5, 0.4], "sum to 1"), ([float("nan"), 1.0], "non-negative")],
)
def test_invalid_p(p, match):
    with pytest.raises(ValueError, match=match):
        choice(p=p)


def test_unknown_child_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown mixer 'mixxup'.*cutmix.*mixup"):
        choice(mixers=["mixup", "mixxup"])


def test_common_arguments_reach_children_unless_a_dict_sets_them():
    mixer = choice(
        mixers=["mixup", {"name": "cutmix", "alpha": 0.3, "prob": 0.25, "pairing": "roll"}],
        mode="elem", prob=0.7, pairing="flip", label_smoothing=0.1, seed=9,
    )
    mixup, cutmix = mixer.mixers
    inherited = (mixup.num_classes, mixup.mode, mixup.prob, mixup.pairing, mixup.label_smoothing)
    assert inherited == (5, "elem", 0.7, "flip", 0.1)
    assert (cutmix.alpha, cutmix.mode, cutmix.prob, cutmix.pairing) == (0.3, "elem", 0.25, "roll")
    assert (mixup.seed, cutmix.seed) == (10, 11)  # apart from the pick's stream and from each other


def test_children_from_a_hydra_config():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"mixers": [{"name": "mixup", "alpha": 0.2}, "cutmix"], "p": [0.3, 0.7]})
    mixer = choice(mixers=cfg.mixers, p=cfg.p)
    assert [type(m) for m in mixer.mixers] == [MixUp, CutMix] and mixer.mixers[0].alpha == 0.2
    assert mixer.p == (0.3, 0.7)


def test_instances_are_used_as_they_are():
    cutmix = CutMix(alpha=2.0, num_classes=NUM_CLASSES, prob=0.5)
    mixer = choice(mixers=[cutmix], mode="elem", prob=1.0)
    assert mixer.mixers[0] is cutmix and cutmix.mode == "batch" and cutmix.prob == 0.5


def test_prob_zero_is_identity_in_both_modes_through_the_children():
    x = torch.rand(6, 3, 8, 8)
    for mode in ("batch", "elem"):
        out = choice(mode=mode, prob=0.0, seed=10)(x, labels(6))
        assert torch.equal(out.x, x)


def test_sample_and_apply_params_give_the_call_result():
    mixer = choice(seed=11)
    x, y = torch.rand(4, 3, 8, 8), torch.eye(NUM_CLASSES)[labels(4)]
    params = mixer.sample_params(x, generator=torch.Generator().manual_seed(12))
    assert params["choice"].device.type == "cpu"
    out = mixer.apply_params(x, y, params)
    again = mixer.apply_params(x, y, params)
    torch.testing.assert_close(out.x, again.x)
    mixed, lam, _ = mixer.mix(x, params)
    torch.testing.assert_close(mixed, out.x)
    torch.testing.assert_close(lam, out.lam)


def test_spatial_dims_are_those_all_children_accept():
    mixer = choice(mixers=["mixup", "saliencymix"])
    with pytest.raises(ValueError, match="4-D"):
        mixer(torch.rand(4, 3, 16), labels(4))
    assert choice(mixers=["mixup"]).spatial_dims is None


def test_children_must_share_an_input_shape():
    class OneD(Mixer):
        spatial_dims = (1,)

    with pytest.raises(ValueError, match="no common number of spatial axes"):
        choice(mixers=["saliencymix", OneD(num_classes=NUM_CLASSES)])


def test_has_no_alpha():
    with pytest.raises(TypeError, match="alpha"):
        choice(alpha=1.0)


def test_bad_children():
    with pytest.raises(ValueError, match="at least one"):
        choice(mixers=[])
    with pytest.raises(TypeError, match="registered name"):
        choice(mixers=[3])
    with pytest.raises(ValueError, match="'name'"):
        choice(mixers=[{"alpha": 1.0}])


def test_only_input_mixers():
    class Saliency(ModelMixer):
        kind = "saliency"

    with pytest.raises(ValueError, match="input mixers only"):
        choice(mixers=[Saliency(num_classes=NUM_CLASSES)])


def test_repr_shows_p_and_children_but_no_alpha():
    text = repr(choice(p=[0.2, 0.8]))
    assert "p=(0.2, 0.8)" in text and "MixUp(alpha=0.8" in text and "CutMix(alpha=1.0" in text
    assert "alpha" not in text.splitlines()[1]  # the line of RandomChoice's own arguments
