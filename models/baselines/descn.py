"""DESCN (deep entire space cross networks), multi-treatment, for RCT data.

A shared network feeds a control-response head (CR), treated-response heads (TR_k)
and pseudo-treatment-effect heads (PTE_k). Besides the direct losses on the observed
arm, the cross (X-network) losses tie them: a treated row must also be explained by
CR + PTE_k, a control row by TR_k − PTE_k (all in logit space). Predictions use
CR + PTE_k. The propensity (ESN) part is omitted: RCT propensities are known constants.
"""

from __future__ import annotations

import torch
from torch.nn.functional import softplus

from models.base import UpliftNet
from models.baselines.nets import ArmHeads, FlatEmbedding, NetConfig
from models.layers import mlp


class DESCN(UpliftNet):
    def __init__(self, cfg: NetConfig, cross_weight: float = 1.0):
        super().__init__()
        k = cfg.n_treatments
        self.n_treatments, self.n_responses, self.cross_weight = k, cfg.n_responses, cross_weight
        self.emb = FlatEmbedding(cfg.vocab_size, cfg.emb_dim)
        self.shared = mlp(cfg.n_fields * cfg.emb_dim, cfg.hidden, None, cfg.dropout)
        self.resp = ArmHeads(k + 1, cfg.hidden[-1], cfg.head_hidden, cfg.n_responses)  # CR, TR_1..K
        self.pte = ArmHeads(k, cfg.hidden[-1], cfg.head_hidden, cfg.n_responses)
        torch.nn.init.zeros_(self.pte.out.bias)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.shared(self.emb(x))
        return self.resp(h), self.pte(h)  # (B, K+1, R), (B, K, R)

    def loss(self, x, arm, y):
        z, tau = self._logits(x)
        own = z.gather(1, arm.view(-1, 1, 1).expand(-1, 1, z.shape[2])).squeeze(1)
        direct = ((softplus(own) - y) ** 2).sum(1)
        treated = arm > 0
        k_idx = (arm - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, z.shape[2])
        tau_own = tau.gather(1, k_idx).squeeze(1)  # (B, R) effect of the observed treatment
        cross_t = ((softplus(z[:, 0] + tau_own) - y) ** 2).sum(1)  # treated: CR + PTE_k
        cross_c = ((softplus(z[:, 1:] - tau) - y[:, None]) ** 2).sum((1, 2))  # control: TR_k − PTE_k
        cross = torch.where(treated, cross_t, cross_c)
        mse, xl = direct.mean(), cross.mean()
        return mse + self.cross_weight * xl, {"mse": float(mse.detach()), "cross": float(xl.detach())}

    @torch.no_grad()
    def predict_mu(self, x):
        z, tau = self._logits(x)
        c = z[:, :1]
        return softplus(torch.cat([c, c + tau], 1)) + 1e-4
