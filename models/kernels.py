"""CPU loops (numba) for the bag sum HUM's training runs most: one pass where torch takes several.

``bag_sum_relu(ids, table, n_relu)`` is ``embedding_bag(ids, table, mode="sum")`` split into a
ReLU'd first part (the experts' first layers) and the rest (the gates' logits). Its backward
is one pass over the rows, adding each row's gradient (masked by the ReLU) into the f table
rows it read; torch's ops for the same take a pass per bag position (``index_add_``), a
ReLU mask pass and a concatenation of the two parts' gradients, each over the whole (B, W)
gradient (measured: 3-4× the time of this loop on a 2-core machine). The numbers are the same
bit for bit: every table row receives its rows' gradients in row order, as ``index_add_`` adds
them, and the forward sums each row's bag in bag order, as ``embedding_bag`` does (tested).

numba compiles the loops on first use (about a second per dtype; cached on disk) and is
imported only then, so importing this module costs nothing.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import torch


@cache
def _loops() -> SimpleNamespace:
    """The compiled loops (numba imported and the functions defined on the first call)."""
    import numba
    import numpy as np
    from numba import njit, prange

    def forward(ids, table, hidden, rest, n_blocks):  # (B, f), (V, W) -> (G, B, h), (B, W - G·h)
        n, f = ids.shape
        groups, width = hidden.shape[0], hidden.shape[2]
        n_relu, n_rest = groups * width, rest.shape[1]
        step = (n + n_blocks - 1) // n_blocks
        for t in prange(n_blocks):
            acc = np.empty(n_relu + n_rest, dtype=table.dtype)  # the row's sum
            for b in range(t * step, min(n, (t + 1) * step)):
                first = table[ids[b, 0]]
                for c in range(n_relu + n_rest):
                    acc[c] = first[c]
                for j in range(1, f):
                    row = table[ids[b, j]]
                    for c in range(n_relu + n_rest):
                        acc[c] += row[c]
                for m in range(groups):
                    h = hidden[m, b]
                    for c in range(width):
                        h[c] = max(acc[m * width + c], 0.0)
                o = rest[b]
                for c in range(n_rest):
                    o[c] = acc[n_relu + c]

    def backward(ids, hidden, grad_hidden, grad_rest, table_grad, n_blocks):
        # Block t owns table rows [t·V/T, (t+1)·V/T): every block reads every row's gradient once
        # and adds it into the table rows it owns, so no two threads write one row.
        n, f = ids.shape
        v = table_grad.shape[0]
        groups, width = hidden.shape[0], hidden.shape[2]
        n_relu, n_rest = groups * width, grad_rest.shape[1]
        for t in prange(n_blocks):
            lo, hi = t * v // n_blocks, (t + 1) * v // n_blocks
            g = np.empty(n_relu + n_rest, dtype=table_grad.dtype)  # the row's gradient, ReLU-masked
            for b in range(n):
                for m in range(groups):
                    gh, h = grad_hidden[m, b], hidden[m, b]
                    for c in range(width):
                        g[m * width + c] = gh[c] if h[c] > 0 else 0.0
                gr = grad_rest[b]
                for c in range(n_rest):
                    g[n_relu + c] = gr[c]
                for j in range(f):
                    r = ids[b, j]
                    if r < lo or r >= hi:
                        continue
                    row = table_grad[r]
                    for c in range(n_relu + n_rest):  # one plain loop: vectorized (a masked add in it is not)
                        row[c] += g[c]

    # Starting numba's OpenMP threads sets the process's OpenMP thread count to numba's (the cores),
    # which is torch's count too: a data-parallel rank's share of the cores would be lost. Start
    # them now and give torch its count back.
    threads = torch.get_num_threads()
    numba.get_num_threads()
    torch.set_num_threads(threads)
    return SimpleNamespace(numba=numba, forward=njit(parallel=True, cache=True)(forward),
                           backward=njit(parallel=True, cache=True)(backward))


def _blocks(loops: SimpleNamespace) -> int:
    """Threads for a loop: torch's own count (a data-parallel rank's share of the cores), at most numba's."""
    n = max(1, min(torch.get_num_threads(), loops.numba.config.NUMBA_NUM_THREADS))
    loops.numba.set_num_threads(n)
    return n


class _BagSumReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, table: torch.Tensor, n_relu: int, groups: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        loops = _loops()
        ids, table = ids.contiguous(), table.detach().contiguous()
        hidden = table.new_empty(groups, ids.shape[0], n_relu // groups)  # (G, B, n_relu / G)
        rest = table.new_empty(ids.shape[0], table.shape[1] - n_relu)  # (B, W - n_relu)
        n = _blocks(loops)
        loops.forward(ids.numpy(), table.numpy(), hidden.numpy(), rest.numpy(), n)
        ctx.save_for_backward(ids, hidden)
        ctx.table_shape = table.shape
        return hidden, rest

    @staticmethod
    def backward(ctx, grad_hidden: torch.Tensor | None, grad_rest: torch.Tensor | None
                 ) -> tuple[None, torch.Tensor, None, None]:
        ids, hidden = ctx.saved_tensors
        v, w = ctx.table_shape
        # An output the loss did not use has no gradient: zeros stand in.
        grad_hidden = torch.zeros_like(hidden) if grad_hidden is None else grad_hidden.contiguous()
        grad_rest = hidden.new_zeros(ids.shape[0], w - hidden.shape[0] * hidden.shape[2]) if grad_rest is None \
            else grad_rest.contiguous()
        table_grad = hidden.new_zeros(v, w)
        loops = _loops()
        n = _blocks(loops)
        loops.backward(ids.numpy(), hidden.numpy(), grad_hidden.numpy(), grad_rest.numpy(), table_grad.numpy(), n)
        return None, table_grad, None, None


def bag_sum_relu(ids: torch.Tensor, table: torch.Tensor, n_relu: int, groups: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's sum of its table rows, split: ids (B, f), table (V, W) -> relu(the first n_relu
    columns) as G groups of n_relu / G columns, group-major (G, B, n_relu / G), and the other
    columns (B, W - n_relu). Group-major suits G experts' next layers: one batched matmul, no copy.

    On the CPU the loops above; on another device torch's ``embedding_bag`` and its backward.
    """
    if not 0 < n_relu <= table.shape[1] or n_relu % groups:
        raise ValueError(f"n_relu={n_relu} must be in [1, {table.shape[1]}] (the table's width) "
                         f"and a multiple of groups={groups}")
    if ids.device.type != "cpu" or table.device.type != "cpu":
        pre = torch.nn.functional.embedding_bag(ids, table, mode="sum")
        hidden = torch.relu(pre[:, :n_relu]).view(ids.shape[0], groups, -1).transpose(0, 1).contiguous()
        return hidden, pre[:, n_relu:]
    if ids.dtype != torch.int64 or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0])):
        # The loops do not check their reads and writes: an id outside the table must not reach them.
        lo, hi = (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)
        raise IndexError(f"ids must be int64 in [0, {table.shape[0]}): got {ids.dtype} in [{lo}, {hi}]")
    return _BagSumReLU.apply(ids, table, n_relu, groups)
