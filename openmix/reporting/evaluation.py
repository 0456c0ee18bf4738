"""The evaluation beyond top-1 in reports: ``eval.json`` metrics joined to the result rows, the metrics
that compare a run with vanilla, and one table of several metrics per group of runs.

:func:`with_evaluation` gives each row the flat metrics of its run's ``eval.json``
(:data:`EVAL_METRICS`) and two that need the vanilla runs of its group (same experiment, data,
model and epochs; the mean over vanilla's seeds):

* ``mce``: the mean corruption error relative to vanilla (Hendrycks & Dietterich 2019): for each
  corruption, the run's errors summed over the 5 severities over vanilla's, averaged over
  corruptions, in percent (vanilla is about 100; lower is more robust);
* ``time_ratio``: training time per image over vanilla's (from ``images_per_s``).

:func:`metric_tables` and :func:`format_metric_markdown` lay out several metrics side by side:
one table per group, one line per method, a column per metric (mean ± std over seeds).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmix.reporting.tables import seeds_caption
from openmix.results import read_eval

__all__ = ["EVAL_METRICS", "DERIVED_METRICS", "with_evaluation", "MetricTable", "metric_tables",
           "format_metric_markdown", "format_metric_csv", "LOWER_IS_BETTER"]

EVAL_METRICS = ("ece", "adaptive_ece", "nll", "brier", "corruption_top1", "fgsm_top1", "pgd_top1", "occlusion_top1",
                "ood_auroc")
DERIVED_METRICS = ("mce", "time_ratio")
LOWER_IS_BETTER = frozenset({"ece", "adaptive_ece", "nll", "brier", "mce", "time_ratio", "wall_time_s"})
_GROUP = ("experiment", "data", "model", "epochs")


def with_evaluation(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (from :func:`openmix.results.find_results`), each with its run's evaluation metrics
    (``None`` where not measured) and the vanilla-relative ``mce`` and ``time_ratio``; each row also
    keeps its ``eval.json`` as ``"evaluation"`` (or ``None``)."""
    joined = []
    for row in rows:
        evaluation = read_eval(row["run_dir"]) if "run_dir" in row else None
        extra = {key: (evaluation or {}).get(key) for key in EVAL_METRICS}
        joined.append({**row, **extra, "evaluation": evaluation})
    vanilla: dict[tuple, list[dict[str, Any]]] = {}
    for row in joined:
        if row["mixer"] == "vanilla":
            vanilla.setdefault(tuple(row.get(k) for k in _GROUP), []).append(row)
    for row in joined:
        baseline = vanilla.get(tuple(row.get(k) for k in _GROUP), [])
        row["mce"] = _mce(row["evaluation"], [b["evaluation"] for b in baseline])
        speeds = [b["images_per_s"] for b in baseline if b.get("images_per_s")]
        row["time_ratio"] = statistics.fmean(speeds) / row["images_per_s"] if speeds and row.get("images_per_s") else None
    return joined


def _mce(evaluation: dict[str, Any] | None, baselines: list[dict[str, Any] | None]) -> float | None:
    """Mean corruption error over vanilla's (percent), on the corruptions both have."""
    if not evaluation or "corruption" not in evaluation:
        return None
    tables = [b["corruption"] for b in baselines if b and "corruption" in b]
    ratios = []
    for name, entry in evaluation["corruption"].items():
        base = [t[name]["top1"] for t in tables if name in t]
        if not base:
            continue
        vanilla_error = sum(100.0 - statistics.fmean(v) for v in zip(*base))
        if vanilla_error > 0:
            ratios.append(sum(100.0 - v for v in entry["top1"]) / vanilla_error)
    return 100.0 * statistics.fmean(ratios) if ratios else None


@dataclass
class MetricTable:
    """One group of runs (``group``: experiment, data, model, epochs), one line per method, one column per metric."""

    group: dict[str, Any]
    metrics: list[str]
    lines: list[tuple[str, float | None, dict[str, list[float]]]] = field(default_factory=list)  # method, alpha, values


def metric_tables(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[MetricTable]:
    """Group rows (with :func:`with_evaluation`'s metrics) by experiment, data, model and epochs; in each,
    one line per (mixer, alpha), vanilla first, with every seed's value of each metric.

    Example:
        >>> from openmix.results import example_row
        >>> rows = [{**example_row(seed=s, top1_final=t), "ece": e} for s, t, e in [(0, 90.0, 2.0), (1, 92.0, 4.0)]]
        >>> [table] = metric_tables(rows, ["top1_final", "ece"])
        >>> table.lines[0][2]
        {'top1_final': [90.0, 92.0], 'ece': [2.0, 4.0]}
    """
    groups: dict[tuple, dict[tuple[str, float | None], dict[str, list[float]]]] = {}
    for row in rows:
        alpha = None if row.get("alpha") is None else float(row["alpha"])
        line = groups.setdefault(tuple(row.get(k) for k in _GROUP), {}).setdefault((row["mixer"], alpha), {})
        for metric in metrics:
            value = row.get(metric)
            if value is not None:
                line.setdefault(metric, []).append(float(value))
    tables = []
    for key in sorted(groups, key=str):
        methods = groups[key]
        order = sorted(methods, key=lambda m: (m[0] != "vanilla", m[0], m[1] or 0.0))
        lines = [(mixer, alpha, {metric: methods[(mixer, alpha)].get(metric, []) for metric in metrics})
                 for mixer, alpha in order]
        tables.append(MetricTable(dict(zip(_GROUP, key)), list(metrics), lines))
    return tables


def format_metric_markdown(tables: Sequence[MetricTable]) -> str:
    """The tables as Markdown: a cell is ``mean ± std`` over seeds (``(n=k)`` where seeds are missing);
    the best mean of each column is bold (lowest for :data:`LOWER_IS_BETTER`, else highest)."""
    out = []
    for table in tables:
        seeds = max((len(v) for _, _, values in table.lines for v in values.values()), default=0)
        means = {m: [statistics.fmean(values[m]) for _, _, values in table.lines if values[m]] for m in table.metrics}
        best = {m: (min(v) if m in LOWER_IS_BETTER else max(v)) for m, v in means.items() if v}
        header = ["method", "alpha", *table.metrics]
        body = []
        for mixer, alpha, values in table.lines:
            cells = [mixer, "" if alpha is None else f"{alpha:g}"]
            for metric in table.metrics:
                v = values[metric]
                if not v:
                    cells.append("")
                    continue
                mean = statistics.fmean(v)
                text = f"{mean:.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
                text += f" (n={len(v)})" if len(v) < seeds else ""
                cells.append(f"**{text}**" if len(means[metric]) > 1 and mean == best.get(metric) else text)
            body.append(cells)
        width = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

        def fmt(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width))) + " |"

        rule = "| " + " | ".join(":" + "-" * (w - 1) if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(width)) + " |"
        title = " · ".join(f"{v} epochs" if k == "epochs" else str(v) for k, v in table.group.items() if v is not None)
        caption = (f"{seeds_caption({seeds})}; best of each column in bold "
                   f"(lowest for {', '.join(m for m in table.metrics if m in LOWER_IS_BETTER) or 'none'}, else highest)")
        out += [f"## {title}", "", caption, "", fmt(header), rule, *map(fmt, body), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def format_metric_csv(tables: Sequence[MetricTable]) -> str:
    """The tables as one CSV: the group keys, ``method,alpha``, then ``<metric>_mean,<metric>_std,<metric>_n``."""
    import csv
    import io

    metrics = list(dict.fromkeys(m for table in tables for m in table.metrics))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_GROUP, "method", "alpha", *(f"{m}_{part}" for m in metrics for part in ("mean", "std", "n"))])
    for table in tables:
        for mixer, alpha, values in table.lines:
            cells: list[Any] = [*(table.group.get(k) for k in _GROUP), mixer, alpha]
            for metric in metrics:
                v = values.get(metric, [])
                cells += [statistics.fmean(v) if v else None, statistics.stdev(v) if len(v) > 1 else None, len(v)]
            writer.writerow(["" if c is None else c for c in cells])
    return out.getvalue()


def evaluation_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """The ``eval.json`` of a row's run (as :func:`with_evaluation` keeps it), else read from its folder."""
    if "evaluation" in row:
        return row["evaluation"]
    return read_eval(Path(row["run_dir"])) if "run_dir" in row else None
