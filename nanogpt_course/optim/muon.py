"""Muon: momentum, then an orthogonalized update for each 2-D weight matrix.

The update of a weight matrix ``W`` (shape ``(fan_out, fan_in)``) is built in three steps
(four with the optional variance reduction):

1. **Momentum** (EMA form, Nesterov by default)::

       M <- beta * M + (1 - beta) * G            # the momentum buffer
       U  = (1 - beta) * G + beta * M            # Nesterov: look one step ahead

2. **Orthogonalize**: ``O = orthogonalize(U)`` ~ ``U_svd @ V_svd^T``, i.e. ``U`` with every
   singular value replaced by (about) 1. Every direction the gradient moves along gets the
   same step size, so the rare directions are not drowned by the dominant ones.

   Two optional touches on the way (off by default, screened in docs/QUALITY.md): *row
   equilibration* (MuonEq) rescales every row of ``U`` to the mean row norm first, so no
   row dominates the spectrum the iteration sees; *renormalization* (Muon+) rescales ``O``
   to the Frobenius norm ``sqrt(min(m, n))`` of an exact orthogonal matrix, since the
   iteration leaves singular values in a band around 1, not at 1.

3. **Neuron-wise variance reduction** (NorMuon, optional): ``O``'s rows (tall matrices) or
   columns (wide) get their own step size from an EMA of their mean squared entry,
   ``O <- O / sqrt(V)``, rescaled to keep ``||O||_F``; see :func:`variance_reduce`.

4. **Step** with a shape-aware learning rate and decoupled weight decay::

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
from contextlib import contextmanager
from itertools import chain, repeat

import torch

from . import fused

__all__ = [
    "NEWTON_SCHULZ_COEFFS",
    "POLAR_EXPRESS_COEFFS",
    "ORTHOGONALIZERS",
    "orthogonalize",
    "orthogonalize_dtype",
    "coefficients",
    "shape_lr_scale",
    "muon_direction",
    "equilibrate_rows",
    "renormalize",
    "variance_reduce",
    "second_moment_shape",
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


_dtype_override: torch.dtype | None = None


@contextmanager
def orthogonalize_dtype(dtype: torch.dtype | None):
    """Make every :func:`orthogonalize` / :func:`muon_direction` inside run in ``dtype``.

    For checks, not training: ``torch.float32`` on CUDA gives the exact fp32 arithmetic of
    the CPU reference (turn TF32 off too); ``torch.bfloat16`` on the CPU emulates the GPU's
    arithmetic. An explicit ``dtype=`` argument still wins. ``None`` restores the default.
    """
    global _dtype_override
    saved, _dtype_override = _dtype_override, dtype
    try:
        yield
    finally:
        _dtype_override = saved


def _default_dtype(G: torch.Tensor) -> torch.dtype:
    if _dtype_override is not None:
        return _dtype_override
    return torch.bfloat16 if G.is_cuda else torch.float32


def _frobenius_norm(X: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, 1)`` fp32 Frobenius norms of ``X`` ``(batch, m, n)``, in one pass.

    CUDA's norm reduction is a tree (accurate in fp32) and reads bf16 or fp32 directly. The
    CPU's fp32 ``vector_norm`` accumulates long runs serially: ~4e-5 relative error on a
    768 x 3072 matrix; a sum of squares uses pairwise summation (~1e-7) instead.
    """
    if X.is_cuda:
        return torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.float32)
    return X.float().square().sum(dim=(-2, -1), keepdim=True).sqrt()


_diag_offsets: dict = {}


def _set_quintic_diagonal_(P: torch.Tensor, A: torch.Tensor, a: float, b: float,
                           c: float) -> None:
    """Overwrite the diagonal of ``P`` ``(batch, m, m)`` with that of ``a I + b A + c A^2``
    for symmetric ``A``: ``a + b A_ii + c sum_k A_ik^2``, summed in fp32 (fp64 stays) and
    rounded once to ``P``'s dtype. Three kernels (a step is launch-bound at small sizes)."""
    wide = torch.promote_types(A.dtype, torch.float32)
    key = (a, wide, A.device)
    if key not in _diag_offsets:  # shape (1,), not 0-d: it sets the result dtype to fp32
        _diag_offsets[key] = torch.tensor([a], dtype=wide, device=A.device)
    ab = torch.add(_diag_offsets[key], A.diagonal(dim1=-2, dim2=-1), alpha=b)  # a + b A_ii
    norms = torch.linalg.vector_norm(A, dim=-1, dtype=wide)  # (A^2)_ii = |row i of A|^2
    torch.addcmul(ab, norms, norms, value=c, out=P.diagonal(dim1=-2, dim2=-1))


def _bmm_into(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``A @ B`` ``(batch, m, k) @ (batch, k, n)`` returned in ``dtype``, accumulated in fp32
    and rounded once (bf16 inputs, fp32 result: CUDA's ``out_dtype``; the CPU multiplies the
    same bf16 values in fp32)."""
    if dtype == A.dtype:
        return torch.bmm(A, B)
    if A.is_cuda and dtype == torch.float32:
        return torch.bmm(A, B, out_dtype=dtype)
    return torch.bmm(A.to(dtype), B.to(dtype))


def _newton_schulz_steps(X: torch.Tensor, coeffs, tall: bool,
                         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Apply the quintics ``coeffs`` to ``X`` ``(batch, m, n)``, m <= n, norm <= 1.

    Each step is ``X <- p(X) = a X + b X X^T X + c (X X^T)^2 X = P X`` with ``A = X X^T``
    and ``P = a I + b A + c A^2``: three plain batched matmuls (``baddbmm`` forms
    ``b A + c A^2`` inside the second). Every entry of ``P`` is rounded to bf16 once:
    off the diagonal by ``baddbmm`` itself; on the diagonal, ``a`` must be added *before*
    that rounding (``P``'s eigenvalues sit near 1, those of ``b A + c A^2`` near
    ``1 - a = -2.4``; rounding twice there doubles Newton-Schulz's bf16 error), so the
    diagonal is recomputed in fp32 by :func:`_set_quintic_diagonal_` and written over.
    Compared with ``X <- a X + B X`` (one more ``baddbmm``) this skips the copy of ``X``
    that ``baddbmm`` makes each step and is slightly more accurate in bf16.
    The last product is returned in ``out_dtype`` (default: ``X``'s), e.g. fp32 straight
    from the bf16 matmul. Returns ``(batch, m, n)``, or ``(batch, n, m)`` if ``tall``: the
    last product is then computed transposed, ``X^T P`` (``P`` is symmetric), which lands
    directly in the tall layout instead of leaving a transposed view to the caller.
    """
    out_dtype = out_dtype or X.dtype
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        A = torch.bmm(X, X.mT)  # (batch, m, m), symmetric
        P = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2, off the diagonal
        _set_quintic_diagonal_(P, A, a, b, c)
        if i == last:
            return _bmm_into(X.mT, P, out_dtype) if tall else _bmm_into(P, X, out_dtype)
        X = torch.bmm(P, X)
    return (X.mT if tall else X).to(out_dtype)  # (no steps: the normalized input)


def _check_matrices(G: torch.Tensor, what: str) -> None:
    if G.ndim < 2:
        raise ValueError(f"{what} needs a matrix (..., m, n), got shape {tuple(G.shape)}")


def _norm_scale(method: str) -> float:
    """Polar Express divides by 1.01 x the norm (its safety margin), Newton-Schulz by it."""
    return _SAFETY if method == "polar_express" else 1.0


def _newton_schulz(X: torch.Tensor, steps: int, method: str,
                   out_dtype: torch.dtype | None) -> torch.Tensor:
    """Newton-Schulz on already normalized matrices ``X`` ``(..., m, n)``, tall or wide;
    returns the same shape, in ``out_dtype`` (default: ``X``'s dtype)."""
    tall = X.size(-2) > X.size(-1)
    W = X.mT if tall else X  # iterate on the wide side: W @ W^T is the smaller Gram matrix
    lead = W.shape[:-2]
    W = W.reshape(-1, W.size(-2), W.size(-1))  # (batch, m, n), m <= n; a view when possible
    W = _newton_schulz_steps(W, coefficients(method, steps), tall, out_dtype)
    return W.reshape(*lead, *X.shape[-2:])


def _orthogonalize(G: torch.Tensor, steps: int, method: str, dtype: torch.dtype | None,
                   eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`orthogonalize`, returned in ``out_dtype`` (default: the arithmetic dtype)."""
    _check_matrices(G, "orthogonalize")
    # Scale so every singular value is <= 1 (||X||_2 <= ||X||_F): the polynomials are
    # designed for inputs in [0, 1]. The norm is taken in fp32 from the input itself, and
    # dividing writes the arithmetic dtype directly (one pass: read G, write bf16).
    norm = _frobenius_norm(G) * _norm_scale(method) + eps
    X = torch.div(G, norm, out=torch.empty_like(G, dtype=dtype or _default_dtype(G)))
    return _newton_schulz(X, steps, method, out_dtype)


def orthogonalize(G: torch.Tensor, steps: int = 5, *, method: str = "newton_schulz",
                  dtype: torch.dtype | None = None, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal polar factor ``U V^T`` of ``G = U S V^T``.

    G: ``(..., m, n)``, any leading batch dims (all matrices are processed in one batched
    matmul per step); tall (m > n), wide and square all work. Returns the same shape and
    dtype as ``G``. ``method``: ``"newton_schulz"`` (default) or ``"polar_express"``.
    ``dtype``: the arithmetic dtype, default bfloat16 on CUDA and float32 elsewhere (see
    :func:`orthogonalize_dtype` to change the default for a block of code).

    Singular-value bands after 5 steps (for sigma / ||G||_F above 3e-3 resp. 1e-3):
    Newton-Schulz [0.68, 1.21], Polar Express [0.84, 1.13]. A zero matrix maps to zero.
    """
    return _orthogonalize(G, steps, method, dtype, eps, G.dtype)


def shape_lr_scale(fan_out: int, fan_in: int) -> float:
    """The shape-aware LR factor ``sqrt(max(1, fan_out / fan_in))`` (see the module doc)."""
    return math.sqrt(max(1.0, fan_out / fan_in))


def equilibrate_rows(U: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MuonEq's row equilibration: every row of ``U`` ``(..., m, n)`` rescaled to the mean
    row norm ``||U||_F / sqrt(m)`` (same shape; ``||U||_F`` is kept). Rows of very different
    norms make a spread spectrum that the quintics flatten less well."""
    target = _frobenius_norm(U) / math.sqrt(U.size(-2))  # (..., 1, 1)
    rows = torch.linalg.vector_norm(U, dim=-1, keepdim=True, dtype=torch.float32)
    return U * (target / rows.clamp_min(eps)).to(U.dtype)


def _momentum_normalize(grad: torch.Tensor, momentum_buffer: torch.Tensor, beta, grad_scale,
                        nesterov: bool, norm_scale: float, eps: float,
                        dtype: torch.dtype, equilibrate: bool = False) -> torch.Tensor:
    """Momentum (in place), Nesterov, row equilibration (if asked), Frobenius normalization
    and the cast: ``(k, m, n)`` in, ``(k, m, n)`` of ``dtype`` out. beta, grad_scale: floats
    (eager) or 0-d tensors (compiled: one kernel set for every value); grad_scale None: 1."""
    G = grad if grad_scale is None else grad * grad_scale
    momentum_buffer.lerp_(G, 1.0 - beta)  # M = beta M + (1 - beta) G
    U = G.lerp(momentum_buffer, beta) if nesterov else momentum_buffer
    if equilibrate:
        U = equilibrate_rows(U)
    norm = _frobenius_norm(U) * norm_scale + eps
    return (U / norm).to(dtype)


def muon_direction(grad: torch.Tensor, momentum_buffer: torch.Tensor, *, momentum: float,
                   nesterov: bool = True, ns_steps: int = 5, method: str = "newton_schulz",
                   grad_scale: torch.Tensor | float | None = None,
                   equilibrate: bool = False) -> torch.Tensor:
    """Update the momentum buffer in place and return the orthogonalized direction ``O``.

    grad, momentum_buffer: ``(k, m, n)`` (k matrices of one shape, stacked) or ``(m, n)``.
    grad_scale: a factor for ``grad`` (a float or 0-d tensor: gradient clipping, 1 / world
    size), applied in the same pass. ``equilibrate``: MuonEq's row equilibration
    (:func:`equilibrate_rows`) before orthogonalizing. Returns ``O`` with the same shape,
    in the momentum buffer's dtype (fp32 for fp32 weights): Newton-Schulz runs in bf16 on CUDA, but its last
    matmul writes fp32 directly (no extra pass, one rounding fewer), and the caller steps
    ``W -= lr * scale * O`` (:func:`apply_muon_step_`) with fast same-dtype kernels.
    """
    _check_matrices(grad, "muon_direction")
    if isinstance(grad_scale, (int, float)) and grad_scale == 1:
        grad_scale = None  # (one rank, no clipping): skip a pass
    args = (_norm_scale(method), 1e-7, _default_dtype(grad))
    if fused.use_fused(grad):  # values as 0-d tensors: no recompile when they change
        beta = torch.full((), momentum, dtype=torch.float32, device=grad.device)
        scale = grad_scale
        if scale is not None:
            scale = (scale.to(grad.device, torch.float32) if torch.is_tensor(scale) else
                     torch.full((), scale, dtype=torch.float32, device=grad.device))
        X = fused.compiled(_momentum_normalize)(grad, momentum_buffer, beta, scale, nesterov,
                                                *args, equilibrate)
    else:
        X = _momentum_normalize(grad, momentum_buffer, momentum, grad_scale, nesterov, *args,
                                equilibrate)
    return _newton_schulz(X, ns_steps, method, momentum_buffer.dtype)


def renormalize(O: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Muon+: ``O`` ``(..., m, n)`` rescaled to ``||O||_F = sqrt(min(m, n))``, the norm of an
    exact orthogonal matrix of that shape (the iteration leaves singular values in a band)."""
    target = math.sqrt(min(O.size(-2), O.size(-1)))
    return O * (target / _frobenius_norm(O).clamp_min(eps)).to(O.dtype)


def second_moment_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of :func:`variance_reduce`'s state for matrices ``(..., m, n)``: one value
    per row ``(..., m, 1)`` when ``m >= n``, one per column ``(..., 1, n)`` otherwise (the
    longer side: the MLP's hidden neurons, on both of its matrices)."""
    *lead, m, n = shape
    return (*lead, m, 1) if m >= n else (*lead, 1, n)


def variance_reduce(O: torch.Tensor, second_moment: torch.Tensor, beta2: float,
                    eps: float = 1e-10) -> torch.Tensor:
    """NorMuon's neuron-wise step sizes for an orthogonalized direction.

    O: ``(..., m, n)``; second_moment: :func:`second_moment_shape` of it, updated in place::

        v = mean of O**2 along the short side     # (..., m, 1) or (..., 1, n)
        V <- beta2 * V + (1 - beta2) * v
        O' = O / sqrt(V),  then rescaled so that ||O'||_F = ||O||_F

    An orthogonal ``O`` gives every direction the same step, but not every neuron: rows
    of a tall ``O`` can still differ in norm, and some neurons keep getting larger updates.
    Dividing by their running RMS evens that out, as Adam does per entry; restoring the
    Frobenius norm keeps Muon's step size (and makes a bias correction of ``V`` pointless:
    a common factor cancels). Returns a new tensor of ``O``'s shape and dtype.
    """
    if tuple(second_moment.shape) != second_moment_shape(tuple(O.shape)):
        raise ValueError(f"second moment of shape {tuple(second_moment.shape)} does not fit "
                         f"directions of shape {tuple(O.shape)}: expected "
                         f"{second_moment_shape(tuple(O.shape))}")
    short_side = -1 if O.size(-2) >= O.size(-1) else -2  # one value per long-side neuron
    v = O.float().square().mean(dim=short_side, keepdim=True)
    second_moment.lerp_(v.to(second_moment.dtype), 1.0 - beta2)
    scaled = O * second_moment.clamp_min(eps).rsqrt().to(O.dtype)
    keep = _frobenius_norm(O) / _frobenius_norm(scaled).clamp_min(eps)
    return scaled * keep.to(O.dtype)


def apply_muon_step_(params: torch.Tensor | list[torch.Tensor], direction: torch.Tensor, *,
                     lr: float, weight_decay: float = 0.0, cautious: bool = False) -> None:
    """``params -= lr * wd * params`` (decoupled decay), then ``params -= lr * scale * O``.

    params: ``(k, m, n)`` or ``(m, n)``, updated in place, or a list of ``k`` ``(m, n)``
    tensors (the model's own parameters: no stacking and copying back). direction: the
    same shape (``(k, m, n)`` for a list). ``scale`` is :func:`shape_lr_scale` of
    ``(m, n)``. ``cautious``: decay only the entries where the update already pushes
    toward zero (``sign(O) == sign(W)``), so decay never fights it (cautious weight decay,
    Chen et al. 2025).
    """
    if isinstance(params, (list, tuple)):  # foreach: two host calls, not k
        directions = list(direction.unbind(0))
        if len(directions) != len(params):
            raise ValueError(f"{len(params)} parameters but {len(directions)} directions "
                             f"(direction shape {tuple(direction.shape)})")
        scale = -lr * shape_lr_scale(*params[0].shape[-2:])
        if weight_decay != 0.0:
            if cautious:
                masks = [(d * p) > 0 for d, p in zip(directions, params)]
                torch._foreach_sub_(params, torch._foreach_mul(params, masks),
                                    alpha=lr * weight_decay)
            else:
                torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        torch._foreach_add_(params, directions, alpha=scale)
        return
    fan_out, fan_in = params.shape[-2], params.shape[-1]
    # no cast of ``direction``: in-place ops compute in the wider dtype and write params'
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
