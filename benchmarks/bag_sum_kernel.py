"""The bag sum of HUM's training step, torch ops against the numba loops (models/kernels.py).

    python benchmarks/bag_sum_kernel.py                  # the default simulator's shapes
    python benchmarks/bag_sum_kernel.py --rows 4096 --fields 18 --per-field 22 --width 390 --relu 384

One forward and backward of relu(Σ_j table[ids[:, j]]) split into the experts' first layers (ReLU'd,
``--relu`` columns, ``--groups`` experts) and the gates' logits, as the scale-pooling HUM computes it
per branch and step. "torch" is what the training step ran before the loops: ``embedding_bag``, a
split, a ReLU, and a backward of one ``index_add_`` per bag position. Prints milliseconds (median
over ``--repeats``) and whether both give the same numbers bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from models.kernels import bag_sum_relu


class _PositionwiseBagSum(torch.autograd.Function):
    """embedding_bag (sum) with a backward of one index_add_ per bag position (the previous training path)."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]
        return nn.functional.embedding_bag(ids, table, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        (ids,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, grad.shape[1])
        for j in range(ids.shape[1]):
            out.index_add_(0, ids[:, j], grad)
        return None, out


def torch_path(ids: torch.Tensor, table: torch.Tensor, n_relu: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    pre = _PositionwiseBagSum.apply(ids, table)
    first, rest = pre.split([n_relu, pre.shape[1] - n_relu], dim=1)
    return torch.relu(first).view(len(ids), groups, -1).transpose(0, 1), rest


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (numba compiles on first use)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096, help="batch rows (default 4096, the train batch)")
    ap.add_argument("--fields", type=int, default=18)
    ap.add_argument("--per-field", type=int, default=22, help="ids per field (field j reads only its own ids)")
    ap.add_argument("--width", type=int, default=390, help="table width: experts' first layers + gates (3·128 + 2·3)")
    ap.add_argument("--relu", type=int, default=384, help="columns that go through the ReLU")
    ap.add_argument("--groups", type=int, default=3, help="experts the ReLU'd columns split into")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.per_field, (args.rows, args.fields), generator=g) + args.per_field * torch.arange(args.fields)
    table = torch.randn(args.fields * args.per_field, args.width, generator=g)
    w_hidden = torch.randn(args.groups, args.rows, args.relu // args.groups, generator=g)
    w_rest = torch.randn(args.rows, args.width - args.relu, generator=g)
    results = {}
    for name, path in (("torch", torch_path), ("numba", bag_sum_relu)):
        leaf = table.clone().requires_grad_()

        def step(path=path, leaf=leaf):
            hidden, rest = path(ids, leaf, args.relu, args.groups)
            return torch.autograd.grad((hidden * w_hidden).sum() + (rest * w_rest).sum(), leaf)[0], hidden, rest

        results[name] = step()
        print(f"{name}: forward + backward {timed(step, args.repeats):.2f} ms "
              f"(rows={args.rows:,} fields={args.fields} width={args.width}, threads={torch.get_num_threads()})")
    same = all(torch.equal(a, b) for a, b in zip(results["torch"], results["numba"]))
    print(f"same numbers bit for bit: {same}")


if __name__ == "__main__":
    main()
