"""Policies as data, arms of treatment sets, and σ calibration under guard-rails and a budget."""

from __future__ import annotations

import numpy as np
import pytest

from fulcrum.ope import NOT_EVALUABLE
from models.calibration import Constraints, RCTLogs, calibrate, candidate_sigmas, pareto_front
from models.policy import (
    Policy,
    Units,
    arm_lookup,
    combined_outcomes,
    decide_all,
    to_arms,
    treated_share,
)

T, R = ["t1", "t2"], ["time", "views"]


def _units() -> Units:
    delta = np.array([
        [[0.10, -0.05], [-0.02, 0.04]],   # t1 helps time, t2 helps views
        [[-0.01, 0.02], [0.03, 0.01]],
        [[np.nan, np.nan], [np.nan, np.nan]],  # no scores
    ])
    weights = np.array([[0.8, 0.2], [0.2, 0.8], [0.5, 0.5]])
    return Units(delta=delta, weights=weights, treatments=T, responses=R,
                 true_delta=np.nan_to_num(delta, nan=0.05), true_weights=weights)


def test_builtin_policies_decide_as_documented():
    u = _units()
    got = decide_all([
        Policy("c", "control"), Policy("a2", "all", treatment="t2"),
        Policy("g", "greedy", response="views"),
        Policy("fw", "fixed_weight", weights=(0.5, 0.5)),
        Policy("h", "hmum"), Policy("hx", "hmum", mode="exclusive"),
        Policy("h_hi", "hmum", sigma=(0.05, 0.0)),
        Policy("rnd", "random", like="h", seed=1), Policy("o", "oracle"),
    ], u)
    assert not got["c"].any() and got["a2"][:, 1].all() and not got["a2"][:, 0].any()
    assert got["g"].tolist() == [[False, True], [True, True], [False, False]]
    # fixed 0.5/0.5: φ = [0.025, 0.01], [0.005, 0.02]
    assert got["fw"].tolist() == [[True, True], [True, True], [False, False]]
    # hmum: user 0 φ = [0.07, -0.008]; user 1 φ = [0.014, 0.014]
    assert got["h"].tolist() == [[True, False], [True, True], [False, False]]
    assert got["hx"].tolist() == [[True, False], [True, False], [False, False]]  # tie -> lower index
    assert got["h_hi"].tolist() == [[True, False], [False, True], [False, False]]
    assert got["rnd"].sum(0).tolist() == got["h"].sum(0).tolist()  # same rates, shuffled
    assert got["o"][2].all()  # the oracle sees the truth even where the model has no scores
    assert treated_share(got["h"]) == pytest.approx(2 / 3)


def test_policy_specs_are_checked():
    with pytest.raises(ValueError, match="unknown kind"):
        Policy("x", "bandit")
    with pytest.raises(ValueError, match="needs 'treatment'"):
        Policy("x", "all")
    with pytest.raises(ValueError, match="not in the list"):
        decide_all([Policy("r", "random", like="hmum")], _units())
    with pytest.raises(ValueError, match="true δ"):
        Policy("o", "oracle").decide(Units(delta=np.zeros((1, 2, 2)), weights=np.full((1, 2), 0.5),
                                           treatments=T, responses=R))


def test_treatment_sets_map_to_rct_arms_or_not_evaluable():
    on = np.array([[False, False], [True, False], [False, True], [True, True]])
    assert to_arms(on, arm_lookup(T, ["control", *T])).tolist() == [0, 1, 2, NOT_EVALUABLE]
    assert to_arms(on, arm_lookup(T, ["control", *T], ["t1+t2"])).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown treatments"):
        arm_lookup(T, ["control", *T], ["t1+t9"])


def test_combined_outcomes_compose_the_single_effects():
    mu = np.array([[[10.0], [12.0], [9.0]]])  # δ1 = +20 %, δ2 = −10 %
    out = combined_outcomes(mu, T, ["t1+t2"])
    assert out.shape == (1, 4, 1) and out[0, 3, 0] == pytest.approx(10 * 1.2 * 0.9)


# --------------------------------------------------------------------------- calibration


def _calibration_world(n: int = 6000, seed: int = 0):
    """One treatment that lifts response 0 by 4 % and costs response 1 where x > 0.5 (lifts it elsewhere)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    true_delta = np.stack([np.full(n, 0.04), np.where(x > 0.5, -0.06, 0.03)], axis=1)[:, None, :]  # (n, 1, 2)
    base = np.full((n, 2), 10.0)
    mu = np.stack([base, base * (1 + true_delta[:, 0])], axis=1)  # (n, 2 arms, 2)
    arm = rng.integers(0, 2, n)
    y = mu[np.arange(n), arm] * rng.lognormal(-0.02, 0.2, (n, 2))
    # The model ranks users well: its φ grows as the cost on response 1 shrinks.
    delta = true_delta + rng.normal(0, 0.002, true_delta.shape)
    units = Units(delta=delta, weights=np.full((n, 2), 0.5), treatments=["t1"], responses=R)
    logs = RCTLogs(arm=arm, y=y, propensity=np.full(n, 0.5), mu_hat=mu)
    return units, logs, mu


def test_calibration_obeys_the_guardrail():
    units, logs, mu = _calibration_world()
    lookup = arm_lookup(["t1"], ["control", "t1"])
    strict = Constraints(objective_weights=np.array([0.5, 0.5]), guardrails=np.array([0.01, 0.005]))
    cal = calibrate(Policy("h", "hmum"), units, logs, lookup, strict, n_boot=100)
    assert np.all(cal.rel_lift_lo >= -strict.guardrails)
    assert all(np.all(np.asarray(c["rel_lift_lo"]) >= -strict.guardrails) for c in cal.candidates if c["feasible"])
    # Treating everyone costs response 1 1.5 % on average, beyond its guard-rail: calibration must not.
    assert 0.2 < cal.treated_share < 0.8
    # The chosen σ treats mostly the users where response 1 does not pay.
    on = units.delta[:, 0] @ np.array([0.5, 0.5]) > cal.sigma[0]
    assert on.any() and (units.delta[on, 0, 1] > 0).mean() > 0.9
    loose = Constraints(objective_weights=np.array([0.5, 0.5]), guardrails=np.array([1.0, 1.0]))
    free = calibrate(Policy("h", "hmum"), units, logs, lookup, loose, n_boot=100)
    assert free.objective >= cal.objective - 1e-12


def test_gate_margin_widens_the_guardrail_check_and_keeps_the_search_feasible():
    units, logs, _ = _calibration_world()
    lookup = arm_lookup(["t1"], ["control", "t1"])
    g = np.array([0.01, 0.005])
    plain = Constraints(objective_weights=np.array([0.5, 0.5]), guardrails=g)
    a = calibrate(Policy("h", "hmum"), units, logs, lookup, plain, n_boot=100)
    # The smallest margin that rules out the plain choice: its lower half × m reaches −g.
    half = a.rel_lift - a.rel_lift_lo
    m = float(np.min(np.where(half > 0, (a.rel_lift + g) / np.where(half > 0, half, 1), np.inf))) * 1.01
    assert 1 < m < 5
    wide = Constraints(objective_weights=np.array([0.5, 0.5]), guardrails=g, gate_margin=m)
    b = calibrate(Policy("h", "hmum"), units, logs, lookup, wide, n_boot=100)
    # The same candidates and intervals; the margin only makes the check stricter.
    assert [c["rel_lift_lo"] for c in a.candidates] == [c["rel_lift_lo"] for c in b.candidates]
    for c in b.candidates:
        point, lo = np.asarray(c["rel_lift"]), np.asarray(c["rel_lift_lo"])
        assert c["guardrails_ok"] == (c["covered"] and bool(np.all(point - m * (point - lo) >= -g)))
    feasible = {i for i, c in enumerate(a.candidates) if c["feasible"]}
    assert {i for i, c in enumerate(b.candidates) if c["feasible"]} < feasible
    assert not np.array_equal(b.sigma, a.sigma) and b.objective <= a.objective
    assert np.all(b.rel_lift - m * (b.rel_lift - b.rel_lift_lo) >= -g) and f"× {m:g}" in b.reason
    # Never on (all-control: an interval of width 0) passes any margin, so the search always ends somewhere.
    huge = Constraints(objective_weights=np.array([0.5, 0.5]), guardrails=np.array([0.0, 0.0]), gate_margin=5.0)
    strict = calibrate(Policy("h", "hmum"), units, logs, lookup, huge, n_boot=50)
    assert strict.objective >= 0 and np.all(strict.rel_lift_lo >= 0)
    never = [c for c in strict.candidates if np.all(np.isinf(c["sigma"]))]
    assert len(never) == 1 and never[0]["rel_lift"] == never[0]["rel_lift_lo"] == [0.0, 0.0] and never[0]["feasible"]


def test_calibration_obeys_the_budget_and_falls_back_to_control():
    units, logs, _ = _calibration_world()
    lookup = arm_lookup(["t1"], ["control", "t1"])
    cons = Constraints(objective_weights=np.array([0.5, 0.5]), guardrails=np.array([1.0, 1.0]), budget=0.1)
    cal = calibrate(Policy("h", "hmum"), units, logs, lookup, cons, n_boot=50)
    assert cal.treated_share <= 0.1 + 1e-12 and cal.treated_share > 0
    assert "pass the constraints" in cal.reason
    # A guard-rail nothing can meet (response 0 must be significantly up by 50 %... i.e. g < 0 impossible):
    harsh = Constraints(objective_weights=np.array([0.0, 1.0]), guardrails=np.array([0.0, 0.0]))
    units_bad = Units(delta=-np.abs(units.delta), weights=units.weights, treatments=["t1"], responses=R)
    logs_bad = RCTLogs(arm=logs.arm, y=logs.y, propensity=logs.propensity, mu_hat=logs.mu_hat)
    cal = calibrate(Policy("h", "hmum"), units_bad, logs_bad, lookup, harsh, n_boot=50)
    assert cal.objective >= 0 and np.all(cal.rel_lift_lo >= 0)


def test_candidate_grid_is_bounded_and_holds_never_on():
    rng = np.random.default_rng(1)
    sig = candidate_sigmas(rng.standard_normal((100, 3)), 200)
    assert len(sig) <= 200 and np.isinf(sig).all(1).any() and (sig == 0).all(1).any()


def test_pareto_front():
    pts = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]])
    assert pareto_front(pts).tolist() == [False, False, False, True, False]


def test_frontier_plot_leaves_no_pyplot_state():
    import matplotlib.pyplot as plt

    from fulcrum import schema as S
    from pipelines.policy import plot_frontier

    man = S.Manifest(source="simulator", arms=["control", *T], responses=R, features=[], n_users=1,
                     n_experiment_rows=1, n_feature_rows=1, first_snapshot="2026-11-01", last_snapshot="2026-11-01")
    rows = [{"series": s, "dr_x": x, "dr_y": -x, "true_x": x, "true_y": x} for s in ("hmum", "all-t1") for x in (0.0, 0.1)]
    fig = plot_frontier(rows, man, {"dr_x": 0.0, "dr_y": 0.0, "true_x": 0.0, "true_y": 0.0})
    assert len(fig.axes) == 2 and plt.get_fignums() == []


def test_user_weights_average_requests_and_default_to_the_population():
    from pipelines.policy import user_weights

    w, has = user_weights(np.array([5, 7, 9]), np.array([7, 5, 7]), np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    assert has.tolist() == [True, True, False]
    assert w.tolist() == [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]  # user 9: the mean of all requests
    w, _ = user_weights(np.array([7]), np.array([7, 7, 5]), np.array([[1.0, 0.0], [0.6, 0.4], [0.0, 1.0]]))
    assert w[0] == pytest.approx([0.8, 0.2])
    with pytest.raises(ValueError, match="no request logs"):
        user_weights(np.array([1]), np.array([], int), np.zeros((0, 2)))
