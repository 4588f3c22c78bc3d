"""The duration-mix scenario (CDUM's setting) and FIC on it: truth, request logs, labels, fit."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from fulcrum import schema as S
from fulcrum.config import DDMConfig, SimulatorSource
from pipelines.sources.simulator import simulate_to

TREATMENTS = ["short", "medium", "long"]


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    out = tmp_path_factory.mktemp("duration_mix")
    cfg = SimulatorSource(n_users=6000, feature_days=2, experiment_days=3, treatments=TREATMENTS,
                          scenario="duration_mix", requests={"user_share": 0.6, "per_user_mean": 5})
    man = simulate_to(cfg, out)
    return out, man


def test_effects_follow_the_long_term_preference(mix):
    from pipelines.sources import sim_model as M
    from pipelines.sources.sim_duration import preferences

    out, man = mix
    truth = pq.read_table(out / S.TRUTH_FILE).to_pandas().set_index(S.USER_ID).sort_index()
    pop = M.make_population(1, 6000, M.block_rngs(7, 0)[0])
    pref = preferences(pop)
    for k, t in enumerate(TREATMENTS):
        tau = truth[S.truth_column(t, "usage_time")] / truth[S.truth_column("control", "usage_time")] - 1
        assert np.corrcoef(tau.to_numpy(), pref[:, k])[0, 1] > 0.95  # who likes the boosted class gains
        assert tau.std() > 0.03  # heterogeneous: the spread exceeds the few-percent averages
    assert man.arms == ["control", *TREATMENTS]


def test_requests_carry_play_labels_and_the_true_interest(mix):
    out, _ = mix
    req = pq.read_table(out / S.REQUESTS_FILE)
    truth = pq.read_table(out / S.REQUESTS_TRUTH_FILE).to_pandas()
    assert S.PLAYED in req.column_names and all(S.interest_column(t) in truth for t in TREATMENTS)
    played = req.column(S.PLAYED).to_pylist()
    exposed = req.column("cand_exposed").to_pylist()
    assert all(not p or e for ps, es in zip(played[:200], exposed[:200], strict=True) for p, e in zip(ps, es, strict=True))
    # recent videos follow the interest of the moment: a long-leaning moment shows more long videos
    recent = req.column("recent_duration").to_pylist()
    long_share = np.array([np.mean(np.asarray(r) >= 3) for r in recent])
    assert np.corrcoef(long_share, truth[S.interest_column("long")].to_numpy())[0, 1] > 0.5
    assert 0.6 < truth[[S.interest_column(t) for t in TREATMENTS]].to_numpy().mean() < 1.4  # 1 = no leaning


def test_fic_learns_the_real_time_interest_and_its_numpy_twin_agrees(mix):
    """FIC's fit against the simulator's true interest (Pearson r per treatment, validation users)."""
    import torch

    from models.ddm_io import arrays_from_table, fic_labels_from_table, fit_vocab, predict_weights  # noqa: F401
    from models.ddm_numpy import NumpyDDM
    from models.fic import fic_config, fic_net
    from pipelines.train_ddm import fit_ddm, predict_o_hat, split_by_user

    out, man = mix
    table = pq.read_table(out / S.REQUESTS_FILE)
    arrays = arrays_from_table(table, man.responses, max_items=50)
    labels = fic_labels_from_table(table, len(TREATMENTS))
    truth = pq.read_table(out / S.REQUESTS_TRUTH_FILE).to_pandas()
    true_r = truth[[S.interest_column(t) for t in TREATMENTS]].to_numpy()
    valid = split_by_user(table.column(S.USER_ID).to_numpy(), 0.25, seed=1)
    torch.manual_seed(0)
    net = fic_net(fic_config(len(man.responses), len(TREATMENTS), *fit_vocab(arrays)))
    fit_ddm(net, arrays.take(~valid), labels[~valid], arrays.take(valid), labels[valid],
            DDMConfig(epochs=8, batch_size=512, lr=3e-3), seed=0)
    r_hat = predict_o_hat(net, arrays.take(valid))  # (n_valid, K)
    corr = [np.corrcoef(r_hat[:, k], true_r[valid, k])[0, 1] for k in range(len(TREATMENTS))]
    print(f"FIC vs the true real-time interest (Pearson, validation requests): {np.round(corr, 3).tolist()}")
    assert min(corr) > 0.6 and (r_hat > 0).all()  # measured 0.90 / 0.83 / 0.90
    fast = NumpyDDM.from_net(net)
    a = arrays.take(np.flatnonzero(valid)[:64])
    np.testing.assert_allclose(fast.outputs(a.duration, a.category, a.scores, a.mask),
                               predict_o_hat(net, a), rtol=1e-4, atol=1e-5)


def _cfg(**source):
    from fulcrum.config import FulcrumConfig

    return FulcrumConfig.model_validate({
        "families": ["hmum", "cdum"],
        "source": {"n_users": 6000, "feature_days": 2, "experiment_days": 3, "requests": {"user_share": 0.6},
                   **source},
        "cdum": {"fic": {"epochs": 8, "batch_size": 512, "lr": 0.003}},
    })


def test_the_train_fic_stage_reports_its_fit_and_writes_numpy_weights(tmp_path):
    from models.ddm_numpy import load_serving_ddm
    from pipelines.collect import run_collect
    from pipelines.train_fic import FIC_FILE, run_train_fic

    cfg = _cfg(scenario="duration_mix", treatments=TREATMENTS, combined_arms=[], arm_shares=None)
    run_collect(cfg, tmp_path)
    s = run_train_fic(cfg, tmp_path)
    assert s["val_mse"] < s["val_mse_baseline"] and s["corr_true_interest_mean"] > 0.6, s
    fic = load_serving_ddm(cfg.paths.fic_dir(tmp_path) / FIC_FILE)
    assert fic.version == s["version"] and fic.meta["treatments"] == TREATMENTS and fic.fast.r == 3


def test_train_fic_without_play_labels_stops_with_the_reason(tmp_path):
    from fulcrum.errors import StageError
    from pipelines.collect import run_collect
    from pipelines.train_fic import run_train_fic

    cfg = _cfg(n_users=500)
    run_collect(cfg, tmp_path)
    with pytest.raises(StageError, match="no 'cand_played' column"):
        run_train_fic(cfg, tmp_path)


def test_a_requests_true_effect_is_the_daily_formula_at_the_moments_interest():
    from pipelines.sources import sim_model as M
    from pipelines.sources.sim_duration import preferences, relative_effects, request_effects

    pop = M.make_population(1, 500, M.block_rngs(3, 0)[0])
    daily = relative_effects(pop, 3, 2)
    np.testing.assert_allclose(request_effects(3 * preferences(pop), 2), daily, atol=1e-6)  # usual interest
    keen = request_effects(np.array([[2.0, 1.0, 0.3]]), 2)  # wants short videos now, medium as usual
    assert keen[0, 0, 0] > 0 > keen[0, 2, 1] and abs(keen[0, 1, 0]) < 1e-6
