"""The decision rule on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from models.decision import NO_SCORES, SCORED, decide


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
