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
# # 12 · Chat with your model
#
# A chat model is a language model that was shown conversations in a fixed template
# (lesson 11). Chatting with it is three small pieces of code around the engine: **render**
# the conversation in that template, **sample** the reply one token at a time, and
# **stop** at the end-of-turn token. This lesson looks at each piece on a real model:
#
# 1. the chat template as the model sees it, and where the reply starts;
# 2. the **next-token distribution** at that point, and what temperature, top-k and top-p
#    do to it (you write the nucleus filter and the sampler's distribution);
# 3. the **KV cache**: the same tokens, measured with and without it;
# 4. keeping a long conversation inside the **context window** (you write the rule);
# 5. the **chat widget** (`ChatUI`), driven by a script so it also runs without a browser;
# 6. the terminal chat and the web server, which share the same code.
#
# The model is the small chat model shipped with the course when it is there
# (`nanogpt_course/models/chat`); otherwise a tiny chat model is trained once (seconds) and
# cached: it babbles, but every mechanism below is the same.
#
# **Run time**, measured on a shared 2-core CPU under heavy load (load average 8–10), the
# tiny model already cached: `smoke` 48 s, `laptop` 128 s, kernel start included (an idle
# machine is faster; the very first run adds about 25 s to train and cache the tiny model).
# `full` is an estimate: about 5 minutes on a CPU (the KV-cache benchmark without the cache
# dominates), under a minute on a GPU.

# %%
import os
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import torch

from nanogpt_course import exercises, presets
from nanogpt_course.chat import Conversation, Sampling, lesson_checkpoint, load_chat_model
from nanogpt_course.chat.widget import ChatUI
from nanogpt_course.engine import generate, sample_next_token, top_k_filter
from nanogpt_course.model import GPT, GPTConfig

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
CHECKPOINT = ""
SEED = 0

# %% [markdown]
# The preset sizes the KV-cache benchmark and the number of samples we draw; `CHECKPOINT`
# (a run or step folder) chats with your own model instead of the default one.

# %%
PRESET = presets.validate(PRESET)
BENCH = presets.choose(PRESET, smoke=dict(depth=2, context=256, new=128),
                       laptop=dict(depth=2, context=512, new=192),
                       full=dict(depth=4, context=1024, new=512))
DRAWS = presets.choose(PRESET, smoke=2000, laptop=10000, full=50000)
torch.manual_seed(SEED)
chat_path = CHECKPOINT or lesson_checkpoint("chat")
chat_model = load_chat_model(chat_path, device="cpu")
info = chat_model.info()
print(f"preset {PRESET!r}: chatting with {info['name']} ({info['kind']}, depth {info['depth']}, "
      f"{info['parameters']:,} parameters, context {info['context']}, "
      f"tokenizer {info['tokenizer']})")

# %% [markdown]
# ## 1. The template, as tokens
#
# The tokenizer renders a conversation in ChatML: each message is
# `<|im_start|>role\n…<|im_end|>\n`, and the prompt from which the model answers ends with
# `<|im_start|>assistant\n`, an open assistant turn. `<|im_start|>` and `<|im_end|>` are
# single special tokens; the role names are ordinary text.

# %%
tok = chat_model.tokenizer
question = [{"role": "user", "content": "What is 3 plus 4?"}]
prompt = tok.render_for_completion(question)
print(f"{len(prompt)} tokens:")
print(" | ".join(repr(tok.decode([t])) for t in prompt))

# %% [markdown]
# The reply is whatever the model samples after the last token, up to `<|im_end|>`. A
# **base** model (no chat training) has no idea what `<|im_start|>` means: for it the front
# ends send the user's text as is and let the model *continue* it.

# %% [markdown]
# ## 2. A real next-token distribution
#
# Run the prompt through the model once and look at the logits of the last position: one
# number per vocabulary entry. Softmax turns them into the probabilities the sampler uses.


# %%
@torch.inference_mode()
def next_token_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits (V,) of the token after ``ids``."""
    return model(torch.tensor([ids]))[0, -1].float()


def show_top(probs: torch.Tensor, k: int = 12, title: str = "", ax=None):
    """Bar chart of the ``k`` most likely tokens."""
    top = torch.topk(probs, k)
    labels = [repr(tok.decode([i]))[1:-1] or "·" for i in top.indices.tolist()]
    ax = ax or plt.gca()
    ax.bar(range(k), top.values.tolist())
    ax.set_xticks(range(k), labels, rotation=60, fontsize=8)
    ax.set_title(title, fontsize=9)


logits = next_token_logits(chat_model.model, prompt)
probs = logits.softmax(-1)
entropy = -(probs * probs.clamp_min(1e-12).log2()).sum()
print(f"most likely next token: {tok.decode([int(probs.argmax())])!r} "
      f"with p = {probs.max():.2f}; entropy {entropy:.2f} bits over {len(probs)} tokens")
plt.figure(figsize=(7, 3))
show_top(probs, title="p(first reply token | the question)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Temperature
#
# Sampling at temperature $T$ divides the logits by $T$ before the softmax. $T < 1$ sharpens
# the distribution (toward the argmax: $T = 0$ is greedy decoding), $T > 1$ flattens it
# (more surprising tokens, more mistakes). From scratch, on the real logits:

# %%
temperatures = [0.5, 1.0, 1.5]
fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
for T, ax in zip(temperatures, axes):
    p_T = torch.softmax(logits / T, dim=-1)
    h = -(p_T * p_T.clamp_min(1e-12).log2()).sum()
    show_top(p_T, title=f"T = {T}: max prob {p_T.max():.2f}, entropy {h:.1f} bits", ax=ax)
plt.tight_layout()
plt.show()

# %%
Ts = torch.linspace(0.1, 2.0, 40)
entropies = []
for T in Ts:
    p_T = torch.softmax(logits / T, dim=-1)
    entropies.append(float(-(p_T * p_T.clamp_min(1e-12).log2()).sum()))
plt.figure(figsize=(5, 3))
plt.plot(Ts, entropies)
plt.xlabel("temperature")
plt.ylabel("entropy (bits)")
plt.title("the knob moves the distribution smoothly")
plt.show()

# %% [markdown]
# ## 4. Top-k and top-p
#
# Temperature reshapes the whole distribution; the long tail of unlikely tokens keeps some
# mass, and where the model is unsure, thousands of unlikely tokens together get sampled
# surprisingly often (the cell below prints the mass outside the 50 most likely tokens).
# Two filters cut the tail before sampling:
#
# - **top-k** keeps the $k$ most likely tokens (lesson 03 built it);
# - **top-p** (nucleus) keeps the smallest set of most likely tokens whose probability
#   reaches $p$: few tokens where the model is sure, many where it is not.
#
# **Exercise.** Write the nucleus filter. Sort the logits in descending order, compute the
# probabilities and, for each token, the probability mass of the tokens strictly before it;
# drop a token when that mass already reaches `p` (so the top token always stays), and put
# the mask back in vocabulary order. Dropped logits become `-inf`. With `p >= 1` keep
# everything (in float32 the running sum can reach 1.0 before the last token).


# %%
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(..., V) logits -> same shape, tokens outside the nucleus set to -inf."""
    raise NotImplementedError("exercise: sort, softmax, cumulative mass before each token")


# %%
top_p_filter = exercises.check("12_chat.top_p_filter", top_p_filter)

# %% [markdown]
# How many tokens survive on this distribution, and on a flatter one (the base model in
# the middle of a sentence)?

# %%
base_model = load_chat_model(lesson_checkpoint("base", verbose=False), device="cpu")
text_ids = [base_model.tokenizer.bos_id] + base_model.tokenizer.encode("The function returns the")
flat_logits = next_token_logits(base_model.model, text_ids)
for name, lg in [("chat model, first reply token", logits),
                 ("base model, mid-sentence", flat_logits)]:
    kept = [int(torch.isfinite(top_p_filter(lg, p)).sum()) for p in (0.5, 0.9, 0.99)]
    tail = 1 - lg.softmax(-1).sort(descending=True).values[:50].sum()
    print(f"{name:32s} tokens kept at p = 0.5 / 0.9 / 0.99: {kept}; "
          f"mass outside the top 50: {tail:.3f}")

plt.figure(figsize=(6, 3))
for name, lg in [("chat, first reply token", logits), ("base, mid-sentence", flat_logits)]:
    sorted_p = lg.softmax(-1).sort(descending=True).values
    plt.plot(range(1, len(sorted_p) + 1), sorted_p.cumsum(0), label=name)
plt.axhline(0.9, color="gray", lw=0.5, ls="--")
plt.xscale("log")
plt.xlabel("number of most likely tokens")
plt.ylabel("probability covered")
plt.legend(fontsize=8)
plt.title("top-p = 0.9 keeps where each curve crosses the line")
plt.show()

# %% [markdown]
# **Exercise.** Put the knobs together: return the probabilities the sampler actually
# draws from, for logits of shape `(V,)`. Order matters: divide by the temperature, then
# top-k, then top-p, then softmax. Temperature 0 means greedy: all mass on the argmax.


# %%
def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """(V,) logits -> (V,) probabilities after temperature, top-k and top-p."""
    raise NotImplementedError("exercise: temperature, then top-k, then top-p, then softmax")


# %%
sampling_distribution = exercises.check("12_chat.sampling_distribution", sampling_distribution)

# %% [markdown]
# Check it against the engine itself: draw many tokens with `sample_next_token` (the
# function `generate` calls every step) and compare the frequencies with the distribution.

# %%
settings = dict(temperature=0.8, top_k=20, top_p=0.9)
expected = sampling_distribution(flat_logits, 0.8, 20, 0.9)
g = torch.Generator().manual_seed(SEED)
draws = sample_next_token(flat_logits.expand(DRAWS, -1), generator=g, **settings)
freq = torch.bincount(draws, minlength=len(expected)).float() / DRAWS
tv = 0.5 * (freq - expected).abs().sum()
print(f"{DRAWS} draws: total variation distance to the distribution = {tv:.3f}; "
      f"tokens ever drawn = {int((freq > 0).sum())}, allowed = {int((expected > 0).sum())}")
assert int(((freq > 0) & (expected == 0)).sum()) == 0  # never a filtered-out token
assert tv < 0.1
reference = torch.softmax(top_p_filter(top_k_filter(flat_logits / 0.8, 20), 0.9), -1)
torch.testing.assert_close(expected, reference)

# %% [markdown]
# ## 5. The KV cache, measured
#
# Without a cache, every new token runs the whole sequence through the model again, so
# step $t$ costs $O(t)$ positions of work (and attention $O(t^2)$). With the cache the
# model processes only the new token and attends to the stored keys and values. The two
# give the same tokens (greedy here):

# %%
ask = tok.render_for_completion([{"role": "user", "content": "Hello!"}])
with_cache = list(generate(chat_model.model, ask, 24, temperature=0, use_cache=True))
without = list(generate(chat_model.model, ask, 24, temperature=0, use_cache=False))
assert with_cache == without
print("same 24 greedy tokens with and without the cache:", repr(tok.decode(with_cache)))

# %% [markdown]
# To see the effect clearly we time a randomly initialized model of a size we choose
# instead of the chat model (speed does not depend on what the weights learned). Each
# step's time is recorded as the sequence grows.


# %%
def step_times(model, prompt_ids, new_tokens, use_cache) -> list[float]:
    """Seconds between consecutive tokens of one greedy generation."""
    times, last = [], time.perf_counter()
    for _ in generate(model, prompt_ids, new_tokens, temperature=0, use_cache=use_cache):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


torch.manual_seed(SEED)
bench_cfg = GPTConfig.from_depth(BENCH["depth"], vocab_size=4096, sequence_len=BENCH["context"])
bench_model = GPT(bench_cfg).eval()
bench_prompt = torch.randint(0, 4096, (BENCH["context"] - BENCH["new"],)).tolist()
step_times(bench_model, bench_prompt[:8], 4, True)  # warm up
timing = {name: step_times(bench_model, bench_prompt, BENCH["new"], flag)
          for name, flag in [("with cache", True), ("without cache", False)]}
for name, ts in timing.items():
    steady = ts[1:]  # the first token includes the prompt's prefill
    print(f"{name:14s}: {len(steady) / sum(steady):7.1f} tokens/s after the first, "
          f"first token {ts[0] * 1e3:.0f} ms  (d{BENCH['depth']}, context {BENCH['context']})")
speedup = sum(timing["without cache"][1:]) / sum(timing["with cache"][1:])
print(f"the cache makes decoding {speedup:.1f}x faster here")

# %%
def rolling_median(xs: list[float], width: int = 9) -> list[float]:
    """Median of each window of ``width`` values (a busy machine makes single steps noisy)."""
    return [sorted(xs[i:i + width])[width // 2] for i in range(len(xs) - width + 1)]


fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
for name, ts in timing.items():
    steps = ts[1:]
    start = len(bench_prompt) + 1
    left.plot(range(start, start + len(steps)), torch.tensor(steps).cumsum(0), label=name)
    smooth = rolling_median(steps)
    right.plot(range(start + 4, start + 4 + len(smooth)), [t * 1e3 for t in smooth], label=name)
left.set(xlabel="sequence length", ylabel="seconds so far", title="total decoding time")
right.set(xlabel="sequence length", ylabel="ms per token (median of 9)",
          title="time per generated token")
left.legend()
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Without the cache each step reprocesses the whole sequence, so the time per token climbs
# with its length and the total grows quadratically; with the cache the time per token stays
# about flat (on a CPU a fixed per-step overhead dominates a model this small).
# On a GPU the library's engine also avoids host round-trips between steps: see
# docs/PERFORMANCE.md for its throughput at d12 and d20.

# %% [markdown]
# ## 6. Long conversations and the context window
#
# Every reply re-sends the whole conversation. Once it no longer fits the context (with
# room left for the reply), the oldest turns have to go. The rule the front ends use:
# keep the system message and the newest message, reserve `min(max_tokens, context // 2)`
# tokens for the reply, and drop the oldest messages one at a time (an assistant message
# that would start the conversation goes with them, so the model never sees an answer
# without its question).
#
# **Exercise.** Write it: return the rendered prompt ids and the number of dropped messages.
# A prompt that fits exactly (prompt + reply budget == context) fits. If only the newest
# message is left and it still does not fit, raise a `ValueError` (the library raises its
# subclass `PromptTooLong`).


# %%
def fit_context(tokenizer, messages: list[dict], context: int,
                max_tokens: int) -> tuple[list[int], int]:
    """Drop the oldest turns until render_for_completion(...) + reply budget fits."""
    raise NotImplementedError("exercise: render, and pop the oldest turn while it is too long")


# %%
fit_context = exercises.check("12_chat.fit_context", fit_context)

# %% [markdown]
# `Conversation` (used by all three front ends) applies it before every reply and records
# a notice when it dropped something. With short replies the model's context holds many
# turns; in a long chat the notice appears once it fills up:

# %%
conversation = Conversation(chat_model, system="You are a tiny model.",
                            sampling=Sampling(temperature=0, max_tokens=16))
for k in range(6):
    reply = "".join(conversation.reply(f"What is {k} plus {k + 1}?"))
    print(f"turn {k}: {reply!r}  [{'; '.join(conversation.notices) or 'fits'}]")
print(f"{len(conversation.messages)} messages kept; the system message is still first: "
      f"{conversation.messages[0]['role'] == 'system'}")

# %% [markdown]
# ## 7. The chat widget
#
# `ChatUI` wraps a `Conversation` in ipywidgets: the transcript updates as tokens stream,
# Send and Stop, temperature and top-k sliders, New chat, and a history of earlier chats.
# Type in the box below and press Send (in JupyterLab; a static view of this notebook shows
# nothing here).

# %%
ui = ChatUI(chat_path, temperature=0.7, top_k=40, max_tokens=64, seed=SEED)
ui

# %% [markdown]
# The same object is scriptable: `say` sends a message, prints the exchange as it streams
# and returns the reply. It needs no browser, which is how this cell also runs in CI.

# %%
first = ui.say("Hello!")
second = ui.say("What is 2 plus 3?")
print(f"\n{len(ui.messages)} messages in the conversation, the last reply is about "
      f"{len(tok.encode(second))} tokens (re-encoded from its text)")
roles = [m["role"] for m in ui.messages]
# two exchanges, unless the context was full and the oldest one was dropped (a notice says so)
assert roles in (["user", "assistant"] * 2, ["user", "assistant"]), roles
ui.new_chat()  # archived in ui.history; the widget's history list shows it
print(f"history: {len(ui.history)} earlier chat(s); new conversation: {ui.messages}")

# %% [markdown]
# ## 8. The terminal and the web
#
# The same session code runs in the terminal and behind a web server. Piped input gets one
# reply per line:

# %%
run = subprocess.run([sys.executable, "-m", "nanogpt_course.chat", "--checkpoint",
                      str(chat_path), "--temperature", "0", "--max-tokens", "24"],
                     input="Hello!\n/clear\nWhat is 1 plus 1?\n", capture_output=True,
                     text=True, timeout=300)
print(run.stdout)
assert run.returncode == 0, run.stderr

# %% [markdown]
# Interactively (a terminal, not a notebook):
#
# ```
# python -m nanogpt_course.chat                      # the shipped chat model
# python -m nanogpt_course.chat --checkpoint runs/my_run --temperature 0.6 --top-k 40
# make chat-server                                   # http://localhost:8003
# python -m nanogpt_course.chat.server --checkpoint runs/my_run --port 8003
# ```
#
# In the terminal, `/clear` starts over, `/quit` leaves and Ctrl-C stops a reply. The web
# page streams tokens over server-sent events (`POST /api/chat`), with Send/Stop, the same
# sliders and a New chat button; the server listens on 127.0.0.1 only unless you pass
# `--host`, generates one reply at a time (`--concurrency`), queues up to 32 more and
# answers 503 beyond that.
#
# ## What next
#
# Train your own: lesson 09 with `PRESET=laptop` and `MODE=all` trains a small base model
# and mid-trains it on the CPU (`python -m nanogpt_course.train --mode all --depth 6` is the
# GPU-scale version: FineWeb-Edu, the GPT-2 tokenizer, context 2048), then chat with it by
# passing its run folder as `CHECKPOINT` above. Try the
# sampling knobs on a bigger model: the difference between temperature 0.5 and 1.0 is far
# easier to hear when the model has something to say.
