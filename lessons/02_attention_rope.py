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
# # 02 · Attention and rotary positions
#
# Attention is the one place in a transformer where tokens exchange information. Every
# other layer works on each position alone. In this lesson you build it from nothing:
#
# 0. a **worked example** with five named tokens and every number printed;
# 1. **scores**: how well each query matches each key;
# 2. the **causal mask**: a token may only look back;
# 3. **softmax** and the weighted sum of values;
# 4. **multiple heads**, and what the heads of a small *trained* model look at (a preview:
#    it uses pieces sections 6 to 10 explain, so treat it as a black box for now);
# 5. **sliding windows**, and how a GPU skips the tiles a window rules out;
# 6. heads that share keys and values (**GQA**);
# 7. why attention alone cannot see order;
# 8. **RoPE**: positions as rotations (one pair, drawn);
# 9. why the scores then depend only on distance, and how they fade with it;
# 10. **QK-norm**: keeping scores in a range where softmax stays soft.
#
# Each piece is written plainly first, then checked against `nanogpt_course`, whose
# versions the model in lesson 03 uses.
#
# **Run time**, measured as a script on a 2-core CPU shared with other jobs (load average
# about 4, `OMP_NUM_THREADS=1`): `smoke` 10 s, `laptop` 16 s, with the small checkpoint of
# section 4 already cached (building it once takes about 15 s more on an idle machine;
# other lessons and the tests share it). `full` is an estimate: about 30 s, the demos are
# only a little longer.

# %%
import math
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from nanogpt_course import attention, checkpoint, exercises, presets, rope
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.train import tiny

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
SEED = 0

# %%
PRESET = presets.validate(PRESET)
T_DEMO = presets.choose(PRESET, smoke=12, laptop=32, full=64)  # tokens in the demos
COPY_STEPS = presets.choose(PRESET, smoke=150, laptop=300, full=600)  # the copying task
torch.manual_seed(SEED)
print(f"preset {PRESET!r}: demo sequences of {T_DEMO} tokens")

# %% [markdown]
# ## 0. A worked example: "the cat sat on mats"
#
# Before any matrices, one query by hand. Give five tokens made-up 3-number vectors (a
# real model learns thousands of such numbers), and let each vector serve as query, key
# and value at once (the simplest attention; real layers first multiply by learned
# matrices, section 4). Which earlier words should "on" pay attention to?

# %%
words = ["the", "cat", "sat", "on", "mats"]
vectors = torch.tensor([[0.1, 0.1, 0.1],   # the:  a little of everything
                        [0.9, 0.1, 0.3],   # cat:  an animal
                        [0.2, 0.9, 0.1],   # sat:  an action
                        [0.1, 0.7, 0.6],   # on:   a relation, close to the action
                        [0.7, 0.0, 0.8]])  # mats: a thing, something to be on
query = vectors[3]  # "on"
seen = vectors[:4]  # causal: "on" sees itself and the words before it
scores = seen @ query
weights = torch.softmax(scores / math.sqrt(3), dim=0)  # why divide by √3: section 1
for word, sc, w in zip(words, scores.tolist(), weights.tolist()):
    print(f"  'on' . {word!r:7} = {sc:.2f}   weight {w:.3f}")
context = weights @ seen
print(f"weights sum to {weights.sum():.3f}; the new vector for 'on' = {[round(v, 3) for v in context.tolist()]}")

# %% [markdown]
# Among the earlier words "on" matches "sat" best (their vectors point in similar
# directions), so "sat" gets the largest weight after "on" itself (a vector always matches
# itself well), and the output for "on" is pulled toward the action. The weights stay
# close to even because 3-number vectors give small scores; a real model's larger vectors
# give sharper ones. "mats" gets no weight at all: it comes later, and a language model
# may not look ahead (section 2).
# The rest of the lesson is this computation for every token at once, with learned
# projections, several heads and positions.
#
# ## 1. Scores: queries against keys
#
# Each token emits three vectors: a **query** ("what am I looking for?"), a **key**
# ("what do I contain?") and a **value** ("what do I pass on if chosen?"). The score of
# query $i$ against key $j$ is their dot product, $s_{ij} = q_i \cdot k_j$.
#
# We divide by $\sqrt{D}$, with $D$ the length of each query and key vector. Why: if the
# entries of $q$ and $k$ are independent with
# variance 1, their dot product is a sum of $D$ such products, so its variance is $D$.
# Unscaled, scores grow with the head size and the softmax turns into a hard max.

# %%
for D in (4, 64, 256):
    q, k = torch.randn(10_000, D), torch.randn(10_000, D)
    raw = (q * k).sum(-1)
    print(f"D={D:4d}: std of q·k = {raw.std():6.2f}   std of q·k/√D = {(raw / math.sqrt(D)).std():.2f}")

# %% [markdown]
# For a whole sequence, all scores come out of one matrix product: with $Q$ and $K$ of
# shape (T, D), the scores are $QK^\top/\sqrt{D}$, a (T, T) table.

# %%
D = 8
q, k, v = torch.randn(T_DEMO, D), torch.randn(T_DEMO, D), torch.randn(T_DEMO, D)
scores = q @ k.T / math.sqrt(D)
print("scores:", tuple(scores.shape), "  row 0:", scores[0, :4].tolist())

# %% [markdown]
# ## 2. The causal mask
#
# A language model predicts token $t+1$ from tokens $\le t$. If position $i$ could read
# key $j > i$ during training, it would simply copy the answer. So we set every score
# above the diagonal to $-\infty$: after the softmax, those weights are exactly 0.

# %%
future = torch.triu(torch.ones(T_DEMO, T_DEMO, dtype=torch.bool), diagonal=1)
masked = scores.masked_fill(future, float("-inf"))
weights = torch.softmax(masked, dim=-1)  # each row sums to 1 over the visible keys
print("row sums:", weights.sum(-1)[:4].tolist())
print("weights above the diagonal:", weights[future].abs().max().item())

# %%
plt.figure(figsize=(4, 3.5))
plt.imshow(weights, cmap="viridis")
plt.xlabel("key position j")
plt.ylabel("query position i")
plt.title("causal attention weights")
plt.colorbar()
plt.show()

# %% [markdown]
# ## 3. The weighted sum of values
#
# Each output is a mixture of the values it attended to: $y_i = \sum_j w_{ij} v_j$, i.e.
# $Y = WV$. Put together, single-head causal attention is four lines:

# %%
def naive_attention(q, k, v):
    """One head: q, k, v (T, D) → (T, D)."""
    scores = q @ k.T / math.sqrt(q.shape[-1])
    future = torch.triu(torch.ones(len(q), len(k), dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


y = naive_attention(q, k, v)
print("output:", tuple(y.shape))

# %% [markdown]
# PyTorch ships the same computation as one fused kernel,
# `F.scaled_dot_product_attention` (on a GPU it runs *flash attention*, which never stores
# the (T, T) table). It works on (batch, heads, T, D) tensors:

# %%
fused = F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None], is_causal=True)
torch.testing.assert_close(fused[0, 0], y)
print("naive attention == F.scaled_dot_product_attention")

# %% [markdown]
# ## 4. Many heads
#
# One head computes one kind of "lookup". A transformer runs $H$ of them side by side, each
# on its own slice of width $D = C / H$ of the model's $C$ channels, then concatenates the
# results. In code that is only a reshape: (B, T, C) → (B, T, H, D) → (B, H, T, D).

# %%
B, C, H = 2, 32, 4
x = torch.randn(B, T_DEMO, C)
w_q, w_k, w_v = (torch.randn(C, C) / math.sqrt(C) for _ in range(3))


def split_heads(t):
    """(B, T, C) → (B, H, T, C/H): head h gets channels h·D .. (h+1)·D - 1."""
    return t.view(B, T_DEMO, H, C // H).transpose(1, 2)


qh, kh, vh = split_heads(x @ w_q), split_heads(x @ w_k), split_heads(x @ w_v)
per_head = torch.stack([torch.stack([naive_attention(qh[b, h], kh[b, h], vh[b, h])
                                     for h in range(H)]) for b in range(B)])
print("per-head outputs:", tuple(per_head.shape))

# %% [markdown]
# The library's `attention.causal_attention` does all heads and the batch at once (on a
# GPU: flash attention). Same numbers:

# %%
torch.testing.assert_close(attention.causal_attention(qh, kh, vh), per_head)
print("loops over heads == attention.causal_attention")

# %% [markdown]
# The loops are not needed: `@` broadcasts over the leading dimensions, so the four lines
# of `naive_attention` work on (B, H, T, D) tensors as they are, all heads at once:

# %%
def batched_attention(q, k, v):
    """softmax(QKᵀ/√D + causal mask)V for q, k, v (B, H, T, D) → (B, H, T, D)."""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


torch.testing.assert_close(batched_attention(qh, kh, vh), per_head, atol=1e-5, rtol=1e-5)
print("batched_attention == the loops over batch and heads")

# %% [markdown]
# ### What trained heads look at
#
# So far the queries and keys were random, so the weights were noise. In a trained model
# each head learns its own lookup. `tiny.tiny_checkpoint()` is a 2-layer, 64-wide GPT
# with 2 heads per layer, trained for a few seconds on Python's documentation and source
# (built once, then cached; lessons and tests share it). It is far too small, and trained
# far too briefly, to be smart: we look at what its heads do anyway.
#
# To see the weights we recompute each layer's attention from its input: a forward
# pre-hook records what every attention module receives, and `attention_weights` repeats
# the module's first steps (projections, QK-norm, RoPE) and returns the softmax table.
# Multiplying that table by the values and applying the output projection must give the
# module's own output, which we check.

# %%
tiny_model = checkpoint.load(tiny.tiny_checkpoint(), device="cpu")
lm, tok = tiny_model.model, tiny_model.tokenizer
sample = "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))\nprint(add(4, 5))\n"
ids = tok.encode(sample)[:40]
labels = [tok.decode([t]) for t in ids]
inputs = {}
hooks = [block.attn.register_forward_pre_hook(
    lambda module, args, layer=i: inputs.__setitem__(layer, args))
    for i, block in enumerate(lm.blocks)]
with torch.no_grad():
    lm(torch.tensor([ids]))
for hook in hooks:
    hook.remove()


def attention_weights(attn, h, ve, cos, sin):
    """(H, T, T) softmax weights of attention module ``attn`` for its normed input h (1, T, C),
    and its output (1, T, C) recomputed from them."""
    B, T, C = h.shape
    q = attn.c_q(h).view(B, T, attn.n_head, attn.head_dim)
    k = attn.c_k(h).view(B, T, attn.n_kv_head, attn.head_dim)
    v = attn.c_v(h).view(B, T, attn.n_kv_head, attn.head_dim)
    if ve is not None:  # the value embedding (lesson 03)
        v = v + 2 * torch.sigmoid(attn.ve_gate(h[..., : attn.ve_gate.in_features]))[..., None] * ve.view_as(v)
    q = rope.apply_rope(F.rms_norm(q, (attn.head_dim,)), cos, sin).transpose(1, 2)
    k = rope.apply_rope(F.rms_norm(k, (attn.head_dim,)), cos, sin).transpose(1, 2)
    group = attn.n_head // attn.n_kv_head
    k, v = k.repeat_interleave(group, dim=1), v.transpose(1, 2).repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    out = attn.c_proj((weights @ v).transpose(1, 2).reshape(B, T, C))
    return weights[0], out


maps = {}
with torch.no_grad():
    for layer, (h, ve, cos, sin, *_) in inputs.items():
        weights, out = attention_weights(lm.blocks[layer].attn, h, ve, cos, sin)
        torch.testing.assert_close(out, lm.blocks[layer].attn(h, ve, cos, sin, None),
                                   atol=1e-4, rtol=1e-4)
        maps[layer] = weights
print(f"{len(ids)} tokens; recomputed weights reproduce every attention module's output")

# %%
n_layers, n_heads = len(maps), maps[0].shape[0]
fig, axes = plt.subplots(n_layers, n_heads, figsize=(4.2 * n_heads, 4.2 * n_layers), squeeze=False)
shown = [repr(t)[1:-1] for t in labels]
for layer in range(n_layers):
    for head in range(n_heads):
        ax = axes[layer][head]
        ax.imshow(maps[layer][head], cmap="viridis")
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
        ax.set_xticks(range(len(ids)), shown, rotation=90, fontsize=6)
        ax.set_yticks(range(len(ids)), shown, fontsize=6)
plt.tight_layout()
plt.show()
uniform = (1 / torch.arange(2, len(ids) + 1).float()).mean().item()  # rows 1.. spread evenly
print(f"a row that spreads its weight evenly gives each visible token {uniform:.3f} on average")
for layer in range(n_layers):
    for head in range(n_heads):
        w = maps[layer][head]
        prev = w.diagonal(-1).mean().item()  # weight on the token just before
        self_w = w.diagonal()[1:].mean().item()
        first = w[1:, 0].mean().item()
        print(f"layer {layer} head {head}: mean weight on itself {self_w:.3f}, on the previous "
              f"token {prev:.3f}, on the first token {first:.3f}")

# %% [markdown]
# Read a row as "when predicting after this token, where does the head look". After 80
# training steps these heads are still soft: most rows spread their weight over many
# tokens, and the printed averages sit close to the even spread, a little above it for
# the tokens a head prefers. Longer-trained models sharpen into recognizable patterns: a
# head that looks at the **previous token** (a bright line just below the diagonal), heads
# that find an earlier copy of the current token and look at what followed it
# ("induction" heads, the basis of copying), and weight piling up on the **first token**
# (a "sink": a place to put attention when nothing else fits). `attention_weights` works
# on any checkpoint: try it on the model lesson 09 trains.

# %% [markdown]
# ### Sharp heads, in seconds: a copying task
#
# To see sharp patterns without hours of training, give a model a task that needs them.
# Each row is 12 random tokens followed by the same 12 again. The first half cannot be
# predicted; the second half can: the next token is the one that came *after* the
# earlier occurrence of the current token, which here always sits 11 positions back. We
# train the library's GPT (2 layers, 2 heads) for a few seconds and look:

# %%
V_COPY, HALF = 32, 12
copy_cfg = GPTConfig(sequence_len=2 * HALF, vocab_size=V_COPY, n_layer=2, n_head=2,
                     n_kv_head=2, n_embd=64, value_embeds=False)
torch.manual_seed(SEED)
copier = GPT(copy_cfg)
copy_opt = torch.optim.AdamW(copier.parameters(), lr=3e-3, weight_decay=0.0)
g_copy = torch.Generator().manual_seed(SEED)


def copy_batch(n=32):
    """Rows of HALF random tokens, then the same tokens again: inputs and targets (n, 2·HALF-1)."""
    first = torch.randint(0, V_COPY, (n, HALF), generator=g_copy)
    rows = torch.cat([first, first], dim=1)
    return rows[:, :-1], rows[:, 1:]


for step in range(COPY_STEPS):
    xc, yc = copy_batch()
    per_token = copier(xc, yc, reduction="none")
    copy_opt.zero_grad()
    per_token.mean().backward()
    copy_opt.step()
    if (step + 1) % max(1, COPY_STEPS // 4) == 0:
        print(f"step {step + 1:4d}: loss on the first half {per_token[:, :HALF - 1].mean():.3f} "
              f"(ln {V_COPY} = {math.log(V_COPY):.3f}), on the repeat {per_token[:, HALF:].mean():.3f}")

# %%
xc, _ = copy_batch(1)
inputs = {}
hooks = [block.attn.register_forward_pre_hook(
    lambda module, args, layer=i: inputs.__setitem__(layer, args))
    for i, block in enumerate(copier.blocks)]
with torch.no_grad():
    copier(xc)
    copy_maps = {layer: attention_weights(copier.blocks[layer].attn, h, ve, cos, sin)[0]
                 for layer, (h, ve, cos, sin, *_) in inputs.items()}
for hook in hooks:
    hook.remove()
fig, axes = plt.subplots(2, 2, figsize=(7, 7))
for layer in range(2):
    for head in range(2):
        axes[layer][head].imshow(copy_maps[layer][head], cmap="viridis")
        axes[layer][head].set_title(f"layer {layer}, head {head}", fontsize=9)
        axes[layer][head].set_xlabel("key position", fontsize=8)
plt.suptitle(f"copying task: {HALF} random tokens, then the same {HALF} again")
plt.tight_layout()
plt.show()
second = torch.arange(HALF, 2 * HALF - 1)  # queries in the repeat
for layer in range(2):
    for head in range(2):
        w = copy_maps[layer][head]
        print(f"layer {layer} head {head}: weight on the previous token "
              f"{w[second, second - 1].mean():.2f}, on the token after the earlier copy "
              f"{w[second, second - HALF + 1].mean():.2f}")

# %% [markdown]
# The loss on the repeat falls to nearly 0 while the first half stays at chance: the model
# copies. In the repeat, the heads of layer 1 put most of their weight on the key 11
# positions back (a diagonal stripe in the lower half of their maps): the token that
# followed the earlier occurrence, which is exactly the answer. Here the answer always
# sits at the same distance, so a head can find it by position alone, which RoPE makes
# easy (scores that depend on the offset, section 9). In real text the distance varies,
# and language models learn **induction heads** that find the earlier occurrence by
# content instead: a head in one layer marks every position with the token before it,
# and a head in the next layer searches for the current token among those marks. Try it:
# make the length of the first half random per row, and see which heads change.

# %% [markdown]
# ## 5. Sliding windows
#
# Full attention costs $O(T^2)$: every token looks at every earlier token. A *sliding
# window* of $W$ lets each token see only itself and the $W-1$ tokens before it: $O(TW)$.
# The library's model can mix both: `GPTConfig(window_pattern="SSSL")` gives three
# short-window layers, then one full-context layer, repeated (and the last layer is always
# full), so information still travels the whole context, a few hops at a time. The
# trainer's default is `L` (full context in every layer); `python -m nanogpt_course.train
# --window-pattern SSSL [--short-window N]` trains with windows. Lesson 03 builds a model
# with the pattern `"SL"`.
#
# ### Exercise: the window mask
#
# Write `sliding_window_mask(T, window)`: a (T, T) boolean table, True where query $i$ may
# see key $j$: $j \le i$ and $i - j < W$.

# %%
def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """(T, T) bool: True where query i may see key j (j <= i and i - j < window)."""
    raise NotImplementedError("exercise: compare a column of i's with a row of j's")


# %%
sliding_window_mask = exercises.check("02_attention_rope.sliding_window_mask", sliding_window_mask)

# %%
W = 4
mask = sliding_window_mask(T_DEMO, W)
plt.figure(figsize=(4, 3.5))
plt.imshow(mask, cmap="Greys")
plt.xlabel("key position j")
plt.ylabel("query position i")
plt.title(f"sliding window, W={W}")
plt.show()

# %% [markdown]
# Attention with that mask, written out, against the library (`window=W`):

# %%
scores = qh @ kh.transpose(-2, -1) / math.sqrt(qh.shape[-1])
windowed = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ vh
torch.testing.assert_close(attention.causal_attention(qh, kh, vh, window=W), windowed)
print("masked softmax == attention.causal_attention(..., window=W)")

# %% [markdown]
# A dense (T, T) mask would cost $T^2$ memory again, so on a GPU the library never builds
# one. Attention kernels work in tiles of 128 × 128; PyTorch's FlexAttention, an attention
# kernel that is told which tiles to compute, accepts a **block mask**
# listing, for every row of tiles, which key tiles hold any visible entry and which are
# completely visible (those need no masking at all). `sliding_window_block_mask` computes
# that list from tile indices alone. For 2048 tokens and a window of 512:

# %%
bm = attention.sliding_window_block_mask(2048, 512)
tiles = bm.to_dense()[0, 0]  # (16, 16): 1 where a tile is computed
n = tiles.shape[0]
print(f"tiles computed: {int(tiles.sum())} of {n * (n + 1) // 2} causal tiles "
      f"({n * n} in the full square)")
plt.figure(figsize=(3.5, 3.5))
plt.imshow(tiles, cmap="Greys")
plt.title("128×128 tiles computed (T=2048, W=512)")
plt.show()

# %% [markdown]
# Do windows cost quality? Measured on a GPU (docs/QUALITY.md): a d6 model trained for
# 2.49e16 FLOPs with `SSSL` (a 512-token window at context 1024) scored 0.6552 validation
# bits per byte, against 0.6575 with full context in every layer; with a window of a
# quarter of the context (`--short-window 256`) 0.6393 against 0.6447 (a later recipe):
# no loss either time (one seed each; seeds differ by about 0.002-0.005).
#
# Do they save *time*? That depends on the kernel. FlexAttention computes a tile more
# slowly than the flash kernel that full-context layers use (at 55-75% of its rate in
# these measurements; a partly masked tile costs it most), so a window must skip enough
# tiles to make up for it. At context 2048 a 1024-token window skips 28 of the 136
# causal tiles, too few: on an H200 such a layer's attention costs 1.19× a full-context
# one, and the d12 step is no faster. The 512-token window above skips 66, about half:
# on an H100 its attention costs 0.95× flash at d12, and a whole d12 training step with
# `--window-pattern SSSL --short-window 512` is 2.2% faster than full context (2.4% at d20;
# docs/PERFORMANCE.md, "A quarter window pays"). The saving grows with the context and
# with shorter windows.

# %% [markdown]
# ## 6. Sharing keys and values between heads (GQA)
#
# During generation the model keeps every past key and value (lesson 03's KV cache), so
# their size matters. **Grouped-query attention** keeps $H$ query heads but only
# $H_{kv} < H$ key/value heads; each kv head serves a group of $H / H_{kv}$ query heads.
# Query head $h$ reads kv head $h \,//\, (H / H_{kv})$: with 4 query heads and 2 kv
# heads, heads 0 and 1 read kv head 0, heads 2 and 3 read kv head 1.
#
# ### Exercise: grouped-query attention
#
# Write `gqa_attention(q, k, v)` for q (B, H, T, D) and k, v (B, H_kv, T, D): expand each
# kv head to its group of query heads, then causal attention as in section 4 (no loops).

# %%
def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention where H query heads share H_kv kv heads. q (B, H, T, D),
    k, v (B, H_kv, T, D) → (B, H, T, D)."""
    raise NotImplementedError("exercise: repeat each kv head H // H_kv times, then attend")


# %%
gqa_attention = exercises.check("02_attention_rope.gqa_attention", gqa_attention)

# %%
k_few, v_few = kh[:, :2], vh[:, :2]  # 2 kv heads for 4 query heads
torch.testing.assert_close(gqa_attention(qh, k_few, v_few),
                           attention.causal_attention(qh, k_few, v_few), atol=1e-5, rtol=1e-5)
print(f"GQA: {H} query heads share 2 kv heads; the kv cache is {H // 2}x smaller")

# %% [markdown]
# ## 7. Positions: attention alone cannot see order
#
# Nothing above knows *where* a token is. Without the mask, shuffling the keys and values
# together leaves every output unchanged: attention is a set operation.

# %%
perm = torch.randperm(T_DEMO)
unmasked = lambda q, k, v: torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v
torch.testing.assert_close(unmasked(q, k[perm], v[perm]), unmasked(q, k, v))
print("shuffling the keys and values changes nothing: order is invisible")

# %% [markdown]
# ## 8. RoPE: positions as rotations
#
# Rotary position embeddings encode position $m$ by **rotating** queries and keys. Take a
# head of width $D$ and pair dimension $i$ with dimension $i + D/2$. Each pair is a point in
# the plane; at position $m$ we rotate it by the angle $m\,\theta_i$, with one speed per pair:
#
# $$\theta_i = \text{base}^{-2i/D}, \qquad i = 0, \dots, D/2 - 1 .$$
#
# The first pairs turn fast (they resolve nearby positions), the last ones slowly (they
# tell far-apart positions apart). Here are $\cos(m\,\theta_i)$ for a head of 64:

# %%
D_HEAD, T_ROPE = 64, 256
freqs = rope.rope_frequencies(D_HEAD, base=10000.0)
angles = torch.outer(torch.arange(T_ROPE).float(), freqs)  # (positions, pairs)
plt.figure(figsize=(7, 3))
plt.imshow(angles.cos().T, aspect="auto", cmap="RdBu")
plt.xlabel("position m")
plt.ylabel("pair i")
plt.title("cos(m·θ_i): fast pairs at the top, slow at the bottom")
plt.colorbar()
plt.show()

# %% [markdown]
# Follow one pair. Put the point $(1, 0)$ in pair $i$ and move the token along the
# sequence: at position $m$ the point sits at angle $m\,\theta_i$ on the unit circle. The
# fast pair 0 ($\theta_0 = 1$ radian per position) goes round in about 6 positions; a
# slower pair needs more: pair 8 (0.1 radian) about 63, pair 16 about 630, the last pairs
# tens of thousands:

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, pair in zip(axes, (0, 8)):
    m = torch.arange(12).float()
    phi = m * freqs[pair]
    ax.plot(torch.linspace(0, 2 * math.pi, 100).cos(), torch.linspace(0, 2 * math.pi, 100).sin(),
            color="lightgrey")
    ax.scatter(phi.cos(), phi.sin(), c=m, cmap="viridis")
    for pos in range(0, 12, 2 if pair == 0 else 3):
        ax.annotate(f"m={pos}", (phi[pos].cos(), phi[pos].sin()), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_aspect("equal")
    ax.set_title(f"pair {pair}: θ = {freqs[pair]:.3f} rad / position")
plt.suptitle("one RoPE pair of a query at positions 0..11")
plt.show()

# %% [markdown]
# ### Exercise: RoPE from the formula
#
# A rotation of the point $(a, b)$ by the angle $\phi$ is
# $(a\cos\phi - b\sin\phi,\; a\sin\phi + b\cos\phi)$. The model's tensors are
# (B, T, H, D), and the tables `cos`, `sin` (T, D/2) hold $\cos(m\theta_i)$ and
# $\sin(m\theta_i)$ for position $m$ and pair $i$. Write `apply_rope(x, cos, sin)`: pair
# dimension $i$ with dimension $i + D/2$ (the first half of the head with the second),
# rotate every pair, and reshape the tables so they broadcast over batch and heads.

# %%
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (B, T, H, D) by the angles in cos/sin (T, D/2)."""
    raise NotImplementedError("exercise: split x in halves, rotate, concatenate")


# %%
apply_rope = exercises.check("02_attention_rope.apply_rope", apply_rope)

# %%
x_demo = torch.randn(1, T_ROPE, 1, D_HEAD)
cos, sin = rope.rope_cos_sin(T_ROPE, D_HEAD)
rotated = apply_rope(x_demo, cos, sin)
torch.testing.assert_close(rotated, rope.apply_rope(x_demo, cos, sin), atol=1e-5, rtol=1e-5)
print("apply_rope == rope.apply_rope; lengths kept:",
      torch.allclose(rotated.norm(dim=-1), x_demo.norm(dim=-1), atol=1e-4))

# %% [markdown]
# ## 9. Why rotations: scores depend only on distance
#
# Rotate $q$ by $m\theta$ and $k$ by $n\theta$. Their dot product equals the dot product of
# $q$ with $k$ rotated by $(n - m)\theta$: only the **difference** $m - n$ survives. So the
# score between two tokens depends on their contents and how far apart they are, never on
# where in the sequence they sit. Let us check it on every pair $(m, n)$:

# %%
qv, kv = torch.randn(D_HEAD), torch.randn(D_HEAD)
cos, sin = rope.rope_cos_sin(T_ROPE, D_HEAD)
rq = apply_rope(qv.expand(1, T_ROPE, 1, D_HEAD), cos, sin)[0, :, 0]  # q placed at every position
rk = apply_rope(kv.expand(1, T_ROPE, 1, D_HEAD), cos, sin)[0, :, 0]
table = rq @ rk.T  # table[m, n] = <R(m) q, R(n) k>
worst = max((table.diagonal(-d) - table.diagonal(-d)[0]).abs().max().item() for d in range(T_ROPE))
print(f"largest spread along any diagonal m - n = const: {worst:.2e}")

# %%
dist = torch.arange(T_ROPE)
plt.figure(figsize=(6, 3))
plt.plot(dist, table[dist, 0], label="query at m, key at 0")
plt.plot(dist[:-50], table[dist[:-50] + 50, 50], "--", label="query at m+50, key at 50")
plt.xlabel("distance m - n")
plt.ylabel("score")
plt.legend()
plt.title("the same curve wherever the pair sits")
plt.show()

# %% [markdown]
# ### How the scores fade with distance
#
# Take the same vector as query and key. At distance $d$ the score is
# $\sum_i (a_i^2 + b_i^2)\cos(d\,\theta_i)$: every pair contributes a cosine turning at
# its own speed. Near $d = 0$ they all agree; as $d$ grows the fast pairs point every
# which way and cancel, and only the slow pairs still add up. So on average a token
# matches itself (and similar tokens) less the farther apart they are: a gentle built-in
# preference for nearby context, which the learned queries and keys can override. Below,
# the score for a vector of ones (every pair equal), divided by its value at distance 0:

# %%
distances = torch.arange(0, 4096)
for D_plot in (32, 128):
    theta = rope.rope_frequencies(D_plot).double()
    decay = torch.cos(distances[:, None].double() * theta[None, :]).mean(-1)
    plt.semilogx(distances[1:], decay[1:], label=f"head dim {D_plot}")
plt.axhline(0, color="grey", lw=0.5)
plt.xlabel("distance d (log scale)")
plt.ylabel("score / score at d = 0")
plt.title("RoPE: the same vector at distance d")
plt.legend()
plt.show()

# %% [markdown]
# ## 10. QK-norm
#
# If activations grow during training, scores grow with the *product* of the query and
# key sizes and the softmax collapses onto a single key (its entropy drops to 0), which
# stalls learning. **QK-norm** applies RMSNorm (divide by the root-mean-square, no learned
# scale) to each query and key head first, so every score lies in $[-\sqrt{D}, \sqrt{D}]$
# whatever the activation scale. Entropy of the attention rows as the inputs grow:

# %%
def rms_norm(t):
    return t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


def mean_entropy(q, k):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return -(w * w.clamp_min(1e-12).log()).sum(-1).mean().item()


qs, ks = torch.randn(T_ROPE, D_HEAD), torch.randn(T_ROPE, D_HEAD)
for scale in (1, 3, 10, 30):
    print(f"activations x{scale:>2}: entropy without norm {mean_entropy(scale * qs, scale * ks):5.2f}"
          f"   with QK-norm {mean_entropy(rms_norm(scale * qs), rms_norm(scale * ks)):5.2f}")

# %% [markdown]
# The library uses `F.rms_norm` for this. Because a rotation keeps a vector's length,
# normalizing before or after RoPE gives the same result:

# %%
torch.testing.assert_close(F.rms_norm(qs, (D_HEAD,)), rms_norm(qs), atol=1e-5, rtol=1e-5)
cos, sin = rope.rope_cos_sin(T_ROPE, D_HEAD)
as_heads = lambda t: t[None, :, None]  # (T, D) → (1, T, 1, D)
torch.testing.assert_close(rope.apply_rope(as_heads(F.rms_norm(qs, (D_HEAD,))), cos, sin),
                           as_heads(F.rms_norm(rope.apply_rope(as_heads(qs), cos, sin)[0, :, 0],
                                               (D_HEAD,))), atol=1e-5, rtol=1e-5)
print("norm then rotate == rotate then norm")

# %% [markdown]
# ## What next
#
# You now have every part of the model's attention layer: project to queries, keys and
# values; QK-norm; RoPE; causal (optionally windowed) attention over grouped heads; and an
# output projection. `nanogpt_course.model.CausalSelfAttention` is exactly that.
# `lessons/03_gpt_model` stacks it with an MLP into blocks, builds the whole GPT, counts
# its parameters and FLOPs, and generates text with a KV cache.
