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


# --------------------------------------------------------------------------- CDUM (spec §3)


@dataclass(frozen=True)
class CDUMDecisions:
    """CDUM decisions for B requests and the numbers behind them."""

    on: np.ndarray        # (B, K) bool
    value: np.ndarray     # (B, K) Σ_r w_r (r̂^k ŷ^k_r − ŷ^0_r) / s_r; NaN where the user has no scores
    xi: np.ndarray        # (K,)
    interest: np.ndarray  # (B, K) r̂^k, FIC's real-time interest
    reason: list[str]     # (B,) SCORED or NO_SCORES
    mode: str = INDEPENDENT


def cdum_value(interest: np.ndarray, mu_treated: np.ndarray, mu_control: np.ndarray, weights=None,
               scale=None) -> np.ndarray:
    """(B, K) CDUM's gain Σ_r w_r (r̂^k ŷ^k_r − ŷ^0_r) / s_r, the number compared with ξ_k.

    Shapes and defaults as in :func:`cdum_decide`; a row with any non-finite input is all NaN.
    """
    r_hat = np.asarray(interest, dtype=np.float64)
    mu_k = np.asarray(mu_treated, dtype=np.float64)
    mu_0 = np.asarray(mu_control, dtype=np.float64)
    if mu_k.ndim != 3 or mu_0.shape != (mu_k.shape[0], mu_k.shape[2]) or r_hat.shape != mu_k.shape[:2]:
        raise ValueError(f"shapes do not fit: interest {r_hat.shape} (B, K), mu_treated {mu_k.shape} (B, K, R), "
                         f"mu_control {mu_0.shape} (B, R)")
    b, _, r = mu_k.shape
    w = np.full((b, r), 1.0 / max(r, 1)) if weights is None else np.broadcast_to(
        np.asarray(weights, dtype=np.float64), (b, r))
    s = np.ones(r) if scale is None else np.broadcast_to(np.asarray(scale, dtype=np.float64), (r,))
    if (s <= 0).any():
        raise ValueError(f"scale must be positive, got {s.tolist()}")
    gain = (r_hat[:, :, None] * mu_k - mu_0[:, None, :]) / s[None, None, :]  # (B, K, R)
    value = np.einsum("bkr,br->bk", gain, w)
    scored = np.isfinite(mu_k).all(axis=(1, 2)) & np.isfinite(mu_0).all(axis=1) & np.isfinite(r_hat).all(axis=1)
    value[~scored] = np.nan
    return value


def cdum_decide(interest: np.ndarray, mu_treated: np.ndarray, mu_control: np.ndarray, xi, weights=None,
                scale=None, mode: str = INDEPENDENT) -> CDUMDecisions:
    """CDUM's rule: treatment k on iff r̂^k · ŷ^k − ŷ^0 > ξ_k (spec §3).

    interest (B, K) r̂^k; mu_treated (B, K, R) ŷ^k and mu_control (B, R) ŷ^0 (CPM's daily
    outputs; NaN rows = no scores); xi (K,) or a scalar. With several responses the gains
    r̂^k ŷ^k_r − ŷ^0_r are put on one scale, divided by ``scale`` (R,) (e.g. each response's
    mean control outcome; default 1) and weighed by ``weights`` (B, R) or (R,) (default:
    equal weights summing to 1). With R = 1 and the defaults it is exactly the spec's rule.
    """
    check_mode(mode)
    value = cdum_value(interest, mu_treated, mu_control, weights, scale)
    r_hat = np.asarray(interest, dtype=np.float64)
    scored = np.isfinite(value).all(axis=1)
    k = value.shape[1]
    xi_k = np.broadcast_to(np.asarray(xi, dtype=np.float64), (k,)).copy()
    on = apply_mode(value, xi_k, mode)
    return CDUMDecisions(on=on, value=value, xi=xi_k, interest=r_hat, reason=[SCORED if x else NO_SCORES for x in scored],
                         mode=mode)
