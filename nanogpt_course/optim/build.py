"""``build_optimizer(model)``: a GPT's parameters grouped by role, one table of settings.

Each role is one optimizer group. The table (:data:`ROLES`) is the whole recipe:

===============  ======  ==================  =====  =============  =====  =====================
role             update  learning rate       ×      betas          decay  parameters
===============  ======  ==================  =====  =============  =====  =====================
matrix           Muon    ``matrix_lr``       1      --             λ      2-D block weights
gate             Muon    ``matrix_lr``       1      --             λ      value-embedding gates
residual         AdamW   ``scalar_lr``       0.01   (0.8, 0.95)    0.05   ``resid_lambdas``
x0               AdamW   ``scalar_lr``       1      (0.96, 0.95)   0      ``x0_lambdas``
embedding        AdamW   ``embedding_lr``    s      (0.8, 0.995)   0.001  token embedding
value_embedding  AdamW   ``embedding_lr``    0.5 s  (0.8, 0.995)   0.01   value embeddings
unembedding      AdamW   ``unembedding_lr``  s      (0.8, 0.96)    0.01   ``lm_head``
scalar           AdamW   ``scalar_lr``       1      (0.8, 0.95)    0      other vectors, biases
===============  ======  ==================  =====  =============  =====  =====================

So ``--matrix-lr`` and ``--weight-decay`` (λ, scheduled by the trainer) set the Muon
matrices and the gates; ``--scalar-lr`` the residual scalars at 0.01× and the x0 scalars
at 1×; ``--embedding-lr`` the token embedding at 1× and the value embeddings at 0.5×;
``--unembedding-lr`` the head. The AdamW weight decays in the table are constants
(decoupled, ``lr · wd``). This is nanochat 92d63d4's grouping (its ``setup_optimizer``);
it became the default after an A/B at d6, 2.49e16 FLOPs, two seeds: 0.0097 bits per byte
better than :data:`UNIFORM_ROLES` (one beta pair, no decay, gates with the scalars), the
table before it (docs/QUALITY.md).

Width scaling of AdamW LRs: ``s = (d_model / 768) ** -0.5``. The default LRs were tuned at
``d_model = 768`` (a d12 model); an Adam step moves every entry by about ``lr``, and a wider
embedding/unembedding sums more such entries per output, so the LR shrinks like
``1 / sqrt(width)`` to keep the change of the outputs about constant. Scalars do not grow
with width and keep their LR. Muon's LR is not width-scaled: its update has spectral norm
~1 whatever the width, and :func:`~nanogpt_course.optim.muon.shape_lr_scale` (
``sqrt(max(1, fan_out / fan_in))``) handles the aspect ratio.

**The first step of the residual and x0 scalars is skipped** (``skip_first_step``): at
initialization every block is the identity and the final RMSNorm is scale invariant, so
their gradient is exactly zero in exact arithmetic; in floats it is rounding noise, which
Adam (normalizing by ``sqrt(v) + eps``, eps 1e-10) would turn into a full-size step in a
random direction. From step 2 on the gradients are real.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import DistMuonAdamW
from .hybrid import HybridOptimizer, MuonAdamW
from .sharding import SMALL_PARAM_NUMEL

__all__ = ["build_optimizer", "infer_parameter_kinds", "parameter_roles", "KINDS", "ROLES",
           "UNIFORM_ROLES", "REFERENCE_WIDTH"]

KINDS = ("matrix", "embedding", "unembedding", "scalar")
REFERENCE_WIDTH = 768
_ADAM = {"kind": "adamw", "betas": (0.8, 0.95), "weight_decay": 0.0}

# role -> kind, which LR argument, its factor, whether it is width-scaled, betas, decay
ROLES: dict[str, dict] = {
    "matrix": {"kind": "muon", "lr": "matrix_lr", "factor": 1.0},
    "gate": {"kind": "muon", "lr": "matrix_lr", "factor": 1.0},
    "residual": {**_ADAM, "lr": "scalar_lr", "factor": 0.01, "weight_decay": 0.05,
                 "skip_first_step": True},
    "x0": {**_ADAM, "lr": "scalar_lr", "factor": 1.0, "betas": (0.96, 0.95),
           "skip_first_step": True},
    "embedding": {**_ADAM, "lr": "embedding_lr", "factor": 1.0, "width_scaled": True,
                  "betas": (0.8, 0.995), "weight_decay": 0.001},
    "value_embedding": {**_ADAM, "lr": "embedding_lr", "factor": 0.5, "width_scaled": True,
                        "betas": (0.8, 0.995), "weight_decay": 0.01},
    "unembedding": {**_ADAM, "lr": "unembedding_lr", "factor": 1.0, "width_scaled": True,
                    "betas": (0.8, 0.96), "weight_decay": 0.01},
    "scalar": {**_ADAM, "lr": "scalar_lr", "factor": 1.0},
}

# The table before the d6 A/B: every AdamW group with betas (0.8, 0.95) and no decay, the
# gates with the scalars, the value embeddings at the token embedding's LR (for A/B runs)
UNIFORM_ROLES: dict[str, dict] = {
    "matrix": ROLES["matrix"],
    "gate": {**_ADAM, "lr": "scalar_lr", "factor": 1.0},
    "residual": {**_ADAM, "lr": "scalar_lr", "factor": 1.0, "skip_first_step": True},
    "x0": {**_ADAM, "lr": "scalar_lr", "factor": 1.0, "skip_first_step": True},
    "embedding": {**_ADAM, "lr": "embedding_lr", "factor": 1.0, "width_scaled": True},
    "value_embedding": {**_ADAM, "lr": "embedding_lr", "factor": 1.0, "width_scaled": True},
    "unembedding": {**_ADAM, "lr": "unembedding_lr", "factor": 1.0, "width_scaled": True},
    "scalar": ROLES["scalar"],
}


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


def parameter_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role (the keys of :data:`ROLES`); each appears once.

    Starts from ``model.parameter_kinds()`` (or :func:`infer_parameter_kinds`) and refines
    it by name: ``resid_lambdas`` / ``x0_lambdas`` are the residual / x0 scalars, parameters
    named ``*ve_gate*`` the gates, ``value_embeds.*`` the value embeddings.
    """
    kinds = model.parameter_kinds() if hasattr(model, "parameter_kinds") \
        else infer_parameter_kinds(model)
    _check_kinds(model, kinds)
    names = {id(p): n for n, p in model.named_parameters()}
    roles: dict[str, list[nn.Parameter]] = {r: [] for r in ROLES}
    for kind in KINDS:
        for p in kinds.get(kind, []):
            name = names[id(p)]
            leaf = name.split(".")[-1]
            if leaf in ("resid_lambdas", "x0_lambdas"):
                role = "residual" if leaf == "resid_lambdas" else "x0"
            elif "ve_gate" in name:
                role = "gate"
            elif kind == "embedding" and name.startswith("value_embeds."):
                role = "value_embedding"
            else:
                role = kind
            roles[role].append(p)
    return roles


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
                    weight_decay: float = 0.0, adam_betas: tuple[float, float] | None = None,
                    adam_eps: float = 1e-10, adamw_weight_decay: float | None = None,
                    muon_momentum: float = 0.95, ns_steps: int = 5,
                    orthogonalizer: str = "newton_schulz", cautious_weight_decay: bool = False,
                    shape_scaled_weight_decay: bool = False, row_equilibrate: bool = False,
                    renormalize: bool = False, variance_beta2: float | None = None,
                    stochastic_rounding: bool = False,
                    max_grad_norm: float | None = None, track_grad_norm: bool = False,
                    reference_width: int = REFERENCE_WIDTH, process_group=None,
                    small_param_numel: int = SMALL_PARAM_NUMEL, roles: dict | None = None,
                    verbose: bool = False) -> HybridOptimizer:
    """MuonAdamW (one process) or DistMuonAdamW (``distributed``; default: when
    torch.distributed is initialized with world size > 1), one group per role.

    ``roles``: the settings table (default :data:`ROLES`); ``adam_betas`` /
    ``adamw_weight_decay``, when given, replace the table's betas / decays of every AdamW
    group. Groups carry ``name`` (the role), ``kind`` and ``initial_lr``; empty roles are
    left out. The Muon options (``orthogonalizer`` to ``variance_beta2``) go to every muon
    group; :class:`~nanogpt_course.optim.hybrid.MuonAdamW` says what each does.
    ``stochastic_rounding`` goes to every AdamW group (it matters for bf16 embeddings).
    """
    table = ROLES if roles is None else roles
    params = parameter_roles(model)
    scale = (_width(model, params) / reference_width) ** -0.5
    lrs = {"matrix_lr": matrix_lr, "embedding_lr": embedding_lr,
           "unembedding_lr": unembedding_lr, "scalar_lr": scalar_lr}
    groups = []
    for role, spec in table.items():
        if not params.get(role):
            continue
        lr = lrs[spec["lr"]] * spec["factor"] * (scale if spec.get("width_scaled") else 1.0)
        group = {"name": role, "kind": spec["kind"], "params": params[role], "lr": lr}
        if spec["kind"] == "muon":
            group.update(momentum=muon_momentum, weight_decay=weight_decay, ns_steps=ns_steps,
                         orthogonalizer=orthogonalizer,
                         cautious_weight_decay=cautious_weight_decay,
                         shape_scaled_weight_decay=shape_scaled_weight_decay,
                         row_equilibrate=row_equilibrate, renormalize=renormalize,
                         variance_beta2=variance_beta2)
        else:
            group.update(betas=tuple(adam_betas if adam_betas is not None else spec["betas"]),
                         eps=adam_eps,
                         weight_decay=(adamw_weight_decay if adamw_weight_decay is not None
                                       else spec["weight_decay"]))
            if spec.get("skip_first_step"):
                group["skip_first_step"] = True
            if stochastic_rounding:  # only bf16-stored parameters are rounded differently
                group["stochastic_rounding"] = True
        groups.append(group)
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
            print(f"  {g['name']:<16} {g['kind']:<6} lr {g['lr']:.5g}  "
                  f"{len(g['params'])} tensors, {n:,} params")
    return opt
