"""Evaluation beyond top-1: calibration metrics and reliability bins, FGSM/PGD in pixel space, occlusion."""

import json
import math

import pytest
import torch
from torch import nn

from openmix.evaluation.adversarial import fgsm, pgd
from openmix.evaluation.calibration import ReliabilityBins, calibration_metrics, plot_reliability, reliability_bins
from openmix.evaluation.occlusion import occlude, occlusion_accuracy
from openmix.pixels import denormalize, normalize

# ------------------------------------------------------------------ calibration
# Five samples of three classes, as probabilities (the logits are their logs plus a row offset,
# which softmax removes) and labels:
#   a (.70, .20, .10) y=0: confidence .7, right   b (.60, .30, .10) y=1: confidence .6, wrong
#   c (.10, .10, .80) y=2: confidence .8, right   d (.40, .35, .25) y=1: confidence .4, wrong
#   e (.05, .90, .05) y=0: confidence .9, wrong
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25], [0.05, 0.9, 0.05]],
                     dtype=torch.float64)
LABELS = torch.tensor([0, 1, 2, 1, 0])
LOGITS = PROBS.log() + torch.tensor([[3.0], [-1.0], [0.5], [0.0], [7.0]], dtype=torch.float64)


def test_ece_hand_computed():
    # 4 equal-width bins (.25 wide): d in (.25, .5]; a, b in (.5, .75]; c, e in (.75, 1].
    # |0 - .4| * 1/5 + |1/2 - .65| * 2/5 + |1/2 - .85| * 2/5 = .08 + .06 + .14 = .28
    assert calibration_metrics(LOGITS, LABELS, bins=4)["ece"] == pytest.approx(28.0)


def test_adaptive_ece_hand_computed():
    # Sorted by confidence: d .4 (wrong), b .6 (wrong), a .7 (right), c .8 (right), e .9 (wrong).
    # 4 equal-mass bins: rank r -> bin r * 4 // 5 = 0, 0, 1, 2, 3, so {d, b}, {a}, {c}, {e}:
    # |0 - .5| * 2/5 + |1 - .7| / 5 + |1 - .8| / 5 + |0 - .9| / 5 = .2 + .06 + .04 + .18 = .48
    # (the extra sample in the last bin, {d}, {b}, {a}, {c, e}, would give .40)
    assert calibration_metrics(LOGITS, LABELS, bins=4)["adaptive_ece"] == pytest.approx(48.0)


def test_nll_hand_computed():
    # -(ln .7 + ln .3 + ln .8 + ln .35 + ln .05) / 5 = -ln(.00294) / 5
    assert calibration_metrics(LOGITS, LABELS)["nll"] == pytest.approx(-math.log(0.7 * 0.3 * 0.8 * 0.35 * 0.05) / 5)


def test_brier_hand_computed():
    # a: .3² + .2² + .1² = .14             b: .6² + .7² + .1² = .86
    # c: .1² + .1² + .2² = .06             d: .4² + .65² + .25² = .645
    # e: .95² + .9² + .05² = 1.715         mean: 3.42 / 5 = .684 (a sum over classes, in [0, 2])
    assert calibration_metrics(LOGITS, LABELS)["brier"] == pytest.approx(0.684)


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Ten at confidence .9 with nine right, ten at .7 with seven right.
    logits = torch.tensor([[0.9, 0.1]] * 10 + [[0.7, 0.3]] * 10, dtype=torch.float64).log()
    labels = torch.tensor([0] * 9 + [1] + [0] * 7 + [1] * 3)
    assert calibration_metrics(logits, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_equal_mass_bins_split_ties_in_input_order():
    # Ten ties at .8; a stable sort keeps them in order, so the two bins of five hold 4 right each.
    logits = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64).log()
    labels = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    assert calibration_metrics(logits, labels, bins=2)["adaptive_ece"] == pytest.approx(0.0, abs=1e-12)


def test_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # Softmax of tied logits gives exactly .25 (4 ties), .5 (2 ties) and 1.0: the edges of 4 bins.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1e3, -1e3], [0.0, -1e3, -1e3, -1e3]])
    assert reliability_bins(logits, torch.zeros(3, dtype=torch.long), bins=4).count == (1, 1, 0, 1)


def test_reliability_bins_hand_computed():
    curve = reliability_bins(LOGITS, LABELS, bins=4)
    assert curve.edges == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert curve.count == (0, 1, 2, 2)
    assert curve.accuracy == (None, 0.0, 0.5, 0.5)
    assert curve.confidence[0] is None
    assert curve.confidence[1:] == pytest.approx((0.4, 0.65, 0.85))


def test_reliability_bins_give_the_ece():
    assert reliability_bins(LOGITS, LABELS, bins=4).ece == pytest.approx(calibration_metrics(LOGITS, LABELS, 4)["ece"])


def test_reliability_bins_round_trip_through_json():
    curve = reliability_bins(LOGITS, LABELS, bins=4)
    text = json.dumps(curve.to_dict())
    assert json.loads(text)["confidence"][0] is None
    assert ReliabilityBins.from_dict(json.loads(text)) == curve


def test_calibration_takes_int32_labels():
    assert calibration_metrics(LOGITS, LABELS.int()) == calibration_metrics(LOGITS, LABELS)


def test_calibration_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        calibration_metrics(LOGITS, torch.tensor([0, 1, 2, 3, 0]))


def test_plot_reliability_writes_a_png(tmp_path):
    curves = {"mixup": reliability_bins(LOGITS, LABELS, bins=4), "cutmix": reliability_bins(-LOGITS, LABELS, bins=4)}
    path = tmp_path / "plots" / "reliability.png"
    plot_reliability(curves, path, title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["reliability.png"]


# ------------------------------------------------------------------ attacks
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.5, 2.0)


def linear_model(features: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).eval()


def input_gradient_sign(model: nn.Module, pixels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cross-entropy gradient of a linear model on pixels, in closed form: (softmax - onehot) @ W."""
    linear = model[1]
    with torch.no_grad():
        probs = linear(pixels.flatten(1)).softmax(1)
        gradient = (probs - nn.functional.one_hot(y, probs.shape[1])) @ linear.weight
    return gradient.sign().view_as(pixels)


def test_fgsm_moves_each_pixel_by_eps_along_the_gradient_sign():
    model = linear_model(12)
    with torch.no_grad():
        model[1].weight[:, 5] = 0  # pixel 5 has no gradient
    pixels, y = 0.3 + 0.4 * torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])  # eps away from 0 and 1
    moved = fgsm(model, pixels, y, 0.1) - pixels
    sign = input_gradient_sign(model, pixels, y)
    assert bool((sign.flatten(1)[:, 5] == 0).all()) and int(sign.count_nonzero()) == 4 * 11
    torch.testing.assert_close(moved, 0.1 * sign, atol=1e-6, rtol=0)


def test_fgsm_moves_pixels_not_normalised_values_by_eps():
    pixels, y = 0.3 + 0.4 * torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    x = normalize(pixels, MEAN, STD)
    adversarial = fgsm(linear_model(12), x, y, 0.1, mean=MEAN, std=STD)
    torch.testing.assert_close((denormalize(adversarial, MEAN, STD) - pixels).abs(), torch.full_like(x, 0.1))


def test_fgsm_clamps_pixels_to_the_unit_range():
    pixels = torch.tensor([0.0, 1.0, 0.05, 0.95]).repeat(4, 3, 1).view(4, 3, 2, 2)
    adversarial = fgsm(linear_model(12), pixels, torch.tensor([0, 1, 2, 0]), 0.5)
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0


def test_pgd_stays_in_the_eps_ball_and_the_unit_range():
    pixels, y = torch.rand(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    x = normalize(pixels, MEAN, STD)
    adversarial = denormalize(pgd(linear_model(12), x, y, 0.1, steps=5, mean=MEAN, std=STD,
                                  generator=torch.Generator().manual_seed(0)), MEAN, STD)
    assert float((adversarial - pixels).abs().max()) <= 0.1 + 1e-6
    assert float(adversarial.min()) >= -1e-6 and float(adversarial.max()) <= 1 + 1e-6


def test_pgd_is_deterministic_given_the_generator():
    model, x, y = linear_model(12), torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    # Small steps, so the end point depends on the random start (large ones all reach the same corner).
    first, second, other = (pgd(model, x, y, 0.1, step=0.01, steps=2, generator=torch.Generator().manual_seed(seed))
                            for seed in (3, 3, 4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_pgd_flips_exactly_the_predictions_an_eps_attack_can_flip():
    # Two classes with logit margin m(x) = 2 * sum(x) - 3.5 over 4 pixels: within eps = .1 the sum
    # moves by at most .4 and the margin by .8. Constant images at .5 (m = .5) and .375 (m = -.5)
    # flip; .8 (m = 2.9) and .1 (m = -2.7) cannot.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
        model[1].bias.copy_(torch.tensor([-1.75, 1.75]))
    x, y = torch.tensor([0.5, 0.375, 0.8, 0.1]).view(4, 1, 1, 1).expand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    assert torch.equal(model(x).argmax(1), y)
    adversarial = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(0))
    assert model(adversarial).argmax(1).tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_attacks_create_no_parameter_grad(attack):
    model = linear_model(12)
    attack(model, torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), 0.1)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_attacks_work_under_no_grad(attack):
    x = normalize(torch.full((4, 3, 2, 2), 0.5), MEAN, STD)
    with torch.no_grad():
        adversarial = attack(linear_model(12), x, torch.tensor([0, 1, 2, 0]), 0.1, mean=MEAN, std=STD)
    assert not torch.equal(adversarial, x)


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_attacks_keep_the_input_dtype(attack):
    x = normalize(torch.rand(4, 3, 2, 2, dtype=torch.float64), MEAN, STD)
    adversarial = attack(linear_model(12).double(), x, torch.tensor([0, 1, 2, 0]), 0.1, mean=MEAN, std=STD)
    assert adversarial.dtype == torch.float64


# ------------------------------------------------------------------ occlusion
@pytest.mark.parametrize("fraction, cells", [(0.25, 4), (0.3, 5), (1.0, 16)])  # of 16 cells; round(.3 * 16) = 5
def test_occlude_hides_the_stated_area(fraction, cells):
    hidden = occlude(torch.ones(3, 2, 8, 8), fraction, patch=2, generator=torch.Generator().manual_seed(0))
    assert (hidden == 0).sum((2, 3)).tolist() == [[cells * 4] * 2] * 3


def test_occlude_hides_whole_grid_cells():
    hidden = occlude(torch.ones(3, 1, 8, 8), 0.4, patch=2, generator=torch.Generator().manual_seed(0))
    cells = hidden.view(3, 4, 2, 4, 2)  # (image, row, y in cell, column, x in cell)
    assert torch.equal(cells.amin((2, 4)), cells.amax((2, 4)))


def test_occlude_crops_cells_to_the_image():
    hidden = occlude(torch.ones(2, 1, 6, 6), 1.0, patch=4, generator=torch.Generator().manual_seed(0))
    assert bool((hidden == 0).all())


def test_occlude_draws_cells_per_image():
    hidden = occlude(torch.ones(4, 1, 8, 8), 0.25, patch=2, generator=torch.Generator().manual_seed(0))
    assert len({tuple(image.flatten().tolist()) for image in hidden}) > 1


def test_occlude_is_deterministic_given_the_seed():
    pixels = torch.rand(4, 3, 8, 8)
    first, second = (occlude(pixels, 0.3, generator=torch.Generator().manual_seed(5), patch=2) for _ in range(2))
    assert torch.equal(first, second)


def test_occlude_with_fraction_zero_is_the_identity():
    pixels = torch.rand(4, 3, 8, 8)
    assert torch.equal(occlude(pixels, 0.0, generator=torch.Generator().manual_seed(0)), pixels)


def test_occlude_grows_the_hidden_cells_with_the_fraction():
    small, large = (occlude(torch.ones(4, 1, 8, 8), f, patch=2, generator=torch.Generator().manual_seed(0)) == 0
                    for f in (0.2, 0.5))
    assert bool((large | ~small).all()) and int(large.sum()) > int(small.sum())


class MeanPixel(nn.Module):
    """Class 0 when an image's mean pixel exceeds .75, else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = denormalize(x, (0.5,), (0.25,)).mean((1, 2, 3))
        return torch.stack([m - 0.75, 0.75 - m], 1)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_occlusion_accuracy_hand_computed(batch_size):
    # White images, 16 cells of 2x2, black fill: fractions .1, .2, .3, .4, .5 hide 2, 3, 5, 6, 8
    # cells, leaving mean pixels 14/16, 13/16 (> .75: right), 11/16, 10/16, 8/16 (wrong).
    x = normalize(torch.ones(5, 1, 8, 8), (0.5,), (0.25,))
    curve = occlusion_accuracy(MeanPixel(), x, torch.zeros(5, dtype=torch.long), mean=(0.5,), std=(0.25,),
                               patch=2, batch_size=batch_size)
    assert curve == {0.0: 100.0, 0.1: 100.0, 0.2: 100.0, 0.3: 0.0, 0.4: 0.0, 0.5: 0.0}


class Recorder(nn.Module):
    """A linear model that keeps every input it sees."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear, self.seen = nn.Linear(64, 3), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return self.linear(x.flatten(1))


def test_occlusion_hides_the_same_patches_for_every_model():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    first, second = Recorder(0), Recorder(1)
    for model in (first, second):
        occlusion_accuracy(model, x, y, (0.2, 0.5), seed=7, patch=2)
    assert all(torch.equal(a, b) for a, b in zip(first.seen, second.seen, strict=True))
