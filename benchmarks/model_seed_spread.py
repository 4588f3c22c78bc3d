"""How much of ρ(δ̂, δ) is the network's seed: one network vs the ensemble, on fixed data.

For each simulator seed (the default RCT, 200k users, cached under ``--work`` as
``hum_ablation.py`` caches it), ``--networks`` single networks of ``--model`` are trained
from seeds s + 1000·m (the seeds ``train.ensemble`` gives its members), then grouped into
disjoint ensembles of ``--members`` (their mean μ per arm, as ``models.ensemble`` predicts).
Prints, per (treatment, response) cell, the mean and the std over model seeds of the
Spearman ρ against the true δ, for one network and for the ensembles; appends one JSON line
per simulator seed to ``--out`` (with each network's best epoch and epochs run). ``--model``
takes a variant (``hum+weight_decay=0.0001``): its networks share the default's seeds, so the
two are paired network by network.

    .venv/bin/python benchmarks/model_seed_spread.py --seeds 1 2            # 9 networks per seed
    .venv/bin/python benchmarks/model_seed_spread.py --seeds 1 --networks 9 --model "hum+ema=0.99"
    .venv/bin/python benchmarks/model_seed_spread.py --seeds 7 --networks 30 --save-mu /tmp/mu --sizes 1 3 5 7
    .venv/bin/python benchmarks/model_seed_spread.py --from-mu /tmp/mu/hum_seed7.npz --sizes 1 3 5 7   # no training
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hum_ablation import REPO, prepared  # noqa: E402

from fulcrum.config import TrainConfigModel, load_config  # noqa: E402


def cell_rhos(mu_hat: np.ndarray, truth: np.ndarray) -> list[float]:
    """ρ(δ̂, δ) per (treatment, response) cell, treatment-major, from outcomes (n, K+1, R)."""
    from fulcrum.metrics.scores import rank_correlation
    from pipelines.reporting import relative_truth

    delta = relative_truth(mu_hat)
    return [float(rank_correlation(delta[:, k, r], truth[:, k, r]))
            for k in range(truth.shape[1]) for r in range(truth.shape[2])]


def size_curve(mus: np.ndarray, truth: np.ndarray, sizes: list[int], draws: int, seed: int = 0) -> dict:
    """ρ's spread against the ensemble size, from N networks' test outcomes ``mus`` (N, n, K+1, R).

    Per size m and draw: a random partition of the N networks into ⌊N/m⌋ disjoint ensembles of m,
    each scored per cell; the draws' variances are averaged (every draw is an unbiased estimate of
    the ensemble's seed variance, and averaging uses every network, not one fixed grouping).
    Returns {m: {"mean": per cell, "std": per cell, "groups": ⌊N/m⌋}}.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for m in sizes:
        groups = len(mus) // m
        if groups < 2:
            continue
        rows, var = [], []
        for _ in range(draws):
            order = rng.permutation(len(mus))[: groups * m].reshape(groups, m)
            r = np.asarray([cell_rhos(mus[g].mean(0), truth) for g in order])  # (groups, cells)
            rows.append(r.mean(0))
            var.append(r.var(0, ddof=1))
        out[m] = {"mean": np.mean(rows, 0).tolist(), "std": np.sqrt(np.mean(var, 0)).tolist(), "groups": groups}
    return out


def append_record(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def print_curve(seed: int, curve: dict) -> None:
    for m, v in curve.items():
        print(f"seed {seed} ensembles of {m:2d} ({v['groups']} per draw): ρ per cell " + "  ".join(
            f"{a:+.3f} ± {b:.3f}" for a, b in zip(v["mean"], v["std"], strict=True)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="simulator seeds")
    ap.add_argument("--model", default="hum", help="a neural model, or a variant of one: hum+ema=0.99 "
                    "(models/variants.py); its record carries the name")
    ap.add_argument("--networks", type=int, default=10, help="single networks per simulator seed")
    ap.add_argument("--members", type=int, default=TrainConfigModel.model_fields["ensemble"].default,
                    help="networks per ensemble (disjoint groups); default: train.ensemble's default")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fulcrum_ablation"), help="the simulated data sets (hum_ablation.py's cache)")
    ap.add_argument("--save-mu", type=Path, default=None,
                    help="also write every network's test outcomes μ (n, K+1, R) and the true δ here (npz per seed), "
                         "for ensembles formed afterwards, e.g. across variants")
    ap.add_argument("--sizes", type=int, nargs="*", default=[],
                    help="also the spread against the ensemble size: random disjoint groupings of the networks "
                         "into ensembles of each size (e.g. 1 3 5 7)")
    ap.add_argument("--draws", type=int, default=50, help="random groupings per size (--sizes)")
    ap.add_argument("--from-mu", type=Path, nargs="+", default=None,
                    help="skip training: read --save-mu files (npz) and print the --sizes curve of each")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "model_seed_spread.jsonl")
    args = ap.parse_args()
    if args.from_mu is not None:
        for path in args.from_mu:
            z = np.load(path)
            curve = size_curve(z["mu"], z["truth"], args.sizes or [1, 3, 5], args.draws)
            print_curve(int(path.stem.rsplit("seed", 1)[-1]) if "seed" in path.stem else -1, curve)
            append_record(args.out, {"from_mu": str(path), "networks": len(z["mu"]),
                                     "sizes": {str(m): v for m, v in curve.items()}})
        return
    if args.networks < 2 * args.members:
        raise SystemExit("--networks must give at least two ensembles of --members")
    from models.train import predict_mu
    from models.variants import split_variant, with_overrides
    from pipelines.reporting import relative_truth
    from pipelines.train import MEMBER_SEED_STRIDE, train_net

    model, over = split_variant(args.model)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        prep, mu = prepared(seed, args.users, args.work, (0.7, 0.15, 0.15))
        truth = relative_truth(mu)
        cfg = load_config(REPO / "params.yaml", {"seed": seed})
        tc = with_overrides(cfg.train, {**over, "ensemble": 1})
        test = prep.tensors("test")
        mus, epochs = [], []
        for m in range(args.networks):
            net, _, res = train_net(prep, model, tc, seed + MEMBER_SEED_STRIDE * m)
            epochs.append([res.best_epoch, len(res.history)])
            mus.append(predict_mu(net, test.x, prep.target))
        single = [cell_rhos(m, truth) for m in mus]
        if args.save_mu is not None:
            args.save_mu.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.save_mu / f"{args.model}_seed{seed}.npz", mu=np.stack(mus), truth=truth)
        groups = args.networks // args.members
        ens = [cell_rhos(np.mean(mus[g * args.members:(g + 1) * args.members], 0), truth) for g in range(groups)]
        append_record(args.out, {"seed": seed, "model": args.model, "members": args.members, "single": single,
                                 "ens": ens, "epochs": epochs})
        for name, rows in (("one network", single), (f"ensemble of {args.members}", ens)):
            a = np.asarray(rows)
            print(f"seed {seed} {name:15s} ({len(rows)}): ρ per cell " + "  ".join(
                f"{m:+.3f} ± {s:.3f}" for m, s in zip(a.mean(0), a.std(0, ddof=1), strict=True))
                + f"  mean {a.mean():+.3f}", flush=True)
        if args.sizes:
            curve = size_curve(np.stack(mus), truth, args.sizes, args.draws)
            print_curve(seed, curve)
            append_record(args.out, {"seed": seed, "model": args.model, "networks": len(mus),
                                     "sizes": {str(m): v for m, v in curve.items()}})


if __name__ == "__main__":
    main()
