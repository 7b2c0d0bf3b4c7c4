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
# # 11 · Mid-training: from a base model to a chat model
#
# A base model continues text. To make it *answer*, we keep training it, with the same loss
# and the same optimizer, on conversations written in a fixed template. Two things are new:
# the **template** (special tokens that mark who speaks) and the **loss mask** (the model is
# graded only on what the assistant says). This lesson:
#
# 1. renders a real conversation in the chat template and shows its mask (you write it);
# 2. looks at the **TaskMixture**, the chat data of mid-training;
# 3. mid-trains a small base model for a few steps;
# 4. measures bits per byte on the assistant tokens of held-out conversations, before and
#    after (you write the masked metric);
# 5. runs ChatCORE before and after, and compares replies.
#
# The base model is the one shipped with the course (`nanogpt_course/models/base`) when it is
# there; otherwise a tiny base model is trained once (seconds) and cached.
#
# **Run time** with the shipped base model and the data mirror, on a shared 2-core CPU
# (load average about 1.5): `smoke` about 18 s, `laptop` about 75 s (49 training steps,
# 51 s of them). The step count is cut to a fixed compute budget per preset (`SIZE`);
# `full` is an estimate from it: about 800 steps at about a second each, some 14 minutes
# on a CPU. Without the shipped model a tiny base model is trained once (seconds) and
# cached, and everything is faster.

# %%
import json
import os
import random
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from nanogpt_course import exercises, paths, presets
from nanogpt_course.chat import lesson_checkpoint, load_chat_model
from nanogpt_course.data import identity, tasks
from nanogpt_course.engine import generate
from nanogpt_course.eval import evaluate_bpb, evaluate_chatcore
from nanogpt_course.eval.chatcore import data_status
from nanogpt_course.tokenizer import IM_END
from nanogpt_course.train import TrainConfig, train
from nanogpt_course.train.tiny import LRS

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
CHECKPOINT = ""
SEED = 0

# %% [markdown]
# The preset sizes the number of training steps, the data and the evaluation; `CHECKPOINT`
# (a run or step folder of a base model) mid-trains your own model instead.

# %%
PRESET = presets.validate(PRESET)
SIZE = presets.choose(  # steps: at most; flops: the training budget (6 x params x tokens)
    PRESET, smoke=dict(steps=20, flops=3e11, per_part=150, held_out=24, chatcore=20),
    laptop=dict(steps=400, flops=6e12, per_part=1000, held_out=64, chatcore=100),
    full=dict(steps=1500, flops=1e14, per_part=5000, held_out=200, chatcore=500))
random.seed(SEED)
torch.manual_seed(SEED)
base_path = CHECKPOINT or lesson_checkpoint("base")
base = load_chat_model(base_path, device="cpu")
tok = base.tokenizer
info = base.info()
print(f"preset {PRESET!r}: base model {info['name']} (depth {info['depth']}, "
      f"{info['parameters']:,} parameters, context {info['context']}, tokenizer {info['tokenizer']})")

# %% [markdown]
# ## 1. The chat template and the loss mask
#
# A conversation is a list of messages `{"role": ..., "content": ...}`. The tokenizer renders
# it in ChatML: `<|bos|>`, then per message `<|im_start|>role\n` + content + `<|im_end|>\n`.
# Next to the ids it returns a **mask**: 1 on the tokens the model should learn to produce,
# 0 elsewhere.

# %%
conversation = [{"role": "user", "content": "What is 7 plus 5?"},
                {"role": "assistant", "content": "7 plus 5 is 12."},
                {"role": "user", "content": "Thanks!"},
                {"role": "assistant", "content": "You are welcome!"}]
ids, mask = tok.render_chat(conversation)
print(f"{len(ids)} tokens, {sum(mask)} of them learned (mask = 1, in [brackets]):")
print("".join(f"[{tok.decode([i])}]" if m else tok.decode([i]) for i, m in zip(ids, mask)))

# %% [markdown]
# Only the assistant's words and its `<|im_end|>` are learned. The user's text is given, not
# predicted: training on it would teach the model to imitate users. `<|im_end|>` *is*
# learned, because a chat model must know when to stop talking. The template tokens around
# it (`<|im_start|>assistant\n`) are supplied at chat time, so they need not be learned.
#
# In training, the targets are the ids shifted by one, with -1 (ignored by the loss) where
# the mask of the *next* token is 0 (lesson 07 built `sft_targets`).
#
# **Exercise.** Render a conversation with its mask from scratch: start with
# `[tokenizer.bos_id]`/`[0]` (the BOS token's name depends on the tokenizer: `<|bos|>` in
# the course's, `<|endoftext|>` in GPT-2's, which the checker uses);
# for each message append the header `[<|im_start|>] + encode(role + "\n")`, the body
# `encode(content) + [<|im_end|>]` and `encode("\n")`; the mask is 1 on the body of assistant
# messages only. `tokenizer.encode_special("<|im_start|>")` gives a special token's id.


# %%
def render_with_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Conversation -> (ids, mask), two lists of N ints; mask 1 on what the assistant says."""
    raise NotImplementedError("exercise: bos, then header + body + newline per message")


# %%
render_with_mask = exercises.check("11_midtraining.render_with_mask", render_with_mask)
assert render_with_mask(tok, conversation) == tok.render_chat(conversation)

# %% [markdown]
# ## 2. The TaskMixture
#
# Mid-training data is a mixture of tasks, all turned into conversations
# (`nanogpt_course.data.tasks.TaskMixture`). Offline, from the data mirror, it is **GSM8K
# train** (grade-school maths with worked answers), **MMLU dev** (multiple choice, the answer
# is a letter) and **identity conversations** (who the model is). Only train and dev splits:
# the test splits are what ChatCORE scores below.
#
# The mirror's identity conversations come from nanochat: most of them say the model *is*
# nanochat, trained in 3 hours at depth 24. A model of this course that learned them would
# lie about itself, so `nanogpt_course.data.identity` drops those and adds the course's own,
# generated from templates whose facts are true here. One of them:

# %%
print(json.dumps(identity.identity_conversations(1, seed=SEED)[0], indent=1))


# %% [markdown]
# We take up to 150 (`smoke`), 1,000 (`laptop`) or 5,000 (`full`) conversations of each part
# (MMLU dev has only 285; the full mixture is what
# `python -m nanogpt_course.train --mode mid-training` uses). The trainer continues a
# conversation longer than a row over the next rows, but our evaluation renders one
# conversation per row and truncates at the context, so the held-out ones are chosen among
# those that fit whole: every answer (MMLU's letter, GSM8K's `#### N`) is in what we
# measure.

# %%
def first(iterable, n: int) -> list:
    """The first ``n`` items, closing the generator (and its file) afterwards."""
    items = []
    for item in iterable:
        items.append(item)
        if len(items) == n:
            break
    getattr(iterable, "close", lambda: None)()
    return items


def fits(messages: list[dict], context: int) -> bool:
    """Whether the rendered conversation fits one row of ``context + 1`` tokens whole."""
    return len(tok.render_chat(messages)[0]) <= context + 1


def answer_index(answer: str) -> int | str:
    """MMLU's answer column: "0"-"3" in the mirror's layout, "A"-"D" in the original."""
    return int(answer) if answer.strip().isdigit() else answer


HANDWRITTEN_MATHS = [  # the offline fallback's maths: a few worked answers in GSM8K's style
    ("Tom has 3 apples and buys 4 more. How many apples does he have?",
     "Tom has 3 + 4 = 7 apples.\n#### 7"),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", "5 boxes hold 5 * 6 = 30 eggs.\n#### 30"),
    ("Sara had 20 dollars and spent 8. How much is left?", "She has 20 - 8 = 12 dollars left.\n#### 12"),
    ("12 cookies are shared by 4 children. How many does each get?",
     "Each child gets 12 / 4 = 3 cookies.\n#### 3"),
    ("A train travels 60 km per hour for 2 hours. How far does it go?",
     "It goes 60 * 2 = 120 km.\n#### 120"),
    ("Ann is 9 and her brother is 5 years older. How old is he?", "He is 9 + 5 = 14.\n#### 14"),
]
found = {part: paths.find_raw(rel) for part, rel in tasks.OFFLINE_PARTS.items()}
n, context = SIZE["per_part"], info["context"]
if all(found.values()):
    mmlu = (tasks.mmlu_messages(r["question"], r["choices"], answer_index(r["answer"]))
            for r in tasks.mmlu_csv_rows(found["mmlu_dev"]))
    parts = {
        "gsm8k": first(tasks.gsm8k_conversations(tasks.jsonl_rows(found["gsm8k"])), n),
        "mmlu_dev": first(mmlu, n),
        "identity": first(tasks.identity_conversations(found["identity"]), n),
    }
else:
    print("no data mirror (NANOGPT_COURSE_DATA): using the course's generated identity "
          "conversations and a few hand-written maths questions instead of the TaskMixture")
    parts = {"maths": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                       for q, a in HANDWRITTEN_MATHS],
             "identity": identity.identity_conversations(n, seed=SEED)}
held_out, train_convs = [], []
for part, convs in parts.items():
    convs = convs[:]
    random.Random(SEED).shuffle(convs)
    k = min(SIZE["held_out"] // len(parts), len(convs) // 4)
    whole = [convs[i] for i in range(len(convs)) if fits(convs[i], context)][:k]
    held_out += [(part, c) for c in whole]
    train_convs += [c for c in convs if c not in whole]  # never train on a held-out one
random.Random(SEED).shuffle(train_convs)
for part, convs in parts.items():
    lengths = [len(tok.render_chat(c)[0]) for c in convs]
    print(f"{part:9s}: {len(convs):4d} conversations, median {sorted(lengths)[len(lengths) // 2]}"
          f" tokens, {sum(x <= context + 1 for x in lengths)} fit the context ({context}) whole")
print(f"{len(train_convs)} for training, {len(held_out)} held out")
print("an MMLU-style item as the model sees it:" if "mmlu_dev" in parts else "a maths item:")
print(tok.decode(tok.render_chat(parts.get("mmlu_dev", parts.get("maths", [[]]))[0])[0]))

# %% [markdown]
# ## 3. Before: assistant-token bits per byte
#
# How well does the base model already predict the assistant's words? Bits per byte (lesson
# 10) over the **assistant tokens only**: the masked targets of training, except
# `<|im_end|>`, which has no bytes, so the number says how well the model would answer,
# not how well it predicts questions.
#
# **Exercise.** From per-token losses `(B, T)` in nats, targets `(B, T)` with -1 where not
# learned, and `token_bytes (V,)` (UTF-8 bytes of each id, 0 for special tokens): sum the
# losses of the targets that count (>= 0 and with at least one byte), convert to bits and
# divide by their total bytes. Return a Python float (`float(...)`).


# %%
def assistant_bits_per_byte(losses: torch.Tensor, targets: torch.Tensor,
                            token_bytes: torch.Tensor) -> float:
    """(B, T) nats, (B, T) targets (-1 = ignored), (V,) bytes per id -> bits per byte."""
    raise NotImplementedError("exercise: bytes of the counted targets, sum of their losses")


# %%
assistant_bits_per_byte = exercises.check("11_midtraining.assistant_bits_per_byte",
                                          assistant_bits_per_byte)


# %% [markdown]
# One conversation per row (cut at the context), targets masked to the assistant tokens.
# Our function and the library's `evaluate_bpb` must agree.

# %%
def chat_rows(convs: list[list[dict]], context: int):
    """Yield (x, y), each (1, T): inputs and targets with -1 outside the assistant tokens."""
    for messages in convs:
        ids, mask = tok.render_chat(messages, max_tokens=context + 1)
        ids, mask = torch.tensor([ids]), torch.tensor([mask])
        yield ids[:, :-1], torch.where(mask[:, 1:] == 1, ids[:, 1:], -1)


@torch.no_grad()
def held_out_bpb(model, convs) -> float:
    """Assistant-token bits per byte of ``model`` on ``convs``, with our function."""
    losses, targets = [], []
    for x, y in chat_rows(convs, info["context"]):
        losses.append(model(x, y, reduction="none").flatten())
        targets.append(y.flatten())
    return assistant_bits_per_byte(torch.cat(losses)[None], torch.cat(targets)[None],
                                   tok.token_bytes)


measured = [part for part in parts if any(p == part for p, _ in held_out)]
before = {part: held_out_bpb(base.model, [c for p, c in held_out if p == part]) for part in measured}
before["all"] = held_out_bpb(base.model, [c for _, c in held_out])
library = evaluate_bpb(base.model, chat_rows([c for _, c in held_out], info["context"]),
                       tok.token_bytes)
torch.testing.assert_close(before["all"], library, rtol=1e-6, atol=0)
print("base model, assistant-token bits per byte on held-out conversations: " +
      ", ".join(f"{k} {v:.3f}" for k, v in before.items()))

# %% [markdown]
# ## 4. Mid-training
#
# Mid-training is the training loop of lesson 09 started from the base checkpoint: the
# same model, optimizer and loss, on chat rows with masked targets, with a short schedule
# (no warmup, a warmdown to zero). On the command line, with the full TaskMixture:
#
# ```
# python -m nanogpt_course.train --mode mid-training --checkpoint runs/09_pretrain/laptop-pretraining-d4
# ```
#
# (the folder lesson 09's `laptop` run writes; any base checkpoint works). Here we write our
# conversations to a `.jsonl` file (one `{"messages": [...]}` per line) and use
# `--mode sft`, the same machinery on your own chat file. Two choices differ from the
# command line: rows of at most 256 tokens (fewer tokens per step, for CPU speed) and
# explicit learning rates `LRS` (matrix 0.02, embeddings 0.3, unembedding 0.008, scalars
# 0.5, no weight decay): the depth rules are anchored at 2^19-token batches and give
# rates half as large at 4,096 tokens per step, too timid for a few dozen steps.

# %%
work = Path(tempfile.mkdtemp(prefix="lesson11-"))
chat_file = work / "train.jsonl"
chat_file.write_text("".join(json.dumps({"messages": c}) + "\n" for c in train_convs))
ROWS, SEQ = 16, min(info["context"], 256)  # rows of SEQ tokens per step
steps = max(1, min(SIZE["steps"], int(SIZE["flops"] / (6 * info["parameters"] * ROWS * SEQ))))
cfg = TrainConfig(mode="sft", checkpoint=str(base_path), data=str(chat_file), out=str(work / "run"),
                  max_steps=steps, device_batch_size=ROWS, seq_len=SEQ, total_batch_size=ROWS * SEQ,
                  eval_every=-1, sample_every=-1, seed=SEED, device="cpu", **LRS)
result = train(cfg, echo=False)
print(f"mid-trained {result.step} steps of {ROWS} rows of {SEQ} tokens: final training loss "
      f"{result.final_loss:.3f}, checkpoint {result.checkpoint.name}")
chat = load_chat_model(result.out, device="cpu")  # its meta says it is a chat model

# %% [markdown]
# ## 5. After: the same held-out conversations

# %%
after = {part: held_out_bpb(chat.model, [c for p, c in held_out if p == part]) for part in measured}
after["all"] = held_out_bpb(chat.model, [c for _, c in held_out])
for k in before:
    print(f"{k:9s}: {before[k]:.3f} -> {after[k]:.3f} bits per byte")

labels = list(before)
xs = torch.arange(len(labels))
plt.figure(figsize=(6, 3))
plt.bar(xs - 0.2, [before[k] for k in labels], 0.4, label="base")
plt.bar(xs + 0.2, [after[k] for k in labels], 0.4, label="after mid-training")
plt.xticks(xs, labels)
plt.ylabel("bits per byte (assistant tokens)")
plt.title("held-out conversations")
plt.legend()
plt.show()

# %% [markdown]
# At `laptop` and `full` every part falls (`smoke`'s two steps are too few: a part can even
# rise). The identity conversations fall to almost nothing: they come from a handful of
# templates, so the held-out ones repeat sentences seen in training (a held-out set
# measures generalization only when it differs from the training data). MMLU's measured
# answer is a single letter: guessing uniformly among A-D costs $\log_2 4 = 2$ bits, so
# compare its bar with 2 before reading anything into it. (With the tiny fallback base
# model's 128-token context hardly any GSM8K conversation fits whole, so that bar would
# rest on very few conversations; the shipped model's 512 tokens fit them.)
#
# ## 6. ChatCORE before and after
#
# ChatCORE (lesson 10) asks chat questions from the *test* splits: ARC and MMLU are scored
# by the logit of the answer letter (0.25 is chance). We run the multiple-choice tasks on a
# few items each (`max_per_task`); the generative ones (GSM8K, HumanEval) need a model that
# can actually solve problems.

# %%
CHATCORE_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU"]
status = data_status()
if all(status[t] for t in CHATCORE_TASKS):
    scores = {}
    for name, model in [("base", base), ("mid-trained", chat)]:
        print(f"--- {name}")
        scores[name] = evaluate_chatcore(model.model, tok, tasks=CHATCORE_TASKS,
                                         max_per_task=SIZE["chatcore"])
    print(f"ChatCORE on {CHATCORE_TASKS}: base {scores['base']['chatcore']:+.4f}, "
          f"mid-trained {scores['mid-trained']['chatcore']:+.4f} (0 = chance)")
else:
    print("ChatCORE skipped: its test data is not in $NANOGPT_COURSE_DATA (the data mirror)")

# %% [markdown]
# At this size both scores sit within noise of chance: with 100 items a task, one standard
# error of an accuracy near 0.25 is about 0.04. Mid-training teaches the *format* of an
# answer; knowing the right answer takes a larger model and more pretraining (lesson 09).
#
# ## 7. What changed in the replies
#
# The same prompts, greedy, in the chat template, before and after. The base model has never
# seen `<|im_start|>assistant`: it continues with whatever text its pretraining suggests.
# After mid-training it answers like the assistant in its data, in sentences; a model this
# small answers almost everything with the identity sentence it saw most. Generation stops
# at `<|im_end|>` (not printed) or after 48 tokens.

# %%
def reply(model, question: str, max_tokens: int = 48) -> str:
    """Greedy reply of ``model`` to one user message, up to <|im_end|>."""
    prompt = tok.render_for_completion([{"role": "user", "content": question}])
    stop = tok.encode_special(IM_END)
    out = list(generate(model, prompt, max_tokens, temperature=0, stop=[stop]))
    return tok.decode(out[:-1] if out and out[-1] == stop else out)  # the stop token ends it


for question in ["Hello!", "Who are you?", "What is 4 plus 3?",
                 "Tom has 5 apples and eats 2. How many are left?"]:
    print(f"user: {question}")
    print(f"  base       : {reply(base.model, question)!r}")
    print(f"  mid-trained: {reply(chat.model, question)!r}")

# %% [markdown]
# ## What next
#
# Lesson 12 chats with a mid-trained model: sampling knobs, the KV cache and three chat
# front ends. To mid-train your own base model on the full TaskMixture:
# `python -m nanogpt_course.train --mode mid-training --checkpoint
# runs/09_pretrain/laptop-pretraining-d4 --out runs/my_chat`, score it with
# `python -m nanogpt_course.eval chatcore --checkpoint runs/my_chat` and pass its run folder
# as `CHECKPOINT` in lesson 12.
