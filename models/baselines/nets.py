"""Classic neural meta-learners: S-learner, T-learner, TARNet."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import softplus

from models.base import AllArmsNet, UpliftNet
from models.layers import GroupedLinear, mlp

SOFTPLUS_ONE = 0.5413  # softplus^-1(1): targets are scaled to mean 1


@dataclass
class NetConfig:
    n_fields: int
    vocab_size: int
    n_treatments: int
    n_responses: int
    emb_dim: int = 32
    hidden: tuple[int, ...] = (128, 64)
    head_hidden: tuple[int, ...] = (32,)
    n_experts: int = 3
    dropout: float = 0.0


class FlatEmbedding(nn.Module):
    """Field embeddings, concatenated: (B, f) -> (B, f*d); ``fields`` keeps (B, f, d)."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        nn.init.normal_(self.emb.weight, std=0.05)

    def fields(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x).flatten(1)


class ArmHeads(nn.Module):
    """One small MLP head per group (arm), computed together: (B, d) -> (B, G, R) logits."""

    def __init__(self, groups: int, d_in: int, hidden: tuple[int, ...], n_out: int):
        super().__init__()
        dims = (d_in, *hidden)
        self.groups = groups
        self.layers = nn.ModuleList(GroupedLinear(groups, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = GroupedLinear(groups, dims[-1], n_out)
        nn.init.constant_(self.out.bias, SOFTPLUS_ONE)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.unsqueeze(1).expand(-1, self.groups, -1)
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.out(h)


class SLearner(UpliftNet):
    """One network; the treatment is an input feature."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.n_treatments, self.n_responses = cfg.n_treatments, cfg.n_responses
        self.emb = FlatEmbedding(cfg.vocab_size, cfg.emb_dim)
        self.treat = nn.Embedding(cfg.n_treatments + 1, cfg.emb_dim)
        self.net = mlp(cfg.n_fields * cfg.emb_dim + cfg.emb_dim, cfg.hidden, cfg.n_responses, cfg.dropout)
        nn.init.constant_(self.net[-1].bias, SOFTPLUS_ONE)

    def _mu(self, e: torch.Tensor, arm: torch.Tensor) -> torch.Tensor:
        return softplus(self.net(torch.cat([e, self.treat(arm)], 1))) + 1e-4

    def loss(self, x, arm, y):
        mse = ((self._mu(self.emb(x), arm) - y) ** 2).sum(1).mean()
        return mse, {"mse": float(mse.detach())}

    @torch.no_grad()
    def predict_mu(self, x):
        e = self.emb(x)
        arms = [torch.full((x.shape[0],), a, dtype=torch.long, device=x.device) for a in range(self.n_treatments + 1)]
        return torch.stack([self._mu(e, a) for a in arms], 1)


class TLearner(UpliftNet):
    """One independent network (and embedding table) per arm."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.n_treatments, self.n_responses = cfg.n_treatments, cfg.n_responses
        self.embs = nn.ModuleList(FlatEmbedding(cfg.vocab_size, cfg.emb_dim) for _ in range(cfg.n_treatments + 1))
        self.nets = nn.ModuleList(
            mlp(cfg.n_fields * cfg.emb_dim, cfg.hidden, cfg.n_responses, cfg.dropout)
            for _ in range(cfg.n_treatments + 1)
        )
        for net in self.nets:
            nn.init.constant_(net[-1].bias, SOFTPLUS_ONE)

    def _mu(self, a: int, x: torch.Tensor) -> torch.Tensor:
        return softplus(self.nets[a](self.embs[a](x))) + 1e-4

    def loss(self, x, arm, y):
        sse = x.new_zeros((), dtype=torch.float32)
        for a in range(self.n_treatments + 1):
            rows = arm == a
            if rows.any():
                sse = sse + ((self._mu(a, x[rows]) - y[rows]) ** 2).sum()
        mse = sse / x.shape[0]
        return mse, {"mse": float(mse.detach())}

    @torch.no_grad()
    def predict_mu(self, x):
        return torch.stack([self._mu(a, x) for a in range(self.n_treatments + 1)], 1)


class TARNet(AllArmsNet):
    """A shared representation and one outcome head per arm."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.n_treatments, self.n_responses = cfg.n_treatments, cfg.n_responses
        self.emb = FlatEmbedding(cfg.vocab_size, cfg.emb_dim)
        self.rep = mlp(cfg.n_fields * cfg.emb_dim, cfg.hidden, None, cfg.dropout)
        self.heads = ArmHeads(cfg.n_treatments + 1, cfg.hidden[-1], cfg.head_hidden, cfg.n_responses)

    def outcomes(self, x: torch.Tensor) -> torch.Tensor:
        return softplus(self.heads(self.rep(self.emb(x)))) + 1e-4  # (B, K+1, R)
