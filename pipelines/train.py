"""Stage ``train``: fit HUM (or a baseline, by name) on the RCT training split.

Writes ``<data>/model/model.pt`` (weights-only checkpoint with encoder, config and
target scale), ``<reports>/train.json`` (DVC metrics) and the per-epoch history
(DVC plot data).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from fulcrum.config import FulcrumConfig, TrainConfigModel
from fulcrum.errors import StageError
from fulcrum.metrics import mean_qini, per_arm_table
from fulcrum.progress import progress
from pipelines.training_set import Prepared, prepare

log = logging.getLogger("fulcrum")
CHECKPOINT = "model.pt"


def validation_scorer(prep: Prepared, k: float = 0.3):
    """δ on the validation split -> mean normalized QINI over treatments × responses."""
    rows = prep.rows("valid")
    y, arm, man = prep.y[rows], prep.arm[rows], prep.manifest

    def score(delta: np.ndarray) -> float:
        return mean_qini(per_arm_table(y, arm, delta, man.arms, man.responses, k=k))

    return score


def train_net(prep: Prepared, name: str, tc: TrainConfigModel, seed: int):
    """Build model ``name`` from ``tc`` and fit it; returns (net, net_config, TrainResult)."""
    import torch

    from models.registry import Dims, build_net, net_config
    from models.train import TrainConfig, fit, pick_device, seed_everything

    man = prep.manifest
    dims = Dims(prep.x.shape[1], prep.encoder.vocab_size, len(man.treatments), len(man.responses))
    conf = net_config(name, dims, tc.model_dump())
    device = pick_device(tc.device)
    seed_everything(seed)  # weights are drawn at construction
    net = build_net(name, conf).to(device)
    run = TrainConfig(
        epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr, weight_decay=tc.weight_decay, select=tc.select,
        min_epochs=tc.min_epochs, early_stopping_patience=tc.early_stopping_patience, plateau_factor=tc.plateau_factor,
        plateau_patience=tc.plateau_patience, seed=seed, device=str(device),
    )
    with progress(f"training {name}", tc.epochs, "epochs") as advance:
        res = fit(net, prep.tensors("train"), prep.tensors("valid"), run, validation_scorer(prep), advance,
                  target=prep.target)
    torch.set_grad_enabled(True)
    return net, conf, res


MIN_ROWS_PER_ARM_AND_SPLIT = 5  # fewer cannot give a validation criterion or any metric


def check_splits(prep: Prepared, minimum: int = MIN_ROWS_PER_ARM_AND_SPLIT) -> None:
    """Every arm needs rows in every split: else StageError naming the split and the arm."""
    short = []
    for part in ("train", "valid", "test"):
        counts = np.bincount(prep.arm[prep.rows(part)], minlength=len(prep.manifest.arms))
        short += [f"{part}/{arm}: {int(n)}" for arm, n in zip(prep.manifest.arms, counts, strict=True) if n < minimum]
    if short:
        raise StageError(f"too few users to train and judge a model ({len(prep.frame):,} users): each arm needs at "
                         f"least {minimum} users in each split, found " + ", ".join(short)
                         + " (more users, or another train.split)")


def run_train(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    from models.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    tc = cfg.train
    prep = prepare(cfg.paths.rct_dir(root), tc.split, cfg.seed, tc.n_bins, target=tc.target, cfg=cfg, root=root)
    log.info("train: %d users (%d train / %d valid / %d test), %d fields, vocab %d",
             len(prep.frame), *(int(prep.rows(p).sum()) for p in ("train", "valid", "test")),
             prep.x.shape[1], prep.encoder.vocab_size)
    check_splits(prep)
    net, conf, res = train_net(prep, tc.model, tc, cfg.seed)
    meta = checkpoint_meta(prep, res, tc, cfg.seed)
    version = save_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT, tc.model, conf, net, prep.encoder, meta)
    summary = train_summary(tc.model, version, prep, res, tc, net, t0)
    reports = cfg.paths.reports_dir(root)
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    (reports / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    (reports / "plots" / "train_history.json").write_text(json.dumps(res.history, indent=1) + "\n")
    log.info("train: %s version %s, best epoch %d by validation %s (loss %.5f, QINI %.4f), %.1f s",
             tc.model, version, res.best_epoch, tc.select, meta["val_loss"], meta["val_qini"], res.seconds)
    return summary


def checkpoint_meta(prep: Prepared, res, tc: TrainConfigModel, seed: int) -> dict:
    """What a checkpoint records besides the weights: arms, responses, target scale, the chosen epoch."""
    man = prep.manifest
    return {
        "arms": man.arms,
        "responses": man.responses,
        "target": prep.target.state(),
        "seed": seed,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "best_epoch": res.best_epoch,
        "select": tc.select,
        "val_qini": res.history[res.best_epoch]["val_qini"],
        "val_loss": res.history[res.best_epoch]["val_loss"],
        "data_last_snapshot": man.last_snapshot,
    }


def train_summary(name: str, version: str, prep: Prepared, res, tc: TrainConfigModel, net, t0: float) -> dict:
    """The training report (DVC metrics) of one fitted model."""
    n_train = int(prep.rows("train").sum())
    epochs_run = len(res.history)
    best = res.history[res.best_epoch]
    return {
        "model": name,
        "version": version,
        "best_epoch": res.best_epoch,
        "epochs_run": epochs_run,
        "select": tc.select,
        "val_qini": round(best["val_qini"], 6),
        "val_loss": round(best["val_loss"], 6),
        "train_seconds": round(res.seconds, 2),
        "train_samples_per_s": round(n_train * epochs_run / max(res.seconds, 1e-9)),
        "n_train": n_train,
        "device": str(next(net.parameters()).device),
        "stage_seconds": round(time.perf_counter() - t0, 2),
    }
