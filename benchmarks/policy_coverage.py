"""Do the policy stage's intervals hold the truth, and does HMUM pay, over seeds? Prints numbers.

For each seed: simulate (source.seed = seed), build the training set through Feast, train
HUM and DDM, run the policy stage; then read every policy's estimates and true values.
Reports, over seeds × policies × responses, how often each estimator's 95 % interval of
the value and of the relative lift holds the true one, and per policy the true objective
(mean ± std over seeds) with HMUM's paired differences.

``--margins`` reruns the policy stage per seed with each ``policy.gate_margin`` (the first
one gives the tables above) and reports what each would serve: whether the gate passes on
the test users, and the true objective of the released policy, where a blocked gate
serves every treatment off (a first release; value 0).

    .venv/bin/python benchmarks/policy_coverage.py --seeds 10 --users 200000
    .venv/bin/python benchmarks/policy_coverage.py --seeds 5 --margins 1 1.5 2
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


def run_seed(seed: int, users: int, epochs: int | None, work: Path,
             margins: list[float]) -> list[tuple[list[dict], dict]]:
    """Simulate, build the training set, train HUM and DDM; then the policy stage once per gate margin."""
    from pipelines.collect import run_collect
    from pipelines.policy import run_policy
    from pipelines.train import run_train
    from pipelines.train_ddm import run_train_ddm
    from pipelines.training_set import run_training_set

    root = work / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(__file__).resolve().parents[1] / "feature_repo", root / "feature_repo", dirs_exist_ok=True)
    over = {"seed": seed, "source.seed": seed, "source.n_users": users}
    if epochs is not None:
        over["train.epochs"] = epochs
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    cfg = load_config(params, over)
    for stage in (run_collect, run_training_set, run_train, run_train_ddm):
        stage(cfg, root)
    out = []
    for m in margins:
        summary = run_policy(load_config(params, {**over, "policy.gate_margin": m}), root)
        out.append((json.loads((root / "reports" / "policy_table.json").read_text()), summary))
    shutil.rmtree(root / "data", ignore_errors=True)
    return out


def _sd(v: np.ndarray) -> float:
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def served(table: list[dict], summary: dict) -> dict:
    """What a release from this policy run would serve: HMUM at its σ if the gate passes, else every treatment off."""
    hm = next(r for r in table if r["policy"] == "hmum")
    passed = bool(summary["gate_passed"])
    return {"gate_passed": passed, "sigma": summary["sigma"], "treated": hm["treated_share"],
            "hmum_true_objective": hm["truth"]["objective"], "hmum_true_rel_lift": hm["truth"]["rel_lift"],
            "served_true_objective": hm["truth"]["objective"] if passed else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="number of seeds (1..N)")
    ap.add_argument("--users", type=int, default=200_000, help="simulated users per seed")
    ap.add_argument("--epochs", type=int, default=None, help="HUM epochs (train.epochs; default: params.yaml's)")
    ap.add_argument("--margins", type=float, nargs="+", default=[1.0],
                    help="policy.gate_margin values, each a policy-stage run on the same models")
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
            runs = run_seed(seed, args.users, args.epochs, Path(tmp), args.margins)
            table, summary = runs[0]
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
                             "hmum_treated": summary["policies"]["hmum"]["treated_share"],
                             "margins": {str(m): served(*run) for m, run in zip(args.margins, runs, strict=True)}})
            print(f"seed {seed}: σ {summary['sigma']}, HMUM treats {per_seed[-1]['hmum_treated']:.1%}, "
                  f"targets {summary.get('targets')} ({time.perf_counter() - t0:.0f} s)", flush=True)
            for m, got in per_seed[-1]["margins"].items():
                print(f"  gate_margin {m}: gate {'passed' if got['gate_passed'] else 'BLOCKED'}, treats "
                      f"{got['treated']:.1%}, HMUM true objective {got['hmum_true_objective']:+.4f}, served "
                      f"{got['served_true_objective']:+.4f}", flush=True)
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
    print("\nper policy.gate_margin: gate passes on test users, true objective of HMUM and of what is served "
          "(blocked: all off), mean ± std over seeds; served minus the first margin's, paired")
    first = np.array([s["margins"][str(args.margins[0])]["served_true_objective"] for s in per_seed])
    for m in args.margins:
        got = [s["margins"][str(m)] for s in per_seed]
        hv = np.array([g["hmum_true_objective"] for g in got])
        sv = np.array([g["served_true_objective"] for g in got])
        d = sv - first
        print(f"  {m:g}: gate {sum(g['gate_passed'] for g in got)}/{len(got)}, treats "
              f"{np.mean([g['treated'] for g in got]):.1%}, HMUM {hv.mean():+.4f} ± {_sd(hv):.4f}, served "
              f"{sv.mean():+.4f} ± {_sd(sv):.4f}, Δ served {d.mean():+.4f} ± {_sd(d):.4f} "
              f"({int((d > 0).sum())} better / {int((d < 0).sum())} worse)")
    out = {"seeds": args.seeds, "users": args.users, "margins": args.margins,
           "coverage": {f"{e}/{k}": float(np.mean(v)) for (e, k), v in hits.items()},
           "true_objective": {k: [float(x) for x in v] for k, v in objective.items()},
           "interest_weighted_gain": {k: [float(x) for x in v] for k, v in gain.items()},
           "per_seed": per_seed, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
