"""Worked solutions for lessons/00_setup."""

import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. x: (..., n) -> (..., n), each row sums to 1."""
    shifted = x - x.max(dim=-1, keepdim=True).values  # largest exponent is e^0 = 1
    weights = shifted.exp()
    return weights / weights.sum(dim=-1, keepdim=True)
