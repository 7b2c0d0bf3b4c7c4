"""Schedules: learning rate, Muon momentum and weight decay as functions of the step.

All three are pure functions of ``step`` (and the horizon), so a resumed run recomputes
exactly the values an uninterrupted run used: nothing about them is stored in checkpoints.

- **LR**: linear warmup over ``warmup_steps`` (``(step + 1) / warmup``), constant, then a
  linear warmdown over the last ``warmdown_ratio`` of the run to ``final_lr_frac`` of the
  peak. The warmdown ("trapezoidal" / WSD schedule) reaches the loss of a cosine schedule
  while letting a run be extended or cut (Hägele et al. 2024, arXiv:2405.18392); nanochat
  pretrains with warmup 40, warmdown 0.65 and a final fraction 0.05.
- **Muon momentum**: 0.85 → 0.97 linearly over the first 400 steps (a low momentum early
  makes the first, large updates less noisy; modded-nanogpt / nanochat), then back down to
  0.90 during the LR warmdown.
- **Weight decay**: ``λ(step) = λ · ½(1 + cos(π · step / num_steps))``, a cosine to zero:
  decay matters early, when the weights are far from the data's solution, and only damps the
  final convergence at the end (nanochat's schedule).

The trainer applies them with :func:`apply`: ``group["lr"] = group["initial_lr"] · lrm``
for every group, momentum and weight decay on the Muon groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The schedule of one run: ``num_steps`` optimizer steps (``0 .. num_steps-1``)."""

    num_steps: int
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    momentum_start: float = 0.85
    momentum_peak: float = 0.97
    momentum_end: float = 0.90
    momentum_warmup_steps: int = 400
    weight_decay: float = 0.0  # the peak Muon weight decay (λ at step 0)
    weight_decay_schedule: str = "cosine"  # "cosine" | "constant"

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"a run needs at least 1 step, got num_steps={self.num_steps}")
        if not 0.0 <= self.warmdown_ratio <= 1.0:
            raise ValueError(f"warmdown_ratio must be in [0, 1], got {self.warmdown_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay_schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown weight_decay_schedule {self.weight_decay_schedule!r}")

    @property
    def warmdown_steps(self) -> int:
        return round(self.warmdown_ratio * self.num_steps)

    @property
    def warmdown_start(self) -> int:
        return self.num_steps - self.warmdown_steps

    def lr_multiplier(self, step: int) -> float:
        """Warmup, constant 1.0, then linear to ``final_lr_frac`` at ``step == num_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step <= self.warmdown_start or self.warmdown_steps == 0:
            return 1.0
        left = (self.num_steps - step) / self.warmdown_steps  # 1 → 0 across the warmdown
        return left + (1.0 - left) * self.final_lr_frac

    def muon_momentum(self, step: int) -> float:
        """0.85 → 0.97 over the momentum warmup, 0.97 → 0.90 across the LR warmdown."""
        if self.momentum_warmup_steps > 0 and step < self.momentum_warmup_steps:
            frac = step / self.momentum_warmup_steps
            return (1 - frac) * self.momentum_start + frac * self.momentum_peak
        if self.warmdown_steps > 0 and step >= self.warmdown_start:
            frac = (step - self.warmdown_start) / self.warmdown_steps
            return (1 - frac) * self.momentum_peak + frac * self.momentum_end
        return self.momentum_peak

    def weight_decay_at(self, step: int) -> float:
        """The Muon weight decay used at ``step``."""
        if self.weight_decay_schedule == "constant":
            return self.weight_decay
        return self.weight_decay * 0.5 * (1.0 + math.cos(math.pi * step / self.num_steps))

    def at(self, step: int) -> dict[str, float]:
        return {"lrm": self.lr_multiplier(step), "momentum": self.muon_momentum(step),
                "weight_decay": self.weight_decay_at(step)}


def apply(optimizer, schedule: Schedule, step: int) -> dict[str, float]:
    """Write the step's LR, momentum and weight decay into ``optimizer.param_groups``.

    Every group must carry ``initial_lr`` (the peak LR, set by ``build_optimizer``); groups
    with ``kind == "muon"`` also get ``momentum`` and ``weight_decay``. Returns the values.
    """
    values = schedule.at(step)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * values["lrm"]
        if group.get("kind") == "muon":
            group["momentum"] = values["momentum"]
            group["weight_decay"] = values["weight_decay"]
    return values
