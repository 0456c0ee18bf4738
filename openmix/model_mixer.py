"""Model-aware mixers: the typed contract of the saliency, feature and learned kinds.

An input mixer needs only the batch, ``mixer(x, y)``. A model-aware mixer needs the model as
well, so its unit of work is a whole training step, :meth:`ModelMixer.step`::

    soft, params = mixer.begin_step(x, y)         # check the batch, soft targets, this call's draws
    if params.get("identity"):                    # a batch the prob coin skips
        return mixer.plain_step(model, x, soft, criterion)
    return mixer.mixed_step(model, x, soft, params, criterion)   # each mixer's own

:func:`openmix.training.mix_step`, :class:`~openmix.lightning.MixupClassifier` and
``openmix-train`` use exactly this contract: :meth:`ModelMixer.step`,
:meth:`~openmix.mixer.Mixer.configure_data`, and for a :class:`LearnedMixer` also
:meth:`~LearnedMixer.attach`, :meth:`~LearnedMixer.param_groups`, ``total_steps``, ``lr`` and
``min_lr``. A new model-aware mixer is one subclass: its ``kind``, its draws
(:meth:`~openmix.mixer.Mixer.draw_params`), :meth:`ModelMixer.mixed_step`, and
:meth:`ModelMixer.check_model` when it needs more from the model than a forward pass.

**DDP.** ``step(DDP(model), ...)`` runs the whole step inside the DDP wrapper's forward (the
way Lightning runs a ``training_step``), so the stage-by-stage passes, saliency passes and
teacher passes on the inner model all count as one DDP forward and the next ``backward()``
all-reduces the model's gradients. A learned mixer's own parameters (its Mix Block) are not
the wrapper's, so the step also averages their gradients over the wrapper's process group
(unless inside ``no_sync()``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from openmix.checks import check_int, check_number
from openmix.losses import Criterion, soft_cross_entropy
from openmix.mixer import Mixer, Params
from openmix.output import MixOutput, StepResult
from openmix.targets import soft_targets

__all__ = ["ModelMixer", "LearnedMixer", "trains_with"]


class ModelMixer(Mixer):
    """Base class of the mixers that need the model: the saliency and feature kinds (and :class:`LearnedMixer`).

    Subclasses set ``kind`` (``"saliency"`` or ``"feature"``) and ``mixes`` (what they mix, for
    the error that ``mixer(x, y)`` raises), and implement :meth:`mixed_step`.

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("manifoldmix", num_classes=10, seed=0)
        >>> isinstance(mixer, ModelMixer), mixer.kind
        (True, 'feature')
        >>> step = mixer.step(model, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.logits.shape
        torch.Size([4, 10])
    """

    kind: ClassVar[str] = "feature"
    mixes: ClassVar[str] = "with the model"
    """What the mixer mixes, as the error of ``mixer(x, y)`` says it: ``"hidden features"``, ..."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.spatial_axes is not None:
            raise ValueError(f"{type(self).__name__} runs the model on the batch as it is: spatial_axes is for input "
                             "mixers (fold a video's frames yourself, or mix it with an input mixer)")

    def forward(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        """Not available: the mixer needs the model; use :meth:`step` (or :func:`openmix.training.mix_step`)."""
        raise TypeError(
            f"{type(self).__name__} mixes {self.mixes}, so it needs the model: train with "
            "openmix.training.mix_step(model, mixer, x, y) (it calls mixer.step) or openmix.lightning.MixupClassifier"
        )

    def step(self, model: nn.Module, x: Tensor, y: Tensor, criterion: Criterion = soft_cross_entropy) -> StepResult:
        """One training step: mix with the model's help, run it, and compute the loss.

        Args:
            model: maps ``(B, C, H, W)`` to logits ``(B, num_classes)``; may be wrapped in
                ``DistributedDataParallel`` (see the module notes).
            x: inputs on the training device.
            y: class ids ``(B,)`` or soft targets ``(B, C)``.
            criterion: loss of ``(logits, soft targets)``.

        Returns:
            :class:`~openmix.output.StepResult`: the loss to backpropagate, the logits of the
            mixed batch, its :class:`~openmix.output.MixOutput`, and the loss's terms in ``aux``.
        """
        ddp = model if isinstance(model, DistributedDataParallel) else None
        self._sync_own_gradients(ddp)
        if ddp is None:
            return self._step(model, x, y, criterion)
        return _in_ddp_forward(ddp, lambda inner: self._step(inner, x, y, criterion))

    def _step(self, model: nn.Module, x: Tensor, y: Tensor, criterion: Criterion) -> StepResult:
        model = self.check_model(model)
        soft, params = self.begin_step(x, y)
        if params.get("identity", False):
            return self.plain_step(model, x, soft, criterion)
        return self.mixed_step(model, x, soft, params, criterion)

    def begin_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
        """The start of a step: check ``x``, soft targets ``(B, C)`` of ``y``, and this call's draws."""
        self.check_inputs(x)
        soft = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        return soft, self.sample_params(x)

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """The step of a batch that mixes: ``soft`` are the targets ``(B, C)``, ``params`` this call's draws."""
        raise NotImplementedError

    def plain_step(self, model: nn.Module, x: Tensor, soft: Tensor, criterion: Criterion) -> StepResult:
        """The step of a batch the ``prob`` coin skips: the model on the unmixed batch."""
        logits = model(x)
        return StepResult(self.loss_for(criterion)(logits, soft), logits, MixOutput.identity(x, soft))

    def train_on_mix(self, model: nn.Module, out: MixOutput, criterion: Criterion,
                     extra: Tensor | None = None) -> StepResult:
        """The step's result on the mixed batch ``out``: the model's logits of ``out.x``, this mixer's loss
        (:meth:`loss_for`) against ``out.y``, plus ``extra`` (e.g. a saliency pass's clean loss) when given."""
        logits = model(out.x)
        loss = self.loss_for(criterion)(logits, out.y)
        return StepResult(loss if extra is None else loss + extra, logits, out)

    def check_model(self, model: nn.Module) -> nn.Module:
        """The model the step runs; raise ``TypeError`` if it lacks what this mixer needs (here: nothing)."""
        return model

    def feature_model(self, model: nn.Module) -> nn.Module:
        """``model`` unwrapped from DDP/``torch.compile``, checked to have ``forward_features`` and ``forward_head``.

        Raises:
            TypeError: naming this mixer, what it mixes and the missing methods.
        """
        from openmix.models.stages import check_head  # model introspection imports timm: only when a step needs it

        return check_head(model, type(self).__name__, self.mixes)

    def stages_of(self, model: nn.Module) -> list[nn.Module]:
        """:func:`~openmix.models.stages.split_stages` of ``model`` unwrapped, with this mixer's name in its errors."""
        from openmix.models.stages import feature_stages

        return feature_stages(model, type(self).__name__)

    def loss_for(self, criterion: Criterion) -> Criterion:
        """The loss of the step's logits and targets: the trainer's ``criterion`` unless the mixer has its own."""
        return criterion

    def _sync_own_gradients(self, ddp: DistributedDataParallel | None) -> None:
        """Called before each step with the DDP wrapper of the model, if any; see :class:`LearnedMixer`."""


class LearnedMixer(ModelMixer):
    """Base class of the mixers with parameters of their own (a Mix Block, an EMA teacher).

    Before training, :meth:`attach` the model (builds what the mixer learns with, sized for the
    model) and put :meth:`param_groups` in the optimizer. The mixer's parameters are its
    submodules, so ``state_dict()`` and a Lightning checkpoint hold them.

    Args:
        total_steps: training steps of the run, for schedules inside the mixer (``MixupClassifier``
            sets it from the trainer); ``None`` where none is known.
        lr: learning rate of the mixer's parameter group; ``None``: the optimizer's.
        min_lr: the floor of the group's own cosine schedule (``MixupClassifier``); ``None``: the
            group follows the model's schedule.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.
    """

    kind: ClassVar[str] = "learned"

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        total_steps: int | None = None,
        lr: float | None = None,
        min_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps, 1)
        self.lr = None if lr is None else check_number("lr", lr, low=0.0)
        self.min_lr = None if min_lr is None else check_number("min_lr", min_lr, low=0.0)
        self._grad_group: Any = None  # the process group to average the own gradients over in the coming backward
        self._grad_hooks: dict[int, Any] = {}  # id(parameter) -> (the parameter, its hook handle)

    def attach(self, model: nn.Module, input_size: tuple[int, ...] | None = None) -> "LearnedMixer":
        """Build the mixer's own parts for ``model`` (unwrapped from DDP); returns ``self``.

        Call it once, before the optimizer is made. ``input_size`` ``(C, H, W)`` is the size of one
        input, where the mixer needs to run the model to size its parts.
        """
        raise NotImplementedError

    @property
    def attached(self) -> bool:
        """Whether :meth:`attach` has built the mixer's parts."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter group of the mixer's trainable parameters (with ``lr`` when set)."""
        self.require_attached()
        group: dict[str, Any] = {"params": [p for p in self.parameters() if p.requires_grad]}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    def require_attached(self) -> None:
        """Raise ``RuntimeError`` unless :meth:`attach` was called."""
        if not self.attached:
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a model: call mixer.attach(model) before making the "
                "optimizer, and put mixer.param_groups() in it (MixupClassifier does both)"
            )

    def _sync_own_gradients(self, ddp: DistributedDataParallel | None) -> None:
        """Average this mixer's gradients over ``ddp``'s process group in the coming backward.

        DDP reduces only the wrapped model's gradients; a hook on each of the mixer's trainable
        parameters averages its gradient once it has been accumulated, while a step under DDP
        asked for it (not inside ``no_sync()``). Under Lightning the whole LightningModule, mixer
        included, is the wrapped module, so its steps pass no wrapper and nothing is added.
        """
        syncing = ddp is not None and ddp.require_backward_grad_sync and torch.is_grad_enabled()
        self.__dict__["_grad_group"] = ddp.process_group if syncing else None
        if not syncing:
            return
        for p in self.parameters():
            if p.requires_grad and id(p) not in self._grad_hooks:
                self._grad_hooks[id(p)] = (p, p.register_post_accumulate_grad_hook(self._average_gradient))

    def _average_gradient(self, p: Tensor) -> None:
        group = self._grad_group
        if group is not None and p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(dist.get_world_size(group))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_grad_group"], state["_grad_hooks"] = None, {}  # hooks and process groups stay with this process
        return state


def _in_ddp_forward(ddp: DistributedDataParallel, step: Callable[[nn.Module], StepResult]) -> StepResult:
    """``step(ddp.module)`` run as the forward of ``ddp``, so DDP prepares the gradient all-reduce.

    The inner module's ``forward`` is swapped for one call: DDP's forward then runs the step, whose
    own calls of the model see the original ``forward`` again (it is restored on entry). The step's
    loss and logits come back through DDP's output handling.
    """
    inner = ddp.module
    own = "forward" in inner.__dict__
    original = inner.__dict__.get("forward")
    result: list[StepResult] = []

    def restore() -> None:
        if own:
            inner.forward = original
        else:
            inner.__dict__.pop("forward", None)

    def redirected(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        restore()
        result.append(step(inner))
        return result[0].loss, result[0].logits

    inner.forward = redirected
    try:
        loss, logits = ddp()
    finally:
        restore()
    return StepResult(loss, logits, result[0].mix, result[0].aux)


def trains_with(mixer: Mixer, model: nn.Module) -> bool:
    """Whether ``mixer`` can train ``model``: an input mixer any model, a model-aware one a model its
    :meth:`~ModelMixer.check_model` accepts (a :class:`LearnedMixer`: one it can :meth:`~LearnedMixer.attach`,
    which it does, so pass a fresh mixer). A ``TypeError`` of the check means no.

    Example:
        >>> import openmix
        >>> from openmix.models import create_model
        >>> cnn = create_model("small_convnet", num_classes=10, in_chans=1)
        >>> trains_with(openmix.build("cutmix"), cnn), trains_with(openmix.build("transmix", num_classes=10), cnn)
        (True, False)
    """
    if not isinstance(mixer, ModelMixer):
        return True
    try:
        if isinstance(mixer, LearnedMixer):
            mixer.attach(model)
        else:
            mixer.check_model(model)
    except TypeError:
        return False
    return True
