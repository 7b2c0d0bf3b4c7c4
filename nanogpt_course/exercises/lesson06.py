"""Checkers for lessons/06_distmuon_zero2: ZeRO memory, reduce-scatter, flat chunks."""

from __future__ import annotations

import torch

from ..optim.sharding import chunk_bounds as _chunk_bounds
from . import Case, exercise


def zero_bytes_per_rank(num_params: int, world_size: int, stage: int, *, param_bytes: int = 4,
                        grad_bytes: int = 4, state_bytes: int = 8) -> dict[str, float]:
    """Reference: bytes each rank holds for parameters, gradients and optimizer state.

    Stage 0 (plain data parallel) keeps all three whole on every rank; ZeRO stage 1 shards
    the optimizer state, stage 2 also the gradients, stage 3 also the parameters.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    share = lambda sharded: 1 / world_size if sharded else 1.0
    out = {"params": num_params * param_bytes * share(stage >= 3),
           "grads": num_params * grad_bytes * share(stage >= 2),
           "optimizer": num_params * state_bytes * share(stage >= 1)}
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def simulated_reduce_scatter(per_rank: list[torch.Tensor]) -> list[torch.Tensor]:
    """Reference: ``per_rank[r]`` is rank r's 1-D tensor (length divisible by the world
    size W); rank r receives the sum over ranks of chunk r. Returns the W chunks."""
    return list(torch.stack(per_rank).sum(0).chunk(len(per_rank)))


def chunk_bounds(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """Reference: ``(start, stop)`` of rank ``rank``'s flat chunk: chunks of
    ceil(numel / world_size) elements, the last ones short or empty."""
    return _chunk_bounds(numel, world_size, rank)


def _memory_cases() -> list[Case]:
    d12 = 286_261_248  # a d12-sized count, any integer works
    return [Case(f"W={w}, stage {s}", (d12, w, s)) for w, s in
            [(1, 0), (8, 0), (8, 1), (8, 2), (8, 3), (3, 2)]] + [
        Case("a count W does not divide", (1001, 3, 3)),
        Case("mixed precision bytes", (1000, 4, 1),
             {"param_bytes": 2, "grad_bytes": 2, "state_bytes": 12})]


def _rs_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [Case(f"{w} ranks x {n}", ([torch.randn(n, generator=g) for _ in range(w)],))
            for w, n in [(1, 3), (2, 4), (4, 8), (3, 9)]]


def _chunk_cases() -> list[Case]:
    return [Case(f"numel {n}, W={w}, rank {r}", (n, w, r)) for n, w, r in
            [(8, 4, 1), (10, 4, 0), (10, 4, 3), (341, 2, 1), (5, 4, 3), (3, 8, 6), (0, 2, 1)]]


exercise("06_distmuon_zero2.zero_bytes_per_rank", zero_bytes_per_rank, _memory_cases, tol=1e-6,
         hint="stage 1 divides the optimizer state by W, stage 2 also the gradients, "
              "stage 3 also the parameters")
exercise("06_distmuon_zero2.simulated_reduce_scatter", simulated_reduce_scatter, _rs_cases,
         tol=1e-6, hint="sum the ranks' tensors elementwise, then cut the sum into W chunks")
exercise("06_distmuon_zero2.chunk_bounds", chunk_bounds, _chunk_cases, tol=0,
         hint="chunk = ceil(numel / W); start = min(rank * chunk, numel); "
              "stop = min(start + chunk, numel)")
