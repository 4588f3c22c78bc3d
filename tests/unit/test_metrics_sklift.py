"""fulcrum.metrics agrees exactly with scikit-uplift on binary responses."""

from __future__ import annotations

import numpy as np
import pytest
import sklift.metrics as sk  # noqa: E402  (a declared dependency: must run, never skip)

import fulcrum.metrics as fm  # noqa: E402

# sklift calls sklearn's deprecated stable_cumsum
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

EXACT = {"rtol": 1e-12, "atol": 1e-12}

# (seed, n rows, treated share, score rounding: few decimals -> many ties)
CASES = [
    (0, 50, 0.5, 0),
    (1, 137, 0.2, 1),
    (2, 600, 0.8, 1),
    (3, 1000, 0.35, 2),
    (4, 2500, 0.1, 1),
    (5, 5000, 0.65, 2),
]


def _dataset(seed: int, n: int, share: float, decimals: int):
    """Binary RCT rows with a positive planted effect and a noisy, tied score."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = (rng.random(n) < share).astype(np.int64)
    effect = 0.25 / (1.0 + np.exp(-2.0 * x))  # in (0, 0.25), increasing in x
    p = 0.2 + 0.1 * np.tanh(x) + effect * t
    y = (rng.random(n) < p).astype(np.int64)
    uplift = np.round(effect + rng.normal(scale=0.1, size=n), decimals)
    # preconditions of sklift (both label values, positive total gain) and of the tests
    assert 0 < t.sum() < n and 0 < y.sum() < n
    assert y[t == 1].mean() > y[t == 0].mean()
    assert np.unique(uplift).size < n  # there are ties
    return y, uplift, t


@pytest.fixture(params=CASES, ids=lambda c: f"seed{c[0]}-n{c[1]}-share{c[2]}")
def data(request):
    return _dataset(*request.param)


@pytest.mark.parametrize("negative_effect", [True, False])
def test_qini_auc_score(data, negative_effect):
    y, u, t = data
    np.testing.assert_allclose(
        fm.qini_auc_score(y, u, t, negative_effect=negative_effect),
        sk.qini_auc_score(y, u, t, negative_effect=negative_effect),
        **EXACT,
    )


def test_uplift_auc_score(data):
    y, u, t = data
    np.testing.assert_allclose(fm.uplift_auc_score(y, u, t), sk.uplift_auc_score(y, u, t), **EXACT)


@pytest.mark.parametrize("strategy", ["overall", "by_group"])
@pytest.mark.parametrize("k", [0.3, 0.5, 20])
def test_uplift_at_k(data, strategy, k):
    y, u, t = data
    np.testing.assert_allclose(
        fm.uplift_at_k(y, u, t, k=k, strategy=strategy),
        sk.uplift_at_k(y, u, t, strategy=strategy, k=k),
        **EXACT,
    )


def _same_curve(ours, theirs):
    assert ours[0].shape == np.asarray(theirs[0]).shape
    np.testing.assert_allclose(ours[0], theirs[0], **EXACT)
    np.testing.assert_allclose(ours[1], theirs[1], **EXACT)


def test_qini_curve(data):
    y, u, t = data
    _same_curve(fm.qini_curve(y, u, t), sk.qini_curve(y, u, t))


def test_uplift_curve(data):
    y, u, t = data
    _same_curve(fm.uplift_curve(y, u, t), sk.uplift_curve(y, u, t))


@pytest.mark.parametrize("negative_effect", [True, False])
def test_perfect_qini_curve(data, negative_effect):
    y, _, t = data
    _same_curve(
        fm.perfect_qini_curve(y, t, negative_effect=negative_effect),
        sk.perfect_qini_curve(y, t, negative_effect=negative_effect),
    )


def test_perfect_uplift_curve(data):
    y, _, t = data
    _same_curve(fm.perfect_uplift_curve(y, t), sk.perfect_uplift_curve(y, t))


@pytest.mark.parametrize("more_control_responders", [True, False])
def test_perfect_uplift_curve_both_branches(more_control_responders):
    """scikit-uplift's perfect uplift rule depends on control responders vs treated non-responders."""
    rng = np.random.default_rng(11)
    n = 400
    t = (rng.random(n) < 0.5).astype(np.int64)
    # mostly-responding data: few treated non-responders; rare responses: the reverse
    p = np.where(t == 1, 0.9, 0.7) if more_control_responders else np.where(t == 1, 0.2, 0.1)
    y = (rng.random(n) < p).astype(np.int64)
    control_responders = np.sum((y == 1) & (t == 0))
    treated_non_responders = np.sum((y == 0) & (t == 1))
    assert (control_responders > treated_non_responders) == more_control_responders
    _same_curve(fm.perfect_uplift_curve(y, t), sk.perfect_uplift_curve(y, t))
    u = rng.normal(size=n)
    np.testing.assert_allclose(fm.uplift_auc_score(y, u, t), sk.uplift_auc_score(y, u, t), **EXACT)


def test_float_and_bool_inputs_agree(data):
    y, u, t = data
    ours = fm.qini_auc_score(y.astype(float), u, t.astype(bool))
    np.testing.assert_allclose(ours, sk.qini_auc_score(y, u, t), **EXACT)
