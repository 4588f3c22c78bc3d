"""CPM (CDUM's preference model, spec §3): shapes for any K and R, the Huber loss on the observed
arm, the guidance and indicator paths, and recovery of a planted effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.cpm import CPM, CPMConfig


def _net(k: int, r: int, **kw) -> CPM:
    torch.manual_seed(0)
    return CPM(CPMConfig(n_fields=4, vocab_size=40, n_treatments=k, n_responses=r, emb_dim=8, treat_dim=6,
                         n_experts=2, expert_hidden=(16, 8), tower_hidden=(8,), **kw))


@pytest.mark.parametrize("k, r", [(1, 1), (2, 3), (4, 2)])
def test_outcomes_for_every_arm_and_response(k, r):
    net = _net(k, r)
    x = torch.randint(0, 40, (32, 4))
    mu = net.outcomes(x)
    assert mu.shape == (32, k + 1, r) and (mu > 0).all()
    # one row's outcomes do not depend on the other rows of the batch
    assert torch.allclose(net.outcomes(x[:5]), mu[:5], atol=1e-6)


def test_loss_is_the_huber_loss_of_the_observed_arm_and_reaches_every_path():
    net = _net(2, 2, huber_delta=0.5)
    x, arm = torch.randint(0, 40, (64, 4)), torch.randint(0, 3, (64,))
    y = torch.rand(64, 2) * 3
    loss, parts = net.loss(x, arm, y)
    own = net.outcomes(x)[torch.arange(64), arm]  # (64, 2)
    want = torch.nn.functional.huber_loss(own, y, delta=0.5, reduction="none").sum(1).mean()
    assert torch.allclose(loss, want) and parts["mse"] == pytest.approx(float(((own.detach() - y) ** 2).sum(1).mean()), rel=1e-5)
    loss.backward()
    for name in ("treat.weight", "guide.0.weight", "indicate.2.weight", "field_gate.weight", "gate_g.weight",
                 "experts.first.weight", "head.weight"):
        assert dict(net.named_parameters())[name].grad.abs().sum() > 0, name


def test_arms_differ_only_through_the_treatment_embedding():
    net = _net(2, 1)
    with torch.no_grad():
        net.treat.weight.copy_(net.treat.weight[:1].expand(3, -1))  # every arm the control's embedding
    mu = net.outcomes(torch.randint(0, 40, (16, 4)))
    assert torch.allclose(mu[:, 0], mu[:, 1]) and torch.allclose(mu[:, 0], mu[:, 2])


def test_cpm_recovers_a_planted_heterogeneous_effect():
    """Arm 1 doubles response 0 for users with field-0 value 1 only; arm 2 does nothing."""
    from models.base import relative_uplift
    from models.train import TensorData, TrainConfig, fit

    rng = np.random.default_rng(1)
    n = 12_000
    x = np.c_[rng.integers(0, 3, n), rng.integers(3, 20, n), rng.integers(20, 30, n)]
    arm = rng.integers(0, 3, n)
    planted = x[:, 0] == 1
    y = rng.gamma(8, 1 / 8, (n, 2)).astype(np.float32)
    y[:, 0] *= np.where(planted & (arm == 1), 2.0, 1.0)
    torch.manual_seed(0)
    net = CPM(CPMConfig(n_fields=3, vocab_size=30, n_treatments=2, n_responses=2, emb_dim=8, treat_dim=8,
                        expert_hidden=(32, 16), tower_hidden=(16,)))

    def data(rows):
        return TensorData(torch.from_numpy(x[rows]), torch.from_numpy(arm[rows]), torch.from_numpy(y[rows]))

    tr, va = np.arange(n) < 10_000, np.arange(n) >= 10_000
    fit(net, data(tr), data(va), TrainConfig(epochs=12, batch_size=512, lr=3e-3, min_epochs=12, seed=0, device="cpu"),
        score_fn=lambda delta: 0.0)
    d = relative_uplift(net.predict_mu(torch.from_numpy(x))).numpy()  # (n, 2, 2)
    assert d[planted, 0, 0].mean() > 0.6 and abs(d[~planted, 0, 0].mean()) < 0.15
    assert abs(d[:, 1, 0].mean()) < 0.15 and abs(d[:, 0, 1].mean()) < 0.15
