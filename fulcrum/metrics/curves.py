"""Qini and uplift curves for binary and continuous responses (pure numpy).

Rows are ranked by descending predicted uplift. Rows with equal scores form one
group: a curve has one point per distinct score (after the whole tie group) and
starts at ``(0, 0)``. Over the top ``n`` rows let

- ``N_T(n)``, ``N_C(n)``: number of treated / control rows,
- ``Y_T(n)``, ``Y_C(n)``: sum of the response ``y`` over the treated / control rows.

Then

- Qini curve:   ``Q(n) = Y_T(n) - Y_C(n) * (N_T(n) / N_C(n))``, where the ratio is 0
  when ``N_C(n) = 0`` (so ``Q(n) = Y_T(n)`` there);
- uplift curve: ``U(n) = (Y_T(n) / N_T(n) - Y_C(n) / N_C(n)) * n``, where each mean
  is 0 when its count is 0.

On binary ``y`` these are exactly scikit-uplift's ``qini_curve`` and ``uplift_curve``
(same tie grouping, same handling of empty groups).

Continuous responses
--------------------
scikit-uplift refuses non-binary ``y``; Fulcrum's responses are continuous (usage
minutes, view counts). The definitions above are used unchanged with ``Y`` the
cumulative sums of the continuous response. Labels are used as they are: every curve
(model and perfect) is linear in ``y``, and the perfect ranking below does not change
when ``y`` is multiplied by ``c > 0``, so the normalized scores of
:mod:`fulcrum.metrics.scores` are invariant to positive rescaling. Dividing the
labels by their maximum first (as the published industrial evaluation does) gives
the same scores.

The *perfect* curves are the curves of an oracle ranking. Let ``m = max |y|``
(``m = 1`` when ``y`` is all zero) and call ``y`` *binary* when ``y / m`` only takes
the values 0 and 1 (see :func:`_is_binary`; for labels already in {0, 1}, ``m = 1``
and ``y`` is used untouched).

- Binary ``y`` (with ``b = y / m``): scikit-uplift's rules, exactly.

  * perfect Qini, ``negative_effect=True``: rank by ``b * (2t - 1)``: treated
    responders, then all non-responders, then control responders;
  * perfect Qini, ``negative_effect=False``: the three points
    ``(0, 0), (G / m, G), (n, G)`` with ``G = Y_T - N_T * Y_C / N_C`` over all rows
    (the curve gains ``m`` per row until it reaches the total gain, then stays flat;
    when ``G < 0`` the middle point lies left of 0: scikit-uplift then refuses to
    compute the area, here the trapezoid rule is applied as it is);
  * perfect uplift: rank by ``2 * [b == t] + s`` with ``s = b`` when the control
    responders outnumber the treated non-responders and ``s = t`` otherwise: treated
    responders first, then control non-responders, then control responders before
    treated non-responders if the former are more numerous, else the reverse.

- Non-binary ``y`` (the continuous generalization):

  * perfect Qini, ``negative_effect=True``, and perfect uplift: rank by
    ``y * (2t - 1)``. For non-negative responses this puts the treated rows first by
    descending ``y``, then the control rows by ascending ``y`` (rows with ``y = 0``
    of both groups form one tie group in between);
  * perfect Qini, ``negative_effect=False``: rank by ``y * t`` (treated rows by
    descending ``y``; everything else is one final tie group).

  For binary labels the first rule is identical to scikit-uplift's perfect Qini
  curve; the binary rules above are kept where they differ so that scores agree with
  scikit-uplift exactly on binary data.

  These continuous "perfect" curves are reference rankings, not maximum-area curves
  (with continuous labels that maximum has no closed form): the reference ranking
  itself scores exactly 1, but another ranking can score a little above 1, and the
  ``negative_effect=False`` curve can lie above the ``negative_effect=True`` one.

All functions return ``(x, values)`` as float64 arrays, ``x`` being the number of top
rows ``n``. Inputs must be 1-D, of equal length, finite, with a treatment indicator
in {0, 1} that has both groups present; otherwise ``ValueError`` is raised.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "perfect_qini_curve",
    "perfect_uplift_curve",
    "qini_curve",
    "uplift_curve",
]


# --------------------------------------------------------------------------- validation


def _as_float_1d(name: str, values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values (no NaN or inf)")
    return arr


def _check_treatment(treatment) -> np.ndarray:
    t = _as_float_1d("treatment", treatment)
    if not np.all((t == 0.0) | (t == 1.0)):
        bad = np.unique(t[(t != 0.0) & (t != 1.0)])[:5]
        raise ValueError(f"treatment must be binary (0 = control, 1 = treated), got values {bad}")
    n_treated = int(np.count_nonzero(t))
    if n_treated == 0 or n_treated == t.size:
        raise ValueError(
            "treatment must contain both groups (treated and control rows), "
            f"got {n_treated} treated out of {t.size}"
        )
    return t


def _check_lengths(**arrays: np.ndarray) -> None:
    sizes = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {sizes}")


def _check_labels(y, treatment) -> tuple[np.ndarray, np.ndarray]:
    y_arr = _as_float_1d("y", y)
    t_arr = _as_float_1d("treatment", treatment)
    _check_lengths(y=y_arr, treatment=t_arr)
    return y_arr, _check_treatment(t_arr)


def _check_inputs(y, uplift, treatment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_arr = _as_float_1d("y", y)
    u_arr = _as_float_1d("uplift", uplift)
    t_arr = _as_float_1d("treatment", treatment)
    _check_lengths(y=y_arr, uplift=u_arr, treatment=t_arr)
    return y_arr, u_arr, _check_treatment(t_arr)


# --------------------------------------------------------------------------- helpers


def _is_binary(y: np.ndarray) -> bool:
    """True when every value of ``y`` is 0 or 1 (the labels scikit-uplift accepts)."""
    y = np.asarray(y)
    return bool(np.all((y == 0) | (y == 1)))


def _unit_labels(y: np.ndarray) -> tuple[np.ndarray, float]:
    """``(y / m, m)`` with ``m = max |y|`` (1 when ``y`` is all zero)."""
    m = float(np.max(np.abs(y))) if y.size else 0.0
    if m == 0.0:
        m = 1.0
    return (y if m == 1.0 else y / m), m


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0``."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _cumulative_by_score(y: np.ndarray, score: np.ndarray, t: np.ndarray):
    """Cumulative counts and sums at the end of each distinct-score group.

    Rows are sorted by descending score (a stable sort of the ascending order,
    reversed). Returns ``(n, n_t, n_c, y_t, y_c)``, one entry per distinct score.
    """
    order = np.argsort(score, kind="stable")[::-1]
    s_sorted = score[order]
    t_sorted = t[order]
    y_sorted = y[order]
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(ends, s_sorted.size - 1)

    n = (ends + 1).astype(np.float64)
    n_t = np.cumsum(t_sorted, dtype=np.float64)[ends]
    n_c = n - n_t
    y_t = np.cumsum(np.where(t_sorted == 1.0, y_sorted, 0.0), dtype=np.float64)[ends]
    y_c = np.cumsum(np.where(t_sorted == 0.0, y_sorted, 0.0), dtype=np.float64)[ends]
    return n, n_t, n_c, y_t, y_c


def _with_origin(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(([0.0], x)), np.concatenate(([0.0], v))


def _qini_points(y: np.ndarray, score: np.ndarray, t: np.ndarray):
    n, n_t, n_c, y_t, y_c = _cumulative_by_score(y, score, t)
    q = y_t - y_c * _safe_divide(n_t, n_c)
    return _with_origin(n, q)


def _uplift_points(y: np.ndarray, score: np.ndarray, t: np.ndarray):
    n, n_t, n_c, y_t, y_c = _cumulative_by_score(y, score, t)
    u = (_safe_divide(y_t, n_t) - _safe_divide(y_c, n_c)) * n
    return _with_origin(n, u)


# --------------------------------------------------------------------------- public API


def qini_curve(y, uplift, treatment) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve ``(x, Q)`` of a ranking by ``uplift`` (descending).

    Args:
        y: observed responses (binary or continuous), shape (n,).
        uplift: predicted effects used to rank the rows, shape (n,).
        treatment: 1 for treated rows, 0 for control rows, shape (n,).

    Returns:
        ``x``: number of top rows at each distinct score, starting with 0;
        ``Q``: ``Y_T - Y_C * N_T / N_C`` over those rows (ratio 0 when ``N_C = 0``).
    """
    y, uplift, t = _check_inputs(y, uplift, treatment)
    return _qini_points(y, uplift, t)


def uplift_curve(y, uplift, treatment) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve ``(x, U)`` of a ranking by ``uplift`` (descending).

    ``U(n) = (Y_T / N_T - Y_C / N_C) * n`` over the top ``n`` rows, each mean 0 when
    its group is empty. Arguments and ``x`` as in :func:`qini_curve`.
    """
    y, uplift, t = _check_inputs(y, uplift, treatment)
    return _uplift_points(y, uplift, t)


def perfect_qini_curve(y, treatment, negative_effect: bool = True):
    """Qini curve of the oracle ranking (see the module docstring for the rules).

    Args:
        y: observed responses (binary or continuous), shape (n,).
        treatment: 1 for treated rows, 0 for control rows, shape (n,).
        negative_effect: if True the oracle may also rank control responders last
            (the curve rises above the final gain and comes back down); if False it
            only targets the net gain.
    """
    if not isinstance(negative_effect, bool):
        raise TypeError(f"negative_effect must be a bool, got {type(negative_effect).__name__}")
    y, t = _check_labels(y, treatment)
    if negative_effect:
        # the same rule for binary and continuous labels
        return _qini_points(y, y * (2.0 * t - 1.0), t)
    unit, m = _unit_labels(y)
    if _is_binary(unit):
        treated = t == 1.0
        n_t = float(np.count_nonzero(treated))
        n_c = float(t.size - n_t)
        gain = y[treated].sum() - n_t * y[~treated].sum() / n_c
        x = np.array([0.0, gain / m, float(t.size)])
        return x, np.array([0.0, gain, gain])
    return _qini_points(y, y * t, t)


def perfect_uplift_curve(y, treatment) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve of the oracle ranking (see the module docstring for the rules).

    Binary labels follow scikit-uplift's rule (which depends on whether the control
    responders outnumber the treated non-responders); other labels are ranked by
    ``y * (2t - 1)``.
    """
    y, t = _check_labels(y, treatment)
    unit, _ = _unit_labels(y)
    if _is_binary(unit):
        control_responders = np.count_nonzero((unit == 1.0) & (t == 0.0))
        treated_non_responders = np.count_nonzero((unit == 0.0) & (t == 1.0))
        tiebreak = unit if control_responders > treated_non_responders else t
        score = 2.0 * (unit == t) + tiebreak
    else:
        score = y * (2.0 * t - 1.0)
    return _uplift_points(y, score, t)
