"""Worked solutions for lessons/02_attention_rope."""

import math

import torch


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention where H query heads share H_kv kv heads. q (B, H, T, D),
    k, v (B, H_kv, T, D) → (B, H, T, D)."""
    group = q.shape[1] // k.shape[1]  # query heads per kv head
    k = k.repeat_interleave(group, dim=1)  # kv head j serves query heads j*group .. (j+1)*group-1
    v = v.repeat_interleave(group, dim=1)
    T, D = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T): query i vs key j
    future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))  # key j > i is in the future
    return torch.softmax(scores, dim=-1) @ v


def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """(T, T) bool: True where query i may see key j, i.e. j <= i and i - j < window."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & (i - j < window)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) of x (B, T, H, D) by the angles in cos/sin (T, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # broadcast over batch and heads
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
