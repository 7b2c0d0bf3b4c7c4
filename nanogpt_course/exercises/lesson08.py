"""Checkers for lessons/08_scaling_laws: FLOPs per token by hand, the minimum of an isoFLOP
parabola, a power law fitted in log space."""

from __future__ import annotations

import numpy as np

from ..model import GPTConfig
from ..scaling_laws.fit import fit_parabola, fit_power_law
from ..scaling_laws.flops import flops_by_hand
from . import Case, exercise


def flops_per_token(config: GPTConfig) -> float:
    """Reference: training FLOPs per token of a GPT without value embeddings, at full
    context: 6 × (block matrices + lm_head) + 12 · layers · heads · head_dim · T."""
    return float(flops_by_hand(config)["total"])


def parabola_minimum(log_n: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """Reference: (x_min, loss_min) of the least-squares parabola through (log_n, loss)."""
    p = fit_parabola(log_n, loss)
    return float(p.x_min), float(p.y_min)


def power_law_fit(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Reference: (exponent, coefficient) of y = coefficient · c^exponent, least squares
    in log10-log10."""
    law = fit_power_law(c, y)
    return law.exponent, law.coefficient


def _flops_cases() -> list[Case]:
    shapes = {"d2, 64 wide, T=32": dict(n_layer=2, n_embd=64, n_head=2, sequence_len=32,
                                        vocab_size=256),
              "d4, 128 wide, T=128": dict(n_layer=4, n_embd=128, n_head=4, sequence_len=128,
                                          vocab_size=1000),
              "GQA: 8 heads, 2 kv heads": dict(n_layer=3, n_embd=256, n_head=8, n_kv_head=2,
                                               sequence_len=64, vocab_size=512),
              "d12 at nanochat's sizes": dict(n_layer=12, n_embd=768, n_head=6,
                                              sequence_len=2048, vocab_size=32768)}
    return [Case(name, (GPTConfig(value_embeds=False, **{"n_kv_head": kw["n_head"], **kw}),))
            for name, kw in shapes.items()]


def _parabola_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    x = np.array([5.0, 5.3, 5.6, 5.9, 6.2])
    cases = [Case("exact parabola", (x, 0.8 * (x - 5.7) ** 2 + 2.1)),
             Case("noisy, 5 sizes", (x, 1.5 * (x - 5.45) ** 2 + 3.0 + rng.normal(0, .01, 5))),
             Case("3 sizes", (x[:3], np.array([2.9, 2.7, 2.8])))]
    return cases


def _power_cases() -> list[Case]:
    c = np.array([1e17, 3e17, 1e18, 3e18])
    rng = np.random.default_rng(1)
    return [Case("exact, exponent 0.5", (c, 0.1 * c ** 0.5)),
            Case("noisy, exponent 0.7", (c, 3.0 * c ** 0.7 * np.exp(rng.normal(0, .05, 4)))),
            Case("decreasing (a loss)", (c, 40.0 * c ** -0.05))]


exercise("08_scaling_laws.flops_per_token", flops_per_token, _flops_cases, tol=0.5,
         hints=("a weight matrix W of shape (fan_in, fan_out) costs 2·fan_in·fan_out FLOPs per "
                "token forward and twice that backward; attention scores and the weighted sum "
                "cost 2·2·heads·head_dim·T forward per layer",
                "per layer: q and o are C×C, k and v are C×(n_kv_head·head_dim), the MLP is "
                "C×4C and 4C×C; the lm_head is C×padded_vocab_size",
                "6 * (L*(2*C*C + 2*C*kv + 8*C*C) + C*config.padded_vocab_size) "
                "+ 12 * L * n_head * head_dim * T"))
exercise("08_scaling_laws.parabola_minimum", parabola_minimum, _parabola_cases, tol=1e-6,
         hints=("fit loss = a·x² + b·x + c by least squares, then find where its derivative "
                "2a·x + b is zero",
                "a, b, c = np.polyfit(log_n, loss, 2); x* = -b / (2a); the loss there is "
                "c - b² / (4a)"))
exercise("08_scaling_laws.power_law_fit", power_law_fit, _power_cases, tol=1e-6,
         hints=("a power law is a straight line in log-log: log10 y = k·log10 c + log10 A",
                "slope, intercept = np.polyfit(np.log10(c), np.log10(y), 1); return slope, "
                "10 ** intercept"))
