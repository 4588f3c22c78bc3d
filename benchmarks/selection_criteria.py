"""Which validation criterion tracks the truth while HUM trains? Prints numbers (issue 12, item 1).

For each seed: simulate the default RCT (source.seed = seed), train the configured model
for a fixed number of epochs (no early stopping), and after every epoch record on the
validation users: the mean normalized QINI of δ (today's early-stopping criterion), the
masked validation loss (the training objective on held-out users), and the truth metrics
ρ(δ̂, δ) and PEHE averaged over the treatment × response cells. Then reports, pooled over
epochs and seeds and within each seed, the Spearman correlation of each criterion with
the true ρ, and what each criterion's best epoch would have given.

    .venv/bin/python benchmarks/selection_criteria.py --seeds 5 --epochs 15
    .venv/bin/python benchmarks/selection_criteria.py --seeds 4 --data-seed 1 --epochs 24 --model "hum+offset_weight_decay=0.0001"

Each row also holds the true ρ per cell, each arm's own validation loss (its treated rows
alone), and per cell two pseudo-outcome criteria: the transformed-outcome loss mean (Z − τ̂)²
(Z = y/p_k on arm-k rows, −y/(1 − p_k) on control rows, E[Z | x] = τ(x) in an RCT) and the
Pearson correlation of τ̂ = ŷ_k − ŷ_0, δ̂ or δ̂ against Z / ŷ_0 with Z. ``per_arm_loss`` reads each
treatment's cells at the epoch of its arm's lowest loss; the per-cell report gives each
criterion's within-network Spearman correlation with that cell's true ρ and the mean ρ when
every cell is read at the criterion's best epoch (over all epochs, and from epoch 3 on).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from fulcrum.metrics.scores import rank_correlation

    return float(rank_correlation(np.asarray(a, float), np.asarray(b, float)))


def run_seed(seed: int, users: int, epochs: int, work: Path, data_seed: int | None = None,
             model: str = "hum") -> list[dict]:
    """One network (initial weights from ``seed``) traced over its epochs, on the data of
    ``data_seed`` (default: ``seed``)."""
    import torch

    from fulcrum.metrics.scores import pehe, rank_correlation
    from models.registry import build_net, net_config
    from models.train import TrainConfig, fit, seed_everything
    from models.variants import split_variant, with_overrides
    from pipelines.collect import run_collect
    from pipelines.reporting import relative_truth
    from pipelines.train import dims_of, model_hp, validation_scorer
    from pipelines.training_set import prepare

    data_seed = seed if data_seed is None else data_seed
    cfg = load_config(REPO / "params.yaml", {"seed": data_seed, "source.seed": data_seed, "source.n_users": users})
    root = work / f"data{data_seed}"
    if not root.exists():  # several networks on one data set simulate it once
        run_collect(cfg, root)
    name, over = split_variant(model)
    tc = with_overrides(cfg.train, {**over, "model": name})
    prep = prepare(cfg.paths.rct_dir(root), tc.split, data_seed, tc.n_bins, target=tc.target)  # pandas as-of join
    truth = relative_truth(prep.true_mu(cfg.paths.rct_dir(root), "valid"))  # (n, K, R)
    seed_everything(seed)
    # One network: the criterion is traced over one network's epochs (train.ensemble fits members apart).
    net = build_net(tc.model, net_config(tc.model, dims_of(prep), {**model_hp(prep.manifest.responses, tc), "ensemble": 1}))
    valid = prep.tensors("valid")
    qini = validation_scorer(prep)
    y_valid, arm_valid = valid.y.numpy(), valid.arm.numpy()
    arm_rows = [arm_valid == k for k in range(1, truth.shape[1] + 1)]  # each treatment's validation rows
    cells = [(k, r) for k in range(truth.shape[1]) for r in range(truth.shape[2])]
    rows: list[dict] = []
    row_err: list[list[np.ndarray]] = []  # per epoch, per treatment k: each arm-k row's squared error of ŷ_k

    def score(delta: np.ndarray) -> float:
        """Today's criterion (returned, so training runs as in the stage) plus the others, recorded."""
        with torch.no_grad():
            loss = float(net.loss(valid.x, valid.arm, valid.y)[0])
            # each arm's treated rows alone: the loss a per-treatment stopping rule would watch
            arm_loss = [float(net.loss(valid.x[m], valid.arm[m], valid.y[m])[1]["mse"])
                        for m in map(torch.from_numpy, arm_rows)]
            mu = net.predict_mu(valid.x).numpy()  # (n, K+1, R), the training target's scale
        row_err.append([((mu[m, k] - y_valid[m]) ** 2).sum(1) for k, m in enumerate(arm_rows, start=1)])
        q = qini(delta)
        cell_rho = [float(rank_correlation(delta[:, k, r], truth[:, k, r])) for k, r in cells]
        rows.append({
            "seed": seed, "epoch": len(rows), "val_qini": q, "val_loss": loss, "val_loss_arm": arm_loss,
            "true_rho_cells": cell_rho,  # per treatment × response cell, treatment-major (as every *_cells)
            "to_loss_cells": [transformed_outcome_loss(y_valid, arm_valid, mu, k + 1, r) for k, r in cells],
            # Pearson correlation of the prediction with the pseudo-outcome Z: cov(τ̂, Z) = cov(τ̂, τ)
            # in an RCT, so this is corr(τ̂, τ) times a constant of the data: scale-free, unlike the loss.
            "to_corr_cells": [pseudo_outcome_corr(y_valid, arm_valid, mu[:, k + 1, r] - mu[:, 0, r], k + 1, r)
                              for k, r in cells],
            "to_corr_rel_cells": [pseudo_outcome_corr(y_valid, arm_valid, delta[:, k, r], k + 1, r) for k, r in cells],
            # the relative effect's pseudo-outcome Z / ŷ_0(x) (E ≈ τ/μ_0 where ŷ_0 ≈ μ_0) against δ̂
            "to_corr_relz_cells": [pseudo_outcome_corr(y_valid, arm_valid, delta[:, k, r], k + 1, r, mu[:, 0, r])
                                   for k, r in cells],
            "true_rho": float(np.mean(cell_rho)),
            "true_pehe": float(np.mean([pehe(delta[:, k, r], truth[:, k, r]) for k, r in cells])),
        })
        return q

    run = TrainConfig(epochs=epochs, batch_size=tc.batch_size, lr=tc.lr, weight_decay=tc.weight_decay,
                      offset_weight_decay=tc.offset_weight_decay, offset_wide_lr=tc.offset_wide_lr,
                      offset_wide_step=tc.offset_wide_step,
                      min_epochs=epochs, early_stopping_patience=epochs, plateau_factor=tc.plateau_factor,
                      plateau_patience=tc.plateau_patience, seed=seed, device="cpu")
    fit(net, prep.tensors("train"), valid, run, score, target=prep.target)
    # Paired evidence for reading treatment k at its own epoch: the mean per-row difference of arm k's
    # squared errors between every epoch and every other, in standard errors (z[k][e][f] < 0: e fits
    # arm k better than f). Kept per network (the rows are too many to store).
    for r in rows:
        r["arm_paired_z"] = []
    for k in range(truth.shape[1]):
        errs = np.stack([e[k] for e in row_err])  # (epochs, n_k)
        for e, r in enumerate(rows):
            d = errs[e][None, :] - errs  # (epochs, n_k)
            se = d.std(axis=1, ddof=1) / np.sqrt(d.shape[1])
            r["arm_paired_z"].append([float(m / s_) if s_ > 0 else 0.0 for m, s_ in zip(d.mean(axis=1), se)])
    return rows


def pseudo_outcome(y: np.ndarray, arm: np.ndarray, k: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The control and arm-k rows, and their Z = y/p_k (arm k) or −y/(1 − p_k) (control): E[Z | x] = τ(x)."""
    rows = (arm == 0) | (arm == k)
    treated = arm[rows] == k
    p = treated.mean()
    return rows, np.where(treated, y[rows, r] / p, -y[rows, r] / (1 - p))


def pseudo_outcome_corr(y: np.ndarray, arm: np.ndarray, pred: np.ndarray, k: int, r: int,
                        scale: np.ndarray | None = None) -> float:
    """Pearson corr(prediction, Z) over the control and arm-k rows (Z / scale when a scale is given)."""
    rows, z = pseudo_outcome(y, arm, k, r)
    if scale is not None:
        z = z / scale[rows]
    return float(np.corrcoef(pred[rows], z)[0, 1])


def transformed_outcome_loss(y: np.ndarray, arm: np.ndarray, mu: np.ndarray, k: int, r: int) -> float:
    """Mean (Z − τ̂)² over the control and arm-k rows, τ̂ = ŷ_k − ŷ_0: PEHE on the absolute effect
    plus a term the model does not move, so two checkpoints' difference is a paired PEHE comparison."""
    rows, z = pseudo_outcome(y, arm, k, r)
    return float(np.mean((z - (mu[rows, k, r] - mu[rows, 0, r])) ** 2))


def _layout(trace: list[dict]) -> tuple[int, int]:
    """(treatments, responses) of a trace's rows: its cells are treatment-major."""
    n_arms = len(trace[0]["val_loss_arm"])
    return n_arms, len(trace[0]["true_rho_cells"]) // n_arms


def default_pick(trace: list[dict], min_epoch: int = 11) -> dict:
    """The row the default would keep: lowest validation loss from ``min_epoch`` (0-based; the
    default's ``min_epochs: 12``) on, or the last epoch of a shorter trace (as ``fit``); one network's trace."""
    return min([r for r in trace if r["epoch"] >= min_epoch] or trace[-1:], key=lambda r: r["val_loss"])


def per_arm_pick(trace: list[dict]) -> float:
    """Mean true ρ when each treatment's cells are read at the epoch where that arm's own
    validation loss is lowest (what per-treatment stopping would keep); one network's trace."""
    n_arms, n_resp = _layout(trace)
    cells = []
    for k in range(n_arms):
        best = min(trace, key=lambda r: r["val_loss_arm"][k])
        cells += best["true_rho_cells"][k * n_resp:(k + 1) * n_resp]
    return float(np.mean(cells))


# Per-cell criteria: (row key, +1 when higher is better).
CELL_CRITERIA = {"to_loss": ("to_loss_cells", -1), "corr(τ̂, Z)": ("to_corr_cells", 1),
                 "corr(δ̂, Z)": ("to_corr_rel_cells", 1), "corr(δ̂, Z/ŷ0)": ("to_corr_relz_cells", 1)}


def per_cell_report(rows: list[dict], seeds: list[int]) -> dict:
    """Per criterion: within-network Spearman with each cell's true ρ (mean over networks), and the
    mean true ρ when each cell is read at the criterion's best epoch (all epochs; from epoch 3)."""
    n_cells = len(rows[0]["true_rho_cells"])
    traces = [[r for r in rows if r["seed"] == s] for s in seeds]

    def pick(trace: list[dict], key: str, sign: int, c: int) -> float:
        return max(trace, key=lambda r: sign * r[key][c])["true_rho_cells"][c]

    out = {}
    for name, (key, sign) in {**CELL_CRITERIA, "true ρ (oracle)": ("true_rho_cells", 1)}.items():
        if key not in rows[0]:
            continue
        corr = [float(np.mean([_spearman([sign * r[key][c] for r in t], [r["true_rho_cells"][c] for r in t])
                               for t in traces])) for c in range(n_cells)]
        every = [float(np.mean([pick(t, key, sign, c) for c in range(n_cells)])) for t in traces]
        late = [float(np.mean([pick([r for r in t if r["epoch"] >= 3] or t, key, sign, c) for c in range(n_cells)]))
                for t in traces]
        out[name] = {"spearman_cells": corr, "pick_all": every, "pick_from_3": late}
        print(f"  {name:16s} Spearman per cell " + " ".join(f"{v:+.2f}" for v in corr)
              + f" | per-cell pick {np.mean(every):.3f} ± {np.std(every, ddof=1):.3f}, from epoch 3 "
              f"{np.mean(late):.3f} ± {np.std(late, ddof=1):.3f}")
    return out


def paired_arm_rule(trace: list[dict], z_max: float, min_epoch: int = 11) -> tuple[float, list[float]]:
    """Mean true ρ of one network when treatment k is read at the epoch that fits arm k's rows best
    against the default's pick (lowest validation loss from ``min_epoch``), but only where the paired
    per-row difference is below ``z_max`` standard errors; and each treatment's best z."""
    n_arms, n_resp = _layout(trace)
    m = default_pick(trace, min_epoch)["epoch"]
    cells, best_z = list(trace[m]["true_rho_cells"]), []
    for k in range(n_arms):
        z = [r["arm_paired_z"][k][m] for r in trace]
        e = int(np.argmin(z))
        best_z.append(z[e])
        if z[e] < z_max:
            cells[k * n_resp:(k + 1) * n_resp] = trace[e]["true_rho_cells"][k * n_resp:(k + 1) * n_resp]
    return float(np.mean(cells)), best_z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--model", default="hum", help="the model traced, or a variant of it: hum+offset_weight_decay=0.0001")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="one data set for every seed (then the seeds vary only the networks' initial weights)")
    ap.add_argument("--out", type=Path, default=Path("reports/selection_criteria.json"))
    ap.add_argument("--from-json", type=Path, default=None,
                    help="no training: print the analysis of the traces in a file this script wrote")
    args = ap.parse_args()
    if args.from_json is not None:
        rows = json.loads(args.from_json.read_text())["rows"]
        args.seeds = max(r["seed"] for r in rows)
        args.epochs = max(r["epoch"] for r in rows) + 1
        analyze(rows, args, time.perf_counter(), write=False)
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            got = run_seed(seed, args.users, args.epochs, Path(tmp), args.data_seed, args.model)
            rows += got
            best = max(got, key=lambda r: r["true_rho"])
            print(f"seed {seed}: true ρ by epoch " + " ".join(f"{r['true_rho']:.2f}" for r in got)
                  + f" (best {best['true_rho']:.3f} at epoch {best['epoch']}; {time.perf_counter() - t0:.0f} s)",
                  flush=True)
            n_arms, n_resp = _layout(got)
            for c in range(n_arms * n_resp):
                k, r = divmod(c, n_resp)
                print(f"  ρ cell t{k + 1}/r{r}: " + " ".join(f"{x['true_rho_cells'][c]:.2f}" for x in got)
                      + " | arm loss " + " ".join(f"{x['val_loss_arm'][k]:.4f}" for x in got)
                      + " | TO loss " + " ".join(f"{x['to_loss_cells'][c]:.4f}" for x in got), flush=True)
    analyze(rows, args, t0)


def analyze(rows: list[dict], args: argparse.Namespace, t0: float, write: bool = True) -> None:
    """Print how each criterion tracks the true ρ over the traces (and write them with the analysis)."""
    rho = np.array([r["true_rho"] for r in rows])
    print(f"\n{args.seeds} seeds × {args.epochs} epochs, {args.users:,} users, model {args.model}")
    print("Spearman correlation with true ρ (pooled over epochs and seeds | mean within a seed):")
    picks = {}
    for crit, sign in (("val_qini", 1), ("val_loss", -1), ("true_pehe", -1)):
        v = sign * np.array([r[crit] for r in rows])
        within = [_spearman([sign * r[crit] for r in rows if r["seed"] == s],
                            [r["true_rho"] for r in rows if r["seed"] == s]) for s in range(1, args.seeds + 1)]
        print(f"  {crit:9s} {_spearman(v, rho):+.3f} | {np.mean(within):+.3f}")
        picks[crit] = [max((r for r in rows if r["seed"] == s), key=lambda r: sign * r[crit])["true_rho"]
                       for s in range(1, args.seeds + 1)]
    print("true ρ at the epoch each criterion picks (mean ± std over seeds):")
    for crit, v in picks.items():
        print(f"  {crit:9s} {np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}")
    last = [max((r for r in rows if r["seed"] == s), key=lambda r: r["epoch"])["true_rho"]
            for s in range(1, args.seeds + 1)]
    print(f"  last epoch {np.mean(last):.3f} ± {np.std(last, ddof=1):.3f}")
    per_arm = [per_arm_pick([r for r in rows if r["seed"] == s]) for s in range(1, args.seeds + 1)]
    print(f"  per_arm_loss (each treatment's cells at its own arm's lowest validation loss) {np.mean(per_arm):.3f} ± "
          f"{np.std(per_arm, ddof=1):.3f}")
    picks["per_arm_loss"] = per_arm
    kept = [default_pick([r for r in rows if r["seed"] == s])["true_rho"] for s in range(1, args.seeds + 1)]
    print(f"  val_loss from epoch 12 (the default's min_epochs) {np.mean(kept):.3f} ± "
          f"{np.std(kept, ddof=1):.3f}; per_arm_loss − it: {np.mean(np.subtract(per_arm, kept)):+.3f}"
          f" ± {np.std(np.subtract(per_arm, kept), ddof=1):.3f} "
          f"({int((np.array(per_arm) > kept).sum())}/{args.seeds} networks better)")
    picks["val_loss_from_12"] = kept
    if "to_loss_cells" in rows[0]:
        print("Per cell (cells treatment-major), each network's criterion over its epochs:")
        picks["per_cell"] = per_cell_report(rows, list(range(1, args.seeds + 1)))
    if "arm_paired_z" in rows[0]:
        traces = [[r for r in rows if r["seed"] == s] for s in range(1, args.seeds + 1)]
        base = [paired_arm_rule(t, -np.inf)[0] for t in traces]
        print("Each treatment at its best-fitting epoch only where its arm's rows say so (paired per-row z "
              "against the default's pick):")
        for z_max in (0.0, -1.0, -2.0, -3.0):
            got = [paired_arm_rule(t, z_max) for t in traces]
            gain = np.subtract([g for g, _ in got], base)
            print(f"  z < {z_max:+.0f}: {np.mean(gain):+.3f} ± {np.std(gain, ddof=1):.3f} mean ρ "
                  f"({int((gain > 0).sum())}/{len(gain)} better); best z per network and treatment "
                  + " ".join("/".join(f"{v:.1f}" for v in z) for _, z in got))
    if not write:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "picks": picks}, indent=1) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
