"""HUM and its variants: shapes, masking of the loss by arm, the KL term, δ, fused inference,
determinism, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import relative_uplift
from models.hum import HUM, HUMConfig, field_layout, fusable, fused_outcomes, gate_kl
from models.layers import gate_mix, positive
from models.train import TensorData, TrainConfig, fit, predict_uplift


def _cfg(**kw) -> HUMConfig:
    base = dict(n_fields=4, vocab_size=40, n_treatments=2, n_responses=3, emb_dim=8,
                n_experts=3, expert_hidden=(16, 8), tower_hidden=(8,))
    base.update(kw)
    return HUMConfig(**base)


def _batch(n=32, f=4, vocab=40, arms=3, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, f), generator=g), torch.randint(0, arms, (n,), generator=g), torch.rand(n, r, generator=g)


ARCHS = [dict(pooling=p, attention=a, treated_head=h, balanced=b, control=c)
         for p in ("sum", "scale") for a in ("field", "target") for h in ("outcome", "residual")
         for b, c in ((False, "mean"), (True, "own"))] + [
    dict(pooling="scale", attention="field", treated_head="residual", balanced=True, control="own", offset_mean=0.5),
    dict(pooling="scale", attention="field", treated_head="residual", balanced=True, control="own",
         treated_input="control", offset_tower="joint"),
    dict(pooling="sum", attention="target", treated_head="residual", balanced=True, control="own", offset_tower="joint"),
    dict(pooling="scale", attention="field", treated_head="residual", balanced=True, control="own",
         treated_input="control", offset_tower="joint", offset_mean=1.0, offset_wide="add"),
    dict(pooling="sum", attention="field", treated_head="residual", balanced=True, control="own", offset_wide="only"),
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a.values())))
@pytest.mark.parametrize("k, r", [(1, 1), (2, 3), (4, 2)])
def test_shapes_for_any_k_and_r(k, r, arch):
    m = HUM(_cfg(n_treatments=k, n_responses=r, **arch))
    x, arm, y = _batch(arms=k + 1, r=r)
    treated, control, gates = m.forward_all(x)
    assert treated.shape == (32, k, r) and control.shape == (32, k, r) and gates.shape == (32, k, r, 3)
    mu = m.predict_mu(x)
    assert mu.shape == (32, k + 1, r) and (mu > 0).all()
    assert relative_uplift(mu).shape == (32, k, r)
    loss, parts = m.loss(x, arm, y)
    assert loss.ndim == 0 and set(parts) == {"mse", "kl"}


def _grads(m: HUM, x, arm, y) -> dict[str, torch.Tensor]:
    m.zero_grad()
    m.loss(x, arm, y)[0].backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in m.named_parameters()}


def test_control_rows_send_no_gradient_into_treated_inputs():
    torch.manual_seed(0)
    m = HUM(_cfg())
    x, _, y = _batch()
    g = _grads(m, x, torch.zeros(32, dtype=torch.long), y)
    t = g["treat_emb.weight"]
    assert t[0].abs().sum() > 0  # the control embedding learns
    assert t[1:].abs().sum() == 0  # treated embeddings get nothing from control rows
    for k in range(2):  # control rows train every branch's control path
        assert g[f"branches.{k}.towers.out.weight"].abs().sum() > 0


@pytest.mark.parametrize("head", ["outcome", "residual"])
def test_treated_rows_train_only_their_branch_and_treatment(head):
    torch.manual_seed(0)
    m = HUM(_cfg(treated_head=head))
    with torch.no_grad():  # the residual head starts at exactly 0: move it so gradients flow
        for prm in m.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    x, _, y = _batch()
    g = _grads(m, x, torch.full((32,), 2, dtype=torch.long), y)  # all rows under treatment 2
    t = g["treat_emb.weight"]
    assert t[2].abs().sum() > 0 and t[1].abs().sum() == 0
    # The spec's treated path stands alone; a residual one is an offset to the control path,
    # which treated rows then train too.
    assert (t[0].abs().sum() > 0) == (head == "residual")
    assert all(v.abs().sum() == 0 for n, v in g.items() if n.startswith("branches.0."))
    assert any(v.abs().sum() > 0 for n, v in g.items() if n.startswith("branches.1."))
    assert m.loss(x, torch.full((32,), 2, dtype=torch.long), y)[1]["kl"] == 0.0


def test_kl_is_zero_iff_the_control_gates_agree():
    same = torch.softmax(torch.randn(1, 5, 2, 3), -1).expand(3, -1, -1, -1)
    assert torch.allclose(gate_kl(same), torch.zeros(5, 2), atol=1e-6)
    diff = torch.softmax(torch.randn(3, 5, 2, 3), -1)
    assert (gate_kl(diff) > 0).all()
    # In the model: branches with identical weights have identical control gates.
    m = HUM(_cfg())
    m.branches[1].load_state_dict(m.branches[0].state_dict())
    x, _, y = _batch()
    assert m.loss(x, torch.zeros(32, dtype=torch.long), y)[1]["kl"] == pytest.approx(0.0, abs=1e-7)
    m2 = HUM(_cfg())
    assert m2.loss(x, torch.zeros(32, dtype=torch.long), y)[1]["kl"] > 0
    # kl_weight scales the term into the total.
    m3 = HUM(_cfg(kl_weight=0.0))
    m3.load_state_dict(m2.state_dict())
    l2, p2 = m2.loss(x, torch.zeros(32, dtype=torch.long), y)
    l3, _ = m3.loss(x, torch.zeros(32, dtype=torch.long), y)
    assert float((l2 - l3).detach()) == pytest.approx(p2["kl"], rel=1e-5)


def test_delta_is_treated_over_mean_control_minus_one():
    m = HUM(_cfg())
    x, _, _ = _batch()
    treated, control, _ = m.forward_all(x)
    delta = relative_uplift(m.predict_mu(x))
    expect = treated / control.mean(1, keepdim=True) - 1
    assert torch.allclose(delta, expect, atol=1e-6)
    # The control prediction lies between the branches' min and max.
    y0 = m.predict_mu(x)[:, 0]
    assert (y0 >= control.min(1).values - 1e-6).all() and (y0 <= control.max(1).values + 1e-6).all()


@pytest.mark.parametrize("head", ["outcome", "residual", "residual-1.0", "residual-0.5", "residual-0-joint",
                                  "residual-0.5-joint-control", "residual-1.0-joint-control-add",
                                  "residual-0-response-treated-only"])
@pytest.mark.parametrize("pooling", ["sum", "scale"])
@pytest.mark.parametrize("k, r, experts, towers", [
    (1, 1, (16,), ()), (2, 3, (16, 8), (8,)), (3, 2, (12, 10, 6), (8, 4)),
])
def test_fused_inference_equals_the_branch_by_branch_forward(k, r, experts, towers, head, pooling):
    torch.manual_seed(k)
    head, base, tower, treated_input, wide = (head.split("-") + ["0", "response", "treated", "none"])[:5]
    m = HUM(_cfg(n_treatments=k, n_responses=r, expert_hidden=experts, tower_hidden=towers, treated_head=head,
                 pooling=pooling, balanced=head == "residual", offset_mean=float(base), offset_tower=tower,
                 treated_input=treated_input, offset_wide=wide)).eval()
    assert fusable(m.cfg)
    with torch.no_grad():  # trained-looking weights: the init leaves biases and attention near-symmetric
        for prm in m.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x, _, _ = _batch(n=257, r=r)
    treated, control, _ = m.forward_all(x)
    fused_t, fused_c = fused_outcomes(m, x)
    assert fused_t.shape == treated.shape == (257, k, r)
    assert torch.allclose(fused_t, treated, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fused_c, control, rtol=1e-5, atol=1e-6)
    # predict_mu takes the fused path in eval mode, the branch-by-branch one in training mode.
    expect = torch.cat([control.mean(1, keepdim=True), treated], 1)
    assert torch.allclose(m.predict_mu(x), expect, rtol=1e-5, atol=1e-6)
    assert torch.allclose(m.train().predict_mu(x), expect, rtol=1e-5, atol=1e-6)


def test_own_control_shifts_the_consensus_control_by_the_branch_difference():
    torch.manual_seed(1)
    m = HUM(_cfg(control="own")).eval()
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x, _, _ = _batch()
    treated, control, _ = m.forward_all(x)
    mu = m.predict_mu(x)
    y0 = control.mean(1)
    assert torch.allclose(mu[:, 0], y0, atol=1e-6)
    assert torch.allclose(mu[:, 1:] - y0[:, None], (treated - control).clamp_min(1e-4 - y0[:, None]), atol=1e-5)


def test_variants_without_a_fused_path_predict_with_the_module_forward():
    for arch in ARCHS:
        m = HUM(_cfg(**arch)).eval()
        assert fusable(m.cfg) == (arch["attention"] == "field")
        if fusable(m.cfg) or arch["control"] == "own":
            continue
        x, _, _ = _batch()
        treated, control, _ = m.forward_all(x)
        assert torch.allclose(m.predict_mu(x), torch.cat([control.mean(1, keepdim=True), treated], 1), atol=1e-6)


def test_residual_head_starts_at_no_effect_and_its_delta_is_the_offset():
    torch.manual_seed(0)
    m = HUM(_cfg(treated_head="residual")).eval()
    x, _, _ = _batch()
    treated, control, _ = m.forward_all(x)
    assert torch.equal(treated, control)  # u^k = 0 at init: ŷ^k = ŷ^{0,k}
    with torch.no_grad():
        m.branches[1].uplift.out.bias.fill_(0.2)  # a constant offset on branch 2's treated logits
    treated2, control2, _ = m.forward_all(x)
    assert torch.allclose(treated2[:, 0], control2[:, 0]) and not torch.allclose(treated2[:, 1], control2[:, 1])
    softplus = torch.nn.functional.softplus
    z_c = torch.log(torch.expm1(control2[:, 1] - 1e-4))
    assert torch.allclose(treated2[:, 1], softplus(z_c + 0.2) + 1e-4, atol=1e-5)


def test_target_attention_selects_fields_per_user_and_field_attention_does_not():
    torch.manual_seed(0)
    x, _, _ = _batch()
    for attention in ("field", "target"):
        m = HUM(_cfg(attention=attention))
        br = m.branches[0]
        a = br.field_weights(m.field_emb(x), m.treat_emb.weight[1])
        a = a.expand(32, -1) if a.dim() == 1 else a
        assert a.shape == (32, 4) and torch.allclose(a.sum(1), torch.ones(32))
        per_user = (a - a[:1]).abs().max() > 1e-4
        assert per_user == (attention == "target")
    # Target attention with a zero query reduces to the spec's field attention.
    m = HUM(_cfg(attention="target"))
    with torch.no_grad():
        m.branches[0].query.weight.zero_()
        m.branches[0].query.bias.zero_()
    a = m.branches[0].field_weights(m.field_emb(x), m.treat_emb.weight[1])
    assert torch.allclose(a, torch.softmax(m.branches[0].attn(m.treat_emb.weight[1]), -1).expand(32, -1))


def _planted(n=6000, seed=0):
    """Two fields; treatment 1 lifts response 0 by 60 % only where field 0 == 1."""
    rng = np.random.default_rng(seed)
    f0, f1 = rng.integers(0, 4, n), rng.integers(0, 5, n)
    arm = rng.integers(0, 3, n)
    lift = 1 + 0.6 * ((f0 == 1) & (arm == 1))
    y = np.stack([lift * rng.gamma(4, 0.25, n), rng.gamma(4, 0.25, n)], 1).astype(np.float32)
    x = np.stack([f0, 4 + f1], 1)
    return TensorData(torch.from_numpy(x), torch.from_numpy(arm), torch.from_numpy(y)), f0


def _fit_small(seed: int, **arch):
    data, f0 = _planted()
    tr, va = [TensorData(data.x[s], data.arm[s], data.y[s]) for s in (slice(0, 4500), slice(4500, None))]
    torch.manual_seed(seed)  # weights are drawn at construction
    m = HUM(_cfg(n_fields=2, vocab_size=9, n_responses=2, **arch))
    truth = (f0[4500:] == 1).astype(float)

    def score(delta):  # the gap in δ(t1, r0) between planted and other users (truth: 0.6)
        return float(delta[truth == 1, 0, 0].mean() - delta[truth == 0, 0, 0].mean())

    cfg = TrainConfig(epochs=14, batch_size=512, lr=3e-3, seed=seed, early_stopping_patience=20)
    res = fit(m, tr, va, cfg, score)
    return m, res, va, truth


@pytest.mark.parametrize("arch", [{}, dict(attention="target", treated_head="residual")], ids=["spec", "default"])
def test_training_is_deterministic_and_finds_a_planted_effect(arch):
    m1, r1, va, truth = _fit_small(3, **arch)
    m2, r2, _, _ = _fit_small(3, **arch)
    for (n, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    assert r1.history == r2.history
    from fulcrum.metrics import qini_auc_score

    delta = predict_uplift(m1, va.x)
    rows = (va.arm == 0) | (va.arm == 1)
    y, t = va.y[rows, 0].numpy(), (va.arm[rows] == 1).numpy().astype(int)
    q = qini_auc_score(y, delta[rows.numpy(), 0, 0], t)
    # With noisy continuous y even the oracle ranking is far from the "perfect" curve:
    # compare with the oracle (ranking by the planted truth) and with random scores.
    oracle = qini_auc_score(y, truth[rows.numpy()] + 1e-6 * np.arange(rows.sum().item()), t)
    rand = np.mean([qini_auc_score(y, np.random.default_rng(i).random(len(y)), t) for i in range(20)])
    assert q > 0.7 * oracle and q > rand + 0.5 * (oracle - rand), (q, oracle, rand)
    gap = delta[truth == 1, 0, 0].mean() - delta[truth == 0, 0, 0].mean()
    assert 0.45 < gap < 0.75, gap  # the planted relative lift is 0.6
    assert abs(delta[truth == 0, 0, 0].mean()) < 0.1  # no effect elsewhere


@pytest.mark.parametrize("head", ["outcome", "residual", "residual-0.5", "residual-0-joint", "residual-0.5-joint",
                                  "residual-1.0-joint-add", "residual-0-response-only"])
@pytest.mark.parametrize("pooling,attention", [("scale", "field"), ("sum", "field"), ("sum", "target")])
def test_loss_equals_the_masked_errors_of_the_full_forward(head, pooling, attention):
    """The loss's selective passes (embedding_bag pooling, one experts run per branch) give forward_all's numbers."""
    torch.manual_seed(2)
    head, base, tower, wide = (head.split("-") + ["0", "response", "none"])[:4]
    m = HUM(_cfg(treated_head=head, pooling=pooling, attention=attention, balanced=True, offset_mean=float(base),
                 offset_tower=tower, offset_wide=wide))
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    x, arm, y = _batch(n=64)
    treated, control, gates = m.forward_all(x)
    sse = 0.0
    for i in range(64):
        a = int(arm[i])
        if a == 0:  # a control row trains every branch's control head
            sse += float(((control[i] - y[i]) ** 2).sum())
        else:
            sse += float(((treated[i, a - 1] - y[i]) ** 2).sum())
    ctrl = arm == 0
    kl = float(gate_kl(gates[ctrl].transpose(0, 1)).sum()) / 64
    loss, parts = m.loss(x, arm, y)
    assert parts["mse"] == pytest.approx(sse / 64, rel=1e-5)
    assert parts["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-8)
    assert float(loss) == pytest.approx(sse / 64 + kl, rel=1e-5)


@pytest.mark.parametrize("offset_mean", [0.0, 1.0])
@pytest.mark.parametrize("pooling,attention,treated_input",
                         [("sum", "field", "treated"), ("sum", "target", "treated"), ("sum", "field", "control"),
                          ("scale", "field", "control")])
def test_the_fast_training_loss_has_the_full_forwards_gradients(pooling, attention, treated_input, offset_mean):
    """embedding_bag pooling and the shared experts run train the same weights as the plain forward."""
    torch.manual_seed(3)
    m = HUM(_cfg(treated_head="residual", pooling=pooling, attention=attention, balanced=True, kl_weight=0.5,
                 treated_input=treated_input, offset_mean=offset_mean))
    x, arm, y = _batch(n=96)
    loss, _ = m.loss(x, arm, y)
    fast = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    treated, control, gates = m.forward_all(x)
    ctrl = arm == 0
    sse = ((control[ctrl] - y[ctrl][:, None]) ** 2).sum()
    for k in range(1, 3):
        sse = sse + ((treated[arm == k, k - 1] - y[arm == k]) ** 2).sum()
    ref = sse / 96 + 0.5 * gate_kl(gates[ctrl].transpose(0, 1)).sum() / 96
    slow = torch.autograd.grad(ref, list(m.parameters()), allow_unused=True)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    for (name, _), a, b in zip(m.named_parameters(), fast, slow, strict=True):
        if b is None:  # a parameter the plain forward does not use (e.g. treated towers of the outcome head)
            continue
        assert a is not None, name
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("pooling", ["sum", "scale"])
def test_the_shared_pass_variant_fuses_to_the_same_outcomes(pooling):
    torch.manual_seed(5)
    m = HUM(_cfg(treated_head="residual", treated_input="control", pooling=pooling, balanced=True)).eval()
    assert fusable(m.cfg)
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x, _, _ = _batch(n=130)
    treated, control, _ = m.forward_all(x)
    fused_t, fused_c = fused_outcomes(m, x)
    assert torch.allclose(fused_t, treated, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fused_c, control, rtol=1e-5, atol=1e-6)


def test_the_shared_pass_variant_reads_the_control_representation():
    torch.manual_seed(4)
    m = HUM(_cfg(treated_head="residual", treated_input="control")).eval()
    x, _, _ = _batch()
    treated, control, _ = m.forward_all(x)
    assert torch.equal(treated, control)  # u^k = 0 at init
    with torch.no_grad():
        m.branches[0].towers.out.bias.add_(0.3)  # the control head moves: branch 1's treated outcome moves with it
    t2, c2, _ = m.forward_all(x)
    assert torch.allclose(t2[:, 0], c2[:, 0]) and not torch.allclose(t2[:, 0], treated[:, 0])
    mu = m.predict_mu(x)
    assert mu.shape == (x.shape[0], 3, 3) and torch.isfinite(mu).all()
    with pytest.raises(ValueError, match="needs treated_head='residual'"):
        HUM(_cfg(treated_head="outcome", treated_input="control"))


@pytest.mark.parametrize("detach", [False, True])
def test_detached_control_leaves_the_control_path_to_control_rows(detach):
    torch.manual_seed(5)
    m = HUM(_cfg(treated_head="residual", detach_control=detach, kl_weight=0.0))
    x, _, y = _batch(n=64)
    arm = torch.ones(64, dtype=torch.long)  # treated rows of branch 1 only
    loss, _ = m.loss(x, arm, y)
    loss.backward()
    br = m.branches[0]
    assert br.uplift.out.weight.grad is not None and br.uplift.out.weight.grad.abs().sum() > 0
    control_grad = br.towers.out.weight.grad
    moved = control_grad is not None and float(control_grad.abs().sum()) > 0
    assert moved != detach  # attached: treated rows also fit the control logit; detached: they do not


def test_control_grad_scales_the_treated_rows_gradient_into_the_control_path_only():
    x, _, y = _batch(n=64)
    arm = torch.ones(64, dtype=torch.long)  # treated rows of branch 1 only: the control towers learn from them alone
    grads, losses = {}, {}
    for share in (1.0, 0.25):
        torch.manual_seed(5)
        m = HUM(_cfg(treated_head="residual", control_grad=share, kl_weight=0.0))
        loss, _ = m.loss(x, arm, y)
        loss.backward()
        br = m.branches[0]
        grads[share] = (br.towers.out.weight.grad.clone(), br.uplift.out.weight.grad.clone())
        losses[share] = float(loss)
    assert losses[1.0] == losses[0.25]  # the value is untouched
    assert torch.allclose(grads[0.25][0], 0.25 * grads[1.0][0], rtol=1e-5, atol=1e-9)
    assert torch.equal(grads[0.25][1], grads[1.0][1])  # the offset's gradient is the same


@pytest.mark.parametrize("offset_mean", [0.0, 0.5, 1.0])
def test_a_shared_offset_base_lets_every_arms_rows_train_every_branchs_control_path(offset_mean):
    torch.manual_seed(5)
    m = HUM(_cfg(treated_head="residual", treated_input="control", offset_mean=offset_mean, kl_weight=0.0,
                 control="own"))
    x, _, y = _batch(n=64)
    arm = torch.ones(64, dtype=torch.long)  # arm-1 rows only
    m.loss(x, arm, y)[0].backward()
    other = m.branches[1].towers.out.weight.grad  # branch 2's control head
    moved = other is not None and float(other.abs().sum()) > 0
    assert moved == (offset_mean > 0)
    assert float(m.branches[0].towers.out.weight.grad.abs().sum()) > 0  # its own branch's control head either way
    # control="own": ŷ^k = ŷ^{0,*} + softplus(b^k + u^k) − softplus(b^k), b^k the (partly) shared base.
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
        e_x = m.field_emb(x)
        z = [m._branch(br, x, e_x, k) for k, br in enumerate(m.branches, start=1)]
        z_c = torch.stack([c for _, c, _ in z], 1)  # (B, K, R)
        base = (1 - offset_mean) * z_c + offset_mean * z_c.mean(1, keepdim=True)
        treated = positive(base + torch.stack([u for u, _, _ in z], 1))
        control = positive(z_c)
        y0 = control.mean(1, keepdim=True)
        own = y0 + treated - positive(base)  # control="own": treated − the control its offset sits on
        expect = torch.cat([y0, own], 1)
    assert torch.allclose(m.eval().predict_mu(x), expect, rtol=1e-4, atol=1e-5)


def test_shared_experts_are_one_module_and_the_fused_path_still_matches():
    torch.manual_seed(6)
    own, shared = HUM(_cfg(treated_head="residual")), HUM(_cfg(treated_head="residual", experts="shared"))
    assert shared.branches[0].experts is shared.branches[1].experts
    n_exp = sum(p.numel() for p in own.branches[0].experts.parameters())
    assert sum(p.numel() for p in own.parameters()) - sum(p.numel() for p in shared.parameters()) == n_exp
    with torch.no_grad():
        for prm in shared.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    shared.eval()
    x, _, _ = _batch()
    treated, control, _ = shared.forward_all(x)
    fused_t, fused_c = fused_outcomes(shared, x)
    assert torch.allclose(fused_t, treated, rtol=1e-5, atol=1e-6) and torch.allclose(fused_c, control, rtol=1e-5, atol=1e-6)
    # A checkpoint round trip keeps the sharing.
    again = HUM(shared.cfg)
    again.load_state_dict(shared.state_dict())
    assert again.branches[0].experts is again.branches[1].experts
    assert torch.allclose(again.eval().predict_mu(x), shared.predict_mu(x))


SIZES = (7, 13, 9, 11)  # ids per field, in id order: 40 ids over 4 fields


def _laid_batch(n=96, arms=3, r=3, seed=5):
    """Field ids as the encoder lays them out: field j's ids follow field j−1's."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *np.cumsum(SIZES)[:-1]])
    x = torch.stack([torch.randint(0, s, (n,), generator=g) for s in SIZES], 1) + offsets
    return x, torch.randint(0, arms, (n,), generator=g), torch.rand(n, r, generator=g)


@pytest.mark.parametrize("offset_tower, offset_mean", [("response", 0.0), ("joint", 0.0), ("joint", 1.0)])
@pytest.mark.parametrize("treated_input", ["treated", "control"])
@pytest.mark.parametrize("k, r", [(1, 1), (2, 3), (3, 2)])
def test_scale_pooling_from_the_id_table_trains_and_scores_as_the_flat_inputs(k, r, treated_input, offset_tower,
                                                                             offset_mean):
    """With the id layout known, scale pooling's first layers come from a per-id table: same loss,
    same gradients, same scores as the (B, f·d) inputs."""
    kw = dict(n_treatments=k, n_responses=r, pooling="scale", treated_head="residual", balanced=True, kl_weight=0.5,
              treated_input=treated_input, offset_init="uniform", offset_tower=offset_tower, offset_mean=offset_mean)
    flat, tabled = HUM(_cfg(**kw)), HUM(_cfg(**kw, field_sizes=SIZES))
    assert tabled.branches[0].tabled and not flat.branches[0].tabled
    with torch.no_grad():
        for prm in flat.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    tabled.load_state_dict(flat.state_dict())
    x, arm, y = _laid_batch(arms=k + 1, r=r)
    loss_flat, _ = flat.loss(x, arm, y)
    loss_tab, _ = tabled.loss(x, arm, y)
    assert float(loss_tab.detach()) == pytest.approx(float(loss_flat.detach()), rel=1e-6)
    grads = [torch.autograd.grad(lo, list(m.parameters())) for lo, m in ((loss_flat, flat), (loss_tab, tabled))]
    for (name, _), a, b in zip(flat.named_parameters(), *grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name
    flat.eval(), tabled.eval()
    assert torch.allclose(tabled.predict_mu(x), flat.predict_mu(x), rtol=1e-5, atol=1e-6)
    if fusable(tabled.cfg):
        treated, control, _ = tabled.forward_all(x)
        fused_t, fused_c = fused_outcomes(tabled, x)
        assert torch.allclose(fused_t, treated, rtol=1e-5, atol=1e-6)
        assert torch.allclose(fused_c, control, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("r,m", [(1, 1), (2, 3), (3, 4)])
def test_gate_mix_matches_the_broadcast_mixture_and_its_gradients(r, m):
    g = torch.Generator().manual_seed(5)
    gates = torch.softmax(torch.randn(9, r, m, generator=g, dtype=torch.float64), -1).requires_grad_()
    p = torch.randn(9, m, 4, generator=g, dtype=torch.float64).requires_grad_()
    ref = (gates[..., None] * p[:, None]).sum(2)  # (B, R, H): Σ_m g_rm p_mh
    assert torch.allclose(gate_mix(gates, p), ref)
    assert torch.autograd.gradcheck(gate_mix, (gates, p))  # the hand-written backward against finite differences
    weight = torch.randn(9, r, 4, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((gate_mix(gates, p) * weight).sum(), (gates, p))
    theirs = torch.autograd.grad((ref * weight).sum(), (gates, p))
    assert all(torch.allclose(a, b) for a, b in zip(ours, theirs))
    # Expert-major outputs (M, B, H) handed in as their (B, M, H) view: same mixture, same gradients.
    p_major = p.detach().transpose(0, 1).contiguous().requires_grad_()
    mixed = gate_mix(gates, p_major.transpose(0, 1))
    assert torch.equal(mixed, gate_mix(gates, p))
    (grad_major,) = torch.autograd.grad((mixed * weight).sum(), p_major)
    assert torch.allclose(grad_major.transpose(0, 1), theirs[1])


def test_field_layout_places_every_id_in_its_field_and_refuses_a_layout_that_misses_ids():
    pad, pos = field_layout(SIZES, 40, 4)
    assert pad.shape == (4, 13)
    assert torch.equal(pad.flatten()[pos], torch.arange(40))  # every id found at its own grid cell
    assert pad[0, :7].tolist() == list(range(7)) and pad[1, 0] == 7 and pad[3, 10] == 39
    with pytest.raises(ValueError, match="vocab_size 41"):
        field_layout(SIZES, 41, 4)
    with pytest.raises(ValueError, match="5 fields"):
        field_layout(SIZES, 40, 5)


def test_a_zero_offset_layer_starves_the_offset_tower_and_a_uniform_one_does_not():
    """offset_init=zero: δ = 0 at the start but the offset tower's hidden layers get no gradient
    (the reason weak effects went unlearned); uniform: δ starts small and every layer learns."""
    x, arm, y = _batch(n=128)
    for init in ("zero", "uniform"):
        torch.manual_seed(6)
        m = HUM(_cfg(treated_head="residual", balanced=True, control="own", offset_init=init))
        loss, _ = m.loss(x, arm, y)
        loss.backward()
        hidden = m.branches[0].uplift.hidden[0].weight.grad
        delta = relative_uplift(m.eval().predict_mu(x))
        if init == "zero":
            assert float(hidden.abs().max()) == 0.0
            assert float(delta.abs().max()) < 1e-5
        else:
            assert float(hidden.abs().max()) > 1e-5
            assert 0 < float(delta.abs().max()) < 0.5


@pytest.mark.parametrize("tower", ["response", "joint"])
def test_a_small_offset_start_is_the_uniform_one_scaled_down_and_still_trains_every_layer(tower):
    x, arm, y = _batch(n=128)
    nets = {}
    for init in ("uniform", "small"):
        torch.manual_seed(6)
        nets[init] = HUM(_cfg(treated_head="residual", treated_input="control", balanced=True, control="own",
                              offset_tower=tower, offset_init=init))
    for big, small in zip(nets["uniform"].branches, nets["small"].branches, strict=True):
        assert torch.allclose(small.uplift.out.weight, 0.1 * big.uplift.out.weight)
        assert torch.equal(small.uplift.hidden[0].weight, big.uplift.hidden[0].weight)  # only the output layer
    deltas = {k: relative_uplift(m.eval().predict_mu(x)) for k, m in nets.items()}
    assert 0 < float(deltas["small"].abs().max()) < float(deltas["uniform"].abs().max())
    m = nets["small"].train()
    m.loss(x, arm, y)[0].backward()
    assert float(m.branches[0].uplift.hidden[0].weight.grad.abs().max()) > 0


@pytest.mark.parametrize("tower", ["response", "joint"])
def test_a_joint_offset_tower_lets_every_response_inform_every_offset(tower):
    """offset_tower=joint: response 0's offset reads response 1's representation (and its error trains
    the layers response 1's offset uses); per-response towers keep them apart."""
    torch.manual_seed(4)
    m = HUM(_cfg(treated_head="residual", treated_input="control", offset_tower=tower, offset_init="uniform",
                 balanced=True, control="own"))
    head = m.branches[0].uplift
    h = torch.randn(16, 3, 8, requires_grad=True)  # (B, R, H): the mixed representation per response
    u = head.logits(h)
    assert u.shape == (16, 3)
    (grad,) = torch.autograd.grad(u[:, 0].sum(), h)
    assert grad[:, 0].abs().sum() > 0
    assert (grad[:, 1:].abs().sum() > 0) == (tower == "joint")
    # In the model: treated rows whose error is on response 0 only still move response 1's offset.
    x, _, _ = _batch(n=48)
    arm = torch.ones(48, dtype=torch.long)
    with torch.no_grad():
        y = m.forward_all(x)[0][:, 0].clone()  # the model's own treated outcomes: zero error everywhere
    y[:, 0] += 0.5
    m.zero_grad()
    m.loss(x, arm, y)[0].backward()
    out_w = head.out.weight.grad  # joint: (R, T); per response: (R, T, 1)
    assert out_w[1:].abs().max() < 1e-5 * out_w[0].abs().max()  # each output row fits its own response
    hidden = head.hidden[0].weight.grad  # joint: (T, R*H), columns by response; per response: (R, H, T)
    other = hidden[:, 8:] if tower == "joint" else hidden[1:]  # what reads responses 1.. (H = 8)
    assert (other.abs().max() > 1e-3 * hidden.abs().max()) == (tower == "joint")


@pytest.mark.parametrize("wide", ["add", "only"])
def test_wide_offset_is_one_scalar_per_feature_id_summed_over_fields(wide):
    """offset_wide: the wide part of u^k is Σ_j w^k[x_j] (B, R); "only" drops the deep tower; it starts at 0
    and only treated rows train it."""
    torch.manual_seed(3)
    m = HUM(_cfg(treated_head="residual", pooling="scale", balanced=True, control="own", offset_wide=wide))
    x, arm, y = _batch(n=64)
    deep = HUM(_cfg(treated_head="residual", pooling="scale", balanced=True, control="own"))
    deep.load_state_dict({k: v for k, v in m.state_dict().items() if ".wide." not in k})
    start_t, _, _ = m.logits_all(x)
    deep_t, _, _ = deep.logits_all(x)
    assert torch.equal(start_t, torch.zeros_like(start_t) if wide == "only" else deep_t)  # w starts at 0
    with torch.no_grad():
        for br in m.branches:
            br.wide.weight.normal_()
    z_t, _, _ = m.logits_all(x)
    for i, br in enumerate(m.branches):
        expect = br.wide.weight[x].sum(1) + (0 if wide == "only" else deep_t[:, i])
        assert torch.allclose(z_t[:, i], expect, atol=1e-5)
    m.zero_grad()
    m.loss(x, arm, y)[0].backward()
    for k, br in enumerate(m.branches, start=1):  # branch k's w moves on the ids of arm-k rows, nowhere else
        seen = torch.zeros(br.wide.weight.shape[0], dtype=torch.bool)
        seen[x[arm == k].flatten()] = True
        grad = br.wide.weight.grad.abs().sum(1)
        assert (grad[seen] > 0).all() and not grad[~seen].any()
    assert set(map(id, m.offset_parameters())) >= {id(br.wide.weight) for br in m.branches}


@pytest.mark.parametrize("head", ["outcome", "residual"])
def test_huber_delta_trains_on_the_huber_form_and_reports_the_squared_error(head):
    """huber_delta δ: the loss is r² for |r| ≤ δ and 2δ|r| − δ² beyond, per row and response, over the
    same masked rows as the squared error; parts["mse"] stays the squared error (validation reads it)."""
    torch.manual_seed(4)
    delta = 0.3
    m = HUM(_cfg(treated_head=head, pooling="scale", balanced=True, huber_delta=delta))
    plain = HUM(_cfg(treated_head=head, pooling="scale", balanced=True))
    plain.load_state_dict(m.state_dict())
    x, arm, y = _batch(n=64)
    y = y * 3.0  # residuals on both sides of δ
    treated, control, gates = m.forward_all(x)
    # a control row trains every branch's control head (K·R residuals), a treated row its own branch's (R)
    resid = torch.cat([(control[i] if int(arm[i]) == 0 else treated[i, int(arm[i]) - 1]).reshape(-1, y.shape[1]) - y[i]
                       for i in range(64)])
    a = resid.abs()
    assert (a > delta).any() and (a <= delta).any()
    huber = float(torch.where(a <= delta, resid ** 2, 2 * delta * a - delta ** 2).sum()) / 64
    kl = float(gate_kl(gates[arm == 0].transpose(0, 1)).sum()) / 64
    loss, parts = m.loss(x, arm, y)
    assert float(loss) == pytest.approx(huber + kl, rel=1e-5)
    assert parts["mse"] == pytest.approx(float((resid ** 2).sum()) / 64, rel=1e-5)
    loss_plain, parts_plain = plain.loss(x, arm, y)
    assert parts_plain["mse"] == pytest.approx(parts["mse"], rel=1e-6)
    assert float(loss) < float(loss_plain)  # large residuals count linearly


@pytest.mark.parametrize("head", ["outcome", "residual"])
def test_positive_part_leaves_the_zero_targets_of_its_responses_out(head):
    """positive_part (0,): a row's response-0 residual counts only where its target is not 0 (the loss
    and the reported mse); response 1's zeros still count."""
    torch.manual_seed(5)
    m = HUM(_cfg(treated_head=head, pooling="scale", balanced=True, positive_part=(0,), kl_weight=0.0))
    x, arm, y = _batch(n=64)
    y = y.clone()
    y[::3, 0] = 0.0  # zero-inflated response 0
    y[1::5, 1] = 0.0  # zeros of a response fitted whole
    treated, control, _ = m.forward_all(x)
    per_row = [(control[i] if int(arm[i]) == 0 else treated[i, int(arm[i]) - 1]).reshape(-1, y.shape[1]) - y[i]
               for i in range(64)]
    kept = [r * torch.tensor([float(y[i, 0] != 0)] + [1.0] * (y.shape[1] - 1)) for i, r in enumerate(per_row)]
    expected = float(sum((r ** 2).sum() for r in kept)) / 64
    loss, parts = m.loss(x, arm, y)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert parts["mse"] == pytest.approx(expected, rel=1e-5)
    whole = float(sum((r ** 2).sum() for r in per_row)) / 64
    assert expected < whole  # the zeros did count before


def test_positive_part_takes_response_indices():
    """The registry refuses names or indices out of range (the train stage maps the names)."""
    from fulcrum.config import TrainConfigModel
    from models.registry import Dims, net_config

    hp = {**TrainConfigModel().model_dump(), "positive_part": ["usage_time"]}
    with pytest.raises(ValueError, match="positive_part"):
        net_config("hum", Dims(4, 20, 2, 2), hp)
    with pytest.raises(ValueError, match="positive_part"):
        net_config("hum", Dims(4, 20, 2, 2), {**hp, "positive_part": [2]})
    assert net_config("hum", Dims(4, 20, 2, 2), {**hp, "positive_part": [1]})["positive_part"] == [1]
    assert net_config("hum_paper", Dims(4, 20, 2, 2), {**hp, "positive_part": [1]})["positive_part"] == []
