"""Run folders and their result rows.

A training run leaves one folder holding ``config.yaml`` (the resolved config),
``metrics.csv`` (one line per epoch, at least ``epoch,val_top1,val_top5,train_loss``)
and ``result.json``: one row (schema 1), written atomically when the run ends.
A sweep is a folder of run folders, nested at any depth (Hydra's
``multirun/<date>/<time>/<job_num>/``). Accuracies are in percent.

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
import json
import math
import os
import statistics
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA",
    "FIELDS",
    "MEASURED",
    "RESULT_FILE",
    "METRICS_FILE",
    "ResultWarning",
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

# Measured values: null when not measured (JSON has no NaN; a NaN given to write_result is written as null).
MEASURED = ("top1_final", "top1_best", "top1_median10", "top5_final", "wall_time_s", "images_per_s")
# key -> expected type of its value, as the schema's documentation says it.
FIELDS: dict[str, str] = {
    "schema": "int", "experiment": "str or null", "mixer": "str", "alpha": "number or null",
    "data": "str", "model": "str", "epochs": "int", "seed": "int",
    **{key: "number or null" for key in MEASURED},
    "host": "str", "device": "str", "num_devices": "int", "openmix_version": "str", "finished_at": "str",
}
_IS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
}

PathLike = str | os.PathLike

# Settings (dotted paths, each with everything below it) that do not change what a run computes:
# its name and folders, where data is read, worker and progress settings, the accelerator and
# strategy (the devices and nodes, which set the global batch, do define it), and what to do
# with an existing folder. ``published_alpha``, ``published_min_lr`` and ``published_mixer`` only feed
# ``mixer.*`` and ``optim.scheduler.min_lr``, which are defining.
NOT_DEFINING = frozenset({
    "hydra", "name", "out_dir", "run_dir", "skip_done", "resume", "print_table", "published_alpha",
    "published_min_lr", "published_mixer",
    "channels_last", "data.root", "data.num_workers", "data.download", "data.pin_memory",
    "trainer.accelerator", "trainer.strategy", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.max_time", "trainer.profiler",
})


class ResultWarning(UserWarning):
    """A result file that could not be read and was skipped."""


def example_row(**changes: Any) -> dict[str, Any]:
    """A valid schema-1 row with made-up numbers, for examples and tests.

    Example:
        >>> example_row(mixer="mixup", alpha=1.0)["mixer"]
        'mixup'
    """
    row: dict[str, Any] = {
        "schema": SCHEMA, "experiment": "cifar100_r18", "mixer": "cutmix", "alpha": 0.2,
        "data": "cifar100", "model": "cifar_resnet18", "epochs": 200, "seed": 0,
        "top1_final": 78.1, "top1_best": 78.5, "top1_median10": 78.2, "top5_final": 94.0,
        "wall_time_s": 1234.5, "images_per_s": 5000.0, "host": "node12", "device": "cpu",
        "num_devices": 1, "openmix_version": "0.1.0", "finished_at": "2026-11-26T20:00:00+00:00",
    }
    unknown = set(changes) - set(row)
    if unknown:
        raise ValueError(f"example_row got unknown keys {sorted(unknown)}; row keys are {list(row)}")
    row.update(changes)
    return row


def _problems(row: Mapping[str, Any]) -> list[str]:
    """Everything wrong with ``row`` as a schema-1 result row (empty when it is valid)."""
    missing = [key for key in FIELDS if key not in row]
    problems = [f"missing keys {missing}"] if missing else []
    for key, spec in FIELDS.items():
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
    for key in MEASURED:
        if isinstance(row.get(key), float) and not math.isfinite(row[key]):
            row[key] = None
    problems = _problems(row)
    if problems:
        raise ValueError("invalid result row: " + "; ".join(problems))
    return row


def write_result(run_dir: PathLike, row: Mapping[str, Any]) -> Path:
    """Validate ``row`` and write it to ``run_dir/result.json`` atomically.

    The row goes to a temporary file in the same folder, which then replaces
    ``result.json`` in one step (``os.replace``): readers see the old file or the
    new one, never half a row. Keys beyond the schema are kept. A measured value
    (:data:`MEASURED`) that is NaN or infinite is written as null: not measured.

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
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{RESULT_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / RESULT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return run_dir / RESULT_FILE


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
    keep = {
        key: value
        for key, value in flat.items()
        if value is not None and not any(key == k or key.startswith(k + ".") for k in NOT_DEFINING)
    }
    return dict(sorted(keep.items()))


def defining_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a resolved run config that define the run, as ``{"dotted.key": value}``.

    Everything except the keys in :data:`NOT_DEFINING` (and what lies below them); a null
    value counts as not set (configs use null for "the default"), and integral floats as ints.

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

    The file is replaced in one step; nothing happens when it is missing or has no such lines.

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
    temp = path.with_name(f".{METRICS_FILE}.tmp")
    with temp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)
    os.replace(temp, path)
