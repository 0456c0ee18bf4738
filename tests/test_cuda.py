"""CUDA: every input mixer runs on the device without waiting on it, and agrees with the CPU.

Skipped where no CUDA device is present (as on CI); `benchmarks/gpu_check.sh` runs them on a GPU.
"""

import pytest
import torch

import openmix
from helpers import INPUT_MIXERS, MODES, images, model_factory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NUM_CLASSES = 5


@pytest.fixture
def no_sync():
    """Make any host-device synchronisation inside the block an error."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_mixer_call_never_syncs(name, mode, no_sync):
    x = images(8).cuda()
    y = (torch.arange(8) % NUM_CLASSES).cuda()
    mixer = openmix.build(name, num_classes=NUM_CLASSES, mode=mode, seed=0)
    for _ in range(3):  # the first call builds per-device state
        out = mixer(x, y)
    assert out.x.device.type == "cuda" and out.y.device.type == "cuda" and out.lam.device.type == "cuda"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_half_precision_stays_half_and_finite(name, dtype):
    x = images(8).cuda().to(dtype)
    out = openmix.build(name, num_classes=NUM_CLASSES, mode="elem", seed=0)(x, torch.arange(8).cuda() % NUM_CLASSES)
    assert out.x.dtype == dtype and bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_same_params_give_the_same_mix_on_cpu_and_cuda(name, mode):
    x, y = images(6), torch.arange(6) % NUM_CLASSES
    mixer = openmix.build(name, num_classes=NUM_CLASSES, mode=mode, seed=0)
    params = mixer.sample_params(x)
    soft = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    on_cpu = mixer.apply_params(x, soft, params)
    on_cuda = mixer.apply_params(x.cuda(), soft.cuda(), {k: v.cuda() if torch.is_tensor(v) else v
                                                         for k, v in params.items()})
    torch.testing.assert_close(on_cuda.x.cpu(), on_cpu.x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_cuda.lam.cpu(), on_cpu.lam)


def test_training_step_on_cuda_device_data(no_sync):
    from openmix.models import create_model
    from openmix.training import mix_step

    torch.cuda.set_sync_debug_mode("default")  # building the model and optimizer may sync
    model = create_model("small_convnet", num_classes=10, in_chans=1).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mixer = openmix.build("cutmix", num_classes=10, mode="elem", seed=0)
    x, y = torch.rand(16, 1, 28, 28, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    mix_step(model, mixer, x, y).loss.backward()  # warm-up (cuDNN autotuning may sync)
    torch.cuda.set_sync_debug_mode("error")
    step = mix_step(model, mixer, x, y)
    opt.zero_grad()
    step.loss.backward()
    opt.step()
    assert step.logits.device.type == "cuda"


@pytest.mark.parametrize("name", sorted(set(openmix.available()) - set(INPUT_MIXERS)))
def test_model_aware_mixer_step_never_syncs(name):
    """PuzzleMix, AlignMix, Manifold Mixup, the learned and the transformer mixers: a whole training step on the device."""
    from openmix.model_mixer import LearnedMixer
    from openmix.training import mix_step

    model = model_factory(name)().cuda()  # the smallest model the mixer trains with (a ViT for TransMix), 16x16
    mixer = openmix.build(name, num_classes=10, seed=0)
    groups = mixer.attach(model).param_groups() if isinstance(mixer, LearnedMixer) else []
    opt = torch.optim.SGD([{"params": model.parameters()}, *groups], lr=0.1)
    x, y = torch.rand(16, 1, 16, 16, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    for _ in range(2):  # warm-up: cuDNN autotuning and first-call state may sync
        mix_step(model, mixer, x, y).loss.backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):  # AdAutoMix alternates adversarial and cooperative steps
            step = mix_step(model, mixer, x, y)
            opt.zero_grad()
            step.loss.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.logits.device.type == "cuda" and all(v.device.type == "cuda" for v in step.aux.values())
