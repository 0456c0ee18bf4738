"""``openmix-report``: the result rows of a sweep as tables, beside published numbers, and a plot.

Usage::

    openmix-report RUNS... [--paper NAME] [--metric top1_median10] [--columns epochs|data|model]
                   [--markdown PATH] [--csv PATH] [--plot PATH]

Rows are methods (a mixer and its alpha), columns the values of ``--columns`` (epoch
budgets by default); a cell is the mean ± sample std over seeds. Runs of different
(data, model) get one table each. ``--paper`` names a CSV shipped in ``openmix/published/``
(or gives a path to one) and puts the published value and ``ours - published`` beside each of
our columns. The tables, the comparison and the plot are :mod:`openmix.reporting`'s; this
module only reads the command line.
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
from openmix.results import ResultWarning, find_results, write_atomic

__all__ = ["main"]


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
        write_atomic(args.markdown, text)
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
