"""Result rows as tables: one line per method (a mixer and its alpha), one column per epoch
budget (or data, or model), a cell the mean ± sample std over seeds; as Markdown or CSV.

Beside a ``top1_median10`` column of runs shorter than 10 epochs (whose median is over fewer
epochs than the metric means) comes a ``final`` column: the top-1 of the last epoch. With a
published table (:mod:`openmix.reporting.published`), each column has the published value and
``ours - published`` beside it; a published cell of another metric is shown in parentheses
and never compared.
"""

from __future__ import annotations

import csv
import io
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmix.reporting.published import Published, PublishedRow
from openmix.results import MEASURED, OPTIONAL_MEASURED, ResultWarning, write_atomic

__all__ = ["COLUMN_KEYS", "METRICS", "Line", "Table", "build_tables", "format_markdown", "format_csv", "write_csv"]

COLUMN_KEYS = ("epochs", "data", "model")
METRICS = (*MEASURED, *OPTIONAL_MEASURED)
_GROUP_KEYS = ("data", "model", "epochs")
MEDIAN_EPOCHS = 10  # top1_median10 is the median of the last 10 epochs

MethodKey = tuple[str, float | None]  # (mixer, alpha)


@dataclass
class Line:
    """One row of a report table: our runs of a method (values per column) and its published row."""

    method: str
    mixer: str
    alpha: float | None
    cells: dict[str, list[float]] = field(default_factory=dict)
    published: PublishedRow | None = None
    finals: dict[str, list[float]] = field(default_factory=dict)  # top1_final per column, for short runs

    def mean(self, column: str, final: bool = False) -> float | None:
        values = (self.finals if final else self.cells).get(column)
        return statistics.fmean(values) if values else None

    def std(self, column: str, final: bool = False) -> float | None:
        """Sample standard deviation over seeds; ``None`` for fewer than two."""
        values = (self.finals if final else self.cells).get(column, [])
        return statistics.stdev(values) if len(values) > 1 else None

    def n(self, column: str) -> int:
        return len(self.cells.get(column, []))

    def pub(self, column: str) -> float | None:
        """The published value in the table's metric (``None`` for a cell of another metric)."""
        return self.published.values.get(column) if self.published else None

    def pub_other(self, column: str) -> float | None:
        """The published value of another metric, shown but never compared."""
        return self.published.other_metric.get(column) if self.published else None

    def diff(self, column: str) -> float | None:
        ours, pub = self.mean(column), self.pub(column)
        return None if ours is None or pub is None else ours - pub


@dataclass
class Table:
    """One table: the runs of one group (e.g. one data and model), one line per method."""

    group: dict[str, Any]
    column: str
    metric: str
    columns: list[str]
    lines: list[Line]
    paper: Published | None = None
    note: str = ""
    final_columns: list[str] = field(default_factory=list)  # columns with runs shorter than MEDIAN_EPOCHS


def _column_order(columns: Iterable[str]) -> list[str]:
    columns = set(columns)
    try:
        return sorted(columns, key=float)
    except ValueError:
        return sorted(columns)


def method_order(key: MethodKey) -> tuple:
    """Sort key of methods: vanilla first, then by mixer and alpha."""
    mixer, alpha = key
    return (mixer != "vanilla", mixer, alpha is not None, alpha or 0.0)


def match_published(keys: Iterable[MethodKey], paper: Published) -> dict[int, MethodKey]:
    """Our method for each published row (by index): same mixer, and same alpha where that decides."""
    free = sorted(keys, key=method_order)
    matched = {}
    for i, row in enumerate(paper.rows):
        candidates = [k for k in free if k[0] == row.mixer]
        exact = [k for k in candidates if k[1] == row.alpha]
        chosen = exact[0] if exact else candidates[0] if len(candidates) == 1 else None
        if chosen is not None:
            matched[i] = chosen
            free.remove(chosen)
    return matched


def as_alpha(value: Any) -> float | None:
    """A row's alpha as a float (``None`` stays ``None``), so 1 and 1.0 are one method."""
    return None if value is None else float(value)


def build_tables(
    rows: Sequence[dict[str, Any]],
    *,
    column: str = "epochs",
    metric: str = "top1_median10",
    paper: Published | None = None,
) -> list[Table]:
    """Group result rows into tables: one per value of the keys among (data, model, epochs)
    that are not ``column``; in each, one line per (mixer, alpha), one column per value of ``column``.

    A row whose ``metric`` is null or missing (a row from before the key existed) was not
    measured: it is left out, with a :class:`~openmix.results.ResultWarning`. Several rows
    for the same seed of the same cell (a rerun) count once: the latest ``finished_at`` wins,
    with a warning. Lines come in the paper's order when ``paper`` is given (its rows without
    runs included), then vanilla, then the other mixers alphabetically. The paper goes with
    the tables whose data and model it names; when it names those of no table, with every
    table (and a warning). With ``metric="top1_median10"``, the columns holding runs shorter
    than 10 epochs are listed in ``Table.final_columns`` and their ``top1_final`` values kept
    in ``Line.finals``.

    Example:
        >>> from openmix.results import example_row
        >>> rows = [example_row(seed=s, top1_median10=v) for s, v in [(0, 78.0), (1, 79.0)]]
        >>> line = build_tables(rows)[0].lines[0]
        >>> line.method, line.mean("200"), line.n("200")
        ('cutmix', 78.5, 2)
    """
    if column not in COLUMN_KEYS:
        raise ValueError(f"column must be one of {COLUMN_KEYS}, got {column!r}")
    group_keys = [k for k in _GROUP_KEYS if k != column]
    chosen: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row.get(metric) is None:
            warnings.warn(f"{metric} was not measured in {row.get('run_dir', 'a run')}; run left out", ResultWarning)
            continue
        key = (tuple(row[k] for k in group_keys), row["mixer"], as_alpha(row["alpha"]), str(row[column]), row["seed"])
        if key in chosen:
            keep = max(chosen[key], row, key=lambda r: r["finished_at"])
            where = [r.get("run_dir", "?") for r in (chosen[key], row)]
            message = f"two runs of {key[1]} seed {key[4]} for {column}={key[3]} ({' and '.join(where)})"
            warnings.warn(f"{message}; using {keep.get('run_dir', '?')}, the later one", ResultWarning)
            row = keep
        chosen[key] = row

    grouped: dict[tuple, dict[MethodKey, dict[str, list[float]]]] = {}
    finals: dict[tuple, dict[MethodKey, dict[str, list[float]]]] = {}
    short: dict[tuple, set[str]] = {}
    for (group, mixer, alpha, col, _), row in chosen.items():
        grouped.setdefault(group, {}).setdefault((mixer, alpha), {}).setdefault(col, []).append(float(row[metric]))
        if metric == "top1_median10" and row["epochs"] < MEDIAN_EPOCHS:
            short.setdefault(group, set()).add(col)
            if row["top1_final"] is not None:
                finals.setdefault(group, {}).setdefault((mixer, alpha), {}).setdefault(col, []).append(
                    float(row["top1_final"]))

    groups = [dict(zip(group_keys, group)) for group in sorted(grouped)]
    anywhere = paper is not None and not any(paper.applies_to(group) for group in groups)
    if anywhere:
        warnings.warn(f"published table {paper.name} is for data={paper.data} model={paper.model}, and no runs "
                      f"are; comparing with it anyway", ResultWarning)
    tables = []
    for group in groups:
        methods = grouped[tuple(group.values())]
        method_finals = finals.get(tuple(group.values()), {})
        compare = paper if paper is not None and (anywhere or paper.applies_to(group)) else None
        note = ""
        if paper is not None and compare is None:
            note = f"not compared with {paper.name}, published for {paper.data} · {paper.model}"
        lines: list[Line] = []
        matched = match_published(methods, compare) if compare else {}
        for i, prow in enumerate(compare.rows if compare else []):
            key = matched.get(i)
            if key is None:
                lines.append(Line(prow.method, prow.mixer, None, {}, prow))
            else:
                lines.append(Line(prow.method, key[0], key[1], methods[key], prow, method_finals.get(key, {})))
        for key in sorted(set(methods) - set(matched.values()), key=method_order):
            lines.append(Line(key[0], key[0], key[1], methods[key], finals=method_finals.get(key, {})))
        columns = _column_order(c for cells in methods.values() for c in cells)
        final_columns = [c for c in columns if c in short.get(tuple(group.values()), set())]
        tables.append(Table(group, column, metric, columns, lines, compare, note, final_columns))
    return tables


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt)


def _alpha_text(line: Line) -> str:
    pub = line.published.alpha if line.published else None
    if line.alpha is None or not line.cells:
        return _num(pub, "g")
    if pub is not None and pub != line.alpha:
        return f"{line.alpha:g} (pub {pub:g})"
    return f"{line.alpha:g}"


def _title(table: Table) -> str:
    return " · ".join(f"{v} epochs" if k == "epochs" else str(v) for k, v in table.group.items())


def _cell(line: Line, column: str, final: bool = False) -> str:
    std = line.std(column, final)
    return _num(line.mean(column, final)) + (f" ± {std:.2f}" if std is not None else "")


def _pub_cell(line: Line, column: str) -> str:
    other = line.pub_other(column)
    return _num(line.pub(column)) if other is None else f"({other:.2f})"


def seeds_caption(counts: set[int]) -> str:
    """What a table's cells summarise, from the seed counts in its cells.

    Example:
        >>> seeds_caption({3}), seeds_caption({1}), seeds_caption({2, 3})
        ('mean ± std over 3 seeds', 'one seed (no std)', 'mean ± std over n seeds')
    """
    if len(counts) != 1:
        return "mean ± std over n seeds"
    (n,) = counts
    return "one seed (no std)" if n == 1 else f"mean ± std over {n} seeds"


def format_markdown(tables: Sequence[Table]) -> str:
    """The tables as Markdown, each under a heading naming its group.

    A cell reads ``mean ± std`` (std left out for one seed), followed by ``(n=k)`` when
    the seed counts differ within the table. With a paper, each column ``c`` has
    ``c pub`` (published) and ``c Δ`` (ours − published) beside it; a published value of
    another metric stands in parentheses, with no Δ. A column of ``Table.final_columns``
    has ``c final`` (the last epoch's top-1) beside it.

    Example:
        >>> from openmix.results import example_row
        >>> rows = [example_row(seed=s, top1_median10=v) for s, v in [(0, 78.0), (1, 79.0)]]
        >>> print(format_markdown(build_tables(rows)), end="")
        ## cifar100 · cifar_resnet18
        <BLANKLINE>
        top1_median10 (%), mean ± std over 2 seeds; columns: epochs
        <BLANKLINE>
        | method | alpha |          200 |
        | :----- | ----: | -----------: |
        | cutmix |   0.2 | 78.50 ± 0.71 |
    """
    out = []
    for table in tables:
        counts = {line.n(c) for line in table.lines for c in table.columns if line.n(c)}
        unit = " (%)" if table.metric.startswith("top") else ""
        caption = f"{table.metric}{unit}, {seeds_caption(counts)}; columns: {table.column}"
        if table.paper:
            caption += f"; published: {table.paper.name}, Δ = ours − published"
            if any(line.pub_other(c) is not None for line in table.lines for c in table.columns):
                caption += "; a published value in parentheses is of another metric (see its note): not compared"
            notes = sorted({line.published.note for line in table.lines if line.published and line.published.note})
            caption += "".join(f"; note: {note}" for note in notes)
        caption += f"; {table.note}" if table.note else ""
        if table.final_columns:
            caption += (f"; final = top-1 of the last epoch, beside runs shorter than {MEDIAN_EPOCHS} epochs "
                        f"(their median is over fewer epochs)")
        header = ["method"] + (["mixer"] if table.paper else []) + ["alpha"]
        body = []
        for line in table.lines:
            cells = [line.method] + ([line.mixer] if table.paper else []) + [_alpha_text(line)]
            for c in table.columns:
                n = line.n(c)
                cells.append(_cell(line, c) + (f" (n={n})" if n and len(counts) > 1 else ""))
                if c in table.final_columns:
                    cells.append(_cell(line, c, final=True))
                if table.paper:
                    cells += [_pub_cell(line, c), _num(line.diff(c), "+.2f")]
            body.append(cells)
        for c in table.columns:
            header += [c] + ([f"{c} final"] if c in table.final_columns else [])
            header += [f"{c} pub", f"{c} Δ"] if table.paper else []
        width = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        left = 1 + bool(table.paper)  # method (and mixer) left-aligned, the rest right-aligned

        def fmt(cells: list[str]) -> str:
            padded = (c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width)))
            return "| " + " | ".join(padded) + " |"

        rule = fmt([":" + "-" * (w - 1) if i < left else "-" * (w - 1) + ":" for i, w in enumerate(width)])
        out += [f"## {_title(table)}", "", caption, "", fmt(header), rule, *map(fmt, body), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def format_csv(tables: Sequence[Table]) -> str:
    """The tables as one CSV: the group keys, ``method,mixer,alpha``, then for each column ``c``
    the unformatted ``c_mean,c_std,c_n`` (and ``c_published,c_diff`` with a paper, both empty
    for a published value of another metric)."""
    group_keys = list(tables[0].group) if tables else []
    paper = any(t.paper for t in tables)
    columns = _column_order(c for t in tables for c in t.columns)
    header = [*group_keys, "method", "mixer", "alpha"] + (["published_alpha"] if paper else [])
    for c in columns:
        header += [f"{c}_mean", f"{c}_std", f"{c}_n"] + ([f"{c}_published", f"{c}_diff"] if paper else [])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for table in tables:
        for line in table.lines:
            pub_alpha = line.published.alpha if line.published else None
            alpha = line.alpha if line.cells else pub_alpha
            cells: list[Any] = [*table.group.values(), line.method, line.mixer, alpha]
            cells += [pub_alpha] if paper else []
            for c in columns:
                cells += [line.mean(c), line.std(c), line.n(c)]
                cells += [line.pub(c), line.diff(c)] if paper else []
            writer.writerow(["" if v is None else v for v in cells])
    return text.getvalue()


def write_csv(tables: Sequence[Table], path: str | Path) -> None:
    """Write :func:`format_csv` of the tables to ``path``, atomically."""
    write_atomic(path, format_csv(tables))
