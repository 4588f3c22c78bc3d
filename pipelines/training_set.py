"""The training set: one row per experiment user with the features known at assignment.

``build_training_frame`` is the single place the training input is built. It joins
each user's latest feature snapshot with ``event_timestamp <= assignment_ts``
(point-in-time, so post-assignment snapshots that carry the treatment never leak in).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fulcrum import schema as S

SPLITS = ("train", "valid", "test")


def build_training_frame(rct_dir: Path, manifest: S.Manifest | None = None) -> pd.DataFrame:
    """user_id, assignment_ts, arm, arm_index, responses..., features... (one row per user)."""
    man = manifest or S.Manifest.read(rct_dir)
    exp = pq.read_table(
        rct_dir / S.EXPERIMENT_FILE, columns=[S.USER_ID, S.ASSIGN_TS, S.ARM, S.ARM_INDEX, *man.responses]
    ).to_pandas()
    feat_cols = [f.name for f in man.features]
    feats = pq.read_table(rct_dir / S.FEATURES_FILE, columns=[S.USER_ID, S.EVENT_TS, *feat_cols]).to_pandas()
    feats = feats.sort_values(S.EVENT_TS, kind="stable")
    left = exp.sort_values(S.ASSIGN_TS, kind="stable")
    df = pd.merge_asof(
        left, feats, left_on=S.ASSIGN_TS, right_on=S.EVENT_TS, by=S.USER_ID, direction="backward",
        allow_exact_matches=True,
    )
    return df.sort_values(S.USER_ID, kind="stable").reset_index(drop=True)


def split_users(user_id: np.ndarray, ratios: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split label per user (0 train, 1 valid, 2 test), stable for a user across runs and days."""
    h = pd.util.hash_array(np.asarray(user_id, dtype=np.int64) ^ np.int64(seed), categorize=False)
    u = (h % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
    cuts = np.cumsum(ratios)[:-1]
    return np.searchsorted(cuts, u, side="right").astype(np.int8)
