"""Stage ``evaluate``: the trained model on the held-out test users, or on every user out of fold.

The protocol is the one the model was fitted under (``evaluate.protocol``): holdout judges
the daily model on the train.split test users; cross_fit judges the fold models' out-of-fold
predictions of every user (:mod:`pipelines.crossfit`), with QINI intervals that cover the
split and the seed as well as the users.

Rows of the table: the trained model, and as references the oracle (ranking by the
true δ, simulated data only) and a random ranking. Columns: every (treatment,
response) × QINI, AUUC, LIFT@k, plus PEHE / ρ(true) / true LIFT@k when truth exists
(computed on relative effects δ, the quantity HUM publishes).

QINI and AUUC reward ranking by the *absolute* uplift (they sum response differences),
while δ = ŷ_k / ŷ_0 − 1 is relative. The tables rank by δ; ``qini_abs`` / ``auuc_abs``
rank the same model by ŷ_k − ŷ_0 (the oracle by the true absolute effect).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.metrics import mean_qini, per_arm_table
from pipelines import reporting as rp
from pipelines.crossfit import CrossFit, qini_intervals
from pipelines.train import CHECKPOINT
from pipelines.training_set import Prepared, prepare

log = logging.getLogger("fulcrum")


@dataclass
class Judged:
    """The users a model is judged on and its predictions for them.

    holdout: the test split, one model. cross_fit: every user, out of fold, one run per repeat.
    """

    protocol: str
    rows: np.ndarray        # (N,) bool over the training frame's rows
    mu: np.ndarray          # (n, K+1, R) expected outcomes (mean over runs)
    delta_runs: np.ndarray  # (runs, n, K, R) relative δ of each run

    @property
    def delta(self) -> np.ndarray:
        """(n, K, R) the run-averaged δ: what the tables rank by."""
        return self.delta_runs.mean(0)

    @property
    def n(self) -> int:
        return int(self.rows.sum())

    @property
    def users_label(self) -> str:
        return "users, each scored out of fold" if self.protocol == "cross_fit" else "held-out test users"


def judged_users(prep: Prepared, net, target, protocol: str, model_dir: Path) -> Judged:
    """Holdout: ``net`` on the test split. Cross-fit: the fold models' out-of-fold ŷ of every user."""
    if protocol == "cross_fit":
        cf = CrossFit.from_dir(model_dir)
        cf.check_users(prep.frame[S.USER_ID].to_numpy(), "the training set")
        return Judged(protocol, np.ones(len(prep.frame), bool), cf.mu.mean(0).astype(np.float64), cf.delta_runs)
    import torch

    from models.train import predict_mu

    rows = prep.rows("test")
    mu = predict_mu(net, torch.from_numpy(prep.x[rows]), target).astype(np.float64)  # (n, K+1, R)
    return Judged(protocol, rows, mu, rp.relative_truth(mu)[None])


def protocol_line(judged: Judged, meta: dict) -> str:
    """One sentence on how the users were scored, for the reports."""
    if judged.protocol == "holdout":
        return ("Protocol: holdout (the train.split test users; the 95 % QINI intervals are a bootstrap over them "
                "and do not cover the split or the seed).")
    return (f"Protocol: cross_fit. {meta['folds']} folds by user hash × {len(meta['fold_seeds'])} fold assignments "
            f"(seeds {meta['fold_seeds']}, model seeds {meta['model_seeds']}): every user is scored by the fold model "
            "that never saw them, the tables rank by the δ averaged over the assignments, and the 95 % QINI intervals "
            "cover the users (bootstrap), the split and the seed (spread between assignments). The released model "
            "is fit on every user for the fold models' median epoch count.")


def qini_interval_cells(prep: Prepared, judged: Judged, n_boot: int, seed: int) -> dict[str, list[float]]:
    """{cell: [lo, hi]} 95 % QINI interval of the judged δ (users; with cross-fitting also split and seed)."""
    iv = qini_intervals(prep.y[judged.rows], prep.arm[judged.rows], judged.delta_runs, n_boot, seed)
    man = prep.manifest
    keys = [rp.cell_key({"treatment": t, "response": r}) for t in man.treatments for r in man.responses]
    return {key: [float(iv["lo"][i]), float(iv["hi"][i])] for i, key in enumerate(keys)}


def test_summary(prep: Prepared, judged: Judged, rct: Path, k: float) -> dict:
    """A model's means over the judged users (QINI; with truth ρ(true), PEHE, true QINI) and its cells."""
    man = prep.manifest
    true_mu = prep.true_mu_rows(rct, judged.rows)
    truth = None if true_mu is None else rp.relative_truth(true_mu)
    cells = per_arm_table(prep.y[judged.rows], prep.arm[judged.rows], judged.delta, man.arms, man.responses, k=k,
                          tau_true=truth, mu_true=true_mu)
    out = {"protocol": judged.protocol, "n_test": judged.n, "mean_qini": mean_qini(cells),
           "cells": {rp.cell_key(c): {m: v for m, v in c.items() if m not in ("treatment", "response")} for c in cells}}
    if truth is not None:
        out.update({m: float(np.mean([c[key] for c in cells]))
                    for m, key in (("mean_spearman", "spearman"), ("mean_pehe", "pehe"), ("mean_true_qini", "true_qini"))})
    return out


def run_evaluate(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    from models.checkpoint import load_checkpoint

    rct = cfg.paths.rct_dir(root)
    ck = load_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT)
    prep = prepare(rct, cfg.train.split, ck.meta["seed"], cfg.train.n_bins, encoder=ck.encoder, target=ck.target, cfg=cfg, root=root)
    man = prep.manifest
    judged = judged_users(prep, ck.net, ck.target, ck.meta.get("protocol", "holdout"), cfg.paths.model_dir(root))
    rows = judged.rows
    y, arm = prep.y[rows], prep.arm[rows]
    delta, mu = judged.delta, judged.mu
    true_mu = prep.true_mu_rows(rct, judged.rows)
    truth = None if true_mu is None else rp.relative_truth(true_mu)
    k = cfg.evaluate.lift_k
    scores = {ck.meta["model"]: delta}
    absolute = {ck.meta["model"]: rp.absolute_uplift(mu)}
    if truth is not None:
        scores["oracle"], absolute["oracle"] = truth, rp.absolute_uplift(true_mu)
    scores["random"] = np.random.default_rng(cfg.seed).random(delta.shape)
    results = {name: per_arm_table(y, arm, s, man.arms, man.responses, k=k, tau_true=truth, mu_true=true_mu)
               for name, s in scores.items()}
    for name, a in absolute.items():  # the same ranking metrics when ranked by ŷ_k − ŷ_0
        for cell, by_abs in zip(results[name], per_arm_table(y, arm, a, man.arms, man.responses, k=k), strict=True):
            cell["qini_abs"], cell["auuc_abs"] = by_abs["qini"], by_abs["auuc"]
    intervals = qini_interval_cells(prep, judged, cfg.evaluate.bootstrap, cfg.seed)
    for cell in results[ck.meta["model"]]:
        cell["qini_lo"], cell["qini_hi"] = intervals[rp.cell_key(cell)]

    reports = cfg.paths.reports_dir(root)
    plots = reports / "plots"
    # Fixed series names ("model", "oracle") so DVC plot definitions do not depend on the model.
    model_scores = {("model" if n == ck.meta["model"] else n): s for n, s in scores.items() if n != "random"}
    images = []
    for kind in ("qini", "uplift"):
        curves = rp.cell_curves(y, arm, model_scores, man.arms, man.responses, kind)
        for cell, data in curves.items():
            (plots / kind).mkdir(parents=True, exist_ok=True)
            (plots / kind / f"{cell}.json").write_text(json.dumps(rp.curve_rows(data)) + "\n")
        fig = rp.plot_cells(curves, kind, f"{kind.title()} curves on {judged.n:,} {judged.users_label}")
        images.append((f"{kind} curves", rp.save_figure(fig, reports / f"{kind}_curves.png")))

    name = ck.meta["model"]
    summary = {
        "model": name,
        "version": ck.version,
        "protocol": judged.protocol,
        "n_test": judged.n,
        "runs": len(judged.delta_runs),
        "mean_qini": mean_qini(results[name]),
        "cells": {rp.cell_key(c): {m: v for m, v in c.items() if m not in ("treatment", "response")}
                  for c in results[name]},
    }
    if truth is not None:
        summary["oracle_mean_qini"] = mean_qini(results["oracle"])
        summary["mean_pehe"] = float(np.mean([c["pehe"] for c in results[name]]))
        summary["mean_spearman"] = float(np.mean([c["spearman"] for c in results[name]]))
        summary["mean_true_qini"] = float(np.mean([c["true_qini"] for c in results[name]]))
    (reports / "evaluate.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = (["spearman", "pehe", "true_qini"] if truth is not None else []) + ["qini", "qini_abs", "auuc", "auuc_abs", "lift30"]
    tables = rp.metric_tables({n: rp.as_results(c) for n, c in results.items()}, metrics)
    md = "\n".join([
        f"# Evaluation of {name} {ck.version}",
        "",
        protocol_line(judged, ck.meta),
        "",
        f"{judged.n:,} {judged.users_label}. QINI / AUUC are normalized areas "
        f"(scikit-uplift's definition, continuous variant: see fulcrum/metrics/curves.py); "
        f"LIFT@k: mean treated − mean control response in the top {k:.0%}. Users are ranked by the "
        f"relative δ (the published score); the *(ŷ_k − ŷ_0)* tables rank the same model by its absolute uplift.",
        "Simulated data: the truth metrics lead. ρ(true) and PEHE compare predicted with true relative effects δ; "
        "true QINI is the normalized area of the ranking's true gain Σ(μ_k − μ_0) (1 = perfect, 0 = random): "
        "no response noise. Observed QINI on a test set this size is near its noise floor "
        "(docs/noise_floor.txt)." if truth is not None else "",
        "",
        tables,
        f"## {name}: QINI with its 95 % interval",
        "",
        rp.markdown_table(["cell", "QINI", "95 % interval", "width"], [
            [key.replace("__", " / "), f"{c['qini']:+.4f}", f"[{c['qini_lo']:+.4f}, {c['qini_hi']:+.4f}]",
             f"{c['qini_hi'] - c['qini_lo']:.4f}"] for key, c in summary["cells"].items()]),
        "",
    ])
    (reports / "evaluate.md").write_text(md)
    rp.write_html(reports / "evaluate.html", f"Evaluation of {name}", md, images)
    log.info("evaluate: %s mean QINI %.4f on %d %s%s", name, summary["mean_qini"], summary["n_test"],
             judged.users_label,
             f" (oracle {summary['oracle_mean_qini']:.4f})" if truth is not None else "")
    return summary
