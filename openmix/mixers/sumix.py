"""SUMix (Qin et al., ECCV 2024): a base mixer's label shares corrected by the model's predictions, plus an
uncertainty regulariser learned by a second linear head.

One step (:meth:`SUMix.step`), as the official code (``JinXins/SUMix``: ``ClsUncertainMixupHead.IN_loss``
and ``MixUpClassification.forward_mix`` with ``is_IN``) does it:

1. **Clean forward**, with gradient: logits ``z_c`` and pooled features ``f_c`` of the batch.
2. **The base mixer** (CutMix by default; any input mixer) draws and mixes the batch as it always does
   (``lam``, ``index``, its mask); the **mixed forward** gives ``z_m`` and ``f_m``.
3. **Uncertainty** of both passes: ``u = l2norm(softmax(W_u f))``, ``W_u`` a second linear head, owned by
   the mixer (:meth:`SUMix.attach` sizes it for the model).
4. **Semantic distance** (:func:`semantic_distance`, detached, no parameters): with ``p_o = softmax(z_c)``
   with the *partner's* class zeroed and ``p_o' = softmax(z_c)[index]`` with the *own* class zeroed,
   ``a = s * l2norm(softmax(softmax(z_m) - p_o))`` and ``a'`` likewise from ``p_o'`` (``s``: ``semantic_scale``).
5. **Corrected shares** (:func:`corrected_lam`): ``lam_a ∝ lam * exp(-a[y_a])``, ``lam_b ∝ (1 - lam) * exp(-a'[y_b])``,
   normalised to sum 1; the targets are ``lam_a * y_a + lam_b * y_b``.
6. **Loss:** ``criterion(z_m, targets) + gamma * mean(lam * CE(exp(-(b + a)), y_a) + (1 - lam) * CE(exp(-(b' + a')), y_b))``
   (:func:`uncertainty_loss`), ``b = u_c + u_m``, ``b' = u_c[index] + u_m``: the "adaptive vectors"
   ``exp(-(b + a))`` are logits of a cross-entropy; its gradient reaches the model and ``W_u`` through ``b`` only.

The step's :class:`~openmix.output.MixOutput` is the base mixer's draw as it made it (``x``, ``lam``,
``index``, ``mask``, where each image's content went), so ``out.dense``, ``out.class_map`` and ``out.boxes``
follow the pixels; ``out.y`` holds the corrected targets the loss used (``out.vector`` and ``out.sparse``
weigh by the pixel shares ``lam``).

**Where openmix departs, on purpose.**

- *Per-sample label weights.* The official loss multiplies the batch-mean cross-entropy by each sample's
  ``lam_a`` and averages (OpenMixup's ``avg_factor``), i.e. ``mean(lam_a) * CE_a + mean(lam_b) * CE_b``;
  openmix weighs each sample's own cross-entropy by its own ``lam_a``.
- *A fixed scale.* The official ``a`` is scaled by the batch size, so the correction changes with ``B``
  (and with the per-GPU batch); openmix scales by ``semantic_scale`` (100: the official value at its
  CIFAR batch of 100), ``None`` for the official ``B``.
- *Stable shares.* ``lam_a = sigmoid(logit(lam) - a[y_a] + a'[y_b])``, the same ratio without
  ``exp(-a)`` underflowing to ``0 / 0`` for large scales.
- *Batched:* no Python loop over the batch (the official zeroes and reads ``a`` sample by sample).
- *Soft targets* (label smoothing, soft labels): the classes zeroed and read are the targets' argmax;
  the cross-entropies take the soft targets.
- Any registered input mixer is a base (the official fork's unpacking works for mixup, CutMix and
  ResizeMix only); the official ``IN_loss`` also ends on an undefined name (``info``).

Only the model is used at test time; ``W_u`` serves the regulariser only.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_number
from openmix.losses import Criterion, soft_cross_entropy
from openmix.mixer import DataInfo, Mixer, Params
from openmix.model_mixer import LearnedMixer, ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import get, register
from openmix.targets import mix_targets, soft_targets

__all__ = ["SUMix", "semantic_distance", "corrected_lam", "uncertainty_loss"]

BaseSpec = Union[str, Mapping[str, Any]]
# the common arguments a base takes from SUMix (so the two never disagree): set them on sumix
SHARED = ("alpha", "num_classes", "mode", "prob", "pairing", "label_smoothing", "seed", "same_on_all_ranks")


def semantic_distance(mixed_logits: Tensor, clean_logits: Tensor, drop: Tensor, scale: float) -> Tensor:
    """SUMix's ``a`` ``(B, C)``: ``scale * l2norm(softmax(softmax(z_mix) - p))``, float32, detached.

    ``p = softmax(z_clean)`` with class ``drop[i]`` zeroed in row ``i`` (the class of the *other* image
    mixed into sample ``i``).

    Args:
        mixed_logits: ``z_mix`` ``(B, C)``, the model on the mixed batch.
        clean_logits: ``z_clean`` ``(B, C)`` of the images compared with (the originals, or their partners).
        drop: class ids ``(B,)`` to zero in ``softmax(z_clean)``.
        scale: the factor (the official: the batch size).

    Example:
        >>> a = semantic_distance(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1]), scale=1.0)
        >>> a  # softmax([0.5, 0.5] - [0.5, 0]) = [0.3775, 0.6225], L2-normalised
        tensor([[0.5186, 0.8550]])
    """
    p_mix = mixed_logits.detach().float().softmax(1)
    p = clean_logits.detach().float().softmax(1).scatter(1, drop.view(-1, 1), 0.0)
    return F.normalize((p_mix - p).softmax(1), dim=1).mul_(scale)


def corrected_lam(lam: Tensor, own: Tensor, partner: Tensor) -> Tensor:
    """The original's corrected share ``(B,)``: ``lam e^-own / (lam e^-own + (1 - lam) e^-partner)``.

    Computed as ``sigmoid(logit(lam) - own + partner)``: no underflow for large distances, and
    ``lam`` 0 or 1 stays 0 or 1.

    Args:
        lam: the base mixer's share of the original ``(B,)``.
        own: ``a[i, y_a[i]]`` ``(B,)``, the distance read at the original's class.
        partner: ``a'[i, y_b[i]]`` ``(B,)``, read at the partner's class.

    Example:
        >>> corrected_lam(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 0.0, 9.0]), torch.tensor([0.0, 0.0, 0.0]))
        tensor([0.2689, 0.5000, 1.0000])
    """
    return torch.sigmoid(torch.logit(lam.float()) - own + partner)


def uncertainty_loss(u_clean: Tensor, u_mixed: Tensor, own: Tensor, partner: Tensor, soft: Tensor, index: Tensor,
                     lam: Tensor) -> Tensor:
    """SUMix's regulariser (before ``gamma``): ``mean(lam * CE(e^-(b + a), y_a) + (1 - lam) * CE(e^-(b' + a'), y_b))``.

    ``b = u_clean + u_mixed`` and ``b' = u_clean[index] + u_mixed``; the "adaptive vectors" ``e^-(b + a)``
    are the logits of the cross-entropies, so the gradient flows through ``u`` only.

    Args:
        u_clean, u_mixed: the uncertainty ``l2norm(softmax(W_u f))`` ``(B, C)`` of the clean and mixed passes.
        own, partner: the semantic distances ``a``, ``a'`` ``(B, C)`` (:func:`semantic_distance`).
        soft: the targets of the originals ``(B, C)``; ``soft[index]`` are the partners'.
        index: the partners ``(B,)``.
        lam: the base mixer's share of the original ``(B,)`` (not the corrected one, as the official).

    Example:
        >>> u = torch.zeros(2, 3)
        >>> uncertainty_loss(u, u, u, u, torch.eye(3)[:2], torch.tensor([1, 0]), torch.tensor([0.5, 0.5]))  # log(3)
        tensor(1.0986)
    """
    own_ce = soft_cross_entropy(torch.exp(-(u_clean + u_mixed + own)), soft, reduction="none")
    partner_ce = soft_cross_entropy(torch.exp(-(u_clean.index_select(0, index) + u_mixed + partner)),
                                    soft.index_select(0, index), reduction="none")
    return torch.lerp(partner_ce, own_ce, lam.to(own_ce.dtype)).mean()


@register("sumix")
class SUMix(LearnedMixer):
    """SUMix: a base input mixer's label shares corrected by the model's predictions, and an uncertainty regulariser.

    Each step runs the model twice (the clean batch and the mixed one, both with gradient), so it costs
    about twice a plain step. The mixer owns the uncertainty head ``W_u`` (:attr:`uncertainty`, a
    ``Linear`` from the model's pooled features to the classes): :meth:`attach` the model and put
    :meth:`param_groups` in the optimizer (``MixupClassifier`` does both). The model needs
    ``forward_features`` and ``forward_head(..., pre_logits=True)`` (openmix's and timm's models).

    Args:
        alpha: the base mixer's ``lam ~ Beta(alpha, alpha)`` (the official CIFAR-100 CutMix: 0.2).
        num_classes: needed for class-id labels (and for the head; else the model's ``num_classes``).
        base: the input mixer SUMix corrects: a registered name or a config ``{"name": ..., **its own
            arguments}``; it takes ``alpha``, ``mode``, ``prob``, ``pairing``, ``seed`` and
            ``same_on_all_ranks`` from SUMix (a config may not set them).
        gamma: weight of the uncertainty regulariser (official configs: 0.5; Tiny-ImageNet 1.0).
        semantic_scale: the scale ``s`` of the semantic distance; ``None``: the batch size (official).
            The official value was set at 100 classes: with 10 (Fashion-MNIST) the default 100 moves
            each label share by about 0.5-0.6 on average and the regulariser's logits underflow to 0
            (``benchmarks/sumix_scale.py`` measures it on the bench's models).
        total_steps, lr, min_lr: see :class:`~openmix.model_mixer.LearnedMixer` (``lr`` ``None``: the
            head trains with the model's lr, as the official head does).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (modes ``batch``, ``elem``, ``pair``
            as the base has them).

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("sumix", num_classes=10, base="cutmix", seed=0).attach(model)
        >>> opt = torch.optim.SGD([{"params": model.parameters()}, *mixer.param_groups()], lr=0.1)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.loss.backward(); opt.step(); opt.zero_grad()
        >>> sorted(step.aux), type(step.mix.mask).__name__
        (['lam_shift', 'mix', 'uncertainty'], 'Tensor')
    """

    mixes = "images with a base mixer and weighs their labels by the model's predictions"
    modes = ("batch", "elem", "pair")

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        base: BaseSpec = "cutmix",
        gamma: float = 0.5,
        semantic_scale: float | None = 100.0,
        total_steps: int | None = None,
        lr: float | None = None,
        min_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, total_steps=total_steps, lr=lr, min_lr=min_lr, **kwargs)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.semantic_scale = None if semantic_scale is None else check_number("semantic_scale", semantic_scale, low=0.0)
        self.base_spec = base if isinstance(base, str) else dict(base)
        self.base = self._build_base(self.base_spec)
        self.spatial_dims = self.base.spatial_dims
        self.uncertainty: nn.Linear | None = None

    # ------------------------------------------------------------------ set-up
    def attach(self, model: nn.Module, input_size: tuple[int, ...] | None = None) -> "SUMix":
        """Build the uncertainty head ``W_u`` for ``model`` (unwrapped from DDP/``torch.compile``); returns ``self``.

        Its width is the model's pooled features (``head_hidden_size``, else ``num_features``: what
        ``forward_head(..., pre_logits=True)`` gives), its device and dtype the model's; weights
        ``N(0, 0.01)``, bias 0 (the official head's). A head already of that shape is kept. Call it
        before making the optimizer.

        Raises:
            TypeError: the model lacks ``forward_features``/``forward_head``, or a pooled-feature width.
            ValueError: neither the mixer nor the model knows ``num_classes``.
        """
        inner = self.feature_model(model)
        width = getattr(inner, "head_hidden_size", None) or getattr(inner, "num_features", None)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise TypeError(f"SUMix's uncertainty head reads the pooled features of forward_head(..., pre_logits=True): "
                            f"{type(inner).__name__} says no width (head_hidden_size or num_features)")
        classes = self.num_classes or getattr(inner, "num_classes", None)
        if not isinstance(classes, int) or classes < 1:
            raise ValueError("SUMix's uncertainty head predicts the classes: pass num_classes")
        head = self.uncertainty
        if head is None or (head.in_features, head.out_features) != (width, classes):
            weight = next(inner.parameters())
            head = nn.Linear(width, classes, device=weight.device, dtype=weight.dtype)
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            self.uncertainty = head
        return self

    @property
    def attached(self) -> bool:
        return self.uncertainty is not None

    def configure_data(self, data: DataInfo) -> None:
        """What the data tells the base mixer."""
        self.base.configure_data(data)

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """``model`` unwrapped, once the mixer is attached and ``model`` has ``forward_features``/``forward_head``."""
        self.require_attached()
        return self.feature_model(model)

    def begin_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
        """Check ``x``, soft targets of ``y``, and the base mixer's draw (its ``prob`` coin included)."""
        self.check_inputs(x)
        soft = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        self.base.alpha = self.alpha  # a schedule's alpha ramp sets this mixer's alpha
        return soft, self.base.sample_params(x)

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Clean and mixed forwards, the corrected targets, the loss and the regulariser (``aux``: each term)."""
        clean_logits, clean_u = self._forward(model, x)
        out = self.base.apply_params(x, soft, params)
        logits, mixed_u = self._forward(model, out.x)
        index, lam = out.index, out.lam
        own_class = soft.argmax(1)
        partner_class = own_class.index_select(0, index)
        scale = float(x.shape[0]) if self.semantic_scale is None else self.semantic_scale
        own = semantic_distance(logits, clean_logits, partner_class, scale)
        partner = semantic_distance(logits, clean_logits.index_select(0, index), own_class, scale)
        lam_a = corrected_lam(lam, own.gather(1, own_class.view(-1, 1)).squeeze(1),
                              partner.gather(1, partner_class.view(-1, 1)).squeeze(1))
        out.y = mix_targets(soft, index, lam_a)
        terms = {
            "mix": criterion(logits, out.y),
            "uncertainty": self.gamma * uncertainty_loss(clean_u, mixed_u, own, partner, soft, index, lam),
        }
        loss = terms["mix"] + terms["uncertainty"]
        aux = {name: value.detach() for name, value in terms.items()}
        aux["lam_shift"] = (lam_a - lam).abs().mean()
        return StepResult(loss, logits, out, aux)

    def plain_step(self, model: nn.Module, x: Tensor, soft: Tensor, criterion: Criterion) -> StepResult:
        """The step of a batch the ``prob`` coin skips: the model on the unmixed batch. The uncertainty head
        takes part with weight 0, so that under DDP its (zero) gradient is averaged on every rank, as on
        the ranks whose batch mixed."""
        logits, u = self._forward(self.feature_model(model), x)
        loss = criterion(logits, soft) + 0.0 * u.sum()
        return StepResult(loss, logits, MixOutput.identity(x, soft))

    # ------------------------------------------------------------------ internals
    def _forward(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """The model's logits of ``x`` and the uncertainty ``l2norm(softmax(W_u f))`` of its pooled features ``f``,
        both heads on the same ``f`` (one head-dropout draw, as the official ``fc`` and ``uncertain``) where the
        model names its classifier (timm's ``get_classifier``)."""
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        classifier = getattr(model, "get_classifier", None)
        logits = classifier()(pooled) if callable(classifier) else model.forward_head(features)
        return logits, F.normalize(self.uncertainty(pooled).softmax(1), dim=1)

    def _build_base(self, spec: BaseSpec) -> Mixer:
        """The base input mixer of ``spec``, with this mixer's common arguments."""
        config = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = config.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"base must be a registered input mixer's name or a config with a 'name', got {spec!r}")
        clash = sorted(set(config) & set(SHARED))
        if clash:
            raise ValueError(f"base sets {clash}: the base mixer takes them from SUMix, set them there "
                             f"(mixer.{clash[0]}=...)")
        cls = get(name)
        if issubclass(cls, ModelMixer):
            raise ValueError(f"SUMix corrects an input mixer's labels; base={name!r} is a {cls.kind} mixer")
        shared = {key: getattr(self, key) for key in SHARED if key != "label_smoothing"}  # smoothed in begin_step
        if "alpha" not in inspect.signature(cls.__init__).parameters:  # SmoothMix, RandomChoice draw no Beta lam
            del shared["alpha"]
        return cls(**shared, **config)

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(base=self.base_spec, gamma=self.gamma, semantic_scale=self.semantic_scale)
        return fields
