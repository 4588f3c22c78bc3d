"""Drift-gate cost: the drift stage's Evidently checks on N scored users.

    python benchmarks/drift_checks.py --users 1000000

Set-up (not timed): a simulated dataset of N users, its Feast training set, a one-epoch
HUM and the score stage. Timed:

1. importing Evidently (paid once per drift stage process);
2. the drift stage on the first day (features only: no publication to compare with yet);
3. the drift stage once references exist (features, scores and responses), as every
   later day runs it.

Each check compares seeded samples of at most ``--sample-size`` rows per side.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import FulcrumConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--sample-size", type=int, default=50_000, help="rows per side of each check")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = ap.parse_args()

    from pipelines.collect import run_collect
    from pipelines.score import run_score
    from pipelines.train import run_train
    from pipelines.training_set import run_training_set

    root = args.workdir or Path(tempfile.mkdtemp(prefix="fulcrum-drift-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    cfg = FulcrumConfig.model_validate({
        "paths": {"data": str(root / "data"), "reports": str(root / "reports")},
        "source": {"n_users": args.users, "feature_days": 2, "experiment_days": 2},
        "train": {"epochs": 1, "min_epochs": 1},
        "drift": {"sample_size": args.sample_size},
    })
    try:
        print(f"set-up: {args.users:,} users, training set, HUM, scores under {root}", flush=True)
        for stage in (run_collect, run_training_set, run_train, run_score):
            stage(cfg, root)

        t0 = time.perf_counter()
        import evidently  # noqa: F401 - timed: the import is part of every drift stage's cost

        from pipelines.drift import run_drift, save_reference
        print(f"{'import Evidently':<48} {time.perf_counter() - t0:7.2f} s", flush=True)

        t0 = time.perf_counter()
        first = run_drift(cfg, root)
        print(f"{'drift stage, first day (features only)':<48} {time.perf_counter() - t0:7.2f} s", flush=True)
        save_reference(cfg, root)  # what publish does: today's scores and responses become the reference
        t0 = time.perf_counter()
        later = run_drift(cfg, root)
        print(f"{'drift stage, later days (all three checks)':<48} {time.perf_counter() - t0:7.2f} s", flush=True)
        for name in ("features", "scores", "responses"):
            print(f"  {name}: {later[name]['status']}, drifted share {later[name]['share']}")
        print(f"first day: {first['features']['status']}; gate allows publishing: {later['publish_allowed']}")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
