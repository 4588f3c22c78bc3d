"""Unit tests of fulcrum.metrics: hand-computed cases, properties, validation, plots."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fulcrum.metrics as fm
from fulcrum.metrics.curves import _is_binary

# --------------------------------------------------------------------------- hand cases

# Six rows, already in rank order (descending score), binary responses:
#
#   rank  score  t  y   N_T N_C Y_T Y_C   Q = Y_T - Y_C*N_T/N_C   U = (Y_T/N_T - Y_C/N_C)*n
#    1    0.9    1  1    1   0   1   0    1 - 0          = 1      (1 - 0) * 1       = 1
#    2    0.8    0  0    1   1   1   0    1 - 0*1        = 1      (1 - 0) * 2       = 2
#    3    0.7    1  1    2   1   2   0    2 - 0*2        = 2      (1 - 0) * 3       = 3
#    4    0.6    0  1    2   2   2   1    2 - 1*1        = 1      (1 - 1/2) * 4     = 2
#    5    0.5    1  0    3   2   2   1    2 - 1*3/2      = 1/2    (2/3 - 1/2) * 5   = 5/6
#    6    0.4    0  0    3   3   2   1    2 - 1*1        = 1      (2/3 - 1/3) * 6   = 2
#
# Qini area (dx = 1): 1/2 + 1 + 3/2 + 3/2 + 3/4 + 3/4 = 6; random line to (6, 1): 3.
# Perfect Qini (negative_effect=True), score y*(2t-1): rows 1,3 -> 1; rows 2,5,6 -> 0;
#   row 4 -> -1. Points (0,0) (2,2) (5,2) (6,1): area 2 + 6 + 3/2 = 9.5.
#   QINI = (6 - 3) / (9.5 - 3) = 6/13.
# Perfect Qini (negative_effect=False): gain G = 2 - 3*1/3 = 1; points (0,0) (1,1) (6,1):
#   area 1/2 + 5 = 5.5; QINI = 3 / 2.5 = 1.2 (the model beats this perfect curve).
# Uplift area: 1/2 + 3/2 + 5/2 + 5/2 + 17/12 + 17/12 = 59/6; random to (6, 2): 6.
# Perfect uplift: control responders (1) do not outnumber treated non-responders (1),
#   so the score is 2*[y == t] + t: TR 3, CN 2, TN 1, CR 0. Points (0,0) (2,2) (4,4)
#   (5,10/3) (6,2): area 2 + 6 + 11/3 + 8/3 = 43/3. AUUC = (59/6 - 6)/(43/3 - 6) = 23/50.
Y6 = [1, 0, 1, 1, 0, 0]
T6 = [1, 0, 1, 0, 1, 0]
S6 = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def test_hand_qini_curve_and_score():
    x, q = fm.qini_curve(Y6, S6, T6)
    np.testing.assert_allclose(x, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(q, [0, 1, 1, 2, 1, 0.5, 1])
    xp, qp = fm.perfect_qini_curve(Y6, T6)
    np.testing.assert_allclose(xp, [0, 2, 5, 6])
    np.testing.assert_allclose(qp, [0, 2, 2, 1])
    assert fm.qini_auc_score(Y6, S6, T6) == pytest.approx(6 / 13, abs=1e-12)
    xp, qp = fm.perfect_qini_curve(Y6, T6, negative_effect=False)
    np.testing.assert_allclose(xp, [0, 1, 6])
    np.testing.assert_allclose(qp, [0, 1, 1])
    assert fm.qini_auc_score(Y6, S6, T6, negative_effect=False) == pytest.approx(1.2, abs=1e-12)


def test_hand_uplift_curve_and_score():
    x, u = fm.uplift_curve(Y6, S6, T6)
    np.testing.assert_allclose(x, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(u, [0, 1, 2, 3, 2, 5 / 6, 2])
    xp, up = fm.perfect_uplift_curve(Y6, T6)
    np.testing.assert_allclose(xp, [0, 2, 4, 5, 6])
    np.testing.assert_allclose(up, [0, 2, 4, 10 / 3, 2])
    assert fm.uplift_auc_score(Y6, S6, T6) == pytest.approx(23 / 50, abs=1e-12)


def test_ties_make_one_point():
    # groups {0.5, 0.5} and {0.2, 0.2}: after 2 rows N_T=1, N_C=1, Y_T=1, Y_C=0 -> Q=1;
    # after 4 rows N_T=2, N_C=2, Y_T=1, Y_C=1 -> Q=0
    x, q = fm.qini_curve([1, 0, 0, 1], [0.5, 0.5, 0.2, 0.2], [1, 0, 1, 0])
    np.testing.assert_allclose(x, [0, 2, 4])
    np.testing.assert_allclose(q, [0, 1, 0])
    # a constant score is the random line
    x, q = fm.qini_curve([1, 0, 0, 1], [3.0] * 4, [1, 0, 1, 0])
    np.testing.assert_allclose(x, [0, 4])
    assert fm.qini_auc_score([1, 0, 1, 1], [3.0] * 4, [1, 0, 1, 0]) == pytest.approx(0.0)


# Continuous responses, four rows in rank order:
#
#   rank  t  y     N_T N_C  Y_T  Y_C   Q                 U
#    1    1  3.0    1   0   3    0     3                 3 * 1         = 3
#    2    0  1.0    1   1   3    1     3 - 1*1   = 2     (3 - 1) * 2   = 4
#    3    1  2.0    2   1   5    1     5 - 1*2   = 3     (2.5 - 1) * 3 = 4.5
#    4    0  0.5    2   2   5    1.5   5 - 1.5   = 3.5   (2.5 - .75)*4 = 7
#
# Qini area 3/2 + 5/2 + 5/2 + 13/4 = 9.75; random to (4, 3.5): 7.
# Perfect (negative_effect=True), score y*(2t-1) = [3, -1, 2, -0.5]: order rows 1, 3, 4, 2:
#   Q = 3, 5, 5 - 0.5*2 = 4, 3.5 -> area 3/2 + 4 + 9/2 + 15/4 = 13.75; QINI = 2.75/6.75 = 11/27.
# Perfect (negative_effect=False), score y*t = [3, 0, 2, 0]: rows 1, 3, then {2, 4} tied:
#   points (1,3) (2,5) (4,3.5) -> area 3/2 + 4 + 17/2 = 14; QINI = 2.75/7 = 11/28.
# Perfect uplift, score y*(2t-1): U = 3, (2.5 - 0)*2 = 5, (2.5 - .5)*3 = 6, 7
#   -> area 3/2 + 4 + 11/2 + 13/2 = 17.5; model area 3/2 + 7/2 + 17/4 + 23/4 = 15;
#   random 14; AUUC = 1/3.5 = 2/7.
YC = [3.0, 1.0, 2.0, 0.5]
TC = [1, 0, 1, 0]
SC = [4.0, 3.0, 2.0, 1.0]


def test_hand_continuous():
    x, q = fm.qini_curve(YC, SC, TC)
    np.testing.assert_allclose(q, [0, 3, 2, 3, 3.5])
    np.testing.assert_allclose(fm.perfect_qini_curve(YC, TC)[1], [0, 3, 5, 4, 3.5])
    xp, qp = fm.perfect_qini_curve(YC, TC, negative_effect=False)
    np.testing.assert_allclose(xp, [0, 1, 2, 4])
    np.testing.assert_allclose(qp, [0, 3, 5, 3.5])
    assert fm.qini_auc_score(YC, SC, TC) == pytest.approx(11 / 27, abs=1e-12)
    assert fm.qini_auc_score(YC, SC, TC, negative_effect=False) == pytest.approx(11 / 28, abs=1e-12)
    np.testing.assert_allclose(fm.uplift_curve(YC, SC, TC)[1], [0, 3, 4, 4.5, 7])
    np.testing.assert_allclose(fm.perfect_uplift_curve(YC, TC)[1], [0, 3, 5, 6, 7])
    assert fm.uplift_auc_score(YC, SC, TC) == pytest.approx(2 / 7, abs=1e-12)
    # the continuous perfect curves are references, not maxima: ranking by y*t scores
    # (14 - 7) / 6.75 = 28/27 against the negative_effect=True reference
    assert fm.qini_auc_score(YC, [3, 0, 2, 0], TC) == pytest.approx(28 / 27, abs=1e-12)


def test_empty_group_in_prefix_counts_as_zero():
    # the first two rows are treated only: N_C = 0 -> the control term is 0
    x, q = fm.qini_curve([2.0, 1.0, 0.0, 4.0], [4, 3, 2, 1], [1, 1, 0, 0])
    np.testing.assert_allclose(q, [0, 2, 3, 3, 3 - 4 * 2 / 2])
    x, u = fm.uplift_curve([0.0, 1.0, 2.0, 4.0], [4, 3, 2, 1], [0, 0, 1, 1])
    np.testing.assert_allclose(u, [0, 0, -1, (2 - 0.5) * 3, (3 - 0.5) * 4])


# --------------------------------------------------------------------------- properties


def _binary_rct(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.integers(0, 2, n)
    effect = 0.3 * np.tanh(x)  # positive for x > 0, negative for x < 0
    y = (rng.random(n) < 0.4 + effect * t).astype(float)
    return x, t, y, effect


def _continuous_rct(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    t = rng.integers(0, 2, n)
    tau = 2.0 * np.maximum(x[:, 0], 0.0)  # planted effect, 0 for half of the users
    base = np.exp(0.5 * x[:, 1] + 1.0)
    y = np.maximum(base + tau * t + rng.normal(scale=1.0, size=n), 0.0)  # minutes, >= 0
    return x, t, y, tau


def test_random_scores_average_to_zero():
    _, t, y, _ = _binary_rct(0)
    rng = np.random.default_rng(1)
    qini = [fm.qini_auc_score(y, rng.random(y.size), t) for _ in range(200)]
    auuc = [fm.uplift_auc_score(y, rng.random(y.size), t) for _ in range(200)]
    assert abs(np.mean(qini)) < 0.03 and abs(np.mean(auuc)) < 0.03
    assert np.std(qini) > 0.01  # they are random, not constant


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_perfect_ranking_scores_one(kind):
    _, t, y, _ = _binary_rct(2) if kind == "binary" else _continuous_rct(2)
    oracle = y * (2 * t - 1)
    assert fm.qini_auc_score(y, oracle, t) == pytest.approx(1.0, abs=1e-12)
    if kind == "continuous":
        assert fm.qini_auc_score(y, y * t, t, negative_effect=False) == pytest.approx(1.0)
        assert fm.uplift_auc_score(y, oracle, t) == pytest.approx(1.0, abs=1e-12)


def test_reversed_ranking_is_negative():
    x, t, y, effect = _binary_rct(3)
    good = fm.qini_auc_score(y, effect, t)
    assert good > 0.1
    assert fm.qini_auc_score(y, -effect, t) < -0.1
    assert fm.uplift_auc_score(y, effect, t) > 0 > fm.uplift_auc_score(y, -effect, t)


def test_continuous_planted_effect_is_found():
    x, t, y, tau = _continuous_rct(4)
    rng = np.random.default_rng(5)
    score = tau + rng.normal(scale=0.5, size=tau.size)
    assert not _is_binary(y)
    assert fm.qini_auc_score(y, score, t) > 0.1
    assert fm.uplift_auc_score(y, score, t) > 0.1
    assert fm.qini_auc_score(y, -score, t) < -0.1
    assert fm.uplift_at_k(y, score, t, k=0.3) > fm.uplift_at_k(y, -score, t, k=0.3)
    noise = rng.normal(size=tau.size)
    assert abs(fm.qini_auc_score(y, noise, t)) < abs(fm.qini_auc_score(y, score, t))


@pytest.mark.parametrize("negative_effect", [True, False])
def test_continuous_scores_are_scale_invariant(negative_effect):
    x, t, y, tau = _continuous_rct(6)
    score = np.round(tau + x[:, 1], 1)  # ties included
    ref_q = fm.qini_auc_score(y, score, t, negative_effect=negative_effect)
    ref_u = fm.uplift_auc_score(y, score, t)
    for factor in (60.0, 1e-3, 1.0 / y.max()):
        got_q = fm.qini_auc_score(y * factor, score, t, negative_effect=negative_effect)
        np.testing.assert_allclose(got_q, ref_q, rtol=1e-10)
        np.testing.assert_allclose(fm.uplift_auc_score(y * factor, score, t), ref_u, rtol=1e-10)
    x_ref, q_ref = fm.qini_curve(y, score, t)
    x_60, q_60 = fm.qini_curve(60.0 * y, score, t)
    np.testing.assert_array_equal(x_ref, x_60)
    np.testing.assert_allclose(q_60, 60.0 * q_ref, rtol=1e-10)


def test_two_level_labels_use_the_binary_rules():
    # {0, c} labels are binary after division by their max: same scores as {0, 1}
    x, t, y, effect = _binary_rct(7, n=500)
    for c in (5.0, 0.25):
        for ne in (True, False):
            np.testing.assert_allclose(
                fm.qini_auc_score(c * y, effect, t, negative_effect=ne),
                fm.qini_auc_score(y, effect, t, negative_effect=ne),
                rtol=1e-10,
            )
        np.testing.assert_allclose(
            fm.uplift_auc_score(c * y, effect, t), fm.uplift_auc_score(y, effect, t), rtol=1e-10
        )


def test_is_binary():
    assert _is_binary(np.array([0.0, 1.0, 1.0]))
    assert _is_binary(np.array([0, 0]))
    assert not _is_binary(np.array([0.0, 2.0]))
    assert not _is_binary(np.array([0.0, 0.5, 1.0]))


def test_degenerate_labels_give_nan():
    # nothing to gain: the perfect curve has no area above the random line
    assert math.isnan(fm.qini_auc_score([0, 0, 0, 0], [1, 2, 3, 4], [1, 0, 1, 0]))


# --------------------------------------------------------------------------- uplift@k


def test_uplift_at_k_hand():
    # ranked: rows 0..5 (scores descending); k=0.5 -> top 3 rows: t=[1,0,1], y=[1,0,1]
    assert fm.uplift_at_k(Y6, S6, T6, k=0.5) == pytest.approx(1.0)
    # by_group, k=0.5: treated top int(3*0.5)=1 -> y=1; control top 1 -> y=0
    assert fm.uplift_at_k(Y6, S6, T6, k=0.5, strategy="by_group") == pytest.approx(1.0)
    # int k: top 4 -> treated y 1,1; control y 0,1 -> 1 - 0.5
    assert fm.uplift_at_k(Y6, S6, T6, k=4) == pytest.approx(0.5)
    # no control row in the top 1 -> NaN
    assert math.isnan(fm.uplift_at_k(Y6, S6, T6, k=1))


# --------------------------------------------------------------------------- ground truth


def test_pehe_hand():
    # errors 0, 1, 2, 3 -> sqrt((0 + 1 + 4 + 9) / 4) = sqrt(3.5)
    assert fm.pehe([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(math.sqrt(3.5))
    assert fm.pehe([[1.0, 2.0]], [[1.0, 2.0]]) == 0.0


def test_true_uplift_at_k_hand():
    # ranked by uplift: rows 1 (0.9), 2 (0.5), 3 (0.2), 0 (0.1); top half -> tau 1 and 3
    tau = [5.0, 1.0, 3.0, 0.0]
    assert fm.true_uplift_at_k(tau, [0.1, 0.9, 0.5, 0.2], k=0.5) == pytest.approx(2.0)
    assert fm.true_uplift_at_k(tau, [0.1, 0.9, 0.5, 0.2], k=1) == pytest.approx(1.0)


def test_rank_correlation():
    assert fm.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fm.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4]
    r = np.array([1.5, 1.5, 3, 4]) - 2.5
    s = np.array([1, 2, 3, 4]) - 2.5
    expected = float(r @ s / np.sqrt((r @ r) * (s @ s)))
    assert fm.rank_correlation([7, 7, 8, 9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert math.isnan(fm.rank_correlation([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = np.round(rng.normal(size=300), 1), rng.normal(size=300)
    assert fm.rank_correlation(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


# --------------------------------------------------------------------------- per arm


def _multi_dataset(seed: int = 0, n: int = 3000):
    """Arms 0 (control), 1, 2; responses usage (continuous) and views (counts)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    arm = rng.integers(0, 3, n)
    tau = np.empty((n, 2, 2))
    tau[:, 0, 0] = 3.0 * np.maximum(x, 0)  # arm 1 helps usage for x > 0
    tau[:, 0, 1] = 0.5 * np.ones(n)  # arm 1 adds views uniformly
    tau[:, 1, 0] = -1.0 * np.maximum(-x, 0)  # arm 2 hurts usage for x < 0
    tau[:, 1, 1] = 1.0 * np.maximum(-x, 0)  # and adds views there
    base = np.stack([5.0 + x, 2.0 + 0.0 * x], axis=1)
    effect = np.zeros((n, 2))
    for j in (1, 2):
        effect[arm == j] = tau[arm == j, j - 1]
    y = base + effect + rng.normal(scale=0.5, size=(n, 2))
    y[:, 1] = rng.poisson(np.maximum(base[:, 1] + effect[:, 1], 0.0))
    tau_hat = tau + rng.normal(scale=0.3, size=tau.shape)
    return y, arm, tau_hat, tau


def test_per_arm_table_cells_and_rows():
    y, arm, tau_hat, tau = _multi_dataset()
    table = fm.per_arm_table(y, arm, tau_hat, ["t1", "t2"], ["usage", "views"], tau_true=tau)
    assert [(c["treatment"], c["response"]) for c in table] == [
        ("t1", "usage"),
        ("t1", "views"),
        ("t2", "usage"),
        ("t2", "views"),
    ]
    keys = {
        "treatment",
        "response",
        "qini",
        "auuc",
        "lift30",
        "n",
        "pehe",
        "true_lift30",
        "spearman",
    }
    assert all(set(c) == keys for c in table)
    for cell, j, r in zip(table, (1, 1, 2, 2), (0, 1, 0, 1), strict=True):
        rows = (arm == 0) | (arm == j)
        assert cell["n"] == rows.sum()
        t = (arm[rows] == j).astype(int)
        score, truth = tau_hat[rows, j - 1, r], tau[rows, j - 1, r]
        expected = {
            "treatment": f"t{j}",
            "response": ["usage", "views"][r],
            "qini": fm.qini_auc_score(y[rows, r], score, t),
            "auuc": fm.uplift_auc_score(y[rows, r], score, t),
            "lift30": fm.uplift_at_k(y[rows, r], score, t, k=0.3),
            "n": int(rows.sum()),
            "pehe": fm.pehe(score, truth),
            "true_lift30": fm.true_uplift_at_k(truth, score, k=0.3),
            "spearman": fm.rank_correlation(score, truth),
        }
        np.testing.assert_equal(cell, expected)  # NaN == NaN here
    by_cell = {(c["treatment"], c["response"]): c for c in table}
    assert by_cell[("t1", "usage")]["qini"] > 0.1  # heterogeneous, well predicted
    assert by_cell[("t2", "views")]["qini"] > 0.05
    assert by_cell[("t1", "usage")]["spearman"] > 0.8
    assert math.isnan(by_cell[("t1", "views")]["spearman"])  # constant true effect
    assert fm.mean_qini(table) == pytest.approx(np.mean([c["qini"] for c in table]))


def test_per_arm_table_ignores_other_arms_and_accepts_control_first_names():
    y, arm, tau_hat, _ = _multi_dataset(seed=1, n=1200)
    table = fm.per_arm_table(y, arm, tau_hat, ["control", "t1", "t2"], ["usage", "views"])
    assert {c["treatment"] for c in table} == {"t1", "t2"}
    assert "pehe" not in table[0]
    # changing the responses of arm-2 rows leaves the arm-1 cells unchanged
    y2 = y.copy()
    y2[arm == 2] += 100.0
    table2 = fm.per_arm_table(y2, arm, tau_hat, ["t1", "t2"], ["usage", "views"])
    np.testing.assert_equal(table[:2], table2[:2])
    assert table[2]["lift30"] != table2[2]["lift30"]


def test_per_arm_table_validation():
    y, arm, tau_hat, _ = _multi_dataset(n=300)
    names, resp = ["t1", "t2"], ["usage", "views"]
    with pytest.raises(ValueError, match="tau_hat must have shape"):
        fm.per_arm_table(y, arm, tau_hat[:, :, :1], names, resp)
    with pytest.raises(ValueError, match="arm values"):
        fm.per_arm_table(y, np.where(arm == 2, 3, arm), tau_hat, names, resp)
    with pytest.raises(ValueError, match="arms must name"):
        fm.per_arm_table(y, arm, tau_hat, ["t1"], resp)
    with pytest.raises(ValueError, match="responses must name"):
        fm.per_arm_table(y, arm, tau_hat, names, ["usage"])
    with pytest.raises(ValueError, match="tau_true"):
        fm.per_arm_table(y, arm, tau_hat, names, resp, tau_true=tau_hat[:10])
    with pytest.raises(ValueError, match="both control and the treatment"):
        fm.per_arm_table(y, np.where(arm == 1, 2, arm), tau_hat, names, resp)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "y, uplift, treatment, match",
    [
        ([1, 0, 1], [0.1, 0.2], [1, 0, 1], "same length"),
        ([[1, 0], [0, 1]], [0.1, 0.2], [1, 0], "1-D"),
        ([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 0], "treatment must be binary"),
        ([1, 0, 1], [0.1, 0.2, 0.3], [1, 1, 1], "both groups"),
        ([1, 0, 1], [0.1, np.nan, 0.3], [1, 0, 1], "finite"),
        ([1, np.inf, 1], [0.1, 0.2, 0.3], [1, 0, 1], "finite"),
        (["a", "b", "c"], [0.1, 0.2, 0.3], [1, 0, 1], "numeric"),
    ],
)
def test_input_validation(y, uplift, treatment, match):
    for fn in (fm.qini_curve, fm.uplift_curve, fm.qini_auc_score, fm.uplift_auc_score):
        with pytest.raises(ValueError, match=match):
            fn(y, uplift, treatment)
    with pytest.raises(ValueError, match=match):
        fm.uplift_at_k(y, uplift, treatment, k=0.5)


def test_argument_validation():
    with pytest.raises(ValueError, match="same length"):
        fm.perfect_qini_curve([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="both groups"):
        fm.perfect_uplift_curve([1, 0, 1], [0, 0, 0])
    with pytest.raises(TypeError, match="negative_effect"):
        fm.qini_auc_score(Y6, S6, T6, negative_effect=1)
    with pytest.raises(ValueError, match="strategy"):
        fm.uplift_at_k(Y6, S6, T6, strategy="top")
    for bad_k in (0.0, 1.0, 1.5, 0, 6, True, "0.3"):
        with pytest.raises(ValueError, match="k"):
            fm.uplift_at_k(Y6, S6, T6, k=bad_k)
    with pytest.raises(ValueError, match="more than"):
        fm.uplift_at_k(Y6, S6, T6, k=4, strategy="by_group")
    with pytest.raises(ValueError, match="same shape"):
        fm.pehe([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        fm.pehe([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        fm.rank_correlation([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="same length"):
        fm.true_uplift_at_k([1, 2, 3], [1, 2], k=0.5)


# --------------------------------------------------------------------------- plots


def test_plots_return_figures(tmp_path):
    from matplotlib.figure import Figure

    _, t, y, effect = _binary_rct(8, n=400)
    curves = {"oracle-ish": fm.qini_curve(y, effect, t), "reversed": fm.qini_curve(y, -effect, t)}
    fig = fm.plot_qini_curves(curves, perfect=fm.perfect_qini_curve(y, t), title="Qini")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "random" in labels and "perfect" in labels and "reversed" in labels
    assert labels.count("random") == 1  # the curves share their end point
    fig.savefig(tmp_path / "qini.png")
    assert (tmp_path / "qini.png").stat().st_size > 0

    fig = fm.plot_uplift_curves({"m": fm.uplift_curve(y, effect, t)})
    assert isinstance(fig, Figure)
    assert ax is not fig.axes[0]
    with pytest.raises(ValueError, match="nothing to plot"):
        fm.plot_qini_curves({})

    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # no pyplot state


def test_curve_points():
    x = np.arange(1001, dtype=float)
    y = np.sqrt(x)
    pts = fm.curve_points(x, y, max_points=200)
    assert 2 <= len(pts) <= 200
    assert pts[0] == {"x": 0.0, "y": 0.0}
    assert pts[-1] == {"x": 1000.0, "y": pytest.approx(math.sqrt(1000.0))}
    assert all(isinstance(p["x"], float) and isinstance(p["y"], float) for p in pts)
    xs = [p["x"] for p in pts]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    short = fm.curve_points([0, 1, 2], [0, 5, 3])
    assert short == [{"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 5.0}, {"x": 2.0, "y": 3.0}]
    assert len(fm.curve_points(x, y, max_points=2)) == 2
    with pytest.raises(ValueError, match="max_points"):
        fm.curve_points(x, y, max_points=1)
    with pytest.raises(ValueError, match="equal length"):
        fm.curve_points([0, 1], [0])
