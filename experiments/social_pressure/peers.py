"""Established peers: causalml's S-, T- and X-learner with LightGBM base learners.

One causalml meta-learner per response, fitted on all arms at once (causalml handles
several treatment groups: each treatment against control). Binary responses use the
classifier variants (``BaseSClassifier`` / ``BaseTClassifier`` / ``BaseXClassifier``:
outcome models are LightGBM classifiers, effects are differences of probabilities; the
X-learner's second-stage effect models are LightGBM regressors), other responses the
regressor variants. The X-learner weights its two effect models with the propensity of
the treatment within control ∪ that treatment; in an RCT that is known, so it is passed
as the arm share on the training rows instead of being estimated.

Inputs are the field buckets the networks see (``prep.x`` without offsets), as for the
project's GBM baselines. The score is the absolute effect τ̂ = P(y | arm k) − P(y | control)
(response units for regressors), shape (n, K, R).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import numpy as np

PEERS = ("lgbm_s_learner", "lgbm_t_learner", "lgbm_x_learner")


def causalml_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("causalml")
    except Exception:  # not installed
        return None


def is_binary(y: np.ndarray) -> bool:
    return bool(np.isin(np.unique(y), (0.0, 1.0)).all())


class CausalMLPeer:
    """``kind`` is "s", "t" or "x"; ``lgbm`` the LightGBM settings (a mapping)."""

    def __init__(self, kind: str, lgbm: dict, seed: int = 0):
        if kind not in ("s", "t", "x"):
            raise ValueError(f"kind must be 's', 't' or 'x', got {kind!r}")
        self.kind, self.lgbm, self.seed = kind, dict(lgbm), seed

    @classmethod
    def from_name(cls, name: str, lgbm: dict, seed: int = 0) -> CausalMLPeer:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
        return cls(name.split("_")[1], lgbm, seed)

    def _base(self, classifier: bool):
        from lightgbm import LGBMClassifier, LGBMRegressor

        p = self.lgbm
        cls = LGBMClassifier if classifier else LGBMRegressor
        return cls(
            n_estimators=p["n_estimators"], learning_rate=p["learning_rate"], num_leaves=p["num_leaves"],
            min_child_samples=p["min_child_samples"], subsample=p["subsample"], subsample_freq=1,
            colsample_bytree=p["colsample_bytree"], n_jobs=p["n_jobs"], random_state=self.seed, verbose=-1,
        )

    def _learner(self, binary: bool):
        from causalml.inference import meta

        if self.kind == "x":
            if binary:
                return meta.BaseXClassifier(outcome_learner=self._base(True), effect_learner=self._base(False),
                                            control_name=0)
            return meta.BaseXRegressor(learner=self._base(False), control_name=0)
        if self.kind == "s":
            cls = meta.BaseSClassifier if binary else meta.BaseSRegressor
        else:
            cls = meta.BaseTClassifier if binary else meta.BaseTRegressor
        return cls(learner=self._base(binary), control_name=0)

    def _propensity(self, n: int) -> dict[int, np.ndarray]:
        return {k: np.full(n, p) for k, p in self.propensity_.items()}

    def fit(self, x: np.ndarray, arm: np.ndarray, y: np.ndarray) -> CausalMLPeer:
        """x (n, f) features, arm (n,) in 0..K (0 = control), y (n, R) raw responses."""
        arm = np.asarray(arm, dtype=np.int64)
        y = np.asarray(y, dtype=np.float64).reshape(len(arm), -1)
        self.n_treatments_ = int(arm.max())
        counts = np.bincount(arm, minlength=self.n_treatments_ + 1)
        # P(arm k | control ∪ arm k): the RCT's assignment probability, as drawn.
        self.propensity_ = {k: counts[k] / (counts[k] + counts[0]) for k in range(1, self.n_treatments_ + 1)}
        self.models_ = []
        x = np.asarray(x, dtype=np.float64)
        for r in range(y.shape[1]):
            with _quiet():  # importing causalml imports shap, which warns
                learner = self._learner(is_binary(y[:, r]))
                if self.kind == "x":
                    learner.fit(X=x, treatment=arm, y=y[:, r], p=self._propensity(len(arm)))
                else:
                    learner.fit(X=x, treatment=arm, y=y[:, r])
            self.models_.append(learner)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """τ̂ (n, K, R): absolute effect of each treatment on each response."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty((len(x), self.n_treatments_, len(self.models_)))
        for r, learner in enumerate(self.models_):
            with _quiet():
                if self.kind == "x":
                    te = learner.predict(X=x, p=self._propensity(len(x)))
                else:
                    te = learner.predict(X=x)
            groups = [int(g) for g in learner.t_groups]
            if groups != list(range(1, self.n_treatments_ + 1)):
                raise RuntimeError(f"causalml returned treatment groups {groups}")
            out[:, :, r] = np.asarray(te).reshape(len(x), -1)
        return out


@contextmanager
def _quiet():
    """Silence causalml's progress logs and LightGBM / scikit-learn warnings."""
    logger = logging.getLogger("causalml")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
