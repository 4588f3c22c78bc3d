"""Stage ``compare``: HUM against every baseline over several seeds, on the same split.

Each model is trained once per seed (the user split stays fixed) and scored on the
test users. The table gives mean ± std over seeds per (response, treatment) ×
(QINI, AUUC, LIFT@k) and, on simulated data, PEHE and ρ(true). Whether HUM is best
or tied is judged per cell with a paired bootstrap over test users of the difference
in seed-averaged QINI (HUM − baseline): tied when its 95 % interval contains 0.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from fulcrum.config import FulcrumConfig
from fulcrum.metrics import per_arm_table, qini_auc_score
from pipelines import reporting as rp
from pipelines.training_set import Prepared, prepare

log = logging.getLogger("fulcrum")
METRICS = ("qini", "auuc", "lift30")
TRUTH_METRICS = ("pehe", "spearman")


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


def run_compare(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    rct = cfg.paths.rct_dir(root)
    prep = prepare(rct, cfg.train.split, cfg.seed, cfg.train.n_bins, target=cfg.train.target, cfg=cfg, root=root)
    man = prep.manifest
    test = prep.rows("test")
    y, arm = prep.y[test], prep.arm[test]
    true_mu = prep.true_mu(rct, "test")
    truth = None if true_mu is None else rp.relative_truth(true_mu)
    k_lift = cfg.evaluate.lift_k
    runs: dict[str, list[list[dict]]] = {}
    deltas: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}
    for name in cfg.compare.models:
        for seed in cfg.compare.seeds:
            log.info("compare: %s seed %d", name, seed)
            delta, sec = fit_predict(prep, name, cfg, seed)
            cells = per_arm_table(y, arm, delta, man.arms, man.responses, k=k_lift, tau_true=truth)
            runs.setdefault(name, []).append(cells)
            deltas.setdefault(name, []).append(delta)
            seconds.setdefault(name, []).append(sec)
            log.info("compare: %s seed %d mean QINI %.4f (%.0f s)", name, seed,
                     float(np.mean([c["qini"] for c in cells])), sec)
    if truth is not None:
        runs["oracle"] = [per_arm_table(y, arm, truth, man.arms, man.responses, k=k_lift, tau_true=truth)]
    agg = aggregate(runs)

    # Is HUM best or tied for best in every cell? Paired bootstrap against each baseline.
    verdict: dict = {}
    ref = "hum" if "hum" in deltas else next(iter(deltas))
    for k, treat in enumerate(man.treatments, start=1):
        for r, resp in enumerate(man.responses):
            key = f"{treat}__{resp}"
            verdict[key] = {}
            for other in deltas:
                if other == ref:
                    continue
                d, lo, hi = paired_qini_diff(y, arm, deltas[ref], deltas[other], k, r,
                                             cfg.compare.bootstrap, cfg.seed)
                status = "better" if lo > 0 else "worse" if hi < 0 else "tied"
                verdict[key][other] = {"diff": d, "lo": lo, "hi": hi, "status": status}
    summary = {
        "reference": ref,
        "seeds": cfg.compare.seeds,
        "n_test": int(test.sum()),
        "models": agg,
        "verdict": verdict,
        "best_or_tied_everywhere": all(v["status"] != "worse" for cell in verdict.values() for v in cell.values()),
        "mean_qini": {m: float(np.mean([v["qini"][0] for v in cells.values()])) for m, cells in agg.items()},
        "train_seconds": {m: float(np.mean(s)) for m, s in seconds.items()},
    }
    _write_reports(cfg, root, summary, man, y, arm, deltas, truth)
    return summary


def _write_reports(cfg, root, summary, man, y, arm, deltas, truth) -> None:
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    agg, ref = summary["models"], summary["reference"]
    metrics = [*METRICS, *(TRUTH_METRICS if truth is not None else ())]
    vrows = [[other] + [f"{v[other]['diff']:+.4f} [{v[other]['lo']:+.4f}, {v[other]['hi']:+.4f}] {v[other]['status']}"
                        for v in summary["verdict"].values()]
             for other in next(iter(summary["verdict"].values()))]
    mq = summary["mean_qini"]
    md = "\n".join([
        "# HUM vs baselines",
        "",
        f"{summary['n_test']:,} test users, seeds {summary['seeds']} (mean ± std over seeds). "
        "QINI / AUUC: normalized areas; LIFT@k: top-k uplift; PEHE, ρ(true): against the true δ.",
        "",
        rp.metric_tables(agg, metrics),
        f"## {ref} − baseline, seed-averaged QINI, 95 % paired bootstrap over test users",
        "",
        rp.markdown_table(["baseline"] + [c.replace("__", " / ") for c in summary["verdict"]], vrows),
        "",
        f"{ref} best or statistically tied in every cell: **{summary['best_or_tied_everywhere']}**.",
        "",
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
