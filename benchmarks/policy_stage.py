"""The policy stage's cost on N simulated users (target: 1M users in ≤ 60 s on 2 cores). Prints numbers.

Builds the inputs once (simulate, Feast training set, HUM for --epochs, DDM for
--ddm-epochs: their quality is not what is timed), then times ``run_policy``
--repeat times and prints each run's breakdown: loading the held-out users and
predicting μ̂ and DDM weights, σ calibration (HMUM and fixed-weight), evaluating
every policy with three estimators and bootstrap intervals, the frontier sweep, reports.

    .venv/bin/python benchmarks/policy_stage.py --users 1000000
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=2, help="HUM epochs for the inputs (not timed)")
    ap.add_argument("--ddm-epochs", type=int, default=2, help="DDM epochs for the inputs (not timed)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="build the inputs here and keep them")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pipelines.collect import run_collect
    from pipelines.policy import run_policy
    from pipelines.train import run_train
    from pipelines.train_ddm import run_train_ddm
    from pipelines.training_set import run_training_set

    root = args.keep or Path(tempfile.mkdtemp(prefix="fulcrum-policy-"))
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "feature_repo", root / "feature_repo", dirs_exist_ok=True)
    cfg = load_config(REPO / "params.yaml", {"source.n_users": args.users, "train.epochs": args.epochs,
                                             "train.min_epochs": 1, "ddm.epochs": args.ddm_epochs})
    t0 = time.perf_counter()
    if not (root / "data" / "ddm").exists():
        for stage in (run_collect, run_training_set, run_train, run_train_ddm):
            t = time.perf_counter()
            stage(cfg, root)
            print(f"inputs: {stage.__name__} {time.perf_counter() - t:.1f} s", flush=True)
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s under {root}")
    runs = []
    for i in range(args.repeat):
        t = time.perf_counter()
        s = run_policy(cfg, root)
        runs.append(time.perf_counter() - t)
        print(f"run {i + 1}: {runs[-1]:.1f} s  breakdown {s['timings_s']}  "
              f"({s['n_valid']:,} validation / {s['n_test']:,} test users)", flush=True)
    med = statistics.median(runs)
    print(f"\npolicy stage on {args.users:,} users: median {med:.1f} s over {len(runs)} runs "
          f"({', '.join(f'{r:.1f}' for r in runs)}); target ≤ 60 s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"σ {s['sigma']}, gate passed: {s['gate_passed']}, targets: {s.get('targets')}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
