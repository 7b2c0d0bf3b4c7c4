"""Splitting evaluation work over the ranks of ``torchrun`` and summing the results.

Evaluation never trains, so there is nothing to keep in sync but the final counts: each rank
takes every ``world_size``-th *batch* of a plan that every rank builds identically, and the
per-task sums are added up with one ``all_reduce`` at the end. Because the batches
themselves do not depend on the number of ranks, 1 process and N ranks compute every
example in the same batch and give the same numbers.
Alone (no process group) every helper is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def mine(items: list, rank: int | None = None, world: int | None = None) -> list:
    """The items this rank handles: ``items[rank::world]``."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    return items[rank::world]


def all_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; NCCL needs a CUDA tensor)."""
    _, world = rank_and_world()
    if world == 1:
        return [float(v) for v in values]
    device = torch.device(device)
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: float, device: torch.device | str = "cpu") -> float:
    """Maximum of ``value`` over all ranks (for wall-clock seconds: the slowest rank)."""
    _, world = rank_and_world()
    if world == 1:
        return float(value)
    device = torch.device(device)
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
