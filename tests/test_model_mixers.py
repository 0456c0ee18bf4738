"""The contract every model-aware mixer keeps (saliency, feature and learned kinds): picked up for
every registered one, so a new model-aware mixer gets these tests for free. Then the typed contract
itself (registry, data hook, DDP, precision) and the defects a review found in the built-in ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import openmix
from openmix.losses import soft_cross_entropy, softmax_bce
from openmix.mixer import DataInfo, Mixer
from openmix.model_mixer import LearnedMixer, ModelMixer
from openmix.output import StepResult
from openmix.registry import register
from openmix.training import mix_step
from helpers import assert_target_rows, model_factory, seeded_batch, tiny_convnet

NUM_CLASSES = 10
MODEL_MIXERS = sorted(name for name, kind in openmix.available().items() if kind != "input")
# the mixers' random options switched on, so that a resume has every stream to get right
STOCHASTIC = {"puzzlemix": {"adv_p": 0.5, "clean_lam": 1.0}, "alignmix": {"align_prob": 0.5}}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def built(name: str, model: nn.Module | None = None, **kwargs) -> ModelMixer:
    """The registered mixer ``name`` (seeded, and with the same initial weights at every call), attached to
    ``model`` when it learns."""
    torch.manual_seed(0)
    mixer = openmix.build(name, num_classes=NUM_CLASSES, seed=0, **kwargs)
    if isinstance(mixer, LearnedMixer):
        mixer.attach(model if model is not None else model_factory(name)())
    return mixer


# ------------------------------------------------------------------ the contract, per registered mixer
@pytest.mark.parametrize("name", MODEL_MIXERS)
def test_its_type_says_its_kind(name):
    mixer = openmix.build(name, num_classes=NUM_CLASSES)
    assert isinstance(mixer, ModelMixer)
    assert isinstance(mixer, LearnedMixer) == (mixer.kind == "learned")


@pytest.mark.parametrize("name", MODEL_MIXERS)
def test_calling_it_without_the_model_says_how_to_train(name):
    x, y = seeded_batch()
    with pytest.raises(TypeError, match="mix_step"):
        openmix.build(name, num_classes=NUM_CLASSES)(x, y)


@pytest.mark.parametrize("name", MODEL_MIXERS)
def test_a_step_gives_logits_soft_targets_and_a_loss_that_trains(name):
    model = model_factory(name)()
    mixer = built(name, model)
    x, y = seeded_batch()
    before = x.clone()
    step = mix_step(model, mixer, x, y)
    assert isinstance(step, StepResult) and step.logits.shape == (8, NUM_CLASSES)
    assert step.loss.ndim == 0 and torch.isfinite(step.loss)
    assert_target_rows(mixer, step.mix)
    if not mixer.normalized_targets:  # the weights of its own are the sparse form's: targets and ids agree
        ids, weights = step.mix.sparse(y)
        onehots = torch.nn.functional.one_hot(ids, NUM_CLASSES).float()
        torch.testing.assert_close((weights.unsqueeze(2) * onehots).sum(1), step.mix.y)
    assert step.mix.lam.dtype == torch.float32 and step.mix.lam.shape == (8,)
    assert bool(((step.mix.lam >= 0) & (step.mix.lam <= 1)).all())
    assert step.mix.index.dtype == torch.int64 and step.mix.index.shape == (8,)
    step.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert torch.equal(x, before)  # the caller's batch is not mixed in place


@pytest.mark.parametrize("name", MODEL_MIXERS)
def test_bad_batches_are_clear_errors(name):
    model = model_factory(name)()
    mixer = built(name, model)
    x, y = seeded_batch()
    with pytest.raises(TypeError, match="floating point"):
        mix_step(model, mixer, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\)"):
        mix_step(model, mixer, x, y + NUM_CLASSES)
    with pytest.raises(ValueError, match="batch size"):
        mix_step(model, mixer, x, y[:4])


@pytest.mark.parametrize("name", MODEL_MIXERS)
def test_a_resumed_mixer_draws_and_mixes_as_an_uninterrupted_one(name):
    """Steps 3 and 4 of a mixer rebuilt from the state_dict after step 2 equal those of one that ran on
    (its random options on: PuzzleMix's adversarial step and clean loss, AlignMix's branch coin, ...)."""
    options = STOCHASTIC.get(name, {})
    x, y = seeded_batch()
    model_a, model_b = model_factory(name)(), model_factory(name)()
    model_b.load_state_dict(model_a.state_dict())
    straight, interrupted = built(name, model_a, **options), built(name, model_b, **options)
    steps_a = [mix_step(model_a, straight, x, y) for _ in range(4)]
    for _ in range(2):
        mix_step(model_b, interrupted, x, y).loss.backward()  # the learned mixers take gradients early
    resumed = built(name, model_b, **options)
    resumed.load_state_dict(interrupted.state_dict())
    for expected in steps_a[2:]:
        step = mix_step(model_b, resumed, x, y)
        assert torch.equal(step.mix.x, expected.mix.x) and torch.equal(step.mix.index, expected.mix.index)
        torch.testing.assert_close(step.loss, expected.loss, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in MODEL_MIXERS if openmix.available()[n] != "learned"])
def test_a_batch_the_prob_coin_skips_is_a_plain_step(name):
    model = model_factory(name)().eval()
    x, y = seeded_batch()
    step = mix_step(model, built(name, prob=0.0), x, y)
    assert torch.equal(step.mix.lam, torch.ones(8)) and torch.equal(step.mix.index, torch.arange(8))
    torch.testing.assert_close(step.logits, model(x))


@pytest.mark.parametrize("name", [n for n in MODEL_MIXERS if openmix.available()[n] != "feature"])
def test_the_mixed_batch_is_its_own_dense_target(name):
    """The step's draw mixes other targets as it mixed the images (PuzzleMix's transported blocks,
    the learned masks); a hard class map only where every pixel has one owner."""
    model = model_factory(name)()
    x, y = seeded_batch()
    step = mix_step(model, built(name, model), x, y)
    torch.testing.assert_close(step.mix.dense(x), step.mix.x)
    if not step.mix.binary:
        with pytest.raises(ValueError, match="no single owner"):
            step.mix.class_map(torch.zeros(8, 16, 16, dtype=torch.long))


# ------------------------------------------------------------------ the typed contract
def test_the_registry_refuses_a_kind_its_type_does_not_have():
    class Unmodelled(Mixer):
        kind = "feature"  # a model-aware kind on an input mixer's type

    class Untyped(ModelMixer):
        kind = "learned"

    with pytest.raises(TypeError, match="declares kind 'feature', so it must subclass ModelMixer"):
        register("unmodelled")(Unmodelled)
    with pytest.raises(TypeError, match="must subclass LearnedMixer"):
        register("untyped")(Untyped)
    assert "unmodelled" not in openmix.available() and "untyped" not in openmix.available()


def test_the_mixers_are_attributes_of_the_package_as_registered():
    import openmix.mixers as package

    for name in openmix.available():
        cls = openmix.registry.get(name)
        assert getattr(package, cls.__name__) is cls and cls.__name__ in package.__all__


def test_the_data_tells_puzzlemix_its_normalisation_and_grids_unless_given():
    data = DataInfo(mean=(0.5,), std=(0.25,), image_size=28, in_chans=1, num_classes=NUM_CLASSES)
    mixer = openmix.build("puzzlemix", num_classes=NUM_CLASSES)
    mixer.configure_data(data)
    assert (mixer.mean, mixer.std, mixer.block_nums) == ((0.5,), (0.25,), (2, 4))
    given = openmix.build("puzzlemix", num_classes=NUM_CLASSES, mean=[0.1], std=[0.2], block_nums=(7,))
    given.configure_data(data)
    assert (given.mean, given.std, given.block_nums) == ((0.1,), (0.2,), (7,))


def test_mixup_classifier_gives_the_mixer_what_its_datamodule_knows():
    """The Python route configures PuzzleMix as openmix-train does: its data term and adversarial step
    work in pixel space, so it must know the normalisation (it used to get it from the CLI only)."""
    from openmix.data import build_datamodule
    from openmix.lightning import MixupClassifier

    data = build_datamodule("synthetic", num_samples=16, num_val_samples=8, image_size=16, in_chans=1,
                            batch_size=8, num_workers=0)
    module = MixupClassifier(tiny_convnet(), num_classes=NUM_CLASSES, mixer="puzzlemix", mix_seed=0)
    assert module.mixer.mean is None
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert (module.mixer.mean, module.mixer.std, module.mixer.block_nums) == ((0.5,), (0.25,), (2, 4, 8, 16))


# ------------------------------------------------------------------ half-precision weights
HALF_PRECISIONS = [(name, "bf16-true") for name in sorted(openmix.available())] + [
    (name, "16-true") for name in ("mixup", "puzzlemix", "alignmix", "adautomix")]  # float16: one mixer per kind


@pytest.mark.parametrize("name, precision", HALF_PRECISIONS)
def test_every_mixer_trains_in_lightnings_half_precisions(name, precision):
    """Under "-true" precisions the weights, inputs and torch's default dtype are half: draws and lam stay
    float32 (CPU has no half gamma kernel), the Mix Block runs with half weights."""
    from torch.utils.data import DataLoader, TensorDataset

    from openmix.lightning import MixupClassifier

    x, y = seeded_batch(n=16)
    lams = []

    class RecordLam(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lams.append(pl_module.mixer.sample_params(batch[0])["lam"].dtype)

    module = MixupClassifier(model_factory(name)(), num_classes=NUM_CLASSES, mixer=name, mix_seed=0)
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordLam()])
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert lams == [torch.float32, torch.float32]


@pytest.mark.parametrize("name", ["automix", "adautomix"])
def test_a_learned_mixer_attaches_to_a_bfloat16_model(name):
    model = tiny_convnet().to(torch.bfloat16)
    mixer = built(name, model)
    assert mixer.mix_block.query.weight.dtype == torch.bfloat16
    x, y = seeded_batch()
    step = mix_step(model, mixer, x.to(torch.bfloat16), y)
    step.loss.backward()
    assert torch.isfinite(step.loss) and all(p.grad is not None for p in mixer.mix_block.parameters())


# ------------------------------------------------------------------ defects found in review
def test_softmax_bce_keeps_finite_gradients_where_a_probability_rounds_to_one():
    logits = torch.tensor([[20.0, 0.0, 0.0, 0.0], [200.0, 0.0, 0.0, 0.0], [3.0, -1.0, 0.5, 0.0]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.7, 0.0, 0.3, 0.0], [0.0, 0.2, 0.8, 0.0]])
    loss = softmax_bce(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    moderate = torch.randn(5, 7)
    soft = torch.softmax(torch.randn(5, 7), 1)
    torch.testing.assert_close(softmax_bce(moderate, soft), nn.BCELoss()(torch.softmax(moderate, 1), soft))


@pytest.mark.parametrize("name", ["puzzlemix", "manifoldmix"])
def test_the_bce_option_of_both_mixers_is_the_one_softmax_bce(name):
    assert openmix.build(name, num_classes=NUM_CLASSES, loss="bce").loss_for(soft_cross_entropy) is softmax_bce


def test_the_teacher_runs_in_the_models_mode_whatever_it_was_attached_in():
    model = tiny_convnet().eval()
    mixer = built("automix", model)
    model.train()
    teacher_bn = next(m for m in mixer.teacher.modules() if isinstance(m, nn.BatchNorm2d))
    before = teacher_bn.running_mean.clone()
    x, y = seeded_batch()
    mix_step(model, mixer, x, y)
    assert mixer.teacher.training and not torch.equal(teacher_bn.running_mean, before)


@pytest.mark.parametrize("pairing", ["flip", "roll", "random"])
def test_adautomix_mixes_three_different_images_with_every_pairing(pairing):
    model = tiny_convnet()
    x, y = seeded_batch()
    step = mix_step(model, built("adautomix", model, pairing=pairing), x, y)
    sources = step.mix.sources[0]  # (B, 3): the sample, then its two partners
    if pairing != "random":
        assert all(len(set(row.tolist())) == 3 for row in sources)
    assert not torch.equal(sources[:, 1], sources[:, 2])


# ------------------------------------------------------------------ DDP in a plain loop
def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Each rank trains every model-aware mixer for two steps of ``mix_step(DDP(model), ...)`` on its own
    data, and writes its gradients: the model's (all-reduced by DDP) and the learned mixers' own."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        record = {}
        for name in MODEL_MIXERS:
            torch.manual_seed(0)
            ddp = nn.parallel.DistributedDataParallel(model_factory(name)())
            mixer = openmix.build(name, num_classes=NUM_CLASSES, seed=0, **STOCHASTIC.get(name, {}))
            groups = mixer.attach(ddp).param_groups() if isinstance(mixer, LearnedMixer) else []
            opt = torch.optim.SGD([{"params": ddp.parameters()}, *groups], lr=0.05)
            g = torch.Generator().manual_seed(100 + rank)  # every rank its own batch
            for _ in range(2):
                x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, NUM_CLASSES, (8,), generator=g)
                opt.zero_grad()
                mix_step(ddp, mixer, x, y).loss.backward()
                opt.step()
            own = [p.grad.flatten() for p in mixer.parameters() if p.requires_grad]
            record[name] = {
                "model": torch.cat([p.grad.flatten() for p in ddp.parameters()]).tolist(),
                "mixer": torch.cat(own).tolist() if own else [],
            }
        Path(folder, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_mix_step_through_ddp_reduces_the_gradients_of_every_kind(tmp_path):
    """A plain loop with ``mix_step(DDP(model), mixer, ...)``: on two ranks with different data the
    gradients after backward are equal, for the model and for a learned mixer's Mix Block."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in MODEL_MIXERS:
        for part in ("model", "mixer"):
            a, b = (torch.tensor(r[name][part]) for r in ranks)
            torch.testing.assert_close(a, b, msg=f"{name}: {part} gradients differ between the ranks")
        assert torch.tensor(ranks[0][name]["model"]).abs().sum() > 0
        assert (openmix.available()[name] == "learned") == bool(ranks[0][name]["mixer"])
