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
# # 06 · DistMuonAdamW: sharding gradients and optimizer state over ranks (ZeRO-2)
#
# Words first. A **rank** is one of the $W$ cooperating processes (usually one per GPU).
# A **collective** is a communication call every rank makes together: an **all-reduce**
# leaves every rank with the sum of all ranks' tensors, a **reduce-scatter** leaves each
# rank with one slice of that sum, an **all-gather** gives every rank all the slices.
# **NCCL** runs them between GPUs, **gloo** between CPU processes (what this lesson uses).
#
# With several GPUs, the usual recipe (PyTorch's DDP) gives every GPU a full copy of the
# model, the gradients and the optimizer state, and averages the gradients with
# all-reduces (launched in buckets while backward runs). The copies are wasteful: every
# rank stores the same gradients and optimizer state and performs the same update.
#
# **ZeRO** (the Zero Redundancy Optimizer, Rajbhandari et al., 2020) removes the
# duplication in stages. This lesson builds
# the optimizer the course trains with, `DistMuonAdamW`: Muon + AdamW with its gradients
# and state sharded over ranks (ZeRO stage 2), written directly on `torch.distributed`
# collectives, with no DDP wrapper. You will:
#
# 1. draw who holds what at each ZeRO stage, and count the bytes;
# 2. see why all-reduce = reduce-scatter + all-gather, so sharding costs no extra traffic;
# 3. work out the sharding plan (who owns which parameter);
# 4. write a ZeRO-2 step from scratch (about 40 lines) and run it on 2 processes against
#    all-reduce data parallelism and against the library;
# 5. draw the recorded collectives as a timeline: communication overlaps backward;
# 6. measure the gradient memory each rank holds on 1, 2 and 4 ranks;
# 7. move the saved optimizer state from 2 ranks to 1 or 4 (resharding).
#
# **Run time**, measured on a shared, busy 2-core CPU (load average about 10): `smoke` 65 s,
# `laptop` 50 s; the sizes barely matter, most of it is starting the 9 processes of the
# four launches. `full` (an estimate): about a minute on GPUs.

# %%
import inspect
import json
import os
import textwrap

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from safetensors.torch import load_file, save_file

from nanogpt_course import exercises, paths, presets
from nanogpt_course.launch import finish_distributed, init_distributed, launch
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.optim import (
    DistMuonAdamW,
    RecordingCollectives,
    adamw_step_,
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
DEMO_STEPS = presets.choose(PRESET, smoke=3, laptop=10, full=30)
MEMORY_WORLDS = [1, 2, 4] if DEVICE == "cpu" else sorted({1, NPROC})
print(f"preset {PRESET!r}: the real runs use {NPROC} processes on {DEVICE}, {DEMO_STEPS} "
      f"steps; memory measured on {MEMORY_WORLDS} ranks")

# %% [markdown]
# ## 1. Who holds what: ZeRO stages 0 to 3
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
# whole on every rank, so the forward and backward passes are the plain single-GPU code;
# only *when* a gradient appears matters, as we will see. The picture, for 4 ranks: each
# row is a rank, each band a quarter of the model's parameters, gradients or state.

# %%
def draw_zero_stages(world: int = 4) -> None:
    colors = {"params": "tab:blue", "grads": "tab:orange", "state": "tab:green"}
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8), sharey=True)
    for stage, ax in enumerate(axes):
        sharded = {"params": stage >= 3, "grads": stage >= 2, "state": stage >= 1}
        for col, (what, color) in enumerate(colors.items()):
            for rank in range(world):
                for part in range(world):  # band `part` of this tensor kind
                    held = not sharded[what] or part == rank
                    ax.add_patch(Rectangle((col * (world + 1) + part, world - 1 - rank), 1, 0.8,
                                           color=color, alpha=0.9 if held else 0.08))
        ax.set_xlim(0, 3 * (world + 1) - 1)
        ax.set_ylim(-0.2, world)
        ax.set_xticks([world / 2 + c * (world + 1) for c in range(3)], list(colors))
        ax.set_yticks([world - 0.6 - r for r in range(world)], [f"rank {r}" for r in range(world)])
        ax.set_title(f"stage {stage}" + (" (DDP)" if stage == 0 else ""))
    fig.suptitle("who holds what (dark: held, faint: held by another rank)")
    plt.tight_layout()
    plt.show()


draw_zero_stages()

# %% [markdown]
# **Exercise.** Bytes per rank at a given stage (fp32 params and grads by default, and
# 8 bytes of optimizer state per parameter, as AdamW's two fp32 moments). Return a dict
# with the keys `"params"`, `"grads"`, `"optimizer"` and `"total"` (bytes, as floats: a
# sharded part is divided by $W$ exactly, not rounded).

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
# entry, AdamW two moments (8 bytes) for the embeddings, `lm_head` and scalars (the small
# value-embedding gates go to Muon too; they are too small to change these totals).
# Counting the real models (on PyTorch's `meta` device: shapes without memory) at
# nanochat's 32,768-token vocabulary, as in docs/PERFORMANCE.md's memory table; with the
# course's default GPT-2 vocabulary (50,259) d20 has 1,166M parameters, because the value
# embeddings have one row per token:

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
# Activations (which depend on the batch, not on the optimizer) come on top, and at d20
# they are the larger part: at micro-batch 16 one H100 peaks at 46.9 GiB against 11.9 GiB
# of parameters, gradients and state (docs/PERFORMANCE.md). Why stop at stage 2? On 8 GPUs
# stage 3 would save only the parameters' share (about 3 GiB here) and costs an extra
# all-gather of the parameters in the backward pass (about 1.5x the traffic) plus a
# forward and backward that are no longer the plain single-GPU code. Stage 2 removes most
# of the optimizer's overhead and leaves the forward/backward untouched.

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
# parameters: **the same bytes on the wire**, with $1/W$ of the optimizer work, state and
# (once backward is over) gradients per rank.

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
# - **AdamW tensors are cut flat.** Adam is elementwise, so the flattened tensor is split into
#   $W$ chunks of $\lceil N/W \rceil$ elements; rank $r$ updates chunk $r$. The last
#   chunks can be short or empty: both ends are clamped to $N$, so a rank past the end
#   gets the empty chunk `(N, N)` (the zero padding exists only in the communication
#   buffer, where every chunk must have the same size). Tensors smaller than 4096 elements are not worth two collectives: they are
#   all-reduced together in one, and every rank updates them.
# - **Muon matrices are owned whole.** Orthogonalization needs the entire matrix, so each
#   matrix belongs to one rank; owners go round-robin within each shape, in parameter
#   order. So $W$ consecutive same-shape matrices in that order (a layer's `c_q` and `c_k`,
#   or two layers' `c_fc`) have $W$ different owners: stacked
#   `(W, m, n)` in owner order, they form a **slab**, and one reduce-scatter hands each rank
#   the summed gradient of its own matrix.
#
# **Exercise.** The bounds of rank $r$'s flat chunk.

# %%
def chunk_bounds(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, stop) of rank's flat chunk."""
    raise NotImplementedError("exercise: chunks of ceil(numel / world_size); clamp both "
                              "start and stop to numel")


# %%
chunk_bounds = exercises.check("06_distmuon_zero2.chunk_bounds", chunk_bounds)

# %% [markdown]
# The plan for the tiny GPT the runs below train, on `NPROC` ranks (`make_layout` is what
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
# ## 4. A ZeRO-2 step from scratch
#
# The trick that makes stage 2 save memory is *when* the gradients are sharded. If we
# waited for `loss.backward()` to finish, every rank would hold every full gradient at the
# end of backward, exactly like DDP (that is ZeRO-1's memory). Instead, PyTorch calls a
# hook the moment a parameter's gradient is complete
# (`Tensor.register_post_accumulate_grad_hook`): there we launch the reduce-scatter
# **asynchronously** (backward goes on computing the next layer's gradients while it
# travels), keep the chunk we own, and drop the full gradient (`p.grad = None`). The step
# then waits for the collectives, runs AdamW on its chunks only and all-gathers the new
# values. AdamW everywhere keeps it short; the library adds Muon's whole-matrix slabs.

# %%
def zero2_attach(params: list, world: int, rank: int) -> dict:
    """Hooks that reduce-scatter each gradient as soon as backward has it. Returns the
    state: flat chunk sizes, this rank's Adam moments (chunk-sized), summed grad chunks."""
    chunk = [-(-p.numel() // world) for p in params]  # ceil(numel / W)
    st = {"chunk": chunk, "grad": {}, "work": [], "t": 0,
          "m": [torch.zeros(c, device=p.device) for c, p in zip(chunk, params)],
          "v": [torch.zeros(c, device=p.device) for c, p in zip(chunk, params)]}

    def hook(i):
        def reduce_scatter(p):
            flat = p.grad.reshape(-1)
            send = F.pad(flat, (0, chunk[i] * world - flat.numel()))  # (W * chunk,)
            st["grad"][i] = torch.empty(chunk[i], device=p.device)  # my chunk of the sum
            st["work"].append(dist.reduce_scatter_tensor(st["grad"][i], send, async_op=True))
            p.grad = None  # the full gradient is freed right away
        return reduce_scatter

    for i, p in enumerate(params):
        p.register_post_accumulate_grad_hook(hook(i))
    return st


@torch.no_grad()
def zero2_step(params: list, st: dict, world: int, rank: int, **adam) -> None:
    """Wait for the reduce-scatters, AdamW on this rank's chunks, all-gather the values."""
    for work in st["work"]:
        work.wait()
    st["work"], st["t"] = [], st["t"] + 1
    for i, p in enumerate(params):
        flat, c = p.view(-1), st["chunk"][i]
        lo, hi = min(rank * c, flat.numel()), min((rank + 1) * c, flat.numel())
        mine = F.pad(flat[lo:hi], (0, c - (hi - lo)))  # my chunk (c,), zero padded
        grad = st["grad"].pop(i) / world  # the average over ranks
        adamw_step_([mine], [grad], [st["m"][i]], [st["v"][i]], step=st["t"], **adam)
        full = torch.empty(c * world, device=p.device)
        dist.all_gather_into_tensor(full, mine)  # everyone gets everyone's new chunk
        flat.copy_(full[: flat.numel()])


# %% [markdown]
# For comparison, plain data parallelism: all-reduce every full gradient after backward,
# then every rank runs the same AdamW on everything.

# %%
@torch.no_grad()
def allreduce_step(params: list, st: dict, world: int, **adam) -> None:
    st["t"] += 1
    for i, p in enumerate(params):
        dist.all_reduce(p.grad)  # the sum over ranks, on every rank
        adamw_step_([p], [p.grad / world], [st["m"][i]], [st["v"][i]], step=st["t"], **adam)
        p.grad = None


# %% [markdown]
# The function every rank runs trains the tiny GPT three ways from the same start: all-reduce
# data parallelism, our ZeRO-2, and the library's `DistMuonAdamW` (AdamW groups only, every
# tensor cut flat, as ours). Each rank takes its rows of the same global batch. After each
# backward it notes the gradient bytes it holds; the library's run also records its
# collectives (`RecordingCollectives`, with a mark each time a gradient is ready).

# %%
def live_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def train_three_ways(steps: int, out: str) -> None:
    info = init_distributed()
    W, R, dev = info.world_size, info.rank, info.device
    adam = {"lr": 3e-3, "beta1": 0.8, "beta2": 0.95, "eps": 1e-10}
    results, grad_bytes, log = {}, {}, []
    for name in ("allreduce", "zero2", "library"):
        torch.manual_seed(0)
        model = GPT(demo_config()).to(dev)
        params = list(model.parameters())
        if name == "zero2":
            st = zero2_attach(params, W, R)
        elif name == "allreduce":
            st = {"t": 0, "m": [torch.zeros_like(p) for p in params],
                  "v": [torch.zeros_like(p) for p in params]}
        else:
            comm = RecordingCollectives(mark_grads=True)
            group = {"kind": "adamw", "params": params, "lr": adam["lr"], "eps": adam["eps"],
                     "betas": (adam["beta1"], adam["beta2"])}
            opt = DistMuonAdamW([group], small_param_numel=1, collectives=comm)
        for step in range(steps):
            x, y = bigram_batch(step)  # the same global batch (8 rows) on every rank
            if name == "library":
                comm.log = []  # keep the last step's log only
            rows = len(x) // W
            model(x[R * rows:(R + 1) * rows].to(dev), y[R * rows:(R + 1) * rows].to(dev)).backward()
            if name == "zero2":
                grad_bytes[name] = live_bytes(st["grad"].values())
                zero2_step(params, st, W, R, **adam)
            elif name == "allreduce":
                grad_bytes[name] = live_bytes(p.grad for p in params)
                allreduce_step(params, st, W, **adam)
            else:
                grad_bytes[name] = opt.grad_bytes()
                opt.step()
                log = comm.log
        results.update({f"{name}.{n}": p.detach().cpu() for n, p in model.named_parameters()})
    if R == 0:
        os.makedirs(out, exist_ok=True)
        save_file(results, os.path.join(out, "params.safetensors"))
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump({"grad_bytes": grad_bytes, "log": log, "world_size": W,
                       "param_bytes": live_bytes(params)}, f)
    finish_distributed()  # every rank waits here: none tears gloo down while rank 0 writes


# %% [markdown]
# The notebook is one process; the runs need `NPROC`. We write the functions above into a
# script (their source, via `inspect`) and start it with `torchrun` through
# `nanogpt_course.launch.launch`: rank 0's output streams into the cell, and a failure
# raises with the tail of every rank's output (unlike `!torchrun`, which hides failures).
# On the CPU the backend is gloo and each rank gets one thread.

# %%
run_root = paths.runs_dir("lesson06_demo")
run_root.mkdir(parents=True, exist_ok=True)
header = '''import json, os, sys
import torch, torch.distributed as dist, torch.nn.functional as F
from safetensors.torch import save_file
from nanogpt_course.launch import finish_distributed, init_distributed
from nanogpt_course.model import GPT
from nanogpt_course.optim import DistMuonAdamW, RecordingCollectives, adamw_step_
from nanogpt_course.optim.demo import bigram_batch, demo_config
'''
functions = [zero2_attach, zero2_step, allreduce_step, live_bytes, train_three_ways]
script = run_root / "zero2_from_scratch.py"
script.write_text(header + "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in functions)
                  + "\n\nif __name__ == '__main__':\n"
                  "    train_three_ways(int(sys.argv[1]), sys.argv[sys.argv.index('--out') + 1])\n")
three = launch(str(script), str(DEMO_STEPS), nproc=NPROC, device=DEVICE,
               out=run_root / "three_ways", timeout=600).run_dir
print(f"ran {script.name} on {NPROC} ranks")

# %%
got = load_file(three / "params.safetensors")
report = json.loads((three / "report.json").read_text())
keys = [k.split(".", 1)[1] for k in got if k.startswith("allreduce.")]
for name in ("zero2", "library"):
    worst = max(float((got[f"{name}.{k}"] - got[f"allreduce.{k}"]).abs().max()) for k in keys)
    for k in keys:
        torch.testing.assert_close(got[f"{name}.{k}"], got[f"allreduce.{k}"])
    print(f"{name:>8} vs all-reduce data parallel: largest difference {worst:.2g}")
for name, b in report["grad_bytes"].items():
    print(f"{name:>9}: {b / 1024:6.1f} KiB of gradients held by rank 0 after backward "
          f"(the model: {report['param_bytes'] / 1024:.1f} KiB)")

# %% [markdown]
# The three trainings agree, and the two ZeRO-2 versions hold half the gradient bytes on
# 2 ranks (exactly half here: every tensor of this model has an even size; with an odd
# one a rank would hold up to $W - 1$ extra zeros of padding). Our 40 lines leave out
# what the library adds: Muon's whole-matrix slabs, small tensors bundled into one
# all-reduce, buckets launched in the order gradients complete, a bound on the collectives
# in flight (on GPUs NCCL keeps each send buffer alive until its kernel runs, so unbounded
# buckets in flight would hold every full gradient again), gradient accumulation (each micro-step's backward reduce-scatters and the
# owned chunk is *added* into an accumulator), clipping with the global norm, and the
# checkpoints' resharding.
#
# ## 5. Communication overlaps backward
#
# Here is the library's recorded log of one step on rank 0 as a timeline, four rows: the
# hooks (a gradient is ready), the reduce-scatters being launched, the moments the
# optimizer step *waited for* a reduce-scatter to finish before updating its shard, and
# the all-gathers launched to send the updated shards back; the shaded band is the
# backward pass. Every reduce-scatter leaves *while
# backward is still running*. (PyTorch's DDP overlaps its all-reduces the same way; our
# short `allreduce_step` above does not, to stay short. What ZeRO-2 adds is that each rank
# then keeps only its own shard.)

# %%
def draw_timeline(log: list) -> None:
    t0 = log[0][3]
    ms = lambda t: 1000 * (t - t0)  # noqa: E731
    start = next(e[3] for e in log if e[1] == "backward_start")
    end = next(e[3] for e in log if e[1] == "backward_end")
    rows = {"gradient ready (hook)": ("mark", "grad_ready"),
            "reduce-scatter launched": ("launch", "reduce_scatter"),
            "waited for": ("wait", "reduce_scatter"),
            "all-gather launched": ("launch", "all_gather")}
    plt.figure(figsize=(9, 2.8))
    plt.axvspan(ms(start), ms(end), color="tab:gray", alpha=0.15, label="backward")
    for y, (event, op) in enumerate(rows.values()):
        times = [ms(e[3]) for e in log if e[0] == event and e[1] == op]
        plt.scatter(times, [len(rows) - 1 - y] * len(times), marker="|", s=300)
    plt.yticks(range(len(rows)), list(rows)[::-1])
    plt.xlabel("milliseconds since the first event")
    plt.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.title("one step of DistMuonAdamW on rank 0 (recorded)")
    plt.tight_layout()
    plt.show()


log = report["log"]
draw_timeline(log)
end = next(n for n, e in enumerate(log) if e[1] == "backward_end")
during = sum(1 for e in log[:end] if e[:2] == ["launch", "reduce_scatter"])
total_rs = sum(1 for e in log if e[:2] == ["launch", "reduce_scatter"])
print(f"{during} of {total_rs} reduce-scatters launched before backward ended")
assert during == total_rs  # every AdamW tensor gets a gradient: none waits for the end

# %% [markdown]
# On a GPU the same hooks run, but with one caveat: `torch.compile` of the *whole* model
# turns backward into one graph, whose gradients all appear when it finishes, so the hooks
# would fire together at the end. The trainer's `--compile` therefore compiles block by
# block when it uses `DistMuonAdamW` (`nanogpt_course/train/compiling.py`): each block's
# gradients are ready as soon as that block's backward is done.
#
# ## 6. Gradient memory per rank, measured
#
# `nanogpt_course.optim.demo` trains the tiny GPT with the library's optimizer
# (`build_optimizer` picks `MuonAdamW` on one process and `DistMuonAdamW` on several) and
# reports, per rank, the gradient bytes alive after the last backward (measured from the
# tensors) next to what the sharding plan predicts. The global batch is 8 rows: 1 process
# accumulates 2 forward passes of 4 rows, 2 processes run 1 pass of 4 rows each, 4
# processes 1 pass of 2 rows each.

# %%
runs = {}
for nproc in MEMORY_WORLDS:
    print(f"--- {nproc} process{'es' if nproc > 1 else ''} ---")
    runs[nproc] = launch("nanogpt_course.optim.demo", "--steps", str(DEMO_STEPS),
                         "--device-batch", str(min(4, 8 // nproc)), nproc=nproc, device=DEVICE,
                         out=run_root / f"{nproc}ranks", timeout=600).run_dir
reports = {n: json.loads((runs[n] / "report.json").read_text()) for n in runs}

# %%
full = reports[1]["param_bytes"]
plt.figure(figsize=(7, 3.5))
x, centers = 0, {}
for n, rep in reports.items():
    measured = rep["grad_bytes_after_backward_per_rank"]
    predicted = [a + b for a, b in zip(rep["predicted_owned_grad_bytes_per_rank"],
                                       rep["predicted_bound_grad_bytes_per_rank"])]
    xs = list(range(x, x + n))
    plt.bar(xs, [b / 1024 for b in measured], color="tab:orange",
            label="measured after backward" if x == 0 else None)
    plt.scatter(xs, [b / 1024 for b in predicted], color="black", marker="_", s=400, zorder=3,
                label="predicted by the plan" if x == 0 else None)
    centers[f"{n} rank{'s' if n > 1 else ''}"] = x + (n - 1) / 2
    x += n + 1
plt.axhline(full / 1024, color="gray", ls="--", label="every full gradient (DDP, ZeRO-1)")
plt.xticks(list(centers.values()), list(centers))
plt.ylabel("gradient KiB on the rank")
plt.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
plt.title("gradient memory per rank after backward")
plt.show()
for n, rep in reports.items():
    print(f"{n} rank(s): gradients {[round(b / 1024, 1) for b in rep['grad_bytes_after_backward_per_rank']]}"
          f" KiB, optimizer state {[round(b / 1024, 1) for b in rep['state_bytes_per_rank']]} KiB")

# %% [markdown]
# Each rank's gradients and optimizer state shrink like $1/W$ (the small replicated tensors
# and the Muon matrices, owned whole, can make the ranks differ a little: compare the
# printed numbers). And the model is the same: 1 process and 2 processes run the same two
# forward passes and add the same two gradients. One process accumulates
# $g_1/2 + g_2/2$ in `p.grad`; two ranks sum $g_1 + g_2$ in the reduce-scatter and then
# halve it. Halving is exact in floating point, so on the CPU the parameters are
# bit-identical. (With more micro-batches per rank the additions happen
# in another order, e.g. $(g_1 + g_3) + (g_2 + g_4)$ instead of $((g_1 + g_2) + g_3) + g_4$,
# and the results agree to float rounding; the tests check that to a tolerance.)

# %%
one = load_file(runs[1] / "params.safetensors")
many = load_file(runs[NPROC] / "params.safetensors")
worst = max(float((one[k] - many[k]).abs().max()) for k in one)
print(f"largest difference over all {len(one)} parameter tensors: {worst:.3g}")
exact = DEVICE == "cpu" and NPROC == 2
tol = {"atol": 0, "rtol": 0} if exact else {"atol": 1e-2, "rtol": 1e-2}
for k in one:  # GPUs orthogonalize in bf16 and reduce in another order: close, not equal
    torch.testing.assert_close(many[k], one[k], **tol)
print(f"1 process and {NPROC} processes give {'bit-identical' if exact else 'the same'} "
      "parameters")

# %% [markdown]
# ## 7. Saving on N ranks, loading on M
#
# Each rank saved its own shard, `optimizer_rank<R>.safetensors`, plus one layout that is
# the same for every rank. `consolidate` rebuilds the full state from all shards, which
# is what the 1-process run holds; `reshard` cuts a full state for any other world size.
# (`optim.load_sharded(optimizer, shards, layout)` does both when a run resumes on a
# different number of GPUs; the checkpoint module owns the files.)

# %%
layout_n = json.loads((runs[NPROC] / "optimizer_layout.json").read_text())
shards = [load_file(runs[NPROC] / f"optimizer_rank{r}.safetensors") for r in range(NPROC)]
full_state, full_layout = consolidate(shards, layout_n)
single = load_file(runs[1] / "optimizer_rank0.safetensors")
assert full_state.keys() == single.keys()
for key in full_state:
    torch.testing.assert_close(full_state[key], single[key], **tol)
print(f"consolidated {NPROC} shards = the 1-process optimizer state ({len(full_state)} tensors)")
for new_world in (1, 4):
    cut = [reshard(full_state, full_layout, world_size=new_world, rank=r)[0]
           for r in range(new_world)]
    kib = [sum(t.numel() * t.element_size() for t in c.values()) / 1024 for c in cut]
    print(f"resharded for {new_world} rank(s): " + ", ".join(f"{k:.0f} KiB" for k in kib))

# %% [markdown]
# ## What next
#
# - `lessons/07_data_pipeline`: feeding the model tokens fast enough.
# - The trainer (`python -m nanogpt_course.train`) uses `build_optimizer` and this same
#   sharding; `make ddp-train NGPUS=8` runs it on 8 GPUs. `docs/PERFORMANCE.md` has the
#   predicted per-GPU memory of d12, d20 and d26 on 8 GPUs.
