"""Worked solutions for lessons/06_distmuon_zero2."""

import math

import torch


def zero_bytes_per_rank(num_params: int, world_size: int, stage: int, *, param_bytes: int = 4,
                        grad_bytes: int = 4, state_bytes: int = 8) -> dict[str, float]:
    """Bytes per rank for parameters, gradients and optimizer state at a ZeRO stage."""
    params = num_params * param_bytes / (world_size if stage >= 3 else 1)
    grads = num_params * grad_bytes / (world_size if stage >= 2 else 1)
    optimizer = num_params * state_bytes / (world_size if stage >= 1 else 1)
    return {"params": params, "grads": grads, "optimizer": optimizer,
            "total": params + grads + optimizer}


def simulated_reduce_scatter(per_rank: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank r receives the sum over ranks of chunk r (W chunks of equal length)."""
    world = len(per_rank)
    chunk = per_rank[0].numel() // world
    out = []
    for r in range(world):
        total = torch.zeros(chunk, dtype=per_rank[0].dtype)
        for tensor in per_rank:  # what rank r hears from every rank, added up
            total += tensor[r * chunk:(r + 1) * chunk]
        out.append(total)
    return out


def chunk_bounds(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, stop) of rank's flat chunk."""
    chunk = math.ceil(numel / world_size)
    start = min(rank * chunk, numel)
    return start, min(start + chunk, numel)
