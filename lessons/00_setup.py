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
# Welcome. The course is planned as thirteen lessons, numbered 00 to 12, in which you
# build a GPT from an empty file: the tokenizer, attention with rotary positions, the
# model, the optimizers (AdamW and Muon, then Muon sharded over several GPUs), the data
# pipeline, the training loop, scaling laws, pretraining, evaluation, mid-training and
# finally a chat window. The course map below marks the ones present in your copy.
#
# Every lesson follows the same rhythm:
#
# 1. **Build the idea from scratch** in plain, readable code, a few lines at a time.
# 2. **Check it** against the course library, `nanogpt_course`, which is a finished,
#    fast and tested implementation of the same thing.
# 3. **Use the library version** from then on, so later cells stay fast.
#
# This first lesson has no machine learning in it. It shows the machinery: the course
# map, the preset knob, where files go, how to edit a lesson, how exercises and their
# checkers work, and a check of your environment.
#
# **Run time**: seconds at every preset (measured as a script on a 2-core CPU shared with
# other jobs, load average 5-9: `smoke` 7 s, `laptop` 4 s; `full` does the same work).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
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
# ## The course map
#
# Four parts. The first builds the model; the second trains it; the third scales the
# training up and runs it; the fourth measures the result and turns it into a chat model.
# Arrows show the suggested order, but every lesson runs on its own (whatever it needs,
# it builds or loads through a cached library helper). If a box is dashed, that lesson
# is missing from your copy.

# %%
COURSE = [  # (number, title, part)
    ("00", "setup", 0), ("01", "tokenizer", 0), ("02", "attention + RoPE", 0),
    ("03", "GPT model", 0), ("04", "training loop", 1), ("05", "Muon", 1),
    ("06", "DistMuon, ZeRO-2", 1), ("07", "data pipeline", 1), ("08", "scaling laws", 2),
    ("09", "pretraining", 2), ("10", "evaluation", 3), ("11", "mid-training", 3),
    ("12", "chat", 3)]
PARTS = ["build the model", "train it", "scale it up", "measure and chat"]
COLORS = ["#dbe9f6", "#fde2c8", "#d9f0d3", "#ead8f0"]
ORDER = [num for num, _, _ in COURSE]  # the suggested order: each arrow to the next lesson
lesson_dir = Path("lessons") if Path("lessons").is_dir() else Path(".")
present = {p.name[:2] for p in lesson_dir.glob("[0-9][0-9]_*.ipynb")}
boxes = {}
fig, ax = plt.subplots(figsize=(10, 4.2))
for part in range(4):
    members = [c for c in COURSE if c[2] == part]
    for row, (num, title, _) in enumerate(members):
        x, y = part * 2.6, 3.6 - row * 1.0
        boxes[num] = ax.text(x, y, f"{num} {title}", ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc=COLORS[part],
                          ec="black" if num in present else "grey",
                          ls="-" if num in present else "--"))
    ax.text(part * 2.6, 4.4, PARTS[part], ha="center", fontsize=10, weight="bold")
for a, b in zip(ORDER, ORDER[1:]):
    same_part = COURSE[ORDER.index(a)][2] == COURSE[ORDER.index(b)][2]
    ax.annotate("", xy=(0.5, 1) if same_part else (0, 0.5), xycoords=boxes[b],
                xytext=(0.5, 0) if same_part else (1, 0.5), textcoords=boxes[a],
                arrowprops=dict(arrowstyle="->", color="grey", lw=0.8, shrinkA=4, shrinkB=4))
ax.set_xlim(-1.3, 9.1)
ax.set_ylim(-0.2, 4.8)
ax.axis("off")
plt.show()
print(f"lessons in this copy: {', '.join(sorted(present))} ({len(present)} of {len(COURSE)})")

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
# ## Editing a lesson: `.py` and `.ipynb` pairs
#
# Every lesson exists twice, kept in sync by [jupytext](https://jupytext.readthedocs.io):
#
# - `lessons/NN_topic.py`, a plain Python file in the "percent" format (`# %%` starts a
#   code cell, `# %% [markdown]` a text cell): the **source of truth**, easy to diff,
#   review and edit in any editor;
# - `lessons/NN_topic.ipynb`, the notebook you open in JupyterLab, committed **without
#   outputs**.
#
# The workflow:
#
# 1. **Learning**: open the `.ipynb` (`make lab`), run and change cells freely. With the
#    jupytext extension installed (it comes with the `notebooks` extra), saving the
#    notebook also rewrites its `.py` twin, because `jupytext.toml` declares the pair.
# 2. **Editing the course**: change the `.py` file in your editor, then run `make sync`
#    (that is `jupytext --sync lessons/NN_topic.py`), which updates the `.ipynb` from the
#    newer side and keeps its cells and tags.
# 3. **Before committing**: run `make sync`, clear the notebook's outputs (JupyterLab:
#    *Edit → Clear Outputs of All Cells*, then save), and commit both files. The test
#    suite fails when the pair has drifted apart or a notebook holds outputs.
#
# `make lesson N=03 PRESET=smoke` runs one lesson headless with papermill and writes the
# executed copy under `runs/lessons/`, leaving the committed files untouched.

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
# - The course map above: any lesson can be opened first.
# - Run `make help` in a terminal to see every command of the course.
#
# Each lesson stands on its own: whatever it needs (a tokenizer, a small trained model,
# data shards) it builds or loads through a cached library helper, so you can open any of
# them first.
