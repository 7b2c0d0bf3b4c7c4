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
# # 05 · Muon: orthogonalized updates for weight matrices
#
# AdamW treats a weight matrix as a bag of independent numbers. **Muon** treats it as what
# it is, a linear map, and asks: which change of this map reduces the loss fastest if every
# direction of change is allowed the same size? The answer replaces the gradient matrix
# $G = U \Sigma V^\top$ by $U V^\top$: the same directions, with every singular value set
# to 1.
#
# In this lesson you will:
#
# 1. look at the singular values of a transformer's gradient matrices, at initialization
#    and after some training: a few directions dominate, so a plain step spends most of its
#    size on them;
# 2. compute the ideal update $U V^\top$ with an SVD, compare it with keeping only the top
#    $r$ directions, and see why we avoid the SVD;
# 3. build the **Newton–Schulz** iteration that approximates $U V^\top$ with matrix
#    products only, and compare it with the SVD;
# 4. assemble the full Muon step (momentum, Nesterov, shape-aware learning rate);
# 5. train a tiny GPT with Muon + AdamW and with a fair AdamW baseline (the same groups and
#    learning rates, only the matrix update changed), and compare loss curves.
#
# **Run time**, measured as a script on a 2-core CPU: `smoke` 7 s; `laptop` 1.6 minutes
# on an idle machine (3.8 minutes when other jobs kept the load average at 3 to 9; the
# training cells print progress with the elapsed time). `full` is an estimate: about 20
# minutes on a CPU, a few minutes on a GPU.

# %%
import os
import time

import matplotlib.pyplot as plt
import torch

from nanogpt_course import exercises, paths, presets
from nanogpt_course.device import describe, pick_device
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import MuonAdamW, build_optimizer, orthogonalize, shape_lr_scale
from nanogpt_course.optim.demo import bigram_batch
from nanogpt_course.optim.muon import (
    NEWTON_SCHULZ_COEFFS,
    apply_muon_step_,
    coefficients,
    second_moment_shape,
    variance_reduce,
)

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
SEED = 0

# %% [markdown]
# The preset sizes the tiny model and how long we train it.

# %%
PRESET = presets.validate(PRESET)
STEPS = presets.choose(PRESET, smoke=15, laptop=200, full=1500)
WARM_STEPS = presets.choose(PRESET, smoke=10, laptop=60, full=100)  # before the spectra
WIDTH = presets.choose(PRESET, smoke=64, laptop=128, full=256)
DEPTH = presets.choose(PRESET, smoke=2, laptop=4, full=6)
SEQ = presets.choose(PRESET, smoke=64, laptop=128, full=256)
BATCH = presets.choose(PRESET, smoke=8, laptop=16, full=32)
ADAMW_LRS = presets.choose(PRESET, smoke=[1e-2], laptop=[3e-3, 1e-2, 3e-2],
                           full=[3e-3, 1e-2, 3e-2])  # AdamW's matrix LR, swept
device = pick_device()
torch.manual_seed(SEED)
print(f"preset {PRESET!r}: {STEPS} steps, d{DEPTH} x {WIDTH} wide, batch {BATCH} x {SEQ} "
      f"chars, on {describe(device)}")

# %% [markdown]
# ## Data: characters of Shakespeare
#
# A character-level model keeps the vocabulary tiny (65 symbols) so the whole lesson runs
# on a laptop. The text comes from the data mirror (`NANOGPT_COURSE_DATA`) when it is
# there; without it we fall back to a synthetic "language" from the library (a random
# bigram chain), which is learnable in the same way.

# %%
raw = paths.find_raw("tinyshakespeare/input.txt")
if raw is not None:
    text = raw.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text])
    VOCAB = len(chars)

    def get_batch(step: int):
        """Inputs and targets (BATCH, SEQ) at random offsets; the same for a given step."""
        g = torch.Generator().manual_seed(SEED * 100_003 + step)
        starts = torch.randint(len(data) - SEQ - 1, (BATCH,), generator=g)
        rows = torch.stack([data[s:s + SEQ + 1] for s in starts.tolist()])
        return rows[:, :-1].to(device), rows[:, 1:].to(device)

    print(f"tiny Shakespeare: {len(text):,} characters, vocabulary {VOCAB}")
else:
    VOCAB = 64

    def get_batch(step: int):
        x, y = bigram_batch(SEED * 100_003 + step, vocab=VOCAB, batch=BATCH, seq=SEQ)
        return x.to(device), y.to(device)

    print("no data mirror: using the synthetic bigram chain (vocabulary 64)")


def tiny_gpt(seed: int = SEED) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=SEQ, vocab_size=VOCAB, n_layer=DEPTH, n_head=WIDTH // 32,
                    n_kv_head=WIDTH // 32, n_embd=WIDTH)
    return GPT(cfg).to(device)


# %% [markdown]
# ## 1. What a gradient matrix looks like
#
# Run forward and backward on a batch and look at the gradient of a weight matrix through
# its singular values. Where we look matters. At initialization the output projections
# `c_proj` are zero, so their gradient is built from only the few directions the fresh
# model's activations span: it is very low-rank, but that is an artifact of the
# initialization. So we train the model for `WARM_STEPS` steps first (with the library's
# optimizer) and compare the spectrum of the same matrix's gradient then, on a new batch.

# %%
def matrix_grad(model, step):
    """Gradient of blocks[0].mlp.c_proj on batch ``step``, as an fp32 CPU matrix."""
    model.zero_grad(set_to_none=True)
    xb, yb = get_batch(step)
    model(xb, yb).backward()
    return model.blocks[0].mlp.c_proj.weight.grad.detach().float().cpu()


def describe_spectrum(name, sv):
    energy = (sv**2).cumsum(0) / (sv**2).sum()
    p = sv / sv.sum()
    eff_rank = torch.exp(-(p * p.clamp_min(1e-30).log()).sum())  # exp(entropy of sigma)
    print(f"{name:<22} top direction {energy[0]:4.0%} of the squared norm, top 4 "
          f"{energy[3]:4.0%}, top 16 {energy[15]:4.0%}; effective rank {eff_rank:5.1f} of {len(sv)}")


model = tiny_gpt()
G_init = matrix_grad(model, 0)
warm_opt = build_optimizer(model)
start = time.perf_counter()
for step in range(WARM_STEPS):
    xb, yb = get_batch(step)
    loss = model(xb, yb)
    warm_opt.zero_grad(set_to_none=True)
    loss.backward()
    warm_opt.step()
    if (step + 1) % max(1, WARM_STEPS // 3) == 0:
        print(f"warm-up step {step + 1:3d}/{WARM_STEPS}: loss {loss.item():.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
x, y = get_batch(10_000)  # a batch the model has not trained on
G = matrix_grad(model, 10_000)
sv_init, sv = torch.linalg.svdvals(G_init), torch.linalg.svdvals(G)
print(f"gradient of blocks[0].mlp.c_proj: shape {tuple(G.shape)}, {len(sv)} singular values")
describe_spectrum("at initialization", sv_init)
describe_spectrum(f"after {WARM_STEPS} steps", sv)

# %%
plt.figure(figsize=(6, 3.2))
plt.semilogy(sv_init / sv_init[0], marker=".", label="at initialization")
plt.semilogy(sv / sv[0], marker=".", label=f"after {WARM_STEPS} steps")
plt.xlabel("index")
plt.ylabel("singular value / largest")
plt.legend()
plt.title("singular values of a gradient matrix")
plt.show()

# %% [markdown]
# After some training the gradient uses many more directions than at initialization: at
# `laptop` (60 steps on Shakespeare) we measured an effective rank of about 32 of 128,
# against 13 at initialization, and the top direction's share fell from about three
# quarters to about a third. (The `smoke` preset trains too few steps to show it.) But the
# spectrum still decays: the top few directions hold a large share of the squared norm,
# and the tail is orders of magnitude smaller than the head.

# %% [markdown]
# An SGD step $W \leftarrow W - \eta G$ moves the weights mostly along the first few
# directions; the others, which also lower the loss, barely move. Adam rescales each entry
# separately, which does not fix a problem that lives in the matrix's singular directions.

# %% [markdown]
# ## 2. The ideal update: $U V^\top$
#
# Write $G = U \Sigma V^\top$ (the SVD). The matrix $O = U V^\top$ keeps the directions and
# sets every singular value to 1. It is the **steepest-descent direction when step size is
# measured by the spectral norm** (the largest stretch a matrix applies): among all $Q$ with
# $\|Q\|_2 \le 1$, $Q = U V^\top$ maximizes the first-order loss decrease
# $\langle G, Q \rangle$, and the maximum is $\sum_i \sigma_i$.

# %%
U, S, Vh = torch.linalg.svd(G, full_matrices=False)
O_svd = U @ Vh
print("singular values of U V^T:", torch.linalg.svdvals(O_svd)[:5].tolist(), "...")
print(f"<G, U V^T> = {(G * O_svd).sum():.5f}   sum of singular values = {S.sum():.5f}")
g = torch.Generator().manual_seed(1)
for _ in range(3):  # random directions of spectral norm 1 do worse
    Q = torch.randn(G.shape, generator=g)
    Q = Q / torch.linalg.matrix_norm(Q, ord=2)
    print(f"  a random Q with ||Q||_2 = 1: <G, Q> = {(G * Q).sum():+.5f}")

# %% [markdown]
# How much of that comes from the top directions? Keep only the top $r$: the **rank-$r$
# polar factor** $U_r V_r^\top$ (also spectral norm 1) gains $\sigma_1 + \dots + \sigma_r$.
# And the plain gradient scaled to spectral norm 1, $G / \sigma_1$, what an SGD step of
# the same size does, gains only $\sum_i \sigma_i^2 / \sigma_1$. The first-order gains,
# as a share of the full polar factor's, and the real loss change on the batch when we
# step this one matrix by 0.05 in each direction:

# %%
def loss_after(step_matrix, lr=0.05):
    """Loss on the batch after W <- W - lr * step_matrix for the matrix G belongs to."""
    W = model.blocks[0].mlp.c_proj.weight
    with torch.no_grad():
        saved = W.clone()
        W -= lr * step_matrix.to(W.device)
        out = model(x, y).item()
        W.copy_(saved)
    return out


with torch.no_grad():
    base_loss = model(x, y).item()
candidates = {f"rank-{r} polar factor": U[:, :r] @ Vh[:r] for r in (1, 4, 16) if r < len(S)}
candidates["full polar factor U V^T"] = O_svd
candidates["gradient G / sigma_1"] = G / S[0]
print(f"{'direction (spectral norm 1)':<28} {'<G, Q> share':>13} {'loss change':>12}")
for name, Q in candidates.items():
    print(f"{name:<28} {(G * Q).sum() / S.sum():>12.0%} {loss_after(Q) - base_loss:>+12.5f}")

# %% [markdown]
# At `laptop` we measured: the full polar factor lowers the batch loss about 2.5 times more
# than the gradient scaled to the same spectral norm, and the gradient step does no better
# than the top 4 directions alone (both about 39% of the first-order gain). Keeping the top
# 16 of 128 directions gets three quarters of it: the rest of the spectrum is small, but
# there is a lot of it, and $U V^\top$ gives every direction a full-size step.

# %% [markdown]
# Why not just use the SVD? It is an iterative, largely sequential algorithm: on a GPU it
# runs far below the speed of matrix multiplication, and a model has dozens of matrices to
# process at every step. We want $U V^\top$ from **matrix products only**.

# %% [markdown]
# ## 3. Newton–Schulz from scratch
#
# The trick: an odd polynomial applied to a matrix acts on its singular values.
# With $A = X X^\top$,
#
# $$a X + b (X X^\top) X + c (X X^\top)^2 X = U \, p(\Sigma) \, V^\top, \qquad
# p(x) = a x + b x^3 + c x^5 .$$
#
# So if we first scale $X = G / \|G\|_F$ (every singular value is then in $(0, 1]$) and
# apply a polynomial that pushes every $x \in (0, 1]$ toward 1, a few times, we get
# $\approx U V^\top$. Keller Jordan's quintic $(a, b, c) = (3.4445, -4.7750, 2.0315)$ has a
# steep slope at 0 ($a \approx 3.4$: tiny singular values grow fast) and does not settle
# exactly at 1: after 5 steps the values oscillate inside a band around 1, which is good
# enough for an update direction and much faster than exact convergence.

# %%
a, b, c = NEWTON_SCHULZ_COEFFS
xs = torch.linspace(0, 1, 1001, dtype=torch.float64)
plt.figure(figsize=(6, 3.2))
ys = xs.clone()
for k in range(1, 6):
    ys = a * ys + b * ys**3 + c * ys**5
    plt.plot(xs, ys, label=f"{k} step{'s' if k > 1 else ''}")
plt.axhline(1.0, color="gray", lw=0.5)
plt.xlabel("singular value after normalization")
plt.ylabel("after k steps")
plt.legend()
plt.title("Newton-Schulz quintic, applied k times")
plt.show()
inside = ys[xs >= 3e-3]
print(f"after 5 steps, inputs >= 3e-3 land in [{inside.min():.2f}, {inside.max():.2f}]")

# %% [markdown]
# **Exercise.** Write the iteration for one matrix. Work on the wide orientation (if the
# matrix is tall, transpose it first and transpose back at the end), so that
# $A = X X^\top$ is the smaller Gram matrix.

# %%
def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T with the quintic Newton-Schulz iteration. G: (m, n)."""
    raise NotImplementedError("exercise: normalize, then X <- aX + (bA + cA^2) X, A = X X^T")


# %%
newton_schulz = exercises.check("05_muon.newton_schulz", newton_schulz)

# %% [markdown]
# Compare it with the SVD's $U V^\top$ on our gradient, and with the library's
# `orthogonalize`, which does the same for a whole stack of matrices at once (and in
# bfloat16 on a GPU).

# %%
O_ns = newton_schulz(G)
cos = (O_ns * O_svd).sum() / (O_ns.norm() * O_svd.norm())
print(f"cosine(Newton-Schulz, U V^T) = {cos:.4f}")
torch.testing.assert_close(O_ns, orthogonalize(G), atol=1e-4, rtol=1e-4)
print("matches nanogpt_course.optim.orthogonalize")

# %% [markdown]
# Singular values before and after. The gradient's spread over orders of magnitude; after
# 5 Newton–Schulz steps every one that started above about $3 \cdot 10^{-3}\,\|G\|_F$ sits
# in a band around 1. The very smallest cannot catch up in 5 steps (each step multiplies
# a tiny value by at most $a \approx 3.4$): those directions carry almost none of the
# gradient, and they are what keeps the cosine with the exact $U V^\top$ below 1.
# **Polar Express** (Amsel et al., 2025), the library's other option
# (`method="polar_express"`), uses a different polynomial at each step, each chosen so that
# the *worst* singular value in the range it must handle ends as close to 1 as possible,
# and lands in a tighter band. Its early steps are steep: the product of the five slopes at
# 0 is about 976, against $3.445^5 \approx 485$ for Newton–Schulz, so it lifts small
# singular values about twice as far and reaches further into the tail.

# %%
sv_ns = torch.linalg.svdvals(O_ns)
sv_pe = torch.linalg.svdvals(orthogonalize(G, method="polar_express"))
relative = sv / G.norm()
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
left.semilogy(relative, marker=".")
left.axhline(3e-3, color="gray", lw=0.5, ls="--")
left.set_title("gradient G: sigma / ||G||_F")
left.set_xlabel("index")
right.plot(sv_ns, marker=".", label="Newton-Schulz, 5 steps")
right.plot(sv_pe, marker=".", label="Polar Express, 5 steps")
right.axhline(1.0, color="gray", lw=0.5)
right.set_ylim(0, 1.4)
right.set_title("orthogonalized")
right.set_xlabel("index")
right.legend()
plt.show()
big = relative >= 3e-3
print(f"{int(big.sum())} of {len(sv)} singular values start above 3e-3 of ||G||_F; there:")
print(f"  Newton-Schulz in [{sv_ns[big].min():.3f}, {sv_ns[big].max():.3f}], "
      f"Polar Express in [{sv_pe[big].min():.3f}, {sv_pe[big].max():.3f}]")
print("Polar Express coefficients, step 1:", [round(v, 3) for v in
                                              coefficients("polar_express", 1)[0]],
      "(the paper's 8.287, -23.596, 17.300 divided by 1.01, 1.01^3, 1.01^5: a safety margin "
      "for bf16 rounding)")

# %% [markdown]
# Does the tighter band matter for the loss? The trainer takes
# `--orthogonalizer polar_express`. In a real run (d4, 96M tokens of Python sources on an
# H100, one seed) it ended 0.0035 bits per byte better than Newton-Schulz. Repeated at d6
# with two seeds the gain was 0.0029 on average (0.0000 with one seed, 0.0058 with the
# other), just under the 0.003 the course asks of a change before it becomes the default,
# so Newton-Schulz stays the default. Small gains need several seeds to tell from noise
# (docs/QUALITY.md keeps the numbers).

# %% [markdown]
# ### Same-shape matrices in one call
#
# A GPT has a handful of matrix shapes (the attention projections are square, the MLP ones
# 4x tall or wide) repeated in every layer. Stacking same-shape matrices into one
# `(k, m, n)` tensor turns k small matrix products into one batched product per step.
# On a GPU this is where the time goes (`bench/bench_muon.py` measures it); on a CPU the gain
# is small, but the results agree.

# %%
shapes = {}
for p in model.parameter_kinds()["matrix"]:
    shapes[tuple(p.shape)] = shapes.get(tuple(p.shape), 0) + 1
print("matrix shapes in this model:", shapes)
stack = torch.randn(6, 4 * WIDTH, WIDTH)
t0 = time.perf_counter()
one_call = orthogonalize(stack)
t1 = time.perf_counter()
one_by_one = torch.stack([orthogonalize(m) for m in stack])
t2 = time.perf_counter()
torch.testing.assert_close(one_call, one_by_one, atol=1e-5, rtol=1e-5)
print(f"batched {1e3 * (t1 - t0):.1f} ms, one at a time {1e3 * (t2 - t1):.1f} ms (CPU)")

# %% [markdown]
# On a GPU the library's version of your loop differs in two details, both visible in
# `nanogpt_course/optim/muon.py`. It runs in bfloat16, and it writes each step as
# $X \leftarrow P X$ with $P = aI + bA + cA^2$: one $(m, m)$ matrix times $X$, so no step
# needs a copy of $X$. In bfloat16 *where* you round matters: the diagonal of
# $bA + cA^2$ sits near $1 - a \approx -2.4$ while that of $P$ sits near 1, so the library
# sums the diagonal in fp32 and rounds it once (rounding $bA + cA^2$ first and then adding
# $a$ doubles the error). With the momentum and normalization fused into one kernel, the
# batched step over a d12 model's 72 matrices takes about 5.1 ms on an H100, 5.5x to 7.6x
# less than one matrix at a time across our measurements (the one-at-a-time time is
# host-bound and moves with the machine's CPU; `docs/PERFORMANCE.md`).

# %% [markdown]
# ## 4. The Muon step
#
# Muon orthogonalizes not the raw gradient but a momentum of it:
#
# 1. momentum buffer $M \leftarrow \beta M + (1-\beta) G$;
# 2. Nesterov look-ahead $U = (1-\beta) G + \beta M$;
# 3. $O = \text{orthogonalize}(U)$;
# 4. $W \leftarrow W - \eta \sqrt{\max(1, m/n)}\, O$ for $W$ of shape $(m, n)$.
#
# The factor $\sqrt{\max(1, m/n)}$ is the **shape-aware learning rate**: as a map between
# vectors of unit RMS, an orthogonal $m \times n$ matrix with $m > n$ has gain
# $\sqrt{n/m} < 1$, so tall matrices (the MLP's 4x up-projection) get their step scaled
# back up. Weight decay, when used, is decoupled: $W \leftarrow W - \eta\lambda W$.
#
# **Exercise.** One Muon step for one matrix (use `orthogonalize` from the library).

# %%
def muon_step(weight: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, *,
              lr: float, momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Muon step; returns (new weight, new momentum buffer)."""
    raise NotImplementedError("exercise: momentum, Nesterov, orthogonalize, shape-aware step")


# %%
muon_step = exercises.check("05_muon.muon_step", muon_step)

# %% [markdown]
# The library's `MuonAdamW` does the same for every matrix of a "muon" group (stacked by
# shape) and AdamW for the "adamw" groups. One step on one tall matrix agrees:

# %%
W0 = torch.randn(4 * WIDTH, WIDTH) * 0.02
grad = torch.randn(4 * WIDTH, WIDTH)
W = torch.nn.Parameter(W0.clone())
opt = MuonAdamW([{"kind": "muon", "params": [W], "lr": 0.02, "momentum": 0.95}])
W.grad = grad.clone()
opt.step()
mine, _ = muon_step(W0, grad, torch.zeros_like(W0), lr=0.02, momentum=0.95)
torch.testing.assert_close(W.detach(), mine)
print(f"shape {tuple(W0.shape)}: LR scale {shape_lr_scale(*W0.shape):.1f}, steps agree")

# %% [markdown]
# ### Weight decay that does not fight the update (cautious weight decay)
#
# Decoupled decay shrinks *every* entry of $W$ by the same fraction $\eta\lambda$. Look at
# one entry at a time: where the update $-\eta O$ already pushes the weight toward zero
# ($O$ and $W$ have the same sign), decay agrees with it; where the update pushes the
# weight *away* from zero (the loss wants that entry larger), decay pulls the other way and
# the next steps spend part of their budget undoing it. **Cautious weight decay** (Chen et
# al., 2025; nanochat's Muon does it) decays only the entries of the first kind:
#
# $$W \leftarrow W - \eta\lambda\, W \odot [\,O \odot W > 0\,] - \eta\sqrt{\max(1, m/n)}\, O.$$
#
# Here it is written out for one matrix, next to plain decay, and checked against the
# library's step (`apply_muon_step_(..., cautious=True)`):

# %%
lr, wd = 0.02, 0.5
W_now = torch.randn(4 * WIDTH, WIDTH) * 0.02                # (m, n): a tall MLP matrix
O_now = orthogonalize(torch.randn(4 * WIDTH, WIDTH))       # (m, n): this step's direction
step = lr * shape_lr_scale(*W_now.shape) * O_now
agree = (O_now * W_now) > 0  # (m, n) bool: the update already moves these toward zero
plain = W_now * (1 - lr * wd) - step
cautious = W_now - lr * wd * W_now * agree - step
print(f"entries decayed: plain 100%, cautious {agree.float().mean():.0%}")
print(f"|W| before {W_now.norm():.4f}, after plain {plain.norm():.4f}, "
      f"after cautious {cautious.norm():.4f}")
library = W_now.clone()
apply_muon_step_(library, O_now, lr=lr, weight_decay=wd, cautious=True)
torch.testing.assert_close(library, cautious)
print("matches nanogpt_course.optim.muon.apply_muon_step_(cautious=True)")

# %% [markdown]
# With a random direction about half the entries agree, so cautious decay removes about
# half as much as plain decay per step; in training the share moves with how the
# gradients line up with the weights. Whether that helps is a measurement, not an
# argument: in real runs (docs/QUALITY.md) it scored 0.0076 bits per byte better at d4
# (one seed) and 0.0035 better on the mean of two seeds at d6 (0.0012 and 0.0058), above
# the course's 0.003 bar, so the trainer uses it by default
# (`--no-cautious-weight-decay` turns it off).

# %% [markdown]
# ### Neurons, not only directions: per-neuron normalization (NorMuon)
#
# Orthogonalizing gives every *direction* of the update the same size, but not every
# *neuron*. Orthogonalize a tall random matrix (the shape of the MLP's up-projection) and
# look at the rows of $O$: each row is the update of one output neuron, and their norms
# still differ. NorMuon (Li et al., 2025), one of the
# changes in nanochat's Muon, keeps a running mean of each neuron's squared update,
# $V \leftarrow \beta_2 V + (1-\beta_2)\,\mathrm{mean}_j O_{ij}^2$, divides row $i$ by
# $\sqrt{V_i}$ (Adam's idea, per neuron instead of per entry) and rescales the result to
# the norm $O$ had, so Muon's step size stays what it was. (The library's name for it,
# `variance_beta2`, follows the paper; nothing statistical is reduced, it is a
# normalization.) "Neuron" means the longer side of the matrix: rows of a tall or square
# matrix, columns of a wide one (`second_moment_shape` gives $V$'s shape).
#
# Here is the first step, written out. With $V$ starting at 0, the first step's $V$ is
# $(1-\beta_2)$ times the mean squares, and the constant cancels in the rescaling, so the
# first step makes every row equal *by construction*. The singular values move a little
# in exchange: dividing rows by different numbers undoes part of the orthogonality.

# %%
O_tall = orthogonalize(torch.randn(4 * WIDTH, WIDTH))
row_ms = (O_tall**2).mean(dim=1, keepdim=True)  # (4 * WIDTH, 1): one per output neuron
V = (1 - 0.9) * row_ms
evened = O_tall / V.sqrt()
evened = evened * O_tall.norm() / evened.norm()
print(f"row norms of O:        {O_tall.norm(dim=1).min():.3f} .. {O_tall.norm(dim=1).max():.3f}")
print(f"after the first step:  {evened.norm(dim=1).min():.3f} .. {evened.norm(dim=1).max():.3f}")
sv_o, sv_even = torch.linalg.svdvals(O_tall), torch.linalg.svdvals(evened)
print(f"singular values: O in [{sv_o.min():.3f}, {sv_o.max():.3f}], "
      f"after in [{sv_even.min():.3f}, {sv_even.max():.3f}]")
torch.testing.assert_close(
    evened, variance_reduce(O_tall, torch.zeros(second_moment_shape(O_tall.shape)), 0.9))
print("matches nanogpt_course.optim.muon.variance_reduce")

# %% [markdown]
# After many steps $V$ is an average over time, so a neuron whose updates are large *on
# average* is damped, and the rows of one step are evened out only roughly. Two more of
# nanochat's changes are just as short: MuonEq rescales the rows of the momentum to equal
# norm *before* orthogonalizing, and Muon+ rescales $O$ to the Frobenius norm
# $\sqrt{\min(m, n)}$ of an exact orthogonal matrix. In the library all three are group
# options, off unless turned on with `variance_beta2=0.9`, `row_equilibrate=True` or
# `renormalize=True` (keywords of `build_optimizer`, not trainer flags). Whether each one
# earns its place is measured, not assumed: each is screened in a real run at d4 and kept
# only if it wins by more than the seed noise. `docs/QUALITY.md` keeps the table and says
# which screens have run; the first number, NorMuon on top of Polar Express at d6, was
# 0.0022 bits per byte better with one seed, under the 0.003 bar.

# %% [markdown]
# ## 5. Muon + AdamW vs a fair AdamW baseline
#
# `build_optimizer` makes the standard grouping from `model.parameter_kinds()`: Muon for
# the 2-D matrices inside the blocks; AdamW for the token and value embeddings, the
# `lm_head` and the scalars. The embedding and unembedding LRs are scaled with the width
# by $(d_\text{model}/768)^{-1/2}$; the scalar LR is not.
#
# A fair comparison changes **only the matrix update**. So the baseline takes the very
# same groups and learning rates from `build_optimizer` and switches the matrix group to
# AdamW, with its own learning rate swept (AdamW and Muon step sizes are not on the same
# scale: Muon's update has spectral norm about 1 whatever the gradient). Both start from
# the same weights and see the same batches.

# %%
def fair_adamw(model, matrix_lr):
    """build_optimizer's groups and LRs, with the matrix group updated by AdamW instead."""
    groups = []
    for group in build_optimizer(model).param_groups:
        group = {k: v for k, v in group.items() if k != "initial_lr"}
        if group["name"] == "matrix":
            group = {"name": "matrix", "kind": "adamw", "params": group["params"],
                     "lr": matrix_lr, "betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0}
        groups.append(group)
    return MuonAdamW(groups)


def train(name, make_optimizer, steps: int = STEPS) -> list[float]:
    model = tiny_gpt()
    opt = make_optimizer(model)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        x, y = get_batch(step)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 4) == 0:
            print(f"  {name:<22} step {step + 1:4d}/{steps}  loss {loss.item():.3f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return losses


print("matrix group of each run:",
      {g["name"]: g["kind"] for g in fair_adamw(tiny_gpt(), 1e-3).param_groups})
curves = {"Muon (matrices)": train("Muon (matrices)", build_optimizer)}
for lr in ADAMW_LRS:
    name = f"AdamW (matrices) lr={lr:g}"
    curves[name] = train(name, lambda m, lr=lr: fair_adamw(m, lr))
tail = max(1, STEPS // 10)
final = {name: sum(losses[-tail:]) / tail for name, losses in curves.items()}
for name, value in final.items():
    print(f"{name:<26} mean loss over the last {tail} steps: {value:.3f}")
best_adamw = min((n for n in final if n.startswith("AdamW")), key=final.get)
print(f"Muon minus the best AdamW ({best_adamw}): {final['Muon (matrices)'] - final[best_adamw]:+.3f}")

# %%
plt.figure(figsize=(7, 3.5))
window = max(1, STEPS // 30)
for name, losses in curves.items():
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    plt.plot(smooth, label=name)
plt.xlabel("step")
plt.ylabel("training loss (nats / char)")
plt.legend()
plt.title(f"tiny GPT, d{DEPTH} x {WIDTH}: only the matrix update differs")
plt.show()

# %% [markdown]
# Everything but the matrix update was the same in these runs: the groups, the embedding,
# unembedding and scalar learning rates, the batches and the initial weights. In our
# `laptop` measurement (200 steps), Muon ended at 1.794 against 1.879 for the best AdamW
# matrix learning rate of the sweep (0.01; 0.003 gave 1.900 and 0.03 gave 2.030, so the
# best is bracketed): the orthogonalized updates reach a lower loss in the same number of
# steps. (At the `smoke` preset there are too few steps to see
# anything.) Muon's advantage in the literature is largest for the big block matrices,
# which is exactly where it is used.
#
# ## What next
#
# - `lessons/06_distmuon_zero2`: the same optimizer across several processes, each holding
#   only its share of the optimizer state (ZeRO-2), with no DDP wrapper.
# - `bench/bench_muon.py`: how much same-shape batching saves on a GPU.
