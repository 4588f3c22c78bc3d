"""HUM training throughput: samples/s of one epoch on N rows, vs a plain MLP on the same tensors.

    python benchmarks/train_throughput.py --rows 1000000
    python benchmarks/train_throughput.py --rows 1000000 --model hum_paper

The model is built as the train stage builds it (``--model``, default ``hum``: the
configured HUM variant of params.yaml's ``train`` section).

Synthetic tensors shaped like the default simulator (18 fields, K=2, R=2, 60 % treated).
The MLP has HUM's expert width (field embeddings -> 128 -> 64 -> R), trained with the
same batch size and optimizer: the ratio shows what HUM's branches, gates and the
treated/control passes cost. Prints samples/s, epoch seconds and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

from fulcrum.config import load_config
from models.base import UpliftNet
from models.registry import Dims, build_net, net_config
from models.train import pick_device


class PlainMLP(UpliftNet):
    def __init__(self, n_fields: int, vocab: int, r: int, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.net = nn.Sequential(nn.Linear(n_fields * d, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, r))

    def loss(self, x, arm, y):
        mse = ((self.net(self.emb(x).flatten(1)) - y) ** 2).sum(1).mean()
        return mse, {}


def epoch_seconds(model: UpliftNet, x, arm, y, batch: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(x), device=x.device)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        idx = perm[i : i + batch]
        loss, _ = model.loss(x[idx], arm[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--model", default="hum", help="a neural model name (models/registry.py)")
    ap.add_argument("--params", default="params.yaml", help="its hyper-parameters: this file's train section")
    ap.add_argument("--members", type=int, default=1,
                    help="networks in the model, trained here as one module (train.ensemble fits that many, so its "
                    "training costs about that many epochs of one network; default 1: one network against one MLP)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    torch.manual_seed(0)
    n, f, per_field, k, r = args.rows, 18, 22, 2, 2
    vocab = f * per_field  # field j owns ids [22j, 22j + 22), as the encoder lays them out
    x = (torch.randint(0, per_field, (n, f)) + per_field * torch.arange(f)).to(dev)
    arm = torch.multinomial(torch.tensor([0.4, 0.3, 0.3]), n, replacement=True).to(dev)
    y = torch.rand(n, r, device=dev) + 0.5
    hp = {**load_config(args.params).train.model_dump(), "ensemble": args.members}
    hum = build_net(args.model, net_config(args.model, Dims(f, vocab, k, r, (per_field,) * f), hp)).to(dev)
    mlp = PlainMLP(f, vocab, r).to(dev)
    epoch_seconds(hum, x[:20_000], arm[:20_000], y[:20_000], args.batch_size)  # warm-up
    t_hum = epoch_seconds(hum, x, arm, y, args.batch_size)
    t_mlp = epoch_seconds(mlp, x, arm, y, args.batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"device={dev} threads={torch.get_num_threads()} rows={n:,} batch={args.batch_size}")
    arch = {key: hp[key] for key in ("pooling", "attention", "treated_head", "balanced", "control")}
    print(f"{args.model} × {args.members} {arch if args.model.startswith('hum') else ''}: epoch {t_hum:.1f} s, {n / t_hum:,.0f} samples/s")
    print(f"plain MLP: epoch {t_mlp:.1f} s, {n / t_mlp:,.0f} samples/s")
    print(f"{args.model} / mlp time ratio: {t_hum / t_mlp:.2f}")
    print(f"peak RSS: {peak:.0f} MiB" + (f", peak CUDA: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == "cuda" else ""))


if __name__ == "__main__":
    main()
