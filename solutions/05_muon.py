"""Worked solutions for lessons/05_muon."""

import math

import torch

from nanogpt_course.optim import orthogonalize


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T with the quintic Newton-Schulz iteration. G: (m, n)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G  # wide: X @ X.T is the smaller Gram matrix
    X = X / (X.norm() + 1e-7)  # every singular value now <= 1
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X  # p(x) = a x + b x^3 + c x^5 on each sigma
    return X.T if tall else X


def muon_step(weight: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, *,
              lr: float, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Muon step; returns (new weight, new momentum buffer)."""
    buf = momentum * momentum_buffer + (1 - momentum) * grad
    update = (1 - momentum) * grad + momentum * buf  # Nesterov: look ahead
    fan_out, fan_in = weight.shape
    scale = math.sqrt(max(1.0, fan_out / fan_in))
    return weight - lr * scale * orthogonalize(update), buf
