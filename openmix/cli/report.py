"""``openmix-report``: the result rows of a sweep as tables, beside published numbers, and a plot.

Usage::

    openmix-report RUNS... [--paper NAME] [--metric top1_median10] [--columns epochs|data|model]
                   [--markdown PATH] [--csv PATH] [--plot PATH]

Rows are methods (a mixer and its alpha), columns the values of ``--columns`` (epoch
budgets by default); a cell is the mean ± sample std over seeds. Runs of different
(data, model) get one table each. Beside a ``top1_median10`` column of runs shorter than 10
epochs (whose median is over fewer epochs than the metric means) comes a ``final`` column: the
top-1 of the last epoch. ``--paper`` names a CSV shipped in ``openmix/published/`` (``benchmarks/published/`` in a checkout)
(or gives a path to one) and puts the published value and ``ours - published`` beside
each of our columns.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmix.results import ResultWarning, find_results, read_metrics

__all__ = [
    "PUBLISHED_DIR",
    "Published",
    "PublishedRow",
    "Line",
    "Table",
    "available_papers",
    "load_published",
    "build_tables",
    "format_markdown",
    "write_csv",
    "plot_curves",
    "main",
]

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "published"  # shipped inside the package
COLUMN_KEYS = ("epochs", "data", "model")
METRICS = ("top1_median10", "top1_median5", "top1_final", "top1_best", "top5_final", "wall_time_s", "images_per_s")
_GROUP_KEYS = ("data", "model", "epochs")
MEDIAN_EPOCHS = 10  # top1_median10 is the median of the last 10 epochs

MethodKey = tuple[str, float | None]  # (mixer, alpha)


# ----------------------------------------------------------------------------- published tables
@dataclass
class PublishedRow:
    """One method of a published table: the paper's label, our mixer name, and its numbers."""

    method: str
    mixer: str
    alpha: float | None
    values: dict[str, float | None]
    note: str = ""


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
        raise ValueError(f"{where}: expected a number or an empty cell, got {text!r}") from None


def load_published(name: str | Path) -> Published:
    """Read a published table by name (``"cifar100_r18"``) or by path to a CSV.

    The CSV has columns ``method,mixer,alpha``, one column per epoch budget and an
    optional ``note``; empty cells are missing numbers. Lines starting with ``#`` are
    comments; ``# data: NAME`` and ``# model: NAME`` among them say which runs it is about.

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
        values = {key: _float(line[key], f"{where}, column {key!r}") for key in columns}
        rows.append(
            PublishedRow(line["method"], line["mixer"], _float(line["alpha"], where), values, line.get("note") or "")
        )
    return Published(path.stem, columns, rows, meta.get("data"), meta.get("model"))


# ----------------------------------------------------------------------------- tables
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
        return self.published.values.get(column) if self.published else None

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


def _method_order(key: MethodKey) -> tuple:
    mixer, alpha = key
    return (mixer != "vanilla", mixer, alpha is not None, alpha or 0.0)


def _match(keys: Iterable[MethodKey], paper: Published) -> dict[int, MethodKey]:
    """Our method for each published row (by index): same mixer, and same alpha where that decides."""
    free = sorted(keys, key=_method_order)
    matched = {}
    for i, row in enumerate(paper.rows):
        candidates = [k for k in free if k[0] == row.mixer]
        exact = [k for k in candidates if k[1] == row.alpha]
        chosen = exact[0] if exact else candidates[0] if len(candidates) == 1 else None
        if chosen is not None:
            matched[i] = chosen
            free.remove(chosen)
    return matched


def _alpha(value: Any) -> float | None:
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

    Several rows for the same seed of the same cell (a rerun) count once: the latest
    ``finished_at`` wins, with a :class:`~openmix.results.ResultWarning`. Lines come in the
    paper's order when ``paper`` is given (its rows without runs included), then vanilla,
    then the other mixers alphabetically. The paper goes with the tables whose data and
    model it names; when it names those of no table, with every table (and a warning).
    With ``metric="top1_median10"``, the columns holding runs shorter than 10 epochs are
    listed in ``Table.final_columns`` and their ``top1_final`` values kept in ``Line.finals``.

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
        if row[metric] is None:
            warnings.warn(f"{metric} was not measured in {row.get('run_dir', 'a run')}; run left out", ResultWarning)
            continue
        key = (tuple(row[k] for k in group_keys), row["mixer"], _alpha(row["alpha"]), str(row[column]), row["seed"])
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
        matched = _match(methods, compare) if compare else {}
        for i, prow in enumerate(compare.rows if compare else []):
            key = matched.get(i)
            if key is None:
                lines.append(Line(prow.method, prow.mixer, None, {}, prow))
            else:
                lines.append(Line(prow.method, key[0], key[1], methods[key], prow, method_finals.get(key, {})))
        for key in sorted(set(methods) - set(matched.values()), key=_method_order):
            lines.append(Line(key[0], key[0], key[1], methods[key], finals=method_finals.get(key, {})))
        columns = _column_order(c for cells in methods.values() for c in cells)
        final_columns = [c for c in columns if c in short.get(tuple(group.values()), set())]
        tables.append(Table(group, column, metric, columns, lines, compare, note, final_columns))
    return tables


# ----------------------------------------------------------------------------- output
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


def format_markdown(tables: Sequence[Table]) -> str:
    """The tables as Markdown, each under a heading naming its group.

    A cell reads ``mean ± std`` (std left out for one seed), followed by ``(n=k)`` when
    the seed counts differ within the table. With a paper, each column ``c`` has
    ``c pub`` (published) and ``c Δ`` (ours − published) beside it. A column of
    ``Table.final_columns`` has ``c final`` (the last epoch's top-1) beside it.

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
        seeds = "over n seeds" if len(counts) != 1 else "over 1 seed" if 1 in counts else f"over {min(counts)} seeds"
        caption = f"{table.metric}{unit}, mean ± std {seeds}; columns: {table.column}"
        if table.paper:
            caption += f"; published: {table.paper.name}, Δ = ours − published"
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
                    cells += [_num(line.pub(c)), _num(line.diff(c), "+.2f")]
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


def write_csv(tables: Sequence[Table], path: str | Path) -> None:
    """Write the tables as one CSV: the group keys, ``method,mixer,alpha``, then for each
    column ``c`` the unformatted ``c_mean,c_std,c_n`` (and ``c_published,c_diff`` with a paper)."""
    group_keys = list(tables[0].group) if tables else []
    paper = any(t.paper for t in tables)
    columns = _column_order(c for t in tables for c in t.columns)
    header = [*group_keys, "method", "mixer", "alpha"] + (["published_alpha"] if paper else [])
    for c in columns:
        header += [f"{c}_mean", f"{c}_std", f"{c}_n"] + ([f"{c}_published", f"{c}_diff"] if paper else [])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
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


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, paper: Published | None = None) -> None:
    """Plot validation top-1 against epoch, one panel per (data, model), one line per method
    and epoch budget (mean over seeds, from each run's ``metrics.csv``), with the published
    value as a star at its epoch budget when ``paper`` is given (in the panels it is about,
    as in :func:`build_tables`); save as PNG (Agg backend).

    Raises:
        ValueError: none of the runs has a ``metrics.csv`` with ``epoch`` and ``val_top1``.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    # (data, model) -> (mixer, alpha) -> epochs -> epoch -> val_top1 of each seed
    curves: dict[tuple, dict[MethodKey, dict[int, dict[float, list[float]]]]] = {}
    for row in rows:
        metrics = [m for m in read_metrics(row["run_dir"]) if None not in (m.get("epoch"), m.get("val_top1"))]
        if not metrics:
            warnings.warn(f"no epoch/val_top1 in {row['run_dir']}/metrics.csv; run left out of the plot", ResultWarning)
            continue
        panel = curves.setdefault((row["data"], row["model"]), {})
        points = panel.setdefault((row["mixer"], _alpha(row["alpha"])), {}).setdefault(row["epochs"], {})
        for m in metrics:
            points.setdefault(float(m["epoch"]), []).append(float(m["val_top1"]))
    if not curves:
        raise ValueError("nothing to plot: no run has a metrics.csv with epoch and val_top1 columns")

    panels = sorted(curves)
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(7.0 * ncols, 4.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    methods = sorted({key for panel in curves.values() for key in panel}, key=_method_order)
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    color = {key: cmap(i % cmap.N) for i, key in enumerate(methods)}
    styles = ["-", "--", ":", "-."]
    about = [paper is not None and paper.applies_to({"data": d, "model": m}) for d, m in panels]
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        by_method = curves[panel]
        budgets = sorted({e for per_budget in by_method.values() for e in per_budget})
        mixers = [k[0] for k in by_method]
        compare = paper is not None and (about[i] or not any(about))  # as in build_tables
        matched = {key: paper.rows[j] for j, key in _match(by_method, paper).items()} if compare else {}
        starred = False
        for key in sorted(by_method, key=_method_order):
            mixer, alpha = key
            name = mixer + (f" α={alpha:g}" if mixers.count(mixer) > 1 and alpha is not None else "")
            for epochs, points in sorted(by_method[key].items()):
                xs = sorted(points)
                label = name + (f", {epochs} ep" if len(budgets) > 1 else "")
                ax.plot(xs, [statistics.fmean(points[x]) for x in xs], styles[budgets.index(epochs) % len(styles)],
                        color=color[key], lw=1.4, label=label)
                value = matched[key].values.get(str(epochs)) if key in matched else None
                if value is not None:
                    ax.plot([epochs], [value], "*", color=color[key], mec="black", ms=13, zorder=5)
                    starred = True
        handles, _ = ax.get_legend_handles_labels()
        if starred:
            handles.append(Line2D([], [], ls="none", marker="*", color="grey", mec="black", ms=11,
                                  label=f"published ({paper.name})"))
        ax.legend(handles=handles, fontsize="small")
        ax.set(title=" · ".join(map(str, panel)), xlabel="epoch", ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)


# ----------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openmix-report",
        description="Tables (beside published numbers) and a plot from the result rows of openmix runs.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUNS",
                        help="run or sweep folders (searched recursively), or result.json files")
    parser.add_argument("--paper", metavar="NAME",
                        help=f"published table to compare with ({', '.join(available_papers())}) or a path to a CSV")
    parser.add_argument("--metric", default="top1_median10", choices=METRICS,
                        help="the result-row value in the cells (default: %(default)s)")
    parser.add_argument("--columns", default="epochs", choices=COLUMN_KEYS,
                        help="what the columns are (default: %(default)s)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the Markdown tables to PATH")
    parser.add_argument("--csv", metavar="PATH", help="write the tables as CSV (unformatted numbers)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of validation top-1 against epoch per mixer")
    return parser


def _report(args: argparse.Namespace) -> int:
    paper = None
    if args.paper:
        if args.columns != "epochs":
            message = f"--paper compares epoch budgets, so it needs --columns epochs (got --columns {args.columns})"
            print(f"openmix-report: {message}", file=sys.stderr)
            return 2
        try:
            paper = load_published(args.paper)
        except ValueError as err:
            print(f"openmix-report: {err}", file=sys.stderr)
            return 2
    try:
        rows = find_results(args.runs)
    except FileNotFoundError as err:
        print(f"openmix-report: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"openmix-report: no runs found: no valid result.json under {', '.join(args.runs)}", file=sys.stderr)
        return 2
    tables = build_tables(rows, column=args.columns, metric=args.metric, paper=paper)
    text = format_markdown(tables)
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.csv:
        write_csv(tables, args.csv)
    if args.plot:
        try:
            plot_curves(rows, args.plot, paper)
        except ValueError as err:
            print(f"openmix-report: {err}", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``openmix-report`` with ``argv`` (default: the command line); return the exit code.

    0 on success; 2 on a usage error, no runs found, or an unknown ``--paper``.
    Skipped result files are reported on stderr.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultWarning)
        try:
            return _report(args)
        finally:
            for warning in caught:
                kind = "" if issubclass(warning.category, ResultWarning) else f"{warning.category.__name__}: "
                print(f"openmix-report: warning: {kind}{warning.message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
