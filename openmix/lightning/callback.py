"""``MixupCallback``: add an input mixer to your own LightningModule."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import lightning as L
from torch import Tensor

from openmix.lightning.schedules import EpochMix, MixSchedule, ScheduledMixers, unmixed
from openmix.mixer import Mixer
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput
from openmix.training import build_mixer

__all__ = ["MixupCallback"]


class MixupCallback(L.Callback):
    """Mix every training batch before your ``training_step`` sees it.

    Your module's ``training_step(batch, batch_idx)`` receives ``(x_mixed, y_soft)``
    (same container type as your batch: tuple, list, or a dict with ``input_key`` and
    ``target_key``), so its only change is a loss that takes soft targets, such as
    :func:`openmix.losses.soft_cross_entropy`. Validation and test batches are untouched.
    The mixer's state (its generators, and parameters if it has any) is saved in Lightning
    checkpoints, so with a ``seed`` a resumed run draws what an uninterrupted one would.

    A ``schedule`` (:class:`~openmix.lightning.schedules.MixSchedule`) sets the mixer's ``prob``/``alpha``
    at each epoch start (logged as ``train/mix_prob``/``train/mix_alpha``), switches to another input
    mixer, or from ``off_epoch`` on hands your step the unmixed inputs with the mixer's soft
    (label-smoothed) targets, the mixer not called. It follows the epoch, so a resume follows it too.

    Args:
        mixer: an input mixer, a registry name or a config mapping.
        input_key, target_key: keys of dict batches.
        schedule: a :class:`~openmix.lightning.schedules.MixSchedule` or its config mapping; ``None``: none.
        **defaults: defaults for building ``mixer`` from a name (e.g. ``num_classes``).

    Example:
        >>> callback = MixupCallback("cutmix", num_classes=10)
        >>> callback.mixer
        CutMix(alpha=1.0, num_classes=10, mode='batch', prob=1.0, pairing='random')
    """

    def __init__(
        self,
        mixer: Mixer | str | Mapping[str, Any],
        input_key: str = "image",
        target_key: str = "label",
        schedule: MixSchedule | Mapping[str, Any] | None = None,
        **defaults: Any,
    ) -> None:
        built = build_mixer(mixer, **defaults)
        if built is None or isinstance(built, ModelMixer):
            raise ValueError(f"MixupCallback needs an input mixer, got {built!r}; "
                             "other kinds need the model: use MixupClassifier or openmix.training.mix_step")
        self.mixer = built
        self.input_key, self.target_key = input_key, target_key
        self._scheduled = ScheduledMixers.of(schedule, self.mixer, input_only=True)
        self.schedule = None if self._scheduled is None else self._scheduled.schedule
        self.switch_mixer = None if self._scheduled is None else self._scheduled.switch_mixer
        self._epoch_mix: EpochMix | None = None  # what this epoch mixes with, under a schedule
        self._original_step: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mixer=type(self.mixer).__name__, input_key=self.input_key,
                                        target_key=self.target_key)

    def state_dict(self) -> dict[str, Any]:
        state = {"mixer": self.mixer.state_dict()}
        if self.switch_mixer is not None:
            state["switch_mixer"] = self.switch_mixer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state_dict["mixer"])
        if self.switch_mixer is not None and "switch_mixer" in state_dict:
            self.switch_mixer.load_state_dict(state_dict["switch_mixer"])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.schedule is not None and trainer.max_epochs is not None and trainer.max_epochs > 0:
            self.schedule.check_run(trainer.max_epochs)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._scheduled is None:
            return
        self._epoch_mix = epoch = self._scheduled.start_epoch(trainer.current_epoch)
        pl_module.log("train/mix_prob", epoch.prob, on_step=False, on_epoch=True, batch_size=1)
        if epoch.alpha is not None:
            pl_module.log("train/mix_alpha", epoch.alpha, on_step=False, on_epoch=True, batch_size=1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._scheduled is not None:
            self._scheduled.restore()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for mixer in (self.mixer, self.switch_mixer):
            if mixer is not None:
                mixer.to(pl_module.device)
        self._original_step = pl_module.training_step

        @functools.wraps(self._original_step)
        def training_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            return self._original_step(self._mix(batch), *args, **kwargs)

        pl_module.training_step = training_step  # instance attribute shadows the method

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._original_step is not None:
            del pl_module.training_step  # the class method is visible again
            self._original_step = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)

    def _mix(self, batch: Any) -> Any:
        if isinstance(batch, Mapping):
            out = self._mix_pair(batch[self.input_key], batch[self.target_key])
            return {**batch, self.input_key: out.x, self.target_key: out.y}
        if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor):
            out = self._mix_pair(batch[0], batch[1])
            return type(batch)([out.x, out.y, *batch[2:]])
        raise TypeError(
            "MixupCallback expects batches (x, y, ...) as a tuple/list or a dict with keys "
            f"{self.input_key!r}/{self.target_key!r}, got {type(batch).__name__}"
        )

    def _mix_pair(self, x: Tensor, y: Tensor) -> MixOutput:
        """This epoch's mix of ``(x, y)``: the unmixed ``x`` with soft targets while the schedule has mixing off."""
        epoch = self._epoch_mix
        if epoch is None:
            return self.mixer(x, y)
        return epoch.mixer(x, y) if epoch.mixing else unmixed(epoch.mixer, x, y)
