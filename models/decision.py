"""The DDM decision rule (spec §2.2), pure numpy: no I/O, no model.

φ^k = Σ_r w_r · δ_r^k; treatment k is switched on iff φ^k > σ_k. A user without
scores gets the defined default: nothing switched on, with the reason.

Modes: ``independent`` (the paper's per-treatment rule: any number of treatments on) and
``exclusive`` (at most one: the largest φ^k among those above σ_k, ties to the lower index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORED = "scored"
NO_SCORES = "no_scores"  # unknown user, or no published δ for them: the default, nothing switched on

INDEPENDENT = "independent"  # each treatment on iff φ^k > σ_k (spec §2.2)
EXCLUSIVE = "exclusive"      # at most one treatment on: the best φ^k above its σ_k
MODES = (INDEPENDENT, EXCLUSIVE)


@dataclass(frozen=True)
class Decisions:
    """Decisions for B requests and the numbers behind them."""

    on: np.ndarray        # (B, K) bool
    phi: np.ndarray       # (B, K) comprehensive scores; NaN where the user has no scores
    sigma: np.ndarray     # (K,)
    weights: np.ndarray   # (B, R) value weights w
    delta: np.ndarray     # (B, K, R); NaN where the user has no scores
    reason: list[str]     # (B,) SCORED or NO_SCORES
    mode: str = INDEPENDENT  # the decision mode that produced ``on``


def check_mode(mode: str) -> None:
    """ValueError naming ``mode`` unless it is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"unknown decision mode {mode!r}: expected one of {list(MODES)}")


def apply_mode(phi: np.ndarray, sigma, mode: str = INDEPENDENT) -> np.ndarray:
    """(B, K) bool: which treatments are on for comprehensive scores ``phi`` (B, K).

    sigma (K,) thresholds (a scalar applies to all). NaN φ means "no scores": never on.
    """
    check_mode(mode)
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2:
        raise ValueError(f"phi must be (B, K), got shape {phi.shape}")
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (phi.shape[1],))
    above = phi > sig[None, :]  # NaN compares False: rows without scores stay off
    if mode == INDEPENDENT or phi.shape[1] == 0:
        return above
    # Exclusive: mask the treatments not above σ with -inf, then argmax, which returns the
    # first maximum (the lower index on ties); rows with nothing above σ stay all off.
    best = np.argmax(np.where(above, phi, -np.inf), axis=1)  # (B,)
    on = np.zeros_like(above)
    on[np.arange(phi.shape[0]), best] = True
    return on & above.any(axis=1, keepdims=True)


def decide(delta: np.ndarray, weights: np.ndarray, sigma, mode: str = INDEPENDENT) -> Decisions:
    """Apply the rule to a batch.

    delta (B, K, R) relative effects (rows of NaN = no scores for that user),
    weights (B, R) value weights, sigma (K,) thresholds (a scalar applies to all),
    mode one of :data:`MODES` (ValueError otherwise).
    """
    check_mode(mode)  # before any work, so a bad mode fails even on an empty batch
    delta = np.asarray(delta, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if delta.ndim != 3 or weights.ndim != 2 or delta.shape[0] != weights.shape[0] or delta.shape[2] != weights.shape[1]:
        raise ValueError(f"shapes do not fit: delta {delta.shape} (B, K, R), weights {weights.shape} (B, R)")
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (delta.shape[1],)).copy()
    phi = np.einsum("bkr,br->bk", delta, weights)  # (B, K)
    scored = np.isfinite(delta).all(axis=(1, 2))  # (B,)
    phi[~scored] = np.nan
    on = apply_mode(phi, sig, mode)  # rows without scores have NaN φ: off
    reason = [SCORED if s else NO_SCORES for s in scored]
    return Decisions(on=on, phi=phi, sigma=sig, weights=weights, delta=delta, reason=reason, mode=mode)
