"""M3TN: a multi-gate mixture of experts for multi-valued treatments.

Shared experts over the field embeddings; one softmax gate and tower per arm
(control included); a reparameterization makes each treated outcome the control
logit plus an effect logit: ŷ_k = softplus(c + τ_k), ŷ_0 = softplus(c).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus

from models.base import AllArmsNet
from models.baselines.nets import SOFTPLUS_ONE, FlatEmbedding, NetConfig
from models.layers import Experts, GroupedLinear


class M3TN(AllArmsNet):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        arms, m = cfg.n_treatments + 1, cfg.n_experts
        self.n_treatments, self.n_responses, self.m, self.arms = cfg.n_treatments, cfg.n_responses, m, arms
        self.emb = FlatEmbedding(cfg.vocab_size, cfg.emb_dim)
        d_in = cfg.n_fields * cfg.emb_dim
        self.experts = Experts(d_in, m, cfg.hidden, cfg.dropout)
        self.gates = nn.Linear(d_in, arms * m)
        h = cfg.hidden[-1]
        self.tower1 = GroupedLinear(arms, h, cfg.head_hidden[0])
        self.tower2 = GroupedLinear(arms, cfg.head_hidden[0], cfg.n_responses)
        nn.init.constant_(self.tower2.bias[0], SOFTPLUS_ONE)
        nn.init.zeros_(self.tower2.bias[1:])

    def outcomes(self, x: torch.Tensor) -> torch.Tensor:
        e = self.emb(x)
        p = self.experts(e)  # (B, M, H)
        g = torch.softmax(self.gates(e).view(-1, self.arms, self.m), -1)  # (B, A, M)
        z = self.tower2(torch.relu(self.tower1(torch.einsum("bam,bmh->bah", g, p))))  # (B, A, R)
        c = z[:, :1]
        return softplus(torch.cat([c, c + z[:, 1:]], 1)) + 1e-4
