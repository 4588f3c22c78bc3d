"""The decision rule on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from models.decision import EXCLUSIVE, INDEPENDENT, MODES, NO_SCORES, SCORED, apply_mode, decide


def test_phi_is_the_weighted_sum_and_sigma_is_strict():
    # 2 requests, K=2 treatments, R=2 responses.
    delta = np.array([[[0.10, -0.02], [0.00, 0.05]],
                      [[0.10, -0.02], [0.00, 0.05]]])
    w = np.array([[0.8, 0.2],    # cares about response 0
                  [0.1, 0.9]])   # cares about response 1
    d = decide(delta, w, sigma=[0.0, 0.03])
    # φ = [0.8*0.10 + 0.2*(-0.02), 0.8*0 + 0.2*0.05] = [0.076, 0.010]; [0.1*0.1 - 0.9*0.02, 0.9*0.05] = [-0.008, 0.045]
    assert d.phi == pytest.approx(np.array([[0.076, 0.010], [-0.008, 0.045]]))
    assert d.on.tolist() == [[True, False], [False, True]]
    assert d.reason == [SCORED, SCORED] and d.sigma.tolist() == [0.0, 0.03]
    at = decide(np.array([[[0.5, 0.5]]]), np.array([[0.5, 0.5]]), sigma=0.5)  # φ == σ: not above
    assert at.phi[0, 0] == pytest.approx(0.5) and not at.on[0, 0]


def test_a_user_without_scores_gets_nothing_switched_on():
    delta = np.array([[[0.3, 0.3]], [[np.nan, np.nan]]])
    d = decide(delta, np.array([[0.5, 0.5], [0.5, 0.5]]), sigma=-1.0)  # σ < 0 would switch anything on
    assert d.on.tolist() == [[True], [False]] and d.reason == [SCORED, NO_SCORES]
    assert np.isnan(d.phi[1, 0])


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="shapes"):
        decide(np.zeros((2, 2, 3)), np.zeros((2, 2)), 0.0)


def test_exclusive_switches_on_only_the_best_treatment_above_sigma():
    # B=4, K=3: two above σ (best is k=2); all below; a tie above σ (lower index wins);
    # the best φ is not above its σ, so the next one above σ wins.
    phi = np.array([[0.2, -0.1, 0.5],
                    [-0.1, -0.2, -0.3],
                    [0.4, 0.4, 0.1],
                    [0.3, 0.9, 0.0]])
    sigma = [0.0, 1.0, 0.0]
    assert apply_mode(phi, sigma, EXCLUSIVE).tolist() == [[False, False, True],
                                                          [False, False, False],
                                                          [True, False, False],
                                                          [True, False, False]]
    assert apply_mode(phi, sigma, INDEPENDENT).tolist() == (phi > np.array(sigma)).tolist()
    assert apply_mode(np.zeros((0, 3)), 0.0, EXCLUSIVE).shape == (0, 3)


def test_nan_phi_means_no_scores_in_every_mode():
    phi = np.array([[np.nan, np.nan], [np.nan, 0.2], [0.1, 0.3]])
    for mode in MODES:
        on = apply_mode(phi, -1.0, mode)
        assert not on[0].any() and on[1].tolist() == [False, True]
    assert apply_mode(phi, -1.0, EXCLUSIVE)[2].tolist() == [False, True]


def test_decide_in_exclusive_mode():
    delta = np.array([[[0.10, 0.05], [0.20, 0.00]],     # φ = [0.075, 0.10]: both above σ, t2 the best
                      [[-0.10, 0.00], [-0.05, 0.00]],   # both below σ
                      [[np.nan, np.nan], [np.nan, np.nan]]])
    w = np.full((3, 2), 0.5)
    d = decide(delta, w, sigma=0.0, mode=EXCLUSIVE)
    assert d.on.tolist() == [[False, True], [False, False], [False, False]]
    assert d.mode == EXCLUSIVE and d.reason == [SCORED, SCORED, NO_SCORES]
    both = decide(delta, w, sigma=0.0)  # the default is the paper's independent rule
    assert both.mode == INDEPENDENT and both.on.tolist() == [[True, True], [False, False], [False, False]]
    assert np.array_equal(d.phi, both.phi, equal_nan=True)


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="'greedy'"):
        decide(np.zeros((1, 2, 2)), np.full((1, 2), 0.5), 0.0, mode="greedy")
    with pytest.raises(ValueError, match="'Exclusive'"):
        apply_mode(np.zeros((1, 2)), 0.0, "Exclusive")


# --------------------------------------------------------------------------- CDUM


def test_cdum_rule_on_hand_made_numbers():
    from models.decision import NO_SCORES, SCORED, cdum_decide

    interest = np.array([[1.2, 0.5], [0.9, 1.0], [1.0, 1.0]])  # r̂^k
    mu_k = np.array([[[10.0], [30.0]], [[10.0], [21.0]], [[np.nan], [np.nan]]])  # ŷ^k, R = 1
    mu_0 = np.array([[10.0], [20.0], [np.nan]])  # ŷ^0
    d = cdum_decide(interest, mu_k, mu_0, xi=[1.0, 0.5])
    # user 0: 1.2·10 − 10 = 2 > 1 on; 0.5·30 − 10 = 5 > 0.5 on
    # user 1: 0.9·10 − 20 = −11 off; 1.0·21 − 20 = 1 > 0.5 on
    np.testing.assert_allclose(d.value[:2], [[2.0, 5.0], [-11.0, 1.0]])
    assert d.on.tolist() == [[True, True], [False, True], [False, False]]
    assert d.reason == [SCORED, SCORED, NO_SCORES] and np.isnan(d.value[2]).all()
    ex = cdum_decide(interest, mu_k, mu_0, xi=[1.0, 0.5], mode="exclusive")
    assert ex.on.tolist() == [[False, True], [False, True], [False, False]]


def test_cdum_rule_with_two_responses_weighs_scaled_gains():
    from models.decision import cdum_decide

    mu_k = np.array([[[12.0, 0.5]]])  # one user, one treatment, responses on different scales
    mu_0 = np.array([[10.0, 1.0]])
    d = cdum_decide(np.ones((1, 1)), mu_k, mu_0, xi=0.0, weights=[0.5, 0.5], scale=[10.0, 1.0])
    assert d.value[0, 0] == pytest.approx(0.5 * 0.2 + 0.5 * -0.5) and not d.on[0, 0]
    with pytest.raises(ValueError, match="shapes do not fit"):
        cdum_decide(np.ones((1, 2)), mu_k, mu_0, xi=0.0)
