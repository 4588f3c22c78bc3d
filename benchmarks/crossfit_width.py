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
  bootstrap over all users widened by the spread between repeats (split and seed variance):
  ``pipelines.crossfit.qini_intervals``, the same interval the evaluate stage reports.

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
    from pipelines.crossfit import cell_qini, fold_valid_share, out_of_fold, qini_intervals
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
        one = qini_intervals(prep.y[test], prep.arm[test], single[None], args.boot, 0)  # users only
        s_point, s_se = one["point"], one["se"]
        moved = []
        users = prep.frame["user_id"].to_numpy()
        for ss in args.split_seeds:  # the same protocol on other splits: how far the point moves
            other = prep.with_split(split_users(users, tuple(cfg.train.split), ss))
            d = np.mean([fit_predict(other, args.model, cfg, s)[0] for s in args.seeds], axis=0)
            o = other.rows("test")
            moved.append(cell_qini(prep.y[o], prep.arm[o], d, len(man.treatments), len(man.responses)))
        moved = np.stack(moved)

        # Cross-fitted: every user, out of fold; repeats over fold seeds and model seeds.
        valid_share = fold_valid_share(cfg.train.split)
        oofs = []
        for rep in range(args.repeats):
            for s in args.seeds:
                oofs.append(out_of_fold(prep, lambda p, ms: fit_predict(p, args.model, cfg, ms)[0], args.folds,
                                        1000 + rep, valid_share, s))
        both = qini_intervals(prep.y, prep.arm, np.stack(oofs), args.boot, 0)  # users + split and seed
        c_point, c_total = both["point"], both["se"]
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
