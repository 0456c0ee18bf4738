"""Mixing inside DataLoader workers: a collate function that stacks a training batch and mixes it.

The device path mixes each batch after it reaches the training device (``MixupClassifier``,
``MixupCallback``). :class:`MixingCollate` does the same mixing one step earlier, in the
DataLoader worker that made the batch, as timm's ``FastCollateMixup`` does, so the host's spare
cores pay for it and the model receives ``(mixed x, soft targets)``.

Its draws come from a CPU ``torch.Generator`` seeded from the batch's identity, the epoch seed
and the sample indices that :class:`~openmix.data.base.EpochSampler` put in it, never from a
worker's own random state. So a batch is mixed the same with any ``num_workers``, persistent
workers or not, and after a resume; each epoch and each batch draws anew, whatever state the
workers start in (a ``collate_fn`` drawing from the workers' generators repeats its draws every
epoch when they start each epoch in the same state: Lightning issue #20412); and under DDP each
rank, having its own indices, draws its own.

It mixes the normalised float batch that the DataLoader path's transforms make, so a blend is
exactly what the same mixer gives on the device: no rounding to uint8 (timm mixes uint8 images
before normalisation and rounds each blend).

Example:
    >>> import openmix
    >>> from openmix.data import EpochSampler, KeyedDataset
    >>> dataset = [(torch.rand(3, 8, 8), i % 4) for i in range(8)]  # any map-style dataset of (x, y)
    >>> loader = torch.utils.data.DataLoader(
    ...     KeyedDataset(dataset), batch_size=4, sampler=EpochSampler(dataset, seed=0),
    ...     collate_fn=MixingCollate(openmix.build("cutmix", num_classes=4)))
    >>> x, y = next(iter(loader))
    >>> tuple(x.shape), tuple(y.shape), bool(torch.allclose(y.sum(1), torch.ones(4)))
    ((4, 3, 8, 8), (4, 4), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from openmix.data.device import derive_seed
from openmix.mixer import Mixer
from openmix.model_mixer import ModelMixer

__all__ = ["MixingCollate"]

_MIX_STREAM = 3  # keeps a batch's mixing seed apart from its samples' augmentation seeds


class MixingCollate:
    """A ``collate_fn`` that stacks ``(key, (x, y))`` samples and mixes the batch with ``mixer``.

    Each key is ``(index, epoch seed)``, as :class:`~openmix.data.base.EpochSampler` yields them
    (:class:`~openmix.data.base.KeyedDataset` passes them on). The batch is mixed by
    ``mixer(x, y, generator=g)`` with ``g`` a CPU generator seeded by :meth:`batch_seed`, so the
    draws depend only on the epoch seed and the batch's indices: the mixer's own ``seed`` and
    call count play no part. Picklable (workers may be spawned).

    Args:
        mixer: an input mixer (mixup, cutmix, fmix, ...) with ``num_classes`` for class-id
            labels. Saliency, feature and learned mixers need the model, which workers lack:
            they are refused.

    Returns (when called):
        ``(x, y)``: the mixed inputs ``(B, C, *spatial)`` and soft targets ``(B, num_classes)``.

    Raises:
        TypeError: ``mixer`` is not a mixer; a sample comes without an ``(index, epoch seed)`` key.
        ValueError: ``mixer`` needs the model.

    Example:
        >>> import openmix
        >>> collate = MixingCollate(openmix.build("mixup", num_classes=3))
        >>> batch = [((i, 7), (torch.full((1, 2, 2), float(i)), i)) for i in range(3)]
        >>> x, y = collate(batch)
        >>> torch.equal(x, collate(batch)[0]), tuple(y.shape)  # same batch, same draws
        (True, (3, 3))
    """

    def __init__(self, mixer: Mixer) -> None:
        if not isinstance(mixer, Mixer):
            raise TypeError(f"MixingCollate needs an openmix mixer (e.g. openmix.build('cutmix', ...)), got {mixer!r}")
        if isinstance(mixer, ModelMixer) or mixer.kind != "input":
            raise ValueError(
                f"{type(mixer).__name__} is a {mixer.kind} mixer: it needs the model, which DataLoader workers do "
                "not have; mix it on the device instead (no collate_mixer; openmix-train: mix_in_workers=null)"
            )
        self.mixer = mixer

    def batch_seed(self, keys: Sequence[tuple[int, int]]) -> int:
        """The seed of a batch's draws, from its keys ``(index, epoch seed)``.

        Example:
            >>> import openmix
            >>> collate = MixingCollate(openmix.build("mixup", num_classes=3))
            >>> collate.batch_seed([(0, 5), (1, 5)]) == collate.batch_seed([(0, 5), (1, 5)])
            True
            >>> collate.batch_seed([(0, 5), (1, 5)]) == collate.batch_seed([(0, 6), (1, 6)])  # another epoch
            False
        """
        for key in keys:
            if not (isinstance(key, tuple) and len(key) == 2):
                shown = repr(key) if isinstance(key, (int, str)) else f"a {type(key).__name__}"
                raise TypeError(
                    "MixingCollate needs each sample as ((index, epoch seed), sample): sample the dataset with "
                    f"openmix.data.EpochSampler and wrap it in KeyedDataset; got {shown} where the key should be "
                    "(draws seeded by plain indices, or by a worker's random state, may repeat every epoch)"
                )
        return derive_seed(keys[0][1], _MIX_STREAM, *(index for index, _ in keys))

    def __call__(self, batch: Sequence[tuple[tuple[int, int], Any]]) -> tuple[Tensor, Tensor]:
        if not batch:
            raise ValueError("cannot mix an empty batch")
        keys = [item[0] if isinstance(item, tuple) and len(item) == 2 else item for item in batch]
        generator = torch.Generator().manual_seed(self.batch_seed(keys))
        x, y = default_collate([item[1] for item in batch])
        out = self.mixer(x, y, generator=generator)
        return out.x, out.y

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mixer!r})"
