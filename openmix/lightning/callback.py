"""``MixupCallback``: add an input mixer to your own LightningModule."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import lightning as L
from torch import Tensor

from openmix.mixer import Mixer
from openmix.model_mixer import ModelMixer
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

    Args:
        mixer: an input mixer, a registry name or a config mapping.
        input_key, target_key: keys of dict batches.
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
        **defaults: Any,
    ) -> None:
        built = build_mixer(mixer, **defaults)
        if built is None or isinstance(built, ModelMixer):
            raise ValueError(f"MixupCallback needs an input mixer, got {built!r}; "
                             "other kinds need the model: use MixupClassifier or openmix.training.mix_step")
        self.mixer = built
        self.input_key, self.target_key = input_key, target_key
        self._original_step: Any = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mixer=type(self.mixer).__name__, input_key=self.input_key,
                                        target_key=self.target_key)

    def state_dict(self) -> dict[str, Any]:
        return {"mixer": self.mixer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state_dict["mixer"])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.mixer.to(pl_module.device)
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
            out = self.mixer(batch[self.input_key], batch[self.target_key])
            return {**batch, self.input_key: out.x, self.target_key: out.y}
        if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor):
            out = self.mixer(batch[0], batch[1])
            return type(batch)([out.x, out.y, *batch[2:]])
        raise TypeError(
            "MixupCallback expects batches (x, y, ...) as a tuple/list or a dict with keys "
            f"{self.input_key!r}/{self.target_key!r}, got {type(batch).__name__}"
        )
