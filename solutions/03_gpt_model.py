"""Worked solutions for lessons/03_gpt_model."""

import torch
import torch.nn.functional as F


def mlp_relu2(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """relu(x W_fcᵀ)² W_projᵀ. x: (..., C), w_fc: (4C, C), w_proj: (C, 4C) → (..., C)."""
    hidden = F.relu(x @ w_fc.T)  # (..., 4C)
    return hidden.square() @ w_proj.T


def count_params(config) -> int:
    """Parameters of GPT(config), from the config alone."""
    C, L = config.n_embd, config.n_layer
    V = (config.vocab_size + 127) // 128 * 128  # rows are padded to a multiple of 128
    kv_dim = config.n_kv_head * (C // config.n_head)
    per_layer = C * C + 2 * C * kv_dim + C * C  # q, k, v, output projection
    per_layer += 2 * config.mlp_ratio * C * C  # MLP in and out
    total = 2 * V * C + L * per_layer  # token embedding + lm_head (untied) + blocks
    if config.value_embeds:
        ve_layers = sum(1 for i in range(L) if (L - 1 - i) % 2 == 0)
        total += ve_layers * (V * kv_dim + min(32, C) * config.n_kv_head)  # table + gate
    if config.residual_scalars:
        total += 2 * L  # one residual and one x0 scalar per layer
    return total


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (k may exceed the vocabulary); -inf elsewhere."""
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def block_forward(x, x0, resid_lambda, x0_lambda, attn, mlp):
    """One pre-norm block with the x0 side path. x, x0: (B, T, C) → (B, T, C)."""
    x = resid_lambda * x + x0_lambda * x0  # mix the embedding back in
    x = x + attn(F.rms_norm(x, (x.size(-1),)))  # attention reads a normed copy, adds to x
    return x + mlp(F.rms_norm(x, (x.size(-1),)))  # so does the MLP
