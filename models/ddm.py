"""DDM: per-request value weights from the request's item lists (spec §2.1).

Reading order: the label rule (which response each exposed video "belongs" to),
the request batch container, the item-list encoder (masked mean pooling per
part), and the MMoE network that predicts ô_r and its normalization into w_r.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models.layers import Experts, Towers

# --------------------------------------------------------------------------- labels


def exposure_labels(scores: np.ndarray, exposed: np.ndarray) -> np.ndarray:
    """o_r = V_r / V over the exposed videos of each request.

    scores (B, V, R) score percentiles, exposed (B, V) bool -> o (B, R) float32.
    A video counts for the response whose score is its highest (ties: lowest r,
    which is what ``argmax`` returns). Rows without an exposed video get o = 0.
    """
    scores, exposed = np.asarray(scores), np.asarray(exposed, dtype=bool)
    n_resp = scores.shape[-1]
    top = scores.argmax(axis=-1)  # (B, V)
    counts = (np.eye(n_resp, dtype=np.float32)[top] * exposed[..., None]).sum(axis=1)  # (B, R): V_r
    n_exposed = exposed.sum(axis=1, keepdims=True)  # (B, 1): V
    return (counts / np.maximum(n_exposed, 1)).astype(np.float32)


def exposure_labels_flat(
    scores: np.ndarray, exposed: np.ndarray, row: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same rule on ragged lists stored flat (one entry per candidate video).

    scores (n, R), exposed (n,) bool, row (n,) request index -> (o (n_rows, R), V (n_rows,)).
    Works on whole lists, so labels do not depend on how inputs are truncated.
    """
    n_resp = scores.shape[1]
    top = scores.argmax(axis=1)
    keep = np.asarray(exposed, dtype=bool)
    cell = row[keep].astype(np.int64) * n_resp + top[keep]
    counts = np.bincount(cell, minlength=n_rows * n_resp).reshape(n_rows, n_resp).astype(np.float32)
    n_exposed = counts.sum(axis=1)
    return counts / np.maximum(n_exposed, 1)[:, None], n_exposed.astype(np.int64)


# --------------------------------------------------------------------------- batches


@dataclass
class RequestBatch:
    """Padded item lists of B requests over P parts (e.g. recent, cand) on one device.

    Ids are raw (as logged); the network maps unknown ones to a reserved bucket.
    """

    duration: torch.Tensor  # (B, P, L) int64
    category: torch.Tensor  # (B, P, L) int64
    scores: torch.Tensor  # (B, P, L, R) float32
    mask: torch.Tensor  # (B, P, L) bool: True = a real item, False = padding

    def __len__(self) -> int:
        return self.duration.shape[0]

    def to(self, device: torch.device | str) -> RequestBatch:
        return RequestBatch(*(t.to(device) for t in (self.duration, self.category, self.scores, self.mask)))

    def take(self, idx: torch.Tensor | slice) -> RequestBatch:
        """The requests at ``idx`` (a slice or an index tensor on the batch's device)."""
        return RequestBatch(self.duration[idx], self.category[idx], self.scores[idx], self.mask[idx])


def batch_from_numpy(
    duration: np.ndarray,
    category: np.ndarray,
    scores: np.ndarray,
    mask: np.ndarray,
    device: torch.device | str | None = None,
) -> RequestBatch:
    """Wrap numpy arrays (shapes as in :class:`RequestBatch`) without copying where dtypes match."""
    b = RequestBatch(
        torch.from_numpy(np.ascontiguousarray(duration, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(category, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(mask, dtype=np.bool_)),
    )
    return b.to(device) if device is not None else b


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class DDMNetConfig:
    """Network dimensions; ``n_durations``/``n_categories`` count the ids seen in training."""

    n_responses: int
    n_parts: int
    n_durations: int
    n_categories: int
    emb_dim: int = 16
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (64, 32)
    tower_hidden: tuple[int, ...] = (16,)
    # Outputs (towers): 0 = one per response (DDM's ô); FIC uses one per treatment (r̂^k).
    n_outputs: int = 0
    output_init: float = 0.0  # the towers' starting output; 0 = 1 / n_outputs (DDM's label mean)

    @property
    def outputs(self) -> int:
        return self.n_outputs or self.n_responses

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expert_hidden"], d["tower_hidden"] = list(self.expert_hidden), list(self.tower_hidden)
        for key in ("n_outputs", "output_init"):  # DDM's defaults stay out: its versions (config hashes) keep
            if not d[key]:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DDMNetConfig:
        return cls(**{**d, "expert_hidden": tuple(d["expert_hidden"]), "tower_hidden": tuple(d["tower_hidden"])})


def _known_or_unknown(ids: torch.Tensor, n_known: int) -> torch.Tensor:
    """Raw ids -> embedding rows: known id k -> k + 1, anything else (unseen, negative) -> 0."""
    return torch.where((ids >= 0) & (ids < n_known), ids + 1, 0)


class ItemListEncoder(nn.Module):
    """e_s* = concat_p mean_l e(item), e(item) = E_dur(d) + E_cat(c) + W·scores + b.

    The mean of a sum of embeddings is computed through id histograms, which is the same
    number without materializing (B, P, L, d): mean_l E(id_l) = (hist(id) / n) @ E.
    """

    def __init__(self, n_durations: int, n_categories: int, n_responses: int, emb_dim: int):
        super().__init__()
        self.n_durations, self.n_categories = n_durations, n_categories
        # Row 0 is the unknown bucket, kept at zero: an id never seen in training adds
        # nothing to the mean (it still counts in n) rather than an arbitrary random direction.
        self.duration = nn.Embedding(n_durations + 1, emb_dim, padding_idx=0)
        self.category = nn.Embedding(n_categories + 1, emb_dim, padding_idx=0)
        self.scores = nn.Linear(n_responses, emb_dim)
        nn.init.normal_(self.duration.weight[1:], std=0.1)
        nn.init.normal_(self.category.weight[1:], std=0.1)

    @staticmethod
    def _pooled_sum(ids: torch.Tensor, real: torch.Tensor, table: nn.Embedding, n_known: int) -> torch.Tensor:
        """Σ_l real_l · E(id_l) over (B, P, L) ids -> (B, P, d), through a (B, P, n_known + 1) histogram."""
        hist = real.new_zeros(*ids.shape[:2], n_known + 1)
        hist.scatter_add_(2, _known_or_unknown(ids, n_known), real)
        return hist[..., 1:] @ table.weight[1:]  # unknown ids (row 0) add nothing

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        real = batch.mask.to(self.scores.weight.dtype)  # (B, P, L): padding weighs 0
        # where(), not a product: garbage (even NaN) in padded slots cannot leak into the mean.
        score_sum = torch.where(batch.mask.unsqueeze(-1), batch.scores, 0.0).sum(dim=2)  # (B, P, R)
        total = (
            self._pooled_sum(batch.duration, real, self.duration, self.n_durations)
            + self._pooled_sum(batch.category, real, self.category, self.n_categories)
            + score_sum @ self.scores.weight.T
        )  # (B, P, d): sum over real items, bias aside
        n = real.sum(dim=2, keepdim=True)  # (B, P, 1)
        # An empty list pools to zeros (bias included), as a mean over no items would.
        pooled = total / n.clamp_min(1) + self.scores.bias * (n > 0)
        return pooled.flatten(1)  # (B, P*d)


class DDMNet(nn.Module):
    """Item-list encoder -> MMoE (shared experts, one softmax gate and tower per response) -> ô (B, R) > 0."""

    def __init__(self, cfg: DDMNetConfig):
        super().__init__()
        self.cfg = cfg
        o, m = cfg.outputs, cfg.n_experts
        d_in = cfg.n_parts * cfg.emb_dim
        self.encoder = ItemListEncoder(cfg.n_durations, cfg.n_categories, cfg.n_responses, cfg.emb_dim)
        self.experts = Experts(d_in, m, cfg.expert_hidden)
        self.gates = nn.Linear(d_in, o * m)
        self.towers = Towers(o, cfg.expert_hidden[-1], cfg.tower_hidden)
        # DDM's labels are shares that average 1/R: start the softplus output there, not at 1.
        nn.init.constant_(self.towers.out.bias, math.log(math.expm1(cfg.output_init or 1.0 / o)))

    def forward(self, batch: RequestBatch) -> torch.Tensor:
        s = self.encoder(batch)  # (B, P*d)
        p = self.experts(s)  # (B, M, H)
        g = torch.softmax(self.gates(s).view(-1, self.cfg.outputs, self.cfg.n_experts), dim=-1)  # (B, O, M)
        return self.towers(g @ p)  # (B, O, M) @ (B, M, H) -> (B, O, H) -> towers -> (B, O)


def value_weights(o_hat: torch.Tensor) -> torch.Tensor:
    """w_r = ô_r / Σ_r' ô_r' over the last axis; ô > 0 (softplus towers), so w is a distribution."""
    return o_hat / o_hat.sum(dim=-1, keepdim=True)
