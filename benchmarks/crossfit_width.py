"""How wide is a model's QINI interval: today's single test split vs cross-fitting on all users?

    .venv/bin/python benchmarks/crossfit_width.py --users 64000 --model gbm_t_learner

Simulates a 3-arm RCT (control, t1, t2; the issue's size: 64k users), then per cell
(treatment × response):

- **single split** (today's protocol): the model trained on the 70 % train users (seeds
  ``--seeds``), QINI of the seed-averaged δ on the 15 % test users, 95 % bootstrap interval
  over those test users. The same model on other splits (``--split-seeds``) shows how far the
  point moves with the split alone, which that interval does not cover.
- **cross-fitted**: ``--folds`` folds by user hash, each user scored by the fold model that
  never saw them (``pipelines.crossfit.out_of_fold``), repeated over fold seeds
  (``--repeats``) and model seeds; QINI of the averaged out-of-fold δ on all users, interval =
  bootstrap over all users widened by the spread between repeats (split and seed variance).

Prints the widths and their ratio (target of issue 16: cross-fitted ≤ half the single split's).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fulcrum.config import load_config  # noqa: E402


def qini_cells(y, arm, delta, treatments, responses, idx=None) -> np.ndarray:
    """(K*R,) normalized QINI per cell on rows ``idx`` (all rows by default)."""
    from fulcrum.metrics import qini_auc_score

    idx = np.arange(len(y)) if idx is None else idx
    out = []
    for k in range(1, len(treatments) + 1):
        for r in range(len(responses)):
            rows = idx[(arm[idx] == 0) | (arm[idx] == k)]
            out.append(qini_auc_score(y[rows, r], delta[rows, k - 1, r], (arm[rows] == k).astype(int)))
    return np.asarray(out)


def boot_width(y, arm, delta, man, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(point (C,), bootstrap standard error (C,)) of the per-cell QINI over rows."""
    rng = np.random.default_rng(seed)
    point = qini_cells(y, arm, delta, man.treatments, man.responses)
    boots = np.stack([qini_cells(y, arm, delta, man.treatments, man.responses, rng.integers(0, len(y), len(y)))
                      for _ in range(n_boot)])
    return point, boots.std(axis=0, ddof=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=64_000)
    ap.add_argument("--model", default="gbm_t_learner", help="any compare model (gbm_* are fast)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="model seeds")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[11, 12, 13], help="other single splits")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="fold assignments (fold seeds)")
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--data-seed", type=int, default=7)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pipelines.collect import run_collect
    from pipelines.compare import fit_predict
    from pipelines.crossfit import out_of_fold
    from pipelines.training_set import prepare, split_users

    cfg = load_config(REPO / "params.yaml", {
        "seed": args.data_seed, "source.seed": args.data_seed, "source.n_users": args.users,
        "source.combined_arms": [], "source.arm_shares": None})
    work = Path(tempfile.mkdtemp(prefix="fulcrum-crossfit-"))
    try:
        t0 = time.perf_counter()
        run_collect(cfg, work)
        rct = cfg.paths.rct_dir(work)
        prep = prepare(rct, cfg.train.split, cfg.seed, cfg.train.n_bins, target=cfg.train.target)
        man = prep.manifest
        cells = [f"{t}/{r}" for t in man.treatments for r in man.responses]

        # Today's protocol: one split, seed-averaged δ on its test users, bootstrap over them.
        test = prep.rows("test")
        single = np.mean([fit_predict(prep, args.model, cfg, s)[0] for s in args.seeds], axis=0)
        s_point, s_se = boot_width(prep.y[test], prep.arm[test], single, man, args.boot, 0)
        moved = []
        users = prep.frame["user_id"].to_numpy()
        for ss in args.split_seeds:  # the same protocol on other splits: how far the point moves
            other = prep.with_split(split_users(users, tuple(cfg.train.split), ss))
            d = np.mean([fit_predict(other, args.model, cfg, s)[0] for s in args.seeds], axis=0)
            o = other.rows("test")
            moved.append(qini_cells(prep.y[o], prep.arm[o], d, man.treatments, man.responses))
        moved = np.stack(moved)

        # Cross-fitted: every user, out of fold; repeats over fold seeds and model seeds.
        valid_share = cfg.train.split[1] / (cfg.train.split[0] + cfg.train.split[1])
        oofs = []
        for rep in range(args.repeats):
            for s in args.seeds:
                oofs.append(out_of_fold(prep, lambda p, ms: fit_predict(p, args.model, cfg, ms)[0], args.folds,
                                        1000 + rep, valid_share, s))
        per_run = np.stack([qini_cells(prep.y, prep.arm, o, man.treatments, man.responses) for o in oofs])
        c_point, c_se = boot_width(prep.y, prep.arm, np.mean(oofs, axis=0), man, args.boot, 0)
        between = per_run.std(axis=0, ddof=1) / np.sqrt(len(per_run)) if len(per_run) > 1 else 0 * c_se
        c_total = np.sqrt(c_se**2 + between**2)
        minutes = (time.perf_counter() - t0) / 60
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.model}, {args.users:,} users, 3 arms; single split: {int(test.sum()):,} test users, seeds "
          f"{args.seeds}; cross-fitted: {args.folds} folds × {args.repeats} fold seeds × {len(args.seeds)} model "
          f"seeds on all users ({minutes:.1f} min)\n")
    print("| cell | single split QINI ± 1.96·se | QINI on other splits (min … max) | cross-fitted QINI ± 1.96·se "
          "(users + split/seed) | width ratio cross-fitted / single |")
    print("|---|---|---|---|---|")
    for i, c in enumerate(cells):
        print(f"| {c} | {s_point[i]:+.4f} ± {1.96 * s_se[i]:.4f} | {moved[:, i].min():+.4f} … {moved[:, i].max():+.4f} "
              f"| {c_point[i]:+.4f} ± {1.96 * c_total[i]:.4f} | {c_total[i] / s_se[i]:.2f} |")
    print(f"\nmean width ratio {np.mean(c_total / s_se):.2f} (target ≤ 0.50)")


if __name__ == "__main__":
    main()
