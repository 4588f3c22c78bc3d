"""EFIN (explicit feature interaction-aware uplift network), multi-treatment.

A self-attention layer over the field embeddings models feature interactions and
feeds the control tower; the treatment embedding queries the fields (treatment-aware
attention) and feeds an uplift tower per treatment. ŷ_k = softplus(c + u_k),
ŷ_0 = softplus(c). The paper's intervention constraint (a treatment classifier on the
control representation) is omitted: in an RCT the representation is independent of
the arm by design.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus

from models.base import AllArmsNet
from models.baselines.nets import SOFTPLUS_ONE, ArmHeads, FlatEmbedding, NetConfig
from models.layers import mlp


class EFIN(AllArmsNet):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        d, f, k = cfg.emb_dim, cfg.n_fields, cfg.n_treatments
        self.n_treatments, self.n_responses = k, cfg.n_responses
        self.emb = FlatEmbedding(cfg.vocab_size, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.control = mlp(f * d, cfg.hidden, cfg.n_responses, cfg.dropout)
        nn.init.constant_(self.control[-1].bias, SOFTPLUS_ONE)
        self.treat = nn.Embedding(k, d)
        self.uplift_rep = mlp(d, cfg.hidden, None, cfg.dropout)
        self.uplift = ArmHeads(1, cfg.hidden[-1], cfg.head_hidden, cfg.n_responses)
        nn.init.zeros_(self.uplift.out.bias)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.emb.fields(x)  # (B, f, d)
        att = torch.softmax(self.q(e) @ self.k(e).transpose(1, 2) / e.shape[-1] ** 0.5, -1)
        inter = att @ self.v(e) + e  # self-attention interactions, residual
        c = self.control(inter.flatten(1))  # (B, R) control logit
        t = self.treat.weight  # (K, d): each treatment queries the fields
        w = torch.softmax(torch.einsum("kd,bfd->bkf", t, self.k(e)) / e.shape[-1] ** 0.5, -1)
        tq = torch.einsum("bkf,bfd->bkd", w, self.v(e)) * t  # (B, K, d) treatment-aware summary
        b, kk, d = tq.shape
        u = self.uplift(self.uplift_rep(tq.reshape(b * kk, d))).view(b, kk, -1)  # (B, K, R)
        return c, u

    def outcomes(self, x: torch.Tensor) -> torch.Tensor:
        c, u = self._logits(x)
        return softplus(torch.cat([c[:, None], c[:, None] + u], 1)) + 1e-4  # (B, K+1, R)
