"""Is a score snapshot plausible enough to publish? Pure numpy checks on δ columns.

δ^k_r = ŷ^k_r / ŷ^0_r − 1 is a relative effect: it is above −1 by construction (outcomes are
positive) and a few percent in practice. A corrupted file, a broken model or an overflow
gives values like 9.5e14 that are finite, pass a NaN check, and would switch treatments on.
Two checks refuse them:

- :func:`out_of_bounds`: any δ ≤ −1 or |δ| above a configured bound (``publish.max_abs_delta``);
- :func:`outlier_share`: the share of δ outside the last publication's range (its 0.1 %–99.9 %
  quantiles widened by ``margin`` interquartile ranges) must stay small: a model may move
  δ, but a large share far outside yesterday's spread is a fault until a person says otherwise.
"""

from __future__ import annotations

import numpy as np

TAIL = 0.001  # the reference range spans the 0.1 %–99.9 % quantiles of the last publication


def out_of_bounds(x: np.ndarray, max_abs: float) -> int:
    """Rows of ``x`` that no relative effect can take (δ ≤ −1) or that exceed ``max_abs``."""
    x = np.asarray(x, dtype=np.float64)
    return int(((x <= -1.0) | (np.abs(x) > max_abs)).sum())


def reference_range(ref: np.ndarray, margin: float) -> tuple[float, float]:
    """[lo, hi]: the reference's 0.1 %/99.9 % quantiles widened by ``margin`` × its interquartile range."""
    q_lo, q25, q75, q_hi = np.quantile(np.asarray(ref, dtype=np.float64), [TAIL, 0.25, 0.75, 1 - TAIL])
    pad = margin * max(q75 - q25, 1e-12)
    return float(q_lo - pad), float(q_hi + pad)


def outlier_share(x: np.ndarray, lo: float, hi: float) -> float:
    """Share of ``x`` outside [lo, hi]."""
    x = np.asarray(x, dtype=np.float64)
    return float(((x < lo) | (x > hi)).mean()) if len(x) else 0.0


def plausibility_problems(columns: dict[str, np.ndarray], max_abs: float,
                          reference: dict[str, np.ndarray] | None = None, max_share: float = 0.01,
                          margin: float = 3.0) -> list[str]:
    """Human-readable problems (empty = plausible) for δ ``columns`` against an optional ``reference``."""
    problems = []
    for name, x in columns.items():
        bad = out_of_bounds(x, max_abs)
        if bad:
            worst = float(np.asarray(x, dtype=np.float64)[np.argmax(np.abs(x))])
            problems.append(f"{name}: {bad} rows outside (−1, {max_abs:g}] (largest |δ| {worst:.3g}; "
                            "publish.max_abs_delta)")
            continue
        if reference is not None and name in reference and len(reference[name]):
            lo, hi = reference_range(reference[name], margin)
            share = outlier_share(x, lo, hi)
            if share > max_share:
                problems.append(f"{name}: {share:.1%} of rows outside the last publication's range "
                                f"[{lo:.3g}, {hi:.3g}] (allowed {max_share:.1%}; publish.max_outlier_share)")
    return problems
