"""σ calibration and sweeps for the trade-off frontier (spec §5). Pure numpy.

Calibration searches σ (one per treatment) for a scored policy (HMUM, fixed-weight)
on validation units and keeps the σ that maximizes the declared objective

    J(σ) = Σ_r λ_r · relative lift_r(π_σ)      (doubly robust point estimates)

among the candidates that pass every constraint:

- guard-rail per response: the lower bound of the relative lift's bootstrap interval
  is ≥ −g_r (no response below all-control by more than g_r, with confidence); with a
  gate margin m > 1 the bound checked is point − m·(point − lower bound), so that the σ
  picked here, the best of many on one sample, still clears the guard-rail when the
  gate checks it again on the independent test users (their own noise, and the
  optimism of picking the best);
- budget (optional): the share of treated units ≤ b;
- coverage: every unit's decision has an RCT arm (otherwise it cannot be guarded).

σ_k = +∞ (treatment k never on) is always a candidate, so all-control, whose lift is
exactly 0 on every resample, keeps the search feasible.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fulcrum.ope import NOT_EVALUABLE, bootstrap_counts, estimate
from models.decision import apply_mode
from models.policy import Policy, Units, to_arms


@dataclass(frozen=True)
class Constraints:
    """The declared objective and its constraints."""

    objective_weights: np.ndarray            # (R,) λ_r
    guardrails: np.ndarray                   # (R,) g_r as fractions (0.01 = 1 %)
    budget: float | None = None              # most share of units treated
    level: float = 0.95                      # of the bootstrap interval
    gate_margin: float = 1.0                 # the guard-rail check widens each interval's lower half by this

    def guard_bound(self, point: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """(R,) the lower bound the guard-rails are checked on: the interval's, its lower half × ``gate_margin``."""
        return point - self.gate_margin * (point - lo)


@dataclass
class Calibration:
    sigma: np.ndarray                        # (K,) chosen σ (inf = never on)
    objective: float
    rel_lift: np.ndarray                     # (R,) DR point at the chosen σ
    rel_lift_lo: np.ndarray                  # (R,)
    treated_share: float
    reason: str
    candidates: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class RCTLogs:
    """Logged units of an RCT, aligned with :class:`Units`: arms over single + combined arms."""

    arm: np.ndarray          # (n,)
    y: np.ndarray            # (n, R)
    propensity: np.ndarray   # (n,)
    mu_hat: np.ndarray       # (n, A, R) model outcomes under every RCT arm

    def take(self, rows: np.ndarray) -> RCTLogs:
        return RCTLogs(self.arm[rows], self.y[rows], self.propensity[rows], self.mu_hat[rows])


def sigma_grid(scores: np.ndarray, size: int) -> list[np.ndarray]:
    """Per treatment: quantiles of its scores, 0 and +∞ (never on), sorted and unique."""
    out = []
    for k in range(scores.shape[1]):
        s = scores[:, k][np.isfinite(scores[:, k])]
        qs = np.quantile(s, np.linspace(0, 1, size)) if len(s) else np.array([])
        out.append(np.unique(np.r_[qs, 0.0, np.inf]))
    return out


def candidate_sigmas(scores: np.ndarray, max_candidates: int) -> np.ndarray:
    """(C, K) σ vectors: the Cartesian grid, each treatment's grid sized so C ≤ max_candidates."""
    k = scores.shape[1]
    size = max(int(np.floor(max_candidates ** (1 / k))) - 2, 2)  # 2 slots for 0 and +∞
    grids = sigma_grid(scores, size)
    return np.array(list(itertools.product(*grids)), dtype=np.float64).reshape(-1, k)


def evaluate_sigmas(
    policy: Policy, units: Units, logs: RCTLogs, lookup: np.ndarray, sigmas: np.ndarray,
    cons: Constraints, counts: np.ndarray,
) -> list[dict]:
    """DR relative lifts, objective and constraint checks of ``policy`` at every σ row."""
    scores = policy.scores(units)
    actions = [np.zeros(units.n, np.int64)]  # column 0: all-control, the reference
    shares = []
    for sig in sigmas:
        on = apply_mode(scores, sig, policy.mode)
        actions.append(to_arms(on, lookup))
        shares.append(float(on.any(1).mean()))
    actions = np.stack(actions, axis=1)
    est = estimate(actions, logs.arm, logs.y, logs.propensity, mu_hat=logs.mu_hat, estimators=("dr",),
                   counts=counts, level=cons.level)["dr"]
    rows = []
    for c, sig in enumerate(sigmas):
        point, lo = est.rel_lift.point[c + 1], est.rel_lift.lo[c + 1]
        covered = bool((actions[:, c + 1] != NOT_EVALUABLE).all())
        guard_ok = bool(np.all(cons.guard_bound(point, lo) >= -cons.guardrails)) if covered else False
        budget_ok = cons.budget is None or shares[c] <= cons.budget + 1e-12
        rows.append({
            "sigma": sig.tolist(),
            "objective": float(point @ cons.objective_weights) if covered else float("nan"),
            "rel_lift": point.tolist(),
            "rel_lift_lo": lo.tolist(),
            "treated_share": shares[c],
            "covered": covered,
            "guardrails_ok": guard_ok,
            "budget_ok": bool(budget_ok),
            "feasible": bool(covered and guard_ok and budget_ok),
        })
    return rows


def calibrate(
    policy: Policy, units: Units, logs: RCTLogs, lookup: np.ndarray, cons: Constraints, *,
    max_candidates: int = 400, n_boot: int = 200, seed: int = 0,
) -> Calibration:
    """The σ that maximizes the objective under the constraints, on these (validation) units."""
    sigmas = candidate_sigmas(policy.scores(units), max_candidates)
    counts = bootstrap_counts(units.n, n_boot, seed)
    rows = evaluate_sigmas(policy, units, logs, lookup, sigmas, cons, counts)
    feasible = [i for i, r in enumerate(rows) if r["feasible"]]
    if not feasible:  # cannot happen while +∞ is in every grid; kept as a named failure
        raise ValueError("no σ satisfies the guard-rails and budget, not even all-control")
    # Best objective; among equals, the fewest treated users, then the most treatments never on
    # (σ = +∞ rather than a finite σ above every score seen, which a new user could still pass).
    best = max(feasible, key=lambda i: (round(rows[i]["objective"], 12), -rows[i]["treated_share"],
                                        int(np.isinf(rows[i]["sigma"]).sum())))
    chosen = rows[best]
    n_blocked = sum(1 for r in rows if not r["guardrails_ok"])
    n_budget = sum(1 for r in rows if not r["budget_ok"])
    unconstrained = max(range(len(rows)), key=lambda i: np.nan_to_num(rows[i]["objective"], nan=-np.inf))
    if unconstrained == best:
        why = "the best objective of all candidates also passes every constraint"
    else:
        why = (f"the unconstrained best (σ={_fmt(rows[unconstrained]['sigma'])}, objective "
               f"{rows[unconstrained]['objective']:+.4f}) breaks a constraint")
    margin = "" if cons.gate_margin == 1 else f" with the intervals' lower halves × {cons.gate_margin:g}"
    reason = (f"σ={_fmt(chosen['sigma'])} maximizes Σ_r λ_r·relative lift ({chosen['objective']:+.4f}) among "
              f"{len(feasible)} of {len(rows)} candidates that pass the constraints ({n_blocked} break a "
              f"guard-rail{margin}, {n_budget} the budget); {why}")
    return Calibration(
        sigma=np.asarray(chosen["sigma"]), objective=chosen["objective"], rel_lift=np.asarray(chosen["rel_lift"]),
        rel_lift_lo=np.asarray(chosen["rel_lift_lo"]), treated_share=chosen["treated_share"], reason=reason,
        candidates=rows,
    )


def common_sigma_sweep(scores: np.ndarray, n_points: int) -> np.ndarray:
    """(n_points + 1,) one σ shared by all treatments: quantiles of every finite score, and +∞."""
    s = scores[np.isfinite(scores)]
    return np.r_[np.unique(np.quantile(s, np.linspace(0, 1, n_points))) if len(s) else [], np.inf]


def weight_sweep(n_responses: int, n_points: int) -> np.ndarray:
    """(m, R) global weight vectors: the simplex's edge between the first two responses (R ≥ 2)."""
    a = np.linspace(0, 1, n_points)
    w = np.zeros((n_points, n_responses))
    w[:, 0] = a
    w[:, min(1, n_responses - 1)] += 1 - a
    return w


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Bool mask of points (m, 2) no other point beats on both coordinates (ties kept)."""
    m = len(points)
    keep = np.ones(m, bool)
    for i in range(m):
        better = (points >= points[i]).all(1) & (points > points[i]).any(1)
        keep[i] = not better.any()
    return keep


def _fmt(sigma: Sequence[float]) -> str:
    return "[" + ", ".join("∞" if not np.isfinite(s) else f"{s:+.4f}" for s in sigma) + "]"
