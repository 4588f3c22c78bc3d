"""CPM: CDUM's offline preference model (spec §3), one network for every arm.

Reading order: the config, then the network. Per arm a (a = 0 is control):

1. the treatment embedding ``e_a`` is refined into a **guidance embedding** ``g_a`` and an
   **indicator embedding** ``i_a``;
2. ``g_a`` gates the user's features (a per-field weight in (0, 2): which features matter
   under this treatment) and, with the gated features, the softmax gates of a shared
   mixture of experts (one gate per response);
3. per response, a tower MLP whose last hidden layer is multiplied element-wise by
   ``i_a`` (so one network generalizes across treatments), then a softplus head: ŷ^a_r.

Trained with a Huber loss on the observed arm's heads (treated and control alike). The
defaults follow the CDUM authors' public description: shared experts MLP(128, 64),
towers MLP(32). Any K treatments and R responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.base import AllArmsNet  # outcomes() for every arm; predict_mu; loss overridden (Huber)
from models.layers import Experts, GroupedLinear, positive

SOFTPLUS_ONE = 0.5413  # softplus^-1(1): targets are scaled to mean 1


@dataclass
class CPMConfig:
    n_fields: int
    vocab_size: int
    n_treatments: int
    n_responses: int
    emb_dim: int = 32
    treat_dim: int = 16
    n_experts: int = 3
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    dropout: float = 0.0
    huber_delta: float = 1.0


class CPM(AllArmsNet):
    def __init__(self, cfg: CPMConfig):
        super().__init__()
        self.cfg = cfg
        self.n_treatments, self.n_responses = cfg.n_treatments, cfg.n_responses
        arms, f, d, t, m, r = cfg.n_treatments + 1, cfg.n_fields, cfg.emb_dim, cfg.treat_dim, cfg.n_experts, \
            cfg.n_responses
        self.arms = arms
        self.emb = nn.Embedding(cfg.vocab_size, d)
        nn.init.normal_(self.emb.weight, std=0.05)
        self.treat = nn.Embedding(arms, t)
        self.guide = nn.Sequential(nn.Linear(t, t), nn.ReLU(), nn.Linear(t, t))
        self.indicate = nn.Sequential(nn.Linear(t, t), nn.ReLU(), nn.Linear(t, cfg.tower_hidden[-1]))
        self.field_gate = nn.Linear(t, f)
        nn.init.zeros_(self.field_gate.weight)
        nn.init.zeros_(self.field_gate.bias)  # starts at weight 1 for every field
        self.experts = Experts(f * d, m, cfg.expert_hidden, cfg.dropout)
        self.gate_x = nn.Linear(f * d, r * m)
        self.gate_g = nn.Linear(t, r * m)
        dims = (cfg.expert_hidden[-1], *cfg.tower_hidden)
        self.tower = nn.ModuleList(GroupedLinear(r, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = GroupedLinear(r, dims[-1], 1)
        nn.init.constant_(self.head.bias, SOFTPLUS_ONE)

    def arm_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(guidance (A, t), indicator (A, H_t)) for every arm."""
        e = self.treat.weight  # (A, t)
        return self.guide(e), 1.0 + self.indicate(e)  # indicator around 1: towers start arm-agnostic

    def outcomes(self, x: torch.Tensor) -> torch.Tensor:
        b, a, r, m = x.shape[0], self.arms, self.n_responses, self.cfg.n_experts
        g, ind = self.arm_embeddings()
        e = self.emb(x)  # (B, f, d)
        weight = 2.0 * torch.sigmoid(self.field_gate(g))  # (A, f): per-arm feature selection
        xa = (e.unsqueeze(1) * weight[None, :, :, None]).flatten(2)  # (B, A, f*d)
        p = self.experts(xa.reshape(b * a, -1)).view(b, a, m, -1)  # (B, A, M, H)
        logits = (self.gate_x(xa) + self.gate_g(g)[None]).view(b, a, r, m)
        mix = torch.einsum("barm,bamh->barh", torch.softmax(logits, -1), p)  # (B, A, R, H)
        h = mix.reshape(b * a, r, -1)
        for layer in self.tower:
            h = torch.relu(layer(h))
        h = h.view(b, a, r, -1) * ind[None, :, None, :]  # indicator multiplied into the tower
        return positive(self.head(h.reshape(b * a, r, -1)).view(b, a, r))  # (B, A, R)

    def loss(self, x, arm, y):
        pred = self.outcomes(x)  # (B, A, R)
        own = pred.gather(1, arm.view(-1, 1, 1).expand(-1, 1, pred.shape[2])).squeeze(1)  # (B, R)
        huber = nn.functional.huber_loss(own, y, delta=self.cfg.huber_delta, reduction="none").sum(1).mean()
        mse = ((own.detach() - y) ** 2).sum(1).mean()  # the prediction loss every model reports (model selection)
        return huber, {"huber": float(huber.detach()), "mse": float(mse)}
