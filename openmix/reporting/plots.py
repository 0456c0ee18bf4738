"""Plots of a sweep: validation top-1 against epoch (from each run's ``metrics.csv``, beside published
values), and, from each run's ``eval.json``, accuracy against corruption severity."""

from __future__ import annotations

import io
import math
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openmix.reporting.published import Published
from openmix.reporting.tables import MethodKey, as_alpha, match_published, method_order
from openmix.results import ResultWarning, read_metrics, write_atomic

__all__ = ["plot_curves", "plot_severity", "plot_reliability_by_method", "method_colors"]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, paper: Published | None = None) -> None:
    """Plot validation top-1 against epoch, one panel per (data, model), one line per method
    and epoch budget (mean over seeds, from each run's ``metrics.csv``), with the published
    value as a star at its epoch budget when ``paper`` is given (in the panels it is about,
    as in :func:`~openmix.reporting.build_tables`; values of another metric get none); save
    as PNG (Agg backend), atomically.

    Raises:
        ValueError: none of the runs has a ``metrics.csv`` with ``epoch`` and ``val_top1``.
    """
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
        points = panel.setdefault((row["mixer"], as_alpha(row["alpha"])), {}).setdefault(row["epochs"], {})
        for m in metrics:
            points.setdefault(float(m["epoch"]), []).append(float(m["val_top1"]))
    if not curves:
        raise ValueError("nothing to plot: no run has a metrics.csv with epoch and val_top1 columns")

    panels = sorted(curves)
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    methods = sorted({key for panel in curves.values() for key in panel}, key=method_order)
    color = method_colors(methods)
    beside = max(len(panel) for panel in curves.values()) > 8  # legends beside the panels, which widens them
    fig = Figure(figsize=((9.5 if beside else 7.0) * ncols, 4.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    styles = ["-", "--", ":", "-."]
    about = [paper is not None and paper.applies_to({"data": d, "model": m}) for d, m in panels]
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        by_method = curves[panel]
        budgets = sorted({e for per_budget in by_method.values() for e in per_budget})
        mixers = [k[0] for k in by_method]
        compare = paper is not None and (about[i] or not any(about))  # as in build_tables
        matched = {key: paper.rows[j] for j, key in match_published(by_method, paper).items()} if compare else {}
        starred = False
        for key in sorted(by_method, key=method_order):
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
        if beside:  # many curves: the legend beside the panel, not over the final epochs
            ax.legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5),
                      ncols=1 if len(handles) <= 16 else 2)
        else:
            ax.legend(handles=handles, fontsize="small")
        ax.set(title=" · ".join(map(str, panel)), xlabel="epoch", ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(path, png.getvalue())


def plot_severity(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Plot accuracy against corruption severity, one panel per (data, model, epochs), one line per
    method: at severity 0 the clean accuracy of the evaluation subset, at 1-5 the mean over the
    corruptions, each the mean over seeds (from each run's ``eval.json``); save as PNG, atomically.

    Raises:
        ValueError: no run has corruption metrics.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from openmix.reporting.evaluation import evaluation_of

    panels: dict[tuple, dict[MethodKey, list[list[float]]]] = {}  # group -> method -> [accuracy by severity] per seed
    for row in rows:
        evaluation = evaluation_of(row)
        if not evaluation or "corruption" not in evaluation:
            continue
        table = list(evaluation["corruption"].values())
        curve = [evaluation["subset_top1"]] + [statistics.fmean(t["top1"][s] for t in table) for s in range(5)]
        key = (row["data"], row["model"], f"{row['epochs']} epochs")
        panels.setdefault(key, {}).setdefault((row["mixer"], as_alpha(row["alpha"])), []).append(curve)
    if not panels:
        raise ValueError("nothing to plot: no run has an eval.json with corruption metrics (run openmix-eval)")
    ncols = min(len(panels), 2)
    fig = Figure(figsize=(7.0 * ncols, 4.6 * math.ceil(len(panels) / ncols)), layout="constrained")
    FigureCanvasAgg(fig)
    for i, group in enumerate(sorted(panels)):
        ax = fig.add_subplot(math.ceil(len(panels) / ncols), ncols, i + 1)
        methods = sorted(panels[group], key=method_order)
        color = method_colors(methods)
        for mixer, alpha in methods:
            curves = panels[group][(mixer, alpha)]
            mean = [statistics.fmean(values) for values in zip(*curves)]
            ax.plot(range(6), mean, "-o", ms=3, lw=1.4, color=color[(mixer, alpha)], label=mixer)
        ax.set(title=" · ".join(group), xlabel="corruption severity (0: clean)", ylabel="top-1 (%)",
               xticks=range(6))
        ax.legend(fontsize="small", ncols=2)
        ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(path, png.getvalue())


def plot_reliability_by_method(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Reliability diagrams, one panel per (data, model, epochs, method): the bins of each run's
    ``eval.json`` pooled over seeds (counts added, confidence and accuracy weighted by them; the
    panel's ECE is then the pooled bins', which the title says, not the mean of the seeds'); PNG.

    Raises:
        ValueError: no run has reliability bins.
    """
    from openmix.evaluation.calibration import ReliabilityBins, plot_reliability
    from openmix.reporting.evaluation import evaluation_of

    pooled: dict[tuple, list[ReliabilityBins]] = {}  # (data, model, epochs, mixer, alpha) -> each seed's bins
    for row in rows:
        evaluation = evaluation_of(row)
        if evaluation and evaluation.get("reliability"):
            key = (row["data"], row["model"], row["epochs"], row["mixer"], as_alpha(row["alpha"]))
            pooled.setdefault(key, []).append(ReliabilityBins.from_dict(evaluation["reliability"]))
    if not pooled:
        raise ValueError("nothing to plot: no run has an eval.json with reliability bins (run openmix-eval)")
    groups = {key[:3] for key in pooled}
    curves = {}
    for key in sorted(pooled, key=lambda k: (str(k[:3]), method_order(k[3:]))):
        data, model, epochs, mixer, alpha = key
        seeds = len(pooled[key])
        name = mixer + ("" if alpha is None else f" α={alpha:g}") + (f"\n{seeds} seeds pooled" if seeds > 1 else "")
        curves[name if len(groups) == 1 else f"{name} · {data} · {model} · {epochs} ep"] = _pool(pooled[key])
    title = " · ".join(map(str, next(iter(groups)))) + " epochs" if len(groups) == 1 else None
    plot_reliability(curves, path, title=title)


def _pool(curves: list[Any]) -> Any:
    """Bins of several runs as one: counts added, mean confidence and accuracy weighted by the counts."""
    from openmix.evaluation.calibration import ReliabilityBins

    count = [sum(c.count[b] for c in curves) for b in range(len(curves[0].count))]

    def weighted(field: str) -> tuple[float | None, ...]:
        return tuple(sum(c.count[b] * getattr(c, field)[b] for c in curves if c.count[b]) / n if n else None
                     for b, n in enumerate(count))

    return ReliabilityBins(curves[0].edges, weighted("confidence"), weighted("accuracy"), tuple(count))


def method_colors(methods: Sequence[MethodKey]) -> dict[MethodKey, Any]:
    """A colour per ``(mixer, alpha)``: vanilla black, the others distinct (tab10 up to 10 of them,
    else tab20 then tab20b: 40 before any repeats).

    Example:
        >>> colors = method_colors([("vanilla", None), *((f"m{i}", 1.0) for i in range(21))])
        >>> colors[("vanilla", None)], len({colors[(f"m{i}", 1.0)] for i in range(21)})
        ('black', 21)
    """
    from matplotlib import colormaps

    others = [key for key in methods if key[0] != "vanilla"]
    palette = (list(colormaps["tab10"].colors) if len(others) <= 10
               else [*colormaps["tab20"].colors, *colormaps["tab20b"].colors])
    colors: dict[MethodKey, Any] = {key: palette[i % len(palette)] for i, key in enumerate(others)}
    colors.update({key: "black" for key in methods if key[0] == "vanilla"})
    return colors
