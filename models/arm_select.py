"""Per-treatment snapshots: each treatment's effect read from the epoch its own arm fit best.

One network's treatments are learned at different speeds: a strong effect (t1) in a few epochs,
then unlearned while a weak one (t2) is still being learned (README "When each cell is learned").
A single best epoch trades one against the other. ``ArmSelected`` keeps, beside the network of
the best epoch (``main``: the control outcome and the training's own pick), one copy per treatment
k with the weights of the epoch where the validation loss of arm k's rows alone was lowest
(``models.train.fit`` with ``per_arm_select``), and takes treatment k's effect from that copy:

    ŷ_0 = main's,   ŷ_k = ŷ_0 + (ŷ_k − ŷ_0) of copy k     (the training target's scale)

so δ^k's order is copy k's own effect, on main's control. Any ``UpliftNet`` can be wrapped.
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import UpliftNet


class ArmSelected(UpliftNet):
    def __init__(self, main: UpliftNet, arms: list[UpliftNet]):
        super().__init__()
        if len(arms) != main.n_treatments:
            raise ValueError(f"one snapshot per treatment: {main.n_treatments} treatments, {len(arms)} snapshots")
        shapes = {(n.n_treatments, n.n_responses) for n in (main, *arms)}
        if len(shapes) != 1:
            raise ValueError(f"snapshots disagree on (treatments, responses): {sorted(shapes)}")
        self.main = main
        self.arms = nn.ModuleList(arms)
        self.n_treatments, self.n_responses = main.n_treatments, main.n_responses

    def loss(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The main network's loss: the snapshots are chosen after training, not trained together."""
        return self.main.loss(x, arm, y)

    @torch.no_grad()
    def predict_mu(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K+1, R): main's control outcome; treatment k's effect over it from snapshot k."""
        mu = self.main.predict_mu(x)  # (B, K+1, R)
        out = mu.clone()
        for k, net in enumerate(self.arms, start=1):
            own = net.predict_mu(x)
            out[:, k] = (mu[:, 0] + own[:, k] - own[:, 0]).clamp_min(1e-4)  # outcomes stay > 0 (δ divides by ŷ_0)
        return out
