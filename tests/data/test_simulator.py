"""The simulator: determinism and the properties it is designed to have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fulcrum import schema as S
from fulcrum.config import SimulatorSource
from pipelines.collect import run_collect
from pipelines.sources.simulator import simulate_to
from pipelines.validation import ContractError
from tests.conftest import tiny_config


def _read(d: Path, name: str):
    return pq.read_table(d / name)


def _truth(d: Path, man: S.Manifest) -> np.ndarray:
    t = _read(d, S.TRUTH_FILE)
    cols = [S.truth_column(a, r) for a in man.arms for r in man.responses]
    return np.stack([t.column(c).to_numpy() for c in cols], 1).reshape(len(t), len(man.arms), -1)


def test_rct_block_is_the_written_experiment(tmp_path):
    """``rct_block`` (what benchmarks read the latent population from) draws the very users, arms,
    responses and truth ``simulate_to`` writes, block by block (two blocks here)."""
    from pipelines.sources import sim_model as M
    from pipelines.sources.simulator import effect_params_of, rct_block

    cfg = SimulatorSource(n_users=M.BLOCK + 300, feature_days=1, experiment_days=2, seed=5)
    man = simulate_to(cfg, tmp_path)
    exp, truth = _read(tmp_path, S.EXPERIMENT_FILE), _truth(tmp_path, man)
    blocks = [rct_block(cfg, effect_params_of(cfg), b) for b in range(2)]
    assert np.array_equal(np.concatenate([b.pop.user_id for b in blocks]), exp.column(S.USER_ID).to_numpy())
    assert np.array_equal(np.concatenate([b.arm for b in blocks]), exp.column(S.ARM_INDEX).to_numpy())
    for r, resp in enumerate(man.responses):
        assert np.array_equal(np.concatenate([b.y[:, r] for b in blocks]), exp.column(resp).to_numpy())
    mu = np.concatenate([b.mu[:, : len(man.arms)] for b in blocks])
    assert np.allclose(mu, truth, rtol=1e-6)
    tau = np.concatenate([b.tau for b in blocks])
    assert np.allclose(tau[:, 1:3], mu[:, 1:3] / mu[:, :1] - 1, atol=1e-5)  # relative to control, as documented


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = SimulatorSource(n_users=2000, feature_days=2, experiment_days=2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        simulate_to(cfg, tmp_path / name)
    for f in (S.FEATURES_FILE, S.EXPERIMENT_FILE, S.TRUTH_FILE, S.REQUESTS_FILE, S.REQUESTS_TRUTH_FILE):
        assert _read(tmp_path / "a", f).equals(_read(tmp_path / "b", f)), f
    (tmp_path / "c").mkdir()
    simulate_to(cfg.model_copy(update={"seed": 8}), tmp_path / "c")
    assert not _read(tmp_path / "a", S.EXPERIMENT_FILE).equals(_read(tmp_path / "c", S.EXPERIMENT_FILE))


def test_layout_and_types(sim_dir):
    man = S.Manifest.read(sim_dir)
    feats = _read(sim_dir, S.FEATURES_FILE)
    assert len(feats) == man.n_users * 4 == man.n_feature_rows
    assert str(feats.schema.field(S.EVENT_TS).type) == "timestamp[us, tz=UTC]"
    ts = feats.column(S.EVENT_TS).to_pandas()
    assert ts.dt.hour.eq(23).all() and ts.dt.minute.eq(59).all()
    assert ts.nunique() == 4
    for f in man.numeric:
        x = feats.column(f).to_numpy()
        assert np.isfinite(x).all() and (x >= 0).all(), f
    for f in man.features:
        if f.kind == "categorical":
            codes = feats.column(f.name).to_numpy()
            assert codes.min() >= 0 and codes.max() < len(f.levels), f.name
    exp = _read(sim_dir, S.EXPERIMENT_FILE)
    assert exp.column(S.USER_ID).to_numpy().tolist() == list(range(1, man.n_users + 1))
    assert set(exp.column(S.ARM).to_pylist()) == {"control", "t1", "t2"}
    # Every user's assignment falls after the pre-experiment snapshots.
    first_exp_day = np.datetime64("2026-11-01T00:00:00")
    assert (exp.column(S.ASSIGN_TS).to_numpy() >= first_exp_day).all()


def test_numeric_features_are_heavy_tailed(sim_dir):
    feats = _read(sim_dir, S.FEATURES_FILE)
    usage = feats.column("usage_time_30d").to_numpy()
    views = feats.column("video_views_30d").to_numpy()
    for x in (usage, views):
        assert x.mean() > 1.2 * np.median(x)
        assert np.quantile(x, 0.99) > 4 * np.median(x)


def test_arm_shares_follow_the_design(sim_dir):
    exp = _read(sim_dir, S.EXPERIMENT_FILE)
    arm = exp.column(S.ARM_INDEX).to_numpy()
    n = len(arm)
    for k, p in enumerate([0.4, 0.3, 0.3]):
        share = (arm == k).mean()
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n)
    prop = exp.column(S.PROPENSITY).to_numpy()
    assert np.allclose(prop, np.array([0.4, 0.3, 0.3])[arm])


def test_effects_conflict_and_vary_in_sign(sim_dir):
    man = S.Manifest.read(sim_dir)
    mu = _truth(sim_dir, man)
    rel = mu[:, 1:, :] / mu[:, :1, :] - 1  # (n, K, R)
    t1_time, t1_views, t2_time, t2_views = rel[:, 0, 0], rel[:, 0, 1], rel[:, 1, 0], rel[:, 1, 1]
    # Averages: a few percent, with the designed signs.
    assert 0.005 < t1_time.mean() < 0.06 and t1_views.mean() < 0
    assert 0.005 < t2_views.mean() < 0.06 and t2_time.mean() < 0
    # Heterogeneous sign: a real share of users goes each way.
    for x in (t1_time, t1_views, t2_time, t2_views):
        assert 0.1 < (x > 0).mean() < 0.9
    # Conflict: where t1 lifts time it lowers views, and t2 the reverse.
    assert np.corrcoef(t1_time, t1_views)[0, 1] < -0.9
    assert np.corrcoef(t2_time, t2_views)[0, 1] < -0.9
    # The two treatments help different users.
    assert abs(np.corrcoef(t1_time, t2_time)[0, 1]) < 0.9


def test_effects_depend_on_what_features_hide(sim_dir):
    """Features explain only part of the effect: a linear fit on them leaves real residue."""
    man = S.Manifest.read(sim_dir)
    mu = _truth(sim_dir, man)
    tau = mu[:, 1, 0] / mu[:, 0, 0] - 1
    feats = _read(sim_dir, S.FEATURES_FILE).to_pandas()
    last = feats[feats[S.EVENT_TS] == feats[S.EVENT_TS].min()].sort_values(S.USER_ID)
    X = np.column_stack([np.ones(len(last))] + [last[c].to_numpy(np.float64) for c in man.numeric + man.categorical])
    beta, *_ = np.linalg.lstsq(X, tau, rcond=None)
    r2 = 1 - np.var(tau - X @ beta) / np.var(tau)
    assert 0.05 < r2 < 0.8


def test_noise_dwarfs_the_average_effect(sim_dir):
    exp = _read(sim_dir, S.EXPERIMENT_FILE)
    y = exp.column("usage_time").to_numpy()
    assert y.min() >= 0 and (y == 0).mean() > 0.01  # zero-inflated, skewed
    assert y.std() / y.mean() > 0.5
    assert (exp.column("video_views").to_numpy() % 1 == 0).all()


def test_truth_matches_observed_means_within_ci(sim_dir):
    man = S.Manifest.read(sim_dir)
    mu = _truth(sim_dir, man)
    exp = _read(sim_dir, S.EXPERIMENT_FILE)
    arm = exp.column(S.ARM_INDEX).to_numpy()
    for k in range(len(man.arms)):
        rows = arm == k
        for r, resp in enumerate(man.responses):
            y = exp.column(resp).to_numpy()[rows]
            se = y.std(ddof=1) / np.sqrt(rows.sum())
            assert abs(y.mean() - mu[rows, k, r].mean()) < 4 * se, (k, resp)


def test_noise_scale_zero_gives_truth(tmp_path):
    cfg = SimulatorSource(n_users=500, feature_days=1, experiment_days=1, noise_scale=0)
    simulate_to(cfg, tmp_path)
    exp = _read(tmp_path, S.EXPERIMENT_FILE)
    t = _read(tmp_path, S.TRUTH_FILE)
    arms = exp.column(S.ARM).to_numpy(zero_copy_only=False)
    for resp in ("usage_time", "video_views"):
        truth = np.choose(exp.column(S.ARM_INDEX).to_numpy(),
                          [t.column(S.truth_column(a, resp)).to_numpy() for a in ("control", "t1", "t2")])
        assert np.allclose(exp.column(resp).to_numpy(), truth), (resp, arms[:3])


def test_any_k_and_r(tmp_path):
    cfg = SimulatorSource(n_users=800, feature_days=1, experiment_days=1,
                          treatments=["a", "b", "c"], responses=["r1", "r2", "r3"])
    man = simulate_to(cfg, tmp_path)
    assert man.arms == ["control", "a", "b", "c"]
    mu = _truth(tmp_path, man)
    assert mu.shape == (800, 4, 3) and (mu > 0).all()
    assert not np.allclose(mu[:, 3], mu[:, 0])  # generic effects exist for the extra arm


def test_features_after_assignment_carry_the_effect(tmp_path):
    """Snapshots after assignment leak the arm: exactly what point-in-time joins must avoid."""
    cfg = SimulatorSource(n_users=30_000, feature_days=1, experiment_days=3, effect_scale=5.0)
    simulate_to(cfg, tmp_path)
    feats = _read(tmp_path, S.FEATURES_FILE).to_pandas()
    exp = _read(tmp_path, S.EXPERIMENT_FILE).to_pandas().set_index(S.USER_ID)
    mu = _read(tmp_path, S.TRUTH_FILE).to_pandas().set_index(S.USER_ID)
    tau = mu[S.truth_column("t1", "usage_time")] / mu[S.truth_column("control", "usage_time")] - 1
    last = feats[feats[S.EVENT_TS] == feats[S.EVENT_TS].max()].set_index(S.USER_ID)
    first = feats[feats[S.EVENT_TS] == feats[S.EVENT_TS].min()].set_index(S.USER_ID)
    log_ratio = np.log((last["usage_time_7d"] + 1) / (first["usage_time_7d"] + 1))
    # Users assigned on the first experiment day have two treated days in the last snapshot.
    early = exp[S.ASSIGN_TS] < exp[S.ASSIGN_TS].min() + np.timedelta64(1, "D")
    t1, ctrl = (exp[S.ARM] == "t1") & early, (exp[S.ARM] == "control") & early
    hi, lo = tau > tau.quantile(0.7), tau < tau.quantile(0.3)
    lift_hi = log_ratio[t1 & hi].mean() - log_ratio[ctrl & hi].mean()
    lift_lo = log_ratio[t1 & lo].mean() - log_ratio[ctrl & lo].mean()
    assert lift_hi - lift_lo > 0.1


def test_drift_knob_moves_the_features(tmp_path):
    def usage_ratio(drift: float) -> float:
        out = tmp_path / f"d{drift}"
        out.mkdir()
        simulate_to(SimulatorSource(n_users=3000, feature_days=5, experiment_days=1, drift=drift), out)
        f = _read(out, S.FEATURES_FILE).to_pandas()
        by_day = f.groupby(S.EVENT_TS)["usage_time_7d"].mean()
        return by_day.iloc[-1] / by_day.iloc[0]

    assert abs(usage_ratio(0.0) - 1) < 0.1
    assert usage_ratio(0.1) > 1.3


def test_requests_reflect_a_drifting_interest_mix(sim_dir):
    man = S.Manifest.read(sim_dir)
    req = _read(sim_dir, S.REQUESTS_FILE)
    mix = _read(sim_dir, S.REQUESTS_TRUTH_FILE)
    assert man.has_requests and len(req) == man.n_requests == len(mix)
    assert 0.05 < len(set(req.column(S.USER_ID).to_pylist())) / man.n_users < 0.15
    exposed = np.stack(req.column("cand_exposed").to_numpy(zero_copy_only=False))
    assert exposed.shape[1] == 20 and (exposed.sum(1) == 6).all()
    s0 = np.stack(req.column("cand_score__usage_time").to_numpy(zero_copy_only=False))
    s1 = np.stack(req.column("cand_score__video_views").to_numpy(zero_copy_only=False))
    assert ((s0 >= 0) & (s0 <= 1)).all()
    # DDM label: share of exposed videos whose usage-time score dominates.
    label = ((s0 > s1) & exposed).sum(1) / exposed.sum(1)
    true_mix = mix.column(S.mix_column("usage_time")).to_numpy()
    assert np.corrcoef(label, true_mix)[0, 1] > 0.3
    m = np.stack([mix.column(S.mix_column(r)).to_numpy() for r in man.responses], 1)
    assert np.allclose(m.sum(1), 1, atol=1e-5)
    # The mix moves between a user's requests.
    users = req.column(S.USER_ID).to_numpy()
    same = users[1:] == users[:-1]
    assert np.abs(np.diff(true_mix))[same].mean() > 0.02
    recent = np.stack(req.column("recent_duration").to_numpy(zero_copy_only=False))
    assert recent.shape[1] == 10


def test_collect_report_and_atomic_swap(tmp_path):
    cfg = tiny_config(tmp_path)
    rep = run_collect(cfg, Path("/"))
    assert rep["rows"] == 3000 and set(rep["ate"]) == {"t1", "t2"}
    cell = rep["ate"]["t1"]["usage_time"]
    assert cell["lo"] < cell["ate"] < cell["hi"] and "true_ate" in cell
    assert (tmp_path / "reports" / "collect.md").read_text().count("|") > 20
    rct = cfg.paths.rct_dir(Path("/"))
    before = (rct / S.EXPERIMENT_FILE).stat().st_mtime_ns
    bad = tiny_config(tmp_path, n_users=3000)
    from fulcrum.config import FulcrumConfig

    broken = FulcrumConfig.model_validate({**bad.model_dump(), "source": {
        "type": "logs",
        "experiment": {"path": str(tmp_path / "missing.csv"), "user_id": "u", "timestamp": "t",
                       "treatment": {"column": "g", "values": {"0": "control", "1": "t1"}},
                       "responses": {"y": "y"}},
        "features": {"path": str(tmp_path / "missing.csv"), "user_id": "u", "timestamp": "t",
                     "numeric": {"x": "x"}},
    }})
    with pytest.raises(ContractError, match="missing.csv"):
        run_collect(broken, Path("/"))
    assert (rct / S.EXPERIMENT_FILE).stat().st_mtime_ns == before  # previous data untouched
    assert not rct.with_name("rct.tmp").exists()


# --------------------------------------------------------------------------- combined arms


COMBO_SHARES = [0.25, 0.2, 0.25, 0.3]  # control, t1, t2, t1+t2


@pytest.fixture(scope="module")
def combo_dir(tmp_path_factory) -> Path:
    """A small collected RCT with a combined arm t1+t2 (noise-free truth stays exact)."""
    tmp = tmp_path_factory.mktemp("combo")
    cfg = tiny_config(tmp, n_users=5000, feature_days=1, experiment_days=2,
                      combined_arms=["t1+t2"], arm_shares=COMBO_SHARES, combo_interaction=0.3)
    run_collect(cfg, Path("/"))
    return cfg.paths.rct_dir(Path("/"))


@pytest.mark.parametrize("entry, match", [
    ("t1+t3", "unknown treatment"),
    ("t1", "at least 2"),
    ("t1+t1", "twice"),
    ("t2+t1", "order of `treatments`"),
])
def test_combined_arm_entries_are_validated(entry, match):
    with pytest.raises(ValueError, match=match) as err:
        SimulatorSource(combined_arms=[entry])
    assert repr(entry) in str(err.value)  # the message names the offending entry


def test_combined_arms_size_the_shares():
    with pytest.raises(ValueError, match="needs 4 values"):
        SimulatorSource(combined_arms=["t1+t2"], arm_shares=[0.4, 0.3, 0.3])
    with pytest.raises(ValueError, match="listed twice"):
        SimulatorSource(combined_arms=["t1+t2", "t1+t2"])
    cfg = SimulatorSource(treatments=["a", "b", "c"], combined_arms=["a+c", "a+b+c"])
    assert cfg.arm_names() == ["control", "a", "b", "c", "a+c", "a+b+c"]
    assert cfg.shares() == [1 / 6] * 6
    with pytest.raises(ValueError):
        SimulatorSource(combo_interaction=1.5)


def test_combined_effects_lose_the_interaction_share():
    from pipelines.sources.sim_model import combined_effects

    tau = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) / 100
    out = combined_effects(tau, [[0, 2], [0, 1, 2]], 0.25)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    assert np.allclose(out[:, 0], 0.75 * (tau[:, 0] + tau[:, 2]))
    assert np.allclose(out[:, 1], 0.75 * tau.sum(1))
    assert np.allclose(combined_effects(tau, [[0, 1]], 0.0)[:, 0], tau[:, 0] + tau[:, 1])  # additive
    assert combined_effects(tau, [], 0.3).shape == (2, 0, 2)


def test_truth_of_a_combined_arm(combo_dir):
    man = S.Manifest.read(combo_dir)
    assert man.arms == ["control", "t1", "t2"] and man.combined_arms == ["t1+t2"]
    assert man.all_arms == ["control", "t1", "t2", "t1+t2"]
    t = _read(combo_dir, S.TRUTH_FILE)
    for resp in man.responses:
        mu = {a: t.column(S.truth_column(a, resp)).to_numpy() for a in man.all_arms}
        rel = {a: mu[a] / mu["control"] - 1 for a in man.all_arms}
        assert np.allclose(rel["t1+t2"], 0.7 * (rel["t1"] + rel["t2"]), rtol=0, atol=1e-6), resp
        assert np.std(rel["t1+t2"]) > 0.01  # heterogeneous, not a constant shift


def test_combined_arm_assignment_and_propensity(combo_dir):
    man = S.Manifest.read(combo_dir)
    exp = _read(combo_dir, S.EXPERIMENT_FILE)
    arm = exp.column(S.ARM_INDEX).to_numpy()
    n = len(arm)
    for k, p in enumerate(COMBO_SHARES):
        assert abs((arm == k).mean() - p) < 4 * np.sqrt(p * (1 - p) / n), k
    assert np.allclose(exp.column(S.PROPENSITY).to_numpy(), np.array(COMBO_SHARES)[arm])
    assert exp.column(S.ARM).to_pylist() == [man.all_arms[k] for k in arm]
    # Observed outcomes of the combined arm follow its truth.
    mu = _read(combo_dir, S.TRUTH_FILE).column(S.truth_column("t1+t2", "usage_time")).to_numpy()
    y = exp.column("usage_time").to_numpy()
    rows = arm == 3
    assert abs(y[rows].mean() - mu[rows].mean()) < 4 * y[rows].std(ddof=1) / np.sqrt(rows.sum())


def test_models_see_single_arms_only(combo_dir, tmp_path):
    from pipelines.collect import data_report
    from pipelines.training_set import build_training_frame_pandas, prepare

    man = S.Manifest.read(combo_dir)
    arm = _read(combo_dir, S.EXPERIMENT_FILE).column(S.ARM_INDEX).to_numpy()
    frame = build_training_frame_pandas(combo_dir)  # every RCT user: the policy stage needs the combined ones
    assert len(frame) == len(arm) and frame[S.ARM_INDEX].max() == 3
    prep = prepare(combo_dir, (0.7, 0.15, 0.15), 7, 8)
    assert len(prep.frame) == (arm < 3).sum() and prep.arm.max() == 2
    assert set(prep.frame[S.ARM]) == set(man.arms)
    rep = data_report(combo_dir, 0.95)
    assert rep["rows"] == (arm < 3).sum() and set(rep["ate"]) == {"t1", "t2"}
    assert rep["combined_arm_users"] == {"t1+t2": int((arm == 3).sum())}


def test_no_combined_arms_keeps_the_output():
    """Without combined arms the RCT is drawn exactly as before they existed."""
    import hashlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a", Path(d) / "b"
        a.mkdir(), b.mkdir()
        cfg = SimulatorSource(n_users=3000, feature_days=3, experiment_days=2)
        man = simulate_to(cfg, a)
        simulate_to(SimulatorSource.model_validate({**cfg.model_dump(), "combined_arms": []}), b)
        for f in (S.FEATURES_FILE, S.EXPERIMENT_FILE, S.TRUTH_FILE, S.REQUESTS_FILE, S.REQUESTS_TRUTH_FILE):
            assert _read(a, f).equals(_read(b, f)), f
        assert man.combined_arms == [] and man.all_arms == man.arms
        exp = _read(a, S.EXPERIMENT_FILE)
    # Integer draws only (arm and assignment time): machine-independent for a pinned numpy.
    # The digest was taken from the simulator before combined arms were added.
    h = hashlib.sha256(exp.column(S.ARM_INDEX).to_numpy().astype(np.int8).tobytes())
    h.update(exp.column(S.ASSIGN_TS).to_numpy().astype("datetime64[us]").astype(np.int64).tobytes())
    assert h.hexdigest()[:16] == "4da90591a8dcf791", "the RCT draws changed: simulated data is no longer reproducible"
