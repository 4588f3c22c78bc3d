"""The contract every uplift network follows, so one trainer and one evaluator serve all."""

from __future__ import annotations

import torch
from torch import nn


class UpliftNet(nn.Module):
    """A multi-treatment, multi-response outcome model.

    ``x``: (B, f) int64 field-bucket indices; ``arm``: (B,) int64, 0 = control;
    ``y``: (B, R) float targets scaled to mean 1 per response.
    """

    n_treatments: int
    n_responses: int

    def loss(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def predict_mu(self, x: torch.Tensor) -> torch.Tensor:
        """Expected outcome under every arm, (B, K+1, R), arm 0 = control, all > 0."""
        raise NotImplementedError


def relative_uplift(mu: torch.Tensor) -> torch.Tensor:
    """δ_r^k = ŷ_r^k / ŷ_r^0 − 1 from (B, K+1, R) outcomes -> (B, K, R)."""
    return mu[:, 1:, :] / mu[:, :1, :] - 1.0


def masked_arm_mse(pred: torch.Tensor, arm: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE of each row's observed arm only: pred (B, K+1, R), arm (B,), y (B, R)."""
    own = pred.gather(1, arm.view(-1, 1, 1).expand(-1, 1, pred.shape[2])).squeeze(1)  # (B, R)
    return ((own - y) ** 2).sum(1).mean()


class AllArmsNet(UpliftNet):
    """A network whose forward pass yields every arm's outcome; trained on the observed arm only."""

    def outcomes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K+1, R) positive outcomes."""
        raise NotImplementedError

    def loss(self, x, arm, y):
        mse = masked_arm_mse(self.outcomes(x), arm, y)
        return mse, {"mse": float(mse.detach())}

    @torch.no_grad()
    def predict_mu(self, x):
        return self.outcomes(x)


def without_positive_part_zeros(resid: torch.Tensor, target: torch.Tensor, columns: tuple[int, ...] | list[int]
                                ) -> torch.Tensor:
    """``resid`` (m, R) with 0 where a ``columns`` response's ``target`` (m, R) is 0: those rows' zeros
    neither count nor pull (``train.positive_part``: the amount part of a two-part model)."""
    if not len(columns):
        return resid
    drop = torch.zeros(resid.shape[1], dtype=torch.bool, device=resid.device)
    drop[list(columns)] = True
    return resid.masked_fill(drop & (target == 0), 0.0)
