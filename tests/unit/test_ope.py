"""Offline policy evaluation estimators on hand-made logs with known answers, and on synthetic RCTs."""

from __future__ import annotations

import numpy as np
import pytest

from fulcrum.ope import NOT_EVALUABLE, bootstrap_counts, coverage, estimate, true_values


def _logs():
    """Four units, two arms, propensity 1/2 each: responses (R=2) written so the sums are easy."""
    arm = np.array([0, 1, 0, 1])
    y = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0], [5.0, 50.0]])
    p = np.full(4, 0.5)
    return arm, y, p


def test_ips_snips_on_hand_made_logs():
    arm, y, p = _logs()
    actions = np.array([[0, 1, 1], [0, 1, 1], [0, 1, 0], [0, 1, 0]])  # control, all-1, 1 for the first two
    est = estimate(actions, arm, y, p, estimators=("ips", "snips"), n_boot=0)
    ips, snips = est["ips"], est["snips"]
    # all-control: units 0 and 2 match, (1 + 2) / 0.5 / 4 = 1.5; all-1: (3 + 5) / 0.5 / 4 = 4
    assert ips.value.point[:, 0] == pytest.approx([1.5, 4.0, (3 / 0.5 + 2 / 0.5) / 4])
    assert ips.value.point[:, 1] == pytest.approx([15.0, 40.0, 25.0])
    # SNIPS divides by the summed weights: matched units' mean here
    assert snips.value.point[:, 0] == pytest.approx([1.5, 4.0, 2.5])
    assert ips.lift.point[1] == pytest.approx([2.5, 25.0])
    assert ips.rel_lift.point[1] == pytest.approx([4.0 / 1.5 - 1, 40 / 15 - 1])
    assert ips.rel_lift.point[0] == pytest.approx([0.0, 0.0])


def test_dr_with_unequal_propensities_and_its_direct_part():
    arm = np.array([0, 0, 1])
    y = np.array([[2.0], [4.0], [9.0]])
    p = np.array([0.5, 0.5, 0.25])
    mu_hat = np.array([[[1.0], [5.0]], [[3.0], [6.0]], [[2.0], [8.0]]])  # (n, A, R)
    actions = np.array([[1], [0], [1]])
    dr = estimate(actions, arm, y, p, mu_hat=mu_hat, estimators=("dr",), n_boot=0)["dr"]
    # unit 0: μ̂(1)=5, no match; unit 1: μ̂(0)=3 + (4-3)/0.5 = 5; unit 2: μ̂(1)=8 + (9-8)/0.25 = 12
    assert dr.value.point[0, 0] == pytest.approx((5 + 5 + 12) / 3)
    ips = estimate(actions, arm, y, p, estimators=("ips",), n_boot=0)["ips"]
    assert ips.value.point[0, 0] == pytest.approx((0 + 4 / 0.5 + 9 / 0.25) / 3)


def test_dr_is_exact_with_exact_outcome_model_and_no_noise():
    rng = np.random.default_rng(0)
    n, a, r = 500, 3, 2
    mu = rng.uniform(1, 5, (n, a, r))
    arm = rng.integers(0, a, n)
    y = mu[np.arange(n), arm]
    p = np.full(n, 1 / a)
    actions = np.stack([np.zeros(n, int), rng.integers(0, a, n), np.full(n, 2)], axis=1)
    dr = estimate(actions, arm, y, p, mu_hat=mu, estimators=("dr",), n_boot=0)["dr"]
    value, rel = true_values(actions, mu)
    assert dr.value.point == pytest.approx(value)
    assert dr.rel_lift.point == pytest.approx(rel)


def test_unevaluable_units_are_left_out_and_counted():
    arm, y, p = _logs()
    actions = np.array([[0, NOT_EVALUABLE], [0, 1], [0, NOT_EVALUABLE], [0, 1]])
    est = estimate(actions, arm, y, p, estimators=("ips",), n_boot=0)["ips"]
    assert coverage(actions) == pytest.approx([1.0, 0.5])
    # policy 1 valued on units 1 and 3 only: (3 + 5) / 0.5 / 2 = 8; control on the same units: 0
    assert est.value.point[1, 0] == pytest.approx(8.0)
    assert est.reference_value[1, 0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="reference policy"):
        estimate(actions[:, ::-1], arm, y, p, n_boot=0)


@pytest.mark.parametrize("bad, match", [
    ({"p": np.array([0.5, 0.0, 0.5, 0.5])}, "propensities"),
    ({"y": np.array([[1.0, np.nan], [3, 30], [2, 20], [5, 50]])}, "NaN"),
    ({"arm": np.array([0, 1, 0, -1])}, "arm indices"),
])
def test_bad_logs_are_refused_by_name(bad, match):
    arm, y, p = _logs()
    kw = {"arm": arm, "y": y, "p": p, **bad}
    with pytest.raises(ValueError, match=match):
        estimate(np.zeros((4, 1), int), kw["arm"], kw["y"], kw["p"], n_boot=0)
    with pytest.raises(ValueError, match="mu_hat"):
        estimate(np.zeros((4, 1), int), arm, y, p, estimators=("dr",), n_boot=0)


def test_bootstrap_counts_resample_every_unit_set():
    c = bootstrap_counts(1000, 50, seed=3)
    assert c.shape == (50, 1000) and (c.sum(1) == 1000).all()
    assert np.array_equal(c, bootstrap_counts(1000, 50, seed=3))  # seeded


def _synthetic_rct(seed: int, n: int = 20_000):
    """Three arms with unequal shares, heterogeneous effects, skewed noise; the truth is known."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    base = np.exp(1 + 0.3 * x)
    mu = np.stack([base, base * (1 + 0.1 * np.tanh(x)), base * (1 - 0.05 * x)], axis=1)[..., None]  # (n, 3, 1)
    shares = np.array([0.5, 0.3, 0.2])
    arm = rng.choice(3, n, p=shares)
    y = mu[np.arange(n), arm] * rng.lognormal(-0.5 * 0.8**2, 0.8, (n, 1))
    policy = np.where(x > 0, 1, 2)  # a personalized policy
    actions = np.stack([np.zeros(n, int), policy], axis=1)
    return x, mu, arm, y, shares[arm], actions


def test_ips_and_dr_are_unbiased_over_seeds():
    """Mean over 30 RCT draws of each estimate lands on the truth (within 4 standard errors)."""
    got = {"ips": [], "snips": [], "dr": []}
    truth = []
    for seed in range(30):
        x, mu, arm, y, p, actions = _synthetic_rct(seed)
        # DR's outcome model: deliberately wrong (a constant per arm) — it must stay unbiased anyway.
        mu_hat = np.broadcast_to(y.mean(0)[None, None, :], mu.shape).copy()
        est = estimate(actions, arm, y, p, mu_hat=mu_hat, n_boot=0)
        for k in got:
            got[k].append(est[k].value.point[1, 0])
        truth.append(true_values(actions, mu)[0][1, 0])
    truth = np.asarray(truth)
    for k, v in got.items():
        err = np.asarray(v) - truth
        assert abs(err.mean()) < 4 * err.std(ddof=1) / np.sqrt(len(err)) + 1e-3, k


def test_dr_interval_covers_the_truth_most_of_the_time():
    hits = 0
    for seed in range(20):
        x, mu, arm, y, p, actions = _synthetic_rct(100 + seed, n=5000)
        est = estimate(actions, arm, y, p, mu_hat=mu, estimators=("dr",), n_boot=200, seed=seed)["dr"]
        truth = true_values(actions, mu)[0][1, 0]
        hits += est.value.lo[1, 0] <= truth <= est.value.hi[1, 0]
    assert hits >= 16  # 95 % intervals: 20 draws give ≥ 16 hits with probability > 0.99


def test_outcome_scale_is_the_least_squares_scale_per_arm():
    from fulcrum.ope import outcome_scale

    mu_hat = np.array([[[1.0], [2.0]], [[2.0], [4.0]], [[3.0], [1.0]]])
    arm = np.array([0, 0, 1])
    y = np.array([[2.0], [4.0], [5.0]])
    s = outcome_scale(mu_hat, arm, y)
    assert s[0, 0] == pytest.approx((2 * 1 + 4 * 2) / (1 + 4)) and s[1, 0] == pytest.approx(5.0)
    assert outcome_scale(mu_hat, np.zeros(3, int), y)[1, 0] == 1.0  # an arm without units keeps 1
