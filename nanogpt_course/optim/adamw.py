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
would lose most of their digits.
"""

from __future__ import annotations

import math

import torch

__all__ = ["adamw_step_", "LOW_PRECISION"]

LOW_PRECISION = (torch.bfloat16, torch.float16)


def adamw_step_(params: list[torch.Tensor], grads: list[torch.Tensor],
                exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], *, step: int,
                lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float = 0.0) -> None:
    """One AdamW step, in place, on matching lists (same shapes pairwise).

    ``step`` is the 1-based step count shared by these tensors (for bias correction).
    """
    if not params:
        return
    low = [i for i, p in enumerate(params) if p.dtype in LOW_PRECISION]
    if low:  # fp32 math for bf16/fp16 tensors, rounded back once (module docstring)
        lists = (params, grads, exp_avgs, exp_avg_sqs)
        narrow = [[t[i] for i in low] for t in lists]
        wide = [[t.float() for t in ts] for ts in narrow]
        adamw_step_(*wide, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                    weight_decay=weight_decay)
        for k in (0, 2, 3):  # the parameters and both moments (not the gradients)
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
