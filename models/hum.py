"""HUM: the Hybrid Uplift Model (spec §1), multi-treatment and multi-response.

Reading order: the config, one branch (treatment-aware feature selection + a
multi-task mixture of experts), then the model that runs K branches with treated
and control inputs, the masked loss with the KL term, and prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from models.base import UpliftNet
from models.layers import Experts, Towers


@dataclass
class HUMConfig:
    n_fields: int
    vocab_size: int
    n_treatments: int  # K >= 1
    n_responses: int  # R >= 1
    emb_dim: int = 32
    n_experts: int = 3
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    kl_weight: float = 1.0  # 0 = "HUM w/o KL"
    dropout: float = 0.0
    # "sum": e_x^k = Σ_j a^k(j) e_{x,j} exactly as in the spec; "scale": concat_j a^k(j) e_{x,j}.
    pooling: Literal["sum", "scale"] = "sum"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expert_hidden"], d["tower_hidden"] = list(self.expert_hidden), list(self.tower_hidden)
        return d


class HUMBranch(nn.Module):
    """One treatment's branch: field attention from the treatment embedding, experts, gates, towers."""

    def __init__(self, cfg: HUMConfig):
        super().__init__()
        d, f, m, r = cfg.emb_dim, cfg.n_fields, cfg.n_experts, cfg.n_responses
        self.pooling, self.m, self.r = cfg.pooling, m, r
        self.attn = nn.Linear(d, f)  # a^k = softmax(W^k e_t + b^k)
        d_in = (d if cfg.pooling == "sum" else f * d) + d
        self.experts = Experts(d_in, m, cfg.expert_hidden, cfg.dropout)
        self.gates = nn.Linear(d_in, r * m)  # one softmax gate per response (MMoE)
        self.towers = Towers(r, cfg.expert_hidden[-1], cfg.tower_hidden)

    def forward(self, e_x: torch.Tensor, e_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e_x (B, f, d), e_t (d,) -> predictions (B, R) and gate distributions (B, R, M)."""
        b = e_x.shape[0]
        a = torch.softmax(self.attn(e_t), dim=-1)  # (f,): which fields matter under this treatment
        if self.pooling == "sum":
            sel = torch.einsum("bfd,f->bd", e_x, a)  # (B, d)
        else:
            sel = (e_x * a[None, :, None]).reshape(b, -1)  # (B, f*d)
        h = torch.cat([sel, e_t.expand(b, -1)], dim=1)  # f^k = concat(e_x^k, e_t)
        p = self.experts(h)  # (B, M, H)
        g = torch.softmax(self.gates(h).view(b, self.r, self.m), dim=-1)  # (B, R, M)
        mixed = torch.einsum("brm,bmh->brh", g, p)  # (B, R, H)
        return self.towers(mixed), g


class HUM(UpliftNet):
    def __init__(self, cfg: HUMConfig):
        super().__init__()
        self.cfg = cfg
        self.n_treatments, self.n_responses = cfg.n_treatments, cfg.n_responses
        self.field_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.treat_emb = nn.Embedding(cfg.n_treatments + 1, cfg.emb_dim)  # 0 = control
        self.branches = nn.ModuleList(HUMBranch(cfg) for _ in range(cfg.n_treatments))
        nn.init.normal_(self.field_emb.weight, std=0.05)

    def _t(self, k: int) -> torch.Tensor:
        return self.treat_emb.weight[k]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every branch on every row: treated (B, K, R), control (B, K, R), control gates (B, K, R, M)."""
        e_x = self.field_emb(x)
        treated, control, gates = [], [], []
        for k, branch in enumerate(self.branches, start=1):
            y_t, _ = branch(e_x, self._t(k))
            y_c, g_c = branch(e_x, self._t(0))
            treated.append(y_t)
            control.append(y_c)
            gates.append(g_c)
        return torch.stack(treated, 1), torch.stack(control, 1), torch.stack(gates, 1)

    def loss(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE masked by the observed arm + kl_weight · KL between the branches' control gates.

        A row under treatment k trains only branch k's treated heads; a control row
        trains the control heads of every branch (spec §1.3). Only the needed passes run.
        """
        e_x = self.field_emb(x)
        n = x.shape[0]
        sse = x.new_zeros((), dtype=torch.float32)
        for k, branch in enumerate(self.branches, start=1):
            rows = arm == k
            if rows.any():
                y_t, _ = branch(e_x[rows], self._t(k))
                sse = sse + ((y_t - y[rows]) ** 2).sum()
        ctrl = arm == 0
        kl = sse.new_zeros(())
        if ctrl.any():
            e_c, y_c = e_x[ctrl], y[ctrl]
            gates = []
            for branch in self.branches:
                pred, g = branch(e_c, self._t(0))
                sse = sse + ((pred - y_c) ** 2).sum()
                gates.append(g)
            kl = gate_kl(torch.stack(gates, 0)).sum()
        mse = sse / n
        kl = kl / n
        total = mse + self.cfg.kl_weight * kl
        return total, {"mse": float(mse.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def predict_mu(self, x: torch.Tensor) -> torch.Tensor:
        treated, control, _ = self.forward_all(x)
        y0 = control.mean(dim=1, keepdim=True)  # ŷ^{0,*}: mean over the branches (spec §1.4)
        return torch.cat([y0, treated], dim=1)


def gate_kl(gates: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Σ_k KL(z^{0,k} ‖ mean_k z^{0,k}) per row and response: gates (K, B, R, M) -> (B, R)."""
    mean = gates.mean(0, keepdim=True)
    return (gates * (torch.log(gates + eps) - torch.log(mean + eps))).sum(-1).sum(0)
