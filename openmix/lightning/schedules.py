"""Mixing schedules: what a run mixes at each epoch.

A :class:`MixSchedule` says, as a pure function of the 0-based epoch (Lightning's
``current_epoch``, timm's ``epoch``), whether mixing is on, which mixer mixes and with what
``prob`` and ``alpha``:

- ``off_epoch=N``: mixing stops from epoch ``N`` on (timm's ``mixup_off_epoch``). A batch is then
  a plain step on the unmixed inputs with the mixer's soft, label-smoothed targets and the same
  loss, as timm's ``mixup_enabled=False`` gives; the mixer is not called (no draws, no saliency
  passes), so its call counter stops where it was, and the checkpoint holds it.
- ``prob_ramp_epochs=K`` (from ``prob_start``) and ``alpha_ramp_epochs=K`` (from
  ``alpha_start``): a linear ramp, by epoch, to the mixer's own value: epoch ``e`` uses
  ``start + (value - start) * min(e / K, 1)``, so epoch 0 uses ``start`` and epoch ``K`` on the
  mixer's value.
- ``switch_epoch=S`` with ``switch_to`` (a mixer name or config): from epoch ``S`` on, that mixer
  mixes instead ("CutMix for 150 epochs, then mixup").

:class:`ScheduledMixers` applies a schedule: at each epoch start it sets the ``prob``/``alpha``
attributes of the mixer in use from the values it was built with (never from the values of the
epoch before), and leaves the seeded streams alone. The epoch is in every Lightning checkpoint,
so a resumed run follows the schedule exactly without any state of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.losses import Criterion
from openmix.mixer import Mixer
from openmix.model_mixer import LearnedMixer, ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.targets import soft_targets
from openmix.training import build_mixer

__all__ = ["MixSchedule", "ScheduledMixers", "EpochMix", "build_switch_mixer", "unmixed", "unmixed_step",
           "SWITCH_SEED_OFFSET"]

SWITCH_SEED_OFFSET = 1000
"""A mixer switched to (by name or config) draws with the first mixer's seed plus this, so its draws
never repeat the first mixer's (RandomChoice's children take ``seed + 1 + i``)."""


@dataclass(frozen=True, repr=False)
class MixSchedule:
    """When and how strongly a run mixes, by 0-based epoch; see the module notes.

    Args:
        off_epoch: mixing is off from this epoch on (epochs ``0 .. off_epoch - 1`` mix); ``None``: never off.
        prob_ramp_epochs: epochs of the linear ramp of ``prob`` from ``prob_start`` to the mixer's own.
        prob_start: ``prob`` at epoch 0 of the ramp.
        alpha_ramp_epochs: epochs of the linear ramp of ``alpha`` from ``alpha_start`` to the mixer's own.
        alpha_start: ``alpha`` at epoch 0 of the ramp (``0``: no mixing).
        switch_epoch: from this epoch on, ``switch_to`` mixes.
        switch_to: a registered mixer name, a config ``{"name": ..., **kwargs}`` or a mixer.

    Raises:
        ValueError: naming the setting (``schedule.<field>``): an epoch below 1, a start value out of
            range, a switch without its mixer (or the other way round), a switch or ramp that could
            not happen before mixing is off.

    Example:
        >>> schedule = MixSchedule(off_epoch=5, prob_ramp_epochs=2, prob_start=0.5)
        >>> [(schedule.mixing(e), schedule.prob(e, 1.0)) for e in range(6)]
        [(True, 0.5), (True, 0.75), (True, 1.0), (True, 1.0), (True, 1.0), (False, 1.0)]
    """

    off_epoch: int | None = None
    prob_ramp_epochs: int | None = None
    prob_start: float = 0.0
    alpha_ramp_epochs: int | None = None
    alpha_start: float = 0.0
    switch_epoch: int | None = None
    switch_to: str | Mapping[str, Any] | Mixer | None = None

    def __post_init__(self) -> None:
        for name in ("off_epoch", "prob_ramp_epochs", "alpha_ramp_epochs", "switch_epoch"):
            value = getattr(self, name)
            if value is not None:
                check_int(f"schedule.{name}", value, 1)
        object.__setattr__(self, "prob_start", check_number("schedule.prob_start", self.prob_start, low=0.0, high=1.0))
        object.__setattr__(self, "alpha_start", check_number("schedule.alpha_start", self.alpha_start, low=0.0))
        if (self.switch_epoch is None) != (self.switch_to is None):
            raise ValueError("schedule.switch_epoch and schedule.switch_to go together: the epoch to switch at "
                             f"and the mixer to switch to; got switch_epoch={self.switch_epoch!r}, "
                             f"switch_to={self.switch_to!r}")
        if isinstance(self.switch_to, Mapping):
            object.__setattr__(self, "switch_to", dict(self.switch_to))
        if self.off_epoch is not None:
            self._check_before("switch_epoch", self.off_epoch, "mixing is off")
            self._check_before("prob_ramp_epochs", self.off_epoch, "mixing is off")
            self._check_before("alpha_ramp_epochs", self.off_epoch, "mixing is off")

    def __repr__(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return f"MixSchedule({', '.join(changed)})"

    @classmethod
    def of(cls, spec: MixSchedule | Mapping[str, Any] | None) -> MixSchedule | None:
        """A schedule from itself or a config mapping (the ``schedule:`` node of ``openmix-train``);
        null values are unset, and a config with none set is no schedule (``None``).

        Example:
            >>> MixSchedule.of({"off_epoch": 3, "switch_epoch": None})
            MixSchedule(off_epoch=3)
            >>> MixSchedule.of({"off_epoch": None}) is None
            True
        """
        if spec is None or isinstance(spec, MixSchedule):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"schedule must be a MixSchedule, a mapping of its settings or None, "
                            f"got {type(spec).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(spec) - set(fields))
        if unknown:
            raise ValueError(f"unknown schedule setting(s) {', '.join(f'schedule.{k}' for k in unknown)}; "
                             f"available: {', '.join(fields)}")
        given = {key: value for key, value in spec.items() if value is not None}
        return cls(**given) if given else None

    # ------------------------------------------------------------ by epoch
    def mixing(self, epoch: int) -> bool:
        """Whether the batches of ``epoch`` are mixed."""
        return self.off_epoch is None or epoch < self.off_epoch

    def switched(self, epoch: int) -> bool:
        """Whether ``switch_to`` mixes in ``epoch``."""
        return self.switch_epoch is not None and epoch >= self.switch_epoch

    def prob(self, epoch: int, value: float) -> float:
        """The ``prob`` of ``epoch`` for a mixer whose own ``prob`` is ``value``."""
        return _ramp(epoch, self.prob_ramp_epochs, self.prob_start, value)

    def alpha(self, epoch: int, value: float) -> float:
        """The ``alpha`` of ``epoch`` for a mixer whose own ``alpha`` is ``value``."""
        return _ramp(epoch, self.alpha_ramp_epochs, self.alpha_start, value)

    def check_run(self, epochs: int) -> None:
        """Raise ``ValueError`` unless every epoch of the schedule lies in a run of ``epochs`` epochs
        (epochs ``0 .. epochs - 1``): a mixer that never switches, mixing that never stops or a ramp
        that never reaches the mixer's value is a mistake, not a setting.

        Example:
            >>> MixSchedule(off_epoch=10).check_run(5)
            Traceback (most recent call last):
            ...
            ValueError: schedule.off_epoch=10 must be below the run's 5 epochs (epochs 0-4): mixing stops at epoch 10
        """
        for name in ("off_epoch", "switch_epoch", "prob_ramp_epochs", "alpha_ramp_epochs"):
            value = getattr(self, name)
            if value is not None and value >= epochs:
                raise ValueError(f"schedule.{name}={value} must be below the run's {epochs} epochs "
                                 f"(epochs 0-{epochs - 1}): {_MEANING[name].format(value)}")

    def _check_before(self, name: str, limit: int, what: str) -> None:
        value = getattr(self, name)
        if value is not None and value >= limit:
            raise ValueError(f"schedule.{name}={value} must be below schedule.off_epoch={limit}: "
                             f"{_MEANING[name].format(value)}, but from epoch {limit} on {what}")


_MEANING = {
    "off_epoch": "mixing stops at epoch {}",
    "switch_epoch": "the mixer switches at epoch {}",
    "prob_ramp_epochs": "at epoch {} the ramp reaches the mixer's value",
    "alpha_ramp_epochs": "at epoch {} the ramp reaches the mixer's value",
}


def _ramp(epoch: int, epochs: int | None, start: float, value: float) -> float:
    if epochs is None or epoch >= epochs:
        return value
    return start + (value - start) * max(epoch, 0) / epochs


class EpochMix(NamedTuple):
    """What one epoch mixes with (:meth:`ScheduledMixers.start_epoch`)."""

    mixer: Mixer
    """The mixer of the epoch (the first one, or the one switched to); it keeps its targets' smoothing when off."""
    mixing: bool
    """``False`` from ``off_epoch`` on: the epoch's steps are :func:`unmixed_step`."""
    prob: float
    """The mixer's ``prob`` this epoch (``0.0`` while mixing is off)."""
    alpha: float | None
    """The mixer's ``alpha`` this epoch; ``None`` for a mixer without one (SmoothMix, RandomChoice)."""


class ScheduledMixers:
    """A mixer, the mixer it switches to, and the :class:`MixSchedule` that drives them.

    Not a module: the owner (``MixupClassifier``, ``MixupCallback``) keeps both mixers, so their
    state stays where checkpoints have it. Each mixer's own ``prob``/``alpha`` (and those of a
    RandomChoice's children) are read here once, and every epoch's values are set from them.

    Args:
        schedule: the schedule.
        mixer: the run's mixer.
        input_only: refuse a model-aware mixer to switch to (``MixupCallback``).

    Raises:
        ValueError: naming the setting: a switch :func:`build_switch_mixer` refuses, an ``alpha`` ramp
            of a mixer without one, a ``prob`` ramp of a learned mixer (it mixes every batch).

    Example:
        >>> import openmix
        >>> mixer = openmix.build("mixup", alpha=1.0, num_classes=10)
        >>> scheduled = ScheduledMixers(MixSchedule(alpha_ramp_epochs=4), mixer)
        >>> scheduled.start_epoch(1).alpha, mixer.alpha
        (0.25, 0.25)
        >>> scheduled.restore(); mixer.alpha
        1.0
    """

    def __init__(self, schedule: MixSchedule, mixer: Mixer, *, input_only: bool = False) -> None:
        self.schedule = schedule
        self.mixer = mixer
        self.switch_mixer = build_switch_mixer(schedule, mixer, input_only=input_only)  # the owner's submodule
        self._mixers = [m for m in (mixer, self.switch_mixer) if m is not None]
        _check_schedulable(schedule, mixer, from_epoch=0)
        if self.switch_mixer is not None:
            _check_schedulable(schedule, self.switch_mixer, from_epoch=schedule.switch_epoch)
        self._own = {id(part): (part.prob, part.alpha) for one in self._mixers for part in _scheduled_parts(one)}

    @classmethod
    def of(cls, spec: MixSchedule | Mapping[str, Any] | None, mixer: Mixer | None, *, epochs: int | None = None,
           input_only: bool = False) -> ScheduledMixers | None:
        """``mixer`` under the schedule ``spec`` (see :meth:`MixSchedule.of`), ``None`` without one;
        with ``epochs``, checked to fit a run that long (:meth:`MixSchedule.check_run`).

        Example:
            >>> import openmix
            >>> ScheduledMixers.of({"off_epoch": 5}, openmix.build("mixup", num_classes=10), epochs=3)
            Traceback (most recent call last):
            ...
            ValueError: schedule.off_epoch=5 must be below the run's 3 epochs (epochs 0-2): mixing stops at epoch 5
        """
        schedule = MixSchedule.of(spec)
        if schedule is None:
            return None
        if mixer is None:
            raise ValueError(f"a mixing schedule needs the mixer it schedules, and there is none (vanilla, or the "
                             f"batches come mixed from DataLoader workers, which a schedule does not reach): {schedule!r}")
        if epochs is not None:
            schedule.check_run(epochs)
        return cls(schedule, mixer, input_only=input_only)

    def start_epoch(self, epoch: int) -> EpochMix:
        """Set the mixers' ``prob``/``alpha`` for ``epoch`` and say what it mixes with."""
        self.restore()
        mixer = self._mixers[-1] if self.schedule.switched(epoch) else self._mixers[0]
        mixing = self.schedule.mixing(epoch)
        if mixing:
            for part in _scheduled_parts(mixer):
                prob, alpha = self._own[id(part)]
                part.prob, part.alpha = self.schedule.prob(epoch, prob), self.schedule.alpha(epoch, alpha)
        return EpochMix(mixer, mixing, mixer.prob if mixing else 0.0, mixer.alpha if _has_alpha(mixer) else None)

    def restore(self) -> None:
        """Give every mixer its own ``prob``/``alpha`` back (after training, and before each epoch's)."""
        for one in self._mixers:
            for part in _scheduled_parts(one):
                part.prob, part.alpha = self._own[id(part)]


def build_switch_mixer(schedule: MixSchedule | None, mixer: Mixer | None, *, input_only: bool = False) -> Mixer | None:
    """The mixer of ``schedule.switch_to`` (``None`` without a switch), built like ``mixer``.

    A name or config inherits ``mixer``'s ``num_classes`` and ``label_smoothing``, and its ``seed``
    plus :data:`SWITCH_SEED_OFFSET`, unless it sets them; a mixer instance is used as it is.

    Raises:
        ValueError: naming ``schedule.switch_to``: no mixer to switch from, an unknown or vanilla
            mixer, a learned mixer (its Mix Block would start untrained mid-run), or, with
            ``input_only``, a model-aware one.

    Example:
        >>> import openmix
        >>> first = openmix.build("cutmix", num_classes=10, seed=0)
        >>> build_switch_mixer(MixSchedule(switch_epoch=3, switch_to="mixup"), first)
        MixUp(alpha=1.0, num_classes=10, mode='batch', prob=1.0, pairing='random', seed=1000)
    """
    if schedule is None or schedule.switch_to is None:
        return None
    if mixer is None:
        raise ValueError("schedule.switch_to needs a mixer to switch from; the run has none (vanilla)")
    spec = schedule.switch_to
    name = spec.get("name") if isinstance(spec, Mapping) else spec
    if name in ("vanilla", "none"):
        raise ValueError(f"schedule.switch_to={spec!r}: to stop mixing, set schedule.off_epoch instead")
    defaults: dict[str, Any] = {"num_classes": mixer.num_classes, "label_smoothing": mixer.label_smoothing}
    if mixer.seed is not None:
        defaults["seed"] = mixer.seed + SWITCH_SEED_OFFSET
    try:
        built = build_mixer(spec, **defaults)
    except (ValueError, TypeError) as error:
        raise ValueError(f"schedule.switch_to={spec!r}: {error}") from None
    if isinstance(built, LearnedMixer):
        raise ValueError(f"schedule.switch_to={spec!r}: a learned mixer ({type(built).__name__}) cannot be switched "
                         "to, its Mix Block would start untrained mid-run; switch from it instead")
    if input_only and isinstance(built, ModelMixer):
        raise ValueError(f"schedule.switch_to={spec!r}: MixupCallback needs an input mixer, "
                         f"got a {built.kind} mixer ({type(built).__name__})")
    return built


def unmixed(mixer: Mixer, x: Tensor, y: Tensor) -> MixOutput:
    """The batch as it is, with ``mixer``'s soft (label-smoothed) targets of ``y``: what a mixer
    that is off gives. The mixer is not called, so its streams do not move.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("mixup", num_classes=3, label_smoothing=0.3)
        >>> out = unmixed(mixer, torch.zeros(1, 3), torch.tensor([0]))
        >>> out.y, out.lam
        (tensor([[0.8000, 0.1000, 0.1000]]), tensor([1.]))
    """
    mixer.check_inputs(x)
    return MixOutput.identity(x, soft_targets(y, mixer.num_classes, mixer.label_smoothing, batch=x.shape[0]))


def unmixed_step(model: nn.Module, mixer: Mixer, x: Tensor, y: Tensor, criterion: Criterion) -> StepResult:
    """A training step with mixing off: ``model`` on the :func:`unmixed` batch and the loss on its soft
    targets, as timm trains once ``mixup_off_epoch`` is reached; a model-aware mixer's own plain step
    (the one its ``prob`` coin takes) runs instead, with its loss.

    Example:
        >>> import torch, openmix
        >>> from openmix.losses import soft_cross_entropy
        >>> mixer = openmix.build("mixup", num_classes=3)
        >>> x, y = torch.zeros(1, 3), torch.tensor([0])
        >>> step = unmixed_step(torch.nn.Flatten(), mixer, x, y, soft_cross_entropy)
        >>> round(step.loss.item(), 4)  # log(3): uniform logits
        1.0986
    """
    out = unmixed(mixer, x, y)
    if isinstance(mixer, ModelMixer):
        return mixer.plain_step(model, x, out.y, criterion)
    logits = model(x)
    return StepResult(criterion(logits, out.y), logits, out)


def _scheduled_parts(mixer: Mixer) -> list[Mixer]:
    """The mixers whose ``prob``/``alpha`` the schedule sets: ``mixer``, and a RandomChoice's children."""
    children = getattr(mixer, "mixers", None)
    return [mixer, *children] if isinstance(children, nn.ModuleList) else [mixer]


def _has_alpha(mixer: Mixer) -> bool:
    """Whether ``mixer`` uses an ``alpha`` (mixers without one leave it out of their repr)."""
    return "alpha" in mixer._repr_fields()


def _check_schedulable(schedule: MixSchedule, mixer: Mixer, from_epoch: int) -> None:
    """Raise ``ValueError`` for a ramp that goes on past ``from_epoch``, where ``mixer`` starts, and
    that the mixer cannot follow."""
    def ramps(epochs: int | None) -> bool:
        return epochs is not None and epochs > from_epoch

    name = type(mixer).__name__
    if ramps(schedule.alpha_ramp_epochs) and not any(_has_alpha(m) for m in _scheduled_parts(mixer)):
        raise ValueError(f"schedule.alpha_ramp_epochs: {name} has no alpha to ramp")
    if ramps(schedule.prob_ramp_epochs) and isinstance(mixer, LearnedMixer):
        raise ValueError(f"schedule.prob_ramp_epochs: {name} mixes every batch (its prob must stay 1)")
