"""The classical choice: gradient-boosting meta-learners from scikit-uplift.

For every treatment k and response r, scikit-uplift's ``SoloModel`` (S-learner) or
``TwoModels`` (T-learner) wraps scikit-learn's ``HistGradientBoostingRegressor`` on
the rows of control ∪ arm k. Inputs are the same field buckets the networks see
(categorical fields flagged as categorical). δ = ŷ_k / ŷ_0 − 1 with ŷ_0 floored
at a small positive value (trees can predict 0 for zero-heavy responses).
"""

from __future__ import annotations

import warnings

import numpy as np


class GBMMetaLearner:
    """Multi-treatment, multi-response wrapper; ``kind`` is "s" (SoloModel) or "t" (TwoModels)."""

    def __init__(self, kind: str = "t", n_categorical: int = 0, max_iter: int = 200,
                 learning_rate: float = 0.05, seed: int = 0):
        self.kind = kind
        self.n_categorical = n_categorical
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.seed = seed

    def _regressor(self):
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            max_iter=self.max_iter, learning_rate=self.learning_rate, random_state=self.seed,
            early_stopping=True, validation_fraction=0.1, n_iter_no_change=10,
            categorical_features=self._cat_mask,
        )

    def fit(self, x: np.ndarray, arm: np.ndarray, y: np.ndarray) -> GBMMetaLearner:
        """x (n, f) field buckets (no offsets), arm (n,), y (n, R)."""
        from sklift.models import SoloModel, TwoModels

        self._cat_mask = np.arange(x.shape[1]) < self.n_categorical
        if self.kind == "s":
            # SoloModel appends the treatment flag as the last column: not categorical.
            self._cat_mask = np.r_[self._cat_mask, False]
        self.n_treatments_ = int(arm.max())
        self.n_responses_ = y.shape[1]
        self.models_ = {}
        for k in range(1, self.n_treatments_ + 1):
            rows = (arm == 0) | (arm == k)
            t = (arm[rows] == k).astype(int)
            for r in range(self.n_responses_):
                if self.kind == "s":
                    m = SoloModel(self._regressor(), method="dummy")
                else:
                    self._cat_mask = np.arange(x.shape[1]) < self.n_categorical
                    m = TwoModels(self._regressor(), self._regressor(), method="vanilla")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m.fit(x[rows], y[rows, r], t)
                self.models_[(k, r)] = m
        return self

    def predict_delta(self, x: np.ndarray, decode=None, floor: float = 1e-3) -> np.ndarray:
        """δ (n, K, R); ``decode`` maps predictions (n, R) back to response units first."""
        out = np.empty((len(x), self.n_treatments_, self.n_responses_))
        for (k, r), m in self.models_.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.predict(x)
            treated, control = np.asarray(m.trmnt_preds_), np.asarray(m.ctrl_preds_)
            if decode is not None:  # decode acts per response: place the column at index r
                pad = np.zeros((len(x), self.n_responses_))
                pad[:, r] = treated
                treated = decode(pad)[:, r]
                pad[:, r] = control
                control = decode(pad)[:, r]
            base = max(floor * float(np.abs(control).mean()), 1e-9)
            out[:, k - 1, r] = np.maximum(treated, base) / np.maximum(control, base) - 1
        return out
