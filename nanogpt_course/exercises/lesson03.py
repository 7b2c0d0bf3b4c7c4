"""Checkers for lessons/03_gpt_model: the ReLU² MLP, a block's residual arithmetic, counting
parameters, top-k sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import engine
from ..model import GPT, GPTConfig
from . import Case, exercise


def mlp_relu2(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """Reference: relu(x W_fcᵀ)² W_projᵀ. x: (..., C), w_fc: (4C, C), w_proj: (C, 4C)."""
    return F.relu(x @ w_fc.T).square() @ w_proj.T


def count_params(config: GPTConfig) -> int:
    """Reference: the number of parameters of GPT(config), counted on the meta device."""
    with torch.device("meta"):
        return GPT(config).num_params()


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: keep the k largest logits per row, the rest become -inf."""
    return engine.top_k_filter(logits, k)


def _mlp_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for name, (shape, C) in {"one vector": ((8,), 8), "batch (2, 5)": ((2, 5, 16), 16),
                             "wide": ((3, 32), 32)}.items():
        cases.append(Case(name, (torch.randn(*shape, generator=g),
                                 torch.randn(4 * C, C, generator=g) / C ** 0.5,
                                 torch.randn(C, 4 * C, generator=g) / (2 * C ** 0.5))))
    return cases


def _count_cases() -> list[Case]:
    small = dict(sequence_len=64, vocab_size=256, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    return [
        Case("plain (no extras)", (GPTConfig(**small, value_embeds=False,
                                             residual_scalars=False),)),
        Case("odd vocab 1000 (padded)", (GPTConfig(**{**small, "vocab_size": 1000},
                                                   value_embeds=False, residual_scalars=False),)),
        Case("residual scalars", (GPTConfig(**small, value_embeds=False),)),
        Case("value embeddings, 3 layers", (GPTConfig(**{**small, "n_layer": 3}),)),
        Case("GQA 4 heads / 1 kv", (GPTConfig(**{**small, "n_head": 4, "n_kv_head": 1}),)),
        Case("d12, GPT-2 vocab", (GPTConfig.from_depth(12, vocab_size=50259,
                                                       sequence_len=2048),)),
    ]


def _top_k_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    return [
        Case("k=2 of 5", (torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]]), 2)),
        Case("k=1", (torch.randn(3, 10, generator=g), 1)),
        Case("k = V keeps all", (torch.randn(2, 6, generator=g), 6)),
        Case("k > V keeps all", (torch.randn(2, 6, generator=g), 50)),
        Case("batch (4, 100), k=10", (torch.randn(4, 100, generator=g), 10)),
    ]


def _same_finite_and_inf(got, expected) -> float:
    """Max difference where finite; inf if the -inf pattern differs."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return float("inf")
    if not torch.equal(torch.isinf(got), torch.isinf(expected)):
        return float("inf")
    keep = ~torch.isinf(expected)
    return float((got[keep] - expected[keep]).abs().max()) if keep.any() else 0.0


exercise("03_gpt_model.mlp_relu2", mlp_relu2, _mlp_cases, tol=1e-5,
         hint="h = x @ w_fc.T; square relu(h); project back with @ w_proj.T")
exercise("03_gpt_model.count_params", count_params, _count_cases, tol=0,
         hint="padded vocab rows for wte and lm_head; per layer q,k,v,proj + MLP (8·C²); value "
              "embeddings on every other layer from the last; gates and 2 scalars per layer")
exercise("03_gpt_model.top_k_filter", top_k_filter, _top_k_cases, tol=0,
         compare=_same_finite_and_inf,
         hint="kth = logits.topk(k).values[..., -1:]; masked_fill(logits < kth, -inf)")


def block_forward(x: torch.Tensor, x0: torch.Tensor, resid_lambda: torch.Tensor,
                  x0_lambda: torch.Tensor, attn, mlp) -> torch.Tensor:
    """Reference: x ← λx + μx0; x ← x + attn(norm(x)); x ← x + mlp(norm(x)). (B, T, C)."""
    x = resid_lambda * x + x0_lambda * x0
    x = x + attn(F.rms_norm(x, (x.size(-1),)))
    return x + mlp(F.rms_norm(x, (x.size(-1),)))


def _block_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    cases = []
    for name, (B, T, C, lam, mu) in {"identity scalars (λ=1, μ=0)": (1, 4, 8, 1.0, 0.0),
                                     "λ=0.7, μ=0.3": (2, 5, 16, 0.7, 0.3),
                                     "large stream (norm matters)": (2, 3, 16, 1.2, -0.5)}.items():
        w_a = torch.randn(C, C, generator=g) / C ** 0.5
        w_fc = torch.randn(4 * C, C, generator=g) / C ** 0.5
        w_proj = torch.randn(C, 4 * C, generator=g) / (2 * C ** 0.5)
        scale = 10.0 if "large" in name else 1.0
        x = scale * torch.randn(B, T, C, generator=g)
        x0 = torch.randn(B, T, C, generator=g)
        attn = lambda h, w=w_a: torch.tanh(h @ w.T).cumsum(dim=1)  # noqa: E731 (mixes positions)
        mlp = lambda h, a=w_fc, b=w_proj: mlp_relu2(h, a, b)  # noqa: E731
        cases.append(Case(name, (x, x0, torch.tensor(lam), torch.tensor(mu), attn, mlp)))
    return cases


exercise("03_gpt_model.block_forward", block_forward, _block_cases, tol=1e-5,
         hint="first x = resid_lambda * x + x0_lambda * x0; then x = x + attn(norm(x)); then "
              "the same with mlp. Each reads a normed copy; the stream itself is never normed.")
