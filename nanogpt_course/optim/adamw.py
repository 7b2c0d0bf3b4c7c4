"""AdamW, written as one function over lists of tensors (torch ``_foreach`` kernels).

Same arithmetic as ``torch.optim.AdamW`` (decoupled weight decay, bias correction)::

    W  <- W * (1 - lr * wd)
    m  <- beta1 * m + (1 - beta1) * g
    v  <- beta2 * v + (1 - beta2) * g^2
    W  <- W - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Both :class:`~nanogpt_course.optim.MuonAdamW` (whole tensors) and
:class:`~nanogpt_course.optim.DistMuonAdamW` (flat shards of tensors) call it: the update
is elementwise, so a shard of a parameter is updated exactly as the whole would be.

Parameters stored in a low-precision dtype (bf16 embeddings, ``--embedding-dtype bf16``)
keep their moments in that dtype too, but the arithmetic runs on fp32 copies that are
rounded back once at the end: in bf16 itself ``1 - beta2`` and the small ``v`` updates
would lose most of their digits. Rounding the parameters back to the nearest bf16 value
loses every update smaller than half a bf16 step (1/256 of the entry): late in a decaying
schedule that is most of them. ``stochastic_rounding=True`` rounds them up or down at
random instead, with the probabilities that make the stored value right on average
(:func:`round_stochastic`), so small updates survive in expectation.

On CUDA the same step runs through torch's fused AdamW kernel (``torch._fused_adamw_``,
what ``torch.optim.AdamW(fused=True)`` calls): one kernel reads each parameter, gradient
and moment once and writes them once, where the readable ``_foreach`` version below makes
seven passes (at d12 on an H100: 2.1 ms per step against ~6.5 ms, issue #18). It computes
in fp32 and writes bf16 tensors back rounded to nearest, as the readable path does. With
stochastic rounding the bf16 tensors take the readable path's fp32 copies, and the fused
kernel updates those copies before they are rounded at random. ``fused=False`` (or
``NANOGPT_COURSE_FUSED_ADAMW=0``) runs the readable version anywhere;
``tests/test_optim_adamw_fused.py`` ties the two.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

__all__ = ["adamw_step_", "round_stochastic", "LOW_PRECISION", "FUSED"]

LOW_PRECISION = (torch.bfloat16, torch.float16)
FUSED = os.environ.get("NANOGPT_COURSE_FUSED_ADAMW", "1") not in ("0", "false", "no")


def round_stochastic(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """fp32 ``x`` rounded to bf16 up or down at random, unbiased: ``E[result] = x``.

    A bf16 number is an fp32 number whose low 16 bits are zero. Adding a uniform random
    integer in [0, 2^16) to the bit pattern and clearing those bits rounds the magnitude up
    with probability (the dropped fraction of a step), down otherwise; a carry into the
    exponent is the right answer too. Non-finite values are rounded to nearest. Returns a
    bf16 tensor of ``x``'s shape."""
    if x.dtype != torch.float32:
        raise ValueError(f"round_stochastic rounds fp32 to bf16, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device,
                          generator=generator)
    rounded = ((bits + noise) & -(1 << 16)).view(torch.float32)  # -(1 << 16): 0xFFFF0000
    return torch.where(torch.isfinite(x), rounded, x).to(torch.bfloat16)


def adamw_step_(params: list[torch.Tensor], grads: list[torch.Tensor],
                exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], *, step: int,
                lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float = 0.0, stochastic_rounding: bool = False,
                fused: bool | None = None) -> None:
    """One AdamW step, in place, on matching lists (same shapes pairwise).

    ``step`` is the 1-based step count shared by these tensors (for bias correction).
    ``stochastic_rounding``: bf16 parameters are written back with :func:`round_stochastic`
    (their moments, and fp32 parameters, are not affected). ``fused``: torch's fused
    kernel (True), the readable ``_foreach`` passes (False), or None: fused on CUDA unless
    :data:`FUSED` is off (module docstring).
    """
    if not params:
        return
    if fused is None:
        fused = FUSED and params[0].is_cuda
    if fused and _fusable(params, exp_avgs, exp_avg_sqs, stochastic_rounding):
        _fused_adamw_step_(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=lr,
                           beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
        return
    low = [i for i, p in enumerate(params) if p.dtype in LOW_PRECISION]
    if low:  # fp32 math for bf16/fp16 tensors, rounded back once (module docstring)
        lists = (params, grads, exp_avgs, exp_avg_sqs)
        narrow = [[t[i] for i in low] for t in lists]
        wide = [[t.float() for t in ts] for ts in narrow]
        adamw_step_(*wide, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                    weight_decay=weight_decay, fused=fused)  # fused on CUDA: one pass
        for k in (0, 2, 3):  # the parameters and both moments (not the gradients)
            if k == 0 and stochastic_rounding:
                for p, w in zip(narrow[0], wide[0]):
                    p.copy_(round_stochastic(w) if p.dtype == torch.bfloat16 else w)
            else:
                torch._foreach_copy_(narrow[k], wide[k])
        rest = [i for i, p in enumerate(params) if p.dtype not in LOW_PRECISION]
        params, grads, exp_avgs, exp_avg_sqs = ([t[i] for i in rest] for t in lists)
        if not params:
            return
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    bias1 = 1.0 - beta1**step
    bias2_sqrt = math.sqrt(1.0 - beta2**step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr / bias1)


def _fusable(params, exp_avgs, exp_avg_sqs, stochastic_rounding: bool) -> bool:
    """The fused kernel wants each moment in its parameter's dtype; stochastic rounding of
    low-precision parameters is only on the readable path."""
    if stochastic_rounding and any(p.dtype in LOW_PRECISION for p in params):
        return False
    return all(m.dtype == p.dtype and v.dtype == p.dtype
               for p, m, v in zip(params, exp_avgs, exp_avg_sqs))


def _fused_adamw_step_(params, grads, exp_avgs, exp_avg_sqs, *, step: int, lr: float,
                       beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """:func:`adamw_step_`'s arithmetic in one fused kernel per dtype. The kernel wants
    each tensor's step count as a device tensor; one filled on the device (no copy from
    the host, which would wait for the queued backward) serves every tensor of a dtype.
    Gradients are cast to their parameter's dtype, as the caller's bf16 path does.

    If the kernel refuses its arguments (a torch build or device without it), a warning is
    printed once, :data:`FUSED` is turned off and that dtype's tensors, and every later
    call, take the readable path: the argument checks run before the kernel writes."""
    global FUSED
    hyper = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        by_dtype.setdefault(p.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        lists = [[t[i] for i in idx] for t in (params, grads, exp_avgs, exp_avg_sqs)]
        if not FUSED:
            adamw_step_(*lists, **hyper, fused=False)
            continue
        count = torch.full((), float(step), dtype=torch.float32, device=lists[0][0].device)
        try:
            torch._fused_adamw_(lists[0], [g.to(dtype) for g in lists[1]], lists[2], lists[3],
                                [], [count] * len(idx), lr=lr, beta1=beta1, beta2=beta2,
                                weight_decay=weight_decay, eps=eps, amsgrad=False,
                                maximize=False)
        except (RuntimeError, TypeError, NotImplementedError) as err:
            FUSED = False
            warnings.warn(f"torch's fused AdamW kernel failed ({err}); AdamW runs its readable "
                          "foreach passes from now on (same results, slower on a GPU)",
                          stacklevel=3)
            adamw_step_(*lists, **hyper, fused=False)
