"""Optimizers: AdamW groups + Muon, on one process or sharded over ranks (ZeRO-2).

- :func:`orthogonalize` (``muon``): Newton-Schulz / Polar Express approximation of ``U V^T``.
- :class:`MuonAdamW` (``hybrid``): Muon for 2-D block matrices, AdamW for the rest.
- :class:`DistMuonAdamW` (``distributed``): the same, with gradients reduce-scattered
  during backward (``grad_shard``: ZeRO-2), state and updates sharded, parameters
  all-gathered; no DDP wrapper.
- :func:`build_optimizer` (``build``): the standard grouping of a GPT's parameters.
- ``sharding``: the in-memory shard layout; :func:`consolidate` / :func:`reshard` /
  :func:`load_sharded` move optimizer state between world sizes.
"""

from .adamw import adamw_step_
from .build import build_optimizer, infer_parameter_kinds
from .distributed import Collectives, DistMuonAdamW, RecordingCollectives
from .hybrid import ADAMW_DEFAULTS, MUON_DEFAULTS, HybridOptimizer, MuonAdamW
from .muon import (
    NEWTON_SCHULZ_COEFFS,
    POLAR_EXPRESS_COEFFS,
    momentum_warmup,
    orthogonalize,
    shape_lr_scale,
)
from .sharding import SMALL_PARAM_NUMEL, chunk_bounds, consolidate, load_sharded, reshard

__all__ = [
    "orthogonalize",
    "shape_lr_scale",
    "momentum_warmup",
    "NEWTON_SCHULZ_COEFFS",
    "POLAR_EXPRESS_COEFFS",
    "adamw_step_",
    "MuonAdamW",
    "DistMuonAdamW",
    "HybridOptimizer",
    "Collectives",
    "RecordingCollectives",
    "MUON_DEFAULTS",
    "ADAMW_DEFAULTS",
    "build_optimizer",
    "infer_parameter_kinds",
    "SMALL_PARAM_NUMEL",
    "chunk_bounds",
    "consolidate",
    "reshard",
    "load_sharded",
]
