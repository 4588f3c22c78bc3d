"""Baselines: same contract as HUM (shapes, positive outcomes), arm masking, GBM meta-learners."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gbm import GBMMetaLearner
from models.registry import NEURAL_MODELS, Dims, build_net, net_config

HP = dict(emb_dim=8, dropout=0.0, n_experts=2, expert_hidden=[16, 8], tower_hidden=[8], kl_weight=1.0, pooling="sum",
          attention="field", treated_head="outcome", balanced=False, control="mean",
          treated_input="treated", detach_control=False, control_grad=1.0, offset_mean=0.0, experts="branch", offset_init="zero",
          offset_tower="response", huber_delta=None, positive_part=[])


@pytest.mark.parametrize("name", NEURAL_MODELS)
@pytest.mark.parametrize("k, r", [(1, 1), (3, 2)])
def test_every_model_has_the_same_contract(name, k, r):
    torch.manual_seed(0)
    net = build_net(name, net_config(name, Dims(5, 50, k, r), HP))
    x = torch.randint(0, 50, (64, 5))
    arm = torch.randint(0, k + 1, (64,))
    y = torch.rand(64, r) + 0.5
    loss, parts = net.loss(x, arm, y)
    loss.backward()
    assert torch.isfinite(loss) and "mse" in parts
    mu = net.predict_mu(x)
    assert mu.shape == (64, k + 1, r) and (mu > 0).all()


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        net_config("nope", Dims(1, 2, 1, 1), HP)


def _grad_norms(net, x, arm, y):
    net.zero_grad()
    net.loss(x, arm, y)[0].backward()
    return {n: 0.0 if p.grad is None else float(p.grad.abs().sum()) for n, p in net.named_parameters()}


def test_t_learner_rows_train_only_their_arm():
    torch.manual_seed(0)
    net = build_net("t_learner", net_config("t_learner", Dims(5, 50, 2, 1), HP))
    x, y = torch.randint(0, 50, (32, 5)), torch.rand(32, 1)
    g = _grad_norms(net, x, torch.zeros(32, dtype=torch.long), y)
    assert sum(v for n, v in g.items() if n.startswith(("nets.0", "embs.0"))) > 0
    assert sum(v for n, v in g.items() if n.startswith(("nets.1", "nets.2", "embs.1", "embs.2"))) == 0


def test_tarnet_heads_of_unobserved_arms_get_no_gradient():
    torch.manual_seed(0)
    net = build_net("tarnet", net_config("tarnet", Dims(5, 50, 2, 2), HP))
    x, y = torch.randint(0, 50, (32, 5)), torch.rand(32, 2)
    net.zero_grad()
    net.loss(x, torch.full((32,), 1, dtype=torch.long), y)[0].backward()
    w = net.heads.out.weight.grad  # (groups=arms, d, R)
    assert w[1].abs().sum() > 0 and w[0].abs().sum() == 0 and w[2].abs().sum() == 0


@pytest.mark.parametrize("kind", ["s", "t"])
def test_gbm_meta_learner_finds_a_planted_effect(kind):
    rng = np.random.default_rng(0)
    n = 4000
    x = np.c_[rng.integers(0, 4, n), rng.integers(0, 30, n)]
    arm = rng.integers(0, 3, n)
    y = np.c_[(1 + 0.5 * ((x[:, 0] == 1) & (arm == 1))) * rng.gamma(5, 0.2, n), rng.gamma(5, 0.2, n)]
    g = GBMMetaLearner(kind, n_categorical=1, max_iter=60).fit(x, arm, y)
    d = g.predict_delta(x)
    assert d.shape == (n, 2, 2)
    planted = x[:, 0] == 1
    assert d[planted, 0, 0].mean() - d[~planted, 0, 0].mean() > 0.3
    assert abs(d[:, 1, 1].mean()) < 0.1


def test_hum_names_hum_paper_is_the_spec_whatever_the_configuration():
    from models.hum import HUM
    from models.registry import PAPER_HUM

    tuned = {**HP, "pooling": "scale", "attention": "target", "treated_head": "residual", "balanced": True,
             "control": "own", "offset_wide": "add", "huber_delta": 0.5, "positive_part": [1]}
    dims = Dims(5, 50, 2, 2)
    hum, paper, no_kl = (net_config(n, dims, tuned) for n in ("hum", "hum_paper", "hum_no_kl"))
    assert {k: hum[k] for k in PAPER_HUM} == {k: tuned[k] for k in PAPER_HUM}  # hum: as configured
    assert {k: paper[k] for k in PAPER_HUM} == PAPER_HUM  # hum_paper: always the spec
    assert no_kl["kl_weight"] == 0.0 and {k: no_kl[k] for k in PAPER_HUM} == {k: tuned[k] for k in PAPER_HUM}
    assert hum["kl_weight"] == paper["kl_weight"] == 1.0
    net = build_net("hum_paper", paper)
    assert isinstance(net, HUM) and net.cfg.pooling == "sum" and net.cfg.attention == "field"
