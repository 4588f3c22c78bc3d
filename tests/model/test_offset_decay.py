"""``offset_weight_decay``: the residual head's offset towers decayed on their own."""

from __future__ import annotations

import numpy as np
import torch

from models.ensemble import Ensemble
from models.hum import HUM, HUMConfig
from models.train import (
    TensorData,
    TrainConfig,
    fit,
    noise_step_scale,
    param_groups,
    scale_wide_steps,
)


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


def test_the_wide_table_gets_its_own_gradient_proportional_step():
    torch.manual_seed(0)
    m = _hum(offset_wide="add")
    wide = {id(p) for p in m.wide_parameters()}
    assert wide == {id(b.wide.weight) for b in m.branches}
    groups = param_groups(m, 0.0, 1e-3, 0.05)
    rest, offsets, own = groups
    assert _ids(own["params"]) == wide and own["lr"] == 0.05 and own["eps"] == 1.0 and own["weight_decay"] == 0.0
    assert not _ids(offsets["params"]) & wide and not _ids(rest["params"]) & wide  # each parameter in one group
    assert _ids(rest["params"]) | _ids(offsets["params"]) | wide == _ids(m.parameters())
    assert len(param_groups(m, 0.0, None, None)) == 1  # not set: Adam like every other parameter
    assert _ids(param_groups(Ensemble([m, _hum(offset_wide="add")]), 0.0, None, 0.05)[1]["params"]) >= wide
    # One step: a wide entry moves by lr × its gradient (×(1 − β1) / bias correction = 1 on the first step),
    # so a faint gradient moves it little, where Adam's first step is lr × sign(gradient) for every entry.
    data = _data(n=512)
    opt = torch.optim.Adam(param_groups(m, 0.0, None, 0.05), lr=1e-3)
    before = m.branches[0].wide.weight.detach().clone()
    m.zero_grad()
    m.loss(data.x, data.arm, data.y)[0].backward()
    grad = m.branches[0].wide.weight.grad.clone()
    opt.step()
    step = m.branches[0].wide.weight.detach() - before
    assert grad.abs().max() < 0.05  # the premise of eps = 1: gradients ≪ 1 (smaller still on real batches)
    assert torch.allclose(step, -0.05 * grad / (grad.abs() + 1.0), atol=1e-9)
    assert step.abs().max() < 0.05 * 0.05  # a twentieth of what Adam's ±lr would be at this lr


def test_fit_passes_the_wide_step_to_its_optimizer():
    data = _data()
    moved = []
    for lr in (None, 1e-2):
        torch.manual_seed(0)
        m = _hum(offset_wide="only")
        fit(m, data, data, TrainConfig(epochs=2, batch_size=256, lr=3e-3, min_epochs=2, offset_wide_lr=lr),
            lambda d: 0.0)
        moved.append(float(sum(w.abs().sum() for w in m.wide_parameters())))
    adam, sgd = moved
    assert 0 < sgd < 0.5 * adam  # the gradient-sized step moves the table less than Adam's normalized one


def test_noise_step_scale_averages_one_and_favours_the_quieter_response():
    y = torch.stack([torch.randn(4_000) * 2.0, torch.randn(4_000) * 1.0], 1)  # variances 4 and 1
    s = noise_step_scale(y)
    assert torch.allclose(s.mean(), torch.tensor(1.0))
    assert abs(float(s[1] / s[0]) - 4.0) < 0.4  # step ∝ 1 / variance
    assert torch.allclose(noise_step_scale(y[:, :1]), torch.ones(1))  # one response: the configured step


def test_noise_step_scales_each_response_column_of_the_wide_table():
    torch.manual_seed(0)
    m = _hum(offset_wide="only")
    scale = torch.tensor([0.25, 2.0])
    data = _data(500)
    grads = []
    for hooked in (False, True):
        hooks = scale_wide_steps(m, scale) if hooked else []
        m.zero_grad()
        m.loss(data.x, data.arm, data.y)[0].backward()
        grads.append([w.grad.clone() for w in m.wide_parameters()])
        for h in hooks:
            h.remove()
    for plain, scaled in zip(*grads, strict=True):
        assert plain.abs().sum() > 0
        assert torch.allclose(scaled, plain * scale)


def test_fit_with_the_noise_step_moves_the_noisier_response_less_and_removes_its_hooks():
    data = _data()
    noisy = TensorData(data.x, data.arm, torch.stack([data.y[:, 0] * 3.0 - 2.0, data.y[:, 1]], 1))  # response 0: 9× the variance
    moved = {}
    for step in ("same", "noise"):
        torch.manual_seed(0)
        m = _hum(offset_wide="only")
        fit(m, noisy, noisy, TrainConfig(epochs=2, batch_size=256, lr=3e-3, min_epochs=2, offset_wide_lr=1e-2,
                                         offset_wide_step=step), lambda d: 0.0)
        w = torch.cat([p.detach() for p in m.wide_parameters()])  # (K·vocab, R)
        moved[step] = w.abs().sum(0)  # (R,)
        assert all(not p._backward_hooks for p in m.wide_parameters())
    ratio_same = float(moved["same"][0] / moved["same"][1])
    ratio_noise = float(moved["noise"][0] / moved["noise"][1])
    assert ratio_noise < 0.5 * ratio_same
