"""Published tables: the numbers of a paper's table, shipped as CSVs in ``openmix/published/``.

A CSV has columns ``method,mixer,alpha``, one column per epoch budget and an optional
``note``. A cell is a number, empty (no number), or a number in parentheses: published, but
not in the table's metric or recipe (the row's note says what it is), so a report shows it
and never compares it. Lines starting with ``#`` are comments; ``# data: NAME`` and
``# model: NAME`` among them say which runs the table is about.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PUBLISHED_DIR", "Published", "PublishedRow", "available_papers", "load_published"]

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "published"  # shipped inside the package


@dataclass
class PublishedRow:
    """One method of a published table: the paper's label, our mixer name, and its numbers.

    ``values`` holds a number (or ``None``) per column, in the table's metric; ``other_metric``
    the numbers of the columns whose cell is of another metric (their ``values`` are ``None``).
    """

    method: str
    mixer: str
    alpha: float | None
    values: dict[str, float | None]
    note: str = ""
    other_metric: dict[str, float] = field(default_factory=dict)


@dataclass
class Published:
    """A published table: its name, its value columns (epoch budgets), its rows in order, and
    the data and model names of our runs it is compared with (``None``: any)."""

    name: str
    columns: list[str]
    rows: list[PublishedRow]
    data: str | None = None
    model: str | None = None

    def applies_to(self, group: dict[str, Any]) -> bool:
        """Whether this table is about the runs of ``group`` (a dict with ``data`` and ``model``)."""
        return all(mine is None or mine == group.get(key) for key, mine in [("data", self.data), ("model", self.model)])


def available_papers() -> list[str]:
    """Names of the published tables shipped in ``openmix/published/``.

    Example:
        >>> "cifar100_r18" in available_papers()
        True
    """
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.csv"))


def _float(text: str | None, where: str) -> float | None:
    text = (text or "").strip()
    if text in ("", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: expected a number, a number in parentheses or an empty cell, got {text!r}") from None


def _cell(text: str | None, where: str) -> tuple[float | None, bool]:
    """A value cell's number, and whether it is in parentheses (of another metric)."""
    text = (text or "").strip()
    if not (text.startswith("(") and text.endswith(")")):
        return _float(text, where), False
    value = _float(text[1:-1], where)
    if value is None:
        raise ValueError(f"{where}: expected a number in the parentheses, got {text!r}")
    return value, True


def load_published(name: str | Path) -> Published:
    """Read a published table by name (``"cifar100_r18"``) or by path to a CSV (see the module docstring).

    Raises:
        ValueError: an unknown name (the message lists the available ones) or a malformed file.

    Example:
        >>> table = load_published("cifar100_r18")
        >>> table.columns
        ['200', '400', '800', '1200']
        >>> row = table.rows[1]
        >>> row.method, row.mixer, row.alpha, row.values["200"]
        ('mixup', 'mixup', 1.0, 78.52)
        >>> table.data, table.model
        ('cifar100', 'cifar_resnet18')
        >>> alignmix = next(row for row in table.rows if row.mixer == "alignmix")
        >>> alignmix.values["1200"], alignmix.other_metric  # the AlignMix repository's best epoch of 2000
        (None, {'1200': 81.71})
    """
    path = Path(name)
    if not path.is_file():
        path = PUBLISHED_DIR / (path.name if path.suffix == ".csv" else f"{path.name}.csv")
        if not path.is_file():
            raise ValueError(f"unknown published table {str(name)!r}; available: {', '.join(available_papers())}")
    with path.open(newline="", encoding="utf-8") as f:
        lines = f.readlines()
    comments = [line.lstrip()[1:] for line in lines if line.lstrip().startswith("#")]
    meta = dict(c.split(":", 1) for c in comments if c.split(":", 1)[0].strip() in ("data", "model") and ":" in c)
    meta = {key.strip(): value.strip() for key, value in meta.items()}
    lines = [line for line in lines if not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    header = list(reader.fieldnames or [])
    missing = [key for key in ("method", "mixer", "alpha") if key not in header]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; the header is {header}")
    columns = [key for key in header if key not in ("method", "mixer", "alpha", "note")]
    rows = []
    for number, line in enumerate(reader, start=2):
        where = f"{path}, row {number}"
        row = PublishedRow(line["method"], line["mixer"], _float(line["alpha"], where), {}, line.get("note") or "")
        for key in columns:
            value, other = _cell(line[key], f"{where}, column {key!r}")
            row.values[key] = None if other else value
            if other:
                row.other_metric[key] = value
        rows.append(row)
    return Published(path.stem, columns, rows, meta.get("data"), meta.get("model"))
