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
# Lesson 02 built attention. Here we assemble the whole model and make it talk:
#
# 1. the **depth knob**: one number sizes the model;
# 2. the pieces of a block: **RMSNorm**, the **ReLU² MLP**, residual connections;
# 3. the **whole forward pass from scratch**, checked against `nanogpt_course.model.GPT`;
# 4. the **logit softcap** and the **loss**;
# 5. **counting parameters and FLOPs**;
# 6. **sampling**: temperature, top-k, top-p, streaming text;
# 7. the **KV cache**, and how much faster it makes generation.

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import torch
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
TRAIN_STEPS = presets.choose(PRESET, smoke=40, laptop=150, full=600)
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
    cfg = GPTConfig.from_depth(depth, vocab_size=VOCAB_GPT2, sequence_len=2048)
    with torch.device("meta"):
        big = GPT(cfg)
    counts = big.param_counts()
    print(f"{depth:>5} {cfg.n_embd:>6} {cfg.n_head:>5} {counts['total'] / 1e6:>8.0f}M "
          f"{(counts['total'] - counts['value_embeds']) / 1e6:>13.0f}M "
          f"{big.estimate_flops() / 1e9:>12.2f}")

# %% [markdown]
# The embedding tables have `padded_vocab_size` rows: the tokenizer's 50,259 rounded up to
# a multiple of 128 (50,304), which keeps the output matmul on fast GPU shapes. The logits
# are cut back to the real vocabulary, so the padding never shows.
#
# For this lesson we use a small byte-level model (vocabulary 256: one token per byte) so
# everything runs on a laptop CPU:

# %%
cfg = GPTConfig(sequence_len=SEQ_LEN, vocab_size=256, n_layer=N_LAYER, n_head=N_EMBD // 32,
                n_kv_head=N_EMBD // 32, n_embd=N_EMBD, window_pattern="SL")
model = GPT(cfg)
print(cfg)
print(f"windows per layer: {model.windows}")
print({k: f"{v:,}" for k, v in model.param_counts().items()})

# %% [markdown]
# ## 2. RMSNorm
#
# Before each attention and MLP layer, and before the output head, the model rescales each
# token's vector to unit root-mean-square: $x / \sqrt{\mathrm{mean}(x^2) + \epsilon}$.
# Unlike LayerNorm it does not subtract the mean, and here it has no learned gain either:

# %%
def rms_norm(x, eps=None):
    eps = torch.finfo(x.dtype).eps if eps is None else eps  # what F.rms_norm uses by default
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


xs = torch.randn(3, 5, N_EMBD) * 7
torch.testing.assert_close(rms_norm(xs), F.rms_norm(xs, (N_EMBD,)))
print("RMS of each normed vector:", rms_norm(xs).pow(2).mean(-1).sqrt()[0].tolist())

# %% [markdown]
# ## 3. The MLP: ReLU squared
#
# After attention mixes information *between* positions, the MLP transforms each position
# on its own: widen 4×, apply a nonlinearity, project back. The nonlinearity is
# $\mathrm{relu}(x)^2$: zero for negatives, a parabola for positives. It is as cheap as a
# ReLU and trained better than GELU in small-model speedruns.

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

# %%
block_mlp = model.blocks[0].mlp
with torch.no_grad():
    torch.testing.assert_close(mlp_relu2(xs, block_mlp.c_fc.weight, block_mlp.c_proj.weight),
                               block_mlp(xs))
print("mlp_relu2 == the model's MLP")

# %% [markdown]
# ## 4. The whole forward pass, from scratch
#
# A block is `x = x + attn(norm(x))` then `x = x + mlp(norm(x))`: each layer *adds* its
# output to a running sum, the **residual stream**. Two extras of modern small models:
#
# - **residual scalars**: before each block, $x \leftarrow \lambda_i x + \mu_i x_0$, where
#   $x_0$ is the normed embedding (so every layer can reach back to the raw tokens);
# - **value embeddings**: every other layer adds a learned per-token vector to its attention
#   values, through a per-head gate $2\,\sigma(W_g x_{[:32]})$.
#
# A freshly initialized model has its output projections at zero (each block starts as the
# identity), which would make the check below trivial, so we give every weight random
# values first. Then the forward pass, written with plain tensor operations and the pieces
# from lesson 02:

# %%
demo = GPT(cfg.replace(window_pattern="SL", short_window=SEQ_LEN // 4))
with torch.no_grad():
    for name, p in demo.named_parameters():
        if name.endswith(("c_proj.weight", "ve_gate.weight")) or name.startswith("lm_head"):
            p.normal_(0, 0.5 / math.sqrt(p.shape[1]))


def forward_from_scratch(m, idx):
    """Logits (B, T, vocab) of GPT ``m`` for tokens idx (B, T), written out."""
    c = m.config
    B, T = idx.shape
    H, Hkv, D = c.n_head, c.n_kv_head, c.head_dim
    cos, sin = rope.rope_cos_sin(T, D, c.rope_base)
    x = x0 = rms_norm(m.wte.weight[idx])  # embed, then norm
    for i, block in enumerate(m.blocks):
        x = m.resid_lambdas[i] * x + m.x0_lambdas[i] * x0
        a, h = block.attn, rms_norm(x)
        q = (h @ a.c_q.weight.T).view(B, T, H, D)
        k = (h @ a.c_k.weight.T).view(B, T, Hkv, D)
        v = (h @ a.c_v.weight.T).view(B, T, Hkv, D)
        if a.ve_gate is not None:  # value embedding, gated per kv head
            gate = 2 * torch.sigmoid(h[..., :32] @ a.ve_gate.weight.T)  # (B, T, Hkv)
            v = v + gate[..., None] * m.value_embeds[str(i)].weight[idx].view(B, T, Hkv, D)
        q, k = rope.apply_rope(rms_norm(q), cos, sin), rope.apply_rope(rms_norm(k), cos, sin)
        y = attention.reference_attention(q.transpose(1, 2), k.transpose(1, 2),
                                          v.transpose(1, 2), window=m.windows[i])
        x = x + y.transpose(1, 2).reshape(B, T, -1) @ a.c_proj.weight.T
        x = x + mlp_relu2(rms_norm(x), block.mlp.c_fc.weight, block.mlp.c_proj.weight)
    logits = (rms_norm(x) @ m.lm_head.weight.T)[..., : c.vocab_size]
    return c.softcap * torch.tanh(logits / c.softcap)


idx = torch.randint(0, 256, (2, SEQ_LEN))
with torch.no_grad():
    torch.testing.assert_close(forward_from_scratch(demo, idx), demo(idx), atol=1e-4, rtol=1e-4)
print("forward_from_scratch == GPT.forward")

# %% [markdown]
# ## 5. The logit softcap
#
# The last step squashes each logit smoothly into $(-15, 15)$ with
# $15 \tanh(z / 15)$. Small logits pass unchanged; huge ones, which would make the model
# overconfident and its training unstable, are capped. It is computed in float32 even when
# the rest runs in bfloat16, because $\tanh$ of a rounded input loses the small differences
# between the top candidates.

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
# ## 6. The loss
#
# Given targets (the next token at every position), `model(idx, targets)` returns the mean
# cross-entropy. Targets equal to `-1` are skipped: padding, or the user's turns in chat
# data. `reduction="none"` gives one loss per token (0 where skipped), which evaluation
# uses to score bits per byte.
#
# Before training, the predictions are close to uniform, so the loss starts near
# $\ln V = \ln 256 \approx 5.55$:

# %%
x_ids, y_ids = idx[:, :-1], idx[:, 1:].clone()
y_ids[:, :10] = -1  # ignore the first 10 targets of each row
loss = model(x_ids, y_ids)
per_token = model(x_ids, y_ids, reduction="none")
logits = model(x_ids)
keep = y_ids != -1
torch.testing.assert_close(loss, F.cross_entropy(logits[keep], y_ids[keep]))
print(f"initial loss {loss.item():.3f} (ln 256 = {math.log(256):.3f}); per-token shape "
      f"{tuple(per_token.shape)}, zero where ignored: {bool((per_token[~keep] == 0).all())}")

# %% [markdown]
# ## 7. Counting parameters
#
# Where do the parameters live? Per layer: $C^2$ for each of the query and output
# projections, $C \cdot H_{kv} D$ for keys and values, $8C^2$ for the MLP. Plus two
# vocabulary tables (token embedding and the untied output head), value embeddings on
# every other layer, and a few scalars.
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
      f"(model.num_params() = {model.num_params():,})")

# %% [markdown]
# ## 8. Counting FLOPs
#
# Training cost is measured in floating-point operations. A matmul with a weight of $N$
# entries costs $2N$ FLOPs per token forward and $4N$ backward: **6N** per token. Attention
# adds $12 \cdot H \cdot D \cdot W$ per layer and token ($W$ = keys seen, the window).
# Embedding lookups cost nothing. `estimate_flops()` adds these up; PyTorch's FLOP counter
# measures the real forward+backward, and its matmul part matches $6N$ exactly:

# %%
from torch.utils.flop_counter import FlopCounterMode

counter = FlopCounterMode(display=False)
with counter:
    demo(idx, idx).backward()
matmul_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "mm" in str(op))
kinds = demo.parameter_kinds()
gates = sum(b.attn.ve_gate.weight.numel() for b in demo.blocks if b.attn.ve_gate is not None)
n_matmul = sum(p.numel() for p in kinds["matrix"] + kinds["unembedding"]) + gates
print(f"FLOP counter, matmuls: {matmul_flops:,}")
print(f"6 N tokens:            {6 * n_matmul * idx.numel():,}")
print(f"estimate_flops() per token: {demo.estimate_flops():,} "
      f"(of which attention {demo.estimate_flops() - 6 * n_matmul:,})")

# %% [markdown]
# ## 9. Teach it a paragraph
#
# Sampling from an untrained model only produces noise, so let us first train ours for a
# moment on one paragraph (lesson 04 explains the training loop properly). The text has a
# few multi-byte characters on purpose.

# %%
TEXT = ("The café on the corner serves crème brûlée and strong coffee ☕. Every morning the "
        "baker opens at six, the first customers arrive at seven, and by noon the shelves "
        "are empty. ") * 4
data = torch.tensor(list(TEXT.encode("utf-8")))
print(f"{len(TEXT)} characters, {len(data)} bytes")

# %%
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
block, BATCH = min(SEQ_LEN, 64), presets.choose(PRESET, smoke=8, laptop=16, full=32)
for step in range(TRAIN_STEPS + 1):
    starts = torch.randint(0, len(data) - block - 1, (BATCH,))
    xb = torch.stack([data[s:s + block] for s in starts])
    yb = torch.stack([data[s + 1:s + block + 1] for s in starts])
    loss = model(xb, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % max(1, TRAIN_STEPS // 5) == 0:
        print(f"step {step:4d}  loss {loss.item():.3f}")
model = model.eval()

# %% [markdown]
# ## 10. Sampling
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
    next_logits = model(torch.tensor([prompt]))[0, -1]
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
# up to $p$. How many survive depends on how confident the model is:

# %%
for p in (0.5, 0.9, 0.99):
    kept = (~torch.isinf(top_p_filter(next_logits[None], p))).sum().item()
    print(f"top_p={p}: {kept} of 256 bytes can be sampled")
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
pieces = list(stream_text(model, tok, prompt, max_new_tokens=120, temperature=0.8, top_k=20,
                          seed=SEED))
print("The café" + "".join(pieces))
multi = [p for p in pieces if len(p.encode()) > 1 and "\ufffd" not in p]
print(f"{len(pieces)} pieces; multi-byte characters arrived whole: {multi[:6]}")

# %% [markdown]
# The same seed gives the same text; `temperature=0` is greedy:

# %%
a = list(generate(model, prompt, 40, temperature=0.8, seed=1))
b = list(generate(model, prompt, 40, temperature=0.8, seed=1))
print("same seed, same tokens:", a == b)
print("greedy:", tok.decode(prompt + list(generate(model, prompt, 60, temperature=0))))

# %% [markdown]
# ## 11. The KV cache
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
seq = torch.tensor([list(TEXT.encode())[: SEQ_LEN]])
cache = KVCache.for_model(model, batch_size=1)
with torch.no_grad():
    full = model(seq)
    steps = [model(seq[:, :8], kv_cache=cache)]  # prefill 8 tokens
    steps += [model(seq[:, t:t + 1], kv_cache=cache) for t in range(8, seq.shape[1])]
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
    out = list(generate(model, prompt[:8], n_new, temperature=0, use_cache=use_cache))
    timings[use_cache] = time.perf_counter() - start
    print(f"use_cache={use_cache!s:5}: {len(out)} tokens in {timings[use_cache]:.2f} s "
          f"({len(out) / timings[use_cache]:.0f} tok/s)")
print(f"speed-up: {timings[False] / timings[True]:.1f}x  (it grows with the context length)")

# %% [markdown]
# ## What next
#
# You have the complete model: `GPT(config)` with its loss, its parameter and FLOP
# counts, and fast generation. `lessons/04_training_loop` trains it properly: batches,
# AdamW, learning-rate schedules, gradient accumulation and bfloat16.
