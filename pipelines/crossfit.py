"""Cross-fitting: every user scored by a model that never saw them, so the metrics can use all users.

Users go into ``folds`` folds by a seeded hash of their id (stable across runs and days, like
the train / valid / test split). For fold k a model is trained on the other folds, with a
validation share of them held out for early stopping, and scores fold k. The out-of-fold δ
of all users then feed the same metrics as a test split, on ``folds``× as many users.
Repeating with other fold seeds (and model seeds) measures how much the verdict depends on
the split, which a single split cannot show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fulcrum import schema as S
from fulcrum.errors import StageError
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


def member_split(split: np.ndarray, user_id: np.ndarray, seed: int) -> np.ndarray:
    """``split`` with its TRAIN and VALID users dealt again by a hash seeded with ``seed``, at the same
    validation share; SCORED (test) users stay. An ensemble member fit on it sees other training users and
    stops on other validation users than its siblings (``train.member_valid: own``)."""
    split = np.asarray(split, dtype=np.int8)
    pool = split != SCORED
    n_valid, n_pool = int((split == VALID).sum()), int(pool.sum())
    if n_valid == 0 or n_valid == n_pool:
        return split.copy()  # nothing to deal: no validation rows (a refit on everyone), or no training rows
    valid = _unit_hash(user_id, seed + 15_485_863) < n_valid / n_pool
    return np.where(pool, np.where(valid, VALID, TRAIN), split).astype(np.int8)


def calibration_split(user_id: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(n,) 1 for the ``share`` of users a cross-fitted policy is calibrated on, 2 for those it is valued on."""
    return np.where(_unit_hash(user_id, seed + 104_729) < share, 1, 2).astype(np.int8)


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


def fold_valid_share(split: tuple[float, float, float]) -> float:
    """The validation share of a fold model's training users: train.split's valid / (train + valid)."""
    return split[1] / (split[0] + split[1])


def fold_seed(seed: int, repeat: int) -> int:
    """The fold assignment of repeat ``repeat`` under base seed ``seed`` (distinct across both)."""
    return 1_000 * int(seed) + int(repeat)


CROSSFIT_FILE = "crossfit.npz"


@dataclass
class CrossFit:
    """Out-of-fold expected outcomes of every user, per repeat, and how the fold models trained."""

    user_id: np.ndarray       # (n,) int64, the training frame's row order
    mu: np.ndarray            # (repeats, n, K+1, R) float32, each user's ŷ from a model that never saw them
    folds: int
    fold_seeds: list[int]
    model_seeds: list[int]
    best_epochs: np.ndarray   # (repeats, folds) int, each fold model's chosen epoch (0-based)
    lr: np.ndarray            # (repeats * folds, epochs) learning rate used in each epoch (nan after a stop)
    val: np.ndarray           # (repeats, folds, 2) each fold model's validation loss and QINI at its chosen epoch
    other_user_id: np.ndarray  # (m,) combined-arm users: no model trains on them
    other_mu: np.ndarray       # (repeats, m, K+1, R) their ŷ from their own fold's model

    def lookup(self, user_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n, K+1, R) each user's ŷ averaged over the repeats, (n,) found) for any experiment users."""
        ids = np.concatenate([self.user_id, self.other_user_id])
        mu = np.concatenate([self.mu.mean(0), self.other_mu.mean(0)]).astype(np.float64)
        order = np.argsort(ids, kind="stable")
        pos = np.clip(np.searchsorted(ids, user_id, sorter=order), 0, max(len(order) - 1, 0))
        found = ids[order[pos]] == user_id if len(ids) else np.zeros(len(user_id), bool)
        out = np.full((len(user_id), *mu.shape[1:]), np.nan)
        out[found] = mu[order[pos[found]]]
        return out, found

    @property
    def delta_runs(self) -> np.ndarray:
        """(repeats, n, K, R) relative δ = ŷ_k / ŷ_0 − 1 of each repeat."""
        return self.mu[:, :, 1:] / self.mu[:, :, :1] - 1

    def final_schedule(self, max_epochs: int) -> tuple[int, tuple[float, ...]]:
        """Epochs and per-epoch learning rate for the model fit on every user: the fold models' medians.

        The epoch count is the median chosen epoch + 1 (at most ``max_epochs``); the learning
        rate of each epoch is the median over the fold models that ran it.
        """
        epochs = int(min(max_epochs, max(1, round(float(np.median(self.best_epochs + 1))))))
        schedule = []
        for e in range(epochs):
            ran = self.lr[:, e] if e < self.lr.shape[1] else np.array([np.nan])
            ran = ran[np.isfinite(ran)]
            schedule.append(float(np.median(ran)) if len(ran) else schedule[-1])
        return epochs, tuple(schedule)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, user_id=self.user_id, mu=self.mu, folds=self.folds, fold_seeds=self.fold_seeds,
                 model_seeds=self.model_seeds, best_epochs=self.best_epochs, lr=self.lr, val=self.val,
                 other_user_id=self.other_user_id, other_mu=self.other_mu)
        os.replace(tmp, path)

    @classmethod
    def from_dir(cls, model_dir: Path) -> CrossFit:
        """The out-of-fold predictions a cross-fitted model's stage wrote beside its checkpoint."""
        path = model_dir / CROSSFIT_FILE
        if not path.exists():
            raise StageError(f"{path} not found: the model was cross-fitted but its out-of-fold predictions are "
                             "missing; rerun its training stage")
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> CrossFit:
        with np.load(path) as f:
            return cls(f["user_id"], f["mu"], int(f["folds"]), f["fold_seeds"].tolist(), f["model_seeds"].tolist(),
                       f["best_epochs"], f["lr"], f["val"], f["other_user_id"], f["other_mu"])

    def check_users(self, user_id: np.ndarray, what: str) -> None:
        """The out-of-fold rows must be ``what``'s users in the same order, or nothing lines up."""
        if len(user_id) != len(self.user_id) or not np.array_equal(np.asarray(user_id), self.user_id):
            raise StageError(f"the cross-fitted predictions are for {len(self.user_id):,} other users than "
                             f"{what}'s {len(user_id):,}: retrain (fulcrum train) on the current data")


def check_folds(prep: Prepared, folds: int, seeds: list[int], minimum: int) -> None:
    """Every arm needs ``minimum`` users in every fold of every assignment: else StageError naming them."""
    user_id = prep.frame[S.USER_ID].to_numpy()
    short = []
    for seed in seeds:
        fold = fold_of(user_id, folds, seed)
        for k in range(folds):
            counts = prep.arm_counts(fold == k)
            short += [f"fold {k}/{arm}: {int(n)}" for arm, n in zip(prep.manifest.arms, counts, strict=True)
                      if n < minimum]
    if short:
        raise StageError(f"too few users to cross-fit ({len(user_id):,} users, {folds} folds): each arm needs at "
                         f"least {minimum} users in each fold, found " + ", ".join(sorted(set(short))[:8])
                         + " (fewer evaluate.folds, more users, or evaluate.protocol: holdout)")


# --------------------------------------------------------------------------- intervals


def cell_qini(y: np.ndarray, arm: np.ndarray, delta: np.ndarray, n_treatments: int, n_responses: int,
              idx: np.ndarray | None = None) -> np.ndarray:
    """(K*R,) normalized QINI per (treatment, response) cell on rows ``idx`` (all rows by default)."""
    from fulcrum.metrics import qini_auc_score

    idx = np.arange(len(y)) if idx is None else idx
    out = []
    for k in range(1, n_treatments + 1):
        rows = idx[(arm[idx] == 0) | (arm[idx] == k)]
        t = (arm[rows] == k).astype(int)
        out += [qini_auc_score(y[rows, r], delta[rows, k - 1, r], t) for r in range(n_responses)]
    return np.asarray(out)


def qini_intervals(y: np.ndarray, arm: np.ndarray, delta_runs: np.ndarray, n_boot: int, seed: int,
                   z: float = 1.96) -> dict[str, np.ndarray]:
    """QINI per cell of the run-averaged δ with an interval that covers the users and the runs.

    ``delta_runs`` (runs, n, K, R): one δ per run (a fold assignment with its model seed, or a
    single model). The standard error is the bootstrap over users of the averaged δ's QINI,
    widened by the spread between runs (std / √runs): the part of the verdict that depends on
    the split and the seed, which a bootstrap over one split's test users cannot show.
    Returns point, se, lo, hi (each (K*R,)) and per_run (runs, K*R).
    """
    runs, _, n_t, n_r = delta_runs.shape
    mean = delta_runs.mean(0)
    point = cell_qini(y, arm, mean, n_t, n_r)
    rng = np.random.default_rng(seed)
    boots = np.stack([cell_qini(y, arm, mean, n_t, n_r, rng.integers(0, len(y), len(y))) for _ in range(n_boot)])
    per_run = np.stack([cell_qini(y, arm, d, n_t, n_r) for d in delta_runs])
    between = per_run.std(axis=0, ddof=1) / np.sqrt(runs) if runs > 1 else np.zeros_like(point)
    se = np.sqrt(boots.std(axis=0, ddof=1) ** 2 + between**2)
    return {"point": point, "se": se, "lo": point - z * se, "hi": point + z * se, "per_run": per_run}
