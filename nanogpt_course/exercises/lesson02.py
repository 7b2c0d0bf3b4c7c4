"""Checkers for lessons/02_attention_rope: causal attention, the window mask, RoPE."""

from __future__ import annotations

import torch

from .. import attention, rope
from . import Case, exercise


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: softmax(QKᵀ/√D + causal mask)V. q, k, v: (B, H, T, D) → (B, H, T, D)."""
    return attention.reference_attention(q, k, v)


def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """Reference: (T, T) bool, True where query i may see key j (j <= i, i - j < window)."""
    return attention.visible_mask(T, T, window=window)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Reference: rotate pairs (i, i + D/2) of x (B, T, H, D) by the angles in cos/sin (T, D/2)."""
    return rope.apply_rope(x, cos, sin)


def _qkv(B, H, T, D, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, D, generator=g) * scale for _ in range(3))


def _attention_cases() -> list[Case]:
    return [
        Case("1 head, T=4", _qkv(1, 1, 4, 8, 0)),
        Case("B=2, 3 heads, T=10", _qkv(2, 3, 10, 16, 1)),
        Case("single token", _qkv(1, 2, 1, 4, 2)),
        Case("large scores", _qkv(1, 2, 6, 8, 3, scale=20.0)),
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


exercise("02_attention_rope.causal_attention", causal_attention, _attention_cases, tol=1e-5,
         hint="scores = q @ k.transpose(-2, -1) / sqrt(D); fill j > i with -inf before softmax")
exercise("02_attention_rope.sliding_window_mask", sliding_window_mask, _mask_cases, tol=0,
         hint="compare i = arange(T)[:, None] with j = arange(T)[None, :]: j <= i and i - j < window")
exercise("02_attention_rope.apply_rope", apply_rope, _rope_cases, tol=1e-5,
         hint="x1, x2 = the two halves of the last dim; return cat([x1*cos - x2*sin, x1*sin + x2*cos])"
              " with cos/sin reshaped to (1, T, 1, D/2)")
