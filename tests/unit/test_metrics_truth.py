"""Unit tests of fulcrum.metrics.truth: the true Qini curve and its normalized area."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fulcrum.metrics as fm
from fulcrum.metrics.truth import true_qini, true_qini_curve, true_qini_table

# Four rows, true effects tau = mu1 - mu0 = [3, 1, 0, -2]:
#
#   scores [0.1, 0.4, 0.3, 0.2] rank the rows 2, 3, 4, 1 (tau 1, 0, -2, 3):
#   cumulative gain 1, 1, -1, 2 -> points (0,0) (1,1) (2,1) (3,-1) (4,2),
#   trapezoid area 1/2 + 1 + 0 + 1/2 = 2.
#   random: the line to (4, 2), area 4.
#   perfect (by tau): gain 3, 4, 4, 2 -> area 3/2 + 7/2 + 4 + 3 = 12.
#   true QINI = (2 - 4) / (12 - 4) = -1/4.
#   tied scores [1, 1, 0, 0]: points (0,0) (2,4) (4,2), area 4 + 6 = 10 -> (10 - 4) / 8 = 3/4.
MU0 = [1.0, 1.0, 1.0, 3.0]
MU1 = [4.0, 2.0, 1.0, 1.0]
S4 = [0.1, 0.4, 0.3, 0.2]


def _population(n: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    mu0 = rng.lognormal(1.0, 0.5, n)
    mu1 = mu0 * (1.0 + rng.normal(0.05, 0.1, n)) + rng.normal(0.0, 0.2, n)
    return mu0, mu1


def test_hand_curve_and_score():
    x, g = true_qini_curve(S4, MU0, MU1)
    np.testing.assert_allclose(x, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(g, [0, 1, 1, -1, 2])
    assert true_qini(S4, MU0, MU1) == pytest.approx(-0.25)


def test_hand_ties_form_one_group():
    x, g = true_qini_curve([1, 1, 0, 0], MU0, MU1)
    np.testing.assert_allclose(x, [0, 2, 4])
    np.testing.assert_allclose(g, [0, 4, 2])
    assert true_qini([1, 1, 0, 0], MU0, MU1) == pytest.approx(0.75)


def test_curve_share_axis():
    x, g = true_qini_curve(S4, MU0, MU1, share=True)
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1.0])
    assert g[-1] == pytest.approx(2.0)


def test_perfect_ranking_scores_one_and_is_the_maximum():
    mu0, mu1 = _population()
    tau = mu1 - mu0
    assert true_qini(tau, mu0, mu1) == pytest.approx(1.0)
    # any increasing transform of the true effect is also perfect
    assert true_qini(np.exp(tau), mu0, mu1) == pytest.approx(1.0)
    noisy = tau + np.random.default_rng(1).normal(0, tau.std(), tau.size)
    q = true_qini(noisy, mu0, mu1)
    assert 0.0 < q < 1.0


def test_reversed_ranking_is_minus_one():
    mu0, mu1 = _population()
    assert true_qini(-(mu1 - mu0), mu0, mu1) == pytest.approx(-1.0)


def test_random_ranking_is_about_zero():
    mu0, mu1 = _population()
    rng = np.random.default_rng(2)
    values = [true_qini(rng.random(mu0.size), mu0, mu1) for _ in range(20)]
    assert abs(np.mean(values)) < 0.02
    assert np.max(np.abs(values)) < 0.1


def test_relative_ranking_scores_below_one_when_orders_differ():
    mu0, mu1 = _population()
    delta = mu1 / mu0 - 1
    q = true_qini(delta, mu0, mu1)
    assert 0.0 < q < 1.0


def test_invariant_to_positive_rescaling_of_outcomes_and_scores():
    mu0, mu1 = _population(2_000)
    s = np.random.default_rng(3).normal(size=mu0.size) + (mu1 - mu0)
    q = true_qini(s, mu0, mu1)
    assert true_qini(3 * s + 7, 5 * mu0, 5 * mu1) == pytest.approx(q)
    # adding the same constant to both outcomes changes nothing
    assert true_qini(s, mu0 + 10, mu1 + 10) == pytest.approx(q)


def test_constant_effect_is_nan():
    assert math.isnan(true_qini([0.3, 0.2, 0.1], [1, 2, 3], [2, 3, 4]))
    mu0 = np.array([0.1, 0.2, 0.3, 0.7, 1.1])
    assert math.isnan(true_qini([5, 4, 3, 2, 1], mu0, mu0 + 0.7))  # equal up to rounding
    assert math.isnan(true_qini([1, 2], [0, 0], [0, 0]))


def test_table_matches_cell_by_cell():
    rng = np.random.default_rng(4)
    n, k, r = 500, 2, 3
    mu = rng.lognormal(0, 0.5, (n, k + 1, r))
    scores = rng.normal(size=(n, k, r)) + (mu[:, 1:] - mu[:, :1])
    table = true_qini_table(scores, mu)
    assert table.shape == (k, r)
    for j in range(k):
        for c in range(r):
            assert table[j, c] == pytest.approx(true_qini(scores[:, j, c], mu[:, 0, c], mu[:, j + 1, c]))
    arm = rng.integers(0, k + 1, n)
    restricted = true_qini_table(scores, mu, arm=arm)
    rows = (arm == 0) | (arm == 2)
    assert restricted[1, 2] == pytest.approx(true_qini(scores[rows, 1, 2], mu[rows, 0, 2], mu[rows, 2, 2]))
    # the oracle by absolute effect is perfect in every cell
    np.testing.assert_allclose(true_qini_table(mu[:, 1:] - mu[:, :1], mu), 1.0)


def test_exported_from_package():
    assert fm.true_qini is true_qini
    assert fm.true_qini_curve is true_qini_curve
    assert fm.true_qini_table is true_qini_table


@pytest.mark.parametrize(
    "args, match",
    [
        (([1, 2, 3], [1, 1], [2, 2, 2]), r"same length.*scores.*mu0"),
        (([1, 2], [1, 1], [2, 2, 2]), r"same length"),
        (([[1, 2]], [1, 1], [2, 2]), r"scores must be 1-D"),
        (([1, 2], [1, np.nan], [2, 2]), r"mu0 must contain only finite"),
        (([1, 2], [1, 1], ["a", "b"]), r"mu1 must be numeric"),
        (([], [], []), r"must not be empty"),
    ],
)
def test_true_qini_input_errors(args, match):
    with pytest.raises(ValueError, match=match):
        true_qini(*args)
    with pytest.raises(ValueError, match=match):
        true_qini_curve(*args)


def test_table_shape_errors():
    mu = np.ones((10, 3, 2))
    with pytest.raises(ValueError, match=r"scores must have shape \(n, K, R\)"):
        true_qini_table(np.ones((10, 2)), mu)
    with pytest.raises(ValueError, match=r"mu must have shape \(n, K \+ 1, R\)"):
        true_qini_table(np.ones((10, 2, 2)), np.ones((10, 2, 2)))
    with pytest.raises(ValueError, match=r"mu must have shape"):
        true_qini_table(np.ones((10, 2, 2)), np.ones((9, 3, 2)))
    with pytest.raises(ValueError, match=r"arm must have shape \(10,\)"):
        true_qini_table(np.ones((10, 2, 2)), mu, arm=np.zeros(9))


def test_per_arm_table_adds_true_qini_per_cell_on_the_cells_rows():
    from fulcrum.metrics import per_arm_table

    rng = np.random.default_rng(5)
    n, k, r = 400, 2, 2
    mu = rng.gamma(2.0, 1.0, (n, k + 1, r))
    arm = rng.integers(0, k + 1, n)
    y = mu[np.arange(n), arm]
    scores = rng.standard_normal((n, k, r))
    table = per_arm_table(y, arm, scores, ["t1", "t2"], ["a", "b"], mu_true=mu)
    expect = true_qini_table(scores, mu, arm=arm)
    assert [c["true_qini"] for c in table] == pytest.approx(expect.ravel().tolist())
    assert "true_qini" not in per_arm_table(y, arm, scores, ["t1", "t2"], ["a", "b"])[0]
    with pytest.raises(ValueError, match="mu_true"):
        per_arm_table(y, arm, scores, ["t1", "t2"], ["a", "b"], mu_true=mu[:, :2])
