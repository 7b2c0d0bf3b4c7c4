"""Worked solutions for lessons/04_training_loop."""

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != -1. logits (B, T, V), targets (B, T) -> scalar."""
    logits = logits.float()
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, T, V)
    valid = targets != -1
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -(picked * valid).sum() / valid.sum()


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1=0.9, beta2=0.95,
                 eps=1e-8, weight_decay=0.0):
    """One AdamW step on copies: returns (param, exp_avg, exp_avg_sq)."""
    param = param * (1 - lr * weight_decay)  # decoupled weight decay
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad  # momentum: running mean of g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad  # running mean of g^2
    m_hat = exp_avg / (1 - beta1**step)  # bias correction: both start at 0
    v_hat = exp_avg_sq / (1 - beta2**step)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param, exp_avg, exp_avg_sq


def lr_multiplier(step, num_steps, warmup_steps, warmdown_ratio, final_lr_frac):
    """Linear warmup, constant 1, then linear warmdown to final_lr_frac at num_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    warmdown = round(warmdown_ratio * num_steps)
    start = num_steps - warmdown
    if warmdown == 0 or step <= start:
        return 1.0
    left = (num_steps - step) / warmdown
    return left + (1 - left) * final_lr_frac



def clip_grad_norm(grads, max_norm):
    """(clipped copies of grads, total norm before clipping as a 0-d tensor)."""
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()  # one norm for all
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # never scale up
    return [g * scale for g in grads], total


def fp8_quantize(x, dtype):
    """(x8 in dtype, inv_scale 0-d fp32) with x ~= x8.float() * inv_scale."""
    fmax = torch.finfo(dtype).max  # 448 for e4m3, 57344 for e5m2
    amax = x.abs().max().float().clamp(min=1e-12)  # an all-zero x must not divide by 0
    scale = fmax / amax  # the largest entry lands on the largest FP8 number
    x8 = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return x8, 1.0 / scale
