"""The trainer's selection criterion: validation loss picks the model that knows the effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import AllArmsNet
from models.hum import HUM, HUMConfig
from models.train import TensorData, TrainConfig, fit, validation_loss


class Table(AllArmsNet):
    """A fixed model: expected outcomes looked up by the single field's bucket, (V, K+1, R)."""

    def __init__(self, mu: np.ndarray):
        super().__init__()
        self.n_treatments, self.n_responses = mu.shape[1] - 1, mu.shape[2]
        self.mu = torch.nn.Parameter(torch.as_tensor(mu, dtype=torch.float32))

    def outcomes(self, x):
        return self.mu[x[:, 0]]


def _planted(n=40_000, seed=0):
    """One field with 10 buckets; treatment 1 lifts the response by +30 % in buckets 0–4, −30 % in 5–9."""
    rng = np.random.default_rng(seed)
    bucket = rng.integers(0, 10, n)
    arm = rng.integers(0, 2, n)
    base = 1.0 + 0.05 * np.arange(10)  # per bucket
    effect = np.where(np.arange(10) < 5, 0.3, -0.3)
    y = base[bucket] * (1 + effect[bucket] * arm) * rng.lognormal(-0.5 * 0.8**2, 0.8, n)  # heavy noise, mean one
    data = TensorData(torch.from_numpy(bucket[:, None]), torch.from_numpy(arm), torch.from_numpy(y[:, None].astype(np.float32)))
    return data, base, effect


def _train_valid(n: int = 6_000, n_train: int = 4_000) -> tuple[TensorData, TensorData]:
    """The planted data split into training and validation rows."""
    data, _, _ = _planted(n)
    return (TensorData(data.x[:n_train], data.arm[:n_train], data.y[:n_train]),
            TensorData(data.x[n_train:], data.arm[n_train:], data.y[n_train:]))


def test_validation_loss_prefers_the_model_that_knows_the_effect():
    data, base, effect = _planted()
    right = np.stack([base, base * (1 + effect)], 1)[:, :, None]  # (V, 2, 1)
    wrong = np.stack([base, base * (1 - effect)], 1)[:, :, None]  # the effect's sign flipped
    none = np.stack([base, base], 1)[:, :, None]
    losses = [validation_loss(Table(m), data, batch_size=7_000) for m in (right, none, wrong)]
    assert losses[0] < losses[1] < losses[2], losses
    # Batching does not change the row-weighted loss.
    assert validation_loss(Table(right), data, batch_size=3_333) == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("ema", [0.0, 0.9])
@pytest.mark.parametrize("select, key, best", [("loss", "val_loss", min), ("qini", "val_qini", max)])
def test_fit_keeps_the_epoch_the_criterion_picks(select, key, best, ema):
    tr, va = _train_valid()
    torch.manual_seed(0)
    m = HUM(HUMConfig(n_fields=1, vocab_size=10, n_treatments=1, n_responses=1, emb_dim=4, n_experts=2,
                      expert_hidden=(8,), tower_hidden=(4,)))
    rng = np.random.default_rng(0)

    def noisy_qini(delta):  # any score: the test is about which epoch is kept
        return float(rng.random())

    cfg = TrainConfig(epochs=6, batch_size=256, lr=3e-3, min_epochs=1, early_stopping_patience=10, select=select,
                      ema=ema)
    res = fit(m, tr, va, cfg, noisy_qini)
    values = [h[key] for h in res.history]
    assert res.best_epoch == values.index(best(values))
    assert all({"val_loss", "val_qini"} <= set(h) for h in res.history)
    # The model ends with the kept epoch's weights (with ema > 0 their average, which is what was
    # validated): its validation loss is the recorded one.
    assert validation_loss(m, va) == pytest.approx(res.history[res.best_epoch]["val_loss"], rel=1e-5)


def test_fit_with_a_weight_average_validates_and_keeps_the_average_not_the_last_step():
    tr, va = _train_valid()
    nets, runs = [], []
    for ema in (0.0, 0.95):
        torch.manual_seed(0)
        m = HUM(HUMConfig(n_fields=1, vocab_size=10, n_treatments=1, n_responses=1, emb_dim=4, n_experts=2,
                          expert_hidden=(8,), tower_hidden=(4,)))
        cfg = TrainConfig(epochs=3, batch_size=256, lr=3e-3, min_epochs=3, ema=ema)
        runs.append(fit(m, tr, va, cfg, lambda d: 0.0))
        nets.append(m)
    plain, averaged = runs
    # The same steps (same seed): the training losses agree, the validated weights do not.
    assert [h["mse"] for h in plain.history] == pytest.approx([h["mse"] for h in averaged.history], rel=1e-6)
    assert plain.history[-1]["val_loss"] != pytest.approx(averaged.history[-1]["val_loss"], rel=1e-6)
    assert not torch.allclose(nets[0].field_emb.weight, nets[1].field_emb.weight)
    assert validation_loss(nets[1], va) == pytest.approx(averaged.history[-1]["val_loss"], rel=1e-5)


def test_unknown_criterion_is_refused():
    data, _, _ = _planted(100)
    m = Table(np.ones((10, 2, 1)))
    with pytest.raises(ValueError, match="select"):
        fit(m, data, data, TrainConfig(epochs=1, select="auc"), lambda d: 0.0)
