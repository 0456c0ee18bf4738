"""No mixer reads a tensor value on the host: each one's whole step runs on the ``meta`` device.

A meta tensor has a shape and no data, so ``.item()``, ``bool(t)``, ``nonzero``, boolean
masks, ``.cpu()`` and data-dependent shapes raise on it. These are the host reads that
make a CUDA step wait on the device; this file checks, on CI's CPU, the code path the
GPU takes (``tests/test_cuda.py`` checks the real thing under
``set_sync_debug_mode("error")`` where a GPU is present). Mixers are built unseeded:
seeded draws use a per-device generator, which ``meta`` does not have.
"""

import pytest
import torch

import openmix
from helpers import INPUT_MIXERS, MODES, model_factory, rows
from openmix.model_mixer import LearnedMixer
from openmix.training import mix_step

MODEL_AWARE = sorted(set(openmix.available()) - set(INPUT_MIXERS))
NUM_CLASSES = 10


def meta_batch(channels: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(16, channels, size, size, device="meta"), torch.zeros(16, dtype=torch.long, device="meta")


def test_meta_tensors_refuse_host_reads():
    t = torch.empty(4, device="meta")
    for read in (lambda: t.sum().item(), lambda: bool(t.sum() > 0), lambda: t.nonzero(), lambda: t[t > 0]):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_input_mixer_call_reads_nothing_on_the_host(name, mode):
    x, y = meta_batch()
    out = openmix.build(name, num_classes=NUM_CLASSES, mode=mode)(x, y)
    assert out.x.device.type == "meta" and out.y.shape == (rows(16, mode), NUM_CLASSES)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_mixing_other_targets_reads_nothing_on_the_host(name, mode):
    """The same draw applied to dense targets, class maps, boxes, keypoints and vectors: no host read."""
    x, _ = meta_batch()
    out = openmix.build(name, mode=mode)(x)
    assert out.dense(torch.empty(16, 4, 32, 32, device="meta")).shape == (16, 4, 32, 32)
    if out.binary:
        assert out.class_map(torch.zeros(16, 32, 32, dtype=torch.long, device="meta")).shape == (16, 32, 32)
    boxes, valid, visible = out.boxes(torch.empty(16, 3, 4, device="meta"))
    assert boxes.shape == (16, 6, 4) and valid.device.type == "meta"
    assert out.keypoints(torch.empty(16, 5, 2, device="meta"))[0].shape == (16, 10, 2)
    assert out.vector(torch.empty(16, 2, device="meta")).shape == (16, 2)


@pytest.mark.parametrize("grid", [2, 4, 8, 16])
def test_puzzlemix_mixing_reads_nothing_on_the_host(grid):
    x, y = meta_batch()
    out = openmix.build("puzzlemix", num_classes=NUM_CLASSES, block_nums=(grid,))(x, y, saliency=torch.empty(16, 32, 32, device="meta"))
    assert out.x.shape == x.shape and out.mask.shape == (16, 1, 32, 32) and out.lam.shape == (16,)


@pytest.mark.parametrize("name", MODEL_AWARE)
def test_model_aware_training_step_reads_nothing_on_the_host(name):
    model = model_factory(name, NUM_CLASSES)()  # the smallest model the mixer trains with, for 16x16 images
    mixer = openmix.build(name, num_classes=NUM_CLASSES)
    if isinstance(mixer, LearnedMixer):
        mixer.attach(model)
        mixer.to("meta")
    model.to("meta")
    x, y = meta_batch(channels=1, size=16)
    for _ in range(2):  # AdAutoMix alternates adversarial and cooperative steps
        step = mix_step(model, mixer, x, y)
        step.loss.backward()
    assert step.logits.device.type == "meta"
    assert all(p.grad is not None for p in model.parameters())
