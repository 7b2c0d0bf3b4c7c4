"""Checkers for lessons/04_training_loop: cross-entropy, one AdamW step, the LR schedule,
gradient clipping, FP8 scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import fp8
from ..optim.adamw import adamw_step_
from ..train.schedule import Schedule
from . import Case, exercise


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference: mean cross-entropy over the targets that are not -1.
    logits (B, T, V) float, targets (B, T) int64 -> scalar."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)


def adamw_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                 exp_avg_sq: torch.Tensor, step: int, *, lr: float, beta1: float = 0.9,
                 beta2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: one AdamW step (decoupled decay, bias correction) on copies.
    Returns (new param, new exp_avg, new exp_avg_sq), all shaped like ``param``."""
    p, m, v = param.clone(), exp_avg.clone(), exp_avg_sq.clone()
    adamw_step_([p], [grad], [m], [v], step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                weight_decay=weight_decay)
    return p, m, v


def lr_multiplier(step: int, num_steps: int, warmup_steps: int, warmdown_ratio: float,
                  final_lr_frac: float) -> float:
    """Reference: linear warmup, constant, linear warmdown to ``final_lr_frac``."""
    return Schedule(num_steps=num_steps, warmup_steps=warmup_steps,
                    warmdown_ratio=warmdown_ratio, final_lr_frac=final_lr_frac
                    ).lr_multiplier(step)


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Reference: ``torch.nn.utils.clip_grad_norm_`` on copies. Returns (clipped copies,
    total L2 norm of all entries before clipping, a 0-d tensor)."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], norm


def fp8_quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: per-tensor scaling to FP8 (:func:`nanogpt_course.fp8.quantize`).
    Returns (x8 in ``dtype``, x's shape; inv_scale, 0-d fp32)."""
    return fp8.quantize(x, dtype)


def _ce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    masked = targets.clone()
    masked[0, :2] = -1
    masked[1, 4] = -1
    return [
        Case("one token", (torch.tensor([[[2.0, 0.5, -1.0]]]), torch.tensor([[0]]))),
        Case("batch (2, 5), V=11", (logits, targets)),
        Case("some targets -1", (logits, masked)),
        Case("large logits", (logits * 100, targets)),
    ]


def _adamw_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    p, grad = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    m, v = torch.randn(4, 3, generator=g) * 0.1, torch.rand(4, 3, generator=g) * 0.01
    zeros = torch.zeros(4, 3)
    return [
        Case("first step", (p, grad, zeros, zeros, 1), {"lr": 0.01}),
        Case("step 10 with state", (p, grad, m, v, 10), {"lr": 0.003, "beta1": 0.8}),
        Case("weight decay", (p, grad, m, v, 3), {"lr": 0.01, "weight_decay": 0.1}),
        Case("eps matters", (p, grad * 1e-6, zeros, zeros, 1), {"lr": 0.1, "eps": 1e-6}),
    ]


def _lr_cases() -> list[Case]:
    cases = []
    for step in (0, 4, 9, 10, 50, 60, 61, 80, 99, 100):
        cases.append(Case(f"step {step}", (step, 100, 10, 0.4, 0.05)))
    cases.append(Case("no warmup, all warmdown", (30, 100, 0, 1.0, 0.0)))
    cases.append(Case("no warmdown", (70, 100, 5, 0.0, 0.0)))
    return cases


def _clip_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g),
             torch.randn(2, 2, 2, generator=g)]
    return [
        Case("small: nothing clipped", ([0.01 * t for t in grads], 1.0)),
        Case("large: scaled down", ([10 * t for t in grads], 1.0)),
        Case("one tensor [3, 4] -> norm 5", ([torch.tensor([3.0, 4.0])], 2.5)),
        Case("norm exactly at max_norm", ([torch.tensor([3.0, 4.0])], 5.0)),
    ]


def _fp8_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g)
    return [
        Case("e4m3, random (6, 5)", (x, fp8.E4M3)),
        Case("e5m2, random (6, 5)", (x, fp8.E5M2)),
        Case("e4m3, tiny values", (x * 1e-5, fp8.E4M3)),
        Case("e4m3, bf16 input", (x.bfloat16() * 30, fp8.E4M3)),
        Case("all zeros", (torch.zeros(3, 4), fp8.E4M3)),
    ]


exercise("04_training_loop.cross_entropy", cross_entropy, _ce_cases, tol=1e-5,
         hint="log_softmax = logits - logsumexp(logits); pick the target's entry with gather; "
              "average only where targets != -1 (clamp -1 to 0 before gathering)")
exercise("04_training_loop.adamw_update", adamw_update, _adamw_cases, tol=1e-6,
         hint="decay first: p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; "
              "p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)")
exercise("04_training_loop.lr_multiplier", lr_multiplier, _lr_cases, tol=1e-9,
         hint="warmup: (step+1)/warmup_steps; warmdown starts at num_steps - "
              "round(warmdown_ratio*num_steps); in it, left = (num_steps-step)/warmdown_steps "
              "and the multiplier is left + (1-left)*final_lr_frac")
# tol 1e-5: the norm of the "large" case is ~41.7, where summation order alone moves fp32 by
# ~4e-6 (torch's foreach norm vs a stack-and-sum differ by CPU); a wrong formula is off by far more
exercise("04_training_loop.clip_grad_norm", clip_grad_norm, _clip_cases, tol=1e-5,
         hint="the norm is over all entries of all tensors: sqrt(sum of each tensor's squared "
              "sum); scale = min(1, max_norm / (norm + 1e-6)); multiply every gradient by it")
exercise("04_training_loop.fp8_quantize", fp8_quantize, _fp8_cases, tol=1e-6,
         hint="amax = x.abs().max().float().clamp(min=1e-12); scale = torch.finfo(dtype).max / "
              "amax; x8 = (x.float() * scale).clamp(-max, max).to(dtype); return x8, 1 / scale")
