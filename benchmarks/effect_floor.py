"""How well could any learner rank the simulator's effects from one data set? An oracle-basis bound.

    python benchmarks/effect_floor.py                                   # data seeds 1-10, 200k users
    python benchmarks/effect_floor.py --users 200000 1000000 --out docs/effect_floor.json

Every data seed's RCT is drawn exactly as the daily cycle draws it (``simulator.rct_block``: the
same users, arms and responses as ``benchmarks/hum_ablation.py``'s data set of that seed) and split
as the train stage splits it. The estimators are *given* what no model sees: the 10 latent columns
the true effects are built from (``sim_model.effect_basis``). Per (treatment k, response r) each
fits, on the training users of control and arm k,

    target_r = Z β + 1[arm = k] · Z γ,    Z = [1, basis]    (Z γ: the effect on the target's scale)

and scores τ̂ = Z γ on the test users (Spearman ρ with the true relative effect τ_kr). The targets:

- ``ols``: the models' target (``train.target``, log1p by default), squared error;
- ``huber``: the same with the models' robust loss (``train.huber_delta``, iteratively reweighted);
- ``positive``: log y on the rows with y > 0 only (the amount part of a two-part model,
  ``train.positive_part``); the simulator's zeros are users who never came back, whatever the arm;
- ``mu0``: y / μ0 with each user's *true* control mean μ0 (its noise is the response's alone).

The true τ of the four designed cells is a monotone function (tanh) of one linear index of this
basis, so with infinite data ρ → 1; what is left at a data size is the response noise as the
target sees it. A model that must also learn the basis from the features has more to estimate
from the same responses, so a seed-to-seed spread of ρ printed here is the data's, not a model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fulcrum.config import load_config  # noqa: E402
from pipelines.sources import sim_model as M  # noqa: E402
from pipelines.sources.simulator import effect_params_of, rct_block  # noqa: E402
from pipelines.training_set import split_users  # noqa: E402


def simulate_rct(seed: int, users: int) -> dict[str, np.ndarray]:
    """The RCT of data seed ``seed`` with its latent basis: user_id, arm, y (n, R), mu (n, A, R), tau, basis."""
    cfg = load_config(REPO / "params.yaml", {"source.seed": seed, "source.n_users": users}).source
    params = effect_params_of(cfg)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("user_id", "arm", "y", "mu", "tau", "basis")}
    for b in range(-(-users // M.BLOCK)):
        blk = rct_block(cfg, params, b)
        for key, value in (("user_id", blk.pop.user_id), ("arm", blk.arm), ("y", blk.y), ("mu", blk.mu),
                           ("tau", blk.tau), ("basis", M.effect_basis(blk.pop))):
            parts[key].append(value)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["responses"] = np.asarray(cfg.responses)
    out["treatments"] = np.asarray(cfg.treatments)
    return out


def oracle_basis_effect(z: np.ndarray, treated: np.ndarray, target: np.ndarray, huber_delta: float | None = None,
                        iterations: int = 30) -> np.ndarray:
    """γ of ``target = Z β + treated · Z γ`` (z: (n, P) with its intercept; treated: (n,) 0/1): least squares,
    or the Huber fit (r² up to |r| δ, linear beyond) by iteratively reweighted least squares."""
    design = np.concatenate([z, z * treated[:, None]], axis=1)  # (n, 2P)

    def solve(weight: np.ndarray) -> np.ndarray:  # weighted normal equations: (2P, 2P), cheap at any n
        return np.linalg.solve(design.T @ (design * weight[:, None]), design.T @ (weight * target))

    coef = solve(np.ones(len(target)))
    for _ in range(iterations if huber_delta is not None else 0):
        coef = solve(np.minimum(1.0, huber_delta / np.maximum(np.abs(target - design @ coef), 1e-12)))  # (n,) weights
    return coef[z.shape[1]:]  # (P,): the treated part


ESTIMATORS = ("ols", "huber", "positive", "mu0")


def floor_of_seed(seed: int, users: int, split: tuple[float, float, float]) -> dict[str, dict[str, float]]:
    """ρ(true τ) of each estimator per ``response/treatment`` cell on data seed ``seed``."""
    from models.target import TargetTransform

    tc = load_config(REPO / "params.yaml").train
    d = simulate_rct(seed, users)
    part = split_users(d["user_id"], split, seed)  # 0 train, 1 valid, 2 test: the train stage's split
    z = np.concatenate([np.ones((len(part), 1), np.float64), d["basis"].astype(np.float64)], axis=1)  # (n, 11)
    y = d["y"].astype(np.float64)
    encoded = TargetTransform.fit(tc.target, y[part == 0]).encode(y).astype(np.float64)  # (n, R)
    mu0 = d["mu"][:, 0, :]  # (n, R) the true control means
    test = part == 2
    cells: dict[str, dict[str, float]] = {}
    for k, t in enumerate(d["treatments"]):
        rows = (part == 0) & np.isin(d["arm"], (0, k + 1))
        for r, resp in enumerate(d["responses"]):
            pos = rows & (y[:, r] > 0)
            fits = {"ols": (rows, encoded[:, r], None), "huber": (rows, encoded[:, r], tc.huber_delta),
                    "positive": (pos, np.log(np.where(pos, y[:, r], 1.0)), None), "mu0": (rows, y[:, r] / mu0[:, r], None)}
            true = d["tau"][test, k + 1, r]
            cells[f"{resp}/{t}"] = {
                name: float(spearmanr(z[test] @ oracle_basis_effect(z[m], (d["arm"][m] == k + 1).astype(np.float64),
                                                                      target[m], delta), true).statistic)
                for name, (m, target, delta) in fits.items()}
    return cells


def summarize(records: list[dict]) -> list[str]:
    """One line per (users, cell, estimator): ρ mean ± std over seeds, and each seed's ρ."""
    lines = []
    for users in sorted({r["users"] for r in records}):
        rows = [r for r in records if r["users"] == users]
        for cell in rows[0]["cells"]:
            for est in ESTIMATORS:
                rho = np.array([r["cells"][cell][est] for r in rows])
                std = rho.std(ddof=1) if len(rho) > 1 else 0.0
                per_seed = " ".join(f"{r['seed']}:{r['cells'][cell][est]:.2f}" for r in rows)
                lines.append(f"{users:>9,} {cell:<20} {est:<8} ρ {rho.mean():.3f} ± {std:.3f}   seeds {per_seed}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)), help="data seeds (default 1-10)")
    ap.add_argument("--users", type=int, nargs="+", default=[200_000], help="data sizes (default 200000)")
    ap.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VALID", "TEST"),
                    help="the user split (default 0.7 0.15 0.15, as hum_ablation)")
    ap.add_argument("--out", type=Path, help="write every seed's cells as JSON here")
    args = ap.parse_args(argv)
    records = []
    for users in args.users:
        for seed in args.seeds:
            t0 = time.perf_counter()
            records.append({"seed": seed, "users": users, "cells": floor_of_seed(seed, users, tuple(args.split))})
            print(f"seed {seed}, {users:,} users: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print("oracle-basis estimators (the true latent basis given), ρ(true τ) over data seeds, mean ± std:")
    print("\n".join(summarize(records)))
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
