"""Plots of Qini / uplift curves and curve data for DVC plots.

The plot functions build a :class:`matplotlib.figure.Figure` on an Agg canvas and
return it; they never touch ``matplotlib.pyplot``, so no global figure state is
created or left behind (save with ``fig.savefig(path)``). matplotlib is imported
inside the functions, so importing :mod:`fulcrum.metrics` does not need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["curve_points", "plot_qini_curves", "plot_uplift_curves"]

Curve = tuple[Sequence[float], Sequence[float]]


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_curves(curves: Mapping[str, Curve], perfect: Curve | None, title: str, ylabel: str):
    if not curves and perfect is None:
        raise ValueError("nothing to plot: give at least one curve")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)

    ends: list[tuple[float, float]] = []
    if perfect is not None:
        xp, vp = np.asarray(perfect[0], dtype=float), np.asarray(perfect[1], dtype=float)
        ax.plot(xp, vp, color="black", linewidth=1.5, label="perfect")
        ends.append((float(xp[-1]), float(vp[-1])))
    for name, (x, v) in curves.items():
        x, v = np.asarray(x, dtype=float), np.asarray(v, dtype=float)
        if x.shape != v.shape or x.ndim != 1 or x.size == 0:
            raise ValueError(f"curve {name!r}: x and values must be 1-D of equal, non-zero length")
        ax.plot(x, v, linewidth=1.5, label=str(name))
        ends.append((float(x[-1]), float(v[-1])))

    # random targeting: straight line from (0, 0) to the end of the curves
    # (one line per distinct end point; curves of the same data share it)
    drawn: list[tuple[float, float]] = []
    for end in ends:
        if any(np.allclose(end, other) for other in drawn):
            continue
        ax.plot(
            [0.0, end[0]],
            [0.0, end[1]],
            color="grey",
            linestyle="--",
            linewidth=1.0,
            label="random" if not drawn else None,
        )
        drawn.append(end)

    ax.axhline(0.0, color="lightgrey", linewidth=0.8, zorder=0)
    ax.set_xlabel("number of targeted rows (ranked by predicted uplift)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    return fig


def plot_qini_curves(
    curves: Mapping[str, Curve], perfect: Curve | None = None, title: str = "Qini curves"
):
    """Plot Qini curves ``{name: (x, q)}`` with the random line (and the perfect curve).

    Returns:
        A new :class:`matplotlib.figure.Figure`.
    """
    return _plot_curves(curves, perfect, title, "incremental response (Qini)")


def plot_uplift_curves(
    curves: Mapping[str, Curve], perfect: Curve | None = None, title: str = "Uplift curves"
):
    """Plot uplift curves ``{name: (x, u)}`` with the random line (and the perfect curve).

    Returns:
        A new :class:`matplotlib.figure.Figure`.
    """
    return _plot_curves(curves, perfect, title, "uplift x targeted rows")


def curve_points(x, y, max_points: int = 200) -> list[dict]:
    """Down-sample a curve to at most ``max_points`` rows ``{"x": ..., "y": ...}``.

    The points kept are evenly spaced in index and always include the first and the
    last point; a curve with at most ``max_points`` points is returned whole. Values
    are plain floats, ready for a DVC plots JSON file.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    if isinstance(max_points, bool) or not isinstance(max_points, int | np.integer):
        raise ValueError(f"max_points must be an int, got {max_points!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    n = x.size
    if n <= max_points:
        keep = np.arange(n)
    else:
        keep = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
    return [{"x": float(x[i]), "y": float(y[i])} for i in keep]
