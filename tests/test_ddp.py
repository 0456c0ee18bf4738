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
