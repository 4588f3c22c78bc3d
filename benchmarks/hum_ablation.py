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

    .venv/bin/python benchmarks/hum_ablation.py --seeds 1 2 3 4 5 --variants default paper default-scale
    .venv/bin/python benchmarks/hum_ablation.py --seeds 9 10 --users 1000000 --variants default+ensemble=5 --first-members 1 3
    .venv/bin/python benchmarks/hum_ablation.py --list
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = {"model": "hum", "pooling": "sum", "attention": "field", "treated_head": "outcome", "balanced": False,
         "control": "mean"}
OLD_SCHEDULE = {"epochs": 30, "min_epochs": 5, "early_stopping_patience": 4, "plateau_patience": 2}

# name -> overrides of params.yaml's train section (the model is "hum" unless given).
# "default" is the configured HUM; every "default-x" switches one of its choices back.
VARIANTS: dict[str, dict] = {
    "default": {},
    "paper": {**PAPER},  # the spec's architecture, trained as the default is
    "paper_qini": {**PAPER, **OLD_SCHEDULE, "select": "qini"},  # the previous default, as it was trained
    "default-residual": {"treated_head": "outcome"},
    "default-balanced": {"balanced": False},
    "default-own": {"control": "mean"},
    "default-kl": {"kl_weight": 0.0},
    "default-schedule": {**OLD_SCHEDULE},
    "default+target": {"attention": "target"},
    "default+wide": {"expert_hidden": [256, 128]},
    "default+narrow": {"emb_dim": 16, "expert_hidden": [64, 32]},
    "default+lr3": {"lr": 0.003},
    "default+detach": {"detach_control": True},
    "default+shared_experts": {"experts": "shared"},
    "default-scale": {"pooling": "sum"},
    "default-shared": {"treated_input": "treated"},
    "default-uniform": {"offset_init": "zero"},
    "default-ensemble": {"ensemble": 1},
    # The default before 2026-11-26 (README "HUM variants": the offset that could not learn).
    "previous": {"pooling": "sum", "treated_input": "treated", "offset_init": "zero"},
    # The eighteenth session's default (README "A robust loss for zero-inflated responses") without each part,
    # and the default before it.
    "default-huber": {"huber_delta": None},
    # The nineteenth session's default without its two-part reading of usage time (README "The data's own floor").
    "default-positive": {"positive_part": []},
    "default-wide": {"offset_wide": "none", "offset_wide_lr": None},
    "before_robust": {"huber_delta": None, "offset_wide": "none", "offset_wide_lr": None, "positive_part": []},
    "default+mean_target": {"target": "mean"},
    "default+qini": {"select": "qini"},
    "m3tn": {"model": "m3tn"},
    "tarnet": {"model": "tarnet"},
}


def variant_overrides(name: str) -> dict:
    """A named variant, or ad hoc ``base+key=value+key=value`` (e.g. ``default+lr=0.003``;
    ``models.variants.split_variant`` reads the values)."""
    from models.variants import split_variant

    if name in VARIANTS:  # a named variant, '+' in its name or not
        return dict(VARIANTS[name])
    try:
        base, extra = split_variant(name)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if base not in VARIANTS:
        raise SystemExit(f"unknown variant {base!r}; choose from {', '.join(VARIANTS)} (see --list)")
    return {**VARIANTS[base], **extra}


# The duration-mix scenario (CDUM's setting): three treatments, one per duration class, equal shares.
SCENARIOS = {
    "default": {},
    "duration_mix": {"source.scenario": "duration_mix", "source.treatments": ["short", "medium", "long"],
                     "source.combined_arms": [], "source.arm_shares": None},
}


def prepared(seed: int, users: int, work: Path, split: tuple[float, float, float], scenario: str = "default"):
    """The simulated, prepared data set of ``seed`` (cached as a pickle under ``work``)."""
    from pipelines.collect import run_collect
    from pipelines.training_set import prepare

    tag = "" if scenario == "default" else f"_{scenario}"
    cache = work / f"prep_{users}_{seed}_{'-'.join(map(str, split))}{tag}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    cfg = load_config(REPO / "params.yaml", {"seed": seed, "source.seed": seed, "source.n_users": users,
                                             **SCENARIOS[scenario]})
    root = work / f"sim_{users}_{seed}_{os.getpid()}"  # concurrent runs never share a simulation dir
    run_collect(cfg, root)
    tc = cfg.train
    prep = prepare(cfg.paths.rct_dir(root), split, seed, tc.n_bins, target=tc.target)
    truth = prep.true_mu(cfg.paths.rct_dir(root), "test")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps((prep, truth)))
    tmp.replace(cache)  # atomic: a concurrent reader sees all or nothing
    shutil.rmtree(root, ignore_errors=True)
    return prep, truth


def run_one(variant: str, seed: int, users: int, work: Path, epochs: int | None,
            split: tuple[float, float, float], scenario: str = "default",
            first_members: tuple[int, ...] = ()) -> list[dict]:
    """Train one variant on one seed's data: its record, and for a per_arm_select variant also the
    record of the same networks at their best epoch only (``<variant>@main``). For an ensemble, each
    n in ``first_members`` below its size adds ``<variant>@first<n>``: its first n members alone, the
    networks a ``train.ensemble: n`` run on this machine fits (members train one after the other from
    seed + 1000·m), so a larger ensemble is compared with a smaller one paired by network, in one run."""
    from pipelines.train import train_net

    prep, mu = prepared(seed, users, work, split, scenario)
    over = variant_overrides(variant)
    if over.get("target", prep.target.kind) != prep.target.kind:  # re-fit the target transform on train
        import copy

        from models.target import TargetTransform

        prep = copy.copy(prep)
        prep.target = TargetTransform.fit(over["target"], prep.y[prep.rows("train")].astype(np.float64))
    cfg = load_config(REPO / "params.yaml", {"seed": seed})
    model = over.pop("model", "hum")
    if epochs is not None:
        over.setdefault("epochs", epochs)
    if model.startswith("gbm"):
        raise SystemExit("gbm models are compared by `make compare`, not here")
    # Validated as a whole: an unknown key is refused, never silently dropped.
    tc = type(cfg.train).model_validate({**cfg.train.model_dump(), **over})
    t0 = time.perf_counter()
    net, _, res = train_net(prep, model, tc, seed)
    seconds = time.perf_counter() - t0
    record = {"variant": variant, "seed": seed, "users": users, "split": list(split), "best_epoch": res.best_epoch,
              "epochs_run": len(res.history), "seconds": round(seconds, 1), "history": res.history,
              "arm_epochs": [r.arm_epochs for r in (res.members or [res])],  # per_arm_select: each network's
              "arm_z": [[round(z, 3) for z in r.arm_z] for r in (res.members or [res])]}
    records = [{**record, **score_cells(net, prep, mu, seed)}]
    main_only = unwrap_arm_selected(net)
    if main_only is not None:  # the same training read at its best epoch only: the paired reference
        records.append({**record, **score_cells(main_only, prep, mu, seed), "variant": f"{variant}{MAIN_SUFFIX}"})
    elif any(r.arm_epochs for r in (res, *res.members)):  # per-arm on, no treatment moved: the same networks
        records.append({**records[0], "variant": f"{variant}{MAIN_SUFFIX}"})
    for n in first_members:
        sub = first_members_of(net, n)
        if sub is not None:
            records.append({**record, "arm_epochs": record["arm_epochs"][:n], "arm_z": record["arm_z"][:n],
                            **score_cells(sub, prep, mu, seed), "variant": f"{variant}@first{n}"})
    return records


def first_members_of(net, n: int):
    """An ensemble's first ``n`` members as a model (one network alone for n = 1), or None when ``net`` is
    not an ensemble of more than ``n``."""
    from models.ensemble import Ensemble

    if not isinstance(net, Ensemble) or not 1 <= n < len(net.members):
        return None
    return (net.members[0] if n == 1 else Ensemble(list(net.members[:n]))).eval()


MAIN_SUFFIX = "@main"  # a per_arm_select run's networks at their best epoch only (no per-treatment snapshots)


def unwrap_arm_selected(net):
    """The best-epoch networks inside a per_arm_select model (``models.arm_select``), or None for another model."""
    from models.arm_select import ArmSelected
    from models.ensemble import Ensemble

    if isinstance(net, ArmSelected):
        return net.main
    if isinstance(net, Ensemble) and isinstance(net.members[0], ArmSelected):
        return Ensemble([m.main for m in net.members]).eval()
    return None


def score_cells(net, prep, mu: np.ndarray, seed: int) -> dict:
    """The truth metrics and observed QINI per cell of ``net`` on the test users: {"n_test", "cells"}."""
    from fulcrum.metrics import per_arm_table
    from fulcrum.metrics.scores import pehe, rank_correlation
    from models.train import predict_uplift
    from pipelines.reporting import relative_truth

    test = prep.tensors("test")
    delta = predict_uplift(net, test.x, prep.target)  # (n, K, R)
    truth = relative_truth(mu)
    man = prep.manifest
    rows = prep.rows("test")
    y, arm = prep.y[rows], prep.arm[rows]
    table = per_arm_table(y, arm, delta, man.arms, man.responses, mu_true=mu)
    refs = {"oracle": truth, "random": np.random.default_rng(seed).random(truth.shape)}
    refs = {n: per_arm_table(y, arm, v, man.arms, man.responses) for n, v in refs.items()}
    cells = {}
    for k, t in enumerate(man.treatments):
        for r, resp in enumerate(man.responses):
            key = f"{resp}/{t}"
            cells[key] = {
                "rho": float(rank_correlation(delta[:, k, r], truth[:, k, r])),
                "pehe": float(pehe(delta[:, k, r], truth[:, k, r])),
                **{m: next(c[m] for c in table if c["treatment"] == t and c["response"] == resp)
                   for m in ("qini", "true_qini")},
                **{f"{n}_qini": next(c["qini"] for c in tab if c["treatment"] == t and c["response"] == resp)
                   for n, tab in refs.items()},
            }
    return {"n_test": int(rows.sum()), "cells": cells}


def _ms(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over seeds (axis 0); std 0 for one seed."""
    return a.mean(0), (a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:]))


def summarize(records: list[dict], variants: list[str], reference: str) -> str:
    """Markdown: truth metrics per variant (mean ± std over seeds), observed QINI, paired differences."""
    cells = list(records[0]["cells"])
    by = {(r["variant"], r["seed"]): r for r in records}
    present = [v for v in variants if any(r["variant"] == v for r in records)]

    def arr(v: str, metric: str) -> np.ndarray:  # (seeds, cells)
        return np.array([[r["cells"][c][metric] for c in cells] for r in records if r["variant"] == v])

    lines = [f"| variant | seeds | {' | '.join('ρ ' + c for c in cells)} | mean ρ | mean PEHE | mean true QINI | epochs |",
             "|---|---|" + "---|" * (len(cells) + 4)]
    for v in present:
        rho, pe, tq = arr(v, "rho"), arr(v, "pehe"), arr(v, "true_qini")
        m, sd = _ms(rho)
        mm, ms = _ms(rho.mean(1, keepdims=True))
        lines.append(f"| {v} | {len(rho)} | " + " | ".join(f"{a:.2f} ± {b:.2f}" for a, b in zip(m, sd))
                     + f" | {mm[0]:.3f} ± {ms[0]:.3f} | {pe.mean():.4f} | {tq.mean():.3f} | "
                     + f"{np.mean([r['epochs_run'] for r in records if r['variant'] == v]):.0f} |")
    r0 = records[0]
    lines += ["", f"Observed QINI on {r0.get('n_test', 0):,} test users (mean ± std over seeds; users ranked by δ):", "",
              f"| variant | {' | '.join(cells)} |", "|---|" + "---|" * len(cells)]
    for v in present:
        m, sd = _ms(arr(v, "qini"))
        lines.append(f"| {v} | " + " | ".join(f"{a:.4f} ± {b:.4f}" for a, b in zip(m, sd)) + " |")
    for ref in ("oracle", "random"):
        vals = np.array([[r["cells"][c][f"{ref}_qini"] for c in cells] for r in records if r["variant"] == present[0]])
        m, sd = _ms(vals)
        lines.append(f"| *{ref}* | " + " | ".join(f"{a:.4f} ± {b:.4f}" for a, b in zip(m, sd)) + " |")
    lines += ["", f"Paired by seed against `{reference}`: Δρ and ΔPEHE per cell, mean ± std of the per-seed "
              "differences (seeds where the variant is better):", "",
              f"| variant | {' | '.join('Δρ ' + c for c in cells)} | Δ mean ρ | Δ mean PEHE |",
              "|---|" + "---|" * (len(cells) + 2)]
    for v in present:
        if v == reference:
            continue
        seeds = sorted(sd_ for (vv, sd_) in by if vv == v and (reference, sd_) in by)
        if not seeds:
            continue
        d = np.array([[by[(v, x)]["cells"][c]["rho"] - by[(reference, x)]["cells"][c]["rho"] for c in cells] for x in seeds])
        dp = np.array([np.mean([by[(v, x)]["cells"][c]["pehe"] - by[(reference, x)]["cells"][c]["pehe"] for c in cells])
                       for x in seeds])
        m, sd = _ms(d)
        dm = d.mean(1)
        lines.append(f"| {v} | " + " | ".join(f"{a:+.2f} ± {b:.2f} ({int((d[:, i] > 0).sum())}/{len(seeds)})"
                                             for i, (a, b) in enumerate(zip(m, sd)))
                     + f" | {dm.mean():+.3f} ({int((dm > 0).sum())}/{len(seeds)}) | {dp.mean():+.4f} "
                     + f"({int((dp < 0).sum())}/{len(seeds)}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--variants", nargs="+", default=["default", "previous", "paper", "paper_qini", "default-scale",
                                                       "default-shared", "default-uniform", "default-residual",
                                                       "default-own"])
    ap.add_argument("--reference", default=None, help="paired comparisons against this variant (default: the first)")
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--split", type=float, nargs=3, default=[0.7, 0.15, 0.15],
                    help="train / valid / test shares (e.g. 0.14 0.03 0.83 with --users 1000000: "
                         "the default train size and a test set where observed QINI separates the oracle from random)")
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="default",
                    help="simulator scenario: default (HMUM's) or duration_mix (CDUM's: short/medium/long)")
    ap.add_argument("--first-members", type=int, nargs="*", default=[],
                    help="for an ensemble variant (e.g. default+ensemble=5) also score its first n members alone "
                         "(records <variant>@first<n>): e.g. 1 3 compares 1, 3 and 5 networks paired by network")
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
    records = [r for r in records if r["users"] == args.users and r.get("split", [0.7, 0.15, 0.15]) == args.split
               and r.get("scenario", "default") == args.scenario]
    done = {(r["variant"], r["seed"]) for r in records}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for v in args.variants:
            if (v, seed) in done:
                continue
            for rec in run_one(v, seed, args.users, args.work, args.epochs, tuple(args.split), args.scenario,
                               tuple(args.first_members)):
                rec["scenario"] = args.scenario
                records.append(rec)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                print(f"seed {seed} {rec['variant']:24s} ρ " + " ".join(f"{c['rho']:+.2f}" for c in rec["cells"].values())
                      + f"  best epoch {rec['best_epoch']}/{rec['epochs_run']}  {rec['seconds']:.0f} s"
                      + f"  ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    # A per_arm_select run's own reference too, and an ensemble's first members.
    shown = [x for v in args.variants for x in (v, v + MAIN_SUFFIX, *(f"{v}@first{n}" for n in args.first_members))]
    keep = [r for r in records if r["variant"] in shown and r["seed"] in args.seeds]
    if keep:
        print()
        print(summarize(keep, shown, args.reference or args.variants[0]))


if __name__ == "__main__":
    main()
