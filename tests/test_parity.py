"""Parity with the peers: same lam, same box, same pairing -> the same images and targets.

timm's ``Mixup`` draws with numpy (``np.random.rand`` for the ``prob`` coins,
``np.random.beta`` for lam, ``np.random.randint`` for box centres and minmax sides);
torchvision's ``v2.MixUp`` / ``v2.CutMix`` draw lam from their ``_dist`` and the box
centre with ``torch.randint``. The tests force those draws, build the openmix params
from the same values by hand and call ``mixer.apply_params``. timm's ``pair`` mode (``Mixup``)
and ``half`` mode (``FastCollateMixup``, which mixes uint8 images in the collate) are checked the
same way, with openmix's own pairing of the draws (``pair_partners`` / ``mirror_params``,
``half_partners``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch
from torchvision.transforms import v2

import openmix
from openmix.mixer import mirror_params
from openmix.sampling import half_partners, pair_partners, partner_index, random_boxes
from openmix.targets import soft_targets

NUM_CLASSES = 10


def images(batch: int, height: int = 16, width: int = 16) -> torch.Tensor:
    """Samples that differ everywhere, so a wrong partner or box shows."""
    return torch.rand(batch, 3, height, width) + torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1)


def labels(batch: int) -> torch.Tensor:
    return (torch.arange(batch) * 3) % NUM_CLASSES


class ForcedNumpy:
    """Replaces ``np.random.rand/beta/randint`` with values the test queues, in call order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rand: list[float] = []
        self.beta: list[float] = []
        self.randint: list[int] = []
        monkeypatch.setattr(np.random, "rand", self._rand)
        monkeypatch.setattr(np.random, "beta", self._beta)
        monkeypatch.setattr(np.random, "randint", self._randint)

    @staticmethod
    def _take(queue: list, size: int | None):
        if size is None:
            return queue.pop(0)
        values = [queue.pop(0) for _ in range(size)]
        return np.array(values)

    def _rand(self, *shape: int):
        return self._take(self.rand, shape[0] if shape else None)

    def _beta(self, a: float, b: float, size: int | None = None):
        return self._take(self.beta, size)

    def _randint(self, low: int, high: int, size: int | None = None):
        value = self._take(self.randint, size)
        assert np.all((low <= np.asarray(value)) & (np.asarray(value) < high)), f"forced {value} not in [{low}, {high})"
        return value

    def exhausted(self) -> bool:
        return not (self.rand or self.beta or self.randint)


@pytest.fixture
def forced_numpy(monkeypatch: pytest.MonkeyPatch) -> ForcedNumpy:
    return ForcedNumpy(monkeypatch)


def timm_box(lam: float, centre: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """timm's ``rand_bbox`` written out: side ``int(size * sqrt(1 - lam))``, ``[c - cut//2, c + (cut+1)//2)``."""
    lo, hi = [], []
    for c, size in zip(centre, sizes):
        cut = int(size * math.sqrt(1.0 - lam))
        lo.append(min(max(c - cut // 2, 0), size))
        hi.append(min(max(c + (cut + 1) // 2, 0), size))
    return lo, hi


def torchvision_box(lam: float, centre: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """torchvision's CutMix box: half side ``int(0.5 * sqrt(1 - lam) * size)``, ``[c - half, c + half)``."""
    lo, hi = [], []
    for c, size in zip(centre, sizes):
        half = int(0.5 * math.sqrt(1.0 - lam) * size)
        lo.append(max(c - half, 0))
        hi.append(min(c + half, size))
    return lo, hi


def force_cutmix_draws(forced: ForcedNumpy, lam, centres, size: tuple[int, int]) -> tuple[list, list]:
    """Queue timm's draws of one CutMix box per sample (or pair): lam, coins that mix, centres (y, x);
    returns timm's boxes as ``(lo, hi)``, one row each."""
    forced.beta, forced.rand = list(lam), [0.0] * len(lam)
    forced.randint = [v for c in centres for v in c]
    boxes = [timm_box(float(l), c, size) for l, c in zip(lam, centres)]
    return [b[0] for b in boxes], [b[1] for b in boxes]


def params(lam, index: torch.Tensor, lo=None, hi=None) -> dict[str, torch.Tensor]:
    batch = index.shape[0]
    out = {"lam": torch.as_tensor(lam, dtype=torch.float32).expand(batch).contiguous(), "index": index}
    if lo is not None:
        out["lo"] = torch.as_tensor(lo, dtype=torch.long).expand(batch, -1).contiguous()
        out["hi"] = torch.as_tensor(hi, dtype=torch.long).expand(batch, -1).contiguous()
    return out


def run_timm(mixer: timm_mixup.Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return mixer(x.clone(), y)  # timm mixes in place


def assert_same(ours: openmix.MixOutput, theirs: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.testing.assert_close(ours.x, theirs[0])
    torch.testing.assert_close(ours.y, theirs[1].float())


# ---------------------------------------------------------------------------- timm
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("lam", [0.2, 0.5, 0.9375])
def test_timm_mixup_batch(forced_numpy, lam, smoothing):
    x, y = images(6), labels(6)
    forced_numpy.rand, forced_numpy.beta = [0.0], [lam]
    theirs = run_timm(timm_mixup.Mixup(1.0, 0.0, label_smoothing=smoothing, num_classes=NUM_CLASSES), x, y)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, pairing="flip", label_smoothing=smoothing)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, smoothing), params(lam, partner_index(6, "flip")))
    assert forced_numpy.exhausted()
    assert_same(ours, theirs)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_timm_mixup_elem(forced_numpy, smoothing):
    lam = np.array([0.1, 0.7, 0.35, 0.5, 0.99, 0.6], dtype=np.float32)
    x, y = images(6), labels(6)
    forced_numpy.beta, forced_numpy.rand = list(lam), [0.0] * 6
    timm = timm_mixup.Mixup(1.0, 0.0, mode="elem", label_smoothing=smoothing, num_classes=NUM_CLASSES)
    theirs = run_timm(timm, x, y)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, mode="elem", pairing="flip", label_smoothing=smoothing)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, smoothing), params(lam, partner_index(6, "flip")))
    assert_same(ours, theirs)


def test_timm_mixup_elem_prob_skips_as_lam_one(forced_numpy):
    """timm's per-sample ``prob`` coin leaves a sample at lam 1, as openmix's elem mode does."""
    lam = np.array([0.3, 0.8, 0.45, 0.6], dtype=np.float32)
    coins = [0.1, 0.9, 0.2, 0.7]  # >= prob 0.5: skipped
    x, y = images(4), labels(4)
    forced_numpy.beta, forced_numpy.rand = list(lam), list(coins)
    theirs = run_timm(timm_mixup.Mixup(1.0, 0.0, prob=0.5, mode="elem", label_smoothing=0.0, num_classes=NUM_CLASSES), x, y)
    kept = np.where(np.array(coins) < 0.5, lam, 1.0)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, mode="elem", prob=0.5, pairing="flip")
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), params(kept, partner_index(4, "flip")))
    assert_same(ours, theirs)


CUTMIX_CASES = [  # (lam, centre (y, x), image (H, W))
    (0.5, (8, 8), (16, 16)),  # inside
    (0.3, (0, 0), (16, 16)),  # clipped at the top-left
    (0.3, (15, 15), (16, 16)),  # clipped at the bottom-right
    (0.62, (2, 17), (12, 20)),  # non-square, clipped on one axis
    (0.999, (5, 5), (16, 16)),  # box of side 0
]


@pytest.mark.parametrize("correct_lam", [True, False])
@pytest.mark.parametrize("lam, centre, size", CUTMIX_CASES)
def test_timm_cutmix_batch(forced_numpy, lam, centre, size, correct_lam):
    x, y = images(6, *size), labels(6)
    forced_numpy.rand, forced_numpy.beta, forced_numpy.randint = [0.0], [lam], list(centre)
    timm = timm_mixup.Mixup(0.0, 1.0, correct_lam=correct_lam, label_smoothing=0.1, num_classes=NUM_CLASSES)
    theirs = run_timm(timm, x, y)
    lo, hi = timm_box(lam, centre, size)
    mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, pairing="flip", correct_lam=correct_lam, label_smoothing=0.1)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, 0.1), params(lam, partner_index(6, "flip"), lo, hi))
    assert forced_numpy.exhausted()
    assert_same(ours, theirs)


@pytest.mark.parametrize("correct_lam", [True, False])
def test_timm_cutmix_elem(forced_numpy, correct_lam):
    size = (12, 20)
    lam = np.array([0.5, 0.2, 0.9, 0.35, 0.7, 0.05], dtype=np.float32)
    centres = [(6, 10), (0, 0), (11, 19), (3, 15), (9, 2), (6, 0)]
    x, y = images(6, *size), labels(6)
    lo, hi = force_cutmix_draws(forced_numpy, lam, centres, size)
    timm = timm_mixup.Mixup(0.0, 1.0, mode="elem", correct_lam=correct_lam, label_smoothing=0.0, num_classes=NUM_CLASSES)
    theirs = run_timm(timm, x, y)
    p = params(lam, partner_index(6, "flip"), lo, hi)
    mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, mode="elem", pairing="flip", correct_lam=correct_lam)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), p)
    assert forced_numpy.exhausted()
    assert_same(ours, theirs)


@pytest.mark.parametrize("sides, corner", [((3, 9), (0, 0)), ((8, 15), (4, 5)), ((5, 5), (7, 15))])
def test_timm_cutmix_minmax(forced_numpy, sides, corner):
    """``cutmix_minmax``: the box lies fully inside; lam comes from its area."""
    size = (12, 20)
    x, y = images(6, *size), labels(6)
    forced_numpy.rand, forced_numpy.beta = [0.0], [0.5]
    forced_numpy.randint = [*sides, *corner]  # cut_h, cut_w, then top, left
    timm = timm_mixup.Mixup(0.0, 0.0, cutmix_minmax=(0.25, 0.8), label_smoothing=0.0, num_classes=NUM_CLASSES)
    theirs = run_timm(timm, x, y)
    lo, hi = list(corner), [c + s for c, s in zip(corner, sides)]
    mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, pairing="flip", minmax=(0.25, 0.8))
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), params(0.5, partner_index(6, "flip"), lo, hi))
    assert forced_numpy.exhausted()
    assert_same(ours, theirs)


# ------------------------------------------------------------ timm's pair and half modes
PAIR_LAM = np.array([0.3, 0.8, 0.55], dtype=np.float32)  # one per pair of a batch of 6, or per kept sample of half
PAIR_CENTRES = [(6, 10), (0, 19), (11, 3)]  # (y, x) in a 12 x 20 image


def per_pair(lam, lo=None, hi=None) -> dict[str, torch.Tensor]:
    """openmix's pair-mode params of a batch of 6 from one draw per pair: the draws of samples 0..2 (the
    pair leaders; 3..5 hold junk) given to both samples of each flip pair by ``mirror_params``."""
    draws = {"lam": torch.cat([torch.as_tensor(lam, dtype=torch.float32), torch.full((3,), 0.01)])}
    if lo is not None:
        draws["lo"] = torch.cat([torch.as_tensor(lo), torch.zeros(3, 2, dtype=torch.long)])
        draws["hi"] = torch.cat([torch.as_tensor(hi), torch.full((3, 2), 12, dtype=torch.long)])
    index, leader = pair_partners(6, "flip")
    return mirror_params({**draws, "index": index}, leader)


def first_half(lam, lo=None, hi=None) -> dict[str, torch.Tensor]:
    """openmix's half-mode params of a batch of 6: samples 0..2 drawn, mixed with 5..3; the rest unused."""
    out = {"lam": torch.cat([torch.as_tensor(lam, dtype=torch.float32), torch.ones(3)]),
           "index": half_partners(6, "flip")}
    if lo is not None:
        out["lo"] = torch.cat([torch.as_tensor(lo), torch.zeros(3, 2, dtype=torch.long)])
        out["hi"] = torch.cat([torch.as_tensor(hi), torch.zeros(3, 2, dtype=torch.long)])
    return out


def collate_batch(batch: int, size: tuple[int, int]) -> tuple[list[tuple[np.ndarray, int]], torch.Tensor, torch.Tensor]:
    """A batch as ``FastCollateMixup`` takes it (uint8 ``(C, H, W)`` arrays, int labels), and as tensors."""
    gen = torch.Generator().manual_seed(batch)
    x = torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8)
    y = labels(batch)
    return [(x[i].numpy().copy(), int(y[i])) for i in range(batch)], x.float(), y


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_timm_mixup_pair(forced_numpy, smoothing):
    """Each pair (i, 5-i) shares one lam and mixes both ways; timm returns concat(lam, lam[::-1])."""
    x, y = images(6), labels(6)
    forced_numpy.beta, forced_numpy.rand = list(PAIR_LAM), [0.0] * 3
    theirs = run_timm(timm_mixup.Mixup(1.0, 0.0, mode="pair", label_smoothing=smoothing, num_classes=NUM_CLASSES), x, y)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, mode="pair", pairing="flip", label_smoothing=smoothing)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, smoothing), per_pair(PAIR_LAM))
    assert forced_numpy.exhausted()
    assert_same(ours, theirs)
    torch.testing.assert_close(ours.lam, torch.tensor([0.3, 0.8, 0.55, 0.55, 0.8, 0.3]))


def test_timm_mixup_pair_prob_skips_whole_pairs(forced_numpy):
    coins = [0.1, 0.9, 0.2]  # >= prob 0.5: pair (1, 4) is skipped
    x, y = images(6), labels(6)
    forced_numpy.beta, forced_numpy.rand = list(PAIR_LAM), list(coins)
    timm = timm_mixup.Mixup(1.0, 0.0, prob=0.5, mode="pair", label_smoothing=0.0, num_classes=NUM_CLASSES)
    theirs = run_timm(timm, x, y)
    kept = np.where(np.array(coins) < 0.5, PAIR_LAM, 1.0)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, mode="pair", prob=0.5, pairing="flip")
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), per_pair(kept))
    assert_same(ours, theirs)
    torch.testing.assert_close(ours.x[[1, 4]], x[[1, 4]])


@pytest.mark.parametrize("correct_lam", [True, False])
def test_timm_cutmix_pair(forced_numpy, correct_lam):
    """One box per pair, its contents swapped between the two samples."""
    size = (12, 20)
    x, y = images(6, *size), labels(6)
    lo, hi = force_cutmix_draws(forced_numpy, PAIR_LAM, PAIR_CENTRES, size)
    timm = timm_mixup.Mixup(0.0, 1.0, mode="pair", correct_lam=correct_lam, label_smoothing=0.1,
                            num_classes=NUM_CLASSES)
    theirs = run_timm(timm, x, y)
    p = per_pair(PAIR_LAM, lo, hi)
    mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, mode="pair", pairing="flip", correct_lam=correct_lam,
                          label_smoothing=0.1)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, 0.1), p)
    assert forced_numpy.exhausted()
    assert_same(ours, theirs)
    assert torch.equal(ours.mask, ours.mask.flip(0))  # the pair's one box


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_timm_fast_collate_mixup_half(forced_numpy, smoothing):
    """Three outputs from six samples, sample i mixed with 5 - i; timm rounds its uint8 blend, openmix
    mixes floats, so they agree to half a grey level."""
    batch, x, y = collate_batch(6, (12, 20))
    forced_numpy.beta, forced_numpy.rand = list(PAIR_LAM), [0.0] * 3
    collate = timm_mixup.FastCollateMixup(1.0, 0.0, mode="half", label_smoothing=smoothing, num_classes=NUM_CLASSES)
    theirs_x, theirs_y = collate(batch)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, mode="half", pairing="flip", label_smoothing=smoothing)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, smoothing), first_half(PAIR_LAM))
    assert forced_numpy.exhausted()
    assert theirs_x.shape == ours.x.shape == (3, 3, 12, 20)
    assert float((ours.x - theirs_x.float()).abs().max()) <= 0.5 + 1e-3
    torch.testing.assert_close(ours.y, theirs_y.float())


@pytest.mark.parametrize("correct_lam", [True, False])
def test_timm_fast_collate_cutmix_half(forced_numpy, correct_lam):
    batch, x, y = collate_batch(6, (12, 20))
    lo, hi = force_cutmix_draws(forced_numpy, PAIR_LAM, PAIR_CENTRES, (12, 20))
    collate = timm_mixup.FastCollateMixup(0.0, 1.0, mode="half", correct_lam=correct_lam, label_smoothing=0.1,
                                          num_classes=NUM_CLASSES)
    theirs_x, theirs_y = collate(batch)
    mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, mode="half", pairing="flip", correct_lam=correct_lam,
                          label_smoothing=0.1)
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES, 0.1), first_half(PAIR_LAM, lo, hi))
    assert forced_numpy.exhausted()
    assert torch.equal(ours.x, theirs_x.float())  # pasted pixels: exact
    torch.testing.assert_close(ours.y, theirs_y.float())


@pytest.mark.parametrize("size", [(32, 32), (7, 13), (1, 20)])
def test_random_boxes_match_timm_rand_bbox(forced_numpy, size):
    """openmix's box formula is timm's: replay our centre draw through ``rand_bbox``."""
    gen = torch.Generator().manual_seed(11)
    lam = openmix.sampling.beta(1.0, 64, generator=gen)
    state = gen.get_state()
    lo, hi = random_boxes(lam, size, generator=gen)
    gen.set_state(state)  # the centre is random_boxes' only draw
    centres = (torch.rand((64, 2), generator=gen) * torch.tensor(size, dtype=torch.float32)).floor().long()
    for i in range(64):
        forced_numpy.randint = centres[i].tolist()
        yl, yh, xl, xh = timm_mixup.rand_bbox(size, float(lam[i]))
        assert [yl, xl] == lo[i].tolist() and [yh, xh] == hi[i].tolist(), f"sample {i}, lam {float(lam[i])}"


# ---------------------------------------------------------------------- torchvision
class FixedBeta:
    """Stands in for torchvision's ``self._dist``: always draws ``lam``."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    def sample(self, shape=()) -> torch.Tensor:
        return torch.tensor([self.lam])


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.875])
def test_torchvision_mixup(monkeypatch, lam):
    x, y = images(5), labels(5)
    theirs_mixer = v2.MixUp(alpha=1.0, num_classes=NUM_CLASSES)
    monkeypatch.setattr(theirs_mixer, "_dist", FixedBeta(lam))
    theirs = theirs_mixer(x, y)
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, pairing="roll")
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), params(lam, partner_index(5, "roll")))
    assert_same(ours, theirs)


@pytest.mark.parametrize("lam, centre, size", CUTMIX_CASES)
def test_torchvision_cutmix(monkeypatch, lam, centre, size):
    x, y = images(5, *size), labels(5)
    theirs_mixer = v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
    monkeypatch.setattr(theirs_mixer, "_dist", FixedBeta(lam))
    forced = [(size[1], centre[1]), (size[0], centre[0])]  # torchvision draws x, then y

    def randint(high, size=None, **kwargs):
        expected_high, value = forced.pop(0)
        assert high == expected_high
        return torch.tensor([value])

    monkeypatch.setattr(torch, "randint", randint)
    theirs = theirs_mixer(x, y)
    monkeypatch.undo()
    assert not forced
    lo, hi = torchvision_box(lam, centre, size)
    mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, pairing="roll")
    ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), params(lam, partner_index(5, "roll"), lo, hi))
    assert_same(ours, theirs)


def test_torchvision_cutmix_seeded_replay():
    """Unforced torchvision draws, replayed from the same torch seed, give the same result."""
    x, y = images(8, 24, 24), labels(8)
    theirs_mixer = v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
    for seed in range(5):
        torch.manual_seed(seed)
        theirs = theirs_mixer(x, y)
        torch.manual_seed(seed)
        lam = float(theirs_mixer._dist.sample(()))
        cx, cy = int(torch.randint(24, (1,))), int(torch.randint(24, (1,)))
        lo, hi = torchvision_box(lam, (cy, cx), (24, 24))
        mixer = openmix.build("cutmix", num_classes=NUM_CLASSES, pairing="roll")
        ours = mixer.apply_params(x, soft_targets(y, NUM_CLASSES), params(lam, partner_index(8, "roll"), lo, hi))
        assert_same(ours, theirs)
