"""Calibration of a classifier: ECE, adaptive ECE, NLL and Brier score; reliability bins and diagrams.

A prediction is the arg-max class of the softmax (the first of tied classes) and its
confidence is that maximum probability. Everything is computed from the logits in float64
(the NLL from ``log_softmax``), batched on the logits' device, with one sync at the end.

Bins:
    *Equal-width* bins split ``[0, 1]`` at the edges ``k / bins``. Bin ``k`` is the interval
    ``(k / bins, (k + 1) / bins]``, closed on the right as in Guo et al. (2017): a confidence
    exactly on an edge goes to the **lower** bin (the first bin also takes 0, which a softmax
    never gives). *Equal-mass* bins (adaptive ECE, Nixon et al. 2019): the samples are sorted by
    confidence, stably (tied confidences keep their order in the input), and the sample of rank
    ``r`` among ``N`` goes to bin ``r * bins // N``, so bin counts differ by at most one and
    tied confidences may fall into neighbouring bins. With fewer samples than bins some equal-mass
    bins are empty.

Example:
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> metrics = calibration_metrics(logits, torch.tensor([0, 1, 1]), bins=10)
    >>> {name: round(value, 4) for name, value in metrics.items()}
    {'ece': 19.3773, 'adaptive_ece': 37.3068, 'nll': 0.5845, 'brier': 0.414}
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.checks import check_int
from openmix.results import write_atomic

__all__ = ["ReliabilityBins", "calibration_metrics", "plot_reliability", "reliability_bins"]


def calibration_metrics(logits: Tensor, labels: Tensor, bins: int = 15) -> dict[str, float]:
    """Expected calibration errors, negative log-likelihood and Brier score of ``logits``.

    Args:
        logits: ``(N, C)`` float.
        labels: ``(N,)`` class ids in ``[0, C)``.
        bins: bins of both ECEs.

    Returns:
        ``"ece"``: ``sum_b |accuracy_b - mean confidence_b| * N_b / N`` over ``bins`` equal-width
        bins, in percent; ``"adaptive_ece"``: the same over ``bins`` equal-mass bins, in percent
        (the module docstring says how samples are binned); ``"nll"``: mean ``-log p_label``, in
        nats; ``"brier"``: mean over samples of ``sum_c (p_c - onehot_c)^2``, not divided by
        ``C``, so it lies in ``[0, 2]``.

    Raises:
        ValueError: shapes do not match, no samples, a label out of range, ``bins < 1``.
        TypeError: float labels or integer logits.

    Example:
        >>> calibration_metrics(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), bins=4)["ece"]
        0.0
    """
    log_probs, confidence, correct = _predictions(logits, labels, bins)
    labels, n = labels.long(), confidence.numel()
    width = _bin_sums(confidence, correct, _equal_width_index(confidence, bins), bins)
    order = confidence.argsort(stable=True)
    rank = torch.arange(n, device=confidence.device)
    mass = _bin_sums(confidence[order], correct[order], rank * bins // n, bins)
    probs = log_probs.exp()
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    values = torch.stack([
        100 * _ece(width, n),
        100 * _ece(mass, n),
        -log_probs.gather(1, labels[:, None]).mean(),
        (probs - onehot).square().sum(1).mean(),
    ])
    return dict(zip(("ece", "adaptive_ece", "nll", "brier"), values.tolist()))


@dataclass(frozen=True)
class ReliabilityBins:
    """Confidence and accuracy per equal-width confidence bin: the data of a reliability diagram.

    Attributes:
        edges: the ``bins + 1`` edges ``k / bins``.
        confidence: mean confidence of each bin's samples (``None`` for an empty bin).
        accuracy: fraction of each bin's samples predicted right, in ``[0, 1]`` like the
            confidence (``None`` for an empty bin).
        count: samples in each bin.

    Example:
        >>> curve = reliability_bins(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), bins=2)
        >>> curve.count, curve.accuracy, round(curve.confidence[1], 4), round(curve.ece, 2)
        ((0, 2), (None, 0.5), 0.8059, 30.59)
        >>> ReliabilityBins.from_dict(curve.to_dict()) == curve
        True
    """

    edges: tuple[float, ...]
    confidence: tuple[float | None, ...]
    accuracy: tuple[float | None, ...]
    count: tuple[int, ...]

    def __post_init__(self) -> None:
        bins = len(self.count)
        if len(self.edges) != bins + 1 or len(self.confidence) != bins or len(self.accuracy) != bins:
            raise ValueError(f"reliability bins need bins + 1 edges and bins values of each kind, got "
                             f"{len(self.edges)} edges, {len(self.confidence)} confidences, "
                             f"{len(self.accuracy)} accuracies and {bins} counts")

    @property
    def ece(self) -> float:
        """The expected calibration error of these bins, in percent."""
        gaps = [n * abs(a - c) for n, a, c in zip(self.count, self.accuracy, self.confidence) if n]
        return 100 * sum(gaps) / sum(self.count)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists (empty bins' confidence and accuracy as ``None``)."""
        return {field.name: list(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReliabilityBins:
        """The bins that :meth:`to_dict` gave ``data``."""
        return cls(**{field.name: tuple(data[field.name]) for field in dataclasses.fields(cls)})


def reliability_bins(logits: Tensor, labels: Tensor, bins: int = 15) -> ReliabilityBins:
    """Mean confidence, accuracy and count of the samples in each of ``bins`` equal-width bins.

    Args:
        logits: ``(N, C)`` float.
        labels: ``(N,)`` class ids in ``[0, C)``.
        bins: equal-width bins on ``[0, 1]`` (the module docstring gives the edge rule).

    Returns:
        The bins; their :attr:`~ReliabilityBins.ece` is :func:`calibration_metrics`'s ``"ece"``.
    """
    _, confidence, correct = _predictions(logits, labels, bins)
    count, confidence_sum, correct_sum = _bin_sums(confidence, correct, _equal_width_index(confidence, bins), bins)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64).tolist()
    count, confidence_sum, correct_sum = count.long().tolist(), confidence_sum.tolist(), correct_sum.tolist()
    return ReliabilityBins(
        edges=tuple(edges),
        confidence=tuple(s / n if n else None for s, n in zip(confidence_sum, count)),
        accuracy=tuple(s / n if n else None for s, n in zip(correct_sum, count)),
        count=tuple(count),
    )


def plot_reliability(curves: Mapping[str, ReliabilityBins], path: str | Path, *, title: str | None = None) -> None:
    """Save reliability diagrams as a PNG (Agg backend), atomically: one panel per entry of
    ``curves`` (e.g. per mixer), in a grid of up to four columns.

    Each panel shows the accuracy of every non-empty bin as a bar, the gap up (or down) to the
    bin's mean confidence as a hatched bar, the diagonal of perfect calibration, and the ECE in
    its title; one legend below the grid serves them all.

    Args:
        curves: panel title -> bins, in panel order.
        path: the PNG to write (folders are created).
        title: the figure's title.

    Raises:
        ValueError: ``curves`` is empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("nothing to plot: no reliability bins given")
    ncols = min(len(curves), 4)
    nrows = math.ceil(len(curves) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, curve) in enumerate(curves.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        filled = [(left, right - left, a, c) for left, right, a, c, n
                  in zip(curve.edges, curve.edges[1:], curve.accuracy, curve.confidence, curve.count) if n]
        if filled:
            left, width, accuracy, confidence = zip(*filled)
            gap = [c - a for a, c in zip(accuracy, confidence)]
            ax.bar(left, accuracy, width, align="edge", color="tab:blue", edgecolor="black", lw=0.5, label="accuracy")
            ax.bar(left, gap, width, bottom=accuracy, align="edge", color="tab:red", alpha=0.3, hatch="//",
                   edgecolor="tab:red", lw=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="black", lw=1.0, zorder=3, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="confidence", ylabel="accuracy",
               title=f"{name} · ECE {curve.ece:.2f}%")
    handles, labels = max((ax.get_legend_handles_labels() for ax in fig.axes), key=lambda legend: len(legend[0]))
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize="small")
    if title is not None:
        fig.suptitle(title)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(path, png.getvalue())


# ------------------------------------------------------------------ helpers
def _predictions(logits: Tensor, labels: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Checked inputs as float64 ``log_softmax`` ``(N, C)``, confidence ``(N,)`` and correctness ``(N,)`` (0 or 1)."""
    check_int("bins", bins, 1)
    if not logits.is_floating_point() or logits.ndim != 2:
        raise TypeError(f"logits must be a float tensor (N, C), got {logits.dtype} {tuple(logits.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids (N,), got {labels.dtype}")
    if labels.shape != logits.shape[:1] or labels.numel() == 0:
        raise ValueError(f"labels must be (N,) for logits (N, C) with N >= 1, got labels {tuple(labels.shape)} "
                         f"and logits {tuple(logits.shape)}")
    classes = logits.shape[1]
    if bool(((labels < 0) | (labels >= classes)).any()):
        raise ValueError(f"labels must be class ids in [0, {classes}), got some outside")
    logits = logits.detach().double()
    confidence, prediction = logits.softmax(1).max(1)  # softmax: ties give exact shares, e.g. 0.25
    return logits.log_softmax(1), confidence, (prediction == labels).double()


def _equal_width_index(confidence: Tensor, bins: int) -> Tensor:
    """The equal-width bin of each confidence, ``(N,)`` int64: an edge goes to the lower bin."""
    inner = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)[1:-1]
    return torch.bucketize(confidence, inner, right=False)


def _bin_sums(confidence: Tensor, correct: Tensor, index: Tensor, bins: int) -> Tensor:
    """``(3, bins)``: the count, confidence sum and correct-prediction count of each bin."""
    values = torch.stack([torch.ones_like(confidence), confidence, correct])
    return values.new_zeros(3, bins).index_add_(1, index, values)


def _ece(sums: Tensor, n: int) -> Tensor:
    """``sum_b |accuracy_b - confidence_b| * N_b / N`` from :func:`_bin_sums`, as a fraction."""
    return (sums[2] - sums[1]).abs().sum() / n
