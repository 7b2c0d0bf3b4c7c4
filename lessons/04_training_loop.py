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
# 5. **mixed precision**: computing in bfloat16 while keeping fp32 weights;
# 6. a **complete loop from scratch**, compared step by step with the library's trainer
#    (`python -m nanogpt_course.train`), and loss plots.

# %%
import os
import shutil

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from nanogpt_course import checkpoint, data, exercises, paths, presets
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
STEPS = presets.choose(PRESET, smoke=12, laptop=150, full=600)
DEPTH = presets.choose(PRESET, smoke=2, laptop=4, full=6)
ASPECT = presets.choose(PRESET, smoke=32, laptop=32, full=48)  # width = DEPTH x ASPECT
SEQ = presets.choose(PRESET, smoke=64, laptop=128, full=256)
BATCH = presets.choose(PRESET, smoke=4, laptop=8, full=16)  # sequences per micro-batch
ACCUM = 2  # micro-batches per optimizer step
VOCAB = presets.choose(PRESET, smoke=512, laptop=2048, full=4096)
CORPUS = presets.choose(PRESET, smoke=2_000_000, laptop=8_000_000, full=24_000_000)
device = pick_device()
print(f"preset {PRESET!r}: {STEPS} steps of {ACCUM} x {BATCH} x {SEQ} tokens, "
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
# The library does not train everything with AdamW. `build_optimizer` puts the 2-D weight
# matrices inside the blocks in **Muon** groups (lesson 05: orthogonalized updates) and the
# embeddings, the `lm_head` and the per-layer scalars in **AdamW** groups, each with its own
# learning rate (AdamW's scaled down for wider models):

# %%
optimizer = build_optimizer(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008,
                            scalar_lr=0.5, verbose=True)

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
# ## 6. Mixed precision
#
# On a GPU, matrix multiplications in **bfloat16** run several times faster than in fp32
# and move half the bytes. bf16 keeps fp32's exponent range (so no loss scaling is needed,
# unlike fp16) but only 8 bits of mantissa: about 3 significant digits. So the trainer
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
# ## 7. The whole loop, from scratch
#
# Everything together, in the order the library's trainer does it:
#
# - the model is built on the `meta` device (no memory), given real storage, and
#   initialized under the run's seed (every GPU gets the same weights without copying);
# - each step: set the scheduled LR (and Muon's momentum and decay), run `ACCUM`
#   micro-batches with `loss / ACCUM` backward, one optimizer step, clear the gradients.

# %%
LRS = dict(matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5)
WD, WARMUP = 0.1, max(1, STEPS // 10)


def autocast():
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


with torch.device("meta"):
    model = GPT(config)
model.to_empty(device=device)
torch.manual_seed(SEED)
model.init_weights()
optimizer = build_optimizer(model, weight_decay=WD, **LRS)
schedule = Schedule(num_steps=STEPS, warmup_steps=WARMUP, weight_decay=WD)
loader = data.make_loader(prepared, "train", batch_size=BATCH, seq_len=SEQ, seed=SEED)
scratch_losses = []
for step in range(STEPS):
    lrm = lr_multiplier(step, STEPS, WARMUP, schedule.warmdown_ratio, schedule.final_lr_frac)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = schedule.muon_momentum(step)
            group["weight_decay"] = schedule.weight_decay_at(step)
    total = 0.0
    for _ in range(ACCUM):
        xm, ym = next(loader)
        with autocast():
            loss = model(xm.to(device), ym.to(device))
        (loss / ACCUM).backward()
        total += loss.item()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    scratch_losses.append(total / ACCUM)
    if step % max(1, STEPS // 6) == 0 or step == STEPS - 1:
        print(f"step {step + 1:4d}/{STEPS} | loss {scratch_losses[-1]:.4f} | lrm {lrm:.3f}")

# %% [markdown]
# ## 8. The library's trainer
#
# `nanogpt_course.train.train` (what `python -m nanogpt_course.train` runs) does the same,
# plus logging, validation, checkpoints, several GPUs, and the depth rules that pick sizes
# and learning rates when you do not (here we pass them explicitly). Same data, same seed,
# same settings: the same losses at every step it logs, and the same final weights.

# %%
run_dir = paths.runs_dir("lesson04", create=False) / PRESET
shutil.rmtree(run_dir, ignore_errors=True)  # this lesson's scratch run: start fresh
cfg = TrainConfig(depth=DEPTH, aspect_ratio=ASPECT, head_dim=32, seq_len=SEQ,
                  device_batch_size=BATCH, total_batch_size=ACCUM * BATCH * SEQ,
                  max_steps=STEPS, warmup_steps=WARMUP, weight_decay=WD, data=str(prepared),
                  tokenizer=str(tok_folder), out=str(run_dir), seed=SEED,
                  eval_every=max(1, STEPS // 3), sample_every=-1,
                  log_every=max(1, STEPS // 6), **LRS)
result = train(cfg)
logged = {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}  # every few steps
torch.testing.assert_close(torch.tensor(list(logged.values())),
                           torch.tensor([scratch_losses[s - 1] for s in logged]))
final = checkpoint.read_model_state(result.out)
for name, tensor in model.state_dict().items():
    torch.testing.assert_close(tensor.cpu(), final[name], rtol=1e-4, atol=1e-5)
print(f"same losses and same final weights; the library's run is in {result.out}")

# %% [markdown]
# ## 9. Loss curves
#
# The training loss is noisy (each step sees different text); the validation bits per byte
# (measured on held-out text, in bits per byte of UTF-8 so it does not depend on the
# tokenizer) is the number to watch.

# %%
recs = read_metrics(run_dir)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(range(1, STEPS + 1), scratch_losses, lw=3, alpha=0.4, label="from scratch")
ax.plot(list(logged), list(logged.values()), "k.", label="library (logged steps)")
ax.set_xlabel("step")
ax.set_ylabel("train loss (nats / token)")
val = [(r["step"], r["val_bpb"]) for r in recs if "val_bpb" in r]
ax2 = ax.twinx()
ax2.plot(*zip(*val), "o--", color="tab:red")
ax2.set_ylabel("val bits per byte", color="tab:red")
ax.legend()
plt.show()

# %% [markdown]
# ## What next
#
# - `lessons/05_muon`: the update the matrices get instead of AdamW.
# - `lessons/08_scaling_laws`: how `--depth` picks the batch size, learning rates and
#   horizon that we set by hand here.
# - `lessons/09_pretrain`: the same trainer on several processes, launched from a notebook.
