"""Checkers for lessons/02_attention_rope: grouped-query attention, the window mask, RoPE."""

from __future__ import annotations

import torch

from .. import attention, rope
from . import Case, exercise


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: causal attention, H query heads sharing H_kv kv heads (consecutive query
    heads share one). q (B, H, T, D), k, v (B, H_kv, T, D) → (B, H, T, D)."""
    return attention.reference_attention(q, k, v)


def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """Reference: (T, T) bool, True where query i may see key j (j <= i, i - j < window)."""
    return attention.visible_mask(T, T, window=window)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Reference: rotate pairs (i, i + D/2) of x (B, T, H, D) by the angles in cos/sin (T, D/2)."""
    return rope.apply_rope(x, cos, sin)


def _qkv(B, H, Hkv, T, D, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g) * scale
    return (q, *(torch.randn(B, Hkv, T, D, generator=g) * scale for _ in range(2)))


def _gqa_cases() -> list[Case]:
    return [
        Case("1 head, T=4 (plain attention)", _qkv(1, 1, 1, 4, 8, 0)),
        Case("4 heads share 2 kv heads", _qkv(2, 4, 2, 6, 8, 1)),
        Case("6 heads share 1 kv head", _qkv(1, 6, 1, 5, 4, 2)),
        Case("8 heads / 4 kv, large scores", _qkv(1, 8, 4, 7, 8, 3, scale=5.0)),
        Case("single token", _qkv(1, 4, 2, 1, 4, 4)),
    ]


def _mask_cases() -> list[Case]:
    return [Case("T=5, window=2", (5, 2)), Case("T=6, window=1", (6, 1)),
            Case("T=4, window=10 (= causal)", (4, 10)), Case("T=8, window=3", (8, 3))]


def _rope_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    cases = []
    for name, (B, T, H, D, base) in {"T=3, D=4": (1, 3, 1, 4, 10000.0),
                                     "B=2, T=7, 2 heads, D=8": (2, 7, 2, 8, 10000.0),
                                     "base 100, D=16": (1, 5, 3, 16, 100.0)}.items():
        cos, sin = rope.rope_cos_sin(T, D, base)
        cases.append(Case(name, (torch.randn(B, T, H, D, generator=g), cos, sin)))
    return cases


exercise("02_attention_rope.gqa_attention", gqa_attention, _gqa_cases, tol=1e-5,
         hint="each kv head serves H // H_kv consecutive query heads: copy it that many times "
              "along dim 1 (k.repeat_interleave), then scores, causal mask with -inf, softmax, "
              "@ v (section 4's batched_attention)")
exercise("02_attention_rope.sliding_window_mask", sliding_window_mask, _mask_cases, tol=0,
         hint="compare i = arange(T)[:, None] with j = arange(T)[None, :]: j <= i and i - j < window")
exercise("02_attention_rope.apply_rope", apply_rope, _rope_cases, tol=1e-5,
         hint="x1, x2 = the two halves of the last dim; return cat([x1*cos - x2*sin, x1*sin + x2*cos])"
              " with cos/sin reshaped to (1, T, 1, D/2)")
