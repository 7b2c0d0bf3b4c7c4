"""Rotary position embeddings (RoPE).

RoPE encodes a token's position by *rotating* its query and key vectors. Dimension ``i`` of
the first half of a head is paired with dimension ``i + D/2``; each pair is a 2-D point that
is rotated by the angle ``pos * theta_i`` with ``theta_i = base ** (-2i / D)``. Because a
rotation by ``a`` followed by the inverse rotation by ``b`` is a rotation by ``a - b``, the
dot product of a rotated query at position ``m`` and a rotated key at position ``n`` depends
on ``m - n`` only: attention sees relative positions, with no learned position table.

Pairing ``i`` with ``i + D/2`` (the "rotate half" layout) instead of neighbours ``2i, 2i+1``
is the same math on a permuted head; it only avoids a strided gather.
"""

from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """Angular speeds ``theta_i = base ** (-2i / head_dim)`` for ``i < head_dim / 2``.

    Returns a float32 tensor of shape (head_dim // 2,): fast rotations first, slow last.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return base ** (-exponents)


def rope_cos_sin(seq_len: int, head_dim: int, base: float = 10000.0, device=None):
    """Cos and sin tables for positions ``0 .. seq_len-1``.

    Returns ``(cos, sin)``, each float32 of shape (seq_len, head_dim // 2). The angles are
    computed in float64 so that long contexts keep full float32 accuracy.
    """
    freqs = rope_frequencies(head_dim, base, device=device).double()
    positions = torch.arange(seq_len, dtype=torch.float64, device=device)
    angles = torch.outer(positions, freqs)  # (T, D/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` by the angles in ``cos``/``sin``.

    x: (B, T, H, D); cos, sin: (T, D/2) for the positions of those T tokens.
    Returns a tensor of the same shape and dtype as ``x`` (the tables are cast to x's dtype,
    so bf16 activations stay bf16).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos[None, :, None, :].to(x.dtype)  # broadcast over batch and heads
    sin = sin[None, :, None, :].to(x.dtype)
    # A 2-D rotation of each point (x1, x2): (x1 cos - x2 sin, x1 sin + x2 cos).
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
