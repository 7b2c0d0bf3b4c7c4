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
# # 01 · Tokenizer: from text to integers
#
# A language model reads and writes integers, not text. The **tokenizer** is the fixed
# dictionary between the two: it cuts text into pieces (tokens) and gives each piece an id.
# A good tokenizer makes the sequences short (the model sees more text per step) while
# keeping the dictionary small enough to learn an embedding for every entry.
#
# In this lesson you will:
#
# 1. turn text into bytes, the 256 symbols every text is made of;
# 2. build **byte-pair encoding** (BPE) from scratch: count pairs, merge the most frequent,
#    repeat;
# 3. see why text is cut into chunks with a regex before BPE;
# 4. write the encoder and decoder, and check them against the library (which uses
#    OpenAI's `tiktoken` for speed) and against GPT-2's own tokenizer;
# 5. add special tokens and the chat template that says which tokens the model learns from;
# 6. compare the compression of tokenizers of different sizes with GPT-2's.
#
# Run time, measured on a 2-core CPU that was heavily loaded (load average 12-15): `smoke`
# 22 s, `laptop` 1 min 32 s (a quiet machine is faster). `full`: about 10 minutes, an
# estimate (its from-scratch loops are pure Python on 5x the text; no GPU is needed).
# Everything runs offline: GPT-2's tokenizer files ship with the library, and without the
# data mirror the text falls back to a passage embedded below.

# %%
import os
import time
from collections import Counter

import matplotlib.pyplot as plt

from nanogpt_course import exercises, paths, presets
from nanogpt_course.tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, bpe, split
from nanogpt_course.tokenizer.fast import train_fast

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")

# %%
PRESET = presets.validate(PRESET)
# characters the from-scratch merge loop trains on, and how many merges it learns
SCRATCH_CHARS = presets.choose(PRESET, smoke=20_000, laptop=200_000, full=1_000_000)
SCRATCH_MERGES = presets.choose(PRESET, smoke=30, laptop=300, full=1000)
# vocabulary sizes of the compression plot (trained with the fast trainer)
PLOT_VOCABS = presets.choose(PRESET, smoke=[300, 512, 1024],
                             laptop=[300, 512, 1024, 2048, 4096, 8192],
                             full=[300, 512, 1024, 2048, 4096, 8192, 16384])
print(f"preset {PRESET!r}: from-scratch loop on {SCRATCH_CHARS:,} chars, "
      f"{SCRATCH_MERGES} merges; plot vocabularies {PLOT_VOCABS}")

# %% [markdown]
# ## The text
#
# We train on *tiny Shakespeare* (about 1 MB of plays). The library looks for it in the data
# mirror (`NANOGPT_COURSE_DATA`) or the cache. If you have neither (this cell never
# downloads), it falls back to a short passage embedded below, so the lesson still runs; the numbers
# will then be smaller and the plots less interesting. Get the real file with
# `python -m nanogpt_course.data prepare tinyshakespeare`.

# %%
FALLBACK = """\
HAMLET:
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause.
"""

source = paths.find_raw("tinyshakespeare/input.txt")
if source is not None:
    text = source.read_text(encoding="utf-8")
    print(f"tiny Shakespeare from {source}: {len(text):,} characters")
else:
    text = FALLBACK * 40
    print("tiny Shakespeare not found: using the embedded passage "
          f"({len(text):,} characters, repeated)")
print(text[:300])

# %% [markdown]
# ## Text → bytes
#
# Python strings are sequences of Unicode code points (about 150,000 are assigned). Using
# code points as tokens would need a huge table and still fail on a character never seen.
# Instead we encode the text as **UTF-8 bytes**: every character becomes 1 to 4 bytes, and
# there are only 256 possible byte values. Any text at all, in any language, with emoji,
# becomes a sequence of integers in `0..255`. No unknown tokens, ever.

# %%
for sample in ["hello", "café", "中文", "🙂"]:
    data = sample.encode("utf-8")
    print(f"{sample!r:8} {len(sample)} code point(s) -> {len(data)} bytes {list(data)}")

# %% [markdown]
# The price: bytes make long sequences (one id per byte). BPE shortens them by adding new
# tokens for byte sequences that occur often.

# %%
sample_text = text[:SCRATCH_CHARS]
ids = list(sample_text.encode("utf-8"))
print(f"{len(sample_text):,} characters -> {len(ids):,} byte ids; first 20: {ids[:20]}")

# %% [markdown]
# ## Counting pairs
#
# BPE starts by counting every pair of neighbouring ids. Overlapping pairs count separately:
# in `[5, 5, 5]` the pair `(5, 5)` occurs twice.
#
# **Exercise.** Write `count_pairs(ids)`, returning a dict `{(a, b): count}`.
# Stuck? `exercises.hint("01_tokenizer.count_pairs")` gives a hint, the idea first; call it
# again for a more concrete one. A wrong answer shows which cases differ and how.

# %%
def count_pairs(ids: list[int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs. [1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1}."""
    raise NotImplementedError("exercise: count each adjacent pair")


# %%
count_pairs = exercises.check("01_tokenizer.count_pairs", count_pairs)

# %% [markdown]
# The most frequent pairs of bytes in Shakespeare (at the `laptop` preset: `'e '`, `' t'`,
# `'th'`, `'he'`, `'t '`, `'s '`, `'ou'`, `'d '`): the ends of words glued to the space
# that follows them (`e `, `t `, `s `, `d `), the start of a word (` t`), and the
# commonest letter pairs of English (`th`, `he`, `ou`).

# %%
counts = count_pairs(ids)
for (a, b), n in sorted(counts.items(), key=lambda kv: -kv[1])[:8]:
    print(f"{bytes([a, b])!r:10} ({a:3}, {b:3}) x {n}")

# %% [markdown]
# ## Merging a pair
#
# The most frequent pair becomes a new token with the next free id (256 for the first).
# Then every occurrence of the pair in the sequence is replaced by that id, scanning from
# left to right: in `[5, 5, 5]`, merging `(5, 5)` gives `[new, 5]`.
#
# **Exercise.** Write `merge(ids, pair, new_id)`.

# %%
def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, left to right; return a new
    list (leave `ids` as it is: the next cells use it again)."""
    raise NotImplementedError("exercise: scan ids, replacing each occurrence of pair")


# %%
merge = exercises.check("01_tokenizer.merge", merge)

# %%
top = max(counts, key=counts.get)
merged = merge(ids, top, 256)
print(f"merging {bytes(top)!r} -> 256 shortens the sequence from {len(ids):,} to {len(merged):,}")

# %% [markdown]
# ## The merge loop
#
# Training is just that, repeated: count, pick the most frequent pair, merge, and remember
# the merge. When two pairs are equally frequent we pick the **smallest pair** `(a, b)` in
# numeric order, so training always gives the same result (the library and the fast Rust
# trainer use the same rule).

# %%
def train_on_bytes(ids: list[int], n_merges: int) -> list[tuple[int, int]]:
    """Learn `n_merges` merges on one byte sequence; merge k creates token 256 + k."""
    merges = []
    for k in range(n_merges):
        counts = count_pairs(ids)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest
        ids = merge(ids, best, 256 + k)
        merges.append(best)
    return merges


def spell(merges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes each id stands for: 0..255 themselves, then one entry per merge."""
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


start = time.perf_counter()
raw_merges = train_on_bytes(ids, SCRATCH_MERGES)
raw_vocab = spell(raw_merges)
print(f"{len(raw_merges)} merges in {time.perf_counter() - start:.1f}s; the first 12:")
print([raw_vocab[256 + k] for k in range(12)])

# %% [markdown]
# ## Why cut the text first
#
# Look at the tokens the loop learned: many glue the end of one word to the space that
# starts the next, or a word to the punctuation after it. At the `laptop` preset the cell
# below finds 137 such tokens among the 300, for example `b'and '`, `b'the '`, `b'll '`
# and `b'US:\n'` (the end of a speaker's name, such as CORIOLANUS, with its colon and the
# newline). Such tokens waste the vocabulary on accidents of the training text: `"dog."`,
# `"dog!"` and `"dog?"` would each need their own token.
#
# So before BPE, a **regex cuts the text into chunks** (words with their leading space,
# runs of digits, runs of punctuation, whitespace), and merges never cross a chunk boundary.

# %%
def crosses(token: bytes) -> bool:
    """A letter together with a space that does not start the token, or with punctuation."""
    s = token.decode("utf-8", errors="replace")
    return any(c.isalpha() for c in s) and (" " in s.lstrip(" ") or any(c in ",.:;!?\n" for c in s))


crossing = [t for t in raw_vocab[256:] if crosses(t)]
print(f"{len(crossing)} of {len(raw_merges)} learned tokens cross a word/punctuation boundary, "
      f"e.g. {crossing[:8]}")
print("the longer ones:", [t for t in crossing if len(t) >= 3][:12])

# %% [markdown]
# Two patterns are in use. GPT-2's cuts `"don't"` into `don` + `'t`, keeps a run of digits
# together, and lumps spaces together. GPT-4's (OpenAI's `cl100k`) fixes several things:
# contractions match in any case, numbers split into groups of at most three digits (a small
# vocabulary is not spent on thousands of numbers), newlines stay apart from other
# whitespace (though a run of punctuation keeps the newlines right after it: `'!\n'`),
# and a word may carry one leading non-letter like `(` or `.`. **We use the
# GPT-4 pattern for the tokenizers we train**: it suits the code and documentation text of
# the course's `offline` corpus, and it is what the fast trainer uses.

# %%
demo = "I'LL say it: don't    pay 1234567 pounds!\n    return x.y(z)\n"
print("GPT-2:", split(demo, GPT2_PATTERN))
print("GPT-4:", split(demo, GPT4_PATTERN))

# %% [markdown]
# ## BPE on chunks, from scratch
#
# Many chunks repeat (`" the"` occurs thousands of times), so we count each distinct chunk
# once and give its pairs a **weight**: the number of times the chunk occurs. The loop is the
# same as before, over a list of short byte sequences instead of one long one.

# %%
def train_on_chunks(text: str, n_merges: int, pattern: str = GPT4_PATTERN):
    """BPE over the regex chunks of `text`, each distinct chunk weighted by its count."""
    chunk_counts = Counter(split(text, pattern))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    weights = list(chunk_counts.values())
    merges = []
    for k in range(n_merges):
        totals = Counter()
        for word, weight in zip(words, weights):
            for pair, n in count_pairs(word).items():
                totals[pair] += n * weight
        if not totals:
            break
        best = min(totals, key=lambda p: (-totals[p], p))
        words = [merge(word, best, 256 + k) for word in words]
        merges.append(best)
    return merges


start = time.perf_counter()
merges = train_on_chunks(sample_text, SCRATCH_MERGES)
# two merges can (rarely) spell the same bytes; ids must be unique, so keep the first
vocab = bpe.dedupe_ranks(spell(merges))
print(f"{len(merges)} merges in {time.perf_counter() - start:.1f}s; the first 12:")
print([vocab[256 + k] for k in range(12)])

# %% [markdown]
# ### Check against the library
#
# The library's readable trainer (`nanogpt_course.tokenizer.bpe.learn_merges`) must find
# exactly the same merges, and so must the fast trainer, rustbpe (Rust, multi-threaded,
# updating pair counts incrementally instead of recounting everything after each merge).

# %%
assert bpe.learn_merges([sample_text], SCRATCH_MERGES) == merges

start = time.perf_counter()
fast_tok = train_fast([sample_text], 256 + SCRATCH_MERGES + 3)  # + 3 special tokens
print(f"rustbpe: {time.perf_counter() - start:.3f}s for the same {SCRATCH_MERGES} merges")
assert fast_tok.ranks == vocab
print("same merges from scratch, from the library's reference trainer and from rustbpe")

# %% [markdown]
# ## Decoding
#
# Decoding is a table lookup: join the bytes of each id, then decode UTF-8. A slice of ids
# can end in the middle of a character (an emoji is 4 bytes); decoding must not crash
# then, so invalid bytes become the replacement character `�`.
#
# **Exercise.** Write `decode(ids, vocab)` where `vocab` maps id → bytes.

# %%
def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """Ids -> text; bytes that are not valid UTF-8 become the replacement character."""
    raise NotImplementedError("exercise: join the bytes of each id, then decode UTF-8")


# %%
decode = exercises.check("01_tokenizer.decode", decode)

# %% [markdown]
# ## Encoding
#
# To encode new text we replay the merges: start from bytes, and repeatedly join the
# adjacent pair whose joined bytes are a token with the **lowest id** (the earliest merge),
# the leftmost one on a tie, until no adjacent pair forms a token. Here `ranks` maps bytes
# → id (the vocabulary turned around).
#
# **Exercise.** Write `encode(text, ranks)` (no regex yet: the whole text is one piece).

# %%
def encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Text -> ids by joining, each round, the adjacent pair with the lowest id."""
    raise NotImplementedError("exercise: start from bytes; merge the lowest-id pair; repeat")


# %%
encode = exercises.check("01_tokenizer.encode", encode)

# %% [markdown]
# A full encoder splits with the regex first and encodes each chunk. One detail copied
# from tiktoken: a chunk that is itself a token becomes that token directly (usually the
# merge loop would get there anyway; this is faster and defines the rare exceptions).
# The library's `Tokenizer` wraps tiktoken, which does the same in Rust. Ours must give
# identical ids:

# %%
ranks = {token: i for i, token in enumerate(vocab)}


def encode_text(text: str, ranks: dict[bytes, int], pattern: str = GPT4_PATTERN) -> list[int]:
    """Regex chunks, then BPE on each chunk (a whole-chunk token wins)."""
    out = []
    for chunk in split(text, pattern):
        data = chunk.encode("utf-8")
        out += [ranks[data]] if data in ranks else encode(chunk, ranks)
    return out


tok = Tokenizer.from_ranks(vocab, GPT4_PATTERN)  # + <|bos|>, <|im_start|>, <|im_end|>
check_text = text[-3000:]
ours = encode_text(check_text, ranks)
assert ours == tok.encode(check_text), "encode_text differs from the library: check your encode"
assert decode(ours, dict(enumerate(vocab))) == tok.decode(ours) == check_text
print(f"{len(check_text.encode())} bytes -> {len(ours)} tokens, identical to the library; "
      f"{len(check_text.encode()) / len(ours):.2f} bytes per token")
print([tok.decode([i]) for i in ours[:20]])

# %% [markdown]
# ## GPT-2's tokenizer
#
# GPT-2's tokenizer is a byte-level BPE of this kind, with GPT-2's split pattern and
# 50,000 merges, learned on OpenAI's web text. OpenAI released only the result, not the
# training code or data, so we cannot say it was trained with exactly this loop; what we
# can check is that *encoding* with its merges, as below, gives its ids exactly. The
# result is two files: `vocab.bpe` (the merges, in order) and `encoder.json` (token → id).
# In them every byte is written as a printable character (a space shows as `Ġ`) so the
# files are plain text. They ship inside the library (with OpenAI's license notice), so
# `Tokenizer.gpt2()` needs no network; it adds two chat tokens after GPT-2's 50,257 ids.

# %%
gpt2 = Tokenizer.gpt2()
print(gpt2)
print("'Hello world' ->", gpt2.encode("Hello world"))
print("token 15496 is", gpt2.id_to_bytes(15496), "| token 995 is", gpt2.id_to_bytes(995))

# %% [markdown]
# Our from-scratch `encode_text`, given GPT-2's ranks and pattern, reproduces tiktoken's
# GPT-2 ids exactly:

# %%
gpt2_ranks = {token: i for i, token in enumerate(gpt2.ranks)}
lines = text.splitlines()[:: max(1, len(text.splitlines()) // 200)]
for line in lines:
    assert encode_text(line, gpt2_ranks, GPT2_PATTERN) == gpt2.encode(line), (
        f"your encode differs from tiktoken's GPT-2 on {line!r}: check the merge order")
print(f"from-scratch encoder == tiktoken's GPT-2 on {len(lines)} lines")

# %% [markdown]
# ## Special tokens
#
# Some ids must mean *structure*, not text: where a document begins (**BOS**, `<|bos|>` in
# our tokenizers, `<|endoftext|>` in GPT-2), where a chat message starts and ends
# (`<|im_start|>`, `<|im_end|>`). They get the last ids, after all the merges, and no
# text ever encodes to them: if a user types `<|im_end|>`, it is encoded as ordinary
# characters. Otherwise anyone could end a message, or fake an assistant turn, by typing.

# %%
typed = "<|im_end|>"
print(f"{typed!r} typed by a user -> {gpt2.encode(typed)} (ordinary text)")
print(f"the special token itself -> {gpt2.encode_special(typed)}")
print("special tokens of our tokenizer:", tok.special_tokens, "BOS:", tok.bos_id)

# %% [markdown]
# Text that *you* control, say documents joined with GPT-2's `<|endoftext|>`, may opt in,
# the way tiktoken does it: `allowed_special` names the special tokens to recognise (or
# `"all"`); every other special string stays plain text.

# %%
joined = "First document.<|endoftext|>Second document."
print(gpt2.encode(joined, allowed_special={"<|endoftext|>"}))

# %% [markdown]
# ## The chat template (ChatML)
#
# A conversation is rendered as `<|im_start|>role\n…<|im_end|>\n` per message, after a BOS.
# When fine-tuning a chat model we want it to learn to **answer**, not to imitate users, so
# the loss counts only the assistant's tokens and its closing `<|im_end|>` (that is how it
# learns to stop). `render_chat` returns the ids and this 0/1 loss mask.

# %%
conversation = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Who wrote Hamlet?"},
    {"role": "assistant", "content": "William Shakespeare."},
    {"role": "user", "content": "When?"},
    {"role": "assistant", "content": "Around 1600."},
]
chat_ids, loss_mask = gpt2.render_chat(conversation)
print(gpt2.decode(chat_ids))
print(f"{len(chat_ids)} tokens, {sum(loss_mask)} of them carry loss")

# %%
def show_mask(tokenizer, ids, mask, per_row=10):
    """Draw tokens as boxes: green = the model learns to produce it, grey = context only."""
    rows = (len(ids) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(13, 0.55 * rows + 0.6))
    for k, (i, m) in enumerate(zip(ids, mask)):
        label = tokenizer.decode([i]).replace("\n", "\\n")
        ax.text(k % per_row, -(k // per_row), label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "#8fd18f" if m else "#dddddd", "ec": "none"})
    ax.set_xlim(-0.6, per_row - 0.4)
    ax.set_ylim(-rows + 0.4, 0.6)
    ax.axis("off")
    ax.set_title("loss mask: green tokens are learned (assistant text and its <|im_end|>)")
    plt.show()


show_mask(gpt2, chat_ids, loss_mask)

# %% [markdown]
# ## Compression: our tokenizers vs GPT-2
#
# Compression = UTF-8 bytes per token: higher is better (shorter sequences). We train
# tokenizers of several sizes with the fast trainer on the first 90% of the text and
# measure on the last 10%. GPT-2 was trained on web text, not on Shakespeare, so a
# tokenizer of a few thousand tokens trained on the plays themselves overtakes GPT-2's
# 50,257 on them (run the `laptop` preset to see the curve cross GPT-2's line).

# %%
cut = int(len(text) * 0.9)
train_text, test_text = text[:cut], text[cut:]
test_bytes = len(test_text.encode("utf-8"))
results = {}
for vocab_size in PLOT_VOCABS:
    trained = train_fast([train_text], vocab_size)
    results[vocab_size] = test_bytes / len(trained.encode(test_text))
    print(f"vocab {trained.vocab_size:6}: {results[vocab_size]:.2f} bytes/token")
gpt2_ratio = test_bytes / len(gpt2.encode(test_text))
print(f"GPT-2 ({gpt2.vocab_size}): {gpt2_ratio:.2f} bytes/token")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(list(results), list(results.values()), "o-", label="trained on the plays (GPT-4 split)")
ax.axhline(gpt2_ratio, color="grey", ls="--", label=f"GPT-2, {gpt2.vocab_size} tokens")
ax.set_xscale("log", base=2)
ax.set_xlabel("vocabulary size")
ax.set_ylabel("bytes per token (held-out text)")
ax.legend()
plt.show()

# %% [markdown]
# ## Saving, loading, and bits per byte
#
# A trained tokenizer is saved as one plain JSON file (no pickle, so loading never runs
# code). `identity` names it for cache folders: tokenized data is kept per tokenizer.
# `token_bytes` (bytes per id, 0 for special tokens) turns a loss in nats per token (a
# cross-entropy measured with the natural log) into **bits per byte**,
# $\sum \text{loss} / (\ln 2 \cdot \sum \text{token bytes})$, a number that is comparable
# across tokenizers: it is the validation metric of the training runs in lessons 04 and 09
# (lesson 10 shows why).

# %%
folder = paths.cache_dir("lessons", "01_tokenizer", "demo")
tok.save(folder)
again = Tokenizer.load(folder)
assert again == tok and again.encode(check_text) == tok.encode(check_text)
print(f"saved and reloaded {again.identity} from {folder}")
print("bytes per id of 'To be, or not':",
      [int(again.token_bytes[i]) for i in again.encode("To be, or not")])

# %% [markdown]
# ## What next
#
# - Train a 32,768-token tokenizer on a real corpus from a terminal:
#   `python -m nanogpt_course.tokenizer train --data FILE_OR_DIR --vocab-size 32768 --out DIR`,
#   then `python -m nanogpt_course.tokenizer compare --tokenizer DIR --text FILE`.
# - Training uses GPT-2's tokenizer by default (`--tokenizer gpt2`); pass `--tokenizer DIR`
#   to use yours.
# - `lessons/02_attention_rope`: what the model does with these ids.
