"""DDM's forward pass in numpy, for the decision service's one-to-few-request calls.

A single request is a few dozen tiny tensor ops: in torch each costs its dispatch
(~10 µs), so Python-side overhead, not arithmetic, set the 0.3–0.7 ms a request spent
in DDM. The same maths on numpy arrays costs ~1 µs per op. Training and large-batch
scoring keep the torch network; this module copies its weights once and is tested to
give the same weights (float32 rounding aside).
"""

from __future__ import annotations

import numpy as np

from models.ddm import DDMNet


class NumpyDDM:
    """w (B, R) = normalized ô from padded request arrays, with the weights of a trained :class:`DDMNet`."""

    def __init__(self, net: DDMNet):
        sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
        cfg = net.cfg
        self.n_durations, self.n_categories = cfg.n_durations, cfg.n_categories
        self.r, self.m = cfg.n_responses, cfg.n_experts
        self.duration = sd["encoder.duration.weight"].copy()
        self.category = sd["encoder.category.weight"].copy()
        self.duration[0] = 0.0  # the unknown bucket adds nothing (as the torch encoder skips row 0)
        self.category[0] = 0.0
        self.score_w, self.score_b = sd["encoder.scores.weight"].T.copy(), sd["encoder.scores.bias"]
        self.first_w, self.first_b = sd["experts.first.weight"].T.copy(), sd["experts.first.bias"]
        self.rest = [(sd[f"experts.rest.{i}.weight"], sd[f"experts.rest.{i}.bias"])
                     for i in range(len(cfg.expert_hidden) - 1)]
        self.gate_w, self.gate_b = sd["gates.weight"].T.copy(), sd["gates.bias"]
        self.tower_hidden = [(sd[f"towers.hidden.{i}.weight"], sd[f"towers.hidden.{i}.bias"])
                             for i in range(len(cfg.tower_hidden))]
        self.tower_out = (sd["towers.out.weight"], sd["towers.out.bias"])

    @staticmethod
    def _rows(ids: np.ndarray, n_known: int) -> np.ndarray:
        """Raw ids -> table rows: known id k -> k + 1, anything else -> 0 (the zero row)."""
        return np.where((ids >= 0) & (ids < n_known), ids + 1, 0)

    def encode(self, duration: np.ndarray, category: np.ndarray, scores: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
        """(B, P, L) ids, (B, P, L, R) scores, (B, P, L) mask -> pooled lists (B, P*d)."""
        real = mask.astype(np.float32)[..., None]  # (B, P, L, 1): padding weighs 0
        emb = self.duration[self._rows(duration, self.n_durations)] + self.category[
            self._rows(category, self.n_categories)]  # (B, P, L, d)
        score_sum = np.where(mask[..., None], scores, np.float32(0)).sum(axis=2)  # (B, P, R)
        total = (emb * real).sum(axis=2) + score_sum @ self.score_w  # (B, P, d)
        n = real.sum(axis=2)  # (B, P, 1)
        pooled = total / np.maximum(n, 1) + self.score_b * (n > 0)
        return pooled.reshape(len(pooled), -1)

    def __call__(self, duration: np.ndarray, category: np.ndarray, scores: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
        s = self.encode(duration, category, scores, mask)  # (B, P*d)
        b = len(s)
        h = np.maximum(s @ self.first_w + self.first_b, 0).reshape(b, self.m, -1)  # (B, M, H0)
        for w, bias in self.rest:  # grouped: (M, in, out)
            h = np.maximum(np.einsum("bmi,mio->bmo", h, w) + bias, 0)
        logits = (s @ self.gate_w + self.gate_b).reshape(b, self.r, self.m)
        g = np.exp(logits - logits.max(axis=-1, keepdims=True))
        g /= g.sum(axis=-1, keepdims=True)  # (B, R, M)
        t = g @ h  # (B, R, H)
        for w, bias in self.tower_hidden:  # grouped: (R, in, out)
            t = np.maximum(np.einsum("bri,rio->bro", t, w) + bias, 0)
        w, bias = self.tower_out
        o = np.logaddexp(0, np.einsum("bri,rio->bro", t, w) + bias)[..., 0] + np.float32(1e-4)  # softplus
        return o / o.sum(axis=-1, keepdims=True)
