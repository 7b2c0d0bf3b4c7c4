"""Worked solutions for lessons/08_scaling_laws."""

import numpy as np


def flops_per_token(config) -> float:
    """Training FLOPs per token of a GPT without value embeddings, at full context."""
    C, L, T = config.n_embd, config.n_layer, config.sequence_len
    kv = config.n_kv_head * config.head_dim
    matrices = L * (C * C + C * kv + C * kv + C * C  # q, k, v, o
                    + C * 4 * C + 4 * C * C)  # the MLP's two matrices (mlp_ratio 4)
    lm_head = C * config.padded_vocab_size  # padded rows are multiplied too
    attention = 12 * L * config.n_head * config.head_dim * T  # QK^T and A·V, fwd + bwd
    return float(6 * (matrices + lm_head) + attention)


def parabola_minimum(log_n: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """(x_min, loss_min) of the least-squares parabola through (log_n, loss)."""
    a, b, c = np.polyfit(log_n, loss, 2)
    x_min = -b / (2 * a)
    return float(x_min), float(c - b * b / (4 * a))


def power_law_fit(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of y = coefficient · c^exponent, fitted in log10-log10."""
    slope, intercept = np.polyfit(np.log10(c), np.log10(y), 1)
    return float(slope), float(10 ** intercept)
