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
# # 10 · Evaluation: bits per byte, CORE and ChatCORE
#
# A falling training loss says the model learns *something*. This lesson measures *what*:
#
# 1. **bits per byte**: why the loss per token depends on the tokenizer, and bits per
#    byte does not (measured on two tokenizers);
# 2. **in-context evaluation**: how a language model that only predicts the next token
#    becomes a multiple-choice scorer (a real HellaSwag and a real ARC question, with the
#    loss of every choice);
# 3. **centered accuracy** and the **CORE** score (the 22-task "core" set of DCLM's
#    evaluation suite, built on MosaicML's llm-foundry), run on a model through the
#    same command you would use on a GPU box, with a chart and a table;
# 4. **ChatCORE** for chat models (ARC, MMLU, GSM8K and HumanEval, whose programs run in a
#    sandbox);
# 5. what the numbers of a GPT-2-class model look like.
#
# It is also the headless evaluation notebook:
#
# ```bash
# papermill lessons/10_evaluation.ipynb out.ipynb -p PRESET full \
#     -p CHECKPOINT runs/09_pretrain/full-pretraining-d12 -p NPROC 8 -p MAX_PER_TASK -1
# ```
#
# (lesson 09 writes its run there; `make ddp-train` writes to `runs/pretraining-d12`).
#
# runs the full CORE (and ChatCORE when the checkpoint is a chat model) through `torchrun`,
# with the progress streaming into the cell, and ends with the chart and the table. The
# command line equivalent is `python -m nanogpt_course.eval core --checkpoint CKPT`.
#
# **Run time**, measured on a shared 2-core CPU: `smoke` about 1 minute (2 processes, 8
# examples per task; most of it is starting the processes), `laptop` about 40 s (1 process,
# 60 examples per task; the tiny model is fast). `full` on one GPU:
# about 4-5 minutes for CORE with all examples on a d12 on one H100 (measured speed,
# docs/EVALUATION.md; 83,054 examples in the 21 tasks of this machine's bundle, which
# lacks CoQA, with up to 10 in-context examples each).

# %%
import json
import math
import os
from collections import Counter

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from nanogpt_course import checkpoint, exercises, paths, presets
from nanogpt_course.eval import core, evaluate_bpb, icl, sandbox
from nanogpt_course.eval.results import Report, TaskResult, plot
from nanogpt_course.launch import launch
from nanogpt_course.tokenizer import Tokenizer
from nanogpt_course.train import tiny

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
CHECKPOINT = None  # a step or run folder; None: the cached tiny model (smoke, laptop)
TASKS = None  # comma-separated CORE task names; None: all 22
MAX_PER_TASK = None  # CORE examples per task; -1: all; None: the preset's choice
NPROC = None  # processes for the CORE/ChatCORE run; None: the preset's choice

# %% [markdown]
# ## Settings
#
# `smoke` and `laptop` evaluate the tiny model the test suite also uses (2 layers, 64 wide,
# 80 training steps on a 2 MB corpus): too small to be good at anything, which is useful
# too, since it shows what *chance level* looks like. `full` needs a `CHECKPOINT`.

# %%
PRESET = presets.validate(PRESET)
cuda = torch.cuda.is_available()
device = "cuda" if cuda and PRESET == "full" else "cpu"
NPROC = int(NPROC or presets.choose(PRESET, smoke=2, laptop=1,
                                    full=max(1, torch.cuda.device_count())))
MAX_PER_TASK = int(MAX_PER_TASK if MAX_PER_TASK is not None
                   else presets.choose(PRESET, smoke=8, laptop=60, full=-1))
if CHECKPOINT is None:
    if PRESET == "full":
        raise ValueError("PRESET full evaluates a model you trained: pass -p CHECKPOINT "
                         "runs/<your run> (a step or run folder)")
    CHECKPOINT = str(tiny.tiny_checkpoint())
ckpt = checkpoint.load(CHECKPOINT, device=device)
model, tok = ckpt.model, ckpt.tokenizer
OUT = paths.runs_dir("10_evaluation", create=False) / f"{PRESET}-step{ckpt.step}"
HAVE_BUNDLE = any(v != "missing" for v in core.bundle_status().values())
print(f"preset {PRESET!r}: {ckpt.path} ({ckpt.kind} model, step {ckpt.step}, "
      f"context {model.config.sequence_len}) on {device}; {NPROC} process(es), "
      f"{'all' if MAX_PER_TASK < 0 else MAX_PER_TASK} examples per task")
if not HAVE_BUNDLE:
    print("no CORE eval bundle here (NANOGPT_COURSE_DATA unset, nothing downloaded): built-in "
          "examples below, and the CORE run is replaced by a note on how to get the bundle")

# %% [markdown]
# ## 1. Bits per byte
#
# The training loss is the mean cross-entropy per **token**. But a token is whatever the
# tokenizer says: with 512 ids trained on this corpus (Python sources) a token holds about
# 2 bytes of it, with 4,096 ids trained on the same text about twice as many. Predicting
# more bytes at once is harder, so the loss per token of the bigger vocabulary is higher
# even when it models the text as well or better.
#
# Divide instead by the number of **bytes** the predicted tokens stand for, and change
# nats to bits: bits per byte $= \frac{\sum \text{loss (nats)}}{\ln 2 \cdot \sum
# \text{bytes}}$. The text is the same whatever the tokenizer, so this number compares.
#
# To see it without training two models, take the simplest language model there is, a
# **unigram** model (each token's probability is its frequency in training text), fit it
# for each tokenizer on the same text, and score the same held-out files (the corpus's
# validation split). GPT-2's tokenizer comes third: it was made for English prose.

# %%
from nanogpt_course.data import offline

corpus = offline.collect(max_bytes=presets.choose(PRESET, smoke=300_000, laptop=1_000_000,
                                                  full=1_000_000), progress=False)
records = [json.loads(line) for line in (corpus / "corpus.jsonl").open(encoding="utf-8")]
train_docs = [r["text"] for r in records if r["split"] == "train"]
held_out = [r["text"] for r in records if r["split"] == "val"]  # whole files, never trained on


def unigram_scores(tokenizer, train_texts, test_texts):
    """Loss per token (nats) and bits per byte of an add-one unigram model."""
    counts = Counter(t for text in train_texts for t in tokenizer.encode(text))
    total, vocab = sum(counts.values()), tokenizer.vocab_size
    nats, n_tokens, n_bytes = 0.0, 0, 0
    for text in test_texts:
        ids = tokenizer.encode(text)
        nats -= sum(math.log((counts[t] + 1) / (total + vocab)) for t in ids)
        n_tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
    return nats / n_tokens, nats / (math.log(2) * n_bytes), n_bytes / n_tokens


scores = {}
for name, tokenizer in (("BPE, 512 ids", tiny.tiny_tokenizer()),
                        ("BPE, 4,096 ids", Tokenizer.load(tiny.corpus_tokenizer(4096))),
                        ("GPT-2 (50,257 ids)", Tokenizer.gpt2())):
    scores[name] = unigram_scores(tokenizer, train_docs, held_out)
    loss, bpb, bytes_per_token = scores[name]
    print(f"{name:<20} loss/token {loss:5.2f} nats   bits/byte {bpb:5.2f}   "
          f"({bytes_per_token:.2f} bytes per token)")
for measure, i in (("loss per token", 0), ("bits per byte", 1)):
    a, b = scores["BPE, 512 ids"][i], scores["BPE, 4,096 ids"][i]
    print(f"512 vs 4,096 ids by {measure}: {'512' if a < b else '4,096'} looks better")

# %% [markdown]
# Each 4,096-id token holds more text, so each of its predictions is harder: its loss per
# token is pushed up by the tokenizer alone. Bits per byte removes that: it charges both
# models for the same thing, the text. Read the two verdicts above: by loss per token the
# small vocabulary looks better, by bits per byte the bigger one is (longer tokens capture
# more of the text's structure, even for a unigram). GPT-2's tokens, made for English,
# hold fewer bytes of Python than the 4,096 trained on it, indentation especially. Only
# the bits-per-byte comparison is fair, which is why the trainer reports validation bits
# per byte, and why runs with different tokenizers compare on it.
#
# Now the same measurement for a real model, from scratch: per-token losses, bytes of each
# target token, special tokens (0 bytes) and ignored targets (-1) left out. Then the
# library's `evaluate_bpb`, which the trainer uses, must agree.

# %%
def bits_per_byte(model, batches, token_bytes):
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)  # (B, T, vocab)
            losses = F.cross_entropy(logits.flatten(0, 1), y.clamp(min=0).flatten(),
                                     reduction="none").view(y.shape)
            nb = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)
            nats += losses[nb > 0].double().sum().item()
            n_bytes += int(nb.sum())
    return nats / (math.log(2) * n_bytes)


# the validation files of the 2 MB corpus the tiny model trained on (files it never saw)
tiny_corpus = offline.collect(max_bytes=tiny.CORPUS_BYTES, progress=False)
model_held_out = [r["text"] for r in map(json.loads, (tiny_corpus / "corpus.jsonl").open())
                  if r["split"] == "val"]
T = model.config.sequence_len
ids = torch.tensor(sum((tok.encode(d) for d in model_held_out), [])[: 4 * T + 1])
batches = [(ids[:-1].view(4, T), ids[1:].view(4, T))]
ours = bits_per_byte(model.cpu(), batches, tok.token_bytes)
library = evaluate_bpb(model, batches, tok.token_bytes)
torch.testing.assert_close(ours, library, rtol=1e-6, atol=0)
model.to(device)
print(f"tiny model on held-out text: {ours:.4f} bits per byte (library: {library:.4f})")

# %% [markdown]
# ## 2. In-context evaluation: a language model as a multiple-choice scorer
#
# The tasks come from the **eval bundle**, a zip of task files and their metadata that
# DCLM's evaluation uses (`python -m nanogpt_course.eval download core` fetches it).
#
# A base model cannot "answer" a question; it can only say how likely a text is. So we
# write each choice after the question and ask which *completed text* the model finds most
# likely. Precisely (the DCLM "core" protocol, as nanochat runs it):
#
# - one prompt per choice: `question + delimiter + choice`, after a few solved examples
#   ("few-shot", drawn with a fixed seed per example, never the example itself);
# - the **answer span** is the tokens after the prefix all choices share;
# - the choice with the **lowest mean loss** over its span wins. (The *mean*, not the sum:
#   a long answer should not lose just for having more tokens.)
#
# Here are a real HellaSwag item (0-shot, which sentence ending is most plausible) and a
# real ARC-Easy item (10-shot in CORE; shown 0-shot here to keep it short).

# %%
def load_or_fallback(label, fallback):
    data = core.load_examples(core.TASKS_BY_LABEL[label]) if HAVE_BUNDLE else None
    return data[0] if data else fallback


hellaswag = load_or_fallback("hellaswag_zeroshot", {
    "query": "Roof shingle removal: A man is sitting on a roof. he",
    "choices": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
    "gold": 3})
arc = load_or_fallback("arc_easy", {
    "query": "Question: Which statement best explains why photosynthesis is the foundation "
             "of most food webs?",
    "choices": ["Sunlight is the source of energy for nearly all ecosystems.",
                "Most ecosystems are found on land instead of in water.",
                "Carbon dioxide is more available than other gases.",
                "The producers in all ecosystems are plants."], "gold": 0})
for name, item, delim in (("HellaSwag", hellaswag, " "), ("ARC-Easy", arc, "\nAnswer: ")):
    print(f"--- {name} ---")
    for prompt in icl.render_mc(item, delim):
        print(repr(prompt[-110:]))

# %% [markdown]
# From scratch: tokenize each prompt (BOS first), find the shared prefix, run the model on
# each choice, average the loss over each span. (The library batches all choices of many
# examples into one forward pass and computes logits only on the spans.)

# %%
def choice_losses(model, tokenizer, prompts):
    """Mean loss over each choice's answer span; prompts: one string per choice."""
    seqs = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
    start = 0  # the answer starts after the prefix all choices share
    while all(len(s) > start + 1 for s in seqs) and len({s[start] for s in seqs}) == 1:
        start += 1
    limit, losses = model.config.sequence_len, []
    for s in seqs:
        crop = max(0, len(s) - limit)  # too long: keep the end (left truncation)
        s, first = s[crop:], max(1, start - crop)
        x = torch.tensor([s], device=next(model.parameters()).device)
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0].float(), dim=-1)  # (T, vocab)
        # position p predicts token p + 1: the span [first, T) is read from [first - 1, T - 1)
        picked = logp[first - 1: len(s) - 1].gather(-1, x[0, first:, None])
        losses.append(-picked.mean().item())
    return losses


for name, item, delim in (("HellaSwag", hellaswag, " "), ("ARC-Easy", arc, "\nAnswer: ")):
    mine = choice_losses(model, tok, icl.render_mc(item, delim))
    rows = icl.example_rows("multiple_choice", item, 0, [item], 0, delim, tok.encode, tok.bos_id,
                            model.config.sequence_len)
    library = [loss for loss, _ in icl.score_rows(model, rows, pad=tok.bos_id)]
    torch.testing.assert_close(torch.tensor(mine), torch.tensor(library), rtol=1e-4, atol=1e-4)
    print(f"{name}: gold = choice {item['gold']}")
    for c, (choice, loss) in enumerate(zip(item["choices"], mine)):
        mark = "<- lowest" if loss == min(mine) else ""
        print(f"  {c}  mean loss {loss:6.3f}  {choice[:60]!r} {mark}")

# %% [markdown]
# **Exercise.** Given the per-choice mean losses and the gold index, return the credit of
# the example: 1 when the gold choice has the lowest loss. When several choices tie
# exactly (llm-foundry pads 3-choice ARC questions with a duplicate, and a duplicate always
# ties), share the credit: a k-way tie that includes gold is worth 1/k, the expected
# accuracy of breaking the tie at random. (Taking the first minimum instead would quietly
# favour choice 0.)

# %%
def answer_credit(losses: list[float], gold: int) -> float:
    """losses: one mean loss per choice; returns the credit in [0, 1]."""
    raise NotImplementedError("exercise: lowest loss wins; a k-way tie with gold scores 1/k")


# %%
answer_credit = exercises.check("10_evaluation.answer_credit", answer_credit)

# %% [markdown]
# The other two task types work the same way. **Schema** tasks (Winograd) swap the roles:
# the contexts differ and the continuation is shared, so the span is the shared *suffix*,
# and the context under which the continuation is most likely wins. **Language-modelling**
# tasks (LAMBADA, Jeopardy, SQuAD, ...) have one right continuation, and the model must
# reproduce it exactly under greedy decoding: every argmax prediction over the span equals
# the next token. The exact rules are in docs/EVALUATION.md.

# %% [markdown]
# ## 3. Centered accuracy and CORE
#
# Guessing gets 25% on a 4-way question, 50% on a yes/no one, and 0% on "write the
# answer". To average tasks fairly, rescale each so that guessing is 0 and perfect is 1:
# $\text{centered} = \frac{\text{acc} - b}{1 - b}$, with $b$ the task's baseline (the
# bundle's `eval_meta_data.csv` gives it in percent). The baseline is what a constant
# guess scores, not always a uniform one: BoolQ's 62% is the share of its majority answer,
# so a chance-level model that prefers the other answer lands far below 0 (docs/EVALUATION.md
# measured −0.63). CORE is the mean of the centered accuracies of the tasks present (22
# in the full bundle).
#
# **Exercise.** Write it (the baseline comes in percent).

# %%
def centered_accuracy(accuracy: float, baseline_percent: float) -> float:
    """accuracy in [0, 1]; baseline_percent in [0, 100)."""
    raise NotImplementedError("exercise: (acc - b) / (1 - b) with b = baseline_percent / 100")


# %%
centered_accuracy = exercises.check("10_evaluation.centered_accuracy", centered_accuracy)
for label in ("arc_easy", "boolq", "lambada_openai"):
    t = core.TASKS_BY_LABEL[label]
    print(f"{label:<15} baseline {t.baseline_percent:4.1f}%: accuracy 0.70 -> centered "
          f"{centered_accuracy(0.70, t.baseline_percent):+.3f}")

# %% [markdown]
# ### Run CORE
#
# The evaluation runs as its own program, `python -m nanogpt_course.eval core`, on `NPROC`
# processes through `torchrun` (each rank takes every N-th batch of examples; the sums are
# added at the end, so the numbers do not depend on N). Its output streams into this cell:
# one line per task, then the CORE score, with CSV, JSON and a chart written to `OUT`.

# %%
args = ["core", "--checkpoint", str(ckpt.path), "--max-per-task", str(MAX_PER_TASK)]
if TASKS:
    args += ["--tasks", TASKS]
if HAVE_BUNDLE:
    launch("nanogpt_course.eval", *args, nproc=NPROC, device=device, out=OUT / "core")
    report = json.loads((OUT / "core" / "core.json").read_text())
else:
    print("skipped: get the bundle with `python -m nanogpt_course.eval download core` (or set "
          "NANOGPT_COURSE_DATA to a data mirror) and run this cell again")
    report = None

# %% [markdown]
# The chart: one bar per task, centered accuracy, 0 = chance. On the tiny model the bars
# scatter around 0 by the noise of a few examples: with n examples the standard error of
# an accuracy near p is $\sqrt{p(1-p)/n}$ (about 0.18 at n = 8, 0.06 at n = 60), and on the
# centered scale it is divided by $1 - b$, so at n = 8 a single bar can swing by ±0.3 to
# ±1. Only the mean over many tasks (CORE) says anything.

# %%
if report is not None:
    results = [TaskResult(r["task"], r["n"], r["correct"], r["baseline"], r["seconds"],
                          r["kind"], r["shots"]) for r in report["tasks"].values()]
    rebuilt = Report("CORE", results, expected=report["tasks_expected"])
    assert abs(rebuilt.score - report["score"]) < 1e-9
    plot(rebuilt)
    plt.show()
    print(f"{'task':<34}{'shots':>6}{'n':>6}{'acc':>8}{'centered':>10}{'s':>7}")
    for r in results:
        print(f"{r.task:<34}{r.shots:>6}{r.n:>6}{r.accuracy:>8.3f}{r.centered:>+10.3f}"
              f"{r.seconds:>7.1f}")
    print(f"{report['label']} = {report['score']:.4f}   (missing: {report['missing'] or 'none'})")

# %% [markdown]
# ## 4. ChatCORE: evaluating a chat model
#
# A chat model is asked in its own format: the question as a user turn of the chat
# template, then `<|im_start|>assistant\n`. For multiple choice (ARC-Easy, ARC-Challenge,
# MMLU) the choices are lettered, and the answer is the letter whose token gets the highest
# logit right there, among the valid letters. GSM8K (grade-school maths) is generated
# greedily, and the number after `####` is compared with the gold one. HumanEval's
# generated programs are *run* against the problem's tests, which means running code a
# model wrote; that happens in a sandbox. Its layers on this machine:

# %%
for name, (active, why) in sandbox.layers().items():
    print(f"  {name:<8} {'on ' if active else 'off'}  {why}")

# %% [markdown]
# **Exercise.** GSM8K answers end with `#### <number>`. Extract that number (the last one
# marked; it may be negative, commas and a `$` are allowed, text after the number is
# ignored), or None when there is no marker or no number after it.

# %%
def extract_gsm8k_answer(text: str) -> float | None:
    """The number after the last '####' in text, or None."""
    raise NotImplementedError("exercise: split on the last '####', parse the first number")


# %%
extract_gsm8k_answer = exercises.check("10_evaluation.extract_gsm8k_answer", extract_gsm8k_answer)

# %% [markdown]
# ChatCORE is run on a chat checkpoint: yours when `CHECKPOINT` is one, else (at `smoke`
# and `laptop`) the tiny model after a few chat fine-tuning steps. It only knows how to
# greet and add small numbers, so expect chance level: 0 on GSM8K and HumanEval, ARC and
# MMLU near 0, off by the noise of a few examples (here 4 at `smoke` and 20 at `laptop`
# per task, whatever `MAX_PER_TASK` says).

# %%
from nanogpt_course.eval.chatcore import data_status

have_chat_data = any(v is not None for v in data_status().values())
chat_ckpt = ckpt.path if ckpt.kind == "chat" else (
    None if PRESET == "full" or not have_chat_data else tiny.tiny_checkpoint("chat"))
if chat_ckpt is not None and have_chat_data:
    chat_n = MAX_PER_TASK if MAX_PER_TASK > 0 else -1
    launch("nanogpt_course.eval", "chatcore", "--checkpoint", str(chat_ckpt),
           "--max-per-task", str(presets.choose(PRESET, smoke=4, laptop=20, full=chat_n)),
           nproc=NPROC, device=device, out=OUT / "chatcore")
    chat = json.loads((OUT / "chatcore" / "chatcore.json").read_text())
    for name, r in chat["tasks"].items():
        print(f"{name:<14} n={r['n']:<5} acc {r['accuracy']:.3f}  centered {r['centered']:+.3f}")
    print(f"{chat['label']} = {chat['score']:.4f}")
else:
    print("ChatCORE skipped: " + ("no ChatCORE data here" if not have_chat_data else
                                  "the checkpoint is a base model (run mid-training first)"))

# %% [markdown]
# ## 5. What the numbers of a GPT-2-class model look like
#
# Reference points measured with nanochat's implementation of this protocol (ours agreed
# with it example by example on the tiny model; see docs/EVALUATION.md):
#
# | model | CORE | source |
# |---|---|---|
# | OpenAI GPT-2 1.5B (2019) | 0.2565 | nanochat `dev/LEADERBOARD.md` (the bar its speedrun must clear) |
# | OpenAI GPT-2 124M | 0.108 | a user's run of nanochat's `base_eval --hf-path openai-community/gpt2` (karpathy/nanochat issue #772) |
# | a JAX port of nanochat's d20 (561M, 11.2B tokens, one TPU v6e) | 0.12 | listed in karpathy/nanochat issue #284 |
#
# A tiny model scores about 0; GPT-2 small (124M) about 0.11; GPT-2 XL (1.5B) 0.26. Our own d12 number, trained here on the `offline`
# corpus, is in docs/EVALUATION.md. Two cautions when comparing: this data mirror's
# HellaSwag file is a close substitute for the bundle's (same items, slightly different
# text cleaning), and CoQA is missing, so our CORE covers 21 of 22 tasks (SQuAD is rebuilt
# from the official SQuAD v1.1 dev set).
