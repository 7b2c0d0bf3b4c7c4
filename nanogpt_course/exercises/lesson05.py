"""Checkers for lessons/05_muon: Newton-Schulz from scratch, and one Muon step."""

from __future__ import annotations

import torch

from ..optim.muon import apply_muon_step_, muon_direction, orthogonalize
from . import Case, exercise


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Reference: the library's quintic Newton-Schulz. G: (m, n) -> (m, n), about U V^T."""
    return orthogonalize(G, steps)


def muon_step(weight: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, *,
              lr: float, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: one Muon step (Nesterov momentum, Newton-Schulz, shape-aware LR, no
    weight decay) on copies. Returns (new weight, new momentum buffer), both (m, n)."""
    weight, buf = weight.clone(), momentum_buffer.clone()
    direction = muon_direction(grad, buf, momentum=momentum)
    apply_muon_step_(weight, direction, lr=lr)
    return weight, buf


def _matrices() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"square 8x8": torch.randn(8, 8, generator=g),
            "tall 12x4": torch.randn(12, 4, generator=g),
            "wide 4x12": torch.randn(4, 12, generator=g)}


def _ns_cases() -> list[Case]:
    cases = [Case(name, (G,)) for name, G in _matrices().items()]
    G = _matrices()["square 8x8"]
    cases += [Case("1 step", (G, 1)), Case("3 steps", (G, 3))]
    return cases


def _step_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    cases = []
    for name, (m, n) in {"square": (6, 6), "tall (scale sqrt 2)": (8, 4),
                         "wide": (4, 8)}.items():
        W, G = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
        cases.append(Case(f"{name}, first step", (W, G, torch.zeros(m, n)),
                          {"lr": 0.02, "momentum": 0.95}))
        cases.append(Case(f"{name}, with momentum", (W, G, torch.randn(m, n, generator=g)),
                          {"lr": 0.1, "momentum": 0.9}))
    return cases


exercise("05_muon.newton_schulz", newton_schulz, _ns_cases, tol=1e-4,
         hint="normalize by the Frobenius norm first; work on the wide orientation "
              "(transpose tall inputs); each step X <- aX + (bA + cA^2)X with A = X X^T, "
              "(a, b, c) = (3.4445, -4.7750, 2.0315)")
exercise("05_muon.muon_step", muon_step, _step_cases, tol=1e-5,
         hint="buf <- momentum*buf + (1-momentum)*grad; u = (1-momentum)*grad + momentum*buf; "
              "W <- W - lr * sqrt(max(1, m/n)) * orthogonalize(u)")
