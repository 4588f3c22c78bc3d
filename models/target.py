"""Target transform shared by every model: what the networks regress on.

``mean``: y / mean_train(y) per response (predictions estimate the conditional mean).
``log1p``: log1p(y) / mean_train(log1p(y)) (spec §1.3 allows a log1p scale; heavy-tailed
responses give far less noisy gradients there). Predictions are decoded back to
response units before δ = ŷ_k / ŷ_0 − 1, so δ is a relative effect in both cases;
under ``log1p`` it is the relative effect on the geometric-type mean exp(E[log1p y]) − 1.
Decoded predictions stay > 0 because model outputs are > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


@dataclass(frozen=True)
class TargetTransform:
    kind: Literal["mean", "log1p"]
    scale: tuple[float, ...]  # per response

    @classmethod
    def fit(cls, kind: str, y_train: np.ndarray) -> TargetTransform:
        z = np.log1p(y_train) if kind == "log1p" else y_train
        return cls(kind, tuple(float(max(v, 1e-9)) for v in np.asarray(z, np.float64).mean(0)))

    def encode(self, y: np.ndarray) -> np.ndarray:
        z = np.log1p(y) if self.kind == "log1p" else y
        return (z / np.asarray(self.scale)).astype(np.float32)

    def decode(self, mu):
        """Model outputs (..., R) in encoded units -> response units (numpy or torch)."""
        if isinstance(mu, torch.Tensor):
            z = mu * torch.as_tensor(self.scale, dtype=mu.dtype, device=mu.device)
            return torch.expm1(z) if self.kind == "log1p" else z
        z = np.asarray(mu) * np.asarray(self.scale)
        return np.expm1(z) if self.kind == "log1p" else z

    def state(self) -> dict:
        return {"kind": self.kind, "scale": list(self.scale)}

    @classmethod
    def from_state(cls, s: dict) -> TargetTransform:
        return cls(s["kind"], tuple(s["scale"]))
