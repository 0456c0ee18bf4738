"""Two CPU processes under DDP (gloo): training finishes and each rank draws its own mixing."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from openmix.data import build_datamodule
from openmix.lightning import MixupClassifier


class RecordMixing(L.Callback):
    """Each rank writes the lam and partner index of its first mixed batch to a file."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            x, y = batch
            out = pl_module.mixer(x, y)
            record = {"lam": out.lam.tolist(), "index": out.index.tolist(), "world": trainer.world_size}
            Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_two_process_ddp_run_mixes_differently_on_each_rank(tmp_path):
    datamodule = build_datamodule("synthetic", num_samples=64, num_val_samples=16, image_size=16, batch_size=8,
                                  num_workers=0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, datamodule.num_classes))
    module = MixupClassifier(model, num_classes=datamodule.num_classes, mixer={"name": "cutmix", "mode": "elem"},
                             mix_seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=2,
                        limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[RecordMixing(str(tmp_path))])
    trainer.fit(module, datamodule=datamodule)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in records)
    assert records[0]["lam"] != records[1]["lam"] or records[0]["index"] != records[1]["index"]


class RecordLearnedState(L.Callback):
    """Each rank writes sums of its Mix Block and EMA-teacher weights at the end of training."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        mixer = pl_module.mixer
        record = {part: [float(p.double().sum()) for p in getattr(mixer, part).parameters()]
                  for part in ("mix_block", "teacher")}
        record["calls"] = mixer._calls
        Path(self.folder, f"learned{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_two_process_ddp_keeps_the_mix_block_and_teacher_equal_on_every_rank(tmp_path):
    """AutoMix under DDP: the Mix Block's gradients are all-reduced and the teachers follow equal models."""
    from openmix.models import create_model

    datamodule = build_datamodule("synthetic", num_samples=64, num_val_samples=16, image_size=16, batch_size=8,
                                  num_workers=0)
    model = create_model("small_convnet", num_classes=datamodule.num_classes, in_chans=3, widths=(8, 8, 8))
    module = MixupClassifier(model, num_classes=datamodule.num_classes, mixer={"name": "automix"}, mix_seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=3,
                        limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[RecordLearnedState(str(tmp_path))])
    trainer.fit(module, datamodule=datamodule)
    records = [json.loads((tmp_path / f"learned{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["calls"] == records[1]["calls"] == 3
    assert records[0]["mix_block"] == records[1]["mix_block"]
    assert records[0]["teacher"] == records[1]["teacher"]
