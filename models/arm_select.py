"""Per-treatment snapshots: each treatment's effect read from the epoch its own arm fit best.

One network's treatments are learned at different speeds: a strong effect (t1) in a few epochs,
then unlearned while a weak one (t2) is still being learned (README "When each cell is learned").
A single best epoch trades one against the other. ``ArmSelected`` keeps, beside the network of
the best epoch (``main``: the control outcome and the training's own pick), one copy per treatment
k with the weights of the epoch where the validation loss of arm k's rows alone was lowest
(``models.train.fit`` with ``per_arm_select``), and takes treatment k's effect from that copy:

    ŷ_0 = main's,   ŷ_k = ŷ_0 + (ŷ_k − ŷ_0) of copy k     (the training target's scale)

so δ^k's order is copy k's own effect, on main's control. Any ``UpliftNet`` can be wrapped.

Whether treatment k leaves the best epoch at all (``arm_epoch``): with ``min_z`` set, only when its own
epoch's loss on arm k's validation rows beats the best epoch's by a paired z-statistic over those rows
of at least ``min_z``; else copy k is the best epoch. At 200k users that switches one arm in six
(+0.010 mean ρ, no cell worse on average) where switching every arm lost views/t2 on most seeds; at
1M it switches nearly every arm and keeps the gain (README "HUM variants").
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import UpliftNet, without_positive_part_zeros


def served_row_loss(mu: torch.Tensor, k: int, y: torch.Tensor, positive_part: tuple[int, ...] = ()) -> torch.Tensor:
    """Per row, the training's squared error (summed over responses) of the served outcome of arm k:
    mu (n, K+1, R) from ``predict_mu``, y (n, R) -> (n,). As in training, the ``positive_part``
    responses' zero targets are left out (their residuals would only measure the zeros)."""
    return (without_positive_part_zeros(mu[:, k] - y, y, positive_part) ** 2).sum(1)


def paired_z(loss_a: torch.Tensor, loss_b: torch.Tensor) -> float:
    """z of the mean per-row loss gain of b over a on the same rows (> 0: b fits better)."""
    d = (loss_a - loss_b).double()
    if len(d) < 2:
        return 0.0
    se = float(d.std()) / len(d) ** 0.5
    return float(d.mean()) / se if se > 0 else 0.0


def arm_epoch(row_losses: list[torch.Tensor], best_epoch: int, min_z: float | None) -> tuple[int, float]:
    """Treatment k's epoch from its rows' losses per epoch (each (n_k,)): the lowest mean loss, or
    ``best_epoch`` when ``min_z`` is set and that epoch's paired z over ``best_epoch`` is below it.
    Returns (epoch, z). The z is read on the rows that picked the epoch, so it is optimistic."""
    own = int(torch.stack([r.mean() for r in row_losses]).argmin())
    z = paired_z(row_losses[best_epoch], row_losses[own]) if own != best_epoch else 0.0
    if min_z is not None and z < min_z:
        return best_epoch, z
    return own, z


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
