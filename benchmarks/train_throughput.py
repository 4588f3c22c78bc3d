"""HUM training throughput: samples/s of one epoch on N rows, vs a plain MLP on the same tensors.

    python benchmarks/train_throughput.py --rows 1000000
    python benchmarks/train_throughput.py --rows 1000000 --model hum_paper
    python benchmarks/train_throughput.py --rows 1000000 --repeats 5     # every ratio and their median
    python benchmarks/train_throughput.py --rows 1000000 --processes 2   # DDP: restarts itself under torchrun

The model is built as the train stage builds it (``--model``, default ``hum``: the
configured HUM variant of params.yaml's ``train`` section).

Synthetic tensors shaped like the default simulator (18 fields, K=2, R=2, 60 % treated).
The MLP has HUM's expert width (field embeddings -> 128 -> 64 -> R), trained with the
same batch size and optimizer: the ratio shows what HUM's branches, gates and the
treated/control passes cost. The two models' steps are interleaved batch by batch, so the
ratio holds on a machine whose speed drifts. Prints samples/s, epoch seconds and peak memory.

Both train through the trainer's step (``models.train.batch_step``). ``--processes N`` > 1
runs N data-parallel ranks (torch DDP over gloo, as ``train.processes``): each takes 1/N of
every batch, with cores // N torch threads; samples/s counts the rows of the whole group.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from fulcrum.config import load_config
from models.base import UpliftNet
from models.distributed import is_main, process_group, rank_and_world
from models.registry import Dims, build_net, net_config
from models.train import TensorData, batch_step, pick_device
from pipelines.train import model_hp


class PlainMLP(UpliftNet):
    def __init__(self, n_fields: int, vocab: int, r: int, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.net = nn.Sequential(nn.Linear(n_fields * d, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, r))

    def loss(self, x, arm, y):
        mse = ((self.net(self.emb(x).flatten(1)) - y) ** 2).sum(1).mean()
        return mse, {}


def epoch_seconds(models: list[UpliftNet], data: TensorData, batch: int, warm_rows: int = 20_000) -> list[float]:
    """Seconds of one epoch of the trainer's steps for each model, after a warm-up on ``warm_rows`` rows.

    The models' steps are interleaved batch by batch (the order alternating), so a machine whose
    speed drifts during the run slows every model alike: the time ratio holds where two epochs
    timed one after the other would not (measured: ±30 % between runs on a shared 2-core machine).
    """
    cuda = data.x.device.type == "cuda"
    steps = [batch_step(m, data, torch.optim.Adam(m.parameters(), lr=1e-3)) for m in models]
    for step in steps:
        for i in range(0, min(warm_rows, len(data)), batch):
            step(torch.arange(i, min(i + batch, warm_rows, len(data)), device=data.x.device))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(1)).to(data.x.device)  # same on every rank
    if rank_and_world()[1] > 1:
        dist.barrier()  # the ranks start together
    seconds = [0.0] * len(models)
    for n_batch, i in enumerate(range(0, len(data), batch)):
        idx = perm[i : i + batch]
        order = range(len(models)) if n_batch % 2 == 0 else reversed(range(len(models)))
        for j in order:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[j](idx)
            if cuda:
                torch.cuda.synchronize()
            seconds[j] += time.perf_counter() - t0
    return seconds


def relaunch_under_torchrun(processes: int) -> int:
    """Run this benchmark again as ``processes`` torchrun ranks (torchrun beside this interpreter); its exit code."""
    runner = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [runner, "--standalone", "--nproc_per_node", str(processes), *sys.argv]
    return subprocess.run(cmd, check=False).returncode


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
    ap.add_argument("--repeats", type=int, default=1,
                    help="time this many epochs of each model (each pair interleaved) and print every ratio and their "
                    "median: the ratio varies run to run on a shared machine (default 1)")
    ap.add_argument("--processes", type=int, default=1,
                    help="data-parallel processes (torch DDP over gloo, CPU; restarts itself under torchrun): each "
                    "trains on 1/N of every batch with cores // N threads (default 1: no DDP)")
    args = ap.parse_args()
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(relaunch_under_torchrun(args.processes))
    with process_group(args.processes):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Time one epoch of the model and of the MLP on the same synthetic rows; rank 0 prints."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = pick_device("cpu" if args.processes > 1 else args.device)
    torch.manual_seed(0)
    n, f, per_field, k, r = args.rows, 18, 22, 2, 2
    vocab = f * per_field  # field j owns ids [22j, 22j + 22), as the encoder lays them out
    x = (torch.randint(0, per_field, (n, f)) + per_field * torch.arange(f)).to(dev)
    arm = torch.multinomial(torch.tensor([0.4, 0.3, 0.3]), n, replacement=True).to(dev)
    y = torch.rand(n, r, device=dev) + 0.5
    cfg = load_config(args.params)
    # positive_part names the default simulator's responses; the synthetic targets have no zeros, so it costs
    # what it costs there (the mask) without leaving rows out.
    hp = {**model_hp(list(cfg.source.responses), cfg.train), "ensemble": args.members}
    hum = build_net(args.model, net_config(args.model, Dims(f, vocab, k, r, (per_field,) * f), hp)).to(dev)
    mlp = PlainMLP(f, vocab, r).to(dev)
    data = TensorData(x, arm, y)
    # One epoch pair per repeat (the models keep training: later epochs time the same steps on other weights).
    times = [epoch_seconds([hum, mlp], data, args.batch_size) for _ in range(max(1, args.repeats))]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    if not is_main():
        return
    print(f"device={dev} processes={rank_and_world()[1]} threads={torch.get_num_threads()} (per process) "
          f"rows={n:,} batch={args.batch_size}")
    arch = {key: hp[key] for key in ("pooling", "attention", "treated_head", "balanced", "control")}
    t_hum, t_mlp = (statistics.median(t[i] for t in times) for i in (0, 1))
    print(f"{args.model} × {args.members} {arch if args.model.startswith('hum') else ''}: epoch {t_hum:.1f} s, {n / t_hum:,.0f} samples/s")
    print(f"plain MLP: epoch {t_mlp:.1f} s, {n / t_mlp:,.0f} samples/s")
    ratios = [a / b for a, b in times]
    if len(ratios) > 1:
        print(f"{args.model} / mlp time ratio per repeat: {' / '.join(f'{q:.2f}' for q in ratios)}")
    print(f"{args.model} / mlp time ratio: {statistics.median(ratios):.2f}" + (" (median)" if len(ratios) > 1 else ""))
    print(f"peak RSS: {peak:.0f} MiB (rank 0)" + (f", peak CUDA: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == "cuda" else ""))


if __name__ == "__main__":
    main()
