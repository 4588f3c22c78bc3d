"""Scalar uplift metrics (pure numpy).

- :func:`qini_auc_score`, :func:`uplift_auc_score`: normalized areas
  ``(area(model) - area(random)) / (area(perfect) - area(random))`` under the curves
  of :mod:`fulcrum.metrics.curves`, trapezoid rule, random being the straight line
  from ``(0, 0)`` to the end of the curve. Identical to scikit-uplift's functions on
  binary labels; continuous labels follow the definitions of
  :mod:`fulcrum.metrics.curves` and the scores are invariant to rescaling ``y`` by a
  positive constant. When the perfect curve has no area above the random line (e.g.
  ``y`` all zero) the score is NaN.
- :func:`uplift_at_k`: mean treated response minus mean control response within the
  top ``k`` rows (scikit-uplift's definition, both strategies).
- Ground-truth metrics for simulated data: :func:`pehe`, :func:`true_uplift_at_k`,
  :func:`rank_correlation`.

Rankings are by descending score; equal scores keep a fixed order (a stable sort of
the ascending order, reversed: among ties the later row comes first), which matters
only where a top-``k`` cut splits a tie group.
"""

from __future__ import annotations

import math

import numpy as np

from fulcrum.metrics.curves import (
    _as_float_1d,
    _check_inputs,
    _check_lengths,
    _qini_points,
    _uplift_points,
    perfect_qini_curve,
    perfect_uplift_curve,
)

__all__ = [
    "pehe",
    "qini_auc_score",
    "rank_correlation",
    "true_uplift_at_k",
    "uplift_at_k",
    "uplift_auc_score",
]

_STRATEGIES = ("overall", "by_group")


def _trapezoid(x: np.ndarray, v: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (v[1:] + v[:-1]) / 2.0))


def _normalized_area(curve, perfect) -> float:
    x, v = curve
    x_p, v_p = perfect
    # random: the straight line from (0, 0) to the end point of the curve
    random_area = x_p[-1] * (0.0 + v_p[-1]) / 2.0
    perfect_gain = _trapezoid(x_p, v_p) - random_area
    model_gain = _trapezoid(x, v) - random_area
    if perfect_gain == 0.0:
        return math.nan
    return float(model_gain / perfect_gain)


def _descending_order(score: np.ndarray) -> np.ndarray:
    return np.argsort(score, kind="stable")[::-1]


def _top_count(k, n: int, name: str = "k") -> int:
    """Rows selected by ``k``: ``int(n * k)`` for a float in (0, 1), ``k`` for an int in [1, n)."""
    if isinstance(k, bool | np.bool_):
        raise ValueError(f"{name} must be a float in (0, 1) or an int in [1, {n}), got {k!r}")
    if isinstance(k, int | np.integer):
        if not 0 < k < n:
            raise ValueError(f"{name}={k} must be an int in [1, {n}) (the number of rows)")
        return int(k)
    if isinstance(k, float | np.floating):
        if not 0.0 < k < 1.0:
            raise ValueError(f"{name}={k} must be a float in the open range (0, 1)")
        return int(n * k)
    raise ValueError(f"{name} must be a float in (0, 1) or an int, got {type(k).__name__}")


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def qini_auc_score(y, uplift, treatment, negative_effect: bool = True) -> float:
    """Normalized area under the Qini curve (the QINI coefficient).

    Args:
        y: observed responses (binary or continuous), shape (n,).
        uplift: predicted effects, shape (n,); higher means target first.
        treatment: 1 for treated rows, 0 for control rows, shape (n,).
        negative_effect: which perfect curve normalizes the area
            (see :func:`fulcrum.metrics.curves.perfect_qini_curve`).

    Returns:
        1 for the perfect ranking, about 0 for a random one, negative when worse than
        random; NaN when the perfect curve has no area above the random line.
    """
    y, uplift, t = _check_inputs(y, uplift, treatment)
    return _normalized_area(_qini_points(y, uplift, t), perfect_qini_curve(y, t, negative_effect))


def uplift_auc_score(y, uplift, treatment) -> float:
    """Normalized area under the uplift curve (AUUC); arguments as in :func:`qini_auc_score`."""
    y, uplift, t = _check_inputs(y, uplift, treatment)
    return _normalized_area(_uplift_points(y, uplift, t), perfect_uplift_curve(y, t))


def uplift_at_k(y, uplift, treatment, k=0.3, strategy: str = "overall") -> float:
    """Mean treated response minus mean control response among the top-``k`` rows.

    Args:
        y: observed responses (binary or continuous), shape (n,).
        uplift: predicted effects used to rank the rows, shape (n,).
        treatment: 1 for treated rows, 0 for control rows, shape (n,).
        k: a float in (0, 1) (share of rows, rounded down) or an int in [1, n)
            (number of rows).
        strategy: ``"overall"`` takes the top ``k`` of all rows ranked together;
            ``"by_group"`` takes the top ``k`` of each group separately (a float ``k``
            is then a share of each group, an int ``k`` a count per group).

    Returns:
        The difference of the two means; NaN when a group has no row in the top ``k``.
    """
    y, uplift, t = _check_inputs(y, uplift, treatment)
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {list(_STRATEGIES)}, got {strategy!r}")
    n = y.size
    n_top = _top_count(k, n)
    order = _descending_order(uplift)
    y_ranked, t_ranked = y[order], t[order]

    if strategy == "overall":
        y_top, t_top = y_ranked[:n_top], t_ranked[:n_top]
        treated_mean = _mean_or_nan(y_top[t_top == 1.0])
        control_mean = _mean_or_nan(y_top[t_top == 0.0])
        return treated_mean - control_mean

    y_treated = y_ranked[t_ranked == 1.0]
    y_control = y_ranked[t_ranked == 0.0]
    if isinstance(k, int | np.integer):
        n_treated, n_control = int(k), int(k)
        for group, size, have in (
            ("treated", n_treated, y_treated.size),
            ("control", n_control, y_control.size),
        ):
            if size > have:
                raise ValueError(f"k={k} is more than the {have} rows of the {group} group")
    else:
        n_treated = int(y_treated.size * k)
        n_control = int(y_control.size * k)
    return _mean_or_nan(y_treated[:n_treated]) - _mean_or_nan(y_control[:n_control])


def _check_effects(tau_hat, tau) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(tau_hat, dtype=np.float64)
    b = np.asarray(tau, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"tau_hat and tau must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("tau_hat and tau must not be empty")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("tau_hat and tau must contain only finite values")
    return a, b


def pehe(tau_hat, tau) -> float:
    """Precision in estimating heterogeneous effects: ``sqrt(mean((tau_hat - tau)^2))``.

    Both arrays must have the same shape (any number of dimensions); the mean is over
    all entries.
    """
    a, b = _check_effects(tau_hat, tau)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def true_uplift_at_k(tau_true, uplift, k=0.3) -> float:
    """Mean true effect among the top-``k`` rows ranked by predicted ``uplift``.

    ``k`` as in :func:`uplift_at_k`; NaN when ``k`` selects no row (``int(n * k) = 0``).
    """
    tau = _as_float_1d("tau_true", tau_true)
    u = _as_float_1d("uplift", uplift)
    _check_lengths(tau_true=tau, uplift=u)
    if tau.size < 2:
        raise ValueError("true_uplift_at_k needs at least 2 rows")
    n_top = _top_count(k, tau.size)
    return _mean_or_nan(tau[_descending_order(u)][:n_top])


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their positions."""
    order = np.argsort(a, kind="stable")
    ranked = a[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    stops = np.r_[starts[1:], a.size]
    mean_rank = (starts + stops + 1) / 2.0  # mean of positions start+1 .. stop
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, stops - starts)
    return ranks


def rank_correlation(tau_hat, tau) -> float:
    """Spearman rank correlation of predicted and true effects (ties get average ranks).

    Both inputs must be 1-D of equal length; NaN when either is constant.
    """
    a = _as_float_1d("tau_hat", tau_hat)
    b = _as_float_1d("tau", tau)
    _check_lengths(tau_hat=a, tau=b)
    if a.size < 2:
        raise ValueError("rank_correlation needs at least 2 rows")
    ra = _average_ranks(a)
    rb = _average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    if denom == 0.0:
        return math.nan
    return float(np.dot(ra, rb) / denom)
