"""How well can the features rank the true effects at all? The simulator's ceiling for ρ(true).

For each data seed the default RCT is simulated (the cache of ``benchmarks/hum_ablation.py``),
and a LightGBM regressor is fitted on the test users' encoded features to their *true* δ of each
(treatment, response) cell, two-fold (each half scored by the model of the other half). Its
Spearman ρ with the truth is what a model that learned δ(x) without outcome noise would reach:
the rest of the gap between a trained model and 1 is the latent traits the features do not show.
A model's ρ far below this ceiling, and a spread over data seeds far above the ceiling's own,
mean the gap is estimation from noisy outcomes (sample size), not the world's difficulty.

    .venv/bin/python benchmarks/effect_ceiling.py --seeds 1 2 3 4 5
    .venv/bin/python benchmarks/effect_ceiling.py --seeds 1 2 3 --users 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def ceiling_rho(x: np.ndarray, truth: np.ndarray, seed: int, n_estimators: int = 400) -> np.ndarray:
    """ρ(two-fold LightGBM fit of ``truth`` from ``x``, truth) per cell: ``x`` (n, f), ``truth`` (n, K, R) → (K, R)."""
    import lightgbm as lgb

    from fulcrum.metrics.scores import rank_correlation

    n, k_, r_ = truth.shape
    half = np.random.default_rng(seed).random(n) < 0.5
    out = np.empty((k_, r_))
    for k in range(k_):
        for r in range(r_):
            pred = np.empty(n)
            for fit_rows in (half, ~half):
                m = lgb.LGBMRegressor(n_estimators=n_estimators, learning_rate=0.05, num_leaves=31, verbose=-1,
                                      random_state=seed, n_jobs=2)
                m.fit(x[fit_rows], truth[fit_rows, k, r])
                pred[~fit_rows] = m.predict(x[~fit_rows])
            out[k, r] = rank_correlation(pred, truth[:, k, r])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="data seeds (source.seed)")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--split", type=float, nargs=3, default=[0.7, 0.15, 0.15], help="train / valid / test shares")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fulcrum_ablation"), help="simulation cache (shared with hum_ablation)")
    args = ap.parse_args()

    from hum_ablation import prepared

    from pipelines.reporting import relative_truth

    rows, cells = [], None
    for seed in args.seeds:
        t0 = time.perf_counter()
        prep, mu = prepared(seed, args.users, args.work, tuple(args.split))
        man = prep.manifest
        cells = [f"{r}/{t}" for t in man.treatments for r in man.responses]
        rho = ceiling_rho(prep.x[prep.rows("test")], relative_truth(mu), seed)
        rows.append(rho.ravel())
        print(f"data seed {seed}: " + ", ".join(f"{c} {v:.3f}" for c, v in zip(cells, rho.ravel()))
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    a = np.array(rows)
    sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
    print(f"\nceiling ρ over {len(a)} data seeds ({args.users:,} users, {int(prep.rows('test').sum()):,} test users):")
    print("| " + " | ".join(cells) + " |\n|" + "---|" * len(cells))
    print("| " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(a.mean(0), sd)) + " |")


if __name__ == "__main__":
    main()
