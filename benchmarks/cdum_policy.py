"""CDUM's true policy value on the duration-mix scenario, against every single-strategy policy.

    python benchmarks/cdum_policy.py --users 50000 --seeds 1 2 3

For each seed: simulate the duration-mix RCT (treatments short / medium / long), train CPM
(daily ŷ^k, ŷ^0 per user) and FIC (r̂^k per request), then decide every request of the
users neither model trained on (CPM's test users that are also among FIC's held-out users) with CDUM's rule (``models.decision.cdum_decide``: at most one treatment,
the best r̂^k·ŷ^k − ŷ^0 above ξ = 0, responses scaled by their mean control outcome and
weighed equally). Each policy's *true* value comes from the simulator's truth: a request of
user u under treatment k yields μ_u^0 · (1 + τ_req), τ_req the effect at the moment's interest
(``pipelines.sources.sim_duration.request_effects``). Policies compared: all control,
always-k for each k, CDUM, CPM alone (r̂ = 1: the daily model without the real-time
correction), and the oracle (the true best arm per request). Values are relative to all
control, in % of the weighted outcome; mean ± std over seeds and the seeds where CDUM wins.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fulcrum.config import load_config  # noqa: E402

TREATMENTS = ["short", "medium", "long"]


def one_seed(seed: int, users: int, user_share: float, work: Path) -> dict[str, float]:
    import pyarrow.parquet as pq
    import torch

    from fulcrum import schema as S
    from models.ddm_io import arrays_from_table, read_request_table
    from models.ddm_numpy import load_serving_ddm
    from models.decision import EXCLUSIVE, cdum_decide
    from models.train import predict_mu
    from pipelines.collect import run_collect
    from pipelines.sources.sim_duration import request_effects
    from pipelines.train import train_net
    from pipelines.train_ddm import split_by_user
    from pipelines.train_fic import FIC_FILE, run_train_fic
    from pipelines.training_set import prepare

    cfg = load_config(REPO / "params.yaml", {
        "seed": seed, "families": ["hmum", "cdum"], "source.seed": seed, "source.n_users": users,
        "source.scenario": "duration_mix",
        "source.treatments": TREATMENTS, "source.combined_arms": [], "source.arm_shares": None,
        "source.requests.user_share": user_share, "decision.sigma": {}})
    root = work / f"seed{seed}"
    run_collect(cfg, root)
    rct = cfg.paths.rct_dir(root)
    tc = cfg.train.model_copy(update={"model": "cpm"})
    prep = prepare(rct, tc.split, seed, tc.n_bins, target=tc.target)
    net, _, _ = train_net(prep, "cpm", tc, seed)
    mu_hat = predict_mu(net, torch.from_numpy(prep.x), prep.target)  # (n, A, R): every user, response units
    run_train_fic(cfg, root)
    fic = load_serving_ddm(cfg.paths.fic_dir(root) / FIC_FILE)

    users = prep.frame[S.USER_ID].to_numpy()
    table = read_request_table(rct, prep.manifest.responses)
    req_users = table.column(S.USER_ID).to_numpy()
    # Requests of users neither model saw: CPM's test users among FIC's held-out users (FIC's own split).
    keep = np.isin(req_users, users[prep.rows("test")]) & split_by_user(req_users, cfg.cdum.fic.valid_share, seed)
    arrays = arrays_from_table(table, prep.manifest.responses, fic.max_items).take(keep)
    r_hat = fic.fast.outputs(arrays.duration, arrays.category, arrays.scores, arrays.mask)  # (m, K)
    order = np.argsort(users)
    rows = order[np.searchsorted(users, req_users[keep], sorter=order)]  # each request's row in prep

    truth = pq.read_table(rct / S.TRUTH_FILE).to_pandas().set_index(S.USER_ID)
    responses = prep.manifest.responses
    mu0_true = truth.loc[req_users[keep], [S.truth_column("control", r) for r in responses]].to_numpy()  # (m, R)
    interest = pq.read_table(rct / S.REQUESTS_TRUTH_FILE).to_pandas().set_index(S.REQUEST_ID)
    r_true = interest.loc[table.column(S.REQUEST_ID).to_numpy()[keep],
                          [S.interest_column(t) for t in TREATMENTS]].to_numpy()  # (m, K)
    tau = cfg.source.effect_scale * request_effects(r_true, len(responses))  # (m, K, R)
    scale = mu0_true.mean(axis=0)  # (R,) response units -> one scale, weighed equally
    value_on = (mu0_true[:, None, :] * (1 + tau) / scale).mean(axis=2)  # (m, K): true value if k is on
    value_off = (mu0_true / scale).mean(axis=1)  # (m,)

    def value(choice: np.ndarray) -> float:
        """choice (m,) in -1 (control) .. K-1: the true mean value relative to all control, in %."""
        got = np.where(choice < 0, value_off, value_on[np.arange(len(choice)), np.maximum(choice, 0)])
        return float(100 * (got.mean() / value_off.mean() - 1))

    def cdum(r: np.ndarray) -> np.ndarray:
        mu = mu_hat[rows]  # (m, A, R)
        d = cdum_decide(r, mu[:, 1:], mu[:, 0], xi=0.0, weights=np.full(len(responses), 1 / len(responses)),
                        scale=mu[:, 0].mean(axis=0), mode=EXCLUSIVE)
        return np.where(d.on.any(axis=1), d.on.argmax(axis=1), -1)

    out = {"all control": 0.0}
    for k, t in enumerate(TREATMENTS):
        out[f"always {t}"] = value(np.full(len(rows), k))
    out["CDUM (CPM × FIC)"] = value(cdum(r_hat))
    out["CPM alone (r̂ = 1)"] = value(cdum(np.ones_like(r_hat)))
    best = np.where(value_on.max(axis=1) > value_off, value_on.argmax(axis=1), -1)
    out["oracle (true best per request)"] = value(best)
    out["requests"] = float(len(rows))
    shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--user-share", type=float, default=0.6, help="share of users with request logs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="fulcrum-cdum-"))
    try:
        runs = [one_seed(s, args.users, args.user_share, work) for s in args.seeds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = [k for k in runs[0] if k != "requests"]
    print(f"\nTrue policy value on the duration-mix scenario ({args.users:,} users, seeds {args.seeds}, "
          f"~{np.mean([r['requests'] for r in runs]):,.0f} test requests per seed), % over all control:\n")
    print("| policy | value (mean ± std) | seeds where CDUM is ≥ |")
    print("|---|---|---|")
    cdum = np.array([r["CDUM (CPM × FIC)"] for r in runs])
    for n in names:
        v = np.array([r[n] for r in runs])
        wins = "" if n == "CDUM (CPM × FIC)" else f"{int((cdum >= v).sum())}/{len(runs)}"
        print(f"| {n} | {v.mean():+.2f} % ± {v.std(ddof=1) if len(v) > 1 else 0:.2f} | {wins} |")


if __name__ == "__main__":
    main()
