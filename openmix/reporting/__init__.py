"""Reporting: result rows as tables beside published numbers, as Markdown, CSV and plots.

Example:
    >>> from openmix.results import example_row
    >>> rows = [example_row(seed=s, top1_median10=v) for s, v in [(0, 78.0), (1, 79.0)]]
    >>> [table] = build_tables(rows, paper=load_published("cifar100_r18"))
    >>> cutmix = next(line for line in table.lines if line.mixer == "cutmix")
    >>> cutmix.mean("200"), cutmix.pub("200"), round(cutmix.diff("200"), 2)
    (78.5, 79.45, -0.95)
"""

from openmix.reporting.plots import plot_curves
from openmix.reporting.published import PUBLISHED_DIR, Published, PublishedRow, available_papers, load_published
from openmix.reporting.tables import (
    COLUMN_KEYS,
    METRICS,
    Line,
    Table,
    build_tables,
    format_csv,
    format_markdown,
    write_csv,
)

__all__ = [
    "PUBLISHED_DIR",
    "Published",
    "PublishedRow",
    "available_papers",
    "load_published",
    "COLUMN_KEYS",
    "METRICS",
    "Line",
    "Table",
    "build_tables",
    "format_markdown",
    "format_csv",
    "write_csv",
    "plot_curves",
]
