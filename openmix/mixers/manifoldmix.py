"""Manifold Mixup (Verma et al., ICML 2019; arXiv 1806.05236): mixup of hidden states at a layer
drawn per step.

One training step (:meth:`ManifoldMix.step`), as the official code does it (``docs/references.md``):

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

**Transformers.** On a timm ViT (DeiT) or Swin the hidden state is mixed as the model holds it:
a ViT's tokens ``(B, P + N, C)``, its class token included (mixed as every token is, which is
what hidden-state mixup of a transformer means), a Swin's NHWC map. ``split_stages`` gives a ViT
a stem and 4 stages of equal depth (fewer with fewer blocks), so the default ``(0, 1, 2)`` is
the input and the tokens after 1/4 and 1/2 of the blocks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from openmix.losses import Criterion, model_mixer_loss, soft_cross_entropy
from openmix.mixer import Draws, Params, mix_hidden
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.targets import mix_targets

__all__ = ["ManifoldMix"]


@register("manifoldmix")
class ManifoldMix(ModelMixer):
    """Manifold Mixup: mixup of the hidden state at a layer drawn per step (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`) or
    :class:`~openmix.lightning.MixupClassifier`. The model must have ``forward_features`` /
    ``forward_head`` and a layout :func:`openmix.models.split_stages` knows (openmix's CIFAR
    models and ``small_convnet``, timm's ResNet/ConvNeXt/RegNet/... families, ViTs and Swins).

    ``MixOutput.x`` of a step is the mixed input when the step mixed at layer 0, else the
    unmixed input (the mixed tensor was a hidden state); ``lam``, ``index`` and the soft
    targets ``lam * y + (1 - lam) * y[index]`` are those of the step. ``mask`` is ``None``.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` (official CIFAR: 2.0; Tiny-ImageNet 0.2).
        num_classes: needed for class-id labels.
        layers: the layers drawn from, uniformly, each step: ``0`` the input, ``k >= 1`` the
            output of ``split_stages(model)[k]`` (see the module notes); default the official
            ``(0, 1, 2)``.
        loss: ``"soft_ce"`` (the ``criterion`` given to :meth:`step`; OpenMixup) or ``"bce"``
            (official: BCE of the softmax against the mixed targets, :func:`~openmix.losses.softmax_bce`).
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
    mixes = "hidden features"
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
        model_mixer_loss(loss, soft_cross_entropy)  # checks the name
        self.layers = chosen
        self.loss = loss

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """``model`` unwrapped, once its stages are known and hold every configured layer."""
        model = self.feature_model(model)
        self.check_layers(len(self.stages_of(model)), model)
        return model

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Mix at this step's layer: the input (the whole model runs on the mix) or a stage's output."""
        layer, index = params["layer"], params["index"]
        weight = params.get("batch_lam", params["lam"])
        if layer == 0:  # input mixup: the whole model as it is
            mixed, lam, _ = self.mix(x, params)
            logits = model(mixed)
        else:
            stages = self.stages_of(model)
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
        return StepResult(self.loss_for(criterion)(logits, target), logits, out)

    def loss_for(self, criterion: Criterion) -> Criterion:
        """``criterion`` (``loss="soft_ce"``) or :func:`~openmix.losses.softmax_bce` (``loss="bce"``)."""
        return model_mixer_loss(self.loss, criterion)

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
    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(layers=self.layers, loss=self.loss)
        return fields
