"""``offset_weight_decay``: the residual head's offset towers decayed on their own."""

from __future__ import annotations

import numpy as np
import torch

from models.ensemble import Ensemble
from models.hum import HUM, HUMConfig
from models.train import TensorData, TrainConfig, fit, param_groups


def _hum(**kw) -> HUM:
    base = dict(n_fields=3, vocab_size=30, n_treatments=2, n_responses=2, emb_dim=8, n_experts=2,
                expert_hidden=(16, 8), tower_hidden=(8,), treated_head="residual", treated_input="control")
    return HUM(HUMConfig(**{**base, **kw}))


def _data(n: int = 3_000, seed: int = 0) -> TensorData:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, (n, 3))
    arm = rng.integers(0, 3, n)
    y = (1.0 + 0.1 * (x[:, :1] % 3) * (arm[:, None] == 1)) * rng.lognormal(-0.08, 0.4, (n, 2))
    return TensorData(torch.from_numpy(x), torch.from_numpy(arm), torch.from_numpy(y.astype(np.float32)))


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_the_offset_group_is_every_branch_offset_tower_and_nothing_else():
    torch.manual_seed(0)
    m = _hum()
    groups = param_groups(m, 0.0, 1e-3)
    rest, offsets = groups
    assert offsets["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    assert _ids(offsets["params"]) == _ids(p for b in m.branches for p in b.uplift.parameters())
    assert not _ids(rest["params"]) & _ids(offsets["params"])
    assert _ids(rest["params"]) | _ids(offsets["params"]) == _ids(m.parameters())
    # Not set: one group at the model's weight decay.
    (one,) = param_groups(m, 1e-5, None)
    assert _ids(one["params"]) == _ids(m.parameters()) and one["weight_decay"] == 1e-5
    # An ensemble's offset group holds every member's offset towers.
    ens = Ensemble([_hum(), _hum()])
    assert _ids(param_groups(ens, 0.0, 1e-3)[1]["params"]) == _ids(
        p for member in ens.members for b in member.branches for p in b.uplift.parameters())


def test_a_model_without_offset_towers_gets_one_group():
    torch.manual_seed(0)
    m = _hum(treated_head="outcome", treated_input="treated")  # the spec's treated path: no offset
    assert m.offset_parameters() == []
    (one,) = param_groups(m, 0.0, 1e-3)
    assert _ids(one["params"]) == _ids(m.parameters())


def test_fit_decays_only_the_offset_towers():
    data = _data()
    nets = []
    for decay in (None, 5.0):
        torch.manual_seed(0)
        m = _hum()
        fit(m, data, data, TrainConfig(epochs=3, batch_size=256, lr=3e-3, min_epochs=3, offset_weight_decay=decay),
            lambda d: 0.0)
        nets.append(m)
    plain, decayed = nets

    def norm(m: HUM, part: str) -> float:
        return float(sum((p ** 2).sum() for b in m.branches for p in getattr(b, part).parameters()) ** 0.5)

    # Strong decay pulls the offset towers' weights in; the control towers still learn at full size.
    assert norm(decayed, "uplift") < 0.75 * norm(plain, "uplift")  # Adam: at most lr per step
    assert norm(decayed, "towers") > 0.9 * norm(plain, "towers")
