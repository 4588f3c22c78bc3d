"""Per-treatment snapshots (``train.per_arm_select``): each treatment's effect from its own arm's best epoch."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from models.arm_select import ArmSelected
from models.checkpoint import load_checkpoint, save_checkpoint
from models.encoding import FieldEncoder
from models.ensemble import Ensemble
from models.registry import Dims, build_net, net_config
from models.target import TargetTransform
from tests.model.test_checkpoint import HP

DIMS = Dims(3, 12, 2, 2, (4, 4, 4))


def _x(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n, 3), generator=g) + torch.tensor([0, 4, 8])  # field j owns ids 4j..4j+3


def _nets(n: int, name: str = "hum") -> list:
    torch.manual_seed(0)
    return [build_net(name, net_config(name, DIMS, HP)).eval() for _ in range(n)]


@pytest.mark.parametrize("name", ["hum", "m3tn"])
def test_control_from_main_and_each_effect_from_its_own_snapshot(name):
    main, s1, s2 = _nets(3, name)
    x = _x()
    got = ArmSelected(main, [s1, s2]).eval().predict_mu(x)  # (B, K+1, R)
    mu, m1, m2 = main.predict_mu(x), s1.predict_mu(x), s2.predict_mu(x)
    torch.testing.assert_close(got[:, 0], mu[:, 0])
    torch.testing.assert_close(got[:, 1] - got[:, 0], m1[:, 1] - m1[:, 0])  # t1's effect: snapshot 1's
    torch.testing.assert_close(got[:, 2] - got[:, 0], m2[:, 2] - m2[:, 0])  # t2's: snapshot 2's
    assert not torch.allclose(got[:, 1], mu[:, 1])  # not main's own treated outcome
    same = ArmSelected(main, [copy.deepcopy(main), copy.deepcopy(main)]).eval()
    torch.testing.assert_close(same.predict_mu(x), mu)  # every snapshot at the best epoch: the model itself


def test_refuses_a_snapshot_count_or_shape_that_does_not_match():
    main, s1, _ = _nets(3)
    with pytest.raises(ValueError, match="one snapshot per treatment"):
        ArmSelected(main, [s1])
    other = build_net("hum", net_config("hum", Dims(3, 12, 1, 2, (4, 4, 4)), HP))
    with pytest.raises(ValueError, match="disagree"):
        ArmSelected(main, [s1, other])


def test_checkpoint_round_trip_single_and_ensemble(tmp_path):
    enc = FieldEncoder(["c"], ["x"], 4).fit(pd.DataFrame({"c": [1, 2, 3], "x": [0.1, 0.5, 3.0]}))
    dims = Dims(2, enc.vocab_size, 2, 2)
    meta = {"target": TargetTransform("log1p", (2.0, 3.0)).state()}
    x = torch.randint(0, enc.vocab_size, (16, 2))
    for members in (1, 2):
        conf = {**net_config("hum", dims, {**HP, "ensemble": members}), "arm_select": True}
        torch.manual_seed(members)
        net = build_net("hum", conf).eval()
        one = net.members[0] if members > 1 else net
        assert isinstance(one, ArmSelected) and len(one.arms) == 2
        save_checkpoint(tmp_path / f"m{members}.pt", "hum", conf, net, enc, meta)
        ck = load_checkpoint(tmp_path / f"m{members}.pt")
        assert type(ck.net) is type(net)
        assert torch.equal(ck.net.predict_mu(x), net.predict_mu(x))


def test_fit_keeps_each_arms_lowest_validation_loss_epoch(sim_dir):
    """The kept snapshot of treatment k is the epoch of the lowest loss of the served outcome on arm k's
    validation rows, and it holds that epoch's weights; the trained network itself is the overall best epoch's."""
    from fulcrum.config import TrainConfigModel
    from models.arm_select import served_row_loss
    from models.train import predict_mu, validation_loss
    from pipelines.train import train_net
    from pipelines.training_set import prepare

    prep = prepare(sim_dir, (0.7, 0.15, 0.15), 3, 8, target="log1p")
    tc = TrainConfigModel(epochs=4, min_epochs=2, early_stopping_patience=4, batch_size=2048, emb_dim=8,
                          expert_hidden=[16, 8], tower_hidden=[8], ensemble=1, per_arm_select=True, lr=0.01)
    net, conf, res = train_net(prep, "hum", tc, seed=5)
    assert isinstance(net, ArmSelected) and conf["arm_select"] is True
    valid = prep.tensors("valid")
    for k in (1, 2):
        losses = [row[f"val_loss_arm{k}"] for row in res.history]
        assert res.arm_epochs[k - 1] == int(np.argmin(losses))
        part = valid.where(valid.arm == k)
        own = served_row_loss(torch.from_numpy(predict_mu(net.arms[k - 1], part.x)), k, part.y).mean()
        assert float(own) == pytest.approx(min(losses), rel=1e-5)
    assert validation_loss(net.main, valid) == pytest.approx(res.history[res.best_epoch]["val_loss"], rel=1e-5)
    # The same run without the option: the same best network (the snapshots change nothing in training).
    plain, conf0, res0 = train_net(prep, "hum", tc.model_copy(update={"per_arm_select": False}), seed=5)
    assert "arm_select" not in conf0 and not res0.arm_states and res0.best_epoch == res.best_epoch
    for (key, a), b in zip(net.main.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    # An ensemble whose first member (the run above) moves an arm: every member is per-arm (one config),
    # and it builds from that config (as a checkpoint reloads it).
    ens, conf2, res2 = train_net(prep, "hum", tc.model_copy(update={"ensemble": 2}), seed=5)
    assert res2.members[0].arm_epochs == res.arm_epochs
    assert isinstance(ens, Ensemble) and all(isinstance(m, ArmSelected) for m in ens.members)
    rebuilt = build_net("hum", conf2)
    rebuilt.load_state_dict(ens.state_dict())
    torch.testing.assert_close(rebuilt.eval().predict_mu(valid.x[:50]), ens.predict_mu(valid.x[:50]))


def test_auto_switches_on_at_the_smallest_arms_validation_rows_and_moves_only_clear_arms(sim_dir):
    """``per_arm_select: auto`` is on exactly when every treated arm has ``per_arm_min_valid_rows`` validation
    rows, and then moves a treatment off the best epoch only at a paired z ≥ ``per_arm_min_z``; a model in
    which no treatment moved is the plain network; true/false are taken as given."""
    from fulcrum.config import TrainConfigModel
    from pipelines.train import per_arm_select, train_net
    from pipelines.training_set import prepare

    prep = prepare(sim_dir, (0.7, 0.15, 0.15), 3, 8, target="log1p")
    counts = np.bincount(prep.arm[prep.rows("valid")])[1:]
    assert len(counts) == 2 and counts.min() > 0
    tc = TrainConfigModel(epochs=4, min_epochs=2, early_stopping_patience=4, batch_size=2048, emb_dim=8,
                          expert_hidden=[16, 8], tower_hidden=[8], ensemble=1, lr=0.01)
    assert tc.per_arm_select == "auto"  # the default
    at = tc.model_copy(update={"per_arm_min_valid_rows": int(counts.min())})
    above = tc.model_copy(update={"per_arm_min_valid_rows": int(counts.min()) + 1})
    assert per_arm_select(at, prep) == (True, tc.per_arm_min_z) and per_arm_select(above, prep) == (False, None)
    assert per_arm_select(above.model_copy(update={"per_arm_select": True}), prep) == (True, None)
    assert per_arm_select(at.model_copy(update={"per_arm_select": False}), prep) == (False, None)
    # The same training under the gate wide open (= true) and shut: only the snapshots differ.
    opened, conf, res = train_net(prep, "hum", at.model_copy(update={"per_arm_min_z": -1e9}), seed=5)
    forced, _, res_t = train_net(prep, "hum", at.model_copy(update={"per_arm_select": True}), seed=5)
    assert res.arm_epochs == res_t.arm_epochs != [res.best_epoch] * 2  # the toy run does move an arm
    assert isinstance(opened, ArmSelected) and conf["arm_select"] is True and len(res.arm_z) == 2
    shut, conf0, res0 = train_net(prep, "hum", at.model_copy(update={"per_arm_min_z": 1e9}), seed=5)
    assert res0.arm_epochs == [res0.best_epoch] * 2 and res0.arm_z == res.arm_z
    assert not isinstance(shut, ArmSelected) and "arm_select" not in conf0
    for (key, a), b in zip(opened.main.state_dict().items(), shut.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    plain, conf1, _ = train_net(prep, "hum", above, seed=5)
    assert not isinstance(plain, ArmSelected) and "arm_select" not in conf1
    with pytest.raises(ValueError):
        TrainConfigModel(per_arm_select="sometimes")


def test_a_treatment_leaves_the_best_epoch_only_on_a_clear_paired_gain():
    """``arm_epoch``: the lowest mean loss wins outright without ``min_z``; with it, only when its per-row
    gain over the best epoch is clear (paired z), so a small gain on noisy rows keeps the best epoch."""
    from models.arm_select import arm_epoch, paired_z

    g = torch.Generator().manual_seed(0)
    base = torch.rand(400, generator=g) * 4  # (n,) the rows' losses at the best epoch (epoch 1)
    noise = torch.randn(400, generator=g)
    noise = noise - noise.mean()
    small = base - 0.05 + noise          # epoch 0: lower on average by 0.05, row noise sd 1 -> z ≈ 1
    clear = base - 0.3 + 0.1 * noise     # epoch 2: lower by 0.3, row noise sd 0.1 -> z ≈ 60
    assert paired_z(base, clear) > 20 and abs(paired_z(base, small)) < 1.645
    assert paired_z(base, base) == 0.0 and paired_z(base, base + 1) < -1.645  # no gain: no evidence; a loss: negative
    assert arm_epoch([small, base], 1, None)[0] == int(torch.stack([small.mean(), base.mean()]).argmin())
    assert arm_epoch([small, base], 1, 1.645) == (1, pytest.approx(paired_z(base, small)))
    assert arm_epoch([small, base, clear], 1, 1.645) == (2, pytest.approx(paired_z(base, clear)))
    assert arm_epoch([base + 1, base], 1, 1.645) == (1, 0.0)  # the best epoch is the arm's own too


def test_served_row_loss_leaves_out_the_positive_part_zeros():
    """With positive_part (0,), a row's response-0 residual counts only where its target is not 0."""
    from models.arm_select import served_row_loss

    mu = torch.tensor([[[1.0, 2.0], [1.5, 2.5]], [[1.0, 2.0], [0.5, 1.0]]])  # (n=2, K+1=2, R=2)
    y = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    assert served_row_loss(mu, 1, y).tolist() == pytest.approx([1.5 ** 2 + 0.5 ** 2, 0.5 ** 2 + 1.0])
    assert served_row_loss(mu, 1, y, (0,)).tolist() == pytest.approx([0.5 ** 2, 0.5 ** 2 + 1.0])
    assert served_row_loss(mu, 1, y, (1,)).tolist() == pytest.approx([1.5 ** 2 + 0.5 ** 2, 0.5 ** 2])
