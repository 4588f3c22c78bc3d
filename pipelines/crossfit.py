"""Cross-fitting: every user scored by a model that never saw them, so the metrics can use all users.

Users go into ``folds`` folds by a seeded hash of their id (stable across runs and days, like
the train / valid / test split). For fold k a model is trained on the other folds, with a
validation share of them held out for early stopping, and scores fold k. The out-of-fold δ
of all users then feed the same metrics as a test split, on ``folds``× as many users.
Repeating with other fold seeds (and model seeds) measures how much the verdict depends on
the split, which a single split cannot show.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fulcrum import schema as S
from pipelines.training_set import Prepared

TRAIN, VALID, SCORED = 0, 1, 2  # split codes of a fold's model (SCORED is the Prepared "test" part)


def _unit_hash(user_id: np.ndarray, seed: int) -> np.ndarray:
    """(n,) floats in [0, 1) from a seeded hash of each user id."""
    h = pd.util.hash_array(np.asarray(user_id, dtype=np.int64) ^ np.int64(seed), categorize=False)
    return (h % np.uint64(1_000_003)).astype(np.float64) / 1_000_003


def fold_of(user_id: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n,) fold index in [0, folds) per user, by a seeded hash (the same user, the same fold)."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    return np.minimum((_unit_hash(user_id, seed) * folds).astype(np.int64), folds - 1)


def fold_splits(user_id: np.ndarray, folds: int, seed: int, valid_share: float) -> list[np.ndarray]:
    """One split per fold: fold k is SCORED; of the others, ``valid_share`` VALID (early stopping), the rest TRAIN."""
    fold = fold_of(user_id, folds, seed)
    valid = _unit_hash(user_id, seed + 7919) < valid_share  # another hash: independent of the fold
    return [np.where(fold == k, SCORED, np.where(valid, VALID, TRAIN)).astype(np.int8) for k in range(folds)]


def out_of_fold(prep: Prepared, fit_predict, folds: int, seed: int, valid_share: float,
                model_seed: int) -> np.ndarray:
    """(n, K, R) δ of every user from the fold model that did not see them.

    ``fit_predict(prep_k, model_seed)`` trains on ``prep_k``'s train rows (stopping on its valid
    rows) and returns δ for its test rows, in row order.
    """
    user_id = prep.frame[S.USER_ID].to_numpy()
    out = None
    for split in fold_splits(user_id, folds, seed, valid_share):
        part = prep.with_split(split)
        delta = fit_predict(part, model_seed)
        if out is None:
            out = np.full((len(user_id), *delta.shape[1:]), np.nan)
        out[split == SCORED] = delta
    return out
