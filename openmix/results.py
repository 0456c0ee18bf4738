"""Run folders and their result rows.

A training run leaves one folder holding ``config.yaml`` (the resolved config),
``metrics.csv`` (one line per epoch, at least ``epoch,val_top1,val_top5,train_loss``)
and ``result.json``: one row (schema 1, built by :func:`result_row`), written atomically
(:func:`write_atomic`) when the run ends. A sweep is a folder of run folders, nested at any
depth (Hydra's ``multirun/<date>/<time>/<job_num>/``). Accuracies are in percent.

A row's keys are those of :data:`FIELDS` and, optionally, :data:`OPTIONAL_FIELDS`. Its measured
values (null when not measured, missing ones of :data:`OPTIONAL_MEASURED` too):

- ``top1_final``, ``top1_best``, ``top1_median10`` (OpenMixup's metric) and ``top1_median5``
  (OpenMixup's for 100-epoch ImageNet): the last, the best, and the median of the last 10 and
  5 of the validation top-1 of each epoch; ``top5_final``: the last epoch's top-5.
- ``wall_time_s``: seconds in training (Lightning's ``fit``: set-up, sanity check, training,
  validation, checkpoints), summed over the run's attempts: a resumed run adds what its earlier
  attempts spent up to the checkpoint it resumed from (what an attempt spent after its last
  checkpoint went into epochs that were trained again, and is not counted).
- ``images_per_s``: training images per second over all devices, from each epoch's first
  training batch to its last (data loading in, validation out), over the same epochs: a
  resumed run counts the images and seconds of the epochs its checkpoint holds too.
- ``run_id`` (optional): :func:`run_id` of the run's config, as in its folder's name.

A run is identified by its *defining settings* (:func:`defining_settings`): every setting
of its config except those in :data:`NOT_DEFINING` (where data is read and results are
written, worker counts, console output). :func:`run_id` hashes them for the folder name, and
:func:`setting_differences` says how two configs differ in them.

Example:
    >>> import tempfile
    >>> sweep = Path(tempfile.mkdtemp())
    >>> _ = write_result(sweep / "0", example_row(seed=0, top1_median10=78.0))
    >>> _ = write_result(sweep / "1", example_row(seed=1, top1_median10=79.0))
    >>> [(r["seed"], r["top1_median10"]) for r in find_results([sweep])]
    [(0, 78.0), (1, 79.0)]
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import socket
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA",
    "FIELDS",
    "MEASURED",
    "RESULT_FILE",
    "METRICS_FILE",
    "EVAL_FILE",
    "WEIGHTS_FILE",
    "write_eval",
    "read_eval",
    "OPTIONAL_MEASURED",
    "OPTIONAL_FIELDS",
    "ResultWarning",
    "write_atomic",
    "result_row",
    "write_result",
    "read_result",
    "result_exists",
    "find_results",
    "median_of_last",
    "read_metrics",
    "append_metrics",
    "keep_metrics_until",
    "example_row",
    "NOT_DEFINING",
    "defining_settings",
    "run_id",
    "setting_differences",
]

SCHEMA = 1
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
EVAL_FILE = "eval.json"  # openmix.evaluation's metrics of the trained model, beside the result row
WEIGHTS_FILE = "model.pt"  # the trained model's final state_dict

# Measured values: null when not measured (JSON has no NaN; a NaN given to write_result is written as null).
MEASURED = ("top1_final", "top1_best", "top1_median10", "top5_final", "wall_time_s", "images_per_s")
# Measured values that rows written before they existed (or by other tools) may lack: missing = not measured.
OPTIONAL_MEASURED = ("top1_median5",)
# key -> expected type of its value, as the schema's documentation says it.
FIELDS: dict[str, str] = {
    "schema": "int", "experiment": "str or null", "mixer": "str", "alpha": "number or null",
    "data": "str", "model": "str", "epochs": "int", "seed": "int",
    **{key: "number or null" for key in MEASURED},
    "host": "str", "device": "str", "num_devices": "int", "openmix_version": "str", "finished_at": "str",
}
# Keys a row may lack, each with the type its value must have when present.
OPTIONAL_FIELDS: dict[str, str] = {**{key: "number or null" for key in OPTIONAL_MEASURED}, "run_id": "str"}
_IS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
}

PathLike = str | os.PathLike

# Settings (dotted paths, each with everything below it) that do not change what a run computes:
# its name and folders, where data is read, what is evaluated after training (``eval``), worker and
# progress settings, the accelerator and
# strategy (the devices and nodes, which set the global batch, do define it), and what to do
# with an existing folder. ``published_alpha``, ``published_min_lr`` and ``published_mixer`` only feed
# ``mixer.*`` and ``optim.scheduler.min_lr``, which are defining.
NOT_DEFINING = frozenset({
    "hydra", "name", "out_dir", "run_dir", "skip_done", "resume", "print_table", "eval", "published_alpha",
    "published_min_lr", "published_mixer",
    "channels_last", "data.root", "data.num_workers", "data.download", "data.pin_memory",
    "trainer.accelerator", "trainer.strategy", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.max_time", "trainer.profiler",
})
# Datasets whose identity is their folder (a user's own images): for them ``data.root`` defines the run.
DATA_BY_FOLDER = frozenset({"imagefolder"})


class ResultWarning(UserWarning):
    """A result file that could not be read and was skipped."""


def result_row(
    config: Mapping[str, Any],
    history: Sequence[float],
    *,
    top5: float | None,
    wall_time_s: float | None,
    images_per_s: float | None,
    device: str = "cpu",
    num_devices: int = 1,
    host: str | None = None,
    finished_at: str | None = None,
) -> dict[str, Any]:
    """The result row of a run, from its config and what it measured (see the module docstring).

    Args:
        config: the run's resolved config: ``name``, ``mixer.name``, ``mixer.alpha``, ``data.name``,
            ``model.name``, ``epochs``, ``seed`` go into the row, all of it into ``run_id``.
        history: the validation top-1 of each epoch, oldest first (empty: none measured).
        top5: the last epoch's validation top-5.
        wall_time_s: seconds in training, earlier attempts included.
        images_per_s: training images per second, earlier attempts included.
        device: the device's name (a GPU's model, or ``"cpu"``).
        num_devices: how many devices trained.
        host: the machine; this one when not given.
        finished_at: an ISO 8601 time; now (UTC) when not given.

    Returns:
        A valid row, non-finite measured values as ``None``.

    Raises:
        ValueError: the row is not valid (a config value of the wrong type).

    Example:
        >>> config = {"name": "quick", "mixer": {"name": "mixup", "alpha": 0.2}, "data": {"name": "fashion_mnist"},
        ...           "model": {"name": "small_convnet"}, "epochs": 3, "seed": 0}
        >>> row = result_row(config, [80.0, 84.0, 83.0], top5=99.0, wall_time_s=60.0, images_per_s=float("nan"))
        >>> row["top1_final"], row["top1_best"], row["top1_median10"], row["images_per_s"]
        (83.0, 84.0, 83.0, None)
    """
    from openmix import __version__

    row = {
        "schema": SCHEMA,
        "experiment": config.get("name"),
        "mixer": config["mixer"]["name"],
        "alpha": config["mixer"].get("alpha"),
        "data": config["data"]["name"],
        "model": config["model"]["name"],
        "epochs": config["epochs"],
        "seed": config["seed"],
        "top1_final": float(history[-1]) if history else None,
        "top1_best": float(max(history)) if history else None,
        "top1_median10": median_of_last(history, 10) if history else None,
        "top1_median5": median_of_last(history, 5) if history else None,
        "top5_final": top5,
        "wall_time_s": wall_time_s,
        "images_per_s": images_per_s,
        "host": host or socket.gethostname(),
        "device": device,
        "num_devices": num_devices,
        "openmix_version": __version__,
        "finished_at": finished_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id(config),
    }
    return _checked(row)


_EXAMPLE_CONFIG = {"name": "cifar100_r18", "mixer": {"name": "cutmix", "alpha": 0.2}, "data": {"name": "cifar100"},
                   "model": {"name": "cifar_resnet18"}, "epochs": 200, "seed": 0}
_EXAMPLE_HISTORY = (77.9, 78.0, 78.2, 78.2, 78.3, 78.5, 78.2, 78.0, 78.4, 78.1)  # final 78.1, best 78.5, medians 78.2


def example_row(**changes: Any) -> dict[str, Any]:
    """A valid schema-1 row with made-up numbers (from :func:`result_row`), for examples and tests.

    Example:
        >>> example_row(mixer="mixup", alpha=1.0)["mixer"]
        'mixup'
    """
    row = result_row(_EXAMPLE_CONFIG, _EXAMPLE_HISTORY, top5=94.0, wall_time_s=1234.5, images_per_s=5000.0,
                     host="node12", finished_at="2026-11-26T20:00:00+00:00")
    unknown = set(changes) - set(row)
    if unknown:
        raise ValueError(f"example_row got unknown keys {sorted(unknown)}; row keys are {list(row)}")
    row.update(changes)
    return row


def _problems(row: Mapping[str, Any]) -> list[str]:
    """Everything wrong with ``row`` as a schema-1 result row (empty when it is valid)."""
    missing = [key for key in FIELDS if key not in row]
    problems = [f"missing keys {missing}"] if missing else []
    for key, spec in (FIELDS | OPTIONAL_FIELDS).items():
        if key not in row:
            continue
        value, kind = row[key], spec.removesuffix(" or null")
        if not (_IS[kind](value) or (value is None and spec.endswith(" or null"))):
            problems.append(f"{key!r} must be {spec}, got {type(value).__name__} {value!r}")
    if not problems:
        if row["schema"] != SCHEMA:
            problems.append(f"'schema' must be {SCHEMA}, got {row['schema']!r}")
        for key in ("epochs", "num_devices"):
            if row[key] < 1:
                problems.append(f"{key!r} must be >= 1, got {row[key]!r}")
        if not row["mixer"]:
            problems.append("'mixer' must be a non-empty registry name (or 'vanilla')")
        try:
            datetime.fromisoformat(row["finished_at"])
        except ValueError:
            problems.append(f"'finished_at' must be an ISO 8601 time, got {row['finished_at']!r}")
    return problems


def _checked(row: Any) -> dict[str, Any]:
    """``row`` as a dict, with non-finite measured values as ``None``; raises if it is not a valid row."""
    if not isinstance(row, Mapping):
        raise TypeError(f"a result row must be a mapping, got {type(row).__name__}")
    row = dict(row)
    for key in (*MEASURED, *OPTIONAL_MEASURED):
        if isinstance(row.get(key), float) and not math.isfinite(row[key]):
            row[key] = None
    problems = _problems(row)
    if problems:
        raise ValueError("invalid result row: " + "; ".join(problems))
    return row


def write_atomic(path: PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, as it is: no newline translation) to ``path`` in one step.

    It goes to a temporary file beside ``path``, flushed to disk, which then replaces ``path``
    (``os.replace``): readers see the old file or the new one, never part of one. On failure the
    temporary file is removed and ``path`` is left as it was. Missing folders are created.

    Returns:
        ``path``.

    Example:
        >>> import tempfile
        >>> path = write_atomic(Path(tempfile.mkdtemp()) / "out" / "table.md", "| a | b |")
        >>> path.read_text(), [p.name for p in path.parent.iterdir()]
        ('| a | b |', ['table.md'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temp.open("wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_result(run_dir: PathLike, row: Mapping[str, Any]) -> Path:
    """Validate ``row`` and write it to ``run_dir/result.json`` atomically (:func:`write_atomic`).

    Readers see the old file or the new one, never half a row. Keys beyond the schema are
    kept. A measured value (:data:`MEASURED`, :data:`OPTIONAL_MEASURED`) that is NaN or
    infinite is written as null: not measured.

    Args:
        run_dir: the run folder; created when missing.
        row: the keys of :data:`FIELDS`, each with the type named there.

    Returns:
        The path of ``result.json``.

    Raises:
        ValueError: naming each missing key and each wrong type or value.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> write_result(run, example_row()).name
        'result.json'
        >>> write_result(run, {"mixer": "mixup"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: invalid result row: missing keys ['schema', 'experiment', 'alpha', ...]
    """
    row = _checked(row)
    try:
        text = json.dumps(row, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueError(f"result row is not JSON-serializable: {err}") from None
    return write_atomic(Path(run_dir) / RESULT_FILE, text)


def _load(path: Path) -> dict[str, Any]:
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    try:
        return _checked(row)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def read_result(run_dir: PathLike) -> dict[str, Any] | None:
    """The row in ``run_dir/result.json``, or ``None`` when the run has none (yet).

    Raises:
        ValueError: the file exists but is not a valid row (corrupt JSON, missing keys).

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> read_result(run) is None
        True
        >>> _ = write_result(run, example_row(seed=3))
        >>> read_result(run)["seed"]
        3
    """
    path = Path(run_dir) / RESULT_FILE
    return _load(path) if path.is_file() else None


def result_exists(run_dir: PathLike) -> bool:
    """Whether ``run_dir`` holds a complete, valid result row (a finished run).

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> result_exists(run)
        False
        >>> _ = (run / "result.json").write_text("{")
        >>> result_exists(run)
        False
    """
    try:
        return read_result(run_dir) is not None
    except ValueError:
        return False


def find_results(paths: PathLike | Iterable[PathLike]) -> list[dict[str, Any]]:
    """Every result row under ``paths`` (folders searched recursively, or ``result.json`` files).

    Each row gets a ``"run_dir"`` key (its folder, as a string). Rows come sorted by
    path. A file that is not a valid row is skipped with a :class:`ResultWarning`.

    Raises:
        FileNotFoundError: a path that does not exist.

    Example:
        >>> import tempfile
        >>> sweep = Path(tempfile.mkdtemp())
        >>> _ = write_result(sweep / "2026-11-26" / "20-00-00" / "0", example_row())
        >>> [Path(r["run_dir"]).name for r in find_results(sweep)]
        ['0']
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            files.update(p for p in path.rglob(RESULT_FILE) if p.is_file())
        elif path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    rows = []
    for file in sorted(files):
        try:
            row = _load(file)
        except ValueError as err:
            warnings.warn(f"skipping {err}", ResultWarning, stacklevel=2)
            continue
        row["run_dir"] = str(file.parent)
        rows.append(row)
    return rows


def write_eval(run_dir: PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write an evaluation's metrics (:func:`openmix.evaluation.evaluate`) to ``run_dir/eval.json``
    atomically; non-finite numbers are written as null."""
    text = json.dumps(_finite(metrics), indent=2, allow_nan=False) + "\n"
    return write_atomic(Path(run_dir) / EVAL_FILE, text)


def read_eval(run_dir: PathLike) -> dict[str, Any] | None:
    """The metrics in ``run_dir/eval.json``, or ``None`` when the run has none or the file is unreadable
    (with a :class:`ResultWarning`)."""
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"skipping {path}: not a readable JSON file ({err})", ResultWarning, stacklevel=2)
        return None
    return metrics if isinstance(metrics, dict) else None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _canonical(value: Any) -> Any:
    """One spelling per value: ``1.0`` and ``1`` are the same setting."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def _defining(config: Mapping[str, Any]) -> dict[str, Any]:
    flat = _flatten(config)
    by_folder = flat.get("data.name") in DATA_BY_FOLDER

    def defines(key: str) -> bool:
        if by_folder and key == "data.root":
            return True
        return not any(key == k or key.startswith(k + ".") for k in NOT_DEFINING)

    return dict(sorted((key, value) for key, value in flat.items() if value is not None and defines(key)))


def defining_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a resolved run config that define the run, as ``{"dotted.key": value}``.

    Everything except the keys in :data:`NOT_DEFINING` (and what lies below them); a null
    value counts as not set (configs use null for "the default"), and integral floats as ints.
    For a dataset that is its folder (:data:`DATA_BY_FOLDER`: ``imagefolder``), ``data.root``
    defines the run: two folders of images are two runs.

    Example:
        >>> defining_settings({"seed": 0, "out_dir": "runs", "mixer": {"name": "cutmix", "alpha": 1.0, "minmax": None}})
        {'mixer.alpha': 1, 'mixer.name': 'cutmix', 'seed': 0}
    """
    return {key: _canonical(value) for key, value in _defining(config).items()}


def run_id(config: Mapping[str, Any]) -> str:
    """Eight hex digits identifying a run: a hash of its :func:`defining_settings`.

    Example:
        >>> a = run_id({"seed": 0, "mixer": {"name": "cutmix", "alpha": 0.2}, "data": {"root": "data"}})
        >>> a == run_id({"seed": 0, "mixer": {"alpha": 0.2, "name": "cutmix"}, "data": {"root": "/scratch"}})
        True
        >>> a == run_id({"seed": 0, "mixer": {"name": "cutmix", "alpha": 1.0}, "data": {"root": "data"}})
        False
    """
    text = json.dumps(defining_settings(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


_ABSENT = "<not set>"


def setting_differences(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value in first, value in second)`` for each defining setting in which two configs differ.

    Example:
        >>> setting_differences({"mixer": {"alpha": 0.2}, "seed": 0}, {"mixer": {"alpha": 1.0}, "seed": 0})
        [('mixer.alpha', 0.2, 1.0)]
    """
    a, b = _defining(first), _defining(second)
    return [
        (key, a.get(key, _ABSENT), b.get(key, _ABSENT))
        for key in sorted(set(a) | set(b))
        if _canonical(a.get(key, _ABSENT)) != _canonical(b.get(key, _ABSENT))
    ]


def median_of_last(values: Sequence[float], n: int = 10) -> float:
    """Median of the last ``n`` values: OpenMixup's published metric (top-1, last 10 epochs).

    Fewer than ``n`` values give the median of those there are.

    Example:
        >>> median_of_last([10.0, 50.0, 70.0, 71.0, 69.0], n=3)
        70.0
        >>> median_of_last([1.0, 2.0])
        1.5
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(values) == 0:
        raise ValueError("median_of_last needs at least one value, got none")
    return float(statistics.median(list(values)[-n:]))


def _number(text: str) -> int | float | str | None:
    if text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def read_metrics(run_dir: PathLike) -> list[dict[str, Any]]:
    """The per-epoch lines of ``run_dir/metrics.csv``, numbers parsed; ``[]`` when there is no file.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> append_metrics(run, {"epoch": 1, "val_top1": 10.5, "val_top5": 30.0, "train_loss": 4.2})
        >>> read_metrics(run)
        [{'epoch': 1, 'val_top1': 10.5, 'val_top5': 30.0, 'train_loss': 4.2}]
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [{key: _number(value or "") for key, value in line.items()} for line in csv.DictReader(f)]


def append_metrics(run_dir: PathLike, line: Mapping[str, Any]) -> None:
    """Append one epoch's line to ``run_dir/metrics.csv``, writing the header first when new.

    Every line must have the keys of the file's header, in any order.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> for epoch in (1, 2):
        ...     append_metrics(run, {"epoch": epoch, "val_top1": 5.0 * epoch, "val_top5": 20.0, "train_loss": 4.0})
        >>> print((run / "metrics.csv").read_text().strip())
        epoch,val_top1,val_top5,train_loss
        1,5.0,20.0,4.0
        2,10.0,20.0,4.0
    """
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if new:
        header = list(line)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
    if set(line) != set(header):
        raise ValueError(f"metrics line keys {sorted(line)} differ from the header of {path}: {sorted(header)}")
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        if new:
            writer.writeheader()
        writer.writerow(dict(line))


def keep_metrics_until(run_dir: PathLike, epoch: int) -> None:
    """Drop the lines of ``run_dir/metrics.csv`` after ``epoch`` (a run restarting there rewrites them).

    The file is replaced in one step (:func:`write_atomic`); nothing happens when it is missing
    or has no such lines.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> for epoch in (1, 2, 3):
        ...     append_metrics(run, {"epoch": epoch, "val_top1": 5.0 * epoch})
        >>> keep_metrics_until(run, 1)
        >>> [line["epoch"] for line in read_metrics(run)]
        [1]
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    if not lines or "epoch" not in lines[0]:
        return
    column = lines[0].index("epoch")

    def keep(line: list[str]) -> bool:
        value = _number(line[column]) if column < len(line) else None
        return not isinstance(value, (int, float)) or value <= epoch

    kept = [lines[0], *filter(keep, lines[1:])]
    if len(kept) == len(lines):
        return
    text = io.StringIO()
    csv.writer(text).writerows(kept)
    write_atomic(path, text.getvalue())
