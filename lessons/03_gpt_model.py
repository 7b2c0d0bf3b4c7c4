# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-all
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The GPT model
#
# Lesson 02 built attention out of plain functions. Here you turn those functions into a
# model you own: `MLP`, `CausalSelfAttention`, `Block` and `GPTModel`, each an `nn.Module`,
# written skeleton first and then filled in. Your model loads the library's weights and
# gives the same logits as `nanogpt_course.model.GPT`, so from then on the two are
# interchangeable: you train *your* model, then generate with the library's fast engine.
#
# 1. the **depth knob**: one number sizes the model;
# 2. the **residual stream**, drawn: where each part reads and writes;
# 3. a **skeleton** GPT that runs end to end with empty blocks;
# 4. the **ReLU² MLP**;
# 5. **attention** as a module, with value embeddings;
# 6. the **block**;
# 7. the **whole model**, checked against the library's on the same `state_dict`;
# 8. the **logit softcap** and the **loss**;
# 9. and 10. **counting parameters**, then **FLOPs**;
# 11. **training** your model; 12. **sampling** (temperature, top-k, top-p, streaming text);
# 13. the **KV cache**, and how much faster it makes generation.
#
# **Run time**, measured on a shared 2-core CPU (load average about 1): `smoke` 6 s,
# `laptop` 15 s (up to twice that on a busier machine). `full` (a 6-layer, 256-wide byte
# model) is an estimate: about 2 minutes on a CPU, seconds on a GPU. The one longer cell,
# training, prints progress.

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanogpt_course import attention, exercises, presets, rope
from nanogpt_course.engine import KVCache, generate, sample_next_token, stream_text, top_p_filter
from nanogpt_course.model import GPT, GPTConfig

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
SEED = 0

# %%
PRESET = presets.validate(PRESET)
N_LAYER = presets.choose(PRESET, smoke=2, laptop=4, full=6)
N_EMBD = presets.choose(PRESET, smoke=64, laptop=128, full=256)
SEQ_LEN = presets.choose(PRESET, smoke=64, laptop=256, full=512)
TRAIN_STEPS = presets.choose(PRESET, smoke=40, laptop=200, full=1000)
torch.manual_seed(SEED)
print(f"preset {PRESET!r}: {N_LAYER} layers x {N_EMBD} wide, context {SEQ_LEN}, "
      f"{TRAIN_STEPS} training steps")

# %% [markdown]
# ## 1. One knob: depth
#
# The course sizes every model with a single number, `DEPTH`. The number of layers is the
# depth; the width is `64 × depth` rounded up to a whole number of 128-wide attention heads.
# `GPTConfig.from_depth` applies that rule. Building the model on PyTorch's **meta** device
# allocates no memory, so we can inspect even the big ones here:

# %%
VOCAB_GPT2 = 50259  # GPT-2's 50257 tokens + the two chat tokens <|im_start|>, <|im_end|>
print(f"{'depth':>5} {'width':>6} {'heads':>5} {'params':>9} {'no value emb.':>14} {'GFLOP/token':>12}")
for depth in (6, 12, 20):
    big_cfg = GPTConfig.from_depth(depth, vocab_size=VOCAB_GPT2, sequence_len=2048)
    with torch.device("meta"):
        big = GPT(big_cfg)
    counts = big.param_counts()
    print(f"{depth:>5} {big_cfg.n_embd:>6} {big_cfg.n_head:>5} {counts['total'] / 1e6:>8.0f}M "
          f"{(counts['total'] - counts['value_embeds']) / 1e6:>13.0f}M "
          f"{big.estimate_flops() / 1e9:>12.2f}")

# %% [markdown]
# The embedding tables have `padded_vocab_size` rows: the tokenizer's 50,259 rounded up to
# a multiple of 128 (50,304), which keeps the output matmul on fast GPU shapes. The logits
# are cut back to the real vocabulary, so the padding never shows.
#
# For this lesson we use a small byte-level model (vocabulary 256: one token per byte) so
# everything runs on a laptop CPU. It alternates a short sliding window (`S`) with full
# context (`L`), so your attention module has to handle both:

# %%
cfg = GPTConfig(sequence_len=SEQ_LEN, vocab_size=256, n_layer=N_LAYER, n_head=N_EMBD // 32,
                n_kv_head=N_EMBD // 64, n_embd=N_EMBD, window_pattern="SL",
                short_window=SEQ_LEN // 4)
print(cfg)
print(f"head_dim {cfg.head_dim}, {cfg.n_head} query heads sharing {cfg.n_kv_head} kv heads; "
      f"windows per layer {cfg.window_sizes()}; value embeddings on layers "
      f"{[i for i in range(cfg.n_layer) if cfg.has_value_embed(i)]}")

# %% [markdown]
# ## 2. The residual stream
#
# A GPT is a vertical **stream** of vectors, one per position, that every layer reads from
# and adds to. The embedding starts it; each block reads a normed copy, computes something
# and *adds* it back; the head reads the end. Two side paths of modern small models feed
# every block as well:
#
# - **x0**: the normed embedding is kept aside, and before each block the stream becomes
#   $\lambda_i x + \mu_i x_0$ (two learned scalars per layer), so every layer can reach
#   back to the raw tokens;
# - **value embeddings**: every other layer (ending with the last) looks the tokens up in
#   a second table and adds that vector to its attention *values*, scaled by a learned
#   per-head gate $2\,\sigma(W_g\, x_{[:32]})$. The gate starts at zero weights, so
#   $2\sigma(0) = 1$: at initialization the value embedding is simply added, and training
#   learns where to turn it up or down; 32 channels are enough to decide that, and keep the
#   gate tiny.

# %%
def draw_residual_stream(ax):
    """The stream (a vertical line) with one block's two branches and the two side paths."""
    blue = dict(boxstyle="round,pad=0.35", fc="#eef3fb", ec="#4a6fa5")
    orange = dict(boxstyle="round,pad=0.35", fc="#fdf1e3", ec="#c77d2a")
    node = dict(boxstyle="circle,pad=0.15", fc="white", ec="#333333")
    box = {}
    for name, (x, y, text, style) in {
            "tok": (0.35, 0.02, "token ids (B, T)", blue), "wte": (0.35, 0.12, "wte → RMSNorm", blue),
            "x0": (0.06, 0.12, "x0", orange), "mix": (0.35, 0.26, "x ← λᵢ·x + μᵢ·x0", blue),
            "add1": (0.35, 0.46, "+", node), "attn": (0.70, 0.38, "RMSNorm → attention", blue),
            "ve": (0.70, 0.24, "value embedding veᵢ[ids] · gate", orange),
            "add2": (0.35, 0.68, "+", node), "mlp": (0.70, 0.60, "RMSNorm → ReLU² MLP", blue),
            "head": (0.35, 0.83, "RMSNorm → lm_head → softcap", blue),
            "out": (0.35, 0.94, "logits (B, T, V)", blue)}.items():
        box[name] = ax.text(x, y, text, ha="center", va="center", bbox=style, fontsize=9)

    def arrow(a, b, src=(0.5, 1), dst=(0.5, 0), **style):
        props = dict(arrowstyle="->", color="#333333", lw=1.2, shrinkA=2, shrinkB=2)
        ax.annotate("", xy=dst, xycoords=box[b], xytext=src, textcoords=box[a],
                    arrowprops={**props, **style})

    for a, b in [("tok", "wte"), ("wte", "mix"), ("mix", "add1"), ("add1", "add2"),
                 ("add2", "head"), ("head", "out")]:
        arrow(a, b)  # the stream itself: straight up, nothing but additions on the way
    arrow("wte", "x0", src=(0, 0.5), dst=(1, 0.5), ls="--")  # keep the embedding aside
    arrow("x0", "mix", src=(0.5, 1), dst=(0, 0.5))
    arrow("ve", "attn")
    for branch, add in (("attn", "add1"), ("mlp", "add2")):  # read a normed copy, add back
        ax.annotate("", xy=(0, 0.5), xycoords=box[branch], textcoords="data",
                    xytext=(0.35, box[branch].get_position()[1]),
                    arrowprops=dict(arrowstyle="->", color="#4a6fa5", lw=1.2, shrinkB=2))
        arrow(branch, add, src=(0.5, 1), dst=(1, 0.5), color="#4a6fa5")
    ax.add_patch(plt.Rectangle((0.2, 0.19), 0.78, 0.55, fill=False, ls=":", ec="grey"))
    ax.text(0.21, 0.755, "block i (repeated n_layer times)", fontsize=8, color="grey")
    ax.set_xlim(-0.05, 1.05), ax.set_ylim(-0.03, 1), ax.axis("off")


fig, ax = plt.subplots(figsize=(7, 6))
draw_residual_stream(ax)
ax.set_title("the residual stream of one block, with its two side paths")
plt.show()

# %% [markdown]
# ## 3. A skeleton first
#
# Before writing any part, write the model's outline and make it run: an embedding table,
# a stack of blocks that do nothing yet, a final norm and the output head. Every shape is
# then already right, and each part we fill in can be tested in place.

# %%
def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) over the last dimension; (..., C) → (..., C), no learned gain."""
    eps = torch.finfo(x.dtype).eps  # what F.rms_norm uses by default
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


class DummyBlock(nn.Module):
    """A placeholder block: returns the stream unchanged."""

    def forward(self, x):
        return x


class SkeletonGPT(nn.Module):
    """Embedding → n_layer empty blocks → norm → head. idx (B, T) → logits (B, T, vocab)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(DummyBlock() for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)

    def forward(self, idx):
        x = rms_norm(self.wte(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(rms_norm(x))[..., : self.config.vocab_size]  # (B, T, vocab)


skeleton = SkeletonGPT(cfg)
idx = torch.randint(0, 256, (2, SEQ_LEN))
print(f"skeleton: ids {tuple(idx.shape)} → logits {tuple(skeleton(idx).shape)}")

# %% [markdown]
# `rms_norm` above is the model's only normalization. Unlike LayerNorm it does not
# subtract the mean, and here it has no learned gain either. It matches PyTorch's:

# %%
xs = torch.randn(3, 5, N_EMBD) * 7
torch.testing.assert_close(rms_norm(xs), F.rms_norm(xs, (N_EMBD,)))
print("RMS of each normed vector:", [round(v, 4) for v in rms_norm(xs).pow(2).mean(-1).sqrt()[0].tolist()])

# %% [markdown]
# ## 4. The MLP: ReLU squared
#
# After attention mixes information *between* positions, the MLP transforms each position
# on its own: widen 4×, apply a nonlinearity, project back. The nonlinearity is
# $\mathrm{relu}(x)^2$: zero for negatives, a parabola for positives. It is as cheap as a
# ReLU and trained better than GELU in small-model speedruns (modded-nanogpt's races to
# a target loss).

# %%
grid = torch.linspace(-3, 3, 200)
plt.figure(figsize=(5, 3))
plt.plot(grid, F.relu(grid).square(), label="relu(x)²")
plt.plot(grid, F.gelu(grid), label="gelu(x)")
plt.legend()
plt.title("MLP nonlinearities")
plt.show()

# %% [markdown]
# ### Exercise: the ReLU² MLP
#
# `w_fc` has shape (4C, C) and `w_proj` (C, 4C), as PyTorch's `nn.Linear` stores them
# (output × input), so a layer is `x @ w.T`.

# %%
def mlp_relu2(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """relu(x W_fcᵀ)² W_projᵀ. x: (..., C), w_fc: (4C, C), w_proj: (C, 4C) → (..., C)."""
    raise NotImplementedError("exercise: widen, relu, square, project back")


# %%
mlp_relu2 = exercises.check("03_gpt_model.mlp_relu2", mlp_relu2)

# %% [markdown]
# Now the module: two `nn.Linear` layers without bias hold the weights, and `forward`
# calls your function. The attribute names (`c_fc`, `c_proj`) are the library's, so the
# two models' `state_dict`s will have the same keys.

# %%
class MLP(nn.Module):
    """(B, T, C) → (B, T, C): widen mlp_ratio×, relu², project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x):
        return mlp_relu2(x, self.c_fc.weight, self.c_proj.weight)


# %% [markdown]
# ### What the backward pass keeps
#
# Training keeps, for every layer, the tensors its backward pass will need. The MLP's
# hidden tensors are 4× wider than everything else, so they are a large part of the memory
# of a training step. The derivative of $\mathrm{relu}(h)^2$ is $2\,\mathrm{relu}(h)$,
# and $\mathrm{relu}(h) = \sqrt{\mathrm{relu}(h)^2}$: the output $a$ alone is enough for
# the backward pass, and $a$ is kept anyway (the second matmul's weight gradient reads it).
# The library's `model.relu_squared` is an autograd function built on that: it keeps $a$
# and never the pre-activation $h$. Under `torch.compile` on a GPU that is one wide
# tensor less per layer (4.5 GiB at d12 with 32 × 2048 tokens; docs/PERFORMANCE.md).
# Same gradient as autograd on the readable version:

# %%
from nanogpt_course.model import relu_squared, relu_squared_reference

h = torch.randn(4, 8, requires_grad=True)
g = torch.randn(4, 8)
(grad_fast,) = torch.autograd.grad(relu_squared(h), h, g)
(grad_readable,) = torch.autograd.grad(relu_squared_reference(h), h, g)
torch.testing.assert_close(grad_fast, grad_readable)
print("gradient from the output alone matches autograd:", torch.equal(grad_fast, grad_readable)
      or "(to rounding)")

# %% [markdown]
# ### What the matmul could do on its way out
#
# On a GPU a matmul computes its output tile by tile, each tile in registers before it is
# written to memory. The readable MLP writes $h$ (B·T × 4C) to memory, then a second kernel
# reads it back to write $a = \mathrm{relu}(h)^2$; the backward pass does the same with
# $\partial a$ and $\partial h = \partial a \cdot 2\sqrt{a}$. Both extra kernels only move
# memory. A matmul that applies relu² to each tile *before* storing it (an **epilogue**)
# never writes $h$ at all, and one that multiplies by $2\sqrt{a}$ before storing never
# writes $\partial a$. That is `nanogpt_course/fused_mlp.py` (a Triton kernel, opt-in with
# `NANOGPT_COURSE_MLP=fused` until its speed is measured against cuBLAS; see
# docs/PERFORMANCE.md). On the CPU it runs the same math in PyTorch, so we can check it
# against your function, output and gradients:

# %%
from nanogpt_course.fused_mlp import relu2_mlp

demo = [torch.randn(2, 5, 8), torch.randn(32, 8), torch.randn(8, 32)]  # x, w_fc, w_proj
demo = [t.requires_grad_() for t in demo]
y_fused, y_yours = relu2_mlp(*demo), mlp_relu2(*demo)
torch.testing.assert_close(y_fused, y_yours)
g_demo = torch.randn_like(y_yours)
for fused_grad, your_grad in zip(torch.autograd.grad(y_fused, demo, g_demo),
                                 torch.autograd.grad(y_yours, demo, g_demo)):
    torch.testing.assert_close(fused_grad, your_grad)
print("fused MLP: same output and gradients as yours")

# %% [markdown]
# Fusing changes where the numbers travel, not what they are. Which of the two is faster
# depends on whether a hand-written Triton matmul keeps up with cuBLAS's: the two pointwise
# kernels it removes took about 8 ms of a 127 ms d12 step on an H100 (the backward's
# epilogue still reads $a$ once), the risk is a slower matmul.

# %% [markdown]
# ## 5. Attention, as a module
#
# Everything here comes from lesson 02: project the normed input to queries, keys and
# values; QK-norm; RoPE; causal attention over grouped kv heads, with this layer's window.
# We call the library's versions of lesson 02's functions (`rope.apply_rope`,
# `attention.causal_attention`), which you checked there. New is the value embedding:
# layers that have one get `ve` (B, T, kv_dim) and add it to the values through the gate.

# %%
class CausalSelfAttention(nn.Module):
    """Grouped-query attention with QK-norm, RoPE and an optional value embedding."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        C, self.head_dim = config.n_embd, config.head_dim
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.c_q = nn.Linear(C, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        # the gate reads the first 32 channels and gives one number per kv head
        self.ve_gate = (nn.Linear(min(32, C), self.n_kv_head, bias=False)
                        if config.has_value_embed(layer) else None)

    def forward(self, x, ve, cos, sin, window):
        """x: (B, T, C) normed; ve: (B, T, kv_dim) or None; cos, sin: (T, D/2) → (B, T, C)."""
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))  # (B, T, Hkv)
            v = v + gate[..., None] * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = rope.apply_rope(rms_norm(q), cos, sin), rope.apply_rope(rms_norm(k), cos, sin)
        y = attention.causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       window=window)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


# %% [markdown]
# ## 6. The block
#
# A block first mixes the x0 side path into the stream, then adds attention's output, then
# the MLP's, each reading a normed copy of the stream ("pre-norm"): the stream itself is
# never normalized, so what one layer writes reaches every later layer, only rescaled by
# the $\lambda$'s.
#
# ### Exercise: one block's residual arithmetic
#
# Write `block_forward`: $x \leftarrow \lambda x + \mu x_0$, then
# $x \leftarrow x + \mathrm{attn}(\mathrm{norm}(x))$, then
# $x \leftarrow x + \mathrm{mlp}(\mathrm{norm}(x))$. `attn` and `mlp` are callables
# (B, T, C) → (B, T, C); `resid_lambda` and `x0_lambda` are 0-dimensional tensors. Use
# `F.rms_norm(x, (C,))` (or your `rms_norm`) for the norm.

# %%
def block_forward(x: torch.Tensor, x0: torch.Tensor, resid_lambda: torch.Tensor,
                  x0_lambda: torch.Tensor, attn, mlp) -> torch.Tensor:
    """One pre-norm block with the x0 side path. x, x0: (B, T, C) → (B, T, C)."""
    raise NotImplementedError("exercise: mix in x0, then two residual adds of f(norm(x))")


# %%
block_forward = exercises.check("03_gpt_model.block_forward", block_forward)

# %%
class Block(nn.Module):
    """Attention + MLP around the residual stream (see block_forward)."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, x0, resid_lambda, x0_lambda, ve, cos, sin, window):
        attend = lambda h: self.attn(h, ve, cos, sin, window)  # noqa: E731
        return block_forward(x, x0, resid_lambda, x0_lambda, attend, self.mlp)


# %% [markdown]
# ## 7. The whole model
#
# `GPTModel` is the skeleton with real blocks, plus what the blocks need from outside:
# the RoPE tables (a non-persistent buffer: computed, never saved), the value-embedding
# tables (an `nn.ModuleDict` keyed by layer number), the per-layer scalars $\lambda$ and
# $\mu$, and the logit softcap (section 8). With `targets` it returns the loss.

# %%
class GPTModel(nn.Module):
    """idx (B, T) int64 → logits (B, T, vocab_size), or the mean loss given targets (B, T)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V, C, L = config.padded_vocab_size, config.n_embd, config.n_layer
        kv_dim = config.n_kv_head * config.head_dim
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(L))
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(V, kv_dim) for i in range(L) if config.has_value_embed(i)})
        self.lm_head = nn.Linear(C, V, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(L)) if config.residual_scalars else None
        self.x0_lambdas = nn.Parameter(torch.zeros(L)) if config.residual_scalars else None
        cos, sin = rope.rope_cos_sin(config.sequence_len, config.head_dim, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.windows = config.window_sizes()

    def forward(self, idx, targets=None):
        B, T = idx.shape
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = x0 = rms_norm(self.wte(idx))
        one, zero = torch.ones(()), torch.zeros(())
        for i, block in enumerate(self.blocks):
            lam = self.resid_lambdas[i] if self.resid_lambdas is not None else one
            mu = self.x0_lambdas[i] if self.x0_lambdas is not None else zero
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, x0, lam, mu, ve, cos, sin, self.windows[i])
        logits = self.lm_head(rms_norm(x))[..., : self.config.vocab_size]
        cap = self.config.softcap
        logits = cap * torch.tanh(logits / cap) if cap else logits
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


mine = GPTModel(cfg)
print(f"GPTModel: {sum(p.numel() for p in mine.parameters()):,} parameters, "
      f"logits {tuple(mine(idx).shape)}")

# %% [markdown]
# ### Does it match the library?
#
# Give the library's `GPT` random weights everywhere (a fresh one has its output
# projections at zero, so every block starts as the identity and a comparison would prove
# little), copy its `state_dict` into your model (`strict=True`: every key must match, in
# name and shape), and compare the logits:

# %%
reference = GPT(cfg)
with torch.no_grad():
    for name, p in reference.named_parameters():
        if name.endswith(("c_proj.weight", "ve_gate.weight")) or name.startswith("lm_head"):
            p.normal_(0, 0.5 / math.sqrt(p.shape[1]))
        elif name.endswith("lambdas"):
            p.uniform_(0.5, 1.5)
mine.load_state_dict(reference.state_dict(), strict=True)
with torch.no_grad():
    torch.testing.assert_close(mine(idx), reference(idx), atol=1e-4, rtol=1e-4)
print(f"{len(reference.state_dict())} tensors loaded; GPTModel logits == library GPT logits")

# %% [markdown]
# From here on the two are the same model: you can train `GPTModel` and hand its weights
# to the library (section 11 does that for fast generation), or the other way round.
#
# ## 8. The logit softcap and the loss
#
# The last step squashes each logit smoothly into $(-15, 15)$ with $15 \tanh(z / 15)$.
# Small logits pass unchanged; huge ones, which would make the model overconfident and its
# training unstable, are capped. (The library computes it in float32 even when the rest
# runs in bfloat16: $\tanh$ of a rounded input loses the small differences between the top
# candidates.)

# %%
z = torch.linspace(-60, 60, 400)
plt.figure(figsize=(5, 3))
plt.plot(z, z, ":", label="no cap")
plt.plot(z, 15 * torch.tanh(z / 15), label="15·tanh(z/15)")
plt.ylim(-40, 40)
plt.legend()
plt.title("logit softcap")
plt.show()

# %% [markdown]
# Given targets (the next token at every position), the model returns the mean
# cross-entropy. Targets equal to `-1` are skipped: padding, or the user's turns in chat
# data. The library's `reduction="none"` gives one loss per token (0 where skipped), which
# evaluation uses to score bits per byte. A fresh model predicts nearly uniformly, so the
# loss starts near $\ln V = \ln 256 \approx 5.55$:

# %%
model = GPTModel(cfg)
model.load_state_dict(GPT(cfg).state_dict())  # the library's init: zero output projections, tiny lm_head
x_ids, y_ids = idx[:, :-1], idx[:, 1:].clone()
y_ids[:, :10] = -1  # ignore the first 10 targets of each row
with torch.no_grad():
    loss = model(x_ids, y_ids)
    keep = y_ids != -1
    torch.testing.assert_close(loss, F.cross_entropy(model(x_ids)[keep], y_ids[keep]))
    per_token = reference(x_ids, y_ids, reduction="none")
print(f"initial loss {loss.item():.3f} (ln 256 = {math.log(256):.3f}); library per-token "
      f"losses {tuple(per_token.shape)}, zero where ignored: {bool((per_token[~keep] == 0).all())}")

# %% [markdown]
# ### The loss's gradient, by hand
#
# Backpropagation starts at the loss, and its first step has a closed form. For one
# position with capped logits $z = c \tanh(x / c)$ and target $t$, the loss is
# $\log \sum_j e^{z_j} - z_t$, so
#
# $$\frac{\partial \text{loss}}{\partial z_j} = \mathrm{softmax}(z)_j - [j = t],
# \qquad \frac{\partial z_j}{\partial x_j} = 1 - \tanh^2(x_j / c).$$
#
# The probabilities minus the one-hot target, bent by the softcap's slope. Written out and
# checked against autograd on a few rows of logits:

# %%
c = cfg.softcap
x = 20 * torch.randn(3, cfg.vocab_size, requires_grad=True)  # big enough to feel the cap
t = torch.tensor([5, 17, -1])  # the last row is ignored
per_row = F.cross_entropy(c * torch.tanh(x / c), t, ignore_index=-1, reduction="none")
(autograd_grad,) = torch.autograd.grad(per_row.sum(), x)

th = torch.tanh(x.detach() / c)
by_hand = (torch.softmax(c * th, dim=-1) - F.one_hot(t.clamp(min=0), cfg.vocab_size))
by_hand = by_hand * (1 - th**2) * (t != -1).unsqueeze(1)  # ignored rows: no gradient
torch.testing.assert_close(by_hand, autograd_grad)
print("softmax − one-hot, times the cap's slope: matches autograd")

# %% [markdown]
# Nothing in that formula needs the rest of the network: it can be computed the moment the
# loss is. The library's fused loss (`nanogpt_course/fused_loss.py`, what the trainer uses on
# a GPU) does just that: one pass over the logits computes each row's loss *and* writes this
# gradient over the logits, which are not needed again, so the backward pass starts from a
# finished gradient instead of reading the logits a second time. On an H100 at d12 that pass
# takes 4.5 ms where the compiled softcap and cross-entropy took 7.6 (forward and backward),
# for the same loss. Its readable version is the formula above, applied in place:

# %%
from nanogpt_course.fused_loss import softcap_cross_entropy_grad_reference_

buffer = x.detach().clone()
losses = softcap_cross_entropy_grad_reference_(buffer, t, vocab_size=cfg.vocab_size, softcap=c)
torch.testing.assert_close(losses, per_row.detach())
torch.testing.assert_close(buffer, autograd_grad)
print("the library's in-place step: same losses, and the logits now hold their gradient")

# %% [markdown]
# ## 9. Counting parameters
#
# Where do the parameters live? Per layer: $C \cdot H D$ for the query and $C^2$ for the
# output projection, $C \cdot H_{kv} D$ each for keys and values, $8C^2$ for the MLP. Plus
# two vocabulary tables (token embedding and the untied output head), each with
# `padded_vocab_size` rows; value embeddings on every other layer (ending with the last),
# each a table of `padded_vocab_size` × $H_{kv} D$ plus its gate, a matrix of
# $H_{kv} \times \min(32, C)$; and two scalars, $\lambda$ and $\mu$, per layer.
#
# ### Exercise: count the parameters from the config alone

# %%
def count_params(config: GPTConfig) -> int:
    """The number of parameters of GPT(config), computed from the config's fields."""
    raise NotImplementedError("exercise: add up the tables, the block matrices and the extras")


# %%
count_params = exercises.check("03_gpt_model.count_params", count_params)

# %%
print(f"this lesson's model: {count_params(cfg):,} parameters "
      f"(GPTModel has {sum(p.numel() for p in model.parameters()):,})")

# %% [markdown]
# Where they sit, for the course's real models (GPT-2 vocabulary, built on the meta device):

# %%
parts = ["matrices", "embeddings", "lm_head", "value_embeds", "scalars"]
depths = (6, 12, 20)
table = {}
for depth in depths:
    with torch.device("meta"):
        table[depth] = GPT(GPTConfig.from_depth(depth, vocab_size=VOCAB_GPT2, sequence_len=2048)).param_counts()
fig, ax = plt.subplots(figsize=(6, 3.5))
bottom = [0.0] * len(depths)
for part in parts:
    vals = [table[d][part] / 1e6 for d in depths]
    ax.bar([f"d{d}" for d in depths], vals, bottom=bottom, label=part)
    bottom = [b + v for b, v in zip(bottom, vals)]
ax.set_ylabel("parameters (millions)")
ax.legend()
ax.set_title("where the parameters are")
plt.show()
for d in depths:
    share = {p: table[d][p] / table[d]["total"] for p in parts[:4]}
    print(f"d{d}: " + ", ".join(f"{p} {s:.0%}" for p, s in share.items()))

# %% [markdown]
# At d6 the value embeddings are about half of all parameters, and the block matrices,
# where the "thinking" happens, barely a tenth. The reason: a value-embedding table has a
# row of width $H_{kv} D = C$ for each of the 50,304 vocabulary entries, one table per
# value-embedded layer (half the layers), so it grows like $V \cdot C \cdot L/2$ while the
# blocks grow like $12\,C^2 L$. With $V = 50{,}304$ and $C = 384$, one table (19M) is bigger than
# all six blocks together (11M). They are cheap, though: a lookup costs no FLOPs, which is
# why `estimate_flops()` leaves them out, and why parameter counts of small models with
# value embeddings say little about their compute. As $C$ grows, the matrices' share
# grows (about 10% at d6, 22% at d12, 34% at d20); they overtake the value embeddings
# only around d34, where $C \approx V / 24$.
#
# ## 10. Counting FLOPs
#
# Training cost is measured in floating-point operations. A matmul with a weight of $N$
# entries costs $2N$ FLOPs per token forward and $4N$ backward: **6N** per token. Embedding
# lookups cost nothing.
#
# Attention adds two matmuls per query and head that grow with the number of keys the
# query sees: the scores $q \cdot k$ and the weighted sum of values, $2 \cdot 2 D$ FLOPs
# forward per key and head, so $12\,H D$ per key for forward + backward. How many keys?
# Under the causal mask, the query at position $i$ sees $\min(i+1, W)$ keys, where $W$ is
# the window ($W = T$ at full context). Averaged over a sequence of $T$ that is
# $W - W(W-1)/(2T)$: about $(T+1)/2$ at full context and about $0.75\,W$ when $W = T/2$.
# `estimate_flops()` counts the full $W$ keys per query (the convention of FLOP counters
# and of MFU figures, the share of the GPU's peak FLOPs a run actually uses), so its
# attention part overstates the work the causal mask leaves by
# up to 2×:

# %%
T = cfg.sequence_len
for i, W in enumerate(cfg.window_sizes()):
    seen = sum(min(p + 1, W) for p in range(T)) / T
    print(f"layer {i}: window {W:4d}, keys seen on average {seen:7.2f} "
          f"(formula {W - W * (W - 1) / (2 * T):7.2f}), estimate_flops counts {W}")

# %% [markdown]
# PyTorch's FLOP counter measures a real forward + backward. Its matmul part matches
# $6N$ exactly. It has no formula for the CPU attention kernel, so it counts 0 FLOPs
# there (on a GPU it counts flash attention's full $T \times T$ table); the last line
# below shows what it adds beyond the matmuls:

# %%
from torch.utils.flop_counter import FlopCounterMode

counter = FlopCounterMode(display=False)
with counter:
    reference(idx, idx).backward()
matmul_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "mm" in str(op))
kinds = reference.parameter_kinds()
gates = sum(b.attn.ve_gate.weight.numel() for b in reference.blocks if b.attn.ve_gate is not None)
n_matmul = sum(p.numel() for p in kinds["matrix"] + kinds["unembedding"]) + gates
print(f"FLOP counter, matmuls: {matmul_flops:,}")
print(f"6 N tokens:            {6 * n_matmul * idx.numel():,}")
print(f"estimate_flops() per token: {reference.estimate_flops():,} "
      f"(of which attention {reference.estimate_flops() - 6 * n_matmul:,})")
print(f"FLOP counter beyond the matmuls: {counter.get_total_flops() - matmul_flops:,}")

# %% [markdown]
# ## 11. Train your model
#
# Sampling from an untrained model only produces noise, so let us train `GPTModel` for a
# moment (lesson 04 explains the training loop properly). The text: a paragraph with a
# few multi-byte characters on purpose, plus the documentation of a few Python modules,
# so the model cannot simply memorise it all and stays unsure about many next bytes.

# %%
import argparse
import collections
import csv
import heapq
import json

PARAGRAPH = ("The café on the corner serves crème brûlée and strong coffee ☕. Every morning the "
             "baker opens at six, the first customers arrive at seven, and by noon the shelves "
             "are empty. ")
TEXT = "\n\n".join([PARAGRAPH * 3] + [m.__doc__ or "" for m in (argparse, json, collections,
                                                                heapq, csv)])
data = torch.tensor(list(TEXT.encode("utf-8")))
print(f"{len(TEXT):,} characters, {len(data):,} bytes")

# %%
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
# windows of at most 64 bytes keep the CPU training quick; the model never sees
# positions past 64 here (sampling below goes further: that is extrapolation)
block, BATCH = min(SEQ_LEN, 64), presets.choose(PRESET, smoke=8, laptop=16, full=32)
start = time.perf_counter()
for step in range(TRAIN_STEPS + 1):
    starts = torch.randint(0, len(data) - block - 1, (BATCH,))
    xb = torch.stack([data[s:s + block] for s in starts])
    yb = torch.stack([data[s + 1:s + block + 1] for s in starts])
    loss = model(xb, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % max(1, TRAIN_STEPS // 5) == 0:
        print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)")

# %% [markdown]
# Your model is trained. For generation, the library's `GPT` has what ours lacks, a KV
# cache (section 13), so we move the weights over. Same `state_dict`, same logits:

# %%
lib_model = GPT(cfg)
lib_model.load_state_dict(model.state_dict())
lib_model.eval()
with torch.no_grad():
    torch.testing.assert_close(lib_model(xb), model(xb), atol=1e-4, rtol=1e-4)
print("trained GPTModel weights loaded into the library's GPT; logits agree")

# %% [markdown]
# ## 12. Sampling
#
# The model gives logits; turning them into a next token is a choice:
#
# - **greedy** (temperature 0): always the most likely token; repetitive;
# - **temperature** $\tau$: sample from $\mathrm{softmax}(z / \tau)$; below 1 sharpens,
#   above 1 flattens the distribution;
# - **top-k**: sample only among the $k$ most likely tokens;
# - **top-p** (nucleus): only among the most likely tokens that together hold probability $p$.

# %%
prompt = list("The café".encode())
with torch.no_grad():
    next_logits = lib_model(torch.tensor([prompt]))[0, -1]
top = next_logits.topk(8).indices
plt.figure(figsize=(6, 3))
for tau in (0.5, 1.0, 2.0):
    plt.plot(range(8), torch.softmax(next_logits / tau, -1)[top], "o-", label=f"τ = {tau}")
plt.xticks(range(8), [repr(chr(t)) for t in top.tolist()])
plt.ylabel("probability")
plt.legend()
plt.title("next-byte distribution after 'The café'")
plt.show()

# %% [markdown]
# ### Exercise: top-k filtering
#
# Keep the $k$ largest logits of each row and set the others to $-\infty$ (so softmax gives
# them probability 0). $k$ may be larger than the vocabulary.

# %%
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (..., V); every other entry becomes -inf."""
    raise NotImplementedError("exercise: find the k-th largest value, mask everything below it")


# %%
top_k_filter = exercises.check("03_gpt_model.top_k_filter", top_k_filter)

# %% [markdown]
# Top-p needs a sort: take tokens from most to least likely until their probabilities add
# up to $p$. How many survive depends on how sure the model is, which changes from one
# position to the next. Here, for every position of a window of the text (its last
# `SEQ_LEN` bytes, from the module documentation), the number of bytes top-p keeps:

# %%
with torch.no_grad():
    rows = lib_model(data[-SEQ_LEN:][None])[0]  # (SEQ_LEN, 256): one row of logits per position
for p in (0.5, 0.9, 0.99):
    kept = (~torch.isinf(top_p_filter(rows, p))).sum(-1).float()
    print(f"top_p={p}: keeps {kept.min():.0f} to {kept.max():.0f} of 256 bytes "
          f"(median {kept.median():.0f}); after 'The café': "
          f"{int((~torch.isinf(top_p_filter(next_logits[None], p))).sum())}")
g = torch.Generator().manual_seed(SEED)
picks = sample_next_token(top_k_filter(next_logits[None], 3).expand(1000, -1), generator=g)
print("1000 draws with top-k = 3 only ever pick:", sorted({chr(t) for t in picks.tolist()}))

# %% [markdown]
# `generate` runs the loop: logits → sample → append → repeat, yielding one token at a
# time. `stream_text` turns them into text as they come. A byte-level model produces the
# character "é" as two tokens, so a naive stream would print half a character;
# `stream_text` holds a piece back until its character is complete. (A barely trained
# byte model can also emit byte sequences that are not valid UTF-8 at all; those print
# as �, exactly as `bytes.decode(errors="replace")` shows them.)

# %%
class ByteTokenizer:
    """One token per byte. decode() shows incomplete UTF-8 as U+FFFD, like real tokenizers."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


tok = ByteTokenizer()
start_text = "The café on the corner serves cr"
pieces = list(stream_text(lib_model, tok, list(start_text.encode()), max_new_tokens=120,
                          temperature=0.8, top_k=20, seed=SEED))
print(start_text + "".join(pieces))
multi = [p for p in pieces if len(p.encode()) > 1 and "\ufffd" not in p]
print(f"{len(pieces)} pieces; multi-byte characters arrived whole: {multi[:6]}")

# %% [markdown]
# The same seed gives the same text; `temperature=0` is greedy:

# %%
a = list(generate(lib_model, prompt, 40, temperature=0.8, seed=1))
b = list(generate(lib_model, prompt, 40, temperature=0.8, seed=1))
print("same seed, same tokens:", a == b)
print("greedy:", tok.decode(prompt + list(generate(lib_model, prompt, 60, temperature=0))))

# %% [markdown]
# ## 13. The KV cache
#
# Generating token $t+1$ needs attention of the newest query over all keys and values
# $1..t$. Recomputing them from scratch every step costs a full forward pass over the whole
# sequence per token. But the keys and values of earlier tokens never change (attention is
# causal), so we can keep them: a **KV cache** holds, for every layer, a preallocated
# (batch, kv heads, time, head dim) buffer. Generation becomes:
#
# 1. **prefill**: run the prompt once, filling the cache;
# 2. **decode**: feed only the newest token; it attends to the cache and appends its own
#    key and value.
#
# The logits are the same as the full forward pass's, position by position:

# %%
seq = data[:SEQ_LEN][None]
cache = KVCache.for_model(lib_model, batch_size=1)
with torch.no_grad():
    full = lib_model(seq)
    steps = [lib_model(seq[:, :8], kv_cache=cache)]  # prefill 8 tokens
    steps += [lib_model(seq[:, t:t + 1], kv_cache=cache) for t in range(8, seq.shape[1])]
torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
print(f"cache filled to {cache.pos} positions; keys stored as {tuple(cache.k.shape)} "
      "(layers, batch, kv heads, time, head dim)")

# %% [markdown]
# How much faster is it? Generate the same number of tokens with and without the cache:

# %%
n_new = SEQ_LEN - 8
timings = {}
for use_cache in (False, True):
    start = time.perf_counter()
    out = list(generate(lib_model, prompt[:8], n_new, temperature=0, use_cache=use_cache))
    timings[use_cache] = time.perf_counter() - start
    print(f"use_cache={use_cache!s:5}: {len(out)} tokens in {timings[use_cache]:.2f} s "
          f"({len(out) / timings[use_cache]:.0f} tok/s)")
print(f"speed-up: {timings[False] / timings[True]:.1f}x  (it grows with the context length)")

# %% [markdown]
# ## What next
#
# You have built the complete model as modules you own, proved it equal to the library's,
# trained it, and generated from it with a KV cache. `lessons/04_training_loop` trains it
# properly: batches, your own AdamW, learning-rate schedules, gradient clipping, gradient
# accumulation and bfloat16.
