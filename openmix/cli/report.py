"""``openmix-report``: the result rows of a sweep as tables, beside published numbers, and a plot.

Usage::

    openmix-report RUNS... [--paper NAME] [--metric top1_median10] [--columns epochs|data|model]
                   [--metrics top1_final,ece,corruption_top1,...] [--markdown PATH] [--csv PATH]
                   [--plot PATH] [--severity PATH] [--reliability PATH]

Rows are methods (a mixer and its alpha), columns the values of ``--columns`` (epoch
budgets by default); a cell is the mean ± sample std over seeds. Runs of different
(data, model) get one table each. ``--paper`` names a CSV shipped in ``openmix/published/``
(or gives a path to one) and puts the published value and ``ours - published`` beside each of
our columns. The evaluation beyond top-1 (``eval.json``, ``openmix-eval``) is a metric like any other
(``--metric ece``); ``--metrics`` lays several side by side, one table per group of runs. The
tables, the comparison and the plots are :mod:`openmix.reporting`'s; this module only reads the
command line.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from openmix.reporting import (
    COLUMN_KEYS,
    METRICS,
    available_papers,
    build_tables,
    format_markdown,
    load_published,
    plot_curves,
    write_csv,
)
from openmix.reporting.evaluation import (
    DERIVED_METRICS,
    EVAL_METRICS,
    format_metric_csv,
    format_metric_markdown,
    metric_tables,
    with_evaluation,
)
from openmix.reporting.plots import plot_reliability_by_method, plot_severity
from openmix.results import ResultWarning, find_results, write_atomic

__all__ = ["main"]

ALL_METRICS = (*METRICS, *EVAL_METRICS, *DERIVED_METRICS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openmix-report",
        description="Tables (beside published numbers) and a plot from the result rows of openmix runs.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUNS",
                        help="run or sweep folders (searched recursively), or result.json files")
    parser.add_argument("--paper", metavar="NAME",
                        help=f"published table to compare with ({', '.join(available_papers())}) or a path to a CSV")
    parser.add_argument("--metric", default="top1_median10", choices=ALL_METRICS,
                        help="the value in the cells: a result-row value, an evaluation metric (eval.json), "
                             "or one relative to vanilla (mce, time_ratio) (default: %(default)s)")
    parser.add_argument("--metrics", metavar="LIST",
                        help="comma-separated metrics side by side instead: one table per experiment, data, model "
                             "and epochs")
    parser.add_argument("--columns", default="epochs", choices=COLUMN_KEYS,
                        help="what the columns are (default: %(default)s)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the Markdown tables to PATH")
    parser.add_argument("--csv", metavar="PATH", help="write the tables as CSV (unformatted numbers)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of validation top-1 against epoch per mixer")
    parser.add_argument("--severity", metavar="PATH", help="write a PNG of top-1 against corruption severity per mixer")
    parser.add_argument("--reliability", metavar="PATH", help="write a PNG of a reliability diagram per mixer")
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
    rows = with_evaluation(rows)
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown:
            print(f"openmix-report: unknown metrics {unknown}; known: {', '.join(ALL_METRICS)}", file=sys.stderr)
            return 2
        tables = metric_tables(rows, metrics)
        text = format_metric_markdown(tables)
        if args.csv:
            write_atomic(args.csv, format_metric_csv(tables))
    else:
        tables = build_tables(rows, column=args.columns, metric=args.metric, paper=paper)
        text = format_markdown(tables)
        if args.csv:
            write_csv(tables, args.csv)
    sys.stdout.write(text)
    if args.markdown:
        write_atomic(args.markdown, text)
    plots = [(args.plot, lambda path: plot_curves(rows, path, paper)),
             (args.severity, lambda path: plot_severity(rows, path)),
             (args.reliability, lambda path: plot_reliability_by_method(rows, path))]
    for path, plot in plots:
        if path:
            try:
                plot(path)
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
