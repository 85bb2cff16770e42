"""Table rows -> the report's PNG plots: speedup, time, accuracy, ROC/PR curves, time breakdown, scaling model.

    from pneumo_hpc.report.plots import plot_speedup
    png = plot_speedup(rows, fits)   # bytes

Figures are built without pyplot: they render through Agg and leave the caller's backend and figures alone.
"""
import io
from pathlib import Path

import numpy as np

from pneumo_hpc.report import reference as ref
from pneumo_hpc.report.amdahl import amdahl_speedup
from pneumo_hpc.report.record import BREAKDOWN_KEYS
from pneumo_hpc.report.runs import SERIES_KEYS, variant


def plot_labels(rows):
    labels = [r["configuration"] for r in rows]
    return [f"{lab} [{r['launcher']}]" if labels.count(lab) > 1 and r["launcher"] else lab
            for lab, r in zip(labels, rows)]


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _speedup_series(ax, points, fits, top):
    """One colour per series: measured points (triangles against another device's baseline), its Amdahl fit."""
    import matplotlib

    colors = iter(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    series = {}
    for r in points:
        series.setdefault(tuple(r[k] for k in SERIES_KEYS), []).append(r)
    for key, members in series.items():
        color = next(colors)
        first = members[0]
        strategy = first["strategy"]
        name = f"{'serial' if strategy == 'serial' else strategy.upper()} {variant(first)} ({first['model']})"
        same = [m for m in members if m["_same_device_baseline"]]
        other = [m for m in members if not m["_same_device_baseline"]]
        if same:
            ax.plot([m["workers"] for m in same], [m["speedup"] for m in same], "o", color=color, label=name)
        if other:
            # Against a serial run on another device type: a hardware change, not scaling; set apart.
            ax.plot([m["workers"] for m in other], [m["speedup"] for m in other], "^", color=color,
                    label=f"{name} vs {other[0]['baseline']}")
        for fit in fits:
            if tuple(fit[k] for k in SERIES_KEYS) == key:
                n = np.linspace(1, top, 100)
                ax.plot(n, amdahl_speedup(fit["f"], n), "--", color=color, linewidth=1,
                        label=f"Amdahl fit f = {fit['f']:.3f}")


def plot_speedup(rows, fits, reference=True) -> bytes:
    import matplotlib.ticker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    points = [r for r in rows if r["speedup"] is not None]
    refs = [r for r in rows if reference and r.get("ref_speedup") is not None]
    top = max([r["workers"] for r in points + refs] + [2])
    ideal = np.linspace(1, top, 100)  # dense: the axis may turn logarithmic below
    ax.plot(ideal, ideal, color="0.6", linestyle=":", label="ideal (S = n)")
    _speedup_series(ax, points, fits, top)
    if refs:
        ax.scatter([r["workers"] for r in refs], [r["ref_speedup"] for r in refs], s=70, facecolors="none",
                   edgecolors="black", label=ref.SOURCE)
        for r in refs:
            ax.annotate(r["ref_configuration"], (r["workers"], r["ref_speedup"]), textcoords="offset points",
                        xytext=(6, -10), fontsize=7, color="0.3")
    if not points:
        ax.text(0.5, 0.5, "no baseline: speedup undefined", transform=ax.transAxes, ha="center", color="0.4")
    values = [r["speedup"] for r in points] + [r["ref_speedup"] for r in refs]
    if values and (max(values) > 1.5 * top or min(values) < 0.5):
        ax.set_yscale("log", base=2)  # cross-device or slowdown points would flatten everything else
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("workers (ranks / GPUs)")
    ax.set_ylabel("speedup vs serial")
    ax.set_xticks(range(1, top + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Speedup")
    return figure_png(fig)


def _bar_axes(n_bars):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.9 * n_bars + 2), 4.5))
    return fig, fig.add_subplot()


def _finish_bars(ax, rows, ylabel, title):
    ax.set_xticks(np.arange(len(rows)), plot_labels(rows), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _bars(rows, values, ref_values, ylabel, title, log=False, hatch_detectors=False) -> bytes:
    fig, ax = _bar_axes(len(rows))
    x = np.arange(len(rows))
    has_ref = any(v is not None for v in ref_values)
    width = 0.4 if has_ref else 0.6
    ours = [np.nan if v is None else v for v in values]
    bars = ax.bar(x - (width / 2 if has_ref else 0), ours, width, label="this kit", color="C0")
    if hatch_detectors:
        for bar, row in zip(bars, rows):
            if row["kind"] == "detector":
                bar.set_hatch("//")
    if has_ref:
        ax.bar(x + width / 2, [np.nan if v is None else v for v in ref_values], width, fill=False, hatch="..",
               edgecolor="0.3", label=ref.SOURCE)
    for xi, v in zip(x, ours):
        if not np.isnan(v):
            ax.annotate(f"{v:.3g}", (xi - (width / 2 if has_ref else 0), v), ha="center", va="bottom", fontsize=7)
    finite = [v for v in ours + list(ref_values) if v is not None and not np.isnan(v) and v > 0]
    if log and finite and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    if not finite:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", color="0.4")
    _finish_bars(ax, rows, ylabel, title)
    return figure_png(fig)


def plot_time(rows, reference=True) -> bytes:
    return _bars(rows, [r["train_time_s"] for r in rows],
                 [r.get("ref_train_time_s") if reference else None for r in rows],
                 "training time (s)", "Training time per configuration", log=True)


def plot_accuracy(rows, reference=True) -> bytes:
    ours = [r["map50"] * 100 if r["kind"] == "detector" and r["map50"] is not None else r["accuracy_pct"]
            for r in rows]
    return _bars(rows, ours, [r.get("ref_accuracy_pct") if reference else None for r in rows],
                 "accuracy (%) / detector mAP50 (%, hatched)", "Validation accuracy / mAP50",
                 hatch_detectors=True)


def plot_time_breakdown(rows) -> bytes | None:
    """One stacked bar per configuration that recorded a time breakdown: seconds per epoch of each part."""
    rows = [r for r in rows if r.get("time_breakdown")]
    if not rows:
        return None
    fig, ax = _bar_axes(len(rows))
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for i, key in enumerate(BREAKDOWN_KEYS):
        heights = np.array([r["time_breakdown"][key] for r in rows])
        ax.bar(x, heights, 0.6, bottom=bottom, label=key.removesuffix("_s"), color=f"C{i}")
        bottom += heights
    for xi, total in zip(x, bottom):
        ax.annotate(f"{total:.3g} s", (xi, total), ha="center", va="bottom", fontsize=7)
    _finish_bars(ax, rows, "seconds per epoch", "Where the time goes (mean per epoch)")
    return figure_png(fig)


def _curve_data(row):
    """(y_true, prob) from a member run's val_predictions.npz, or None."""
    for m in row.get("_runs", ()):
        if m.get("run_dir"):
            path = Path(str(m["run_dir"])) / "val_predictions.npz"
            try:
                with np.load(path) as z:
                    y, p = z["y_true"].astype(int), z["prob"].astype(float)
            except (OSError, KeyError, ValueError):
                continue
            if len(np.unique(y)) == 2:
                return y, p
    return None


def plot_curves(rows) -> bytes | None:
    """ROC and precision-recall curves per classifier configuration (from each run's val_predictions.npz)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    data = [(r["configuration"], d) for r in rows if r["kind"] == "classifier" and (d := _curve_data(r))]
    if not data:
        return None
    fig = Figure(figsize=(11, 4.5))
    roc_ax, pr_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, (y, p) in data:
        fpr, tpr, _ = roc_curve(y, p)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
        prec, rec, _ = precision_recall_curve(y, p)
        pr_ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    prevalence = float(np.mean(data[0][1][0]))
    roc_ax.plot([0, 1], [0, 1], ":", color="0.6", label="chance")
    pr_ax.axhline(prevalence, linestyle=":", color="0.6", label=f"chance (prevalence {prevalence:.2f})")
    roc_ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title="ROC (validation)")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (validation)",
              ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left" if ax is pr_ax else "lower right")
    return figure_png(fig)


def plot_scaling_model(models, fits) -> bytes | None:
    """Predicted speedup per series for 1..1024 workers, beside its measured points and Amdahl fit."""
    import matplotlib
    import matplotlib.ticker
    from matplotlib.figure import Figure

    if not models:
        return None
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    n = np.logspace(0, 10, 200, base=2)
    ax.plot(n, n, color="0.6", linestyle=":", label="ideal (S = n)")
    colors = iter(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for m in models:
        color = next(colors)
        ax.plot(n, m.speedup(n), "-", color=color, label=f"{m.series}: model ({m.source.split(' ')[0]})")
        ax.plot(*zip(*m.measured), "o", color=color, label=f"{m.series}: measured")
        for fit in fits:
            if tuple(fit[k] for k in SERIES_KEYS) == m.key:
                ax.plot(n, amdahl_speedup(fit["f"], n), "--", color=color, linewidth=1,
                        label=f"Amdahl fit f = {fit['f']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(0.5, 1024)
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup vs serial")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Scaling model: predicted speedup, 1 to 1024 workers")
    return figure_png(fig)
