"""Counting training FLOPs three ways, and how far apart they are.

1. :func:`flops_by_hand`: the closed form, written out term by term. Per token, a matmul
   with a ``(fan_in, fan_out)`` weight costs ``2·fan_in·fan_out`` FLOPs forward and twice
   that backward (gradients of the input and of the weight): ``6 × weights`` in all. Per
   layer and token, attention adds ``QKᵀ`` and ``A·V``: ``2 × 2·heads·head_dim·T`` forward,
   × 3 with the backward = ``12·heads·head_dim·T`` (a full window of ``T`` keys, as FLOP
   counters and MFU conventions count it, although a causal mask skips half).
2. ``GPT.estimate_flops()``: the model's own count (the trainer turns ``--target-flops``
   into tokens with it), the same formula read off the parameters.
3. :func:`measured_flops_per_token`: ``torch.utils.flop_counter.FlopCounterMode`` counting
   every matmul of one real forward + backward step on the CPU.

Chinchilla's ``C = 6·N·D`` keeps only the weights. Here ``N`` is the *scaling parameter*
count, transformer matrices + lm_head (the count nanochat's scaling laws use, and what the
depth rules in ``nanogpt_course.train.scaling`` call ``scaling_params``): embedding lookups
and value embeddings are table reads, not matmuls, and the norms, RoPE, softmax and the
loss are elementwise (a few percent at most, counted by nobody here). The small value-
embedding gates are matmuls: ``estimate_flops()`` counts them, ``6N`` does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def scaling_params(model) -> int:
    """N of ``C = 6ND``: transformer matrices + lm_head (no embeddings, value embeddings,
    scalars)."""
    counts = model.param_counts()
    return counts["matrices"] + counts["lm_head"]


def flops_by_hand(config) -> dict[str, int]:
    """Training FLOPs per token of a ``GPTConfig`` at full context, term by term.

    Returns ``{"attention_matrices", "mlp", "ve_gates", "lm_head", "attention_scores",
    "total"}``: per layer ``q, o`` are ``C×C``, ``k, v`` are ``C×kv_dim``, the ReLU² MLP is
    ``C×(r·C)`` and ``(r·C)×C``; the lm_head is ``C×vocab`` (padded rows included, they are
    multiplied too); value-embedding gates are ``min(32, C)×kv_heads`` on the layers that
    have value embeddings.
    """
    from ..model import VE_GATE_CHANNELS

    C, L = config.n_embd, config.n_layer
    kv_dim = config.n_kv_head * config.head_dim
    attn = L * (2 * C * C + 2 * C * kv_dim)
    mlp = L * 2 * C * config.mlp_ratio * C
    gates = sum(min(VE_GATE_CHANNELS, C) * config.n_kv_head
                for layer in range(L) if config.has_value_embed(layer))
    lm_head = C * config.padded_vocab_size
    scores = sum(12 * config.n_head * config.head_dim * w for w in config.window_sizes())
    out = {"attention_matrices": 6 * attn, "mlp": 6 * mlp, "ve_gates": 6 * gates,
           "lm_head": 6 * lm_head, "attention_scores": scores}
    out["total"] = sum(out.values())
    return out


def measured_flops_per_token(model, *, batch_size: int = 1, seq_len: int | None = None,
                             seed: int = 0) -> float:
    """FLOPs of one training step (forward + backward, no optimizer) counted by
    ``FlopCounterMode``, divided by the ``batch_size × seq_len`` tokens of the step.

    Attention runs through SDPA's *math* backend here: the fused CPU kernel is one opaque op
    that the flop counter has no formula for (it would count zero), while the math backend
    is the same computation written with ``bmm``, which it does count. The step's result is
    unchanged; only what the counter can see differs.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    T = seq_len or model.config.sequence_len
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (batch_size, T), generator=gen).to(device)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(idx, idx).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / (batch_size * T)


@dataclass
class FlopsRow:
    """One row of the accounting table (FLOPs per training token)."""

    depth: int
    width: int
    seq_len: int
    scaling_params: int  # N: matrices + lm_head
    six_n: float  # 6N (Chinchilla)
    estimate: float  # GPT.estimate_flops()
    measured: float  # FlopCounterMode, one step
    by_hand: float  # flops_by_hand()["total"]

    @property
    def measured_over_estimate(self) -> float:
        return self.measured / self.estimate

    @property
    def six_n_over_estimate(self) -> float:
        return self.six_n / self.estimate

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(measured_over_estimate=self.measured_over_estimate,
                 six_n_over_estimate=self.six_n_over_estimate)
        return d


def accounting_row(config) -> FlopsRow:
    """Build the model of ``config`` on the CPU and count its FLOPs per token three ways."""
    from ..model import GPT

    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    n = scaling_params(model)
    return FlopsRow(depth=config.n_layer, width=config.n_embd, seq_len=config.sequence_len,
                    scaling_params=n, six_n=6.0 * n, estimate=float(model.estimate_flops()),
                    measured=measured_flops_per_token(model),
                    by_hand=float(flops_by_hand(config)["total"]))


def accounting_table(depths=(2, 4, 6), *, vocab_size: int = 8192, sequence_len: int = 512,
                     aspect_ratio: int = 64, head_dim: int = 128) -> list[FlopsRow]:
    """:func:`accounting_row` for each depth of the one-knob family (``from_depth``)."""
    from ..model import GPTConfig

    return [accounting_row(GPTConfig.from_depth(d, vocab_size=vocab_size,
                                                sequence_len=sequence_len,
                                                aspect_ratio=aspect_ratio, head_dim=head_dim))
            for d in depths]


def format_table(rows: list[FlopsRow]) -> str:
    """The rows as a Markdown table."""
    lines = ["| depth | width | seq | N (matrices + lm_head) | 6N | estimate_flops() | "
             "FlopCounterMode | measured / estimate | 6N / estimate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.depth} | {r.width} | {r.seq_len} | {r.scaling_params:,} | "
                     f"{r.six_n:.4g} | {r.estimate:.4g} | {r.measured:.4g} | "
                     f"{r.measured_over_estimate:.4f} | {r.six_n_over_estimate:.3f} |")
    return "\n".join(lines)
