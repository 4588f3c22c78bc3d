"""Cross-fitting never scores a user with a model that saw them, and scores every user once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fulcrum import schema as S
from pipelines.crossfit import SCORED, TRAIN, VALID, fold_of, fold_splits, member_split, out_of_fold


class _Prep:
    """What out_of_fold reads of a Prepared: the users and ``with_split`` (the real one is tested below)."""

    def __init__(self, users: np.ndarray, split: np.ndarray | None = None):
        self.frame = pd.DataFrame({S.USER_ID: users})
        self.split = np.zeros(len(users), np.int8) if split is None else split

    def with_split(self, split):
        return _Prep(self.frame[S.USER_ID].to_numpy(), split)

    def rows(self, part: str) -> np.ndarray:
        return self.split == {"train": TRAIN, "valid": VALID, "test": SCORED}[part]


def test_folds_are_stable_balanced_and_seeded():
    users = np.arange(10_000, 40_000)
    a, b = fold_of(users, 5, 3), fold_of(users, 5, 3)
    assert (a == b).all() and set(a) == set(range(5))
    assert np.bincount(a).min() > 0.18 * len(users)  # ~20 % each
    assert (fold_of(users, 5, 4) != a).mean() > 0.7  # another seed, another assignment
    assert (fold_of(users[::-1], 5, 3) == a[::-1]).all()  # by user, not by row order
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_of(users, 1, 0)


def test_member_split_deals_train_and_valid_again_and_keeps_the_test_users():
    rng = np.random.default_rng(1)
    users = rng.choice(10**9, 40_000, replace=False)
    split = rng.choice([TRAIN, VALID, SCORED], len(users), p=[0.7, 0.15, 0.15]).astype(np.int8)
    a, b = member_split(split, users, 1005), member_split(split, users, 1005)
    assert (a == b).all()  # seeded: the same member, the same users
    assert (a[split == SCORED] == SCORED).all() and (a[split != SCORED] != SCORED).all()
    pool = split != SCORED
    assert (a == VALID).sum() / pool.sum() == pytest.approx((split == VALID).sum() / pool.sum(), abs=0.01)
    # Another member's seed, other validation users: about the share expected of independent draws overlap.
    c = member_split(split, users, 2005)
    assert ((a == VALID) & (c == VALID)).sum() / (a == VALID).sum() == pytest.approx(0.15 / 0.85, abs=0.02)
    assert ((a == VALID) & (split == VALID)).sum() / (a == VALID).sum() == pytest.approx(0.15 / 0.85, abs=0.02)
    # By user, not by row order.
    assert (member_split(split[::-1], users[::-1], 1005) == a[::-1]).all()
    # Nothing to deal: a refit on everyone (no validation users) or no training users.
    for only in (np.where(split == VALID, TRAIN, split), np.where(split == TRAIN, VALID, split)):
        assert (member_split(only.astype(np.int8), users, 1005) == only).all()


def test_each_user_is_scored_once_by_a_model_that_never_saw_them():
    users = np.random.default_rng(0).choice(10**9, 5000, replace=False)
    splits = fold_splits(users, 4, seed=11, valid_share=0.2)
    assert ((np.stack(splits) == SCORED).sum(0) == 1).all()  # scored in exactly one fold
    seen_by: list[set] = []

    def fit_predict(part, model_seed):
        trained_on = set(part.frame[S.USER_ID].to_numpy()[part.rows("train") | part.rows("valid")])
        scored = part.frame[S.USER_ID].to_numpy()[part.rows("test")]
        seen_by.append(trained_on)
        assert not trained_on & set(scored)  # the property itself
        return np.full((len(scored), 2, 1), float(len(seen_by)))  # δ = the fold model's number

    oof = out_of_fold(_Prep(users), fit_predict, 4, seed=11, valid_share=0.2, model_seed=1)
    assert oof.shape == (5000, 2, 1) and np.isfinite(oof).all()
    fold = fold_of(users, 4, 11)
    assert (oof[:, 0, 0] == fold + 1).all()  # each user's δ came from their own fold's model
    for k, trained in enumerate(seen_by):  # and that model trained on every other fold's users
        assert trained == set(users[fold != k])
    share_valid = np.mean([(s == VALID).sum() / (s != SCORED).sum() for s in splits])
    assert share_valid == pytest.approx(0.2, abs=0.02)


def test_prepared_with_split_keeps_the_data_and_changes_only_the_split():
    from pipelines.training_set import Prepared

    class _Enc:
        def transform(self, frame):
            return frame[["f"]].to_numpy(np.int64)

    frame = pd.DataFrame({S.USER_ID: [1, 2, 3], S.ARM_INDEX: [0, 1, 0], "f": [4, 5, 6], "y": [1.0, 2.0, 3.0]})
    man = S.Manifest(source="logs", arms=["control", "t1"], responses=["y"], features=[], n_users=3,
                     n_experiment_rows=3, n_feature_rows=3, first_snapshot="2026-11-01", last_snapshot="2026-11-01")
    prep = Prepared(frame, man, np.array([0, 1, 2], np.int8), _Enc(), None)
    other = prep.with_split(np.array([2, 2, 0]))
    assert other.rows("test").tolist() == [True, True, False] and prep.rows("test").tolist() == [False, False, True]
    assert other.x is prep.x and other.y is prep.y  # nothing re-encoded
    with pytest.raises(ValueError, match="split has 2 rows"):
        prep.with_split(np.array([0, 1]))
