"""Stage ``train_ddm``: fit DDM (spec §2.1) on the request logs.

Reads ``<data>/rct/requests.parquet`` (and the simulator's ``requests_truth.parquet``
when present), splits requests by user, trains with Adam and early stopping on the
validation MSE, and writes ``<data>/ddm/ddm.pt``, ``<reports>/ddm.json`` (DVC
metrics) and ``<reports>/plots/ddm_history.json`` (per-epoch MSE).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import DDMConfig, FulcrumConfig
from fulcrum.errors import StageError
from fulcrum.progress import progress
from models.ddm_io import (
    CHECKPOINT,
    RequestArrays,
    arrays_from_table,
    fit_vocab,
    labels_from_table,
    read_request_table,
    save_ddm,
)
from pipelines.families import skip_stage

log = logging.getLogger("fulcrum")
PREDICT_BATCH = 16_384


@dataclass
class FitResult:
    best_epoch: int
    best_mse: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def split_by_user(user_id: np.ndarray, valid_share: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: a seeded random ``valid_share`` of users, all their requests."""
    users = np.unique(user_id)
    if len(users) < 2:
        raise StageError(f"DDM needs requests from at least 2 users to hold some out, got {len(users)}")
    n_valid = min(max(round(valid_share * len(users)), 1), len(users) - 1)
    held = np.random.default_rng(seed).choice(users, n_valid, replace=False)
    return np.isin(user_id, held)


def predict_o_hat(net, arrays: RequestArrays, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """ô (N, R) in chunks, so memory stays flat for large validation sets."""
    import torch

    device = next(net.parameters()).device
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(arrays), batch_size):
            chunk = arrays.take(np.arange(i, min(i + batch_size, len(arrays))))
            out.append(net(chunk.to_batch(device)).float().cpu())
    return torch.cat(out).numpy()


def fit_ddm(
    net, train: RequestArrays, y_train: np.ndarray, valid: RequestArrays, y_valid: np.ndarray,
    dc: DDMConfig, seed: int, advance=None,
) -> FitResult:
    """Adam on MSE(ô, o); the net ends with the weights of its lowest validation MSE epoch."""
    import torch

    device = next(net.parameters()).device
    tb = train.to_batch(device)  # whole tensors on the device: batches are index slices, no DataLoader
    ty = torch.from_numpy(y_train).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=dc.lr)
    gen = torch.Generator().manual_seed(seed)
    res = FitResult(best_epoch=-1, best_mse=float("inf"))
    best_state = copy.deepcopy(net.state_dict())
    t0 = time.perf_counter()
    n = len(tb)
    for epoch in range(dc.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for i in range(0, n, dc.batch_size):
            idx = perm[i : i + dc.batch_size]
            loss = torch.nn.functional.mse_loss(net(tb.take(idx)), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val = float(np.mean((predict_o_hat(net, valid) - y_valid) ** 2))
        res.history.append({"epoch": epoch, "train_mse": total / n, "valid_mse": val})
        if advance:
            advance(1)
        if val < res.best_mse:
            res.best_epoch, res.best_mse = epoch, val
            best_state = copy.deepcopy(net.state_dict())
        elif epoch - res.best_epoch >= dc.early_stopping_patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    res.seconds = time.perf_counter() - t0
    return res


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation, None where it is undefined (a constant side, too few pairs)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return None
    return round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 6)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 6) if kept else None


def request_truth(rct_dir: Path, columns: list[str], request_id: np.ndarray) -> np.ndarray | None:
    """Columns of the simulator's request truth (N, C) aligned with ``request_id``; NaN where a request is
    absent; None when the file or a column is missing."""
    path = rct_dir / S.REQUESTS_TRUTH_FILE
    if not path.exists() or not set(columns) <= set(pq.read_schema(path).names):
        return None
    t = pq.read_table(path, columns=[S.REQUEST_ID, *columns])
    ids = t.column(S.REQUEST_ID).to_numpy()
    mix = np.stack([t.column(c).to_numpy() for c in columns], axis=1).astype(np.float64)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, request_id, sorter=order), 0, len(ids) - 1)
    found = ids[order[pos]] == request_id
    out = np.full((len(request_id), len(columns)), np.nan)
    out[found] = mix[order[pos[found]]]
    return out


def run_train_ddm(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Train DDM on ``<data>/rct`` and write its checkpoint and reports; returns the metrics."""
    import torch

    from models.ddm import DDMNet, DDMNetConfig, value_weights
    from models.train import pick_device, seed_everything

    t0 = time.perf_counter()
    dc = cfg.ddm
    rct_dir = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct_dir)
    reports = cfg.paths.reports_dir(root)
    if not man.has_requests:
        # No request logs: the decision weighs responses with fixed weights (decision.weights, else
        # equal), and the policy stage and the service use them; nothing to train.
        summary = skip_stage(cfg.paths.ddm_dir(root), reports / "ddm.json", "train_ddm",
                             f"the {man.source} source has no request logs: the decision uses fixed weights "
                             "(decision.weights; null = equal). Map `source.requests` (logs) or keep "
                             "`source.requests.user_share` > 0 (simulator) to train DDM")
        (reports / "plots").mkdir(parents=True, exist_ok=True)
        (reports / "plots" / "ddm_history.json").write_text("[]\n")  # DVC's plot output exists, empty
        return summary
    if not (rct_dir / S.REQUESTS_FILE).exists():
        raise FileNotFoundError(f"{rct_dir / S.REQUESTS_FILE} not found although the manifest lists requests:"
                                " re-run the collect stage")
    responses = list(man.responses)
    table = read_request_table(rct_dir, responses)
    arrays = arrays_from_table(table, responses, dc.max_items)
    o, n_exposed = labels_from_table(table, responses)  # (N, R), (N,)
    user_id = table.column(S.USER_ID).to_numpy()
    request_id = table.column(S.REQUEST_ID).to_numpy()
    labelled = n_exposed > 0  # a request that exposed nothing has no label
    is_valid = split_by_user(user_id, dc.valid_share, cfg.seed)
    tr, va = labelled & ~is_valid, labelled & is_valid
    if not tr.any() or not va.any():
        raise StageError("DDM needs labelled requests (some candidate exposed) in both training and validation")
    train, valid = arrays.take(tr), arrays.take(va)
    n_dur, n_cat = fit_vocab(train)
    conf = DDMNetConfig(
        n_responses=len(responses), n_parts=arrays.mask.shape[1], n_durations=n_dur, n_categories=n_cat,
        emb_dim=dc.emb_dim, n_experts=dc.n_experts, expert_hidden=tuple(dc.expert_hidden),
        tower_hidden=tuple(dc.tower_hidden),
    )
    device = pick_device(dc.device)
    seed_everything(cfg.seed)  # weights are drawn at construction
    net = DDMNet(conf).to(device)
    log.info("train-ddm: %d requests (%d train / %d valid, %d without exposures), %d items per list, on %s",
             len(o), tr.sum(), va.sum(), (~labelled).sum(), arrays.mask.shape[2], device)
    with progress("training DDM", dc.epochs, "epochs") as advance:
        res = fit_ddm(net, train, o[tr], valid, o[va], dc, cfg.seed, advance)

    o_hat = predict_o_hat(net, valid)
    w = value_weights(torch.from_numpy(o_hat)).numpy()
    baseline = float(np.mean((o[tr].mean(axis=0) - o[va]) ** 2))
    version = save_ddm(
        cfg.paths.ddm_dir(root) / CHECKPOINT, net.cpu(), responses, dc.max_items,
        {"train_config": dc.model_dump(), "seed": cfg.seed, "best_epoch": res.best_epoch,
         "val_mse": res.best_mse},  # no timestamp: the same data give the same file on any worker
    )
    summary: dict = {
        "version": version,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_requests": int(len(o)),
        "n_train": int(tr.sum()),
        "n_valid": int(va.sum()),
        "n_unlabelled": int((~labelled).sum()),
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "val_mse": round(res.best_mse, 8),
        "val_mse_baseline": round(baseline, 8),
        "n_durations": n_dur,
        "n_categories": n_cat,
        "device": str(device),
    }
    mix = request_truth(rct_dir, [S.mix_column(r) for r in responses], request_id[va]) if man.has_truth else None
    if mix is not None:
        corr_w = {r: _pearson(w[:, j], mix[:, j]) for j, r in enumerate(responses)}
        corr_o = {r: _pearson(o[va][:, j], mix[:, j]) for j, r in enumerate(responses)}
        summary.update({
            "corr_w_true_mix": corr_w, "corr_w_true_mix_mean": _mean(list(corr_w.values())),
            "corr_label_true_mix": corr_o, "corr_label_true_mix_mean": _mean(list(corr_o.values())),
        })
    summary["train_seconds"] = round(res.seconds, 2)
    summary["seconds"] = round(time.perf_counter() - t0, 2)

    (reports / "plots").mkdir(parents=True, exist_ok=True)
    (reports / "ddm.json").write_text(json.dumps(summary, indent=2) + "\n")
    (reports / "plots" / "ddm_history.json").write_text(json.dumps(res.history, indent=1) + "\n")
    corr = summary.get("corr_w_true_mix_mean")
    log.info("train-ddm: version %s, best epoch %d, validation MSE %.5f (baseline %.5f)%s, %.1f s",
             version, res.best_epoch, res.best_mse, baseline,
             f", corr(w, true mix) {corr:.3f}" if corr is not None else "", summary["seconds"])
    return summary
