"""``openmix-show``: a PNG grid of mixed samples (with their lam) for any mixer on real images.

With ``targets=true`` each mixed sample also shows the same draw applied to its targets: the
images' silhouettes as class maps (foreground labelled with the image's class, cut mixers; drawn
in colour over the image) and their bounding boxes (the sample's own in green, the partner's in
orange, as :meth:`~openmix.output.MixOutput.boxes` keeps them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from openmix.cli.train import CONFIG_DIR, ConfigError, quiet_lightning, validate
from openmix.model_mixer import ModelMixer
from openmix.targets import silhouettes
from openmix.training import build_mixer

__all__ = ["gallery", "main"]


def sample_images(cfg: DictConfig, count: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``count`` validation images of ``cfg.data`` in ``[0, 1]``, their labels, and the class count."""
    from openmix.data import build_datamodule

    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "name"}
    kwargs.update(batch_size=count, num_workers=0)
    datamodule = build_datamodule(cfg.data.name, **kwargs)
    datamodule.setup("validate")
    x, y = next(iter(datamodule.val_dataloader()))
    mean = torch.tensor(datamodule.mean).view(1, -1, 1, 1)
    std = torch.tensor(datamodule.std).view(1, -1, 1, 1)
    return (x[:count] * std + mean).clamp(0, 1), y[:count], datamodule.num_classes


def gallery(images: torch.Tensor, labels: torch.Tensor, mixers: Sequence[Any], num_classes: int, out: Path,
            seed: int = 0, targets: bool = False) -> Path:
    """Write a grid: the clean images on the first row, then one row per mixer with each sample's lam.

    Args:
        images: ``(N, C, H, W)`` in ``[0, 1]``.
        labels: ``(N,)`` class ids.
        mixers: mixer names, config mappings or instances.
        num_classes: for building mixers from names.
        out: PNG path.
        seed: the mixers' seed (row ``r`` gets ``seed + r``).
        targets: draw the same draw applied to the silhouettes' class maps and boxes
            (:func:`openmix.targets.silhouettes`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.patches import Rectangle

    built = [build_mixer(m, num_classes=num_classes, seed=seed + row, mode="elem") for row, m in enumerate(mixers)]
    seg, boxes = silhouettes(images, labels)
    rows = [("original", images, None, seg if targets else None, (boxes, torch.ones(boxes.shape[:2], dtype=torch.bool)))]
    for spec, mixer in zip(mixers, built):
        if mixer is None:
            continue
        if isinstance(mixer, ModelMixer):
            raise ConfigError(f"openmix-show shows input mixers; {mixer.registered_name!r} is a {mixer.kind!r} mixer")
        mixed = mixer(images, labels)
        mixed_seg = mixed.class_map(seg) if targets and mixed.binary else None
        mixed_boxes = mixed.boxes(boxes)[:2] if targets else None
        rows.append((mixer.registered_name, mixed.x.clamp(0, 1), mixed.lam, mixed_seg, mixed_boxes))
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows)), squeeze=False)
    for r, (name, batch, lam, classes, box_sets) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            picture = batch[c].permute(1, 2, 0).float().numpy()
            ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray" if picture.shape[-1] == 1 else None,
                      vmin=0, vmax=1)
            if classes is not None:  # foreground coloured by class, background transparent
                ax.imshow(classes[c].float().masked_fill(classes[c] == 0, float("nan")).numpy(), cmap="tab10",
                          vmin=1, vmax=10, alpha=0.45, interpolation="nearest")
            if targets and box_sets is not None:
                coords, valid = box_sets
                for k in range(coords.shape[1]):
                    if valid[c, k]:
                        x1, y1, x2, y2 = coords[c, k].tolist()
                        colour = "lime" if k < boxes.shape[1] else "orange"  # the sample's own boxes come first
                        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.2,
                                               edgecolor=colour))
            ax.set_xticks([]), ax.set_yticks([])
            if lam is not None:
                ax.set_title(f"λ={float(lam[c]):.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@hydra.main(config_path=CONFIG_DIR, config_name="show", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        mixers = list(OmegaConf.to_container(cfg.mixers, resolve=True)) or [OmegaConf.to_container(cfg.mixer, resolve=True)]
        images, labels, num_classes = sample_images(cfg, cfg.num_images)
        path = gallery(images, labels, mixers, num_classes, Path(cfg.out), seed=cfg.mix_seed,
                       targets=bool(cfg.get("targets", False)))
    except (ConfigError, FileNotFoundError) as error:
        print(f"openmix-show: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[openmix] wrote {path}")


def main() -> None:
    """Console entry point."""
    quiet_lightning()
    _hydra_main()


if __name__ == "__main__":
    main()
