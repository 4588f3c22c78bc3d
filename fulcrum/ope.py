"""Offline policy evaluation on RCT logs (spec §5): IPS, self-normalized IPS, doubly robust.

Pure numpy, no I/O. Many policies are valued at once: ``actions`` is (n, P), the arm
each of P policies would give each logged unit (an index into the RCT's arms, ``-1``
where the policy's decision has no arm in the RCT and cannot be valued offline).

Every estimator is a ratio of two per-unit sums, ``V = Σ_i N_i / Σ_i D_i``:

- IPS:   N = 1[π(i)=t_i] y_i / p_i,                          D = 1
- SNIPS: N = 1[π(i)=t_i] y_i / p_i,                          D = 1[π(i)=t_i] / p_i
- DR:    N = μ̂(x_i, π(i)) + 1[π(i)=t_i] (y_i − μ̂(x_i, t_i)) / p_i,   D = 1

summed over the units the policy can be valued on. The lift over a reference policy
(all-control) is taken on the same units and the same bootstrap resample (paired), so
its interval is far narrower than the difference of two value intervals.

Bootstrap: B resamples of units with replacement, kept as a (B, n) count matrix, so
every sum over every resample is one matrix product (chunked over units: flat memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")
NOT_EVALUABLE = -1
_CHUNK = 65_536  # units per matrix product: bounds the (chunk, columns) block in memory


@dataclass(frozen=True)
class Interval:
    """Point estimates and bootstrap percentile intervals, each shaped (P, R)."""

    point: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class PolicyEstimate:
    """One estimator's answer for P policies and R responses."""

    estimator: str
    value: Interval      # V_r(π)
    lift: Interval       # V_r(π) − V_r(reference), paired
    rel_lift: Interval   # V_r(π) / V_r(reference) − 1, paired
    reference_value: np.ndarray  # (P, R) the reference's value on each policy's evaluable units


def check_logs(arm: np.ndarray, y: np.ndarray, propensity: np.ndarray, n_arms: int) -> None:
    """Named errors for logs that would give a plausible-looking wrong answer."""
    n = len(arm)
    if y.ndim != 2 or y.shape[0] != n or propensity.shape != (n,):
        raise ValueError(f"logs do not fit: arm {arm.shape}, y {y.shape} (n, R), propensity {propensity.shape}")
    if n == 0:
        raise ValueError("no logged units to evaluate on")
    if arm.min() < 0 or arm.max() >= n_arms:
        raise ValueError(f"arm indices must lie in [0, {n_arms}), got [{arm.min()}, {arm.max()}]")
    if not np.isfinite(y).all():
        raise ValueError("responses hold NaN or infinite values")
    if not (np.isfinite(propensity).all() and (propensity > 0).all() and (propensity <= 1).all()):
        raise ValueError("propensities must lie in (0, 1]")


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, n) float32 counts: how often each unit appears in each resample of n units."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n), np.float32)
    for b in range(n_boot):  # one row at a time: the index draw never exceeds n integers
        out[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return out


def _terms(estimator: str, actions: np.ndarray, arm: np.ndarray, y: np.ndarray, propensity: np.ndarray,
           mu_hat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit numerators (n, P, R) and denominators (n, P), zero where a unit is not evaluable."""
    evaluable = actions != NOT_EVALUABLE  # (n, P)
    iw = (actions == arm[:, None]) / propensity[:, None]  # (n, P) importance weight
    if estimator == "ips":
        return iw[..., None] * y[:, None, :], evaluable.astype(np.float64)
    if estimator == "snips":
        return iw[..., None] * y[:, None, :], iw
    if estimator == "dr":
        if mu_hat is None:
            raise ValueError("the doubly robust estimator needs the model's predicted outcomes mu_hat")
        rows = np.arange(len(arm))
        own = mu_hat[rows, arm]  # (n, R) μ̂ of the logged arm
        chosen = np.take_along_axis(mu_hat, np.where(evaluable, actions, 0)[..., None], axis=1)  # (n, P, R)
        num = chosen + iw[..., None] * (y - own)[:, None, :]
        return num * evaluable[..., None], evaluable.astype(np.float64)
    raise ValueError(f"unknown estimator {estimator!r}: use one of {ESTIMATORS}")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _interval(point: np.ndarray, boot: np.ndarray | None, level: float) -> Interval:
    if boot is None:
        return Interval(point, np.full_like(point, np.nan), np.full_like(point, np.nan))
    a = (1 - level) / 2
    lo, hi = np.nanquantile(boot, [a, 1 - a], axis=0)
    return Interval(point, lo, hi)


def estimate(
    actions: np.ndarray,
    arm: np.ndarray,
    y: np.ndarray,
    propensity: np.ndarray,
    *,
    mu_hat: np.ndarray | None = None,
    reference: int = 0,
    estimators: Sequence[str] = ESTIMATORS,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    counts: np.ndarray | None = None,
) -> dict[str, PolicyEstimate]:
    """Value, lift and relative lift of P policies per response, with bootstrap intervals.

    actions (n, P) arm per unit and policy (NOT_EVALUABLE where it has no RCT arm);
    arm (n,) logged arm; y (n, R); propensity (n,) P(logged arm | unit);
    mu_hat (n, A, R) predicted outcome under every RCT arm (needed by "dr");
    reference: the column of ``actions`` lifts are taken against (it must be valuable
    on every unit, e.g. all-control). ``counts`` reuses a bootstrap draw (B, n);
    ``n_boot=0`` gives points only.
    """
    actions = np.asarray(actions, dtype=np.int64)
    arm = np.asarray(arm, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    propensity = np.asarray(propensity, dtype=np.float64)
    n_arms = int(max(arm.max(), actions.max())) + 1 if mu_hat is None else mu_hat.shape[1]
    check_logs(arm, y, propensity, n_arms)
    if actions.ndim != 2 or actions.shape[0] != len(arm):
        raise ValueError(f"actions must be (n, P) with n = {len(arm)}, got {actions.shape}")
    if (actions[:, reference] == NOT_EVALUABLE).any():
        raise ValueError("the reference policy must be valuable on every unit")
    n, p = actions.shape
    r = y.shape[1]
    if counts is None and n_boot > 0:
        counts = bootstrap_counts(n, n_boot, seed)

    # Every unit valuable under every policy (the usual case): the reference's sums are its
    # own columns, no per-policy copies needed; half the columns, half the matrix product.
    covered = bool((actions != NOT_EVALUABLE).all())
    width = p * r + p if covered else 2 * (p * r + p)

    def split(v: np.ndarray) -> tuple[np.ndarray, ...]:
        """Columns [num (P·R) | den (P) | ref num (P·R) | ref den (P)] -> (..., P, R) and (..., P, 1) blocks."""
        lead = v.shape[:-1]
        num, den = v[..., : p * r].reshape(*lead, p, r), v[..., p * r : p * r + p][..., None]
        if covered:
            return num, den, num[..., reference : reference + 1, :], den[..., reference : reference + 1, :]
        rest = v[..., p * r + p :]
        return num, den, rest[..., : p * r].reshape(*lead, p, r), rest[..., p * r :][..., None]

    # Policies that act as the reference on every unit: their lift is exactly 0, not the rounding
    # of the float32 bootstrap product, which sums each column in its own order (measured −1.3e-7:
    # enough for a zero guard-rail to refuse never-on, the one σ meant to pass always).
    same = (actions == actions[:, reference : reference + 1]).all(0)  # (P,)

    out = {}
    for name in estimators:
        full = np.zeros(width)
        boot = None if counts is None else np.zeros((counts.shape[0], width))
        for i in range(0, n, _CHUNK):  # chunks of units: memory stays flat however many units
            s = slice(i, i + _CHUNK)
            num, den = _terms(name, actions[s], arm[s], y[s], propensity[s], None if mu_hat is None else mu_hat[s])
            m = len(num)
            parts = [num.reshape(m, -1), den]
            if not covered:
                # The reference restricted to each policy's valuable units: a paired comparison.
                evaluable = (actions[s] != NOT_EVALUABLE).astype(np.float64)  # (m, P)
                parts += [(num[:, reference, :][:, None, :] * evaluable[..., None]).reshape(m, -1),
                          den[:, reference][:, None] * evaluable]
            cols = np.concatenate(parts, axis=1)
            full += cols.sum(0)
            if boot is not None:
                # float32 product (2× the float64 speed): a chunk's sums carry ~1e-7 relative error,
                # far below the resampling spread the intervals measure; totals add up in float64.
                boot += counts[:, s] @ cols.astype(np.float32)

        v_num, v_den, ref_n, ref_d = split(full)
        value, ref_value = _ratio(v_num, v_den), _ratio(ref_n, ref_d) + np.zeros_like(v_num)
        if boot is not None:
            bv_num, bv_den, bref_n, bref_d = split(boot)
            b_value, b_ref = _ratio(bv_num, bv_den), _ratio(bref_n, bref_d)  # (B, P, R), (B, 1 or P, R)
            b_value[:, same] = np.broadcast_to(b_ref, b_value.shape)[:, same]
            b_lift, b_rel = b_value - b_ref, _ratio(b_value, b_ref) - 1
        else:
            b_value = b_lift = b_rel = None
        out[name] = PolicyEstimate(
            estimator=name,
            value=_interval(value, b_value, level),
            lift=_interval(value - ref_value, b_lift, level),
            rel_lift=_interval(_ratio(value, ref_value) - 1, b_rel, level),
            reference_value=ref_value,
        )
    return out


def true_values(actions: np.ndarray, mu_true: np.ndarray, reference: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact values (P, R) from the truth tables and relative lifts over ``reference`` on the same units.

    actions (n, P); mu_true (n, A, R) expected outcome of every unit under every RCT arm.
    """
    actions = np.asarray(actions, dtype=np.int64)
    evaluable = actions != NOT_EVALUABLE
    chosen = np.take_along_axis(mu_true, np.where(evaluable, actions, 0)[..., None], axis=1)  # (n, P, R)
    ref = mu_true[np.arange(len(actions)), actions[:, reference]]  # (n, R)
    den = evaluable.sum(0)[:, None]  # (P, 1)
    value = _ratio((chosen * evaluable[..., None]).sum(0), den)
    ref_value = _ratio((ref[:, None, :] * evaluable[..., None]).sum(0), den)
    return value, _ratio(value, ref_value) - 1


def outcome_scale(mu_hat: np.ndarray, arm: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(A, R) least-squares scale of the outcome model per arm and response: argmin_c Σ (y − c·μ̂)².

    Fitted on units the estimates are not computed on (the training users): a model
    trained on a transformed target (e.g. log1p) predicts a biased mean, and rescaling it
    shrinks DR's residuals, so its intervals, without touching its unbiasedness. Arms
    without units keep a scale of 1.
    """
    n_arms, n_resp = mu_hat.shape[1], mu_hat.shape[2]
    out = np.ones((n_arms, n_resp))
    for a in range(n_arms):
        m = arm == a
        den = (mu_hat[m, a] ** 2).sum(0)
        ok = den > 0
        out[a, ok] = (y[m] * mu_hat[m, a]).sum(0)[ok] / den[ok]
    return out


def coverage(actions: np.ndarray) -> np.ndarray:
    """(P,) share of units each policy can be valued on."""
    return (np.asarray(actions) != NOT_EVALUABLE).mean(0)
