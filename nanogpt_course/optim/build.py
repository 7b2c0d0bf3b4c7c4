"""``build_optimizer(model)``: the standard grouping of a GPT's parameters.

=============  ===================================  ======  ====================================
kind           what                                 update  learning rate
=============  ===================================  ======  ====================================
matrix         2-D weights inside the blocks        Muon    ``matrix_lr`` (shape rule inside)
embedding      token + value embeddings             AdamW   ``embedding_lr * s``
unembedding    ``lm_head``                          AdamW   ``unembedding_lr * s``
scalar         per-layer scalars, gates, norms      AdamW   ``scalar_lr``
=============  ===================================  ======  ====================================

Width scaling of AdamW LRs: ``s = (d_model / 768) ** -0.5``. The default LRs were tuned at
``d_model = 768`` (a d12 model); an Adam step moves every entry by about ``lr``, and a wider
embedding/unembedding sums more such entries per output, so the LR shrinks like
``1 / sqrt(width)`` to keep the change of the outputs about constant. Scalars do not grow
with width and keep their LR. Muon's LR is not width-scaled: its update has spectral norm
~1 whatever the width, and :func:`~nanogpt_course.optim.muon.shape_lr_scale` (
``sqrt(max(1, fan_out / fan_in))``) handles the aspect ratio.

``weight_decay`` applies to the Muon matrices only (decoupled, ``lr * wd``); AdamW groups
use ``adamw_weight_decay`` (0 by default: embeddings and scalars are not decayed).
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import DistMuonAdamW
from .hybrid import HybridOptimizer, MuonAdamW
from .sharding import SMALL_PARAM_NUMEL

__all__ = ["build_optimizer", "infer_parameter_kinds", "KINDS", "REFERENCE_WIDTH"]

KINDS = ("matrix", "embedding", "unembedding", "scalar")
REFERENCE_WIDTH = 768


def infer_parameter_kinds(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """A fallback for models without ``parameter_kinds()``: ``nn.Embedding`` weights are
    embeddings, a module named ``lm_head`` is the unembedding, other >= 2-D weights are
    matrices, everything else (biases, norms, scalars) is scalar."""
    kinds: dict[str, list[nn.Parameter]] = {k: [] for k in KINDS}
    seen: set[int] = set()
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Embedding):
                kinds["embedding"].append(p)
            elif name.split(".")[-1] == "lm_head" and p.ndim >= 2:
                kinds["unembedding"].append(p)
            elif p.ndim == 2:
                kinds["matrix"].append(p)
            else:
                kinds["scalar"].append(p)
    return kinds


def _check_kinds(model: nn.Module, kinds: dict) -> None:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"parameter_kinds() returned unknown kinds {sorted(unknown)}; "
                         f"expected {KINDS}")
    listed = [p for k in KINDS for p in kinds.get(k, [])]
    ids = [id(p) for p in listed]
    if len(set(ids)) != len(ids):
        raise ValueError("parameter_kinds() lists a parameter twice: each belongs to one kind")
    names = {id(p): n for n, p in model.named_parameters()}
    listed_ids = set(ids)
    missing = [n for pid, n in names.items() if pid not in listed_ids]
    if missing:
        raise ValueError(f"parameter_kinds() leaves out {missing}: every parameter needs a kind")
    foreign = [tuple(p.shape) for p in listed if id(p) not in names]
    if foreign:
        raise ValueError(f"parameter_kinds() lists parameters not in the model: {foreign}")


def _width(model: nn.Module, kinds: dict) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "n_embd"):
        return int(config.n_embd)
    emb = kinds.get("embedding") or kinds.get("unembedding")
    if emb:
        return int(emb[0].shape[-1])
    return REFERENCE_WIDTH


def _is_distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def build_optimizer(model: nn.Module, *, distributed: bool | None = None,
                    matrix_lr: float = 0.02, embedding_lr: float = 0.2,
                    unembedding_lr: float = 0.004, scalar_lr: float = 0.5,
                    weight_decay: float = 0.0, adam_betas: tuple[float, float] = (0.8, 0.95),
                    adam_eps: float = 1e-10, adamw_weight_decay: float = 0.0,
                    muon_momentum: float = 0.95, ns_steps: int = 5,
                    orthogonalizer: str = "newton_schulz", cautious_weight_decay: bool = False,
                    max_grad_norm: float | None = None, track_grad_norm: bool = False,
                    reference_width: int = REFERENCE_WIDTH, process_group=None,
                    small_param_numel: int = SMALL_PARAM_NUMEL,
                    verbose: bool = False) -> HybridOptimizer:
    """MuonAdamW (one process) or DistMuonAdamW (``distributed``; default: when
    torch.distributed is initialized with world size > 1) over the model's four kinds.

    ``model.parameter_kinds()`` (``{"matrix" | "embedding" | "unembedding" | "scalar":
    [params]}``, every parameter once) gives the grouping; models without it get
    :func:`infer_parameter_kinds`. Groups carry ``name`` (the kind) and ``initial_lr``.
    """
    kinds = model.parameter_kinds() if hasattr(model, "parameter_kinds") \
        else infer_parameter_kinds(model)
    _check_kinds(model, kinds)
    scale = (_width(model, kinds) / reference_width) ** -0.5
    adam = {"kind": "adamw", "betas": tuple(adam_betas), "eps": adam_eps,
            "weight_decay": adamw_weight_decay}
    groups = [
        {"name": "matrix", "kind": "muon", "params": kinds.get("matrix", []), "lr": matrix_lr,
         "momentum": muon_momentum, "weight_decay": weight_decay, "ns_steps": ns_steps,
         "orthogonalizer": orthogonalizer, "cautious_weight_decay": cautious_weight_decay},
        {**adam, "name": "embedding", "params": kinds.get("embedding", []),
         "lr": embedding_lr * scale},
        {**adam, "name": "unembedding", "params": kinds.get("unembedding", []),
         "lr": unembedding_lr * scale},
        {**adam, "name": "scalar", "params": kinds.get("scalar", []), "lr": scalar_lr},
    ]
    groups = [g for g in groups if g["params"]]
    if distributed is None:
        distributed = _is_distributed()
    options = {"max_grad_norm": max_grad_norm, "track_grad_norm": track_grad_norm}
    if distributed:
        opt = DistMuonAdamW(groups, process_group=process_group,
                            small_param_numel=small_param_numel, **options)
    else:
        opt = MuonAdamW(groups, **options)
    if verbose:
        for g in opt.param_groups:
            n = sum(p.numel() for p in g["params"])
            print(f"  {g['name']:<12} {g['kind']:<6} lr {g['lr']:.5g}  "
                  f"{len(g['params'])} tensors, {n:,} params")
    return opt
