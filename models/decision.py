"""The DDM decision rule (spec §2.2), pure numpy: no I/O, no model.

φ^k = Σ_r w_r · δ_r^k; treatment k is switched on iff φ^k > σ_k. A user without
scores gets the defined default: nothing switched on, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORED = "scored"
NO_SCORES = "no_scores"  # unknown user, or no published δ for them: the default, nothing switched on


@dataclass(frozen=True)
class Decisions:
    """Decisions for B requests and the numbers behind them."""

    on: np.ndarray        # (B, K) bool
    phi: np.ndarray       # (B, K) comprehensive scores; NaN where the user has no scores
    sigma: np.ndarray     # (K,)
    weights: np.ndarray   # (B, R) value weights w
    delta: np.ndarray     # (B, K, R); NaN where the user has no scores
    reason: list[str]     # (B,) SCORED or NO_SCORES


def decide(delta: np.ndarray, weights: np.ndarray, sigma) -> Decisions:
    """Apply the rule to a batch.

    delta (B, K, R) relative effects (rows of NaN = no scores for that user),
    weights (B, R) value weights, sigma (K,) thresholds (a scalar applies to all).
    """
    delta = np.asarray(delta, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if delta.ndim != 3 or weights.ndim != 2 or delta.shape[0] != weights.shape[0] or delta.shape[2] != weights.shape[1]:
        raise ValueError(f"shapes do not fit: delta {delta.shape} (B, K, R), weights {weights.shape} (B, R)")
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (delta.shape[1],)).copy()
    phi = np.einsum("bkr,br->bk", delta, weights)  # (B, K)
    scored = np.isfinite(delta).all(axis=(1, 2))  # (B,)
    phi[~scored] = np.nan
    on = scored[:, None] & (phi > sig[None, :])
    reason = [SCORED if s else NO_SCORES for s in scored]
    return Decisions(on=on, phi=phi, sigma=sig, weights=weights, delta=delta, reason=reason)
