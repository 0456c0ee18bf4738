"""Evaluate a trained classifier beyond top-1, on its data's validation split.

:func:`evaluate` runs, with :class:`EvalSettings`:

* **calibration** on the whole split: ECE (15 equal-width bins), adaptive ECE, NLL, Brier score
  and the reliability bins (:mod:`openmix.evaluation.calibration`);
* on a fixed subset of ``subset`` images (the same for every model given ``seed``):
  **corruptions** (every corruption of :mod:`openmix.evaluation.corruptions` at severities 1-5,
  each drawn from a generator seeded by ``(seed, corruption, severity)``), **adversarial**
  accuracy under FGSM and PGD (L-inf, radius ``eps`` in pixels, :mod:`openmix.evaluation.adversarial`)
  and **occlusion** accuracy as a growing random patch is hidden
  (:mod:`openmix.evaluation.occlusion`);
* when ``ood`` names a second set of images, **out-of-distribution detection**: the AUROC (%) of
  the maximum softmax probability, the whole split against every image of that set
  (:mod:`openmix.evaluation.ood`).

Corruptions, attacks and patches work in pixels: the inputs are de-normalised with the data's
``mean``/``std`` first and normalised again for the model. Accuracies are in percent. The model
runs in eval mode, and its mode is restored after.

Example:
    >>> import torch
    >>> from openmix.data import build_datamodule
    >>> from openmix.models import create_model
    >>> data = build_datamodule("synthetic", num_samples=32, num_val_samples=16, image_size=16, in_chans=1)
    >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
    >>> settings = EvalSettings(subset=8, corruptions=("gaussian_noise",), pgd_steps=2)
    >>> metrics = evaluate(model, data, settings)
    >>> sorted(k for k in metrics if k.endswith("top1"))
    ['corruption_top1', 'fgsm_top1', 'occlusion_top1', 'pgd_top1', 'subset_top1', 'top1']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from openmix.checks import check_bool, check_int, check_number
from openmix.pixels import denormalize, normalize
from openmix.sampling import stream_seed

__all__ = ["EvalSettings", "evaluate", "robustness", "EVAL_SCHEMA"]

EVAL_SCHEMA = 1
Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class EvalSettings:
    """What :func:`evaluate` measures, and on how much.

    Attributes:
        calibration: ECE, adaptive ECE, NLL, Brier and reliability bins on the whole split.
        corruption: accuracy under every corruption and severity (on the subset).
        adversarial: accuracy under FGSM and PGD (on the subset).
        occlusion: accuracy as a random patch of each of ``occlusion_fractions`` of the area is hidden.
        subset: images of the fixed random subset (fewer when the split is smaller).
        seed: the subset, the corruptions' draws, PGD's start and the patches come from it (PGD's
            start is drawn batch by batch, so it depends on ``batch_size`` too).
        bins: calibration bins.
        eps: the attacks' L-inf radius in pixels (8/255).
        pgd_steps: PGD iterations (step ``2.5 * eps / steps``).
        occlusion_fractions: the hidden area fractions.
        corruptions: the corruptions to run (``None``: all of them).
        batch_size: images per forward pass.
        ood: out-of-distribution images for ``ood_auroc``: ``"digits"`` (scikit-learn's handwritten
            digits) or a folder of images; ``None``: not measured.
    """

    calibration: bool = True
    corruption: bool = True
    adversarial: bool = True
    occlusion: bool = True
    subset: int = 1000
    seed: int = 0
    bins: int = 15
    eps: float = 8 / 255
    pgd_steps: int = 10
    occlusion_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    corruptions: tuple[str, ...] | None = None
    batch_size: int = 500
    ood: str | None = None

    def __post_init__(self) -> None:
        for name in ("calibration", "corruption", "adversarial", "occlusion"):
            check_bool(name, getattr(self, name))
        for name, low in (("subset", 1), ("seed", 0), ("bins", 1), ("pgd_steps", 1), ("batch_size", 1)):
            check_int(name, getattr(self, name), low)
        check_number("eps", self.eps, low=0.0, high=1.0)
        if not self.occlusion_fractions or not all(0.0 < f < 1.0 for f in self.occlusion_fractions):
            raise ValueError(f"occlusion_fractions must be fractions in (0, 1), got {self.occlusion_fractions}")
        if self.corruptions is not None:
            from openmix.evaluation.corruptions import CORRUPTIONS

            unknown = [name for name in self.corruptions if name not in CORRUPTIONS]
            if unknown or not self.corruptions:
                raise ValueError(f"unknown corruptions {unknown}; known: {', '.join(CORRUPTIONS)}")
        if self.ood is not None:
            from openmix.evaluation.ood import check_source

            check_source(self.ood)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "EvalSettings | None":
        """The settings of a run config's ``eval`` node; ``None`` when evaluation is off (``eval: null``
        or ``eval.enabled: false``). Unknown keys are a ``ValueError`` naming the known ones."""
        if config is None or not config.get("enabled", True):
            return None
        values = {key: value for key, value in config.items() if key != "enabled" and value is not None}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"eval settings {unknown} are unknown; the settings are: enabled, {', '.join(sorted(known))}")
        for key in ("occlusion_fractions", "corruptions"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}


def evaluate(model: nn.Module, datamodule: Any, settings: EvalSettings = EvalSettings(),
             device: torch.device | str | None = None) -> dict[str, Any]:
    """Every metric of ``settings`` for ``model`` on ``datamodule``'s validation split.

    Args:
        model: maps normalised inputs to logits; evaluated on ``device`` (default: its parameters').
        datamodule: an openmix datamodule (set up here if it is not yet): its
            ``evaluation_dataloader`` and ``mean``/``std``.
        settings: what to measure.
        device: where to run.

    Returns:
        A JSON-ready dict: ``schema``, ``settings``, ``num_test``, ``num_subset``, ``top1``, the
        calibration metrics and ``reliability``, ``subset_top1``, ``corruption_top1`` and
        ``corruption`` (per corruption: family and top-1 per severity), ``fgsm_top1``, ``pgd_top1``,
        ``occlusion_top1`` (mean over the fractions) and ``occlusion`` (top-1 per fraction),
        ``ood_auroc`` and ``ood`` (its source and image count).
    """
    from openmix.evaluation.calibration import calibration_metrics, reliability_bins

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if getattr(datamodule, "train_set", None) is None:
        datamodule.setup("validate")
    was_training = model.training
    model.eval()
    try:
        logits, labels = _predict(model, datamodule.evaluation_dataloader(device), device)
        count = labels.shape[0]
        chosen = torch.randperm(count, generator=torch.Generator().manual_seed(settings.seed))[: settings.subset]
        metrics: dict[str, Any] = {
            "schema": EVAL_SCHEMA,
            "settings": settings.to_dict(),
            "num_test": count,
            "num_subset": int(chosen.numel()),
            "top1": _top1(logits, labels),
        }
        if settings.calibration:
            metrics.update(calibration_metrics(logits, labels, bins=settings.bins))
            metrics["reliability"] = reliability_bins(logits, labels, bins=settings.bins).to_dict()
        if settings.corruption or settings.adversarial or settings.occlusion:
            x, y = _gather(datamodule.evaluation_dataloader(device), count, chosen, device)
            metrics.update(robustness(model, x, y, mean=datamodule.mean, std=datamodule.std, settings=settings))
        if settings.ood is not None:
            metrics.update(_ood_detection(model, logits, datamodule, settings, device))
    finally:
        model.train(was_training)
    return metrics


def robustness(model: nn.Module, x: Tensor, y: Tensor, *, mean: Sequence[float] | None, std: Sequence[float] | None,
               settings: EvalSettings = EvalSettings()) -> dict[str, Any]:
    """Accuracy on ``(x, y)`` (normalised inputs ``(N, C, H, W)``, class ids ``(N,)``) clean, under the
    corruptions, the attacks and occlusion that ``settings`` turns on; the model as it is (eval mode)."""
    from openmix.evaluation.adversarial import fgsm, pgd
    from openmix.evaluation.corruptions import CORRUPTIONS, corrupt
    from openmix.evaluation.occlusion import occlusion_accuracy

    out: dict[str, Any] = {"subset_top1": _accuracy(model, x, y, settings.batch_size)}
    if settings.corruption:
        names = list(CORRUPTIONS) if settings.corruptions is None else list(settings.corruptions)
        pixels = denormalize(x, mean, std)
        table = {}
        for c, name in enumerate(names):
            top1 = []
            for severity in range(1, 6):
                generator = torch.Generator(x.device).manual_seed(stream_seed(settings.seed, c, severity, 0))
                corrupted = torch.cat([corrupt(chunk, name, severity, generator=generator)
                                       for chunk in pixels.split(settings.batch_size)])
                top1.append(_accuracy(model, normalize(corrupted, mean, std), y, settings.batch_size))
            table[name] = {"family": CORRUPTIONS[name].family, "top1": top1}
        out["corruption"] = table
        out["corruption_top1"] = sum(sum(v["top1"]) for v in table.values()) / (5 * len(table))
    if settings.adversarial:
        generator = torch.Generator(x.device).manual_seed(settings.seed)
        for name, attack in (("fgsm", lambda xb, yb: fgsm(model, xb, yb, settings.eps, mean=mean, std=std)),
                             ("pgd", lambda xb, yb: pgd(model, xb, yb, settings.eps, steps=settings.pgd_steps,
                                                        mean=mean, std=std, generator=generator))):
            adversarial = torch.cat([attack(xb, yb) for xb, yb in zip(x.split(settings.batch_size),
                                                                       y.split(settings.batch_size))])
            out[f"{name}_top1"] = _accuracy(model, adversarial, y, settings.batch_size)
    if settings.occlusion:
        curve = occlusion_accuracy(model, x, y, settings.occlusion_fractions, mean=mean, std=std, seed=settings.seed,
                                   batch_size=settings.batch_size)
        out["occlusion"] = {f"{fraction:g}": top1 for fraction, top1 in curve.items()}
        out["occlusion_top1"] = sum(curve.values()) / len(curve)
    return out


def _ood_detection(model: nn.Module, logits: Tensor, datamodule: Any, settings: EvalSettings,
                   device: torch.device) -> dict[str, Any]:
    """The max-softmax AUROC of the split's ``logits`` against the images of ``settings.ood``."""
    from openmix.evaluation.ood import auroc, max_softmax, ood_images

    size = datamodule.image_size  # what the model sees, as the split's batches give it
    pixels = ood_images(settings.ood, size=(size, size), in_chans=datamodule.in_chans)
    inputs = normalize(pixels.to(device), datamodule.mean, datamodule.std)
    with torch.no_grad():
        outside = torch.cat([model(chunk).float().cpu() for chunk in inputs.split(settings.batch_size)])
    return {"ood_auroc": auroc(max_softmax(logits), max_softmax(outside)),
            "ood": {"source": settings.ood, "num_images": int(pixels.shape[0])}}


# ------------------------------------------------------------------ helpers
@torch.no_grad()
def _predict(model: nn.Module, batches: Batches, device: torch.device) -> tuple[Tensor, Tensor]:
    """Logits (float32, CPU) and labels of every batch."""
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def _gather(batches: Batches, count: int, chosen: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """The samples at positions ``chosen`` of the loader's ``count``, on ``device`` (in the loader's order)."""
    keep = torch.zeros(count, dtype=torch.bool)
    keep[chosen] = True
    last = int(chosen.max()) + 1
    xs, ys, seen = [], [], 0
    for x, y in batches:
        mask = keep[seen : seen + x.shape[0]]
        xs.append(x[mask.to(x.device)].to(device))
        ys.append(y[mask.to(y.device)].to(device))
        seen += x.shape[0]
        if seen >= last:
            break
    return torch.cat(xs), torch.cat(ys)


def _top1(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).double().mean())


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return 100.0 * hits / max(y.shape[0], 1)
