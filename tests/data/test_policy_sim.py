"""IPS / DR on the project's simulator: unbiased for a policy's true value (truth tables), over seeds."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import SimulatorSource
from fulcrum.ope import estimate, true_values
from pipelines.sources.simulator import simulate_to


def test_ips_and_dr_estimate_the_true_value_on_simulated_rcts(tmp_path):
    z = {"ips": [], "dr": []}
    for seed in range(1, 7):
        out = tmp_path / f"s{seed}"
        out.mkdir()
        cfg = SimulatorSource(n_users=20_000, seed=seed, feature_days=1, experiment_days=1,
                              combined_arms=["t1+t2"], arm_shares=[0.34, 0.24, 0.24, 0.18],
                              requests={"user_share": 0.01})
        man = simulate_to(cfg, out)
        exp = pq.read_table(out / S.EXPERIMENT_FILE).to_pandas()
        cols = [S.truth_column(a, r) for a in man.all_arms for r in man.responses]
        mu = pq.read_table(out / S.TRUTH_FILE, columns=cols).to_pandas().to_numpy().reshape(len(exp), 4, -1)
        uid = exp[S.USER_ID].to_numpy()
        policy = np.stack([np.zeros(len(uid), int), uid % 4], axis=1)  # control, and a rule over all four arms
        # A rough outcome model (arm means) for DR: its error must not bias the estimate.
        y = exp[man.responses].to_numpy()
        arm = exp[S.ARM_INDEX].to_numpy()
        mu_hat = np.stack([y[arm == a].mean(0) for a in range(4)])[None].repeat(len(uid), 0)
        est = estimate(policy, arm, y, exp[S.PROPENSITY].to_numpy(), mu_hat=mu_hat, estimators=("ips", "dr"),
                       n_boot=100, seed=seed)
        truth = true_values(policy, mu)[0][1]  # (R,)
        for name in z:
            e = est[name].value
            se = (e.hi[1] - e.lo[1]) / (2 * 1.96)
            z[name].append((e.point[1] - truth) / se)
    for name, v in z.items():
        v = np.asarray(v)  # (seeds, R) standardized errors
        assert np.abs(v).max() < 4, (name, v)
        assert np.abs(v.mean(0)).max() < 4 / np.sqrt(len(v)), (name, v)  # mean of unit normals: 4 SE
