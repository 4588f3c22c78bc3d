"""Do the policy stage's intervals hold the truth, and does HMUM pay, over seeds? Prints numbers.

For each seed: simulate (source.seed = seed), build the training set through Feast, train
HUM and DDM, run the policy stage; then read every policy's estimates and true values.
Reports, over seeds × policies × responses, how often each estimator's 95 % interval of
the value and of the relative lift holds the true one, and per policy the true objective
(mean ± std over seeds) with HMUM's paired differences.

    .venv/bin/python benchmarks/policy_coverage.py --seeds 10 --users 200000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import load_config  # noqa: E402
from fulcrum.ope import ESTIMATORS  # noqa: E402


def run_seed(seed: int, users: int, epochs: int, work: Path) -> tuple[list[dict], dict]:
    from pipelines.collect import run_collect
    from pipelines.policy import run_policy
    from pipelines.train import run_train
    from pipelines.train_ddm import run_train_ddm
    from pipelines.training_set import run_training_set

    root = work / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(__file__).resolve().parents[1] / "feature_repo", root / "feature_repo", dirs_exist_ok=True)
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml",
                      {"seed": seed, "source.seed": seed, "source.n_users": users, "train.epochs": epochs})
    for stage in (run_collect, run_training_set, run_train, run_train_ddm):
        stage(cfg, root)
    summary = run_policy(cfg, root)
    table = json.loads((root / "reports" / "policy_table.json").read_text())
    shutil.rmtree(root / "data", ignore_errors=True)
    return table, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="number of seeds (1..N)")
    ap.add_argument("--users", type=int, default=200_000, help="simulated users per seed")
    ap.add_argument("--epochs", type=int, default=30, help="HUM epochs (train.epochs)")
    ap.add_argument("--out", type=Path, default=Path("reports/policy_coverage.json"))
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    hits = {(e, kind): [] for e in ESTIMATORS for kind in ("value", "rel_lift")}
    objective: dict[str, list[float]] = {}
    gain: dict[str, list[float]] = {}
    per_seed = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            table, summary = run_seed(seed, args.users, args.epochs, Path(tmp))
            for row in table:
                truth = row["truth"]
                for e in ESTIMATORS:
                    for r in range(len(truth["value"])):
                        hits[(e, "value")].append(row[e]["value_lo"][r] <= truth["value"][r] <= row[e]["value_hi"][r])
                        if row["policy"] != "all-control":  # its lift is 0 by construction
                            hits[(e, "rel_lift")].append(
                                row[e]["rel_lift_lo"][r] <= truth["rel_lift"][r] <= row[e]["rel_lift_hi"][r])
                objective.setdefault(row["policy"], []).append(truth["objective"])
                gain.setdefault(row["policy"], []).append(truth["interest_weighted_gain"])
            per_seed.append({"seed": seed, "sigma": summary["sigma"], "gate_passed": summary["gate_passed"],
                             "targets": summary.get("targets"),
                             "hmum_treated": summary["policies"]["hmum"]["treated_share"]})
            print(f"seed {seed}: σ {summary['sigma']}, HMUM treats {per_seed[-1]['hmum_treated']:.1%}, "
                  f"targets {summary.get('targets')} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{args.seeds} seeds × {args.users:,} users; 95 % bootstrap intervals")
    print("coverage of the truth (share of seed × policy × response intervals holding it):")
    for (e, kind), v in hits.items():
        print(f"  {e:6s} {kind:9s} {np.mean(v):.3f}  (n = {len(v)})")
    print("\ntrue objective Σλ·relative lift, mean ± std over seeds; interest-weighted gain; HMUM − policy (paired)")
    hm = np.asarray(objective["hmum"])
    for name, v in objective.items():
        v = np.asarray(v)
        d = hm - v
        print(f"  {name:20s} {v.mean():+.4f} ± {v.std(ddof=1):.4f}   gain {np.mean(gain[name]):+.4f}   "
              f"HMUM − it {d.mean():+.4f} ± {d.std(ddof=1):.4f}")
    out = {"seeds": args.seeds, "users": args.users,
           "coverage": {f"{e}/{k}": float(np.mean(v)) for (e, k), v in hits.items()},
           "true_objective": {k: [float(x) for x in v] for k, v in objective.items()},
           "interest_weighted_gain": {k: [float(x) for x in v] for k, v in gain.items()},
           "per_seed": per_seed, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
