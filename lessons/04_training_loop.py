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
# # 04 · The training loop
#
# A language model learns by predicting the next token, measuring how wrong it was, and
# nudging every weight to be a little less wrong. This lesson builds that loop piece by
# piece:
#
# 1. **cross-entropy**, the number that says how wrong a prediction was;
# 2. **AdamW**, the update rule for embeddings and other non-matrix weights;
# 3. **learning-rate schedules**: warmup, a constant phase, a linear warmdown;
# 4. **gradient accumulation**: a big batch from several small ones;
# 5. **gradient clipping**: a cap on the size of one step, and what the gradient norm does;
# 6. **mixed precision**: computing in bfloat16 while keeping fp32 weights;
# 7. a **complete loop from scratch** on your own AdamW, with training and validation
#    loss, a small **learning-rate sweep**, and the library's trainer
#    (`python -m nanogpt_course.train`) on the same data for comparison.
#
# **Run time**, measured as a script on a 2-core CPU shared with other jobs (load average
# about 3, `OMP_NUM_THREADS=1`): `smoke` 7 s, `laptop` 105 s, plus a few seconds the first
# time to build the cached tokenizer and shards. The long cells print progress. `full` is
# an estimate: about 10 minutes on a CPU, a minute or two on a GPU.

# %%
import os
import shutil
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from nanogpt_course import data, exercises, paths, presets
from nanogpt_course.device import describe, pick_device
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import build_optimizer
from nanogpt_course.tokenizer import Tokenizer
from nanogpt_course.train import TrainConfig, read_metrics, tiny, train
from nanogpt_course.train.schedule import Schedule

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
SEED = 0

# %% [markdown]
# The preset sizes the model, the data and the number of steps.

# %%
PRESET = presets.validate(PRESET)
STEPS = presets.choose(PRESET, smoke=12, laptop=100, full=600)
SWEEP_STEPS = presets.choose(PRESET, smoke=4, laptop=20, full=150)  # per run of the LR sweep
DEPTH = presets.choose(PRESET, smoke=2, laptop=4, full=6)
ASPECT = presets.choose(PRESET, smoke=32, laptop=32, full=48)  # width = DEPTH x ASPECT
SEQ = presets.choose(PRESET, smoke=64, laptop=128, full=256)
BATCH = presets.choose(PRESET, smoke=4, laptop=8, full=16)  # sequences per micro-batch
ACCUM = 2  # micro-batches per optimizer step
VOCAB = presets.choose(PRESET, smoke=512, laptop=2048, full=4096)
CORPUS = presets.choose(PRESET, smoke=2_000_000, laptop=8_000_000, full=24_000_000)
device = pick_device()
print(f"preset {PRESET!r}: {STEPS} steps (sweep runs of {SWEEP_STEPS}) of {ACCUM} x {BATCH} x {SEQ} tokens, "
      f"d{DEPTH}, vocabulary {VOCAB}, on {describe(device)}")

# %% [markdown]
# ## Data
#
# We train on the `offline` corpus (Python's and the installed packages' own text and
# docs), with a small BPE tokenizer trained on it. Both come from cached library helpers:
# built on first use (seconds), reused afterwards. `data.make_loader` yields batches of
# `inputs` and `targets`, each `(BATCH, SEQ)`: the targets are the inputs shifted left by one
# token, so position `t` is asked to predict token `t + 1`.

# %%
print(f"tokenizer ({VOCAB} ids) and shards of {CORPUS / 1e6:.0f} MB of the offline corpus: "
      "built on first use (up to a minute), then loaded from the cache", flush=True)
tok_folder = tiny.corpus_tokenizer(vocab_size=VOCAB, max_bytes=CORPUS)
tokenizer = Tokenizer.load(tok_folder)
prepared = tiny.corpus_data(tokenizer, max_bytes=CORPUS)
loader = data.make_loader(prepared, "train", batch_size=BATCH, seq_len=SEQ, seed=SEED)
x, y = next(loader)
print("inputs", tuple(x.shape), "targets", tuple(y.shape))
print("input :", repr(tokenizer.decode(x[0, :12])))
print("target:", repr(tokenizer.decode(y[0, :12])))
assert torch.equal(x[0, 1:], y[0, :-1])

# %% [markdown]
# ## 1. Cross-entropy
#
# For each position the model outputs one score (*logit*) per vocabulary entry. Softmax
# turns scores into probabilities, and the loss is the **negative log-probability of the
# correct next token**, averaged over positions:
#
# $$\ell = -\frac{1}{N}\sum_{t} \log \frac{e^{z_{t, y_t}}}{\sum_v e^{z_{t, v}}}
#        = \frac{1}{N}\sum_t \Big(\log\sum_v e^{z_{t,v}} - z_{t, y_t}\Big).$$
#
# A target of `-1` means "no loss here" (padding, or in chat fine-tuning every token that is
# not the assistant's): those positions are left out of the sum *and* of the count $N$.
# Compute $\log\sum e^z$ with `torch.logsumexp`, which subtracts the maximum first so that
# large logits do not overflow.
#
# **Exercise:** write `cross_entropy`.

# %%
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != -1. logits (B, T, V), targets (B, T) -> scalar."""
    raise NotImplementedError("exercise: log-softmax, pick the target, average the valid ones")


# %%
cross_entropy = exercises.check("04_training_loop.cross_entropy", cross_entropy)

# %% [markdown]
# Now a real model. With the library's initialization (a tiny `lm_head`), the first
# predictions are nearly uniform over the $V$ tokens, so the loss starts near
# $\ln V$: the model knows nothing yet. Your function, `F.cross_entropy` and the model's own
# loss (`model(x, y)`) agree.

# %%
config = GPTConfig.from_depth(DEPTH, vocab_size=tokenizer.vocab_size, sequence_len=SEQ,
                              aspect_ratio=ASPECT, head_dim=32)
torch.manual_seed(SEED)
model = GPT(config).to(device)
x, y = x.to(device), y.to(device)
with torch.no_grad():
    logits = model(x)
    mine = cross_entropy(logits, y)
    torch_ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
    library = model(x, y)
torch.testing.assert_close(mine, torch_ref)
torch.testing.assert_close(mine, library)
print(f"loss at init {mine.item():.4f}, ln V = {torch.log(torch.tensor(float(VOCAB))):.4f}")

# %% [markdown]
# ## 2. Gradients and one step downhill
#
# `loss.backward()` fills every parameter's `.grad` with $\partial \ell / \partial w$. The
# simplest update, **SGD**, moves each weight against its gradient: $w \leftarrow w - \eta g$.
# On the same batch, the loss goes down.

# %%
loss = model(x, y)
loss.backward()
with torch.no_grad():
    for p in model.parameters():
        if p.grad is not None:
            p -= 1.0 * p.grad
    after = model(x, y)
model.zero_grad(set_to_none=True)
print(f"loss {loss.item():.4f} -> {after.item():.4f} after one SGD step on this batch")

# %% [markdown]
# ## 3. AdamW
#
# SGD uses one learning rate for every weight, although gradients differ by orders of
# magnitude between, say, an embedding row seen once and a weight touched by every token.
# **Adam** keeps two running averages per weight, of the gradient $m$ (momentum) and of its
# square $v$, and steps by $m / \sqrt{v}$: about $\eta$ per step whatever the gradient's
# scale. Both averages start at 0, so early on they are too small; dividing by
# $1 - \beta^t$ (*bias correction*) fixes that. **AdamW** adds *decoupled* weight decay: it
# shrinks the weights by $\eta\lambda$ directly instead of adding $\lambda w$ to the
# gradient (where Adam's normalization would blur it).
#
# $$w \leftarrow w(1 - \eta\lambda),\quad m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
# v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
# w \leftarrow w - \eta\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)} + \epsilon}$$
#
# **Exercise:** write one AdamW step. It returns new tensors (it does not modify its inputs).

# %%
def adamw_update(param, grad, exp_avg, exp_avg_sq, step, *, lr, beta1=0.9, beta2=0.95,
                 eps=1e-8, weight_decay=0.0):
    """One AdamW step on copies: returns (param, exp_avg, exp_avg_sq), shaped like param."""
    raise NotImplementedError("exercise: decay, update m and v, bias-correct, step")


# %%
adamw_update = exercises.check("04_training_loop.adamw_update", adamw_update)

# %% [markdown]
# Five steps of your AdamW against `torch.optim.AdamW` on the same gradients:

# %%
g = torch.Generator().manual_seed(SEED)
w0 = torch.randn(6, 4, generator=g)
grads = [torch.randn(6, 4, generator=g) for _ in range(5)]
w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
for t, grad in enumerate(grads, start=1):
    w, m, v = adamw_update(w, grad, m, v, t, lr=0.01, weight_decay=0.1)
ref = torch.nn.Parameter(w0.clone())
opt = torch.optim.AdamW([ref], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
for grad in grads:
    ref.grad = grad.clone()
    opt.step()
torch.testing.assert_close(w, ref.detach())
print("5 AdamW steps match torch.optim.AdamW")

# %% [markdown]
# The library's AdamW, `optim.adamw.adamw_step_`, is the same arithmetic over *lists* of
# tensors, one `torch._foreach_*` call per line of the formula: seven passes over memory,
# each reading and writing every parameter or moment. The update is so cheap per number
# that those passes, not the arithmetic, are its cost: on an H100 they took ~6.5 ms of a
# 134 ms d12 training step (docs/PERFORMANCE.md, "Where a d12 step's time goes"). So on a
# GPU the library hands the lists to torch's *fused* AdamW kernel, which reads each
# number once and writes it once. Same math, fewer trips to memory; both against your five
# steps (PyTorch has the fused kernel on the CPU too):

# %%
from nanogpt_course.optim.adamw import adamw_step_  # noqa: E402

for fused in (False, True):
    lw, lm, lv = [w0.clone()], [torch.zeros_like(w0)], [torch.zeros_like(w0)]
    for t, grad in enumerate(grads, start=1):
        adamw_step_(lw, [grad], lm, lv, step=t, lr=0.01, beta1=0.9, beta2=0.95, eps=1e-8,
                    weight_decay=0.1, fused=fused)
    torch.testing.assert_close(lw[0], w)
    print(f"library AdamW ({'fused kernel' if fused else 'seven foreach passes'}) == yours")

# %% [markdown]
# An optimizer is your update plus bookkeeping: the running averages of every parameter,
# the step count, and **parameter groups**, lists of parameters that share a learning
# rate. `MyAdamW` is all of that around your `adamw_update`; the loop in section 8 trains
# with it.

# %%
class MyAdamW:
    """AdamW over groups [{"name", "params", "lr", "weight_decay"}] using adamw_update."""

    def __init__(self, groups, betas=(0.8, 0.95), eps=1e-10):
        self.param_groups = [dict(g, initial_lr=g["lr"]) for g in groups]
        self.betas, self.eps, self.t = betas, eps, 0
        self.state = {}  # parameter -> (exp_avg, exp_avg_sq)

    @torch.no_grad()
    def step(self):
        self.t += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.get(p, (torch.zeros_like(p), torch.zeros_like(p)))
                new, m, v = adamw_update(p, p.grad, m, v, self.t, lr=group["lr"],
                                         beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                                         weight_decay=group.get("weight_decay", 0.0))
                p.copy_(new)
                self.state[p] = (m, v)

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


# %% [markdown]
# Which groups? The model sorts its parameters by role (`model.parameter_kinds()`): the
# 2-D **matrices** inside the blocks, the **embedding** tables, the **unembedding**
# (`lm_head`) and a few **scalars**. Each gets its own learning rate. The library's
# `build_optimizer` splits them further by role, with one table of settings
# (`nanogpt_course/optim/build.py`, nanochat's grouping, which beat a uniform table by 0.01
# bits per byte at d6): the matrices and the value-embedding gates get **Muon** instead of
# AdamW (lesson 05); the residual scalars learn 100× slower than the x0 scalars; the value
# embeddings at half the token embedding's rate; each AdamW group has its own betas and a
# small weight decay:

# %%
for kind, params in model.parameter_kinds().items():
    print(f"  {kind:<12} {len(params):3d} tensors, {sum(p.numel() for p in params):>9,} params")
_ = build_optimizer(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008,
                    scalar_lr=0.5, verbose=True)

# %% [markdown]
# ### Why the embedding and unembedding learning rates differ about 40×
#
# The library's defaults are `embedding_lr=0.3` and `unembedding_lr=0.008`: a ratio of
# 37.5. Both tables have a row per token, so why? Because of what a step does to the
# *output*. Adam moves every entry by about the learning rate, whatever its gradient (its
# very first step is exactly $\eta\,\mathrm{sign}(g)$).
#
# - An **embedding** row is RMS-normed right after the lookup, so only its direction
#   matters, and its entries are about 1 in size: a step of $\eta$ per entry turns it by
#   roughly $\eta$ radians. And only the rows of tokens in the batch move.
# - An **unembedding** row produces a logit as a dot product with the final hidden
#   vector, which has unit RMS, so $C$ entries of size about 1. A step of $\eta$ on each of
#   the $C$ weights, all in the direction that helps, moves that logit by up to
#   $\eta \sum_i |h_i| \approx 0.8\,\eta C$: at $C = 768$ and $\eta = 0.008$ that is about
#   5 nats in a single step, already a lot.
#
# So the same $\eta$ moves the logits far more through `lm_head` than through `wte`. We
# can measure it: take Adam's first step, $\eta\,\mathrm{sign}(g)$, on one table at a
# time, and see how much the logits change. (On a model after five AdamW steps, so that
# its blocks are no longer the identity they start as.)

# %%
probe = GPT(config).to(device)
probe_opt = torch.optim.AdamW(probe.parameters(), lr=3e-3)
for _ in range(5):  # a few steps so the output projections are no longer zero
    probe_opt.zero_grad()
    probe(x, y).backward()
    probe_opt.step()
probe.zero_grad()
probe(x, y).backward()
ETA = 1e-3
with torch.no_grad():
    before = probe(x)
    moved = {}
    for name, p in (("wte (embedding)", probe.wte.weight), ("lm_head (unembedding)", probe.lm_head.weight)):
        saved = p.clone()
        p -= ETA * p.grad.sign()
        moved[name] = (probe(x) - before).pow(2).mean().sqrt().item() / ETA
        p.copy_(saved)
for name, change in moved.items():
    print(f"{name:<22} logits move {change:8.3f} (RMS) per unit of step size")
print(f"ratio: {moved['lm_head (unembedding)'] / moved['wte (embedding)']:.0f}x; "
      f"the library's LR ratio 0.3 / 0.008 = {0.3 / 0.008:.1f}x")

# %% [markdown]
# The measured ratio depends on the model and the moment of training, and here it is even
# larger than 37.5: the two learning rates do not make the tables equally sensitive, they
# point the same way. The unembedding is by far the more sensitive table (its change hits
# the loss at once, on every position), so it gets the far smaller step; the embedding,
# whose rows move only when their token appears and whose effect passes through the norm
# and the blocks, can take big steps. Both defaults were found by sweeps (section 9 runs a
# small one). The library also shrinks both with the width, by $(C/768)^{-1/2}$, because
# wider tables sum more entries per output.

# %% [markdown]
# ## 4. The learning-rate schedule
#
# The same learning rate is not best all along. Early on the weights are random and the
# optimizer's running averages are empty: big steps are risky, so the LR **warms up**
# linearly. Then it stays **constant**. In the last part of the run it **warms down**
# linearly to a small fraction of its peak: smaller steps let the weights settle into the
# bottom of the valley the big steps were bouncing across. (This warmup-stable-decay shape
# matches a cosine schedule's final loss and lets a run be cut or extended.) The trainer
# multiplies every group's peak LR by this multiplier at each step.
#
# **Exercise:** write the multiplier: `(step + 1) / warmup_steps` during warmup; 1.0 up to
# and including step `num_steps - warmdown`, where `warmdown = round(warmdown_ratio *
# num_steps)`; then linear from 1 to `final_lr_frac`, reached at `step == num_steps`.

# %%
def lr_multiplier(step, num_steps, warmup_steps, warmdown_ratio, final_lr_frac):
    """LR multiplier at ``step``: warmup, constant 1.0, linear warmdown to final_lr_frac."""
    raise NotImplementedError("exercise: three pieces, warmup / constant / warmdown")


# %%
lr_multiplier = exercises.check("04_training_loop.lr_multiplier", lr_multiplier)

# %% [markdown]
# The library's `Schedule` gives the same numbers, plus the two other schedules the trainer
# applies: Muon's momentum (0.85 → 0.97 over the first 400 steps, back to 0.90 during the
# warmdown) and the weight decay (a cosine from its peak to zero).

# %%
sched = Schedule(num_steps=1000, warmup_steps=40, warmdown_ratio=0.65, final_lr_frac=0.05,
                 weight_decay=0.28)
steps = list(range(1001))
mine = [lr_multiplier(s, 1000, 40, 0.65, 0.05) for s in steps]
assert mine == [sched.lr_multiplier(s) for s in steps]
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].plot(steps, mine)
axes[0].set_title("LR multiplier")
axes[1].plot(steps, [sched.muon_momentum(s) for s in steps])
axes[1].set_title("Muon momentum")
axes[2].plot(steps, [sched.weight_decay_at(s) for s in steps])
axes[2].set_title("Muon weight decay")
for ax in axes:
    ax.set_xlabel("step")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Gradient accumulation
#
# The best batch for a d12 model is about half a million tokens per step (the depth rules,
# lesson 08); a GPU fits a few dozen sequences at a time. So the trainer runs several
# **micro-batches**, calls `backward()` on each (gradients *add up* in `.grad`), and steps
# once. Dividing each micro-batch's loss by the number of micro-batches makes the sum the
# average: the same gradient as one big batch.
#
# The number of micro-batches follows from the sizes:
# `accumulation = total_batch / (device_batch × seq_len × GPUs)`, which is why 1 GPU and 8
# GPUs train the same model: one GPU just accumulates 8 times more.

# %%
xa, ya = next(loader)
xb, yb = next(loader)
xa, ya, xb, yb = (t.to(device) for t in (xa, ya, xb, yb))
model.zero_grad(set_to_none=True)
model(torch.cat([xa, xb]), torch.cat([ya, yb])).backward()  # one batch of 2 x BATCH
big = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
model.zero_grad(set_to_none=True)
for xm, ym in ((xa, ya), (xb, yb)):  # two micro-batches of BATCH
    (model(xm, ym) / 2).backward()
for n, p in model.named_parameters():
    if n in big:
        torch.testing.assert_close(p.grad, big[n], rtol=1e-4, atol=1e-6)
model.zero_grad(set_to_none=True)
print(f"2 micro-batches of {BATCH} accumulate to the gradient of one batch of {2 * BATCH}")

# %% [markdown]
# (With padding, each micro-batch's *mean* counts its own valid tokens, so the equality is
# exact only when every micro-batch has the same number of them, as in pretraining.)
#
# ## 6. Gradient clipping
#
# Most steps have gradients of similar size, but now and then one batch produces a
# gradient many times larger (a rare token, an unlucky document, an instability starting).
# Adam normalizes each entry by its running RMS, so one huge gradient also inflates $v$
# for many steps afterwards. **Clipping** caps the *global* gradient norm (all parameters
# together, as one long vector): if $\|g\| > c$, scale every gradient by $c / \|g\|$.
# The direction is kept; only the length is capped.
#
# **Exercise:** write `clip_grad_norm`. It returns the clipped copies and the norm
# *before* clipping (the number worth plotting), and matches
# `torch.nn.utils.clip_grad_norm_`, which divides by $\|g\| + 10^{-6}$.

# %%
def clip_grad_norm(grads: list[torch.Tensor], max_norm: float):
    """(clipped copies of grads, total norm before clipping as a 0-d tensor)."""
    raise NotImplementedError("exercise: one norm over all entries, then one common scale <= 1")


# %%
clip_grad_norm = exercises.check("04_training_loop.clip_grad_norm", clip_grad_norm)

# %% [markdown]
# ## 7. Mixed precision
#
# On a GPU, matrix multiplications in **bfloat16** run several times faster than in fp32
# and move half the bytes. bf16 keeps fp32's exponent range (so no loss scaling is needed,
# unlike fp16) but only 7 stored mantissa bits (8 with the implicit leading 1): about 2.4
# significant decimal digits, $\log_{10} 2^8$. So the trainer
# keeps the **weights and optimizer state in fp32** (an update of 1e-4 on a weight of 1.0
# would vanish in bf16) and runs the forward and backward passes under
# `torch.autocast("cuda", dtype=torch.bfloat16)`: matmuls in bf16, reductions and the loss in
# fp32. On the CPU everything stays in fp32. The size of bf16's rounding:

# %%
a_ = torch.randn(256, 256)
b_ = torch.randn(256, 256)
exact = a_ @ b_
with torch.autocast("cpu", dtype=torch.bfloat16):
    low = a_ @ b_
print(f"bf16 epsilon {torch.finfo(torch.bfloat16).eps:.4f} vs fp32 {torch.finfo(torch.float32).eps:.1e}")
print(f"matmul in bf16: dtype {low.dtype}, relative error "
      f"{((low.float() - exact).norm() / exact.norm()).item():.2e}")
print(f"1.0 + 1e-4 in bf16 = {(torch.tensor(1.0, dtype=torch.bfloat16) + 1e-4).item()}")

# %% [markdown]
# What about the activations between the matmuls, the **residual stream** `x` that every
# block adds to? If the token embedding is an fp32 weight, `x` starts in fp32 and
# `x + block(x)` stays fp32: every RMSNorm input, every residual add and every activation
# saved for the backward pass along the stream then costs 4 bytes per number instead of 2.
# The library casts the normed embedding to the autocast dtype, so under autocast the
# stream is bf16 (as nanochat's is); on an H100 that made d12 training 9% faster and 3.3 GiB
# lighter, with no loss in quality at d6 (docs/PERFORMANCE.md). Watch the dtype that
# enters each block:

# %%
stream_model = GPT(GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2,
                            n_embd=32))
seen = []
hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
         for b in stream_model.blocks]
tokens_ = torch.randint(0, 64, (2, 16))
stream_model.hidden(tokens_)
with torch.autocast("cpu", dtype=torch.bfloat16):
    stream_model.hidden(tokens_)
for h in hooks:
    h.remove()
print("stream dtype per block, without then with autocast:", seen)
B_, T_, C_ = 32, 2048, 768  # d12 at micro-batch 32
print(f"one (B, T, C) activation at d12: {B_ * T_ * C_ * 4 / 2**20:.0f} MiB in fp32, "
      f"{B_ * T_ * C_ * 2 / 2**20:.0f} MiB in bf16")

# %% [markdown]
# ### Eight bits: FP8 with one scale per tensor
#
# Hopper GPUs (H100, H200) also multiply **FP8** matrices, about twice as fast as bf16. There
# are two 8-bit formats: **e4m3** (4 exponent bits, 3 mantissa bits, largest value 448) and
# **e5m2** (5 and 2, largest 57,344). With so few exponent bits a tensor must first be
# *scaled* into range: multiply it by `fp8_max / max|x|`, so its largest entry lands on the
# largest FP8 number, round to FP8, and keep the inverse scale; the matmul kernel multiplies
# the two 8-bit matrices (accumulating in fp32) and undoes both scales at the end.
#
# ### Exercise: scale and round a tensor to FP8
#
# Write `fp8_quantize(x, dtype)` returning `(x8, inv_scale)`: `x8` in `dtype`
# (`torch.float8_e4m3fn` or `torch.float8_e5m2`) and `inv_scale` a 0-d fp32 tensor with
# `x ≈ x8.float() * inv_scale`. Compute in fp32, clamp to ±`torch.finfo(dtype).max` before
# the cast (rounding can overshoot), and guard against an all-zero `x`
# (`amax.clamp(min=1e-12)`).

# %%
def fp8_quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x (any shape) -> (x8 in dtype, same shape; inv_scale, 0-d fp32)."""
    raise NotImplementedError("exercise: scale = fp8_max / amax, round, return 1 / scale")


# %%
fp8_quantize = exercises.check("04_training_loop.fp8_quantize", fp8_quantize)

# %% [markdown]
# How much does FP8 lose? The same random matmul as above, with both operands rounded to
# e4m3 (what `torch._scaled_mm` would multiply), against bf16:

# %%
a8, a_inv = fp8_quantize(a_, torch.float8_e4m3fn)
b8, b_inv = fp8_quantize(b_, torch.float8_e4m3fn)
fp8_product = (a8.float() * a_inv) @ (b8.float() * b_inv)
print(f"relative error of the matmul: bf16 {((low.float() - exact).norm() / exact.norm()).item():.1e}, "
      f"FP8 e4m3 {((fp8_product - exact).norm() / exact.norm()).item():.1e}")

# %% [markdown]
# More than ten times bf16's error, yet training barely notices: the optimizer keeps fp32 weights,
# and the rounding errors of a step's *computation* are small, unbiased and gone by the
# next step (it starts again from the fp32 weights). Rounding *stored* weights is another
# matter, as the next section shows: those errors stay. The trainer's `--fp8` flag
# (`nanogpt_course/fp8.py`, H100/H200 only) runs the blocks' linear layers this way: weights
# and activations in e4m3 forward; in the backward pass the output gradients in e5m2, whose
# wider range suits gradients better than extra precision. `lm_head`, the embeddings and
# everything outside training steps stay in bf16.

# %% [markdown]
# ### Storing weights in bf16: where small updates go
#
# Computing in bf16 is safe because the optimizer keeps fp32 weights. *Storing* weights in
# bf16 saves memory (`--embedding-dtype bf16` does it for the embeddings: 1.1 GiB measured
# at d12) but each step's result must be rounded back to bf16, and we saw above that
# `1.0 + 1e-4` is `1.0` there. Which updates are that small? Adam moves an entry by
# $\eta \cdot \hat m / \sqrt{\hat v}$, about $\eta$ only when the gradient keeps its sign; an
# embedding row's gradient is noisy and mostly zero (its token is absent from most
# batches), so $\hat m / \sqrt{\hat v}$ is far below 1, and late in training, when $\eta$ has
# decayed too, most updates fall under half a bf16 step. Weight decay's $\eta \lambda w$
# always does. Rounding to nearest throws every one of them away; in issue #12's d6
# benchmark bf16 embeddings cost 0.0072 bits per byte (docs/QUALITY.md).
#
# A proposed fix (its quality is not measured yet) is to round **at random**: up with
# probability equal to how far the value is toward the next bf16 number, down otherwise.
# Each rounding is then right *on average*, so many small updates add up. Fifty updates
# of $-10^{-4}$ from 1.0, both ways (the second check uses $1 - 3\cdot10^{-4}$, just
# below 1.0, where rounding up must carry into the exponent):

# %%
from nanogpt_course.optim.adamw import round_stochastic  # noqa: E402


def round_at_random(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16, up or down at random with the probabilities that keep E[result] = x."""
    near = x.bfloat16()  # the nearest bf16 value
    toward_x = torch.where(x > near.float(), torch.inf, -torch.inf).bfloat16()
    other = torch.nextafter(near, toward_x)  # the bf16 neighbour on x's other side
    # x lies between them: take `other` with probability (distance to near) / (spacing)
    p_other = (x - near.float()).abs() / (other.float() - near.float()).abs()
    return torch.where(torch.rand_like(x) < p_other, other, near)


torch.manual_seed(0)
w_nearest = torch.ones(10_000, dtype=torch.bfloat16)
w_random = torch.ones(10_000, dtype=torch.bfloat16)
for _ in range(50):
    w_nearest = (w_nearest.float() - 1e-4).bfloat16()
    w_random = round_at_random(w_random.float() - 1e-4)
print(f"exact: {1 - 50e-4:.4f}   to nearest: {w_nearest.float().mean():.4f}   "
      f"at random: {w_random.float().mean():.4f}")
assert w_nearest.float().eq(1.0).all() and abs(w_random.float().mean() - (1 - 50e-4)) < 5e-4
x = torch.full((100_000,), 1.0 - 3e-4)
library, ours = round_stochastic(x).float().mean(), round_at_random(x).float().mean()
print(f"mean of 100,000 roundings of {x[0]:.4f}: library's round_stochastic {library:.6f}, "
      f"round_at_random {ours:.6f}")
assert abs(library - x[0]) < 2e-5 and abs(ours - x[0]) < 2e-5  # both unbiased (~6 sd)

# %% [markdown]
# Rounding to nearest never moves the weights; rounding at random lands within noise of the
# exact answer. The library's `round_stochastic` does the same with integer arithmetic on
# the float's bits: a bf16 number is an fp32 number whose low 16 bits are zero, and those
# bits, read as an integer `f`, say how far `x` is toward the next bf16 number (`f / 2^16`
# of a step). Add a uniform random integer `u` in `[0, 2^16)` and clear the low 16 bits:
# the sum carries into bit 16, rounding up, exactly when `u >= 2^16 - f`, which happens
# with probability `f / 2^16`. The trainer's `--stochastic-rounding` applies it to the
# bf16 embeddings' updates.

# %% [markdown]
# ## 8. The whole loop, from scratch
#
# Everything together, in the order the library's trainer does it, but with your pieces:
# your AdamW on all four groups, your schedule, your clipping.
#
# - the model is built on the `meta` device (no memory), given real storage, and
#   initialized under the run's seed (every GPU gets the same weights without copying);
# - each step: set the scheduled LR of every group, run `ACCUM` micro-batches with
#   `loss / ACCUM` backward, clip, one optimizer step, clear the gradients;
# - every few steps, the loss on a few fixed batches of **validation** text, held out by
#   file: text the model never trains on.
#
# The matrices get AdamW here at `matrix_lr = 0.006`: AdamW needs a far smaller step than
# Muon's 0.02 (lesson 05 explains why the two are not comparable). The other groups keep
# the library's rates, scaled for the width as `build_optimizer` does.

# %%
WD, WARMUP, MAX_NORM = 0.1, max(1, STEPS // 10), 1.0
WIDTH_SCALE = (config.n_embd / 768) ** -0.5  # build_optimizer's width rule for AdamW groups
ADAMW_LRS = dict(matrix=0.006, embedding=0.3 * WIDTH_SCALE, unembedding=0.008 * WIDTH_SCALE,
                 scalar=0.5)
VAL_BATCHES = [next(data.make_loader(prepared, "val", batch_size=BATCH, seq_len=SEQ, seed=s))
               for s in range(3)]


def autocast():
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def validation_loss(model):
    """Mean loss over the fixed validation batches."""
    total = 0.0
    for xv, yv in VAL_BATCHES:
        with autocast():
            total += model(xv.to(device), yv.to(device)).item()
    return total / len(VAL_BATCHES)


def train_from_scratch(steps, lr_scale=1.0, log=True):
    """Train a fresh model with MyAdamW; returns its per-step losses, grad norms and val losses."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    torch.manual_seed(SEED)
    model.init_weights()
    kinds = model.parameter_kinds()
    optimizer = MyAdamW([{"name": k, "params": kinds[k], "lr": lr_scale * ADAMW_LRS[k],
                          "weight_decay": WD if k == "matrix" else 0.0} for k in ADAMW_LRS])
    loader = data.make_loader(prepared, "train", batch_size=BATCH, seq_len=SEQ, seed=SEED)
    hist = {"loss": [], "grad_norm": [], "val": []}
    warmup, started = max(1, steps // 10), time.perf_counter()
    for step in range(steps):
        lrm = lr_multiplier(step, steps, warmup, 0.65, 0.05)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
        total = 0.0
        for _ in range(ACCUM):
            xm, ym = next(loader)
            with autocast():
                loss = model(xm.to(device), ym.to(device))
            (loss / ACCUM).backward()
            total += loss.item()
        params = [p for p in model.parameters() if p.grad is not None]
        clipped, norm = clip_grad_norm([p.grad for p in params], MAX_NORM)
        for p, g_clipped in zip(params, clipped):
            p.grad = g_clipped
        optimizer.step()
        optimizer.zero_grad()
        hist["loss"].append(total / ACCUM)
        hist["grad_norm"].append(float(norm))
        if step % max(1, steps // 6) == 0 or step == steps - 1:
            hist["val"].append((step + 1, validation_loss(model)))
            if log:
                print(f"step {step + 1:4d}/{steps} | train loss {hist['loss'][-1]:.4f} | "
                      f"val loss {hist['val'][-1][1]:.4f} | grad norm {norm:.2f} | lrm {lrm:.3f} "
                      f"| {time.perf_counter() - started:.0f} s", flush=True)
    return model, hist


scratch_model, scratch = train_from_scratch(STEPS)

# %% [markdown]
# ### What the gradient norm does
#
# Plotted over the run: the global gradient norm before clipping, and the line at which
# clipping starts. Early on the norm changes fast (the model is far from any minimum and
# the LR is warming up); then it settles. Steps above the line were clipped. In a healthy
# run like this one that is rare or never: clipping is a safety net for the occasional
# spike. The learning-rate sweep below shows what happens when steps are too large (look at
# its largest gradient norms).

# %%
norms = torch.tensor(scratch["grad_norm"])
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(range(1, STEPS + 1), norms, label="grad norm (before clipping)")
ax.axhline(MAX_NORM, color="tab:red", ls="--", label=f"clip at {MAX_NORM}")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.legend()
plt.show()
print(f"{int((norms > MAX_NORM).sum())} of {STEPS} steps were clipped; median norm "
      f"{norms.median():.2f}, largest {norms.max():.2f} (step {int(norms.argmax()) + 1})")

# %% [markdown]
# ### Training and validation loss
#
# The training loss is measured on the batch the model is about to learn from, the
# validation loss on held-out files. While they move together the model is learning
# things that generalize; a validation loss that rises while the training loss keeps
# falling is **overfitting** (a model this small, on this much text, does not get there).
# The two need not be equal: the validation files are other files (other packages'
# documentation and source), some harder to predict than the training text, and each
# training batch is a different mix, which is why the training curve jumps around.

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(range(1, STEPS + 1), scratch["loss"], alpha=0.6, label="train (each step's batch)")
ax.plot(*zip(*scratch["val"]), "o-", label="validation (fixed held-out batches)")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats / token)")
ax.legend()
plt.show()

# %% [markdown]
# ## 9. A small learning-rate sweep
#
# Is 1× the right learning rate? The honest answer is to try. Short runs with every
# group's LR scaled by the same factor; the final training loss (mean of the last few
# steps) against the factor. Too small learns slowly, too large diverges or stalls; the
# best is usually a broad valley, which is why one sweep at a small scale transfers
# (lesson 08 shows how the depth rules carry it to bigger models).

# %%
SCALES = (0.1, 0.3, 1.0, 3.0, 10.0)
sweep = {}
for scale in SCALES:
    _, h = train_from_scratch(SWEEP_STEPS, lr_scale=scale, log=False)
    sweep[scale] = sum(h["loss"][-3:]) / len(h["loss"][-3:])
    print(f"LR x{scale:<5}: final train loss {sweep[scale]:.4f}  (max grad norm "
          f"{max(h['grad_norm']):.2f})", flush=True)

# %%
plt.figure(figsize=(5, 3))
plt.semilogx(list(sweep), list(sweep.values()), "o-")
plt.xlabel("LR scale (x the defaults)")
plt.ylabel(f"loss after {SWEEP_STEPS} steps")
plt.title("learning-rate sweep")
plt.show()
print(f"best of the sweep: x{min(sweep, key=sweep.get)}")

# %% [markdown]
# ## 10. The library's trainer
#
# `nanogpt_course.train.train` (what `python -m nanogpt_course.train` runs) does the same
# steps, plus logging, validation in bits per byte, checkpoints, several GPUs, and the
# depth rules that pick sizes and learning rates when you do not (here we pass them
# explicitly). One difference: it trains the matrices with **Muon**. Same data, same
# seed, same schedule.
#
# One more, invisible on a CPU: *when* it reads the loss. A GPU runs kernels from a queue
# while the CPU goes on queueing more, and `loss.item()` makes the CPU wait until the GPU
# has reached that point in the queue. Your loop calls it after every micro-batch, so on a
# GPU the CPU stalls there each time. The trainer sums the loss on the device, queues the
# copy of that sum to the host *before* it queues the optimizer's kernels, and reads the
# copy only after: it waits for the backward pass, not for the update, and builds the next
# batch while the GPU is still updating the weights. The price is that a NaN loss is seen
# one update late, so the trainer then stops without saving that step.

# %%
run_dir = paths.runs_dir("lesson04", create=False) / PRESET
shutil.rmtree(run_dir, ignore_errors=True)  # this lesson's scratch run: start fresh
LRS = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5)
cfg = TrainConfig(depth=DEPTH, aspect_ratio=ASPECT, head_dim=32, seq_len=SEQ,
                  device_batch_size=BATCH, total_batch_size=ACCUM * BATCH * SEQ,
                  max_steps=STEPS, warmup_steps=WARMUP, weight_decay=WD, data=str(prepared),
                  tokenizer=str(tok_folder), out=str(run_dir), seed=SEED,
                  eval_every=max(1, STEPS // 3), sample_every=-1,
                  log_every=max(1, STEPS // 6), **LRS)
result = train(cfg)
logged = {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}  # every few steps
print(f"the library's run is in {result.out}")

# %% [markdown]
# ## 11. Loss curves
#
# Your AdamW loop against the library's Muon + AdamW, on the same batches. The library's
# validation bits per byte (measured on held-out text, in bits per byte of UTF-8 so it does
# not depend on the tokenizer) is the number its runs report.

# %%
recs = read_metrics(run_dir)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(range(1, STEPS + 1), scratch["loss"], lw=2, alpha=0.5, label="your loop (AdamW)")
ax.plot(list(logged), list(logged.values()), "k.-", label="library (Muon + AdamW, logged steps)")
ax.set_xlabel("step")
ax.set_ylabel("train loss (nats / token)")
val = [(r["step"], r["val_bpb"]) for r in recs if "val_bpb" in r]
ax2 = ax.twinx()
ax2.plot(*zip(*val), "o--", color="tab:red")
ax2.set_ylabel("library val bits per byte", color="tab:red")
ax.legend()
plt.show()
last = min(logged)
print(f"at step {max(logged)}: your loop {scratch['loss'][max(logged) - 1]:.3f}, "
      f"library {logged[max(logged)]:.3f} (step {last}: {scratch['loss'][last - 1]:.3f} vs "
      f"{logged[last]:.3f})")

# %% [markdown]
# ## What next
#
# - `lessons/05_muon`: the update the library's matrices get instead of AdamW, and why
#   it learns faster than your loop did.
# - `lessons/08_scaling_laws`: how `--depth` picks the batch size, learning rates and
#   horizon that we set by hand here.
# - `lessons/09_pretrain`: the same trainer on several processes, launched from a notebook.
