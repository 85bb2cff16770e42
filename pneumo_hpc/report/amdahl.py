"""Amdahl's law S(n) = 1 / (f + (1 - f) / n): the serial fraction f fitted per series of table rows.

    from pneumo_hpc.report.amdahl import amdahl_fit, amdahl_speedup
    amdahl_fit([2, 4, 8], [1.8, 3.1, 4.7])   # f = 0.0999...
"""
import numpy as np

from pneumo_hpc.report.runs import SERIES_KEYS, variant


def amdahl_speedup(f, n):
    n = np.asarray(n, dtype=float)
    return 1.0 / (f + (1.0 - f) / n)


def amdahl_fit(workers, speedups) -> float:
    """Serial fraction f in [0, 1] minimizing sum (S(n) - s)^2 for S(n) = 1 / (f + (1 - f) / n).

    Nonlinear in f but one-dimensional and bounded: a grid over [0, 1] refined three times around its best point
    reaches 1e-9 without needing scipy. Superlinear points push f to 0, slowdowns to 1.
    """
    n = np.asarray(workers, dtype=float)
    s = np.asarray(speedups, dtype=float)
    if n.size == 0 or n.shape != s.shape:
        raise ValueError("amdahl_fit needs equally many worker counts and speedups, at least one")
    lo, hi = 0.0, 1.0
    for _ in range(4):
        grid = np.linspace(lo, hi, 1001)
        sse = ((1.0 / (grid[:, None] + (1.0 - grid[:, None]) / n[None, :]) - s[None, :]) ** 2).sum(axis=1)
        best = int(np.argmin(sse))
        step = (hi - lo) / 1000
        lo, hi = max(0.0, grid[best] - step), min(1.0, grid[best] + step)
    return float(grid[best])


def fit_series(rows):
    """Amdahl fits {series, points: [(workers, speedup)], f, **SERIES_KEYS} of the rows' parallel series."""
    series = {}
    for row in rows:
        # The serial point is S(1) = 1 for every f, and a cross-device speedup is not a scaling curve.
        if row["strategy"] == "serial" or row["speedup"] is None or not row["_same_device_baseline"]:
            continue
        series.setdefault(tuple(row[k] for k in SERIES_KEYS), []).append(row)
    fits = []
    for members in series.values():
        points = [(r["workers"], r["speedup"]) for r in members]
        first = members[0]
        fits.append({"series": f"{first['kind']} {first['model']} {first['strategy'].upper()} ({variant(first)})",
                     "points": points, "f": amdahl_fit(*zip(*points)), **{k: first[k] for k in SERIES_KEYS}})
    return fits
