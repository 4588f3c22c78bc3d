"""The moving average of the weights: its update rule and swapping it in and out (fit's use of it:
tests/model/test_selection.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.averaging import WeightAverage


def _set(m: nn.Linear, value: float) -> None:
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(-value)


def test_the_average_follows_the_warmed_up_decay_and_swaps_in_and_out():
    m = nn.Linear(3, 1)
    _set(m, 1.0)
    avg = WeightAverage(m, decay=0.5)
    _set(m, 2.0)
    avg.update()  # d = min(0.5, 1/10) = 0.1: 0.1·1 + 0.9·2
    assert torch.allclose(avg.shadow[0], torch.full((1, 3), 1.9))
    _set(m, 4.0)
    avg.update()  # d = min(0.5, 2/11)
    d = 2 / 11
    expected = d * 1.9 + (1 - d) * 4.0
    assert torch.allclose(avg.shadow[0], torch.full((1, 3), expected))
    assert torch.allclose(avg.shadow[1], torch.full((1,), -expected))
    for _ in range(50):
        avg.update()  # the decay caps at 0.5: the average closes in on the constant weights
    assert torch.allclose(avg.shadow[0], torch.full((1, 3), 4.0), atol=1e-6)
    _set(m, 8.0)
    with avg.applied():
        assert torch.allclose(m.weight, torch.full((1, 3), 4.0), atol=1e-6)
        out = m(torch.ones(1, 3))
        assert out.requires_grad  # the block runs with autograd as the caller had it
    assert torch.equal(m.weight, torch.full((1, 3), 8.0)) and torch.equal(m.bias, torch.full((1,), -8.0))


def test_the_average_restores_the_weights_when_the_block_fails():
    m = nn.Linear(2, 2)
    own = m.weight.detach().clone()
    avg = WeightAverage(m, decay=0.9)
    _set(m, 3.0)
    with pytest.raises(RuntimeError), avg.applied():
        raise RuntimeError("validation failed")
    assert torch.equal(m.weight, torch.full((2, 2), 3.0)) and not torch.equal(m.weight, own)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(1, 1), decay)
