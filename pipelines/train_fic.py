"""Stage ``train_fic`` (CDUM, spec §3): FIC, the per-request real-time interest model.

Reads the request logs (``requests.parquet`` with ``cand_played``), builds the play-ratio
labels (``models.fic.play_ratio_labels``), trains FIC (DDM's request network, one tower per
treatment) with DDM's trainer and schedule (``cdum.fic``), and writes ``<data>/fic/fic.npz``:
the numpy weights the service runs, no torch needed. The report (``reports/fic.json``) gives
the validation MSE against a predict-the-mean baseline and, on simulated data, the Pearson
correlation of r̂ with the simulator's true real-time interest per treatment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError
from fulcrum.progress import progress
from models.ddm_io import (
    EXPOSED,
    arrays_from_table,
    fic_labels_from_table,
    fit_vocab,
    read_request_table,
)
from pipelines.families import SKIPPED, skip_family_stage
from pipelines.train_ddm import (
    _mean,
    _pearson,
    fit_ddm,
    predict_o_hat,
    request_truth,
    split_by_user,
)

log = logging.getLogger("fulcrum")
FIC_FILE = "fic.npz"
REPORT = "fic.json"


def run_train_fic(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Train FIC on ``<data>/rct``'s request logs; write its numpy weights and report; returns the metrics."""
    from models.ddm_numpy import NumpyDDM, save_serving_ddm
    from models.fic import fic_config, fic_net
    from models.train import pick_device, seed_everything

    if not cfg.cdum_on:
        return skip_family_stage(cfg.paths.fic_dir(root), cfg.paths.reports_dir(root) / REPORT, "train_fic",
                                 cfg.families)
    t0 = time.perf_counter()
    fc = cfg.cdum.fic
    rct_dir = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct_dir)
    path = rct_dir / S.REQUESTS_FILE
    if not man.has_requests or not path.exists():
        raise StageError(f"FIC trains on request logs and {rct_dir} has none (the {man.source} source)")
    if S.PLAYED not in pq.read_schema(path).names:
        raise StageError(f"{path} has no {S.PLAYED!r} column (0/1 per candidate: played through): FIC's labels are "
                         "play ratios (simulator: source.scenario duration_mix)")
    responses, treatments = list(man.responses), list(man.treatments)
    table = read_request_table(rct_dir, responses, extra=[S.PLAYED])
    arrays = arrays_from_table(table, responses, fc.max_items)
    labels = fic_labels_from_table(table, len(treatments))  # (N, K)
    labelled = pc.fill_null(pc.list_value_length(table.column(EXPOSED)), 0).to_numpy() > 0  # has candidates
    is_valid = split_by_user(table.column(S.USER_ID).to_numpy(), fc.valid_share, cfg.seed)
    tr, va = labelled & ~is_valid, labelled & is_valid
    if not tr.any() or not va.any():
        raise StageError("FIC needs requests with candidates in both training and validation")
    train, valid = arrays.take(tr), arrays.take(va)
    conf = fic_config(len(responses), len(treatments), *fit_vocab(train), emb_dim=fc.emb_dim,
                      n_experts=fc.n_experts, expert_hidden=tuple(fc.expert_hidden), tower_hidden=tuple(fc.tower_hidden))
    device = pick_device(fc.device)
    seed_everything(cfg.seed)
    net = fic_net(conf).to(device)
    with progress("training FIC", fc.epochs, "epochs") as advance:
        res = fit_ddm(net, train, labels[tr], valid, labels[va], fc, cfg.seed, advance)
    r_hat = predict_o_hat(net, valid)  # (n_valid, K)
    fast = NumpyDDM.from_net(net.cpu())
    h = hashlib.sha256(json.dumps(fast.config, sort_keys=True).encode())
    for k in sorted(fast.state):
        h.update(k.encode() + fast.state[k].tobytes())
    version = h.hexdigest()[:12]
    meta = {"version": version, "kind": "fic", "responses": responses, "treatments": treatments,
            "max_items": fc.max_items, "best_epoch": res.best_epoch, "val_mse": res.best_mse}
    out = cfg.paths.fic_dir(root) / FIC_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / SKIPPED).unlink(missing_ok=True)
    tmp = out.with_suffix(".tmp")
    save_serving_ddm(tmp, fast, meta)
    tmp.replace(out)
    summary: dict = {
        "version": version, "n_requests": int(len(labels)), "n_train": int(tr.sum()), "n_valid": int(va.sum()),
        "best_epoch": res.best_epoch, "val_mse": round(res.best_mse, 8),
        "val_mse_baseline": round(float(np.mean((labels[tr].mean(axis=0) - labels[va]) ** 2)), 8),
    }
    truth = request_truth(rct_dir, [S.interest_column(t) for t in treatments],
                          table.column(S.REQUEST_ID).to_numpy()[va]) if man.has_truth else None
    if truth is not None:
        corr = {t: _pearson(r_hat[:, k], truth[:, k]) for k, t in enumerate(treatments)}
        summary.update({"corr_true_interest": corr, "corr_true_interest_mean": _mean(list(corr.values()))})
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    log.info("train-fic: version %s, validation MSE %.5f (baseline %.5f)%s", version, res.best_mse,
             summary["val_mse_baseline"], f", corr(r̂, true interest) {summary['corr_true_interest_mean']:.3f}"
             if summary.get("corr_true_interest_mean") is not None else "")
    return summary
