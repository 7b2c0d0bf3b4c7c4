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
# # 06 · DistMuonAdamW: sharding the optimizer over ranks (ZeRO-2)
#
# With several GPUs, the usual recipe (PyTorch's DDP) gives every GPU a full copy of the
# model, the gradients and the optimizer state, and averages the gradients with an
# all-reduce after each backward pass. The copies are wasteful: every rank stores the
# same optimizer state and performs the same update.
#
# **ZeRO** (Rajbhandari et al., 2020) removes the duplication in stages. This lesson builds
# the optimizer the course trains with, `DistMuonAdamW`: Muon + AdamW with its gradients
# and state sharded over ranks (ZeRO stage 2), written directly on `torch.distributed`
# collectives, with no DDP wrapper. You will:
#
# 1. count the memory each rank needs at each ZeRO stage;
# 2. see why all-reduce = reduce-scatter + all-gather, so sharding costs no extra traffic;
# 3. work out the sharding plan (who owns which parameter);
# 4. watch the order of the collectives in one step (communication overlaps compute);
# 5. launch a real 2-process run on the CPU and check it matches 1 process;
# 6. move the saved optimizer state from 2 ranks to 1 or 4 (resharding).

# %%
import json
import os

import matplotlib.pyplot as plt
import torch
from safetensors.torch import load_file

from nanogpt_course import exercises, paths, presets
from nanogpt_course.launch import launch
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import (
    DistMuonAdamW,
    RecordingCollectives,
    build_optimizer,
    consolidate,
    reshard,
)
from nanogpt_course.optim.demo import bigram_batch, demo_config
from nanogpt_course.optim.sharding import make_layout

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
NPROC = 2
DEVICE = "cpu"

# %%
PRESET = presets.validate(PRESET)
DEMO_STEPS = presets.choose(PRESET, smoke=4, laptop=20, full=50)
print(f"preset {PRESET!r}: the real run uses {NPROC} processes on {DEVICE}, "
      f"{DEMO_STEPS} steps")

# %% [markdown]
# ## 1. Memory per rank: ZeRO stages 0 to 3
#
# Per parameter, training holds the parameter itself, its gradient and the optimizer's
# state. With $W$ ranks (processes, usually one per GPU):
#
# | stage | what is split over the $W$ ranks | per rank |
# |---|---|---|
# | 0 (DDP) | nothing | params + grads + state |
# | 1 | optimizer state | params + grads + state / W |
# | 2 | state and gradients | params + (grads + state) / W |
# | 3 | everything | (params + grads + state) / W |
#
# Stage 3 must gather each layer's parameters before using them, in the forward and again
# in the backward pass: more communication and more machinery. Stage 2 keeps the model
# whole on every rank, so the forward and backward passes are the plain single-GPU code.
#
# **Exercise.** Bytes per rank at a given stage (fp32 params and grads by default, and
# 8 bytes of optimizer state per parameter, as AdamW's two fp32 moments).

# %%
def zero_bytes_per_rank(num_params: int, world_size: int, stage: int, *, param_bytes: int = 4,
                        grad_bytes: int = 4, state_bytes: int = 8) -> dict[str, float]:
    """Bytes per rank for parameters, gradients and optimizer state at a ZeRO stage."""
    raise NotImplementedError("exercise: divide the sharded parts by world_size")


# %%
zero_bytes_per_rank = exercises.check("06_distmuon_zero2.zero_bytes_per_rank",
                                      zero_bytes_per_rank)

# %% [markdown]
# Our optimizer stores less than AdamW: Muon keeps one momentum buffer (4 bytes) per matrix
# entry, AdamW two moments (8 bytes) for the embeddings, `lm_head` and scalars. Counting the
# real models (on PyTorch's `meta` device: shapes without memory):

# %%
sizes = {}
for depth in (12, 20):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_depth(depth, vocab_size=32768, sequence_len=2048))
    kinds = model.parameter_kinds()
    matrix = sum(p.numel() for p in kinds["matrix"])
    total = model.num_params()
    state = 4 * matrix + 8 * (total - matrix)
    sizes[depth] = (total, state / total)
    print(f"d{depth}: {total / 1e6:.0f}M parameters ({matrix / total:.0%} in Muon matrices), "
          f"optimizer state {state / 2**30:.2f} GiB = {state / total:.2f} bytes/param")

# %%
total, state_per_param = sizes[20]
worlds = [1, 2, 4, 8]
plt.figure(figsize=(6.5, 3.5))
for stage in range(4):
    per_rank = [zero_bytes_per_rank(total, w, stage, state_bytes=state_per_param)["total"]
                / 2**30 for w in worlds]
    plt.plot(worlds, per_rank, marker="o", label=f"stage {stage}")
plt.xticks(worlds)
plt.xlabel("ranks (GPUs)")
plt.ylabel("GiB per rank")
plt.title("d20: params + grads + Muon/AdamW state (fp32), per rank")
plt.legend()
plt.show()
for stage in range(4):
    parts = zero_bytes_per_rank(total, 8, stage, state_bytes=state_per_param)
    print(f"stage {stage}, 8 ranks: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                                  for k, v in parts.items()))

# %% [markdown]
# Activations (which depend on the batch, not on the optimizer) come on top; at d20 they
# dominate, which is why stage 2 is the sweet spot here: it removes most of the
# optimizer's overhead and leaves the forward/backward untouched.

# %% [markdown]
# ## 2. The collectives: all-reduce = reduce-scatter + all-gather
#
# Three collective operations over $W$ ranks, each holding a tensor of $N$ numbers:
#
# - **all-reduce**: everyone ends with the elementwise sum (DDP averages gradients this way);
# - **reduce-scatter**: cut the tensors into $W$ chunks; rank $r$ ends with the sum of
#   chunk $r$ only;
# - **all-gather**: rank $r$ contributes chunk $r$; everyone ends with all chunks.
#
# An all-reduce *is* a reduce-scatter followed by an all-gather (that is how the ring
# algorithm implements it). ZeRO-2 just does useful work in between: each rank updates only
# the chunk it owns, then all-gathers the updated parameters instead of the gradients.
#
# **Exercise.** Simulate a reduce-scatter: `per_rank[r]` is rank $r$'s tensor.

# %%
def simulated_reduce_scatter(per_rank: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank r receives the sum over ranks of chunk r (W chunks of equal length)."""
    raise NotImplementedError("exercise: sum the ranks' tensors, cut into W chunks")


# %%
simulated_reduce_scatter = exercises.check("06_distmuon_zero2.simulated_reduce_scatter",
                                           simulated_reduce_scatter)

# %% [markdown]
# An all-gather is a concatenation that every rank receives. Composing the two gives every
# rank the full sum, exactly an all-reduce:

# %%
def simulated_all_gather(shards: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.cat(shards) for _ in shards]


world = 4
grads = [torch.randn(12, generator=torch.Generator().manual_seed(r)) for r in range(world)]
all_reduced = simulated_all_gather(simulated_reduce_scatter(grads))
for r in range(world):
    torch.testing.assert_close(all_reduced[r], sum(grads))
print("all_gather(reduce_scatter(x)) == all_reduce(x) on every rank")

# %% [markdown]
# Traffic: in the ring algorithms each rank sends $\frac{W-1}{W}N$ numbers for a
# reduce-scatter and the same for an all-gather, so $2\frac{W-1}{W}N$ for an all-reduce.
# DDP all-reduces the gradients; ZeRO-2 reduce-scatters the gradients and all-gathers the
# parameters: **the same bytes on the wire**, with $1/W$ of the optimizer work and state
# per rank.

# %%
N = sizes[20][0]
for w in (2, 4, 8):
    per_rank = 2 * (w - 1) / w * N * 4
    print(f"W={w}: DDP and ZeRO-2 both send {per_rank / 2**30:.2f} GiB per rank per step (fp32)")

# %% [markdown]
# ## 3. The sharding plan
#
# Who owns what? Two different answers for the two halves of the optimizer:
#
# - **Muon matrices are owned whole.** Orthogonalization needs the entire matrix, so each
#   matrix belongs to one rank. Same-shape matrices are stacked, `(W * per_rank, m, n)`,
#   in owner order, and one reduce-scatter hands each rank its `(per_rank, m, n)` slab,
#   which it orthogonalizes in one batched call. Owners go round-robin within each shape,
#   continuing where the previous shape stopped, so ranks get about the same work.
# - **AdamW tensors are cut flat.** Adam is elementwise, so the flattened tensor is split into
#   $W$ chunks of $\lceil N/W \rceil$ elements (zero-padded at the end); rank $r$ updates
#   chunk $r$. Tensors smaller than 4096 elements are not worth two collectives: they are
#   all-reduced together in one, and every rank updates them.
#
# **Exercise.** The bounds of rank $r$'s flat chunk.

# %%
def chunk_bounds(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, stop) of rank's flat chunk."""
    raise NotImplementedError("exercise: chunks of ceil(numel / world_size); clamp to numel")


# %%
chunk_bounds = exercises.check("06_distmuon_zero2.chunk_bounds", chunk_bounds)

# %% [markdown]
# The plan for the tiny GPT the real run trains, on `NPROC` ranks (`make_layout` is what
# the optimizer and the checkpoints use):

# %%
torch.manual_seed(0)
demo_model = GPT(demo_config())
demo_opt = build_optimizer(demo_model)
names = {id(p): n for n, p in demo_model.named_parameters()}
params = [p for g in demo_opt.param_groups for p in g["params"]]
layout = make_layout(demo_opt.param_groups, world_size=NPROC)
print(f"{'parameter':<28} {'shape':<12} {'kind':<6} placement")
for p, entry in zip(params, layout["params"]):
    if entry["mode"] == "owned":
        where = f"whole, on rank {entry['owner']}"
    elif entry["mode"] == "flat":
        bounds = [chunk_bounds(p.numel(), NPROC, r) for r in range(NPROC)]
        where = "flat chunks " + " ".join(f"[{a}:{b})" for a, b in bounds)
    else:
        where = "small: all-reduced, on every rank"
    print(f"{names[id(p)]:<28} {str(tuple(p.shape)):<12} {entry['kind']:<6} {where}")

# %% [markdown]
# ## 4. One step, and where the waiting happens
#
# `DistMuonAdamW.step()` launches **every** gradient reduce-scatter asynchronously before
# waiting for any of them. Then, per unit in launch order, it waits for that one, updates
# what it owns, and launches an async all-gather of the result. While it computes on one
# unit, the others are still in flight. All collectives go through a small `Collectives`
# object, so it can be wrapped to record the order of calls: the library's
# `RecordingCollectives` (a dozen lines in `nanogpt_course/optim/distributed.py`) does
# exactly that. (Without a process group it acts as a world of one, so this runs right
# here in the notebook. On one rank every AdamW tensor counts as "small" and joins the
# single all-reduce; the matrices keep their reduce-scatters.)

# %%
recorder = RecordingCollectives()
opt = DistMuonAdamW([{k: v for k, v in g.items()} for g in demo_opt.param_groups],
                    collectives=recorder)
x, y = bigram_batch(0)
demo_model(x, y).backward()
opt.step()
print("\n".join(f"{'' if event == 'launch' else '  '}{event} {name}"
                for event, name in recorder.log))
first_wait = next(i for i, (event, _) in enumerate(recorder.log) if event == "wait")
assert ("launch", "reduce_scatter") not in recorder.log[first_wait:]  # all launched up front

# %% [markdown]
# ## 5. A real run on 2 processes
#
# `nanogpt_course.optim.demo` trains the tiny GPT for a few steps on a synthetic language.
# Every rank builds the same model, draws the same global batch and takes its own rows;
# `build_optimizer` picks `MuonAdamW` on one process and `DistMuonAdamW` on several. We
# start it with `torchrun` through `nanogpt_course.launch.launch`: rank 0's output streams
# into this cell, and a failure raises an error with the tail of every rank's output
# (unlike `!torchrun`, which hides failures). On the CPU the backend is gloo and each rank
# gets one thread.
#
# The global batch is 8 rows, 4 per forward pass: one process accumulates 2 forward
# passes, two processes run 1 each. The same forward passes, so we expect the same model.

# %%
run_root = paths.runs_dir("lesson06_demo")
runs = {}
for nproc in (1, NPROC):
    print(f"--- {nproc} process{'es' if nproc > 1 else ''} ---")
    result = launch("nanogpt_course.optim.demo", "--steps", str(DEMO_STEPS), nproc=nproc,
                    device=DEVICE, out=run_root / f"{nproc}ranks", timeout=600)
    runs[nproc] = result.run_dir

# %%
one = load_file(runs[1] / "params.safetensors")
many = load_file(runs[NPROC] / "params.safetensors")
worst = max(float((one[k] - many[k]).abs().max()) for k in one)
print(f"largest difference over all {len(one)} parameter tensors: {worst:.3g}")
if DEVICE == "cpu":
    assert all(torch.equal(one[k], many[k]) for k in one), "1 and N processes differ"
    print(f"1 process and {NPROC} processes give bit-identical parameters")
else:  # GPUs orthogonalize in bf16 and reduce in a different order: close, not identical
    for k in one:
        torch.testing.assert_close(many[k], one[k], atol=1e-2, rtol=1e-2)

# %% [markdown]
# And the memory: the optimizer state each rank holds, measured by the optimizer itself
# (`state_bytes()` adds up the storage behind its state tensors).

# %%
reports = {n: json.loads((runs[n] / "report.json").read_text()) for n in runs}
labels, values = [], []
for n, report in reports.items():
    for r, b in enumerate(report["state_bytes_per_rank"]):
        labels.append(f"{n} proc\nrank {r}")
        values.append(b / 1024)
plt.figure(figsize=(5, 3))
plt.bar(labels, values)
plt.ylabel("optimizer state (KiB)")
plt.title("measured optimizer state per rank")
plt.show()
total = reports[1]["state_bytes_per_rank"][0]
print(f"1 process: {total / 1024:.0f} KiB; {NPROC} processes: "
      + ", ".join(f"{b / 1024:.0f}" for b in reports[NPROC]["state_bytes_per_rank"])
      + f" KiB (total / {NPROC} = {total / NPROC / 1024:.0f})")

# %% [markdown]
# ## 6. Saving on N ranks, loading on M
#
# Each rank saved its own shard, `optimizer_rank<R>.safetensors`, plus one layout that is
# the same for every rank. `consolidate` rebuilds the full state from all shards, which
# is exactly what the 1-process run holds; `reshard` cuts a full state for any other world
# size. (`optim.load_sharded(optimizer, shards, layout)` does both when a run resumes on a
# different number of GPUs; the checkpoint module owns the files.)

# %%
layout_n = json.loads((runs[NPROC] / "optimizer_layout.json").read_text())
shards = [load_file(runs[NPROC] / f"optimizer_rank{r}.safetensors") for r in range(NPROC)]
full, full_layout = consolidate(shards, layout_n)
single = load_file(runs[1] / "optimizer_rank0.safetensors")
assert full.keys() == single.keys()
for key in full:
    if DEVICE == "cpu":
        assert torch.equal(full[key], single[key]), key
    else:
        torch.testing.assert_close(full[key], single[key], atol=1e-2, rtol=1e-2)
print(f"consolidated {NPROC} shards = the 1-process optimizer state ({len(full)} tensors)")
for new_world in (1, 4):
    cut = [reshard(full, full_layout, world_size=new_world, rank=r)[0] for r in range(new_world)]
    kib = [sum(t.numel() * t.element_size() for t in c.values()) / 1024 for c in cut]
    print(f"resharded for {new_world} rank(s): " + ", ".join(f"{k:.0f} KiB" for k in kib))

# %% [markdown]
# ## What next
#
# - `lessons/07_data_pipeline`: feeding the model tokens fast enough.
# - The trainer (`python -m nanogpt_course.train`) uses `build_optimizer` and this same
#   sharding; `make ddp-train NGPUS=8` runs it on 8 GPUs.
