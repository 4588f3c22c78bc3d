"""A deep ensemble: M copies of one uplift network, fit from different seeds, predicting together.

``pipelines.train.train_net`` fits the members one after the other, each with its own seed
(initial weights, batch order, early stopping). Predictions average the members' expected
outcomes per arm, so δ = μ̄_k / μ̄_0 − 1 and the members' disagreement, noise from the seed,
cancels (README "HUM variants: the ensemble"). The loss is the members' mean: with Adam,
invariant to the 1/M scale, training the ensemble as one module gives each member the step
it would take alone (tested), and the validation loss is the members' mean.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import UpliftNet


class Ensemble(UpliftNet):
    def __init__(self, members: list[UpliftNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        shapes = {(m.n_treatments, m.n_responses) for m in members}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members disagree on (treatments, responses): {sorted(shapes)}")
        self.members = nn.ModuleList(members)
        self.n_treatments, self.n_responses = shapes.pop()

    def loss(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The members' mean loss; each reported part is the members' mean."""
        results = [m.loss(x, arm, y) for m in self.members]
        total = torch.stack([t for t, _ in results]).mean()
        keys = results[0][1].keys()
        return total, {k: sum(p[k] for _, p in results) / len(results) for k in keys}

    def offset_parameters(self) -> list[nn.Parameter]:
        """Every member's offset parameters (``models.train.param_groups``)."""
        return [p for m in self.members for p in getattr(m, "offset_parameters", list)()]

    def wide_parameters(self) -> list[nn.Parameter]:
        """Every member's wide offset tables (``models.train.param_groups``)."""
        return [p for m in self.members for p in getattr(m, "wide_parameters", list)()]

    @torch.no_grad()
    def predict_mu(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean expected outcome under every arm, (B, K+1, R)."""
        mu = self.members[0].predict_mu(x)
        for m in self.members[1:]:
            mu = mu + m.predict_mu(x)
        return mu / len(self.members)
