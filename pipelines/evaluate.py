"""Stage ``evaluate``: the trained model on the held-out test users.

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
from pathlib import Path

import numpy as np

from fulcrum.config import FulcrumConfig
from fulcrum.metrics import mean_qini, per_arm_table
from pipelines import reporting as rp
from pipelines.train import CHECKPOINT
from pipelines.training_set import prepare

log = logging.getLogger("fulcrum")


def test_summary(prep, net, target, rct: Path, k: float) -> dict:
    """A model's test-split means (QINI; with truth ρ(true), PEHE, true QINI) and its cells: the short table."""
    import torch

    from models.base import relative_uplift
    from models.train import predict_mu

    man = prep.manifest
    rows = prep.rows("test")
    mu = predict_mu(net, torch.from_numpy(prep.x[rows]), target)  # (n, K+1, R)
    delta = relative_uplift(torch.from_numpy(mu)).numpy()
    true_mu = prep.true_mu(rct, "test")
    truth = None if true_mu is None else rp.relative_truth(true_mu)
    cells = per_arm_table(prep.y[rows], prep.arm[rows], delta, man.arms, man.responses, k=k, tau_true=truth,
                          mu_true=true_mu)
    out = {"n_test": int(rows.sum()), "mean_qini": mean_qini(cells),
           "cells": {rp.cell_key(c): {m: v for m, v in c.items() if m not in ("treatment", "response")} for c in cells}}
    if truth is not None:
        out.update({m: float(np.mean([c[key] for c in cells]))
                    for m, key in (("mean_spearman", "spearman"), ("mean_pehe", "pehe"), ("mean_true_qini", "true_qini"))})
    return out


def run_evaluate(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    import torch

    from models.base import relative_uplift
    from models.checkpoint import load_checkpoint
    from models.train import predict_mu

    rct = cfg.paths.rct_dir(root)
    ck = load_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT)
    prep = prepare(rct, cfg.train.split, ck.meta["seed"], cfg.train.n_bins, encoder=ck.encoder, target=ck.target, cfg=cfg, root=root)
    man = prep.manifest
    rows = prep.rows("test")
    y, arm = prep.y[rows], prep.arm[rows]
    mu = predict_mu(ck.net, torch.from_numpy(prep.x[rows]), ck.target)  # (n, K+1, R)
    delta = relative_uplift(torch.from_numpy(mu)).numpy()
    true_mu = prep.true_mu(rct, "test")
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
        fig = rp.plot_cells(curves, kind, f"{kind.title()} curves on {int(rows.sum()):,} test users")
        images.append((f"{kind} curves", rp.save_figure(fig, reports / f"{kind}_curves.png")))

    name = ck.meta["model"]
    summary = {
        "model": name,
        "version": ck.version,
        "n_test": int(rows.sum()),
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
        f"{int(rows.sum()):,} held-out test users. QINI / AUUC are normalized areas "
        f"(scikit-uplift's definition, continuous variant: see fulcrum/metrics/curves.py); "
        f"LIFT@k: mean treated − mean control response in the top {k:.0%}. Users are ranked by the "
        f"relative δ (the published score); the *(ŷ_k − ŷ_0)* tables rank the same model by its absolute uplift.",
        "Simulated data: the truth metrics lead. ρ(true) and PEHE compare predicted with true relative effects δ; "
        "true QINI is the normalized area of the ranking's true gain Σ(μ_k − μ_0) (1 = perfect, 0 = random): "
        "no response noise. Observed QINI on a test set this size is near its noise floor "
        "(docs/noise_floor.txt)." if truth is not None else "",
        "",
        tables,
    ])
    (reports / "evaluate.md").write_text(md)
    rp.write_html(reports / "evaluate.html", f"Evaluation of {name}", md, images)
    log.info("evaluate: %s mean QINI %.4f on %d test users%s", name, summary["mean_qini"], summary["n_test"],
             f" (oracle {summary['oracle_mean_qini']:.4f})" if truth is not None else "")
    return summary
