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


def test_a_training_set_without_any_snapshot_stops_with_the_reason(tmp_path):
    """Found by probing: every snapshot after its assignment gave NaN ages, invalid JSON and a model trained on
    no features that still finished rc 0."""
    import pyarrow.parquet as pq
    import pytest
    from helpers_data import feast_config

    from pipelines.training_set import TrainingSetError, run_training_set

    cfg = feast_config()
    rct = cfg.paths.rct_dir(tmp_path)
    rct.mkdir(parents=True)
    man = simulate_to(SimulatorSource(n_users=500, feature_days=2, experiment_days=2), rct)
    man.write(rct)
    feats = pq.read_table(rct / S.FEATURES_FILE).to_pandas()
    feats[S.EVENT_TS] = feats[S.EVENT_TS] + pd.Timedelta(days=30)
    feats.to_parquet(rct / S.FEATURES_FILE, index=False)
    with pytest.raises(TrainingSetError, match="no user of the experiment has a feature snapshot"):
        run_training_set(cfg, tmp_path)
    assert not (cfg.paths.training_set_dir(tmp_path)).exists() or not any(cfg.paths.training_set_dir(tmp_path).iterdir())
