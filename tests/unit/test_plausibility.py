"""The publish stage's plausibility checks on δ (pure numpy)."""

import numpy as np

from fulcrum.plausibility import (
    out_of_bounds,
    outlier_share,
    plausibility_problems,
    reference_range,
)


def test_bounds_refuse_impossible_and_huge_relative_effects():
    assert out_of_bounds(np.array([0.01, -0.5, 9.9]), 10) == 0
    assert out_of_bounds(np.array([-1.0, -1.5, 10.1, 9.5e14, 0.0]), 10) == 4


def test_outlier_share_against_the_reference_range():
    rng = np.random.default_rng(0)
    ref = rng.normal(0.02, 0.03, 50_000)
    lo, hi = reference_range(ref, margin=3.0)
    assert lo < ref.min() + 0.2 and hi > ref.max() - 0.2 and lo < 0.02 < hi
    same = rng.normal(0.02, 0.03, 100_000)
    assert outlier_share(same, lo, hi) < 0.001  # a new day from the same model
    moved = rng.normal(0.04, 0.04, 100_000)  # a new model: wider and shifted, still plausible
    assert outlier_share(moved, lo, hi) < 0.01
    broken = same.copy()
    broken[:5000] = 2.0
    assert outlier_share(broken, lo, hi) == 0.05


def test_problems_name_the_column_and_the_setting():
    ref = {"delta__t1__views": np.linspace(-0.05, 0.05, 1001)}
    ok = {"delta__t1__views": np.linspace(-0.04, 0.06, 500)}
    assert plausibility_problems(ok, 10, ref) == []
    bad = {"delta__t1__views": np.r_[np.zeros(90), np.full(10, 5.0)]}
    (msg,) = plausibility_problems(bad, 10, ref)
    assert msg.startswith("delta__t1__views: 10.0% of rows") and "publish.max_outlier_share" in msg
    (msg,) = plausibility_problems({"delta__t2__time": np.array([0.0, 1e15])}, 10)
    assert "1 rows outside" in msg and "publish.max_abs_delta" in msg
    assert plausibility_problems(bad, 10, None) == []  # no previous publication: bounds only
