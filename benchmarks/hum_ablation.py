"""HUM variants side by side on the default simulator: the ablation table of issue 12.

For each seed the default RCT is simulated once (``source.seed = seed``, cached under
``--work``), then every variant is trained exactly as the ``train`` stage trains (the
configured selection criterion and early stopping) with its overrides of ``train.*``,
and scored on the test users against the truth: Spearman ρ(δ̂, δ) and PEHE per
(treatment, response) cell, plus the observed normalized QINI. Each finished
(variant, seed) is appended to ``--out`` (JSON lines), so a rerun skips it.

The table gives mean ± std over seeds per cell and the paired difference of each
variant against ``--reference`` (mean and std of the per-seed differences, and how
many seeds it wins).

    .venv/bin/python benchmarks/hum_ablation.py --seeds 1 2 3 4 5 --variants paper target residual
    .venv/bin/python benchmarks/hum_ablation.py --list
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = {"model": "hum", "pooling": "sum", "attention": "field", "treated_head": "outcome", "balanced": False, "control": "mean"}

# name -> overrides of the train section (the model is "hum" unless given).
VARIANTS: dict[str, dict] = {
    "paper": {**PAPER},
    "paper_qini": {**PAPER, "select": "qini"},  # yesterday's default: spec HUM, early-stopped on QINI
    "scale": {**PAPER, "pooling": "scale"},
    "target": {**PAPER, "attention": "target"},
    "residual": {**PAPER, "treated_head": "residual"},
    "target_residual": {**PAPER, "attention": "target", "treated_head": "residual"},
    "scale_residual": {**PAPER, "pooling": "scale", "treated_head": "residual"},
    "target_scale_residual": {**PAPER, "attention": "target", "pooling": "scale", "treated_head": "residual"},
    "target_scale": {**PAPER, "attention": "target", "pooling": "scale"},
    "balanced": {**PAPER, "balanced": True},
    "scale_balanced": {**PAPER, "pooling": "scale", "balanced": True},
    "scale_residual_balanced": {**PAPER, "pooling": "scale", "treated_head": "residual", "balanced": True},
    "m3tn": {"model": "m3tn"},
    "tarnet": {"model": "tarnet"},
}


def variant_overrides(name: str) -> dict:
    """A named variant, or ad hoc ``base+key=value+key=value`` (e.g. ``target_residual+lr=0.003``)."""
    base, *extra = name.split("+")
    if base not in VARIANTS:
        raise SystemExit(f"unknown variant {base!r}; choose from {', '.join(VARIANTS)} (see --list)")
    over = dict(VARIANTS[base])
    for item in extra:
        key, _, value = item.partition("=")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    return over


def prepared(seed: int, users: int, work: Path):
    """The simulated, prepared data set of ``seed`` (cached as a pickle under ``work``)."""
    from pipelines.collect import run_collect
    from pipelines.training_set import prepare

    cache = work / f"prep_{users}_{seed}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    cfg = load_config(REPO / "params.yaml", {"seed": seed, "source.seed": seed, "source.n_users": users})
    root = work / f"sim_{users}_{seed}"
    run_collect(cfg, root)
    tc = cfg.train
    prep = prepare(cfg.paths.rct_dir(root), tc.split, seed, tc.n_bins, target=tc.target)
    truth = prep.true_mu(cfg.paths.rct_dir(root), "test")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps((prep, truth)))
    return prep, truth


def run_one(variant: str, seed: int, users: int, work: Path, epochs: int | None) -> dict:
    from fulcrum.metrics import per_arm_table
    from fulcrum.metrics.scores import pehe, rank_correlation
    from models.train import predict_uplift
    from pipelines.reporting import relative_truth
    from pipelines.train import train_net

    prep, mu = prepared(seed, users, work)
    over = variant_overrides(variant)
    cfg = load_config(REPO / "params.yaml", {"seed": seed})
    model = over.pop("model", "hum")
    if epochs is not None:
        over.setdefault("epochs", epochs)
    if model.startswith("gbm"):
        raise SystemExit("gbm models are compared by `make compare`, not here")
    tc = cfg.train.model_copy(update=over)
    tc = type(tc).model_validate(tc.model_dump())  # validate the overrides
    t0 = time.perf_counter()
    net, _, res = train_net(prep, model, tc, seed)
    seconds = time.perf_counter() - t0
    test = prep.tensors("test")
    delta = predict_uplift(net, test.x, prep.target)  # (n, K, R)
    truth = relative_truth(mu)
    man = prep.manifest
    rows = prep.rows("test")
    table = per_arm_table(prep.y[rows], prep.arm[rows], delta, man.arms, man.responses, mu_true=mu)
    cells = {}
    for k, t in enumerate(man.treatments):
        for r, resp in enumerate(man.responses):
            key = f"{resp}/{t}"
            cells[key] = {
                "rho": float(rank_correlation(delta[:, k, r], truth[:, k, r])),
                "pehe": float(pehe(delta[:, k, r], truth[:, k, r])),
                **{m: next(c[m] for c in table if c["treatment"] == t and c["response"] == resp)
                   for m in ("qini", "true_qini")},
            }
    return {"variant": variant, "seed": seed, "users": users, "best_epoch": res.best_epoch,
            "epochs_run": len(res.history), "seconds": round(seconds, 1), "cells": cells,
            "history": res.history}


def summarize(records: list[dict], variants: list[str], reference: str) -> str:
    cells = list(records[0]["cells"])
    by = {(r["variant"], r["seed"]): r for r in records}
    lines = [f"| variant | seeds | {' | '.join('ρ ' + c for c in cells)} | mean ρ | {' | '.join('PEHE ' + c for c in cells)} | epochs | s |",
             "|---|---|" + "---|" * (2 * len(cells) + 3)]
    for v in variants:
        rs = [r for r in records if r["variant"] == v]
        if not rs:
            continue
        rho = np.array([[r["cells"][c]["rho"] for c in cells] for r in rs])
        pe = np.array([[r["cells"][c]["pehe"] for c in cells] for r in rs])
        sd = (lambda a: a.std(0, ddof=1)) if len(rs) > 1 else (lambda a: np.zeros(a.shape[1]))
        m_rho = rho.mean(1)
        lines.append(
            f"| {v} | {len(rs)} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(rho.mean(0), sd(rho)))
            + f" | {m_rho.mean():.3f} ± {(m_rho.std(ddof=1) if len(rs) > 1 else 0):.3f} | "
            + " | ".join(f"{m:.4f}" for m in pe.mean(0))
            + f" | {np.mean([r['epochs_run'] for r in rs]):.0f} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    lines += ["", f"Paired by seed against `{reference}` (Δρ per cell: mean ± std of the per-seed differences, seeds won):", ""]
    lines.append(f"| variant | {' | '.join('Δρ ' + c for c in cells)} | Δ mean ρ |")
    lines.append("|---|" + "---|" * (len(cells) + 1))
    for v in variants:
        if v == reference:
            continue
        seeds = sorted(s for (vv, s) in by if vv == v and (reference, s) in by)
        if not seeds:
            continue
        d = np.array([[by[(v, s)]["cells"][c]["rho"] - by[(reference, s)]["cells"][c]["rho"] for c in cells]
                      for s in seeds])
        sd = d.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(cells))
        dm = d.mean(1)
        lines.append(f"| {v} | " + " | ".join(f"{m:+.2f} ± {s:.2f} ({int((d[:, i] > 0).sum())}/{len(seeds)})"
                                             for i, (m, s) in enumerate(zip(d.mean(0), sd)))
                     + f" | {dm.mean():+.3f} ({int((dm > 0).sum())}/{len(seeds)}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--variants", nargs="+", default=["paper", "target", "residual", "target_residual"])
    ap.add_argument("--reference", default=None, help="paired comparisons against this variant (default: the first)")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fulcrum_ablation"))
    ap.add_argument("--out", type=Path, default=Path("reports/hum_ablation.jsonl"))
    ap.add_argument("--list", action="store_true", help="print the named variants and exit")
    args = ap.parse_args()
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k:24s} {v}")
        return
    logging.basicConfig(level=logging.WARNING)
    for v in args.variants:
        variant_overrides(v)  # fail fast on a typo
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    records = [r for r in records if r["users"] == args.users]
    done = {(r["variant"], r["seed"]) for r in records}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for v in args.variants:
            if (v, seed) in done:
                continue
            rec = run_one(v, seed, args.users, args.work, args.epochs)
            records.append(rec)
            with args.out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"seed {seed} {v:24s} ρ " + " ".join(f"{c['rho']:+.2f}" for c in rec["cells"].values())
                  + f"  best epoch {rec['best_epoch']}/{rec['epochs_run']}  {rec['seconds']:.0f} s"
                  + f"  ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    keep = [r for r in records if r["variant"] in args.variants and r["seed"] in args.seeds]
    if keep:
        print()
        print(summarize(keep, args.variants, args.reference or args.variants[0]))


if __name__ == "__main__":
    main()
