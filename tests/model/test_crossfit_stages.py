"""The cross_fit protocol through the real stages: train, evaluate, policy and compare on every user."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_compare import kill_compare_after, record_trained

from fulcrum import schema as S
from fulcrum.config import EvaluateConfig, FulcrumConfig
from fulcrum.errors import StageError
from pipelines import train as T
from pipelines.collect import run_collect
from pipelines.crossfit import CROSSFIT_FILE, CrossFit, fold_of
from pipelines.evaluate import run_evaluate
from pipelines.training_set import prepare, run_training_set

FOLDS, REPEATS = 3, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 4,000-user world trained under cross_fit, recording what every model trained on and scored."""
    tmp = tmp_path_factory.mktemp("crossfit")
    cfg = FulcrumConfig.model_validate({
        "paths": {"data": "data", "reports": "reports"},
        "source": {"n_users": 4000, "feature_days": 2, "experiment_days": 2, "combined_arms": ["t1+t2"],
                   "arm_shares": [0.34, 0.24, 0.24, 0.18]},
        "train": {"epochs": 3, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [16, 8], "emb_dim": 8},
        "evaluate": {"folds": FOLDS, "repeats": REPEATS, "bootstrap": 30},
        "compare": {"models": ["hum", "gbm_t_learner"], "seeds": [1, 2], "bootstrap": 10},
        "ddm": {"epochs": 2},
    })
    run_collect(cfg, tmp)
    run_training_set(cfg, tmp)
    calls = []
    real = T.train_net

    def recording(prep, name, tc, seed, lr_schedule=None):
        users = prep.frame[S.USER_ID].to_numpy()
        calls.append({"fit": set(users[prep.rows("train") | prep.rows("valid")]),
                      "scored": users[prep.rows("test")], "valid": int(prep.rows("valid").sum()),
                      "schedule": lr_schedule})
        return real(prep, name, tc, seed, lr_schedule)

    mp = pytest.MonkeyPatch()
    mp.setattr(T, "train_net", recording)
    try:
        summary = T.run_train(cfg, tmp)
    finally:
        mp.undo()
    return cfg, tmp, summary, calls


def test_auto_picks_cross_fitting_up_to_the_configured_size():
    ec = EvaluateConfig(cross_fit_max_users=50_000)
    assert ec.protocol_for(50_000) == "cross_fit" and ec.protocol_for(50_001) == "holdout"
    assert EvaluateConfig(protocol="holdout").protocol_for(10) == "holdout"
    assert EvaluateConfig(protocol="cross_fit").protocol_for(10**9) == "cross_fit"


def test_no_user_is_scored_by_a_model_that_saw_them_and_the_daily_model_sees_everyone(world):
    cfg, tmp, summary, calls = world
    users = prepare(cfg.paths.rct_dir(tmp), cfg.train.split, cfg.seed, cfg.train.n_bins, cfg=cfg,
                    root=tmp).frame[S.USER_ID].to_numpy()
    assert len(calls) == FOLDS * REPEATS + 1
    for rep in range(REPEATS):
        folds = calls[rep * FOLDS:(rep + 1) * FOLDS]
        for c in folds:
            assert c["fit"] and not c["fit"] & set(c["scored"])  # the property
            assert c["valid"] > 0 and c["schedule"] is None  # fold models early-stop on their own validation share
        scored = np.concatenate([c["scored"] for c in folds])
        assert sorted(scored) == sorted(users)  # every user scored exactly once per repeat
        fold = fold_of(users, FOLDS, summary["fold_seeds"][rep])
        for k, c in enumerate(folds):
            assert set(c["scored"]) == set(users[fold == k])
    final = calls[-1]
    assert final["fit"] == set(users) and len(final["scored"]) == 0 and final["valid"] == 0
    cf = CrossFit.load(cfg.paths.model_dir(tmp) / CROSSFIT_FILE)
    assert cf.mu.shape == (REPEATS, len(users), 3, 2) and np.isfinite(cf.mu).all() and (cf.mu > 0).all()
    assert (cf.user_id == users).all()
    # The released model follows the fold models' epochs and learning rates, on every user.
    epochs, schedule = cf.final_schedule(cfg.train.epochs)
    assert final["schedule"] == schedule and summary["epochs_run"] == epochs
    hist = json.loads((tmp / "reports" / "plots" / "train_history.json").read_text())
    assert [h["lr"] for h in hist] == pytest.approx(list(schedule))
    assert summary["protocol"] == "cross_fit" and summary["n_train"] == len(users)
    assert np.asarray(summary["cv_best_epochs"]).shape == (REPEATS, FOLDS)
    assert np.isfinite([summary["val_loss"], summary["val_qini"]]).all()  # the fold models' means


def test_evaluate_judges_every_user_out_of_fold_with_intervals_over_the_split(world):
    from fulcrum.metrics import per_arm_table
    from pipelines.reporting import relative_truth

    cfg, tmp, summary, _ = world
    ev = run_evaluate(cfg, tmp)
    cf = CrossFit.load(cfg.paths.model_dir(tmp) / CROSSFIT_FILE)
    assert ev["protocol"] == "cross_fit" and ev["runs"] == REPEATS and ev["n_test"] == len(cf.user_id)
    prep = prepare(cfg.paths.rct_dir(tmp), cfg.train.split, cfg.seed, cfg.train.n_bins, cfg=cfg, root=tmp)
    by_hand = per_arm_table(prep.y, prep.arm, cf.delta_runs.mean(0), prep.manifest.arms, prep.manifest.responses,
                            k=cfg.evaluate.lift_k)
    for c in by_hand:
        got = ev["cells"][f"{c['treatment']}__{c['response']}"]
        assert got["qini"] == pytest.approx(c["qini"])
        assert got["qini_lo"] < got["qini"] < got["qini_hi"]
    # The out-of-fold δ are not the daily model's δ on the same users.
    import torch

    from models.checkpoint import load_checkpoint
    from models.train import predict_mu

    ck = load_checkpoint(cfg.paths.model_dir(tmp) / T.CHECKPOINT)
    own = relative_truth(predict_mu(ck.net, torch.from_numpy(prep.x), ck.target))
    assert not np.allclose(own, cf.delta_runs.mean(0))
    md = (tmp / "reports" / "evaluate.md").read_text()
    assert "Protocol: cross_fit" in md and "95 % interval" in md


def test_policy_calibrates_on_a_share_and_values_everyone_else_out_of_fold(world):
    from pipelines.policy import load_policy_data, run_policy
    from pipelines.reporting import relative_truth
    from pipelines.train_ddm import run_train_ddm

    cfg, tmp, _, _ = world
    run_train_ddm(cfg, tmp)
    _, meta, data = load_policy_data(cfg, tmp)
    cf = CrossFit.load(cfg.paths.model_dir(tmp) / CROSSFIT_FILE)
    assert meta["protocol"] == "cross_fit"
    valid, test = data["valid"].user_id, data["test"].user_id
    assert not set(valid) & set(test)
    assert len(test) / (len(valid) + len(test)) == pytest.approx(1 - cfg.policy.calibration_share, abs=0.04)
    single = np.isin(test, cf.user_id)
    assert single.mean() > 0.7  # the rest are combined-arm users, which no model trained on
    pos = np.searchsorted(cf.user_id, test[single])
    expect = relative_truth(cf.mu[:, pos].mean(0).astype(np.float64))
    assert data["test"].units.delta[single] == pytest.approx(expect, rel=1e-5)
    # Combined-arm users are scored by their own fold's model as well: μ̂ must not depend on the
    # logged arm, or the doubly robust estimate is biased (tests/serving/test_policy_gate.py checks coverage).
    assert set(test[~single]) <= set(cf.other_user_id) and np.isfinite(cf.other_mu).all()
    assert cf.other_mu.shape[:2] == (REPEATS, len(cf.other_user_id)) and len(cf.other_user_id) > 0
    pos = np.searchsorted(cf.other_user_id, test[~single])
    expect = relative_truth(cf.other_mu[:, pos].mean(0).astype(np.float64))
    assert data["test"].units.delta[~single] == pytest.approx(expect, rel=1e-5)
    s = run_policy(cfg, tmp)
    assert s["protocol"] == "cross_fit" and s["n_test"] == len(test) and s["n_valid"] == len(valid)
    assert "Cross-fitted:" in (tmp / "reports" / "policy.md").read_text()


def test_compare_cross_fits_every_model_and_resumes_fold_by_fold(world, monkeypatch):
    from pipelines import compare as C

    cfg, tmp, _, _ = world
    first = C.run_compare(cfg, tmp)
    n_runs = len(cfg.compare.models) * len(cfg.compare.seeds) * FOLDS
    assert first["protocol"] == "cross_fit" and first["runs"]["total"] == n_runs
    assert first["n_test"] == len(CrossFit.load(cfg.paths.model_dir(tmp) / CROSSFIT_FILE).user_id)
    assert len(first["per_seed"]["hum"]) == len(cfg.compare.seeds)
    store = C.RunStore(cfg.paths.compare_dir(tmp))
    assert len(list(store.folder.glob("*__fold*of3.npz"))) == n_runs
    kill_compare_after(monkeypatch, cfg, tmp, finished=4)  # killed during the fifth fold run
    assert len(list(store.folder.glob("*.npz"))) == 4  # each finished fold was saved as it finished
    calls = record_trained(monkeypatch)
    again = C.run_compare(cfg, tmp)
    assert len(calls) == n_runs - 4 and again["runs"]["resumed"] == 4
    assert again["per_seed"] == first["per_seed"]


def test_too_few_users_per_fold_is_refused_by_name(tmp_path):
    cfg = FulcrumConfig.model_validate({
        "paths": {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports")},
        "source": {"n_users": 60, "feature_days": 2, "experiment_days": 2},
        "train": {"epochs": 1, "min_epochs": 1},
        "evaluate": {"folds": 10},
    })
    run_collect(cfg, tmp_path)
    with pytest.raises(StageError, match="too few users to cross-fit .* fold"):
        T.run_train(cfg, tmp_path)
