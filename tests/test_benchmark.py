"""The benchmark scripts run: mixer_speed.py on CPU (and on CUDA it times openmix calls under sync debug
mode "error"), step_cost.py with the learned mixers, step_memory.py."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def script(name: str) -> Iterator:
    """``benchmarks/<name>.py`` imported as a module (registered while in use: dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def bench():
    with script("mixer_speed") as module:
        yield module


def test_small_cpu_run_prints_a_table(bench, capsys):
    rows = bench.main(["--device", "cpu", "--sizes", "4x3x8x8", "--repeat", "3", "--no-peers",
                       "--mixers", "mixup", "cutmix"])
    assert {(r.library, r.method, r.mode) for r in rows} >= {("openmix", "cutmix", "batch"), ("openmix", "mixup", "elem")}
    assert all(r.ms > 0 for r in rows)
    assert "| openmix | cutmix | batch | 4x3x8x8 | cpu |" in capsys.readouterr().out


def test_sync_free_runs_the_call_in_error_mode_and_restores_the_mode(bench, monkeypatch):
    modes = ["warn"]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    seen = []

    def mixer(x, y):
        seen.append(modes[-1])
        raise RuntimeError("called a synchronizing CUDA operation")

    with pytest.raises(RuntimeError, match="synchronizing"):
        bench.sync_free(mixer, None, None)
    assert seen == ["error"] and modes[-1] == "warn"


def test_findings_name_each_missed_target(bench):
    small, large = (128, 3, 32, 32), (64, 3, 224, 224)

    def row(library, method, mode, ms, shape=small, floor=1.0):
        return bench.Row(library, method, mode, shape, "cpu", ms, floor)

    rows = [
        row("openmix", "fmix", "batch", 1.0),  # no peer fmix: compared with the fastest peer cutmix
        row("openmix", "mixup", "batch", 0.5),
        row("openmix", "mixup", "elem", 0.5),
        row("openmix", "cutmix", "elem", 0.4),
        row("openmix", "resizemix", "batch", 30.0, large, 3.5),
        row("timm", "cutmix", "batch", 0.8),
        row("torchvision", "cutmix", "batch", 0.9),
        row("timm", "mixup", "batch", 0.7),
        row("timm", "mixup", "elem", 4.0),
        row("timm", "cutmix", "elem", 5.0),
    ]
    notes = "\n".join(bench.findings(rows))
    assert "fmix batch cpu 128x3x32x32: 1 ms, slower than the fastest peer (timm cutmix, 0.8 ms)" in notes
    assert "mixup elem cpu 128x3x32x32: 8.0x faster than timm mixup elem" in notes
    assert "cutmix elem" not in notes  # 12.5x faster
    assert "mixup batch" not in notes
    assert "resizemix batch cpu 64x3x224x224: 3.50x floor > target 3.0x" in notes


def test_step_cost_times_the_learned_mixers_against_vanilla(capsys):
    with script("step_cost") as module:
        out = module.main(["--device", "cpu", "--batch", "2", "--size", "16", "--num-classes", "4", "--repeat", "1",
                           "--warmup", "1", "--parts", "1", "--methods", "vanilla", "automix", "adautomix"])
    rows = {r.method: r for r in out["cpu"]}
    assert rows["automix"].state_mb > rows["vanilla"].state_mb  # the teacher and the Mix Block are held too
    assert rows["automix"].parts.get("mix block", 0) > 0
    text = capsys.readouterr().out
    assert "| **automix** |" in text and "| **adautomix** |" in text


def test_step_cost_times_the_vit_mixers_on_a_vit(capsys):
    with script("step_cost") as module:
        out = module.main(["--device", "cpu", "--batch", "2", "--size", "16", "--num-classes", "4", "--repeat", "1",
                           "--warmup", "1", "--parts", "1", "--model", "vit_tiny_patch16_224", "--model-kwargs",
                           '{"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}',
                           "--methods", "vanilla", "tokenmix", "transmix", "smmix", "sumix"])
    rows = {r.method: r for r in out["cpu"]}
    assert set(rows) == {"vanilla", "tokenmix", "transmix", "smmix", "sumix"}
    assert rows["tokenmix"].mixer.patch_size == (4, 4)  # the model's patches
    assert rows["sumix"].state_mb > rows["vanilla"].state_mb  # its uncertainty head is held too


def test_step_cost_times_input_mixers_on_the_fashion_mnist_bench_model(capsys):
    with script("step_cost") as module:
        out = module.main(["--device", "cpu", "--batch", "4", "--size", "28", "--in-chans", "1", "--num-classes", "10",
                           "--repeat", "1", "--warmup", "1", "--parts", "0", "--model", "small_convnet",
                           "--channels-last", "--methods", "vanilla", "cutmix", "gridmix"])
    rows = {r.method: r for r in out["cpu"]}
    assert set(rows) == {"vanilla", "cutmix", "gridmix"} and type(rows["cutmix"].mixer).__name__ == "CutMix"
    assert "batch 4x1x28x28" in capsys.readouterr().out


def test_step_memory_runs_each_method_in_its_own_process(capsys):
    with script("step_memory") as module:
        rows = module.main(["--batch", "2", "--methods", "vanilla", "automix"])
    assert [r["method"] for r in rows] == ["vanilla", "automix"]
    assert all(r["step_mb"] >= 0 for r in rows)
    assert "| automix |" in capsys.readouterr().out


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_sumix_scale_shows_the_official_scale_moving_the_shares_on_a_committed_bench_model(capsys):
    run = next((BENCHMARKS / "results" / "fashion_mnist" / "fashion_mnist_bench" / "vanilla").glob("e10_s0_*"))
    with script("sumix_scale") as module:
        rows = module.main(["--runs", str(run), "--scales", "100", "1"])
    official, small = rows
    assert official["lam_shift"] > 0.3 > 0.05 > small["lam_shift"]  # measured: 0.63 and 0.03
    assert "| vanilla seed 0 | 100 |" in capsys.readouterr().out
