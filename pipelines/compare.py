"""Stage ``compare``: HUM against every baseline over several seeds, on the same split.

Under ``evaluate.protocol`` holdout each model is trained once per seed (the user split
stays fixed) and scored on the test users; cross-fitted, each seed has its own fold
assignment and every user is scored by the fold model that never saw them (one run per
fold). Every finished (model, seed[, fold]) run is saved at once under ``<data>/compare/``
(its test δ, keyed by the data, split and settings), so an interrupted comparison resumes
where it stopped and a rerun only trains what changed. The table gives mean ± std over seeds per (response, treatment) ×
(QINI, AUUC, LIFT@k) and, on simulated data, PEHE and ρ(true); users are ranked by
the relative δ everywhere.

The verdict: on simulated data the truth leads. Per cell, the per-seed differences
(HUM − baseline) of ρ(true) and of PEHE give a paired t interval over seeds; HUM is
better / worse / tied by that interval, and a cell counts only where the oracle is
clearly above random there (a paired bootstrap of observed QINI, oracle − random,
whose 95 % interval lies above 0): on the rest even the truth cannot be told from
noise by QINI. Without truth the verdict falls back to a paired bootstrap over test
users of the seed-averaged QINI difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.metrics import per_arm_table, qini_auc_score
from pipelines import reporting as rp
from pipelines.crossfit import check_folds, fold_seed, fold_splits, fold_valid_share
from pipelines.train import MIN_ROWS_PER_ARM_AND_SPLIT
from pipelines.training_set import Prepared, prepare

log = logging.getLogger("fulcrum")
METRICS = ("qini", "auuc", "lift30")
TRUTH_METRICS = ("pehe", "spearman", "true_qini")
def paired_seed_interval(diffs) -> tuple[float, float, float]:
    """Mean of per-seed paired differences with its 95 % t interval (inf width for one seed)."""
    from scipy.stats import t

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float(d.mean()), -np.inf, np.inf
    half = float(t.ppf(0.975, len(d) - 1)) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def seed_std_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Std over seeds (ddof 1) with its χ² interval, assuming normal per-seed values.

    Five seeds pin a std only to within about [0.6 s, 2.9 s]: a target on the std is met only
    when the whole interval sits under it.
    """
    from scipy.stats import chi2

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), 0.0, np.inf
    df = len(v) - 1
    s = float(v.std(ddof=1))
    a = (1 - level) / 2
    return s, s * float(np.sqrt(df / chi2.ppf(1 - a, df))), s * float(np.sqrt(df / chi2.ppf(a, df)))


def spread_status(s: float, lo: float, hi: float, target: float) -> str:
    """``met`` (the whole interval ≤ target), ``missed`` (all of it above), else which side the estimate is on."""
    if hi <= target:
        return "met"
    if lo > target:
        return "missed"
    return "within noise, estimate " + ("under" if s <= target else "over")


def status(lo: float, hi: float, higher_is_better: bool = True) -> str:
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "tied"


def fit_predict(prep: Prepared, name: str, cfg: FulcrumConfig, seed: int) -> tuple[np.ndarray, float]:
    """Train model ``name`` with ``seed``; returns (δ on the test users (n, K, R), seconds)."""
    t0 = time.perf_counter()
    test = prep.rows("test")
    if name.startswith("gbm_"):
        from models.gbm import GBMMetaLearner

        x = prep.x - prep.encoder.offsets_[None, :]  # per-field bucket ids
        tr = prep.rows("train")
        kind = "s" if name == "gbm_s_learner" else "t"
        gbm = GBMMetaLearner(kind, n_categorical=len(prep.encoder.categorical), seed=seed)
        gbm.fit(x[tr], prep.arm[tr], prep.target.encode(prep.y[tr]))
        return gbm.predict_delta(x[test], prep.target.decode), time.perf_counter() - t0
    import torch

    from models.train import predict_uplift
    from pipelines.train import train_net

    net, _, _ = train_net(prep, name, cfg.train, seed)
    return predict_uplift(net, torch.from_numpy(prep.x[test]), prep.target), time.perf_counter() - t0


def paired_qini_diff(y, arm, deltas_a: list[np.ndarray], deltas_b: list[np.ndarray], k: int, r: int,
                     n_boot: int, seed: int) -> tuple[float, float, float]:
    """Seed-averaged QINI(a) − QINI(b) on cell (k, r) with a 95 % paired bootstrap interval."""
    rows = np.flatnonzero((arm == 0) | (arm == k))
    t = (arm[rows] == k).astype(int)
    yy = y[rows, r]

    def diff(idx: np.ndarray) -> float:
        qa = np.mean([qini_auc_score(yy[idx], d[rows, k - 1, r][idx], t[idx]) for d in deltas_a])
        qb = np.mean([qini_auc_score(yy[idx], d[rows, k - 1, r][idx], t[idx]) for d in deltas_b])
        return qa - qb

    point = diff(np.arange(len(rows)))
    rng = np.random.default_rng(seed)
    boots = [diff(rng.integers(0, len(rows), len(rows))) for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(point), float(lo), float(hi)


def aggregate(runs: dict[str, list[list[dict]]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{model: {cell: {metric: [mean, std]}}} from per-seed cell lists."""
    out: dict = {}
    for model, seeds in runs.items():
        out[model] = {}
        for i, cell in enumerate(seeds[0]):
            key = rp.cell_key(cell)
            out[model][key] = {}
            for m in (*METRICS, *TRUTH_METRICS):
                if m in cell:
                    vals = np.array([s[i][m] for s in seeds], dtype=float)
                    out[model][key][m] = [float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0]
    return out


def run_key(prep: Prepared, name: str, seed: int, cfg: FulcrumConfig) -> str:
    """What a finished run depends on: the data and split (hashed), the model, its seed and its settings."""
    h = hashlib.sha256()
    for part in (prep.x, prep.y, prep.arm, prep.rows("test")):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update(json.dumps({"model": name, "seed": seed, "train": cfg.train.model_dump(mode="json")},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


class RunStore:
    """Finished (model, seed[, fold]) runs on disk, one file each, written as they finish: a rerun resumes.

    A run's file holds its test-user δ and the key it was made under; a run whose data, split or
    settings changed has another key and is recomputed.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, name: str, seed: int, fold: str = "") -> Path:
        return self.folder / f"{name}__seed{seed}{fold}.npz"

    def load(self, name: str, seed: int, key: str, fold: str = "") -> tuple[np.ndarray, float] | None:
        path = self._path(name, seed, fold)
        if not path.exists():
            return None
        try:
            with np.load(path) as f:
                if str(f["key"]) != key:
                    return None
                return f["delta"], float(f["seconds"])
        except (OSError, ValueError, KeyError):  # a file cut short by a kill: recompute it
            return None

    def save(self, name: str, seed: int, key: str, delta: np.ndarray, seconds: float, fold: str = "") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._path(name, seed, fold).with_suffix(".tmp.npz")
        np.savez(tmp, delta=delta, seconds=seconds, key=np.array(key))
        os.replace(tmp, self._path(name, seed, fold))  # whole or absent: never a half-written run


def _units(prep: Prepared, cfg: FulcrumConfig, protocol: str) -> list[tuple[str, int, str, Prepared]]:
    """The runs to do: (model, seed, fold label, data under that run's split) in order.

    holdout: one run per (model, seed) on the train.split. cross_fit: one run per fold, the
    fold assignment seeded by the seed (so the spread over seeds covers the split too).
    """
    if protocol == "holdout":
        return [(name, seed, "", prep) for name in cfg.compare.models for seed in cfg.compare.seeds]
    ec = cfg.evaluate
    valid_share = fold_valid_share(cfg.train.split)
    users = prep.frame[S.USER_ID].to_numpy()
    check_folds(prep, ec.folds, [fold_seed(s, 0) for s in cfg.compare.seeds], MIN_ROWS_PER_ARM_AND_SPLIT)
    splits = {s: fold_splits(users, ec.folds, fold_seed(s, 0), valid_share) for s in cfg.compare.seeds}
    return [(name, seed, f"__fold{k}of{ec.folds}", prep.with_split(split))
            for name in cfg.compare.models for seed in cfg.compare.seeds for k, split in enumerate(splits[seed])]


def run_compare(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    from fulcrum.progress import progress

    rct = cfg.paths.rct_dir(root)
    prep = prepare(rct, cfg.train.split, cfg.seed, cfg.train.n_bins, target=cfg.train.target, cfg=cfg, root=root)
    man = prep.manifest
    protocol = cfg.evaluate.protocol_for(len(prep.frame))
    # The judged users: the test split, or (cross-fitted) everyone, each scored by the fold model that never saw them.
    test = prep.rows("test") if protocol == "holdout" else np.ones(len(prep.frame), bool)
    y, arm = prep.y[test], prep.arm[test]
    true_mu = prep.true_mu_rows(rct, test)
    truth = None if true_mu is None else rp.relative_truth(true_mu)
    k_lift = cfg.evaluate.lift_k
    runs: dict[str, list[list[dict]]] = {}
    deltas: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}
    store = RunStore(cfg.paths.compare_dir(root))
    todo = _units(prep, cfg, protocol)
    resumed = 0
    partial: dict[tuple[str, int], tuple[np.ndarray | None, float]] = {}
    with progress("compare: model × seed runs" + (" × folds" if protocol == "cross_fit" else ""), len(todo),
                  "runs") as advance:
        for i, (name, seed, fold, data) in enumerate(todo):
            key = run_key(data, name, seed, cfg)
            got = store.load(name, seed, key, fold)
            if got is None:
                log.info("compare: %s seed %d%s (run %d of %d; %d left after it)", name, seed,
                         fold.replace("__", " ").replace("of", " of "), i + 1, len(todo), len(todo) - i - 1)
                delta, sec = fit_predict(data, name, cfg, seed)
                store.save(name, seed, key, delta, sec, fold)
            else:
                (delta, sec), resumed = got, resumed + 1
            advance(1)
            if fold:  # one fold's users: the seed's δ is whole once its last fold is in
                whole, total = partial.get((name, seed), (None, 0.0))
                if whole is None:
                    whole = np.full((len(prep.frame), *delta.shape[1:]), np.nan)
                whole[data.rows("test")] = delta
                partial[(name, seed)] = (whole, total + sec)
                if np.isnan(whole).any():
                    continue
                delta, sec = partial.pop((name, seed))
            cells = per_arm_table(y, arm, delta, man.arms, man.responses, k=k_lift, tau_true=truth, mu_true=true_mu)
            runs.setdefault(name, []).append(cells)
            deltas.setdefault(name, []).append(delta)
            seconds.setdefault(name, []).append(sec)
            log.info("compare: %s seed %d mean QINI %.4f (%.0f s%s)", name, seed,
                     float(np.mean([c["qini"] for c in cells])), sec, ", finished earlier" if got else "")
    if resumed:
        log.info("compare: %d of %d runs were finished earlier (%s), %d trained now", resumed, len(todo),
                 store.folder, len(todo) - resumed)
    if truth is not None:
        runs["oracle"] = [per_arm_table(y, arm, truth, man.arms, man.responses, k=k_lift, tau_true=truth, mu_true=true_mu)]
    agg = aggregate(runs)

    ref = "hum" if "hum" in deltas else next(iter(deltas))
    verdict = _verdict(runs, deltas, ref, man, y, arm, truth, cfg)
    summary = {
        "reference": ref,
        "seeds": cfg.compare.seeds,
        "protocol": protocol,
        "folds": cfg.evaluate.folds if protocol == "cross_fit" else None,
        "n_test": int(test.sum()),
        "ranked_by": "relative δ",
        "judged_on": "ρ(true) and PEHE, paired by seed" if truth is not None else "QINI, paired bootstrap",
        "models": agg,
        "per_seed": {m: [[{k: c[k] for k in (*METRICS, *TRUTH_METRICS) if k in c} for c in cells] for cells in seeds]
                     for m, seeds in runs.items() if m != "oracle"},
        "verdict": verdict,
        "best_or_tied_everywhere": all(v["status"] != "worse" for cell in verdict.values() if cell["counts"]
                                       for v in cell["vs"].values()),
        "mean_qini": {m: float(np.mean([v["qini"][0] for v in cells.values()])) for m, cells in agg.items()},
        "train_seconds": {m: float(np.mean(s)) for m, s in seconds.items()},
        "runs": {"total": len(todo), "resumed": resumed, "store": str(store.folder)},
    }
    if truth is not None:
        summary["seed_spread"] = _seed_spread(runs[ref], verdict, cfg.compare.max_seed_std)
        summary["mean_spearman"] = {m: float(np.mean([v["spearman"][0] for v in cells.values()])) for m, cells in agg.items()}
    _write_reports(cfg, root, summary, man, y, arm, deltas, truth)
    return summary


def _verdict(runs, deltas, ref, man, y, arm, truth, cfg) -> dict:
    """Per cell: does the oracle beat random clearly, and ``ref`` against every other model."""
    out: dict = {}
    cell_index = {rp.cell_key(c): i for i, c in enumerate(runs[ref][0])}
    rand = None if truth is None else np.random.default_rng(cfg.seed).random(truth.shape)
    for k, treat in enumerate(man.treatments, start=1):
        for r, resp in enumerate(man.responses):
            key = f"{treat}__{resp}"
            i = cell_index[key]
            cell: dict = {"vs": {}}
            if truth is not None:
                d, lo, hi = paired_qini_diff(y, arm, [truth], [rand], k, r, cfg.compare.bootstrap, cfg.seed)
                cell["oracle_minus_random_qini"] = {"diff": d, "lo": lo, "hi": hi}
                cell["counts"] = bool(lo > 0)
            else:
                cell["counts"] = True
            for other in deltas:
                if other == ref:
                    continue
                if truth is not None:
                    seeds = min(len(runs[ref]), len(runs[other]))
                    v = {}
                    for metric, up in (("spearman", True), ("pehe", False)):
                        diffs = [runs[ref][s][i][metric] - runs[other][s][i][metric] for s in range(seeds)]
                        d, lo, hi = paired_seed_interval(diffs)
                        v[metric] = {"diff": d, "lo": lo, "hi": hi, "status": status(lo, hi, up)}
                    st = {v["spearman"]["status"], v["pehe"]["status"]}
                    v["status"] = "worse" if "worse" in st else "better" if st == {"better"} else "tied"
                else:
                    d, lo, hi = paired_qini_diff(y, arm, deltas[ref], deltas[other], k, r,
                                                 cfg.compare.bootstrap, cfg.seed)
                    v = {"qini": {"diff": d, "lo": lo, "hi": hi, "status": status(lo, hi)}, "status": status(lo, hi)}
                cell["vs"][other] = v
            out[key] = cell
    return out


def _seed_spread(ref_runs: list[list[dict]], verdict: dict, target: float) -> dict:
    """Per cell: the reference's seed std of ρ(true) with its 95 % χ² interval, against ``target``."""
    index = {rp.cell_key(c): i for i, c in enumerate(ref_runs[0])}  # the runs' cell order, as ``_verdict`` reads it
    out = {}
    for key, cell in verdict.items():
        s, lo, hi = seed_std_interval([cells[index[key]]["spearman"] for cells in ref_runs])
        out[key] = {"std": s, "lo": lo, "hi": hi, "seeds": len(ref_runs), "target": target,
                    "judged": bool(cell["counts"]), "status": spread_status(s, lo, hi, target)}
    return out


def _verdict_rows(verdict: dict) -> list[list[str]]:
    def one(v: dict) -> str:
        parts = [f"{m} {x['diff']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]" for m, x in v.items() if m != "status"]
        return "; ".join(parts) + f" **{v['status']}**"

    others = list(next(iter(verdict.values()))["vs"])
    return [[o] + [one(c["vs"][o]) for c in verdict.values()] for o in others]


def _write_reports(cfg, root, summary, man, y, arm, deltas, truth) -> None:
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    agg, ref = summary["models"], summary["reference"]
    metrics = [*(("spearman", "pehe", "true_qini") if truth is not None else ()), *METRICS]
    verdict = summary["verdict"]
    cells_hdr = [c.replace("__", " / ") for c in verdict]
    oracle_line = ""
    if truth is not None:
        oracle_line = "Oracle − random observed QINI (95 % bootstrap): " + "; ".join(
            f"{c.replace('__', ' / ')} {v['oracle_minus_random_qini']['diff']:+.4f} "
            f"[{v['oracle_minus_random_qini']['lo']:+.4f}, {v['oracle_minus_random_qini']['hi']:+.4f}]"
            f"{'' if v['counts'] else ' (not separable: not judged)'}" for c, v in verdict.items())
    mq = summary["mean_qini"]
    judged = ("paired by seed on ρ(true) and PEHE (95 % t interval of the per-seed differences)"
              if truth is not None else "on seed-averaged QINI, 95 % paired bootstrap over test users")
    md = "\n".join([
        "# HUM vs baselines",
        "",
        (f"{summary['n_test']:,} test users, seeds {summary['seeds']} (mean ± std over seeds; the split is fixed). "
         if summary["protocol"] == "holdout" else
         f"Cross-fitted: all {summary['n_test']:,} users, each scored by the one of {summary['folds']} fold models "
         f"that never saw them; seeds {summary['seeds']} (mean ± std over seeds; each seed has its own fold "
         "assignment, so the spread covers the split too). ")
        + "Users are ranked "
        "by the relative δ. ρ(true), PEHE: against the true δ (they lead on simulated data); QINI / AUUC: "
        "normalized areas on observed responses; LIFT@k: top-k uplift.",
        "",
        rp.metric_tables(agg, metrics),
        f"## {ref} − baseline, judged {judged}",
        "",
        oracle_line,
        "",
        rp.markdown_table(["baseline"] + cells_hdr, _verdict_rows(verdict)),
        "",
        f"{ref} best or statistically tied in every judged cell: **{summary['best_or_tied_everywhere']}**.",
        "",
        *([f"{ref} seed std of ρ(true) (95 % χ² interval over {len(summary['seeds'])} seeds; target ≤ "
           f"{cfg.compare.max_seed_std}): " + "; ".join(
               f"{c.replace('__', ' / ')} {v['std']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] {v['status']}"
               + ("" if v["judged"] else " (not judged)") for c, v in summary["seed_spread"].items()), ""]
          if truth is not None else []),
        *(["Mean ρ(true) over cells: " + ", ".join(
            f"{m} {v:.3f}" for m, v in sorted(summary["mean_spearman"].items(), key=lambda kv: -kv[1])), ""]
          if truth is not None else []),
        "Mean QINI over cells: " + ", ".join(f"{m} {v:.4f}" for m, v in sorted(mq.items(), key=lambda kv: -kv[1])),
        "",
        "Training seconds per run: " + ", ".join(f"{m} {s:.0f}" for m, s in summary["train_seconds"].items()),
        "",
    ])
    (reports / "compare.md").write_text(md)
    first = {m: d[0] for m, d in deltas.items()}
    if truth is not None:
        first["oracle"] = truth
    images = []
    for kind in ("qini", "uplift"):
        curves = rp.cell_curves(y, arm, first, man.arms, man.responses, kind)
        fig = rp.plot_cells(curves, kind, f"{kind.title()} curves, all models (first seed)")
        images.append((f"{kind} curves", rp.save_figure(fig, reports / f"compare_{kind}_curves.png")))
    rp.write_html(reports / "compare.html", "HUM vs baselines", md, images)
