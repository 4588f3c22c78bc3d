"""Data-parallel training across the CPU processes ``torchrun`` starts (torch DDP over gloo).

Every process (rank) runs the whole train stage on the same data. ``models.train.fit`` draws
the same batch order on every rank (same seed), gives each rank a disjoint share of every
batch (``share``) and lets DistributedDataParallel average the gradients, so the optimizer
sees the batch one process would see. Validation runs in full on every rank; the figures are
taken from rank 0 (``from_main_floats``), so stopping decisions cannot differ. Only rank 0
writes files (``is_main``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
log = logging.getLogger("fulcrum")


def launched_world() -> int:
    """Processes the launcher started (``torchrun`` exports WORLD_SIZE to each); 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes) of the running group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank_and_world()[0] == 0


def threads_per_process(world: int) -> int:
    """CPU threads per rank: the cores this process may use, split evenly (no oversubscription)."""
    return max(1, len(os.sched_getaffinity(0)) // world)


@contextlib.contextmanager
def process_group(world: int) -> Iterator[None]:
    """Join the gloo group of the ``world`` processes torchrun started, for the block; nothing when 1.

    Sets each rank's torch threads to its share of the cores, and quiets the other ranks' info
    logs (rank 0 reports for the group). A group that is already running is used as it is.
    """
    if world == 1 or dist.is_initialized():
        yield
        return
    torch.set_num_threads(threads_per_process(world))
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR/PORT come from torchrun
    level = log.level
    if dist.get_rank() > 0:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
        dist.destroy_process_group()


def from_main(make: Callable[[], T]) -> T:
    """``make()`` run on rank 0 only and its result sent to every rank (pickled): one reader, one writer."""
    rank, world = rank_and_world()
    if world == 1:
        return make()
    box = [make() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main_floats(values: list[float]) -> list[float]:
    """Rank 0's ``values`` on every rank: decisions taken from them are then the same everywhere."""
    if rank_and_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


def sum_across(values: dict[str, float]) -> dict[str, float]:
    """Each key's sum over the ranks (every rank holds the same keys)."""
    if rank_and_world()[1] == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def share(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous part of the batch ``idx``: sizes differ by at most one row."""
    return torch.tensor_split(idx, world)[rank]


class _Loss(nn.Module):
    """``net.loss`` as ``forward``: DDP prepares its gradient all-reduce in forward calls."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor):
        return self.net.loss(x, arm, y)


def data_parallel(net: nn.Module) -> nn.Module:
    """``net``'s loss under DDP: calling it returns ``net.loss``; backward averages the ranks' gradients.

    Building it copies rank 0's parameters to every rank. ``find_unused_parameters``: a branch
    whose arm has no rows in a rank's share gets no gradient there (HUM runs only the passes a
    batch needs); one unused on every rank keeps no gradient, as in one process. No buffer is
    trained (no batch norm), so none is synced per step.
    """
    return nn.parallel.DistributedDataParallel(_Loss(net), find_unused_parameters=True, forward_sync_buffers=False)
