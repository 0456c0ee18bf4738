"""Shared test data and mixer lists (importable from any test module)."""

import functools

import torch

import openmix

INPUT_MIXERS = sorted(openmix.available("input"))
MODES = ("batch", "elem", "pair", "half")


def rows(batch: int, mode: str) -> int:
    """The rows a mixer returns for a batch of ``batch``: ``ceil(B/2)`` in ``half`` mode, else ``B``."""
    return (batch + 1) // 2 if mode == "half" else batch


def images(batch: int = 6, channels: int = 3, size: int = 16, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch whose samples differ everywhere, so any mix is visible."""
    x = torch.rand(batch, channels, size, size) + torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1)
    return x.to(dtype)


def assert_target_rows(mixer: openmix.Mixer, out: openmix.MixOutput) -> None:
    """``out.y``'s rows as ``mixer`` promises them: summing to 1 (``normalized_targets``), else (SnapMix's
    weights of their own) non-negative and summing to at most the number of images mixed."""
    if mixer.normalized_targets:
        torch.testing.assert_close(out.y.sum(1), torch.ones(out.y.shape[0]))
        return
    mixed = 2 if out.sources is None else out.sources[0].shape[1]
    assert bool((out.y >= 0).all()) and bool((out.y.sum(1) <= mixed + 1e-6).all())


def assert_steps_train_every_parameter(model: torch.nn.Module, mixer: openmix.Mixer, x: torch.Tensor,
                                       y: torch.Tensor, steps: int = 3) -> None:
    """A few ``mix_step`` SGD steps: the loss stays finite, every parameter gets a gradient and changes."""
    import copy

    from openmix.training import mix_step

    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        step = mix_step(model, mixer, x, y)
        assert torch.isfinite(step.loss)
        opt.zero_grad()
        step.loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k, _ in model.named_parameters())


def tiny_convnet(num_classes: int = 10) -> torch.nn.Module:
    """``small_convnet`` 8 channels wide for 1-channel images: stem + 3 stages, so feature layers 0..3."""
    from openmix.models import create_model

    return create_model("small_convnet", num_classes=num_classes, in_chans=1, widths=(8, 8, 8))


def seeded_batch(channels: int = 1, size: int = 16, n: int = 8, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``(x, y)`` on every call: normal images ``(n, channels, size, size)`` and cycling labels."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, size, size, generator=g), torch.arange(n) % num_classes


def assert_lightning_trains(mixer: dict, steps: int = 3):
    """``MixupClassifier(tiny_convnet(), mixer=...)`` for ``steps`` Lightning steps on CPU: the loss is
    finite and the classifier's weights change. Returns the module."""
    import copy

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from openmix.lightning import MixupClassifier

    x, y = seeded_batch(n=24)
    module = MixupClassifier(tiny_convnet(), num_classes=10, mixer=mixer, mix_seed=0)
    before = copy.deepcopy(module.model.state_dict())
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert trainer.global_step == steps
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert not torch.equal(before["fc.weight"], module.model.state_dict()["fc.weight"])
    return module


def tiny_vit(num_classes: int = 10) -> torch.nn.Module:
    """A timm ViT for 16x16 1-channel images: 4x4 patches (16 tokens and a class token), width 32, 2 blocks."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=num_classes, embed_dim=32, depth=2,
                             num_heads=2)


# tests/test_cli.py's run() with a timm ViT of 2 blocks, width 32 and 4-pixel patches on its 16-pixel images
TINY_VIT_CLI = ("model.name=vit_tiny_patch16_224", "~model.kwargs.channels", "~model.kwargs.stem_width",
                "+model.kwargs.img_size=16", "+model.kwargs.patch_size=4", "+model.kwargs.embed_dim=32",
                "+model.kwargs.depth=2", "+model.kwargs.num_heads=2")


@functools.lru_cache(maxsize=None)
def model_factory(name: str, num_classes: int = 10):
    """The smallest model the registered mixer ``name`` trains with: :func:`tiny_convnet`, or :func:`tiny_vit`
    for a mixer that refuses a CNN (``check_model``/``attach`` raise ``TypeError``). Input mixers: the CNN."""
    from openmix.model_mixer import trains_with

    for make in (tiny_convnet, tiny_vit):
        if trains_with(openmix.build(name, num_classes=num_classes), make(num_classes)):
            return make
    raise TypeError(f"{name} trains with neither tiny_convnet nor tiny_vit")
