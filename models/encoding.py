"""Field encoder: every feature becomes one integer bucket index (spec §1.1).

Numeric features are cut at quantiles fitted on the training split; categorical
features are indexed by the values seen in training. Bucket 0 of every field is
reserved for missing / unseen values. All fields share one embedding table, so each
field's buckets are shifted by an offset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class FieldEncoder:
    """Fit on a training frame, then map frames to an (n, f) int64 index matrix.

    Follows scikit-learn's conventions: the constructor stores hyper-parameters,
    ``fit`` learns ``edges_`` / ``categories_`` / ``offsets_`` and returns self.
    """

    def __init__(self, categorical: list[str], numeric: list[str], n_bins: int = 32):
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.n_bins = n_bins

    @property
    def fields(self) -> list[str]:
        return self.categorical + self.numeric

    def fit(self, df: pd.DataFrame) -> FieldEncoder:
        self.categories_: dict[str, np.ndarray] = {}
        self.edges_: dict[str, np.ndarray] = {}
        for c in self.categorical:
            self.categories_[c] = np.sort(pd.unique(df[c].dropna()))
        q = np.linspace(0, 1, self.n_bins + 1)[1:-1]
        for c in self.numeric:
            x = df[c].to_numpy(np.float64)
            x = x[np.isfinite(x)]
            # Heavy-tailed counts have many ties: keep unique cut points only.
            self.edges_[c] = np.unique(np.quantile(x, q)) if len(x) else np.array([])
        return self._set_offsets()

    def _set_offsets(self) -> FieldEncoder:
        sizes = [len(self.categories_[c]) + 1 for c in self.categorical]
        sizes += [len(self.edges_[c]) + 2 for c in self.numeric]  # +1 bin, +1 missing
        self.sizes_ = np.asarray(sizes, dtype=np.int64)
        self.offsets_ = np.concatenate([[0], np.cumsum(self.sizes_)[:-1]]).astype(np.int64)
        return self

    @property
    def vocab_size(self) -> int:
        return int(self.sizes_.sum())

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """(n, f) int64 global bucket indices (offsets applied)."""
        n = len(df)
        # Built field-major (each field one contiguous row), then transposed once: writing
        # columns of an (n, f) array strides through memory f times (measured ~2x slower).
        out = np.empty((len(self.fields), n), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            # Codes are -1 for missing or unseen values: they land in bucket 0.
            codes = pd.Categorical(df[c], categories=self.categories_[c]).codes
            np.add(codes, 1 + self.offsets_[j], out=out[j], casting="unsafe")
        base = len(self.categorical)
        for j, c in enumerate(self.numeric):
            x = df[c].to_numpy(np.float64)
            row = out[base + j]
            row[:] = np.searchsorted(self.edges_[c], x, side="right")
            row += 1 + self.offsets_[base + j]
            row[~np.isfinite(x)] = self.offsets_[base + j]  # bucket 0: missing
        return np.ascontiguousarray(out.T)

    # -- checkpoint state: plain lists so torch.load(weights_only=True) accepts it
    def state(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical,
            "numeric": self.numeric,
            "n_bins": self.n_bins,
            "categories": {c: self.categories_[c].tolist() for c in self.categorical},
            "edges": {c: self.edges_[c].tolist() for c in self.numeric},
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> FieldEncoder:
        enc = cls(s["categorical"], s["numeric"], s["n_bins"])
        enc.categories_ = {c: np.asarray(v) for c, v in s["categories"].items()}
        enc.edges_ = {c: np.asarray(v, dtype=np.float64) for c, v in s["edges"].items()}
        return enc._set_offsets()
