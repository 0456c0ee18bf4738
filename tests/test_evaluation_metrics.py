"""Evaluation beyond top-1: calibration metrics and reliability bins."""

import json
import math

import pytest
import torch

from openmix.evaluation.calibration import ReliabilityBins, calibration_metrics, plot_reliability, reliability_bins

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
