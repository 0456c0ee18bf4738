"""Manifold Mixup (Verma et al., ICML 2019; arXiv 1806.05236): mixup of hidden states at a layer
drawn per step.

One training step (:meth:`ManifoldMix.training_step`), as the official code
(``vikasverma1077/manifold_mixup``, ``supervised/models/preresnet.py::forward``) does it:

1. draw the mixing layer ``k`` uniformly from ``layers``, one ``lam ~ Beta(alpha, alpha)``
   and a partner permutation ``index`` for the batch;
2. run the model up to layer ``k``, mix the hidden state ``h = lam * h + (1 - lam) * h[index]``,
   run the rest of the model and its head;
3. loss against ``lam * y + (1 - lam) * y[index]``.

**Layers.** The model is cut by :func:`openmix.models.split_stages` into
``stages = [stem, stage1, ..., stageN]``. Layer ``0`` is the input (plain input mixup);
layer ``k >= 1`` is the output of ``stages[k]``, i.e. after ``stages[0] ... stages[k]``: the
stem is folded into layer 1. The default ``(0, 1, 2)`` is the official set {input,
conv1 + layer1, layer2} of the PreAct-ResNet: on openmix's CIFAR ResNets layer 1 is after
``conv1/bn1/act1`` and ``layer1``, layer 2 after ``layer2``; the largest layer is ``N`` (the
last feature map, before pooling). ``layers`` is checked against the model at every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import wrapped_model_hint
from openmix.mixer import Draws, Mixer, Params, gather_partner
from openmix.output import MixOutput
from openmix.registry import register
from openmix.targets import mix_targets

if TYPE_CHECKING:  # openmix.training imports the registry; import it lazily at run time
    from openmix.training import StepResult

__all__ = ["ManifoldMix", "feature_stages", "mix_hidden", "softmax_bce"]

LOSSES = ("soft_ce", "bce")


def feature_stages(model: nn.Module, mixer: str = "a feature mixer") -> list[nn.Module]:
    """``split_stages(model)``, with an error that says what a feature mixer needs from the model.

    Raises:
        TypeError: ``model`` lacks ``forward_features``/``forward_head``, or
            :func:`~openmix.models.split_stages` does not know its layout.
    """
    from openmix.models.stages import split_stages  # imports timm: only when a step needs it

    missing = [name for name in ("forward_features", "forward_head") if not callable(getattr(model, name, None))]
    reason = None
    if missing:
        reason = f"it has no {' / '.join(missing)}"
    else:
        try:
            return split_stages(model)
        except TypeError as err:
            reason = str(err)
    wrapped = wrapped_model_hint(model)
    raise TypeError(
        f"{mixer} mixes hidden features, so it runs the model stage by stage: it needs a model with "
        f"forward_features/forward_head whose layout openmix.models.split_stages knows; got {type(model).__name__}: "
        f"{reason}{wrapped}"
    )


def mix_hidden(h: Tensor, index: Tensor, lam: Tensor | float) -> Tensor:
    """``lam * h + (1 - lam) * h[index]`` along the batch; ``lam`` is one number or ``(B,)``.

    Gradients reach ``h`` through both terms. The result is a new tensor (``h`` is untouched).

    Example:
        >>> mix_hidden(torch.tensor([[1.0], [3.0]]), torch.tensor([1, 0]), 0.25)
        tensor([[2.5000],
                [1.5000]])
    """
    if isinstance(lam, Tensor):
        lam = lam.to(h.dtype).view((-1,) + (1,) * (h.ndim - 1))
    return torch.lerp(gather_partner(h, index), h, lam)


def softmax_bce(logits: Tensor, target: Tensor) -> Tensor:
    """The official Manifold Mixup loss: ``nn.BCELoss()(softmax(logits), target)``.

    Binary cross-entropy of every class probability against the soft target, averaged over
    ``B * C`` terms, each log clamped at ``-100`` as ``nn.BCELoss`` does; computed from
    ``log_softmax`` in float32 (safe under autocast).

    Example:
        >>> round(float(softmax_bce(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)  # -log(0.5)
        0.6931
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_not_p = torch.log1p(-log_p.exp())
    target = target.to(log_p.dtype)
    return -(target * log_p.clamp_min(-100.0) + (1.0 - target) * log_not_p.clamp_min(-100.0)).mean()


@register("manifoldmix")
class ManifoldMix(Mixer):
    """Manifold Mixup: mixup of the hidden state at a layer drawn per step (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`training_step`) or
    :class:`~openmix.lightning.MixupClassifier`. The model must have ``forward_features`` /
    ``forward_head`` and a layout :func:`openmix.models.split_stages` knows (openmix's CIFAR
    models and ``small_convnet``, timm's ResNet/ConvNeXt/RegNet/... families).

    ``MixOutput.x`` of a step is the mixed input when the step mixed at layer 0, else the
    unmixed input (the mixed tensor was a hidden state); ``lam``, ``index`` and the soft
    targets ``lam * y + (1 - lam) * y[index]`` are those of the step. ``mask`` is ``None``.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` (official CIFAR: 2.0; Tiny-ImageNet 0.2).
        num_classes: needed for class-id labels.
        layers: the layers drawn from, uniformly, each step: ``0`` the input, ``k >= 1`` the
            output of ``split_stages(model)[k]`` (see the module notes); default the official
            ``(0, 1, 2)``.
        loss: ``"soft_ce"`` (the ``criterion`` given to :meth:`training_step`; OpenMixup) or
            ``"bce"`` (official: BCE of the softmax against the mixed targets, :func:`softmax_bce`).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (``mode="elem"`` draws
            one ``lam`` per sample; the official code draws one per batch).

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("manifoldmix", num_classes=10, layers=(2,), seed=0)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.logits.shape, step.mix.y.sum(1)
        (torch.Size([4, 10]), tensor([1., 1., 1., 1.]))
    """

    kind = "feature"
    spatial_dims = None  # the model decides what it takes

    def __init__(
        self,
        alpha: float = 2.0,
        num_classes: int | None = None,
        *,
        layers: Sequence[int] | int = (0, 1, 2),
        loss: str = "soft_ce",
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        chosen = (layers,) if isinstance(layers, int) else tuple(layers)
        if not chosen or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in chosen):
            raise ValueError(f"layers must be integers >= 0 (0 = the input, k = after stage k), got {layers!r}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"layers must not repeat a layer, got {layers!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.layers = chosen
        self.loss = loss

    # ------------------------------------------------------------------ calls
    def forward(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        """Not available: Manifold Mixup mixes hidden states, so it needs the model."""
        raise self.needs_model("hidden features")

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, criterion: Any) -> "StepResult":
        """One step: draw layer, ``lam`` and partners, mix at that layer, loss on the logits.

        A batch the ``prob`` coin skips is a plain step on the unmixed batch.
        """
        from openmix.training import StepResult

        stages = feature_stages(model, type(self).__name__)
        self.check_layers(len(stages), model)
        soft, params = self.begin_step(x, y)
        if params.get("identity", False):
            logits = model(x)
            return StepResult(self._loss(criterion, logits, soft), logits, MixOutput.identity(x, soft))
        layer, index = params["layer"], params["index"]
        weight = params.get("batch_lam", params["lam"])
        if layer == 0:  # input mixup: the whole model as it is
            mixed, lam, _ = self.mix(x, params)
            logits = model(mixed)
        else:
            h = x
            for stage in stages[: layer + 1]:
                h = stage(h)
            h, lam, _ = self.mix(h, params)
            for stage in stages[layer + 1 :]:
                h = stage(h)
            logits = model.forward_head(h)
            mixed = x
        target = mix_targets(soft, index, weight)
        out = MixOutput(x=mixed, y=target, lam=lam, index=index)
        return StepResult(self._loss(criterion, logits, target), logits, out)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``layer``: the mixing layer of this call (a host int), drawn on the host stream."""
        params = super().draw_params(x, draws)
        pick = 0 if len(self.layers) == 1 else int(torch.randint(len(self.layers), (), generator=draws.host))
        params["layer"] = self.layers[pick]
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, None]:
        """Mix any batch tensor ``(B, ...)`` (the input or a hidden state) with ``lam`` and ``index``."""
        mixed = mix_hidden(x, params["index"], params.get("batch_lam", params["lam"]))
        return mixed, params["lam"], None

    def check_layers(self, num_stages: int, model: nn.Module | None = None) -> None:
        """Raise ``ValueError`` unless every configured layer exists in a model of ``num_stages`` modules."""
        bad = [k for k in self.layers if k >= num_stages]
        if bad:
            name = type(model).__name__ if model is not None else "the model"
            raise ValueError(
                f"ManifoldMix layers {bad} do not exist in {name}: split_stages gives {num_stages} modules "
                f"[stem, stage1, ..., stage{num_stages - 1}], so layers run from 0 (the input) to "
                f"{num_stages - 1} (after the last stage)"
            )

    # ------------------------------------------------------------------ internals
    def _loss(self, criterion: Any, logits: Tensor, target: Tensor) -> Tensor:
        return criterion(logits, target) if self.loss == "soft_ce" else softmax_bce(logits, target)

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(layers=self.layers, loss=self.loss)
        return fields
