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
# # 00 · Setup: how this course works
#
# Welcome. Over thirteen lessons you will build a GPT from an empty file: the tokenizer,
# attention with rotary positions, the model, the optimizers (AdamW and Muon, then Muon
# sharded over several GPUs), the data pipeline, the training loop, scaling laws,
# pretraining, evaluation, mid-training and finally a chat window.
#
# Every lesson follows the same rhythm:
#
# 1. **Build the idea from scratch** in plain, readable code, a few lines at a time.
# 2. **Check it** against the course library, `nanogpt_course`, which is a finished,
#    fast and tested implementation of the same thing.
# 3. **Use the library version** from then on, so later cells stay fast.
#
# This first lesson has no machine learning in it. It shows the machinery: the preset knob,
# where files go, how exercises and their checkers work, and a check of your environment.

# %%
import os

import torch

import nanogpt_course
from nanogpt_course import exercises, paths, presets
from nanogpt_course.device import describe, pick_device

# %% [markdown]
# ## Parameters and presets
#
# The next cell is tagged `parameters`. When you run a lesson with
# [papermill](https://papermill.readthedocs.io), values you pass with `-p NAME VALUE`
# replace these defaults, for example
# `papermill lessons/00_setup.ipynb out.ipynb -p PRESET smoke`.
#
# `PRESET` sizes everything a lesson does:
#
# | preset   | where         | how long                 |
# |----------|---------------|--------------------------|
# | `smoke`  | CI            | seconds                  |
# | `laptop` | your CPU      | minutes (the default)    |
# | `full`   | one or more GPUs | the real thing        |
#
# Presets change sizes only: no cell is ever skipped. The default comes from the
# environment variable `NANOGPT_COURSE_PRESET`, which is how the test suite runs every
# lesson at `smoke`.

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")

# %%
PRESET = presets.validate(PRESET)
print(f"nanogpt_course {nanogpt_course.__version__}, preset {PRESET!r}")

# %% [markdown]
# Lessons pick their sizes with `presets.choose`, one value per preset:

# %%
n_rows = presets.choose(PRESET, smoke=2, laptop=4, full=8)
print(f"at preset {PRESET!r} this lesson uses {n_rows} rows")

# %% [markdown]
# ## Where things go
#
# Three folders matter, each set by an environment variable:
#
# - **data mirror** (`NANOGPT_COURSE_DATA`, optional, read-only): a local copy of raw datasets.
#   The library looks there before it downloads anything.
# - **cache** (`NANOGPT_COURSE_CACHE`, default `~/.cache/nanogpt_course`): downloads,
#   tokenized shards, trained tokenizers and the small checkpoints lessons reuse.
# - **runs** (`NANOGPT_COURSE_RUNS`, default `runs/`): training runs and executed notebooks.

# %%
print("data mirror:", paths.data_dir() or "(unset: data is downloaded on first use)")
print("cache:      ", paths.cache_dir())
print("runs:       ", paths.runs_dir(create=False))

# %% [markdown]
# ## The device
#
# The library computes on a CUDA GPU when there is one, otherwise on the CPU. Apple's MPS
# backend is opt-in (`NANOGPT_COURSE_DEVICE=mps`), since a few operations fall back to
# the CPU there. On a GPU the model runs in bfloat16; on the CPU in float32.

# %%
device = pick_device()
print("computing on:", describe(device))

# %% [markdown]
# ## Exercises and checkers
#
# Some cells hold an **exercise**: a function whose body is
# `raise NotImplementedError`. Replace that line with your code. The cell after it calls
# `exercises.check`, which runs your function on a few cases, compares each result with the
# library's, and prints a table.
#
# - Not attempted yet? The checker says so and hands back the library's version, so the
#   rest of the notebook still runs.
# - Correct? You get the table and your function is used from then on.
# - Wrong? The checker raises an error with the table, so you can see which case differs.
#
# Worked answers live in `solutions/` (here, `solutions/00_setup.py`). Try first!
#
# A warm-up: the **softmax** turns a row of scores into probabilities,
# $\mathrm{softmax}(x)_i = e^{x_i} / \sum_j e^{x_j}$. Computed literally, $e^{1000}$
# overflows to infinity. Subtracting the row's maximum first changes nothing
# mathematically (it cancels between numerator and denominator) and keeps every exponent
# at or below zero.

# %%
def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. x: (..., n) -> (..., n), each row sums to 1."""
    raise NotImplementedError("exercise: write softmax with the max-subtraction trick")


# %%
softmax = exercises.check("00_setup.softmax", softmax)

# %% [markdown]
# Whichever version came back, it behaves like `torch.softmax`:

# %%
scores = torch.tensor([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]])
probs = softmax(scores)
print(probs)
torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2))

# %% [markdown]
# ## Check your environment
#
# `python -m nanogpt_course.env` prints one line per requirement. `FAIL` lines stop the
# course (each says what to run); `WARN` lines cost an optional part, such as a GPU.

# %%
from nanogpt_course.env import run_checks

for check in run_checks():
    print(f"{check.status:<4}  {check.name:<15} {check.detail}")

# %% [markdown]
# ## What next
#
# - `lessons/01_tokenizer`: from text to integers, byte-pair encoding from scratch.
# - Run `make help` in a terminal to see every command of the course.
#
# Each lesson stands on its own: whatever it needs (a tokenizer, a small trained model,
# data shards) it builds or loads through a cached library helper, so you can open any of
# them first.
