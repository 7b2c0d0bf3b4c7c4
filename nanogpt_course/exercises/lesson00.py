"""Checkers for lessons/00_setup: one tiny exercise that proves the mechanism."""

from __future__ import annotations

import torch

from . import Case, exercise


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Reference: softmax over the last dimension. x: (..., n) -> (..., n), rows sum to 1."""
    return torch.softmax(x, dim=-1)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [
        Case("1-D", (torch.tensor([1.0, 2.0, 3.0]),)),
        Case("all equal", (torch.zeros(4),)),
        Case("large logits", (torch.tensor([1000.0, 1001.0, 999.0]),)),
        Case("batch (2, 5)", (torch.randn(2, 5, generator=g),)),
        # one row's max must not be subtracted from another row (x.max() without dim)
        Case("rows of different scale", (torch.tensor([[1.0, 2.0, 3.0], [1000.0, 1001.0, 999.0]]),)),
    ]


exercise(
    "00_setup.softmax",
    softmax,
    _cases,
    tol=1e-6,
    hint="subtract the row max before exp() so large logits do not overflow",
)
