"""The deep ensemble (``train.ensemble``): members train as they would alone; predictions average."""

import numpy as np
import pandas as pd
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.encoding import FieldEncoder
from models.ensemble import Ensemble
from models.registry import Dims, build_net, net_config
from models.target import TargetTransform
from tests.model.test_checkpoint import HP

DIMS = Dims(3, 12, 2, 2, (4, 4, 4))


def _batch(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 3), generator=g) + torch.tensor([0, 4, 8])  # field j owns ids 4j..4j+3
    arm = torch.randint(0, 3, (n,), generator=g)
    return x, arm, torch.rand(n, 2, generator=g) + 0.5


@pytest.mark.parametrize("name", ["hum", "m3tn"])
def test_ensemble_config_builds_members_that_differ_and_average(name):
    conf = net_config(name, DIMS, {**HP, "ensemble": 3})
    assert conf["members"] == 3
    assert "members" not in net_config(name, DIMS, {**HP, "ensemble": 1})  # one network: the old config
    torch.manual_seed(0)
    net = build_net(name, conf).eval()
    assert isinstance(net, Ensemble) and len(net.members) == 3
    assert (net.n_treatments, net.n_responses) == (2, 2)
    x, _, _ = _batch()
    mus = [m.predict_mu(x) for m in net.members]
    assert not torch.allclose(mus[0], mus[1])  # drawn one after the other: different initial weights
    torch.testing.assert_close(net.predict_mu(x), torch.stack(mus).mean(0))


def test_each_member_gets_the_gradient_of_its_own_loss_only():
    torch.manual_seed(0)
    net = build_net("hum", net_config("hum", DIMS, {**HP, "ensemble": 2})).train()
    x, arm, y = _batch()
    total, parts = net.loss(x, arm, y)
    total.backward()
    alone = [m.loss(x, arm, y) for m in net.members]
    assert total.item() == pytest.approx(sum(t.item() for t, _ in alone) / 2, rel=1e-6)
    assert parts["mse"] == pytest.approx(sum(p["mse"] for _, p in alone) / 2, rel=1e-6)
    got = [[p.grad.clone() for p in m.parameters()] for m in net.members]
    for i, m in enumerate(net.members):
        m.zero_grad()
        (alone[i][0] / 2).backward()
        for g_ens, p in zip(got[i], m.parameters(), strict=True):
            torch.testing.assert_close(g_ens, p.grad)


def test_ensemble_checkpoint_round_trip_and_refusals(tmp_path):
    enc = FieldEncoder(["c"], ["x"], 4).fit(pd.DataFrame({"c": [1, 2, 3], "x": [0.1, 0.5, 3.0]}))
    conf = net_config("hum", Dims(2, enc.vocab_size, 2, 2), {**HP, "ensemble": 3})
    torch.manual_seed(1)
    net = build_net("hum", conf).eval()
    meta = {"target": TargetTransform("log1p", (2.0, 3.0)).state()}
    version = save_checkpoint(tmp_path / "m.pt", "hum", conf, net, enc, meta)
    ck = load_checkpoint(tmp_path / "m.pt")
    assert isinstance(ck.net, Ensemble) and ck.version == version
    x = torch.randint(0, enc.vocab_size, (16, 2))
    assert torch.equal(ck.net.predict_mu(x), net.predict_mu(x))
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble([net.members[0]])
    other = build_net("hum", net_config("hum", Dims(2, enc.vocab_size, 1, 2), HP))
    with pytest.raises(ValueError, match="disagree"):
        Ensemble([net.members[0], other])


def test_train_net_fits_each_member_as_it_would_alone_and_reports_the_ensemble(sim_dir):
    from fulcrum.config import TrainConfigModel
    from models.train import predict_uplift, validation_loss
    from pipelines.train import MEMBER_SEED_STRIDE, _fit_one, train_net, validation_scorer
    from pipelines.training_set import prepare

    prep = prepare(sim_dir, (0.7, 0.15, 0.15), 3, 8, target="log1p")
    tc = TrainConfigModel(epochs=4, min_epochs=2, early_stopping_patience=1, batch_size=2048, emb_dim=8,
                          expert_hidden=[16, 8], tower_hidden=[8], ensemble=2, member_valid="shared")
    net, conf, res = train_net(prep, "hum", tc, seed=5)
    assert isinstance(net, Ensemble) and conf["members"] == 2
    alone = [_fit_one(prep, "hum", tc.model_copy(update={"ensemble": 1}), 5 + MEMBER_SEED_STRIDE * m, None)
             for m in range(2)]
    for member, (single, _, _) in zip(net.members, alone, strict=True):  # its own seed, batch order and stop
        for (k, a), b in zip(member.state_dict().items(), single.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    assert [m.best_epoch for m in res.members] == [r.best_epoch for _, _, r in alone]
    assert len(res.history) == max(len(r.history) for _, _, r in alone)
    assert res.epochs_trained == sum(len(r.history) for _, _, r in alone)
    assert res.history[0]["val_loss"] == pytest.approx(np.mean([r.history[0]["val_loss"] for _, _, r in alone]))
    valid = prep.tensors("valid")
    # The reported validation figures are the ensemble's own, not a member's.
    assert res.validation() == pytest.approx(
        (validation_loss(net, valid), validation_scorer(prep)(predict_uplift(net, valid.x, prep.target))))
    # Averaging the members' outcomes is what the ensemble predicts.
    mu = [m.predict_mu(valid.x[:100]) for m in net.members]
    torch.testing.assert_close(net.predict_mu(valid.x[:100]), (mu[0] + mu[1]) / 2)


def test_members_with_their_own_split_see_other_users_and_the_ensemble_is_judged_out_of_bag(sim_dir):
    from fulcrum.config import TrainConfigModel
    from models.base import relative_uplift
    from models.train import predict_mu, validation_loss
    from pipelines.crossfit import TRAIN, VALID
    from pipelines.train import (
        MEMBER_SEED_STRIDE,
        _fit_one,
        member_prep,
        train_net,
        validation_scorer,
    )
    from pipelines.training_set import prepare

    prep = prepare(sim_dir, (0.7, 0.15, 0.15), 3, 8, target="log1p")
    tc = TrainConfigModel(epochs=3, min_epochs=2, early_stopping_patience=1, batch_size=2048, emb_dim=8,
                          expert_hidden=[16, 8], tower_hidden=[8], ensemble=2, member_valid="own")
    parts = [member_prep(prep, tc, 5 + MEMBER_SEED_STRIDE * m, m) for m in range(2)]
    assert parts[0] is prep  # member 0 is the network an ensemble of 1 fits
    assert (parts[1].split != prep.split).any()
    assert (parts[1].rows("test") == prep.rows("test")).all()  # the test users never move
    assert member_prep(prep, tc.model_copy(update={"member_valid": "shared"}), 1005, 1) is prep
    net, _, res = train_net(prep, "hum", tc, seed=5)
    one = tc.model_copy(update={"ensemble": 1})
    for m, member in enumerate(net.members):  # each member is the network fit alone on its own split
        single = _fit_one(parts[m], "hum", one, 5 + MEMBER_SEED_STRIDE * m, None)[0]
        for (k, a), b in zip(member.state_dict().items(), single.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    val_loss, val_qini = res.validation()
    # Loss: each member's on its own validation users, row-weighted (the ensemble's loss is the members' mean).
    valids = [p.tensors("valid") for p in parts]
    losses = [validation_loss(m, v) for m, v in zip(net.members, valids)]
    assert val_loss == pytest.approx(np.average(losses, weights=[len(v) for v in valids]))
    # QINI, out of bag: a user both members held out gets their mean outcome, one held out by one member that
    # member's, and users every member trained on are not judged.
    v0, v1 = parts[0].rows("valid"), parts[1].rows("valid")
    both, only0, only1 = v0 & v1, v0 & ~v1, v1 & ~v0
    assert both.any() and only0.any() and only1.any()
    judged = v0 | v1
    xs = prep.with_split(np.where(judged, VALID, np.where(prep.split == VALID, TRAIN, prep.split)))
    xv = xs.tensors("valid").x
    mu = [predict_mu(m, xv) for m in net.members]  # (n, K+1, R) each, over the judged users in row order
    w0, w1 = v0[judged][:, None, None], v1[judged][:, None, None]
    mean = (mu[0] * w0 + mu[1] * w1) / (w0.astype(float) + w1)
    delta = relative_uplift(prep.target.decode(torch.from_numpy(mean).float())).numpy()
    assert val_qini == pytest.approx(validation_scorer(xs)(delta))
    assert np.isfinite(val_qini)


def test_every_arm_validated_says_whether_each_arm_has_validation_users(sim_dir):
    from pipelines.crossfit import TRAIN
    from pipelines.train import every_arm_validated
    from pipelines.training_set import prepare

    prep = prepare(sim_dir, (0.7, 0.15, 0.15), 3, 8, target="log1p")
    assert every_arm_validated(prep)
    # Validation users with one arm gone (as a small set or a fold can leave):
    # no QINI can be taken there, and the trainer leaves it NaN instead of raising or scoring a part.
    gone = prep.rows("valid") & (prep.arm == prep.arm.max())
    assert gone.any()
    assert not every_arm_validated(prep.with_split(np.where(gone, TRAIN, prep.split)))
