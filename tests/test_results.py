"""Result rows: validation, atomic writes, reading back, finding runs in a sweep, the published metric."""

import json
import os
from pathlib import Path

import pytest

from openmix.results import (
    SCHEMA,
    ResultWarning,
    append_metrics,
    example_row,
    find_results,
    keep_metrics_until,
    median_of_last,
    read_metrics,
    read_result,
    result_exists,
    result_row,
    run_id,
    setting_differences,
    write_atomic,
    write_result,
)

CONFIG = {"name": "quick", "mixer": {"name": "cutmix", "alpha": 1.0}, "data": {"name": "fashion_mnist"},
          "model": {"name": "small_convnet"}, "epochs": 12, "seed": 3, "optim": {"lr": 0.1}}


def test_write_then_read_round_trips_the_row(tmp_path):
    row = example_row(mixer="fmix", alpha=None, seed=3) | {"lr": 0.1}
    path = write_result(tmp_path / "run", row)
    assert path == tmp_path / "run" / "result.json"
    assert read_result(tmp_path / "run") == row


def test_write_leaves_no_temporary_files(tmp_path):
    write_result(tmp_path, example_row(seed=0))
    write_result(tmp_path, example_row(seed=1))  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert read_result(tmp_path)["seed"] == 1


def test_failed_write_keeps_the_old_row_and_no_temporary_file(tmp_path, monkeypatch):
    write_result(tmp_path, example_row(seed=0))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_result(tmp_path, example_row(seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert read_result(tmp_path)["seed"] == 0


def test_write_rejects_missing_keys_and_names_them(tmp_path):
    row = example_row()
    del row["seed"], row["top1_median10"]
    with pytest.raises(ValueError, match=r"missing keys \['seed', 'top1_median10'\]"):
        write_result(tmp_path, row)
    assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", "200", "'epochs' must be int, got str"),
        ("seed", True, "'seed' must be int, got bool"),
        ("alpha", float("nan"), "'alpha' must be number or null, got float nan"),
        ("top1_final", "78.1", "'top1_final' must be number or null, got str"),
        ("mixer", None, "'mixer' must be str, got NoneType"),
        ("schema", 2, "'schema' must be 1, got 2"),
        ("finished_at", "yesterday", "'finished_at' must be an ISO 8601 time"),
    ],
)
def test_write_rejects_wrong_types_and_values(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        write_result(tmp_path, example_row(**{key: value}))


def test_optional_keys_may_be_missing_but_are_checked_when_present(tmp_path):
    row = example_row()
    del row["top1_median5"], row["run_id"]
    write_result(tmp_path, row)  # a row from before these keys existed
    assert read_result(tmp_path) == row
    with pytest.raises(ValueError, match="'top1_median5' must be number or null, got str"):
        write_result(tmp_path, example_row(top1_median5="77.0"))


def test_nullable_keys_accept_null(tmp_path):
    write_result(tmp_path, example_row(alpha=None, experiment=None))
    assert result_exists(tmp_path)


def test_unmeasured_values_are_written_as_null(tmp_path):
    write_result(tmp_path, example_row(images_per_s=float("nan"), top5_final=float("inf"), top1_median5=float("nan")))
    assert '"images_per_s": null' in (tmp_path / "result.json").read_text()
    row = read_result(tmp_path)
    assert (row["images_per_s"], row["top5_final"], row["top1_median5"], row["top1_final"]) == (None, None, None, 78.1)


def test_result_row_takes_the_top1_values_from_the_history():
    history = [float(v) for v in range(1, 13)]  # 12 epochs: 1, 2, ..., 12
    history[1] = 50.0  # the best epoch, before the last 10
    row = result_row(CONFIG, history, top5=99.0, wall_time_s=60.0, images_per_s=2000.0)
    assert (row["top1_final"], row["top1_best"]) == (12.0, 50.0)
    assert (row["top1_median10"], row["top1_median5"]) == (7.5, 10.0)  # medians of 3..12 and of 8..12


def test_result_row_takes_the_settings_from_the_config_and_writes_the_schema():
    row = result_row(CONFIG, [80.0], top5=None, wall_time_s=None, images_per_s=None, device="NVIDIA H200",
                     num_devices=2)
    assert row["schema"] == SCHEMA and row["run_id"] == run_id(CONFIG)
    assert [row[k] for k in ("experiment", "mixer", "alpha", "data", "model", "epochs", "seed")] == [
        "quick", "cutmix", 1.0, "fashion_mnist", "small_convnet", 12, 3]
    assert (row["device"], row["num_devices"]) == ("NVIDIA H200", 2)


def test_result_row_without_history_has_nothing_measured(tmp_path):
    row = result_row(CONFIG, [], top5=float("nan"), wall_time_s=3.0, images_per_s=float("nan"))
    assert [row[k] for k in ("top1_final", "top1_best", "top1_median10", "top1_median5", "top5_final")] == [None] * 5
    write_result(tmp_path, row)
    assert read_result(tmp_path) == row


def test_example_row_is_a_result_row():
    row = example_row()
    assert set(row) == set(result_row(CONFIG, [1.0], top5=None, wall_time_s=None, images_per_s=None))
    assert (row["top1_final"], row["top1_best"], row["top1_median10"]) == (78.1, 78.5, 78.2)


def test_write_atomic_writes_text_and_bytes_as_they_are_and_leaves_no_temporary_file(tmp_path):
    write_atomic(tmp_path / "a" / "t.csv", "x,y\r\n1,2\n")
    write_atomic(tmp_path / "a" / "p.png", b"\x89PNG\r\n")
    assert (tmp_path / "a" / "t.csv").read_bytes() == b"x,y\r\n1,2\n"
    assert (tmp_path / "a" / "p.png").read_bytes() == b"\x89PNG\r\n"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["p.png", "t.csv"]


def test_failed_metrics_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    for epoch in (1, 2):
        append_metrics(tmp_path, {"epoch": epoch, "val_top1": 1.0})
    before = (tmp_path / "metrics.csv").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        keep_metrics_until(tmp_path, 1)
    assert (tmp_path / "metrics.csv").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_read_result_is_none_without_a_file_and_raises_on_a_corrupt_one(tmp_path):
    assert read_result(tmp_path) is None
    (tmp_path / "result.json").write_text('{"schema": 1, "mixer": ')
    with pytest.raises(ValueError, match="not a readable JSON file"):
        read_result(tmp_path)


@pytest.mark.parametrize("content", [None, "{", json.dumps({"schema": 1, "mixer": "cutmix"})])
def test_result_exists_only_for_a_complete_row(tmp_path, content):
    if content is not None:
        (tmp_path / "result.json").write_text(content)
    assert not result_exists(tmp_path)
    write_result(tmp_path, example_row())
    assert result_exists(tmp_path)


def test_find_results_searches_nested_folders_and_adds_run_dir(tmp_path):
    runs = [tmp_path / "multirun" / "2026-11-26" / "20-00-00" / str(i) for i in range(3)]
    for seed, run in enumerate(runs):
        write_result(run, example_row(seed=seed))
    (tmp_path / "multirun" / "2026-11-26" / "20-00-00" / "3").mkdir()  # a run still going: no row yet
    rows = find_results([tmp_path])
    assert [r["seed"] for r in rows] == [0, 1, 2]
    assert [Path(r["run_dir"]) for r in rows] == runs


def test_find_results_accepts_result_files_and_counts_each_once(tmp_path):
    path = write_result(tmp_path / "a", example_row())
    assert len(find_results([path, tmp_path, tmp_path / "a"])) == 1


def test_find_results_skips_corrupt_rows_with_a_warning(tmp_path):
    write_result(tmp_path / "good", example_row())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text("{not json")
    with pytest.warns(ResultWarning, match="bad"):
        rows = find_results(tmp_path)
    assert [Path(r["run_dir"]).name for r in rows] == ["good"]


def test_find_results_raises_for_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_results([tmp_path / "nowhere"])


def test_median_of_last_uses_only_the_last_n_values():
    values = [0.0] * 10 + [float(v) for v in range(10, 20)]  # the early epochs must not count
    assert median_of_last(values) == 14.5
    assert median_of_last(values, n=3) == 18.0


def test_median_of_last_with_fewer_values_than_n():
    assert median_of_last([3.0, 1.0, 2.0]) == 2.0


@pytest.mark.parametrize(("values", "n"), [([], 10), ([1.0], 0)])
def test_median_of_last_rejects_empty_input_and_bad_n(values, n):
    with pytest.raises(ValueError):
        median_of_last(values, n=n)


def test_metrics_append_and_read_back(tmp_path):
    lines = [{"epoch": e, "val_top1": 10.0 * e, "val_top5": 50.0, "train_loss": 2.5 - e} for e in (1, 2, 3)]
    for line in lines:
        append_metrics(tmp_path, line)
    assert read_metrics(tmp_path) == lines
    assert read_metrics(tmp_path / "elsewhere") == []


def test_metrics_lines_must_match_the_header(tmp_path):
    append_metrics(tmp_path, {"epoch": 1, "val_top1": 1.0, "val_top5": 5.0, "train_loss": 4.0})
    with pytest.raises(ValueError, match="differ from the header"):
        append_metrics(tmp_path, {"epoch": 2, "val_top1": 2.0})


def test_the_folder_of_an_image_folder_defines_its_run_but_not_that_of_a_named_dataset():
    def config(data: str, root: str) -> dict:
        return {"seed": 0, "mixer": {"name": "mixup", "alpha": 0.2}, "data": {"name": data, "root": root}}

    assert run_id(config("imagefolder", "photos/cats")) != run_id(config("imagefolder", "photos/dogs"))
    assert run_id(config("cifar100", "data")) == run_id(config("cifar100", "/scratch/data"))
    assert setting_differences(config("imagefolder", "a"), config("imagefolder", "b")) == [("data.root", "a", "b")]
