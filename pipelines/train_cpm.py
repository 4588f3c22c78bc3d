"""Stage ``train_cpm`` (CDUM, spec §3): CPM, the daily per-user outcome model ŷ^k, ŷ^0.

Runs when ``families`` has ``cdum``: CPM is fitted by the shared trainer on the same user
split and hyper-parameters as HUM (``train.*``, model ``cpm``) under the same protocol
(``evaluate.protocol``: holdout, or cross-fitted with its out-of-fold ŷ beside it), saved as
``<data>/cpm/model.pt`` (the checkpoint format of ``train``) and judged on the same users
with the same metrics as ``evaluate`` (``<reports>/train_cpm.json``). With HMUM only, the
stage records that it was skipped and removes any earlier checkpoint, so nothing
downstream can pick up a stale CPM.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fulcrum.config import FulcrumConfig
from pipelines.families import SKIPPED, skip_family_stage
from pipelines.train import CHECKPOINT, checkpoint_meta, fit_for_protocol, train_summary
from pipelines.training_set import prepare

log = logging.getLogger("fulcrum")
MODEL = "cpm"
REPORT = "train_cpm.json"


def run_train_cpm(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Fit CPM on the RCT's training users, save it and its test metrics; a no-op note without CDUM."""
    from models.checkpoint import save_checkpoint
    from pipelines.evaluate import judged_users, test_summary

    out_dir, reports = cfg.paths.cpm_dir(root), cfg.paths.reports_dir(root)
    if not cfg.cdum_on:
        return skip_family_stage(out_dir, reports / REPORT, "train_cpm", cfg.families)
    t0 = time.perf_counter()
    tc = cfg.train.model_copy(update={"model": MODEL})
    rct = cfg.paths.rct_dir(root)
    prep = prepare(rct, tc.split, cfg.seed, tc.n_bins, target=tc.target, cfg=cfg, root=root)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SKIPPED).unlink(missing_ok=True)
    net, conf, res, cf = fit_for_protocol(cfg, prep, MODEL, tc, out_dir)
    meta = checkpoint_meta(prep, res, tc, cfg.seed, cf)
    version = save_checkpoint(out_dir / CHECKPOINT, MODEL, conf, net, prep.encoder, meta)
    summary = train_summary(MODEL, version, prep, res, tc, net, t0, cf)
    judged = judged_users(prep, net, prep.target, meta["protocol"], out_dir)
    summary["test"] = test_summary(prep, judged, rct, cfg.evaluate.lift_k)
    summary["stage_seconds"] = round(time.perf_counter() - t0, 2)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    t = summary["test"]
    log.info("train-cpm: CPM %s, best epoch %d; test mean QINI %.4f%s (%.1f s)", version, res.best_epoch,
             t["mean_qini"], f", mean ρ(true) {t['mean_spearman']:.3f}" if "mean_spearman" in t else "",
             summary["stage_seconds"])
    return summary
