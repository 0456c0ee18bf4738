"""The README's real-data examples (benchmarks/examples/) keep working: each script's ``main`` trains its runs
for a few steps on a small synthetic set and returns a finite metric per run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "benchmarks" / "examples"
TINY = ["--dataset", "synthetic", "--steps", "3", "--batch-size", "16", "--train-size", "64", "--test-size", "32"]


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks/examples/<name>.py`` as a module, with its folder on ``sys.path`` (for ``_common``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segmentation_reports_pixel_accuracy_and_mean_iou(monkeypatch, capsys, one_torch_thread):
    results = load("segmentation", monkeypatch).main(TINY)
    assert set(results) == {"none", "cutmix"}
    for metrics in results.values():
        assert 0.0 <= metrics["pixel_accuracy"] <= 1.0 and 0.0 <= metrics["mean_iou"] <= 1.0
    assert "mean IoU" in capsys.readouterr().out


def test_video_cuts_every_frame_alike_and_reports_top1(monkeypatch, capsys, one_torch_thread):
    video = load("video", monkeypatch)
    results = video.main(TINY)  # its CutMix steps assert one cut per clip, the same in every frame
    assert set(results) == {"none", "cutmix"} and all(0.0 <= top1 <= 1.0 for top1 in results.values())
    assert "clip top-1" in capsys.readouterr().out


def test_video_clips_move_by_their_velocity(monkeypatch):
    import torch

    video = load("video", monkeypatch)
    image = torch.zeros(2, 1, 28, 28)
    image[:, 0, 0, 0] = 1.0  # one bright pixel: the garment's corner
    clips = video.make_clips(image, torch.tensor([[2, -1], [-2, 0]]))
    corners = [[clips[b, 0, t].nonzero().tolist() for t in range(video.FRAMES)] for b in range(2)]
    assert corners[0] == [[[6, 1]], [[5, 3]], [[4, 5]], [[3, 7]]]  # (row, column): y up by 1, x right by 2
    assert corners[1] == [[[4, 7]], [[4, 5]], [[4, 3]], [[4, 1]]]


def test_regression_reports_rmse_for_each_run(monkeypatch, capsys, one_torch_thread):
    results = load("regression", monkeypatch).main(TINY)
    assert set(results) == {"none", "mixup", "c-mixup"} and all(math.isfinite(v) and v >= 0 for v in results.values())
    assert "test RMSE" in capsys.readouterr().out
