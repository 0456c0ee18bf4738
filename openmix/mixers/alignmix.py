"""AlignMix (Venkataramanan et al., CVPR 2022; arXiv 2103.15375): mixup of the last feature maps
after aligning their positions by optimal transport.

One training step (:meth:`AlignMix.step`), as the official code does it (``docs/references.md``):

1. one ``lam ~ Beta(alpha, alpha)`` (alpha 2) and a partner permutation for the batch; a fair
   coin chooses between
2. a) plain **input mixup** of the images, or
   b) **alignment** at the last feature map ``A = model.forward_features(x)`` ``(B, C, H, W)``
   (the output of the last stage, before pooling), seen as ``N = H W`` vectors of ``C``
   features, against its partner's ``A' = A[index]``:

   * cost: squared L2 distance between the raw feature vectors of every position pair,
     ``cost[b, i, j] = |A[b, :, i] - A'[b, :, j]|^2`` (:func:`feature_cost`);
   * plan ``P`` ``(B, N, N)``: entropic optimal transport between uniform marginals ``1/N``
     by log-domain Sinkhorn, ``eps = 0.1``, at most 100 iterations (:func:`sinkhorn`);
     detached, and scaled to ``R = N * P`` (not row-normalised);
   * a second fair coin picks the direction (:func:`align_mix`), with ``A`` and ``A'`` as
     ``(B, C, N)`` matrices: ``lam * A + (1 - lam) * A' R^T`` (the partner carried onto the
     sample's positions) or ``lam * A R + (1 - lam) * A'`` (the sample carried onto the
     partner's positions);
   * the mixed map goes through ``model.forward_head``;
3. loss against ``lam * y + (1 - lam) * y[index]`` in both branches (the official
   ``mixup_criterion`` of cross-entropies, i.e. soft-target CE).

Gradients reach the model through both feature maps; the plan carries none.

**Transformers** (openmix's extension; the official code is CNN-only). The positions are those
of :func:`openmix.models.token_map`: a Swin's last NHWC map is aligned as a CNN's; a ViT's
patch tokens are its positions on the patch grid, aligned the same way, while its prefix tokens
(class, distillation, register tokens), which have no position, are mixed by plain mixup with
the same ``lam``. A ViT that classifies from its class token alone (timm's ``global_pool='token'``,
DeiT's default) is refused: its head never reads the patch tokens, so an aligned mix could not
change its logits; build it with ``global_pool='avg'`` (or ``'map'``) to use AlignMix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.losses import Criterion
from openmix.mixer import Draws, Params, gather_partner, mix_hidden, no_autocast
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.sampling import host_coin
from openmix.targets import mix_targets

__all__ = ["AlignMix", "sinkhorn", "feature_cost", "align_mix"]

_MARGINAL_EPS = 1e-8  # inside the log of the official marginals


# ============================================================================ transport
@torch.no_grad()
def check_sinkhorn_settings(eps: float, max_iter: int, tol: float, check_every: int | None) -> None:
    """``ValueError`` naming the first Sinkhorn setting out of range (see :func:`sinkhorn`)."""
    check_number("eps", eps, low=0.0)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    check_number("tol", tol, low=0.0)
    check_int("max_iter", max_iter, 1)
    if check_every is not None:
        check_int("check_every", check_every, 0)


def sinkhorn(cost: Tensor, eps: float = 0.1, max_iter: int = 100, tol: float = 0.1, *,
             check_every: int | None = None) -> Tensor:
    """Entropic optimal transport plans between uniform marginals, batched, in the log domain.

    The official ``SinkhornDistance``: potentials ``u`` ``(B, N)`` and ``v``
    ``(B, M)`` start at 0; each iteration sets
    ``u = eps * (log(1/N + 1e-8) - logsumexp_j((-cost + u_i + v_j) / eps)) + u``, then ``v`` the
    same way over ``i`` with the new ``u``, and stops once the batch mean of
    ``sum_i |u - u_prev|`` is below ``tol``, or after ``max_iter`` iterations; the plan is
    ``exp((-cost + u_i + v_j) / eps)``. Its columns sum to ``1/M``; its rows sum to ``1/N``
    once it has converged (which on raw CNN features often takes more than ``max_iter``
    iterations: the official code uses the plan as it is then). Computed here with the potentials divided by ``eps`` (the
    same iterates in exact arithmetic), in float32 or float64, with no gradient.

    **When it stops, and what that costs.** The stopping rule needs a decision on the host,
    and reading a device value makes the host wait for the device. Every iteration's
    potentials are kept (``(max_iter + 1) * B * (N + M)`` floats), so the plan is that of the
    first iteration that met the rule, as the official per-iteration check gives, whichever
    way it is found:

    * ``check_every = k >= 1``: the rule is read on the host every ``k`` iterations, and the
      loop stops at the first read that finds it met (one host-device synchronisation per
      ``k`` iterations; free on the CPU);
    * ``check_every = 0``: never read on the host: all ``max_iter`` iterations run and the
      stopping iteration is picked on the device, so the call never waits on the device.

    The default is ``1`` on the CPU and ``0`` on accelerators: on raw CNN features (squared
    distances of hundreds against ``eps = 0.1``) the rule is rarely met within 100 iterations,
    as in the official code, so early exits would save little, while each synchronisation
    drains the device's queue (the host then launches the small Sinkhorn kernels with the
    device idle, instead of while it still runs the forward pass). An iteration is 6 kernels:
    per side, one subtraction, one fused ``log_softmax`` and one subtraction written into the
    history (``logsumexp_j(t_ij) = t_i0 - log_softmax(t)_i0``, as precise in float32 as the
    official ``-cost + u + v``).

    Args:
        cost: ``(B, N, M)`` (or ``(N, M)``) transport costs.
        eps: entropic regularisation.
        max_iter: iteration limit.
        tol: stopping threshold on the batch mean of ``sum_i |u - u_prev|``.
        check_every: iterations between host reads of the stopping rule, ``0`` for none (see
            above); ``None``: 1 on the CPU, 0 on accelerators.

    Returns:
        The plans ``(B, N, M)`` (``(N, M)`` for a 2-D ``cost``), each summing to 1; detached.

    Example:
        >>> cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> sinkhorn(cost).round(decimals=4)  # mass stays where it costs nothing
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]])
    """
    check_sinkhorn_settings(eps, max_iter, tol, check_every)
    if not isinstance(cost, Tensor) or cost.ndim not in (2, 3):
        raise ValueError(f"cost must be a (B, N, M) or (N, M) tensor, got {getattr(cost, 'shape', type(cost).__name__)}")
    single = cost.ndim == 2
    if single:
        cost = cost.unsqueeze(0)
    batch, rows, cols = cost.shape
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
    with no_autocast(cost.device):
        log_k = cost.detach().to(dtype).div(-eps)  # (B, N, M): -cost / eps
        log_mu, log_nu = math.log(1.0 / rows + _MARGINAL_EPS), math.log(1.0 / cols + _MARGINAL_EPS)
        # With f = u / eps, g = v / eps, the official updates are f = log_mu - lse_j(K + g) and
        # g = log_nu - lse_i(K + f). Iterated here as p = log_mu - f and q = log_nu - g:
        # p = lse_j(K + log_nu - q), q = lse_i(K + log_mu - p); |u - u_prev| = eps |p - p_prev|.
        row_k = log_k + log_nu  # (B, N, M)
        col_k = (log_k + log_mu).transpose(1, 2).contiguous()  # (B, M, N): both updates reduce the last axis
        p_all = log_k.new_empty(max_iter + 1, batch, rows)  # p after each iteration; [0]: f = 0
        q_all = log_k.new_empty(max_iter + 1, batch, cols)
        p_all[0], q_all[0] = log_mu, log_nu
        # mean_b sum_i |u - u_prev| < tol  <=>  sum_(b, i) |p - p_prev| < tol * B / eps
        threshold = tol * batch / eps
        every = (1 if cost.device.type == "cpu" else 0) if check_every is None else check_every
        stop: int | Tensor = max_iter
        checked = 0  # iterations whose change has been read on the host
        for step in range(1, max_iter + 1):
            t = row_k - q_all[step - 1].unsqueeze(1)
            torch.sub(t[:, :, 0], torch.log_softmax(t, 2)[:, :, 0], out=p_all[step])
            t = col_k - p_all[step].unsqueeze(1)
            torch.sub(t[:, :, 0], torch.log_softmax(t, 2)[:, :, 0], out=q_all[step])
            if every and (step % every == 0 or step == max_iter):
                passed = _changes(p_all, checked, step) < threshold
                checked = step
                if bool(passed.any()):  # the host read
                    stop = step - len(passed) + 1 + int(passed.int().argmax())
                    break
        if not every:  # the first iteration that met the rule, found on the device
            passed = _changes(p_all, 0, max_iter) < threshold
            stop = torch.where(passed.any(), passed.int().argmax() + 1, max_iter).view(1)
        p = p_all.index_select(0, stop)[0] if isinstance(stop, Tensor) else p_all[stop]
        q = q_all.index_select(0, stop)[0] if isinstance(stop, Tensor) else q_all[stop]
        plan = (row_k + log_mu).sub_(p.unsqueeze(2)).sub_(q.unsqueeze(1)).exp_()  # exp(K + f + g)
    return plan[0] if single else plan


def _changes(p_all: Tensor, first: int, last: int) -> Tensor:
    """``sum_(b, i) |p - p_prev|`` of iterations ``first + 1 .. last``, ``(last - first,)``."""
    return (p_all[first + 1 : last + 1] - p_all[first:last]).abs_().sum((1, 2))


def feature_cost(a: Tensor, b: Tensor) -> Tensor:
    """Squared L2 distances ``(B, N, M)`` between the columns of ``a`` ``(B, C, N)`` and ``b`` ``(B, C, M)``.

    ``|a_i|^2 + |b_j|^2 - 2 a_i . b_j`` by one batched matrix product (clamped at 0), in
    float32 (float64 inputs stay float64) also under autocast, without gradient: the official
    ``_cost_matrix(p=2)`` without its ``(B, N, M, C)`` intermediate.

    Example:
        >>> feature_cost(torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[3.0]]]))
        tensor([[[9.],
                 [4.]]])
    """
    # no autocast: a bf16/fp16 product would err by ~1 on costs of hundreds, i.e. ~10 in cost / eps
    with torch.no_grad(), no_autocast(a.device):
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        a, b = a.detach().to(dtype), b.detach().to(dtype)
        cross = torch.bmm(a.transpose(1, 2), b)  # (B, N, M)
        return (a.square().sum(1).unsqueeze(2) + b.square().sum(1).unsqueeze(1)).sub_(cross, alpha=2.0).clamp_min_(0.0)


def align_mix(features: Tensor, index: Tensor, lam: Tensor | float, plan: Tensor, direction: int) -> Tensor:
    """Mix ``features`` ``(B, C, H, W)`` with their partners ``features[index]`` through a transport plan.

    With ``A = features`` and ``A' = features[index]`` as ``(B, C, N)`` matrices (``N = H W``)
    and ``R = N * plan`` (``plan`` ``(B, N, N)`` between the positions of ``A``, rows, and
    those of ``A'``, columns, marginals ``1/N``):

    * ``direction = 0``: ``lam * A + (1 - lam) * A' R^T``: the partner's features carried onto
      the sample's positions;
    * ``direction = 1``: ``lam * A R + (1 - lam) * A'``: the sample's features carried onto the
      partner's positions.

    With the identity plan ``eye(N) / N`` both are plain feature mixup. ``lam`` is one number
    or ``(B,)``; gradients reach ``features`` through both terms, none reaches ``plan``.

    Example:
        >>> feats = torch.arange(8.0).view(2, 1, 2, 2)
        >>> identity = torch.eye(4).expand(2, 4, 4) / 4
        >>> torch.equal(align_mix(feats, torch.tensor([1, 0]), 0.5, identity, 0), (feats + feats.flip(0)) / 2)
        True
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    batch, channels, height, width = features.shape
    n = height * width
    if plan.shape != (batch, n, n):
        raise ValueError(f"plan must be (B, H*W, H*W) = {(batch, n, n)}, got {tuple(plan.shape)}")
    if direction not in (0, 1):
        raise ValueError(f"direction must be 0 (A' R^T) or 1 (A R), got {direction!r}")
    own = features.flatten(2)  # (B, C, N)
    partner = gather_partner(own, index)
    assign = plan.detach().to(features.dtype) * n  # R
    if isinstance(lam, Tensor):
        lam = lam.to(features.dtype).view(batch, 1, 1)
    if direction == 0:
        mixed = torch.lerp(torch.bmm(partner, assign.transpose(1, 2)), own, lam)
    else:
        mixed = torch.lerp(partner, torch.bmm(own, assign), lam)
    return mixed.view(batch, channels, height, width)


# ============================================================================ the mixer
@register("alignmix")
class AlignMix(ModelMixer):
    """AlignMix: input mixup or optimal-transport-aligned mixup of the last feature maps (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`) or
    :class:`~openmix.lightning.MixupClassifier`. The model needs ``forward_features``
    returning the last feature map ``(B, C, H, W)`` and ``forward_head`` (openmix's models and
    timm's CNNs have both; the map is the output of the last of
    :func:`~openmix.models.split_stages`), or is a timm ViT or Swin, whose tokens
    :func:`~openmix.models.token_map` lays on their grid (a ViT: not pooled by its class token
    alone; see the module notes).

    ``MixOutput.x`` of a step is the mixed input on an input-mixup step, else the unmixed
    input (the aligned mix was of feature maps); ``lam``, ``index`` and the soft targets
    ``lam * y + (1 - lam) * y[index]`` are those of the step. ``mask`` is ``None``.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)``, the same ``lam`` in both branches (official: 2.0).
        num_classes: needed for class-id labels.
        align_prob: probability of the aligned branch per step (official: 0.5; the rest is
            input mixup).
        eps, max_iter, tol, check_every: the Sinkhorn settings (:func:`sinkhorn`; official
            0.1, 100, 0.1).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("alignmix", num_classes=10, align_prob=1.0, seed=0)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.logits.shape, step.mix.y.sum(1)
        (torch.Size([4, 10]), tensor([1., 1., 1., 1.]))
    """

    kind = "feature"
    mixes = "the last feature map"
    spatial_dims = (2,)

    def __init__(
        self,
        alpha: float = 2.0,
        num_classes: int | None = None,
        *,
        align_prob: float = 0.5,
        eps: float = 0.1,
        max_iter: int = 100,
        tol: float = 0.1,
        check_every: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        check_number("align_prob", align_prob, low=0.0, high=1.0)
        check_sinkhorn_settings(eps, max_iter, tol, check_every)
        self.align_prob = float(align_prob)
        self.eps, self.max_iter, self.tol, self.check_every = float(eps), max_iter, float(tol), check_every

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """``model`` unwrapped, if it has ``forward_features`` (a feature map, or a ViT's or Swin's tokens) and
        ``forward_head``; a ViT whose head reads only its class token is refused (see the module notes)."""
        from timm.models.vision_transformer import VisionTransformer  # timm only when a step needs it

        model = self.feature_model(model)
        if isinstance(model, VisionTransformer) and model.global_pool == "token" and model.attn_pool is None:
            raise TypeError(
                f"AlignMix aligns the positions of the last feature map, but this {type(model).__name__} classifies "
                "from its class token alone (global_pool='token'), so an aligned mix of its patch tokens never "
                "reaches the logits; build it with global_pool='avg' (timm.create_model(..., global_pool='avg'))"
            )
        return model

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Input mixup, or aligned mixup of the last feature maps (this step's coin)."""
        index, lam = params["index"], params["lam"]
        weight = params.get("batch_lam", lam)
        if params["align"]:
            from openmix.models.stages import tokens_from_map

            features, prefix = self._positions(model, model.forward_features(x), x)
            plan = sinkhorn(feature_cost(features.flatten(2), gather_partner(features.detach().flatten(2), index)),
                            self.eps, self.max_iter, self.tol, check_every=self.check_every)
            aligned = align_mix(features, index, weight, plan, params["direction"])
            if prefix is not None:  # a ViT's class (and other prefix) tokens: no position, plain mixup
                prefix = mix_hidden(prefix, index, weight)
            logits = model.forward_head(tokens_from_map(aligned, model, prefix))
            mixed = x
        else:
            mixed = mix_hidden(x, index, weight)
            logits = model(mixed)
        target = mix_targets(soft, index, weight)
        return StepResult(criterion(logits, target), logits, MixOutput(x=mixed, y=target, lam=lam, index=index))

    def _positions(self, model: nn.Module, features: Any, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``forward_features``' output as a ``(B, C, H, W)`` map of positions (:func:`~openmix.models.token_map`),
        and a ViT's prefix tokens ``(B, P, C)`` (``None`` for other models)."""
        from openmix.models.stages import prefix_tokens, token_map  # they import timm: only when a step aligns

        prefix = prefix_tokens(features, model) if isinstance(features, Tensor) else None
        if prefix is None and (not isinstance(features, Tensor) or features.ndim != 4):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"AlignMix aligns the positions of a (B, C, H, W) feature map; "
                f"{type(model).__name__}.forward_features returned {shape}"
            )
        return token_map(features, model, tuple(x.shape[-2:])), prefix

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``align`` (the aligned branch, else input mixup) and ``direction`` (0 or 1), host draws."""
        params = super().draw_params(x, draws)
        params["align"] = host_coin(self.align_prob, draws.host)
        params["direction"] = int(torch.randint(2, (), generator=draws.host))
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, None]:
        """The input-mixup branch: ``lam * x + (1 - lam) * x[index]``."""
        return mix_hidden(x, params["index"], params.get("batch_lam", params["lam"])), params["lam"], None

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(align_prob=self.align_prob, eps=self.eps, max_iter=self.max_iter, tol=self.tol)
        if self.check_every is not None:
            fields["check_every"] = self.check_every
        return fields
