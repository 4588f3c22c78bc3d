"""Exponential moving average of a network's weights over training steps (Polyak averaging).

The weights a noisy run ends on depend on its last few batches; their running average over
the last few hundred steps does much less, so two networks from different seeds agree more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """θ̄ ← d·θ̄ + (1 − d)·θ after every step, with the warm-up d_t = min(decay, (1 + t) / (10 + t)),
    so the average forgets the initial weights within a few steps on a short run."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimizer step)."""
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)
        self.steps += 1

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own again after it."""
        own = [p.detach().clone() for p in self.params]
        torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            torch._foreach_copy_([p.data for p in self.params], own)
