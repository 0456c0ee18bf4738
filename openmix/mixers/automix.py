"""AutoMix (Liu et al., ECCV 2022; arXiv 2103.13027): mixing masks learned online by a Mix Block.

One training step (:meth:`AutoMix.step`), as OpenMixup's ``AutoMixup`` does it (checked
against its code):

1. **EMA teacher.** The mixer holds a frozen copy of the model whose weights follow the
   model by an exponential moving average: momentum ``0.999`` for the first 10% of the
   steps, then a cosine to ``0.999999`` (:func:`ema_momentum`). The teacher is updated at the
   start of each step from the weights the last optimizer step produced, which is the
   official "after every iteration" update, one step later (step 0 copies the model). It runs
   in the model's mode (train mode in training, as the official teacher: its BatchNorm layers
   use and track batch statistics).
2. **Two draws per step:** ``(lam_b, index_b)`` for the Mix Block's batch and
   ``(lam_o, index_o)`` for the online batch, ``lam ~ Beta(alpha, alpha)``.
3. **Masks.** The teacher's stage-3 features of the clean batch (``split_stages(model)[3]``:
   layer3 of a ResNet, 8x8 on CIFAR) go into the :class:`~openmix.layers.MixBlock`,
   which gives per-pixel masks for each pair, upsampled to the image. On a transformer the
   features are a ``(B, C, h, w)`` map of the stage's output (:func:`openmix.models.token_map`):
   a ViT's patch tokens on the patch grid (its class token is not read), a Swin's NHWC map;
   OpenMixup's DeiT-S recipe reads the tokens after block 6 of 12, ``feature_stage=2`` here.
4. **Mix Block loss:** mixup cross-entropy of the *teacher* on the Mix Block's mixed batch
   (gradients reach only the Mix Block, through the image), plus the mask loss
   ``0.1 * max(|mean(own mask) - lam_b| - 0.1, 0)`` over the whole batch.
5. **Online loss:** the model on the online batch, mixed with the Mix Block's masks for
   ``(lam_o, index_o)`` *detached* (plain mixup when ``lam_o`` is within ``0.08`` of 0 or 1),
   against ``lam_o * y + (1 - lam_o) * y[index_o]``, plus the clean-batch loss (weight 1).

The step's loss is the sum; the labels use the sampled ``lam``, not the mask mean. Only the
model is used at test time.

**Differences from OpenMixup, on purpose.** The official model has two linear heads per
encoder (one for mixed, one for clean samples); openmix trains the model's own head with
both losses, so any classifier works unchanged and inference is the model alone. The Mix
Block's features come from the teacher's first three stages only (the official code runs the
whole teacher and keeps stage 3), which gives the same features for less work.

**Memory.** The Mix Block's loss reaches the Mix Block only, so the step takes those
gradients right away and returns a loss whose backward gives the same gradients
(:meth:`AutoMix._backward_early`): the teacher's activations are freed before the model's
passes allocate theirs.

Use it like the other model-aware mixers, plus two lines: :meth:`AutoMix.attach` the model
(builds the teacher and the Mix Block) and put :meth:`AutoMix.param_groups` in the optimizer.
:class:`~openmix.lightning.MixupClassifier` does both, sets ``total_steps`` and logs the losses.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from openmix.checks import check_bool, check_int, check_number
from openmix.layers import MixBlock
from openmix.losses import Criterion, decoupled_mixup_loss
from openmix.mixer import Draws, Params, gather_partner
from openmix.model_mixer import LearnedMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.sampling import host_beta, partner_indices

__all__ = ["AutoMix", "ema_momentum", "mix_sources", "mix_source_targets", "constant_masks"]


def ema_momentum(step: int, total_steps: int | None, base: float = 0.999, end: float = 0.999999, hold: float = 0.1) -> float:
    """The teacher's EMA momentum after optimizer step ``step`` (0-based) of ``total_steps``.

    ``base`` for the first ``hold`` fraction of the run, then
    ``end - (end - base) * (cos(pi * step / total_steps) + 1) / 2`` (OpenMixup's
    ``CosineScheduleHook`` with ``adjust_scope=[0.1, 1]``, ``warming_up="constant"``).
    Without ``total_steps`` the momentum stays ``base``.

    Example:
        >>> ema_momentum(0, 1000), ema_momentum(99, 1000)
        (0.999, 0.999)
        >>> round(ema_momentum(500, 1000), 7), ema_momentum(1000, 1000)
        (0.9994995, 0.999999)
    """
    if total_steps is None or step < hold * total_steps:
        return base
    progress = min(step / max(total_steps, 1), 1.0)
    return end - (end - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def mix_sources(x: Tensor, indices: Tensor, masks: Tensor) -> Tensor:
    """``Σ_k masks[:, k] * x[indices[k]]``: each sample mixed from ``K`` samples of the batch.

    Args:
        x: ``(B, C, H, W)``.
        indices: ``(K, B)``; row 0 is usually ``arange(B)`` (the sample itself).
        masks: ``(B, K, H, W)`` (learned masks, gradients flow) or ``(B, K, 1, 1)`` (constant shares).

    Example:
        >>> x = torch.tensor([[[[1.0]]], [[[3.0]]]])
        >>> indices = torch.tensor([[0, 1], [1, 0]])
        >>> mix_sources(x, indices, torch.full((2, 2, 1, 1), 0.5)).flatten()
        tensor([2., 2.])
    """
    masks = masks.to(x.dtype)
    mixed = x * masks[:, :1]
    for k in range(1, indices.shape[0]):  # K sources (2 or 3), not the batch
        mixed = mixed + gather_partner(x, indices[k]) * masks[:, k : k + 1]
    return mixed


def mix_source_targets(soft: Tensor, indices: Tensor, shares: list[float]) -> Tensor:
    """``Σ_k shares[k] * soft[indices[k]]``: the targets of samples mixed from ``K`` with constant shares.

    Example:
        >>> mix_source_targets(torch.eye(2), torch.tensor([[0, 1], [1, 0]]), [0.75, 0.25])
        tensor([[0.7500, 0.2500],
                [0.2500, 0.7500]])
    """
    target = soft * shares[0]
    for k in range(1, indices.shape[0]):
        target = target + soft[indices[k]] * shares[k]
    return target


def constant_masks(x: Tensor, shares: list[float]) -> Tensor:
    """Masks ``(B, K, 1, 1)`` of constant ``shares`` (linear mixup) for :func:`mix_sources`.

    Example:
        >>> constant_masks(torch.zeros(2, 3, 4, 4), [0.75, 0.25]).flatten(1)
        tensor([[0.7500, 0.2500],
                [0.7500, 0.2500]])
    """
    return torch.stack([x.new_full((x.shape[0], 1, 1), share, dtype=torch.float32) for share in shares], dim=1)


@register("automix")
class AutoMix(LearnedMixer):
    """AutoMix: a Mix Block learns the masks online, through an EMA teacher (needs the model).

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` (published: 2.0).
        num_classes: needed for class-id labels.
        feature_stage: the Mix Block reads the output of ``split_stages(model)[feature_stage]``
            (3: layer3 of a ResNet, a ViT's tokens after 3/4 of its blocks, a Swin's third stage).
        in_channels: the channels the Mix Block expects; ``None``: read from the model by
            :meth:`attach`. Given, a model whose stage has other channels is refused at attach.
        mixed_samples, attention, qk, reduction, value_hidden, value_dropout, lam_scaling, lam_channel, upsample:
            the Mix Block's configuration (:class:`~openmix.layers.MixBlock`, where
            ``mixed_samples`` is ``sources``); AutoMix's CIFAR defaults: 2 samples, pair
            attention, shared q/k, 1x1 value, no lambda input, nearest upsampling.
        mask_loss: weight of the mask loss (0.1).
        mask_loss_anneal: cosine-anneal that weight to 0 over ``total_steps`` (OpenMixup's ImageNet
            configs); off on CIFAR.
        mask_margin: the mask loss is 0 while ``|mean(own mask) - lam| <= mask_margin`` (0.1).
        mask_variance: subtract ``mask_variance * Var(mask)`` inside the mask loss (SAMix: 2).
        eta: weight of the decoupled (DM) term in the Mix Block's loss,
            :func:`~openmix.losses.decoupled_mixup_loss`; 0: the ``criterion`` alone.
        lam_margin: the online batch is plain mixup (constant masks) when the sample's own share
            ``lam_o <= lam_margin`` or ``>= 1 - lam_margin`` (0.08).
        clean_weight: weight of the clean-batch loss of the model (1).
        momentum: the teacher's EMA momentum at the start (0.999); ``1`` freezes the teacher
            (``end_momentum`` is then ignored).
        end_momentum: the momentum at the end of the cosine (0.999999), at least ``momentum``.
        momentum_hold: fraction of the run at ``momentum`` before the cosine (0.1).
        total_steps: training steps of the run, for the momentum schedule (MixupClassifier
            sets it); ``None`` keeps ``momentum``.
        lr: learning rate of the Mix Block's parameter group; ``None``: the optimizer's.
        min_lr: the Mix Block's own cosine floor (OpenMixup's Tiny-ImageNet and ImageNet configs:
            0.001): MixupClassifier gives its group a cosine schedule to ``min_lr``; ``None``: the
            group follows the model's schedule.
        **kwargs: ``pairing``, ``label_smoothing``, ``seed``, ``same_on_all_ranks`` as for every
            mixer; ``mode`` must be ``"batch"`` and ``prob`` 1 (one ``lam`` per batch, as published).

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("automix", num_classes=10, seed=0).attach(model)
        >>> opt = torch.optim.SGD([{"params": model.parameters()}, *mixer.param_groups()], lr=0.1)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> step.loss.backward(); opt.step(); opt.zero_grad()
        >>> sorted(step.aux)
        ['block_mask', 'block_mix', 'online_clean', 'online_mix']
    """

    mixes = "images with masks learned from the model's features"
    spatial_dims = (2,)

    def __init__(
        self,
        alpha: float = 2.0,
        num_classes: int | None = None,
        *,
        feature_stage: int = 3,
        in_channels: int | None = None,
        mixed_samples: int = 2,
        attention: str = "pair",
        qk: str = "shared",
        reduction: int = 2,
        value_hidden: int | None = 0,
        value_dropout: float = 0.0,
        lam_scaling: float | None = None,
        lam_channel: bool = False,
        upsample: str = "nearest",
        mask_loss: float = 0.1,
        mask_loss_anneal: bool = False,
        mask_margin: float = 0.1,
        mask_variance: float = 0.0,
        eta: float = 0.0,
        lam_margin: float = 0.08,
        clean_weight: float = 1.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_hold: float = 0.1,
        total_steps: int | None = None,
        lr: float | None = None,
        min_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, total_steps=total_steps, lr=lr, min_lr=min_lr, **kwargs)
        if self.mode != "batch" or self.prob != 1.0:
            raise ValueError(
                f"{type(self).__name__} draws one lam per batch and mixes every step: mode must be 'batch' and "
                f"prob 1, got mode={self.mode!r}, prob={self.prob}"
            )
        self.feature_stage = check_int("feature_stage", feature_stage, 1)
        self.in_channels = None if in_channels is None else check_int("in_channels", in_channels, 1)
        self.mixed_samples = check_int("mixed_samples", mixed_samples, 2)
        self.block_settings = {
            "sources": self.mixed_samples,
            "attention": attention,
            "qk": qk,
            "reduction": reduction,
            "value_hidden": value_hidden,
            "value_dropout": value_dropout,
            "lam_scaling": lam_scaling,
            "lam_channel": lam_channel,
            "upsample": upsample,
        }
        MixBlock(8, **self.block_settings)  # checks the settings now, not at attach
        self.mask_loss = check_number("mask_loss", mask_loss, low=0.0)
        self.mask_margin = check_number("mask_margin", mask_margin, low=0.0, high=1.0)
        self.mask_variance = check_number("mask_variance", mask_variance, low=0.0)
        self.eta = check_number("eta", eta, low=0.0)
        self.lam_margin = check_number("lam_margin", lam_margin, low=0.0, high=0.5)
        self.clean_weight = check_number("clean_weight", clean_weight, low=0.0)
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0)
        self.end_momentum = check_number("end_momentum", end_momentum, low=0.0, high=1.0)
        if self.momentum < 1.0 and self.end_momentum < self.momentum:
            raise ValueError(f"end_momentum must be >= momentum ({self.momentum}), got {end_momentum}")
        self.momentum_hold = check_number("momentum_hold", momentum_hold, low=0.0, high=1.0)
        self.mask_loss_anneal = check_bool("mask_loss_anneal", mask_loss_anneal)
        self.mix_block: MixBlock | None = None if in_channels is None else MixBlock(in_channels, **self.block_settings)
        self.teacher: nn.Module | None = None

    # ------------------------------------------------------------------ set-up
    def attach(self, model: nn.Module, input_size: tuple[int, ...] | None = None) -> "AutoMix":
        """Build the EMA teacher (a frozen copy of ``model``) and the Mix Block for ``model``.

        Call it once, before the optimizer is made (its :meth:`param_groups` must be in it). A
        wrapped model (DDP, ``torch.compile``) is unwrapped. The channels of stage
        ``feature_stage`` are read by running the model (eval mode, no gradients) on one zero
        input of ``input_size`` (default: the channels of the model's first convolution, at the
        image size a ViT or Swin was built for, ``patch_embed.img_size``, else 64x64), from the
        stage's ``(B, C, h, w)`` map (:func:`~openmix.models.token_map`). The Mix Block takes the
        model's device and dtype.

        Raises:
            TypeError: ``model`` cannot be run stage by stage, or has no stage ``feature_stage``.
            ValueError: ``in_channels`` was given and the stage has other channels.
        """
        name = type(self).__name__
        model = self.feature_model(model)
        stages = self.stages_of(model)
        if len(stages) <= self.feature_stage:
            raise TypeError(
                f"{name}'s Mix Block reads stage {self.feature_stage} of the encoder, but {type(model).__name__} has "
                f"stages 1..{len(stages) - 1} (split_stages: [stem, stage1, ..., stage{len(stages) - 1}]); "
                f"set feature_stage to one it has"
            )
        channels = _stage_channels(model, stages[: self.feature_stage + 1], input_size)
        if self.in_channels is not None and self.in_channels != channels:
            raise ValueError(
                f"{name}'s Mix Block is configured for in_channels={self.in_channels}, but stage {self.feature_stage} "
                f"of {type(model).__name__} has {channels} channels"
            )
        if self.mix_block is None or self.mix_block.in_channels != channels:
            self.mix_block = MixBlock(channels, **self.block_settings)
        weight = next(model.parameters())
        self.mix_block = self.mix_block.to(device=weight.device, dtype=weight.dtype)
        self.in_channels = channels
        teacher = copy.deepcopy(model)
        teacher.requires_grad_(False)
        self.teacher = teacher
        return self

    @property
    def attached(self) -> bool:
        return self.teacher is not None and self.mix_block is not None

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """``model``, once the mixer is attached and ``model`` can be run stage by stage."""
        self.require_attached()
        self.feature_model(model)
        return model

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """EMA update, Mix Block loss through the teacher, online loss on the model.

        Returns a :class:`~openmix.output.StepResult` whose ``loss`` sums every term, whose
        ``logits`` and ``mix`` are those of the online mixed batch, and whose ``aux`` holds
        each term (detached) for logging.
        """
        teacher, block = self.teacher, self.mix_block
        self._update_teacher(model, step=self._step_index)
        teacher.train(model.training)
        stages = self.stages_of(teacher)
        size = x.shape[-2:]
        with torch.no_grad():
            features, teacher_logits = self._teacher_features(stages, x)

        # the Mix Block's batch: its masks, mixed images and loss through the frozen teacher
        block_index, block_lam = params["block_index"], params["block_lam"]
        masks = block(features, block_index, block_lam, size)
        block_logits = teacher(mix_sources(x, block_index, masks))
        block_target = mix_source_targets(soft, block_index, block_lam)
        block_terms = self._block_losses(criterion, block_logits, block_target, masks, params, teacher_logits)
        block_loss = self._backward_early(torch.stack(list(block_terms.values())).sum())

        # the online batch: detached masks (constant shares near lam 0 or 1)
        index, lam = params["online_index"], params["online_lam"]
        with torch.no_grad():
            if lam[0] <= self.lam_margin or lam[0] >= 1.0 - self.lam_margin:
                online_masks = constant_masks(x, lam)
            else:
                online_masks = block(features, index, lam, size)
            mixed = mix_sources(x, index, online_masks)
        target = mix_source_targets(soft, index, lam)
        logits = model(mixed)
        online = {"online_mix": criterion(logits, target), **self._online_losses(model, criterion, x, soft, params)}
        loss = torch.stack(list(online.values())).sum() + block_loss
        terms = {**online, **block_terms}
        batch = x.shape[0]
        out = MixOutput(
            x=mixed,
            y=target,
            lam=torch.full((batch,), lam[0], device=x.device, dtype=torch.float32),
            index=index[1],
            mask=online_masks[:, :1].expand(-1, -1, *size),  # constant masks are (B, K, 1, 1)
            source_masks=online_masks.expand(-1, -1, *size) if len(lam) > 2 else None,
            mixer=type(self).__name__,
            sources=(index.t(), torch.stack([torch.full((batch,), share, device=x.device, dtype=torch.float32) for share in lam], 1))
            if len(lam) > 2
            else None,
        )
        return StepResult(loss, logits, out, aux={name: value.detach() for name, value in terms.items()})

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Two independent draws: ``block_*`` for the Mix Block's batch, ``online_*`` for the model's.

        Each is ``*_index`` ``(K, B)`` (row 0 ``arange(B)``, then partners) and ``*_lam``, the
        ``K`` shares as host floats. ``lam``/``index``/``batch_lam`` repeat the online draw.
        """
        block_index, block_lam, online_index, online_lam = self._draw_batches(x, draws)
        return {
            "lam": torch.full((x.shape[0],), online_lam[0], device=x.device, dtype=torch.float32),
            "index": online_index[1],
            "batch_lam": online_lam[0],
            "block_index": block_index,
            "block_lam": block_lam,
            "online_index": online_index,
            "online_lam": online_lam,
        }

    # ------------------------------------------------------------------ the variant's parts
    def _draw_batches(self, x: Tensor, draws: Draws) -> tuple[Tensor, list[float], Tensor, list[float]]:
        """``(block_index, block_lam, online_index, online_lam)``: two independent draws of sources."""
        return (*self._draw_sources(x, draws), *self._draw_sources(x, draws))

    def _draw_sources(self, x: Tensor, draws: Draws) -> tuple[Tensor, list[float]]:
        """``K`` samples per mixed sample: ``[arange, partner, ...]`` and their shares.

        Two samples: ``[lam, 1 - lam]``, ``lam ~ Beta(alpha, alpha)``; more: ``K`` Beta draws
        normalised to sum 1 (AdAutoMix).
        """
        if self.mixed_samples == 2:
            lam = host_beta(self.alpha, draws.host)
            shares = [lam, 1.0 - lam]
        else:
            draws_k = [host_beta(self.alpha, draws.host) for _ in range(self.mixed_samples)]
            total = sum(draws_k)
            shares = [d / total for d in draws_k] if total > 0 else [1.0 / self.mixed_samples] * self.mixed_samples
        return self._draw_partners(x, draws), shares

    def _draw_partners(self, x: Tensor, draws: Draws) -> Tensor:
        """``(K, B)``: ``arange(B)``, then ``K - 1`` partners (:func:`~openmix.sampling.partner_indices`)."""
        batch = x.shape[0]
        partners = partner_indices(batch, self.mixed_samples - 1, self.pairing, device=x.device, generator=draws.device)
        return torch.cat([torch.arange(batch, device=x.device).unsqueeze(0), partners])

    def _teacher_features(self, stages: list[nn.Module], x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The teacher's stage features of the clean batch as a ``(B, C, h, w)`` map
        (:func:`~openmix.models.token_map`: a ViT's patch tokens on their grid, a Swin's NHWC map permuted),
        and its logits when :meth:`_needs_teacher_logits`."""
        from openmix.models.stages import token_map

        h = x
        for stage in stages[: self.feature_stage + 1]:
            h = stage(h)
        features = token_map(h, self.teacher, tuple(x.shape[-2:]))
        if not self._needs_teacher_logits():
            return features, None
        for stage in stages[self.feature_stage + 1 :]:
            h = stage(h)
        return features, self.teacher.forward_head(h)

    def _needs_teacher_logits(self) -> bool:
        """Whether this step's losses use the teacher's logits of the clean batch (AutoMix's do not)."""
        return False

    def _block_losses(
        self, criterion: Criterion, logits: Tensor, target: Tensor, masks: Tensor, params: Params, teacher_logits: Tensor | None
    ) -> dict[str, Tensor]:
        """The Mix Block's terms: mixup loss of the teacher, and the mask loss."""
        mix = decoupled_mixup_loss(logits, target, eta=self.eta) if self.eta else criterion(logits, target)
        own = masks[:, 0]
        mean = own.mean()
        mask = (mean - params["block_lam"][0]).abs().sub(self.mask_margin).clamp(min=0.0)
        if self.mask_variance:
            mask = mask - self.mask_variance * (own - mean).square().mean()
        return {"block_mix": mix, "block_mask": self.mask_loss_weight() * mask}

    def mask_loss_weight(self) -> float:
        """The mask loss weight of the current step: ``mask_loss``, cosine-annealed to 0 with ``mask_loss_anneal``."""
        if not self.mask_loss_anneal or self.total_steps is None:
            return self.mask_loss
        progress = min(max(self._step_index, 0) / self.total_steps, 1.0)
        return self.mask_loss * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _online_losses(self, model: nn.Module, criterion: Criterion, x: Tensor, soft: Tensor, params: Params) -> dict[str, Tensor]:
        """The model's terms besides the online mixed batch: the clean batch (no pass when its weight is 0)."""
        if not self.clean_weight:
            return {}
        return {"online_clean": self.clean_weight * criterion(model(x), soft)}

    # ------------------------------------------------------------------ internals
    @property
    def _step_index(self) -> int:
        """The 0-based index of the step being computed (inside a step, after its draw; -1 before any)."""
        return self._calls - 1

    def _backward_early(self, block_loss: Tensor) -> Tensor:
        """``block_loss`` with its gradients taken now: its value, and a surrogate with the same Mix Block gradients.

        The Mix Block's loss reaches the Mix Block only (through the frozen teacher), so its
        gradients can be computed before the model's passes; the teacher's activations are then
        freed before the model's are made, and the step's peak memory holds one of the two sets,
        not both. The returned ``Σ p·g + (value - Σ p·g).detach()`` gives the caller's single
        ``loss.backward()`` exactly these gradients ``g`` (through the usual hooks: DDP reduces
        them, a GradScaler scales them) and keeps the loss's value. Under fp16 autocast the
        gradients are left to the caller's backward: only it is loss-scaled against underflow.
        """
        params = [p for p in self.mix_block.parameters() if p.requires_grad]
        if not (params and block_loss.requires_grad and torch.is_grad_enabled()) or _fp16_autocast(block_loss.device):
            return block_loss  # fp16: a GradScaler must scale this backward too, so it stays in the caller's
        grads = torch.autograd.grad(block_loss, params)
        surrogate = torch.stack([(p * g).sum() for p, g in zip(params, grads)]).sum()
        return surrogate + (block_loss.detach() - surrogate.detach())

    @torch.no_grad()
    def _update_teacher(self, model: nn.Module, step: int) -> None:
        """Step 0: the teacher becomes a copy of ``model``; step ``n``: the EMA update that follows optimizer step ``n - 1``."""
        teacher, model = self.teacher, self.feature_model(model)
        online, frozen = list(model.parameters()), list(teacher.parameters())
        if len(online) != len(frozen) or any(a.shape != b.shape for a, b in zip(online, frozen)):
            raise ValueError(
                f"{type(self).__name__} was attached to another model: its teacher's parameters do not match "
                f"{type(model).__name__}'s"
            )
        if step == 0:
            teacher.load_state_dict(model.state_dict())
            return
        if self.momentum >= 1.0:
            return
        momentum = ema_momentum(step - 1, self.total_steps, self.momentum, self.end_momentum, self.momentum_hold)
        if momentum < 1.0:
            torch._foreach_lerp_(frozen, online, 1.0 - momentum)

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(feature_stage=self.feature_stage, in_channels=self.in_channels)
        return fields

    def __repr__(self) -> str:
        """The settings and the Mix Block; the teacher by name only (it is a copy of the model)."""
        teacher = "" if self.teacher is None else f", teacher=EMA copy of {type(self.teacher).__name__}"
        block = "" if self.mix_block is None else "\n  (mix_block): " + repr(self.mix_block).replace("\n", "\n  ") + "\n"
        return f"{type(self).__name__}({self.extra_repr()}{teacher}{block})"


def _stage_channels(model: nn.Module, stages: list[nn.Module], input_size: tuple[int, ...] | None) -> int:
    """Channels of the feature map (:func:`~openmix.models.token_map`) of the last of ``stages`` on one zero
    input (model in eval mode, no gradients): of ``input_size``, else of :func:`_probe_size`."""
    from openmix.models.stages import token_map

    input_size = _probe_size(model) if input_size is None else tuple(input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            weight = next(model.parameters())
            h = torch.zeros(1, *input_size, device=weight.device, dtype=weight.dtype)
            for stage in stages:
                h = stage(h)
    finally:
        model.train(was_training)
    return int(token_map(h, model, input_size[1:]).shape[1])


def _probe_size(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` of one input ``model`` takes: the image size its patch embedding was built for (timm's ViTs
    and Swins fix it: ``patch_embed.img_size``), else 64x64; the channels from the first convolution."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise TypeError(f"cannot tell the input channels of {type(model).__name__}: pass input_size=(C, H, W)")
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or (64, 64)
    return (first.in_channels * first.groups, *size)


def _fp16_autocast(device: torch.device) -> bool:
    """Whether float16 autocast is on for ``device``'s type."""
    kind = device.type
    return torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16
