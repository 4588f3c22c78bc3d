"""The training frame: point-in-time features and a stable user split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fulcrum import schema as S
from fulcrum.config import SimulatorSource
from pipelines.sources.simulator import simulate_to
from pipelines.training_set import build_training_frame, split_users


def test_features_come_from_the_last_snapshot_before_assignment(tmp_path):
    man = simulate_to(SimulatorSource(n_users=3000, feature_days=2, experiment_days=4), tmp_path)
    man.write(tmp_path)
    df = build_training_frame(tmp_path)
    assert len(df) == 3000 and df[S.USER_ID].is_unique
    assert (df[S.EVENT_TS] <= df[S.ASSIGN_TS]).all()
    # Snapshots are daily at 23:59:59: the right one is the previous day's.
    expected = df[S.ASSIGN_TS].dt.normalize() - pd.Timedelta(seconds=1)
    assert (df[S.EVENT_TS] == expected).all()
    # And its values are that snapshot's, not a later (treatment-contaminated) one.
    feats = pd.read_parquet(tmp_path / S.FEATURES_FILE)
    merged = df[[S.USER_ID, S.EVENT_TS, "usage_time_7d"]].merge(feats, on=[S.USER_ID, S.EVENT_TS], suffixes=("", "_src"))
    assert len(merged) == 3000 and np.allclose(merged["usage_time_7d"], merged["usage_time_7d_src"])
    later = feats.merge(df[[S.USER_ID, S.ASSIGN_TS]], on=S.USER_ID)
    later = later[later[S.EVENT_TS] > later[S.ASSIGN_TS]]
    assert len(later) > 0  # later snapshots exist and were not used


def test_user_split_is_stable_and_follows_the_ratios():
    users = np.arange(1, 100_001)
    a = split_users(users, (0.7, 0.15, 0.15), seed=7)
    assert (a == split_users(users[::-1], (0.7, 0.15, 0.15), seed=7)[::-1]).all()  # order-free
    shares = np.bincount(a) / len(a)
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.01)
    assert (a != split_users(users, (0.7, 0.15, 0.15), seed=8)).mean() > 0.3
