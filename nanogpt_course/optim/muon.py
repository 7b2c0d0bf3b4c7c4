"""Muon: momentum, then an orthogonalized update for each 2-D weight matrix.

The update of a weight matrix ``W`` (shape ``(fan_out, fan_in)``) is built in three steps:

1. **Momentum** (EMA form, Nesterov by default)::

       M <- beta * M + (1 - beta) * G            # the momentum buffer
       U  = (1 - beta) * G + beta * M            # Nesterov: look one step ahead

2. **Orthogonalize**: ``O = orthogonalize(U)`` ~ ``U_svd @ V_svd^T``, i.e. ``U`` with every
   singular value replaced by (about) 1. Every direction the gradient moves along gets the
   same step size, so the rare directions are not drowned by the dominant ones.

3. **Step** with a shape-aware learning rate and decoupled weight decay::

       W <- W - lr * wd * W                      # (cautious: only where sign(O) == sign(W))
       W <- W - lr * sqrt(max(1, fan_out / fan_in)) * O

Shape-aware LR rule: an orthogonal ``O`` has spectral norm 1, so as a map between
RMS-normalized vectors (RMS -> RMS) it has gain ``sqrt(fan_in / fan_out) * ||O||_2``. For a
tall matrix (more outputs than inputs, e.g. the MLP's up-projection with 4x) that gain is
below 1; multiplying by ``sqrt(fan_out / fan_in)`` brings it back to 1, so every matrix
changes its layer's output by a similar relative amount per step. Wide matrices keep ``lr``.
Because the update's spectral norm is fixed, Muon's LR needs no width scaling (AdamW's does;
see :mod:`nanogpt_course.optim.build`).

Orthogonalization runs in bfloat16 on CUDA (the iteration is robust to it and tensor cores
make it fast) and in float32 elsewhere.
"""

from __future__ import annotations

import math
from itertools import chain, repeat

import torch

__all__ = [
    "NEWTON_SCHULZ_COEFFS",
    "POLAR_EXPRESS_COEFFS",
    "ORTHOGONALIZERS",
    "orthogonalize",
    "coefficients",
    "shape_lr_scale",
    "muon_direction",
    "apply_muon_step_",
    "momentum_warmup",
]

# Newton-Schulz, quintic: each step applies p(x) = a x + b x^3 + c x^5 to every singular
# value. Keller Jordan's coefficients trade exactness for speed: the slope at 0 is a = 3.4445
# (tiny singular values grow ~3.4x per step), and instead of converging to 1 the values end
# up oscillating inside a band around 1. Starting from sigma / ||G||_F >= 3e-3, five steps
# land every singular value in [0.68, 1.21] (computed by iterating p on a fine grid).
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_BAND = (0.68, 1.21)

# Polar Express (Amsel, Persson, Musco & Gower, 2025, arXiv:2505.16932, Algorithm 1): a
# different quintic per step, each optimal in the worst case (minimax) for the interval the
# previous one leaves, so the band tightens every step instead of stalling. The paper
# divides (a, b, c) by (1.01, 1.01^3, 1.01^5) (all but the last polynomial) and the input
# norm by 1.01 as a safety margin for bf16 rounding. After 5 steps singular values with
# sigma / ||G||_F >= 1e-3 land in [0.84, 1.13]; steps past 8 repeat the last polynomial.
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_SAFETY = 1.01
POLAR_EXPRESS_COEFFS = tuple(
    (a / _SAFETY, b / _SAFETY**3, c / _SAFETY**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)
POLAR_EXPRESS_BAND = (0.84, 1.13)

ORTHOGONALIZERS = ("newton_schulz", "polar_express")


def coefficients(method: str, steps: int) -> list[tuple[float, float, float]]:
    """The ``steps`` quintic coefficient triples ``(a, b, c)`` that ``method`` applies."""
    if method == "newton_schulz":
        return [NEWTON_SCHULZ_COEFFS] * steps
    if method == "polar_express":
        table = POLAR_EXPRESS_COEFFS
        return list(chain(table[:steps], repeat(table[-1], max(0, steps - len(table)))))
    raise ValueError(f"unknown orthogonalizer {method!r}: choose one of {ORTHOGONALIZERS}")


def _default_dtype(G: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if G.is_cuda else torch.float32


def orthogonalize(G: torch.Tensor, steps: int = 5, *, method: str = "newton_schulz",
                  dtype: torch.dtype | None = None, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal polar factor ``U V^T`` of ``G = U S V^T``.

    G: ``(..., m, n)``, any leading batch dims (all matrices are processed in one batched
    matmul per step); tall (m > n), wide and square all work. Returns the same shape and
    dtype as ``G``. ``method``: ``"newton_schulz"`` (default) or ``"polar_express"``.
    ``dtype``: the arithmetic dtype, default bfloat16 on CUDA and float32 elsewhere.

    Singular-value bands after 5 steps (for sigma / ||G||_F above 3e-3 resp. 1e-3):
    Newton-Schulz [0.68, 1.21], Polar Express [0.84, 1.13]. A zero matrix maps to zero.
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix (..., m, n), got shape {tuple(G.shape)}")
    X = G.to(dtype or _default_dtype(G))
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide side: X @ X^T is then the smaller (m x m) Gram matrix
        X = X.mT
    lead = X.shape[:-2]
    X = X.reshape(-1, X.size(-2), X.size(-1))  # (batch, m, n) with m <= n
    # Scale so every singular value is <= 1 (||X||_2 <= ||X||_F): the polynomials are
    # designed for inputs in [0, 1]. The norm is taken in fp32 (a bf16 sum of squares can
    # round a few parts in a thousand high or low).
    scale = _SAFETY if method == "polar_express" else 1.0
    norm = X.float().norm(dim=(-2, -1), keepdim=True) * scale + eps
    X = X / norm.to(X.dtype)
    for a, b, c in coefficients(method, steps):
        A = torch.bmm(X, X.mT)  # (batch, m, m)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + (b A + c A^2) X = p(X)
    X = X.reshape(*lead, X.size(-2), X.size(-1))
    if tall:
        X = X.mT
    return X.to(G.dtype)


def shape_lr_scale(fan_out: int, fan_in: int) -> float:
    """The shape-aware LR factor ``sqrt(max(1, fan_out / fan_in))`` (see the module doc)."""
    return math.sqrt(max(1.0, fan_out / fan_in))


def muon_direction(grad: torch.Tensor, momentum_buffer: torch.Tensor, *, momentum: float,
                   nesterov: bool = True, ns_steps: int = 5,
                   method: str = "newton_schulz") -> torch.Tensor:
    """Update the momentum buffer in place and return the orthogonalized direction ``O``.

    grad, momentum_buffer: ``(k, m, n)`` (k matrices of one shape, stacked) or ``(m, n)``.
    Returns ``O`` with the same shape: the caller steps ``W -= lr * scale * O``.
    """
    momentum_buffer.lerp_(grad, 1.0 - momentum)  # M = beta M + (1 - beta) G
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    return orthogonalize(update, ns_steps, method=method)


def apply_muon_step_(params: torch.Tensor, direction: torch.Tensor, *, lr: float,
                     weight_decay: float = 0.0, cautious: bool = False) -> None:
    """``params -= lr * wd * params`` (decoupled decay), then ``params -= lr * scale * O``.

    params, direction: ``(k, m, n)`` or ``(m, n)``; params is updated in place. ``scale`` is
    :func:`shape_lr_scale` of ``(m, n)``. ``cautious``: decay only the entries where the
    update already pushes toward zero (``sign(O) == sign(W)``), so decay never fights it
    (cautious weight decay, Chen et al. 2025).
    """
    fan_out, fan_in = params.shape[-2], params.shape[-1]
    direction = direction.to(params.dtype)
    if weight_decay != 0.0:
        if cautious:
            mask = (direction * params) > 0
            params.sub_(params * mask, alpha=lr * weight_decay)
        else:
            params.mul_(1.0 - lr * weight_decay)
    params.add_(direction, alpha=-lr * shape_lr_scale(fan_out, fan_in))


def momentum_warmup(step: int, *, warmup_steps: int = 300, start: float = 0.85,
                    end: float = 0.95) -> float:
    """Muon momentum ramped linearly from ``start`` to ``end`` over ``warmup_steps``.

    Early in training the gradient direction changes fast, so a long memory hurts; the
    trainer writes this into every muon group's ``group["momentum"]`` each step.
    """
    frac = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return (1.0 - frac) * start + frac * end
