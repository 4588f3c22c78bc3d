"""Simulator throughput: time to simulate N users end to end (generation + parquet writes).

    python benchmarks/simulate.py --users 1000000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from fulcrum.config import SimulatorSource
from pipelines.sources.simulator import simulate_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--feature-days", type=int, default=14)
    ap.add_argument("--experiment-days", type=int, default=7)
    args = ap.parse_args()
    cfg = SimulatorSource(n_users=args.users, feature_days=args.feature_days, experiment_days=args.experiment_days)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        man = simulate_to(cfg, Path(tmp))
        dt = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"users={man.n_users:,} feature_rows={man.n_feature_rows:,} requests={man.n_requests:,}")
    print(f"seconds={dt:.1f} users_per_s={man.n_users / dt:,.0f} output_MiB={size:.0f} peak_rss_MiB={peak:.0f}")


if __name__ == "__main__":
    main()
