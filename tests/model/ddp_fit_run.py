"""Fit a small HUM on synthetic data with ``models.train.fit``; write what a comparison needs.

    python tests/model/ddp_fit_run.py OUT.npz [--processes 2]
    torchrun --standalone --nproc_per_node 2 tests/model/ddp_fit_run.py OUT.npz --processes 2

Run by ``tests/model/test_ddp.py`` once as one process and once under torchrun: rank 0
saves the per-epoch history, the chosen epoch, the validation predictions and the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, when run as a script

from models.distributed import is_main, process_group  # noqa: E402
from models.registry import Dims, build_net, net_config  # noqa: E402
from models.train import TensorData, TrainConfig, fit, predict_mu, seed_everything  # noqa: E402

FIELDS, PER_FIELD, K, R = 6, 8, 2, 2
HP = {"emb_dim": 8, "dropout": 0.0, "n_experts": 2, "expert_hidden": [32, 16], "tower_hidden": [16],
      "kl_weight": 1.0, "pooling": "scale", "attention": "field", "treated_head": "residual",
      "treated_input": "control", "detach_control": False, "control_grad": 1.0, "offset_mean": 0.0, "experts": "branch", "offset_init": "uniform", "offset_tower": "response",
      "balanced": True, "control": "own", "ensemble": 1}


def synthetic(n: int, seed: int) -> TensorData:
    """Rows whose outcome depends on two fields and, through one of them, on the arm."""
    g = torch.Generator().manual_seed(seed)
    bucket = torch.randint(0, PER_FIELD, (n, FIELDS), generator=g)
    arm = torch.multinomial(torch.tensor([0.4, 0.3, 0.3]), n, replacement=True, generator=g)
    base = 1 + 0.1 * bucket[:, :1].float() + 0.05 * bucket[:, 1:2].float()
    effect = 1 + 0.05 * (arm.view(-1, 1) * bucket[:, 2:3]).float()
    y = (base * effect).expand(n, R) * torch.exp(0.3 * torch.randn(n, R, generator=g))
    return TensorData(bucket + PER_FIELD * torch.arange(FIELDS), arm, (y / y.mean(0)).float())


def count_training_rows(net: torch.nn.Module) -> list[int]:
    """Count the rows ``net.loss`` trains on in this process (validation calls it in eval mode)."""
    seen, loss = [0], net.loss

    def counted(x, arm, y):
        seen[0] += x.shape[0] if net.training else 0
        return loss(x, arm, y)

    net.loss = counted
    return seen


def gathered(value: int) -> list[int]:
    """Every rank's ``value``, by rank."""
    if not dist.is_initialized():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=255)  # odd: the ranks' shares differ by a row
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    with process_group(args.processes):
        train, valid = synthetic(args.rows, 1), synthetic(args.rows // 4, 2)
        seed_everything(3)
        dims = Dims(FIELDS, FIELDS * PER_FIELD, K, R, (PER_FIELD,) * FIELDS)
        net = build_net("hum", net_config("hum", dims, HP))
        seen = count_training_rows(net)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, min_epochs=2, early_stopping_patience=2,
                          plateau_patience=1, seed=3, device="cpu")
        res = fit(net, train, valid, cfg, score_fn=lambda delta: float(delta.mean()))
        rows_seen = gathered(seen[0])
        if is_main():
            state = {f"w:{k}": v.numpy() for k, v in net.state_dict().items()}
            np.savez(args.out, mu=predict_mu(net, valid.x), **state)
            report = {"best_epoch": res.best_epoch, "history": res.history, "rows_seen": rows_seen,
                      "threads": torch.get_num_threads()}
            args.out.with_suffix(".json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
