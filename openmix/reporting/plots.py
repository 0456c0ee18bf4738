"""Validation top-1 against epoch, from the ``metrics.csv`` of each run, beside published values."""

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

__all__ = ["plot_curves"]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, paper: Published | None = None) -> None:
    """Plot validation top-1 against epoch, one panel per (data, model), one line per method
    and epoch budget (mean over seeds, from each run's ``metrics.csv``), with the published
    value as a star at its epoch budget when ``paper`` is given (in the panels it is about,
    as in :func:`~openmix.reporting.build_tables`; values of another metric get none); save
    as PNG (Agg backend), atomically.

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
        points = panel.setdefault((row["mixer"], as_alpha(row["alpha"])), {}).setdefault(row["epochs"], {})
        for m in metrics:
            points.setdefault(float(m["epoch"]), []).append(float(m["val_top1"]))
    if not curves:
        raise ValueError("nothing to plot: no run has a metrics.csv with epoch and val_top1 columns")

    panels = sorted(curves)
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(7.0 * ncols, 4.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    methods = sorted({key for panel in curves.values() for key in panel}, key=method_order)
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
        ax.legend(handles=handles, fontsize="small")
        ax.set(title=" · ".join(map(str, panel)), xlabel="epoch", ylabel="validation top-1 (%)")
        ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(path, png.getvalue())
