"""True uplift (Qini) curves when every user's expected outcomes are known (pure numpy).

On simulated data the expected outcome of each user under control, ``mu0``, and under
the treatment, ``mu1``, are known, so the gain of treating the top ``n`` rows of a
ranking needs no estimate: it is the sum of the true absolute effects
``tau = mu1 - mu0`` over those rows.

- :func:`true_qini_curve`: ``(x, G)`` with ``G(n) = sum over the top n rows of tau``,
  rows ranked by descending score. Rows with equal scores form one group (one point
  after the whole group, as in :mod:`fulcrum.metrics.curves`); the curve starts at
  ``(0, 0)``. With the truth known, the Qini curve and the uplift curve coincide
  (both are the expected cumulative gain), so this is the true counterpart of both.
- :func:`true_qini`: its normalized area, with the convention of
  :func:`fulcrum.metrics.scores.qini_auc_score`:
  ``(area(model) - area(random)) / (area(perfect) - area(random))``, trapezoid rule,
  random being the straight line from ``(0, 0)`` to ``(n, sum tau)`` and perfect the
  ranking by descending true ``tau``. Here the perfect ranking really is the maximum
  (no ranking scores above 1); a random ranking scores about 0 and a reversed ranking
  below 0. NaN when ``tau`` is constant (no ranking beats random; up to
  rounding: a perfect area within 1e-12 of the largest possible one counts as none).
- :func:`true_qini_table`: :func:`true_qini` of every (treatment, response) cell of
  scores ``(n, K, R)`` against true expected outcomes ``(n, K + 1, R)`` (control first).

The metric rewards ranking by the *absolute* effect ``mu1 - mu0`` (what observed
QINI/AUUC estimate); a ranking by the relative effect ``mu1 / mu0 - 1`` scores below 1
wherever the two orders differ.
"""

from __future__ import annotations

import math

import numpy as np

from fulcrum.metrics.curves import _as_float_1d, _check_lengths, _with_origin

__all__ = ["true_qini", "true_qini_curve", "true_qini_table"]


def _check_truth(scores, mu0, mu1) -> tuple[np.ndarray, np.ndarray]:
    s = _as_float_1d("scores", scores)
    m0 = _as_float_1d("mu0", mu0)
    m1 = _as_float_1d("mu1", mu1)
    _check_lengths(scores=s, mu0=m0, mu1=m1)
    if s.size == 0:
        raise ValueError("scores, mu0 and mu1 must not be empty")
    return s, m1 - m0


def _gain_points(score: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true gain at the end of each distinct-score group, with the origin."""
    order = np.argsort(score, kind="stable")[::-1]
    s_sorted = score[order]
    ends = np.append(np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1)
    gain = np.cumsum(tau[order], dtype=np.float64)[ends]
    return _with_origin((ends + 1).astype(np.float64), gain)


def _trapezoid(x: np.ndarray, v: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (v[1:] + v[:-1]) / 2.0))


def _normalized(score: np.ndarray, tau: np.ndarray) -> float:
    x, g = _gain_points(score, tau)
    x_p, g_p = _gain_points(tau, tau)
    random_area = x_p[-1] * g_p[-1] / 2.0
    perfect_gain = _trapezoid(x_p, g_p) - random_area
    # constant tau: the perfect curve is the random line (up to rounding)
    if not perfect_gain > 1e-12 * x_p[-1] * float(np.abs(tau).sum()):
        return math.nan
    return float((_trapezoid(x, g) - random_area) / perfect_gain)


def true_qini_curve(scores, mu0, mu1, share: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """True cumulative gain ``(x, G)`` of a ranking by ``scores`` (descending).

    Args:
        scores: the ranking scores (higher = target first), shape (n,).
        mu0: true expected outcome of each row under control, shape (n,).
        mu1: true expected outcome of each row under the treatment, shape (n,).
        share: if True ``x`` is the share of rows ``n / N`` in [0, 1], else the number
            of top rows (as in :func:`fulcrum.metrics.curves.qini_curve`).

    Returns:
        ``x`` (one point per distinct score, starting with 0) and
        ``G = sum of (mu1 - mu0)`` over the top rows.
    """
    s, tau = _check_truth(scores, mu0, mu1)
    x, g = _gain_points(s, tau)
    return (x / x[-1] if share else x), g


def true_qini(scores, mu0, mu1) -> float:
    """Normalized area under the true gain curve: 1 perfect (by true ``mu1 - mu0``), ~0 random.

    Arguments as in :func:`true_qini_curve`. NaN when ``mu1 - mu0`` is constant.
    """
    s, tau = _check_truth(scores, mu0, mu1)
    return _normalized(s, tau)


def true_qini_table(scores, mu, arm=None) -> np.ndarray:
    """:func:`true_qini` of every (treatment, response) cell.

    Args:
        scores: ranking scores, shape (n, K, R): ``scores[i, k - 1, r]`` ranks the rows
            for treatment ``k`` and response ``r`` (e.g. predicted δ or τ).
        mu: true expected outcomes, shape (n, K + 1, R), control first
            (``mu[:, 0, r]`` under control, ``mu[:, k, r]`` under treatment ``k``).
        arm: optional observed arm per row, shape (n,), integers with 0 = control. When
            given, cell ``k`` uses only the rows with ``arm in {0, k}`` (the rows
            :func:`fulcrum.metrics.multi.per_arm_table` evaluates); otherwise all rows.

    Returns:
        Array of shape (K, R).
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(mu, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"scores must have shape (n, K, R), got {s.shape}")
    n, n_treatments, n_responses = s.shape
    if m.shape != (n, n_treatments + 1, n_responses):
        raise ValueError(
            f"mu must have shape (n, K + 1, R) = ({n}, {n_treatments + 1}, {n_responses}) "
            f"for scores of shape {s.shape}, got {m.shape}"
        )
    if arm is not None:
        arm = np.asarray(arm)
        if arm.shape != (n,):
            raise ValueError(f"arm must have shape ({n},), got {arm.shape}")
    out = np.empty((n_treatments, n_responses), dtype=np.float64)
    for k in range(n_treatments):
        rows = slice(None) if arm is None else (arm == 0) | (arm == k + 1)
        for r in range(n_responses):
            out[k, r] = true_qini(s[rows, k, r], m[rows, 0, r], m[rows, k + 1, r])
    return out
