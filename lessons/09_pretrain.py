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
# # 09 · Pretraining
#
# This notebook is a launcher: it trains a GPT with the library's trainer on one or more
# processes, then shows what came out (loss curves, samples, where the checkpoint is).
# Open it to learn how a real run is set up; run it headless with
# [papermill](https://papermill.readthedocs.io) to do one:
#
# ```bash
# # CPU, seconds (what CI runs): 2 processes talking over gloo
# papermill lessons/09_pretrain.ipynb runs/09_smoke.ipynb -p PRESET smoke -p NPROC 2
# # one GPU: the GPT-2-class d12 on FineWeb-Edu
# papermill lessons/09_pretrain.ipynb runs/09_1gpu.ipynb -p PRESET full -p NPROC 1
# # 8 GPUs, same model, 8x faster (gradient accumulation adapts)
# papermill lessons/09_pretrain.ipynb runs/09_8gpu.ipynb -p PRESET full -p NPROC 8
# # a machine without internet: the offline corpus instead of FineWeb-Edu
# papermill lessons/09_pretrain.ipynb runs/09_offline.ipynb -p PRESET full -p NPROC 8 \
#     -p DATA offline -p MAX_STEPS 300
# ```
#
# Several nodes are launched with `torchrun`'s rendezvous flags rather than from a notebook;
# the command is printed below (section "The command").
#
# **Run time**: `smoke` (2 processes, 10 steps) about 30 s; `laptop` (one process, 150
# steps of a 4-layer model, 0.6 M tokens) 3.6 minutes on an idle 2-core CPU (about 4,000
# tokens per second; 4 minutes when other jobs kept the load average at 3 to 10), both
# measured under papermill; the launch cell prints a progress line with an ETA. `full` is an
# **estimate**, printed by the cell "What the depth rules decided" from the FLOPs of the
# run and an assumed 40% MFU (a d12 on one H100: about an hour; 8 GPUs: about 8 times
# less; downloading and tokenizing FineWeb-Edu first takes longer than either).
# No multi-GPU `full` run of this notebook has been measured yet.
#
# The parameters mirror the variables of `make ddp-train` (`NPROC` is its `NGPUS`;
# `TOKENIZER` has no Makefile variable):
#
# | parameter | meaning |
# |---|---|
# | `PRESET` | `smoke` (CPU, seconds), `laptop` (CPU, minutes), `full` (GPUs, the real run) |
# | `NPROC` | processes (GPUs); `None` = the preset's choice |
# | `DEPTH` | the one knob: width, batch size, learning rates, weight decay, horizon |
# | `TARGET_FLOPS` | train for this many FLOPs instead of the default tokens:params horizon |
# | `DATA` | a dataset name (`fineweb_edu`, `offline`, `tinyshakespeare`, ...) or a path |
# | `TOKENIZER` | `gpt2` or a trained tokenizer folder |
# | `MODE` | `pretraining`, `mid-training`, `sft` or `all` |
# | `CHECKPOINT` | start from this checkpoint (mid-training, sft) |
# | `MAX_STEPS` | stop after this many steps (the schedule is fitted to them) |
# | `RESUME` | continue the run in the output folder from its latest checkpoint |
# | `CORE_EVALS`, `CHATCORE_EVALS` | evaluate CORE / ChatCORE during training |
# | `WINDOW_PATTERN` | attention per layer, repeated: `L` full context (default), `S` a short window, e.g. `SSSL` (lesson 02) |
# | `SHORT_WINDOW` | tokens an `S` layer sees; `None` = half the context. A quarter (`512` at context 2048) is the window that makes a GPU step faster (lesson 02) |
# | `FP8` | FP8 matmuls in the blocks' linear layers while training (H100/H200 only) |

# %%
import json
import os
import shlex
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from nanogpt_course import checkpoint, paths, presets
from nanogpt_course.device import describe
from nanogpt_course.engine import stream_text
from nanogpt_course.launch import launch
from nanogpt_course.train import TrainConfig, build, metrics, read_metrics, tiny

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
NPROC = None
DEPTH = None
TARGET_FLOPS = None
DATA = None
TOKENIZER = None
MODE = "pretraining"
CHECKPOINT = None
MAX_STEPS = None
RESUME = False
CORE_EVALS = False
CHATCORE_EVALS = False
WINDOW_PATTERN = "L"
SHORT_WINDOW = None
FP8 = False

# %% [markdown]
# ## Settings
#
# A preset fills in whatever was left as `None`. `smoke` and `laptop` train tiny models on
# the `offline` corpus (the text of Python's own library, present on every machine) with a
# small tokenizer trained on it, and pass the sizes explicitly. `full` is the original
# project's
# GPT-2-class run: depth 12 (768 wide, 6 heads of 128), the GPT-2 tokenizer, FineWeb-Edu,
# and everything else from the depth rules.

# %%
PRESET = presets.validate(PRESET)
cuda = torch.cuda.is_available()
NPROC = int(NPROC or presets.choose(PRESET, smoke=2, laptop=1,
                                    full=max(1, torch.cuda.device_count())))
DEPTH = int(DEPTH or presets.choose(PRESET, smoke=2, laptop=4, full=12))
MAX_STEPS = int(MAX_STEPS) if MAX_STEPS else presets.choose(PRESET, smoke=10, laptop=150,
                                                            full=None)
if PRESET == "full":
    TOKENIZER = TOKENIZER or "gpt2"
    DATA = DATA or ("fineweb_edu" if MODE in ("pretraining", "all") else None)
    device = "cuda" if cuda else "cpu"
else:
    vocab, corpus = presets.choose(PRESET, smoke=(512, 2_000_000), laptop=(4096, 24_000_000),
                                   full=None)
    print(f"tokenizer ({vocab} ids) and shards of {corpus / 1e6:.0f} MB of the offline corpus: "
          "built on first use (a minute or two on a CPU), then loaded from the cache", flush=True)
    if TOKENIZER is None and CHECKPOINT is None:
        TOKENIZER = str(tiny.corpus_tokenizer(vocab_size=vocab, max_bytes=corpus))
    if DATA is None and MODE in ("pretraining", "all"):
        from nanogpt_course.tokenizer import Tokenizer

        DATA = str(tiny.corpus_data(Tokenizer.load(TOKENIZER), max_bytes=corpus))
    device = "cpu" if PRESET == "smoke" else ("cuda" if cuda else "cpu")
# sizes the depth rules would choose for a big model, made small for the CPU presets
SIZES = presets.choose(PRESET, smoke=dict(aspect_ratio=32, head_dim=32, seq_len=64,
                                          device_batch_size=2, total_batch_size=512,
                                          eval_tokens=2048, eval_every=5, sample_every=10,
                                          save_every=5,
                                          matrix_lr=0.02, embedding_lr=0.3,
                                          unembedding_lr=0.008, scalar_lr=0.5,
                                          weight_decay=0.1),
                       laptop=dict(aspect_ratio=48, head_dim=48, seq_len=256,
                                   device_batch_size=16, total_batch_size=4096,
                                   eval_tokens=65536, eval_every=25, sample_every=150,
                                   save_every=50, matrix_lr=0.02, embedding_lr=0.3,
                                   unembedding_lr=0.008, scalar_lr=0.5, weight_decay=0.1),
                       full=dict(eval_every=250, sample_every=1000, save_every=1000,
                                 keep_last=3, compile=cuda))
OUT = paths.runs_dir("09_pretrain", create=False) / f"{PRESET}-{MODE}-d{DEPTH}"
print(f"preset {PRESET!r}: {NPROC} process(es) on {device}, depth {DEPTH}, mode {MODE}")
print(f"data {DATA}\ntokenizer {TOKENIZER}\noutput {OUT}")

# %% [markdown]
# ## The command
#
# The notebook builds the same command line you would type. Flags left out are decided by
# the depth rules (docs/DEPTH.md): batch size, learning rates, weight decay, number of
# steps.

# %%
cfg = TrainConfig(mode=MODE, depth=None if CHECKPOINT else DEPTH, data=DATA,
                  tokenizer=TOKENIZER, target_flops=float(TARGET_FLOPS) if TARGET_FLOPS else None,
                  max_steps=MAX_STEPS, checkpoint=CHECKPOINT, resume=bool(RESUME),
                  core_every=2000 if CORE_EVALS else -1,
                  chatcore_every=1000 if CHATCORE_EVALS else -1,  # make ddp-train's
                  window_pattern=WINDOW_PATTERN,
                  short_window=int(SHORT_WINDOW) if SHORT_WINDOW else None,
                  fp8=bool(FP8), **SIZES)
defaults = TrainConfig()
args = []
for key, value in cfg.to_dict().items():
    if value is None or value is False or value == getattr(defaults, key) or key == "out":
        continue
    args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
command = "python -m nanogpt_course.train " + shlex.join(args) + f" --out {OUT}"
print(f"torchrun --standalone --nproc_per_node={NPROC} -m nanogpt_course.train \\\n    "
      + shlex.join(args) + f" --out {OUT}")
print("\nseveral nodes (run on each node; NODE_RANK = 0, 1, ...):")
print(f"torchrun --nnodes=NNODES --node_rank=NODE_RANK --nproc_per_node={NPROC} "
      f"--rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 -m nanogpt_course.train ...")

# %% [markdown]
# ## What the depth rules decided, and what it will cost
#
# Before launching, the same resolution the trainer does (on the `meta` device: no memory,
# no data) shows the plan. Mistakes (an indivisible batch, a missing checkpoint, a tokenizer
# that does not match) stop here with a message.

# %%
if MODE != "all":
    shown = cfg.replace(out=str(OUT), resume=bool(RESUME) and checkpoint.latest(OUT) is not None)
    try:
        run = build.resolve_run(shown, world_size=NPROC)
    except build.ConfigError as err:
        if "already holds checkpoints" not in str(err):
            raise
        run = build.resolve_run(shown.replace(out=str(OUT) + "-preview"), world_size=NPROC)
    plan = run.plan
    print(plan.describe())
    tokens, flops = plan.total_tokens, plan.total_flops
else:
    plan = None
    print("mode 'all': pretraining, then mid-training from its last step (plans printed "
          "by each stage)")
if plan is not None:
    shard_gb = tokens * 2 / 1e9  # uint16 tokens (vocabularies under 65,536)
    print(f"\ndisk: about {shard_gb:.2f} GB of tokenized shards for one pass "
          f"({tokens:,} tokens), plus {plan.num_params * 4 * 3 / 1e9:.2f} GB per checkpoint "
          f"(fp32 weights + optimizer state)")
    peak = metrics.device_peak_flops("cuda") if cuda else None
    if peak:
        hours = flops / (0.40 * peak * NPROC) / 3600
        print(f"time: {flops:.2e} FLOPs at 40% MFU on {NPROC} x {describe('cuda')} "
              f"= about {hours:.1f} h")
    else:
        print(f"time: {flops:.2e} FLOPs; on a CPU expect thousands of tokens per second, so "
              f"about {tokens / 5000 / 60:.1f} min at 5k tok/s")
if DATA == "fineweb_edu":
    print("(FineWeb-Edu sample-10BT: ~28 GB of parquet to download, ~20 GB of gpt2 shards)")

# %% [markdown]
# ### Reading the plan
#
# Line by line, what the depth rules (`nanogpt_course/train/scaling.py`, derived in
# `lessons/08_scaling_laws`) chose and why:
#
# - **params / scaling params / FLOPs per token**: the model that `DEPTH` builds. The
#   "scaling params" leave out the embedding tables (lookups cost no FLOPs); they are what
#   the horizon is measured against. FLOPs per token is `estimate_flops()` (lesson 03).
# - **horizon D**: how many tokens to train on, 12 tokens per scaling parameter
#   (nanochat's measured optimum; Chinchilla's classic ratio is ~20: model size and data
#   grow together), unless `TARGET_FLOPS` sets it. `MAX_STEPS` changes only the step count
#   (the last line): D, the batch and the weight decay still follow the planned horizon.
#   `D_ref` is the same rule at d12, the reference the other rules are tuned at.
# - **total batch**: tokens per optimizer step. It grows with the horizon (bigger runs can
#   use bigger, less noisy batches); gradient accumulation makes it fit any number of
#   GPUs (lesson 04).
# - **LR scale**: learning rates tuned at the reference batch are scaled by
#   $\sqrt{B / B_\text{ref}}$ when the batch differs (the CPU presets pass their learning
#   rates explicitly, so the scale is shown but not applied to them).
# - **weight decay** (Muon's matrices only): $\lambda_\text{ref} \sqrt{B / B_\text{ref}}
#   \cdot D_\text{ref} / D_N$ with $D_N$ = 12 × scaling params, so it depends on the depth
#   and the batch, not on how long you train (lesson 08 says why). The printed value is
#   the peak at step 0; it then follows a cosine to 0.
# - **steps**: horizon / batch; the LR schedule (warmup, constant, warmdown; lesson 04) is
#   fitted to this number.
#
# Every line names its flag: pass the flag to override the rule.
#
# ### Where a step's time goes on a GPU
#
# The time estimate assumes 40% MFU: the share of the GPU's peak bf16 rate that the
# model's FLOPs use. Why not 100%? A profile of one d12 step on an H100 (seq 2048 ×
# micro-batch 32, 127 ms, 46% MFU; `python bench/bench_train.py --depth 12 --compile
# --profile DIR`, docs/PERFORMANCE.md) shows where the time goes:
#
# | part of the step | share |
# |---|---|
# | matrix multiplies (the FLOPs that MFU counts, plus Muon's Newton–Schulz) | ~50% |
# | kernels `torch.compile` generated: RMSNorm, ReLU², softcap + cross-entropy, residual mixes | ~27% |
# | attention (flash kernels; they run far below the peak rate) | ~17% |
# | the optimizer's elementwise work and copies, the GPU idle | ~7% |
#
# The elementwise kernels do few FLOPs per byte, so they are bound by memory bandwidth,
# not compute: a quarter of the time for almost none of the counted FLOPs. That is why
# nanochat and this project both sit at 44-46% MFU on this GPU, and why fusing passes over
# memory (one AdamW kernel instead of seven passes bought this step 4 ms) pays more than
# anything that speeds up arithmetic.
#
# Memory has its own profile (`python bench/bench_peak_memory.py --depth 12`, which
# replays the allocator's trace of one step): the peak comes at the end of the forward
# pass, when `lm_head` writes the logits (4 GiB at 32 × 2048 × 32,768 in bf16) on top of
# every activation kept for the backward pass (about 18 GiB at d12), with the weights and
# optimizer state (3 GiB) underneath. The widest activations are the MLP's: keeping only
# relu²'s output and computing its derivative from it (lesson 03) took the d12 peak from
# 29.4 to 24.9 GiB on an H100, below nanochat's 27.4.
#
# ## What to expect
#
# A healthy pretraining curve has recognizable phases (watch the validation bits per
# byte, the red curve below):
#
# 1. **the first few percent of steps**: a steep fall from uniform guessing, $\log_2 V$
#    bits per token, i.e. $\log_2 V$ divided by the bytes per token in bits per byte
#    (GPT-2: $\log_2 50{,}257 = 15.6$ bits over about 2.2 bytes of code per token, about
#    7 bits per byte), as the model learns which tokens are common, then which follow
#    which (unigram and bigram statistics);
# 2. **the long middle**: a slow, steady decline, roughly a straight line when plotted
#    against log-steps, as it learns words, syntax and longer patterns;
# 3. **the warmdown** (the last 65% of the steps by default, where the LR falls linearly
#    to 5% of its peak): in long runs a visible extra drop as the weights settle; in the
#    short runs of this notebook the warmdown takes most of the run and the curve simply
#    keeps bending down.
#
# Warning signs: a loss that jumps up and does not come back (LR too high; the trainer
# stops on NaN), validation rising while training falls (too many epochs over too little
# data), or a curve flat from the start (LR far too low, or broken data).
#
# Typical numbers: at `smoke` the run is far too short to learn much (10 steps: it only
# gets through phase 1). At `laptop`, the 4-layer model on the offline corpus (Python's
# own documentation and source) went from about 3.9 bits per byte at step 0 to 2.9 at
# step 25, 2.7 at step 50, 2.3-2.4 at step 100 and 2.2 at step 150 in our measurements
# (±0.1 between machines): phase 1 is over within the first 25 steps; the warmdown starts
# at step 52 and the gains per step shrink steadily. (Twice the
# steps, 300, reached 2.07.) Its samples are code-shaped noise and can fall into
# repetition. A GPT-2-class d12 trained for hours on GPUs goes much further; the
# reference curve below, once added, shows a real GPU run of ours.
#
# ## Launch
#
# `launch` runs `torchrun` as a subprocess: rank 0's output streams into this cell, every
# rank's full log is kept, and a failure raises here with the tail of the logs (a bare
# `!torchrun` would let the cell "succeed"). With `NPROC` processes on a CPU the ranks
# talk over gloo; on GPUs over NCCL.

# %%
if OUT.exists() and not RESUME:
    if PRESET == "full":
        raise RuntimeError(f"{OUT} already holds a run: set RESUME=True to continue it, or "
                           "move it away")
    print(f"removing the previous {PRESET} run in {OUT}")
    shutil.rmtree(OUT)
result = launch("nanogpt_course.train", *args, nproc=NPROC, device=device, out=OUT)

# %% [markdown]
# ## Loss curves
#
# Each step's training loss (noisy: every batch is different text) and the validation bits
# per byte on held-out text. They are in different units (nats per token on the left,
# bits per byte on the right), so compare their trends, not their heights.

# %%
runs = [OUT / "pretraining", OUT / "mid-training"] if MODE == "all" else [OUT]
fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 3.5), squeeze=False)
for ax, run_dir in zip(axes[0], runs):
    recs = read_metrics(run_dir)
    ax.plot([r["step"] for r in recs if "loss" in r], [r["loss"] for r in recs if "loss" in r],
            lw=1, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(run_dir.name)
    val = [(r["step"], r["val_bpb"]) for r in recs if "val_bpb" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o--", color="tab:red")
        ax2.set_ylabel("val bits per byte", color="tab:red")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### A reference curve from a GPU run
#
# The course keeps one real GPU run's validation curve in
# `docs/results/pretrain_d12_reference.json`: a d12 (394M parameters with its embeddings,
# 124M scaling parameters: the token and value-embedding tables are lookups, lesson 03) trained by this trainer on one H100 for 120 steps of 524,288
# tokens (63M tokens, 3.9 minutes at 422k tokens/s, 41% MFU), on the GPU machine's
# `offline` corpus with the GPT-2 tokenizer (`scripts/reference_curve.py` wrote the file;
# the command is inside it). This cell draws it beside your run against tokens seen, so runs
# with different batch sizes compare.
#
# How to read it: the first ~10M tokens (20 steps) fall from 7.0 bits per byte (a uniform
# guess over 50,257 tokens) to 2.15 (frequent tokens, then common words and indentation);
# after that the gains per 20 steps shrink steadily (0.28, 0.29, 0.23, 0.15, 0.09, ending
# at 1.11). The LR is flat only from step 12 to 42; the warmdown takes the last 65% of the
# steps, falling to 5% of the peak, and a run this far from its horizon shows no separate
# extra drop. That run stopped at 0.5 tokens per scaling parameter, far short of the depth
# rules' 12, which is why its samples (also in the file) are still mostly Python-shaped
# noise. Code is more predictable than prose, so do not compare its numbers with a run on
# Shakespeare or FineWeb-Edu: compare the shape.

# %%
# --- GPU reference curve: docs/results/pretrain_d12_reference.json (added by the maintainers) ---
repo = paths.repo_root() or Path("..").resolve()
reference_file = repo / "docs" / "results" / "pretrain_d12_reference.json"
ours = [(r["tokens"], r["val_bpb"]) for r in read_metrics(runs[0]) if "val_bpb" in r and "tokens" in r]
if reference_file.is_file():
    ref = json.loads(reference_file.read_text())
    records = ref.get("records", ref if isinstance(ref, list) else [])
    curve = [(r["tokens"], r["val_bpb"]) for r in records if "val_bpb" in r and "tokens" in r]
    plt.figure(figsize=(6.5, 3.5))
    plt.plot(*zip(*curve), label=ref.get("label", "GPU reference run") if isinstance(ref, dict)
             else "GPU reference run")
    if ours:
        plt.plot(*zip(*ours), "o--", label=f"this run ({PRESET})")
    plt.xscale("log")
    plt.xlabel("tokens seen")
    plt.ylabel("val bits per byte")
    plt.legend()
    plt.show()
    for s in ref.get("samples", [])[-2:] if isinstance(ref, dict) else []:
        print(f"reference run, step {s['step']}: {s['text'][:100]}")
else:
    print(f"no reference curve yet ({reference_file.relative_to(repo)} is added by the "
          f"maintainers after a GPU run); this run's validation: "
          + ", ".join(f"{bpb:.3f} at {tok:,} tokens" for tok, bpb in ours[-3:]))

# %% [markdown]
# ## Samples across the run
#
# The run saved checkpoints along the way (`save_every`). Loaded back (safetensors + JSON,
# never a pickle), each continues the same prompt with the same seed, so the only thing
# that changes is how far training got. Small models go from noise to frequent tokens to
# fragments of words and syntax; they also fall into loops (the same few tokens over and
# over), which longer training and sampling settings such as `top_k` make rarer.

# %%
saved = checkpoint.complete_steps(runs[0])[-4:]  # [(step, folder)], the last few
for step, folder in saved:
    ck = checkpoint.load(folder, device="cpu" if PRESET != "full" else None)
    ids = [ck.tokenizer.bos_id] + ck.tokenizer.encode("def ")
    text = "".join(stream_text(ck.model, ck.tokenizer, ids, 24, temperature=0.8, top_k=50,
                               seed=0, stop=[ck.tokenizer.bos_id]))
    print(f"step {step:>6,}  val bpb {ck.meta.get('val_bpb') or float('nan'):.3f}:  "
          f"{'def ' + text!r}")

# %% [markdown]
# ## Samples from the final model
#
# The last checkpoint continues a few prompts. A base model continues text; a chat model
# (after mid-training or SFT) answers in the chat format.

# %%
final = checkpoint.load(runs[-1], device="cpu" if PRESET != "full" else None)
tok = final.tokenizer
prompts = (["Hello! Who are you?", "What is 12 plus 30?"] if final.kind == "chat"
           else ["The", "def ", "Once upon a time"])
for i, prompt in enumerate(prompts):
    if final.kind == "chat":
        ids = tok.render_for_completion([{"role": "user", "content": prompt}])
        stop = [tok.encode_special("<|im_end|>")]
    else:
        ids, stop = [tok.bos_id] + tok.encode(prompt), [tok.bos_id]
    text = "".join(stream_text(final.model, tok, ids, 32, temperature=0.8, top_k=50, seed=i,
                               stop=stop))
    print(f"{prompt!r} -> {text!r}")

# %% [markdown]
# ## Where the checkpoint is, and what to do with it

# %%
meta = final.meta
print(f"checkpoint: {final.path}  (step {meta['step']:,} of {meta['num_steps']:,}, "
      f"{meta['tokens_seen']:,} tokens, kind {meta['kind']}, world size {meta['world_size']})")
print(f"val bits per byte: {meta.get('val_bpb')}")
print(f"\nchat:       python -m nanogpt_course.chat --checkpoint {runs[-1]}")
max_per_task = "" if PRESET == "full" else " --max-per-task 60"
print(f"evaluate:   python -m nanogpt_course.eval core --checkpoint {runs[-1]}{max_per_task}"
      "  (needs the eval bundle: python -m nanogpt_course.eval download core)")
print(f"continue:   raise MAX_STEPS and papermill ... -p RESUME True  (or: {command} "
      "--max-steps N --resume; the LR schedule is refitted to the new length)")
if meta["kind"] == "base":
    print(f"chat model: papermill ... -p MODE mid-training -p CHECKPOINT {runs[-1]}")
