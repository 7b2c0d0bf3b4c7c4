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
# # 07 · The data pipeline: from raw text to batches
#
# A training step asks for one thing: a batch of token ids `inputs` of shape (B, T) and the
# `targets` the model should predict, the same ids shifted left by one. Between the raw
# text and that batch sits the data pipeline, and at GPU speed it has to deliver about half a
# million tokens every second without ever making the GPU wait.
#
# In this lesson you will:
#
# 1. look at what a pretraining corpus is made of;
# 2. tokenize documents into **shards**: flat files of token ids behind a small header;
# 3. read them back with **memory-mapping** and cut random windows;
# 4. **pack** documents into rows without cutting or dropping anything (best fit, long
#    documents continued over rows), and see whether packed documents attend to each other;
# 5. **mix** several datasets by weight;
# 6. build **SFT batches** whose loss counts only the assistant's tokens;
# 7. check that the loader resumes exactly and splits rows between GPUs, then time it.

# %%
import hashlib
import json
import os
import struct
import time
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch

from nanogpt_course import data, exercises, paths, presets
from nanogpt_course.data import download, offline, shards
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.tokenizer import Tokenizer

# %% tags=["parameters"]
PRESET = os.environ.get("NANOGPT_COURSE_PRESET", "laptop")
SEED = 0

# %%
PRESET = presets.validate(PRESET)
OFFLINE_MB = presets.choose(PRESET, smoke=2, laptop=20, full=200)  # size cap of the corpus
SEQ_LEN = presets.choose(PRESET, smoke=128, laptop=256, full=2048)
BATCH = presets.choose(PRESET, smoke=4, laptop=8, full=32)
TIMING_SECONDS = presets.choose(PRESET, smoke=0.5, laptop=2.0, full=5.0)
print(f"preset {PRESET!r}: offline corpus capped at {OFFLINE_MB} MB, batches of "
      f"{BATCH} x {SEQ_LEN}")

# %% [markdown]
# ## What is in a pretraining corpus?
#
# Real runs train on **FineWeb-Edu**: web pages from Common Crawl, kept when a classifier
# judged them educational, about 10 billion tokens in the `sample-10BT` subset the course
# uses by default (`python -m nanogpt_course.data prepare fineweb_edu`). Its legacy
# predecessor, **OpenWebText**, is the text of web pages linked from Reddit.
#
# Neither can be downloaded on a machine without internet, so the course also has a corpus
# that every computer with Python already holds: the **offline** corpus, made of the
# standard library's and the installed packages' own sources, docstrings and docs. It is
# code-heavy English, which is exactly what a first model can learn to imitate in minutes.
#
# Collecting it walks the folders in sorted order, skips binaries and generated files,
# drops exact duplicates (by content hash) and puts each file in `train` or `val` by its
# content hash, so the same file lands in the same split on every machine. A manifest
# records every file, its size and hash.

# %%
corpus = offline.collect(max_bytes=int(OFFLINE_MB * 1e6))
manifest = offline.read_manifest(corpus)
print(f"{manifest['files']:,} files, {manifest['bytes'] / 1e6:.1f} MB "
      f"({manifest['val_bytes'] / 1e6:.2f} MB in val), corpus hash "
      f"{manifest['content_sha256'][:12]}...")

# %% [markdown]
# Where does the text come from? Group the files by their package (or `stdlib`):

# %%
by_source = Counter()
for key, size, _, _ in manifest["entries"]:
    root, rest = key.split("/", 1)
    by_source[root if root != "site" else rest.split("/")[0].split("-")[0]] += size
top = by_source.most_common(12)
plt.figure(figsize=(8, 3))
plt.bar([name for name, _ in top], [size / 1e6 for _, size in top])
plt.ylabel("MB")
plt.title("offline corpus: biggest sources")
plt.xticks(rotation=45, ha="right")
plt.tight_layout()
plt.show()

# %% [markdown]
# And one document, to see what the model will read:

# %%
record = next(r for r in offline.iter_corpus(corpus) if r["key"].endswith(".py"))
print(record["key"], f"({record['split']})")
print(record["text"][:600])

# %% [markdown]
# ## Tokenizing to shards
#
# Training reads the corpus many times, so it is tokenized once and stored as token ids.
# GPT-2's ids go up to 50,258, which fits in **2 bytes** (uint16 holds up to 65,535); a
# bigger vocabulary would need 4 bytes (uint32). Every document starts with the **BOS**
# token, so the loader can find where documents begin.
#
# A *shard* is one flat array of ids behind a 64-byte header: a magic string, a format
# version, the item size, the number of tokens and a sha256 of the payload. Let us write
# one by hand.

# %%
tok = Tokenizer.gpt2()
docs = ["The cat sat on the mat.", "def add(a, b):\n    return a + b\n", "Hello, world!"]
ids = np.concatenate([[tok.bos_id] + tok.encode(d) for d in docs]).astype(np.uint16)
print("ids:", ids.tolist())

scratch = paths.cache_dir("lesson07") / "scratch_shard.bin"
payload = ids.tobytes()  # little-endian uint16 on every machine the course supports
header = struct.pack("<8sIIQ32s8x", b"NGCSHARD", 1, 2, len(ids), hashlib.sha256(payload).digest())
scratch.write_bytes(header + payload)
print(f"{scratch.name}: {scratch.stat().st_size} bytes = 64 header + {len(ids)} x 2")

# %% [markdown]
# The library reads it back, checking the magic, the size and the checksum:

# %%
back = shards.read_shard(scratch)
assert back.tolist() == ids.tolist()
print("round trip OK:", back[:8], "...")

# %% [markdown]
# A damaged shard must never train silently. Truncate it and the error names the file:

# %%
scratch.write_bytes((header + payload)[:-3])
try:
    shards.read_shard(scratch)
except shards.ShardError as err:
    print("ShardError:", err)

# %% [markdown]
# `data.prepare` does this for a whole dataset: it reads the documents, tokenizes them in
# parallel processes, writes shards per split (with a document-length index next to each)
# and a `meta.json` last. Prepared folders live in the cache, one per tokenizer, and a
# second call returns at once. Tiny Shakespeare comes from the data mirror, or is
# downloaded once.
#
# Two rules hold for every dataset. A document is **never cut by characters** before
# tokenization: a file (or a JSONL record) is one document, however long. And the
# train/validation split is **per file**: a file is entirely in one split, so validation
# never scores text whose neighbouring paragraphs were trained on. Tiny Shakespeare is a
# single file, so its validation split is its last 10% as one contiguous tail.
#
# (Offline, without the data mirror, the download fails with a one-line error; the cell
# then uses another single long file, Python's own help topics, so the lesson still runs.)

# %%
try:
    shakespeare = data.prepare("tinyshakespeare", tok)
except (paths.MissingDataError, download.DownloadError) as err:
    print(f"tiny Shakespeare is not reachable ({type(err).__name__}); using one long file "
          f"of Python's help topics instead")
    import pydoc_data.topics
    book = paths.cache_dir("lesson07") / "python_topics.txt"
    book.write_text("\n\n".join(pydoc_data.topics.topics.values()), encoding="utf-8")
    shakespeare = data.prepare(str(book), tok, val_fraction=0.1)
meta = data.read_meta(shakespeare)
for split, s in meta["splits"].items():
    print(f"{split:<5} {s['tokens']:>9,} tokens {s['docs']:>6,} documents "
          f"{s['text_bytes'] / s['tokens']:.2f} bytes/token")

# %% [markdown]
# ## Memory-mapping and random windows
#
# A shard of 10 GB does not fit in memory, and it does not have to: `np.memmap` maps the
# file into the address space and the operating system reads only the pages we touch.
# Opening is instant; indexing reads from disk (or from the page cache).

# %%
first = shakespeare / meta["splits"]["train"]["shards"][0]["file"]
mapped = np.memmap(first, dtype=np.uint16, mode="r", offset=64)
library = shards.open_shard(first)
assert np.array_equal(mapped[:1000], library[:1000])
print(f"{len(mapped):,} tokens mapped; the first ones decode to:\n{tok.decode(mapped[:40])!r}")

# %% [markdown]
# The simplest loader (nanoGPT's) picks random start positions and cuts windows of
# `T + 1` tokens: the first `T` are the inputs, the last `T` the targets.
#
# **Exercise.** Write `random_windows(tokens, starts, seq_len)` returning `(inputs, targets)`,
# both int64 tensors of shape `(len(starts), seq_len)`.

# %%
def random_windows(tokens, starts, seq_len):
    """Windows of seq_len + 1 tokens at each start -> (inputs, targets), (B, seq_len) int64."""
    raise NotImplementedError("exercise: cut windows of seq_len + 1 and shift by one")


# %%
random_windows = exercises.check("07_data_pipeline.random_windows", random_windows)

# %%
rng = np.random.default_rng(SEED)
starts = rng.integers(0, len(mapped) - SEQ_LEN - 1, size=BATCH)
x, y = random_windows(torch.from_numpy(np.asarray(mapped, dtype=np.int64)), starts, SEQ_LEN)
print(x.shape, y.shape)
print("a random window starts mid-sentence:", repr(tok.decode(x[0, :24])))

# %% [markdown]
# ## Packing whole documents: best fit
#
# Random windows start anywhere, usually in the middle of a document, so the model
# often predicts text whose beginning it never saw. The alternative used by modern
# pretraining: every row **starts at a document start** (its BOS). Documents have all kinds
# of lengths, so a row of `T + 1` tokens is filled like a suitcase:
#
# - take the **longest document that still fits** in the space left;
# - when none fits, **crop** the shortest one to fill the row (its tail is dropped).
#
# The dropped tails are the price, and the loader reports them as the *crop fraction*.
#
# **Exercise.** Write `pack_best_fit(lengths, row_len)`: documents `0..n-1` with the given
# lengths, all available at once; return the rows, each a list of `(doc, tokens_taken)`.
# Keep the documents sorted by `(length, doc)` and take the *last* key that fits, so among
# equal lengths the larger document index goes first (what `bisect_right` gives you).

# %%
def pack_best_fit(lengths, row_len):
    """Pack documents into rows of row_len tokens -> [[(doc, taken), ...], ...]."""
    raise NotImplementedError("exercise: longest that fits, else crop the shortest")


# %%
pack_best_fit = exercises.check("07_data_pipeline.pack_best_fit", pack_best_fit)

# %% [markdown]
# Your packing agrees with the library's reference. How much does cropping throw away?
# It depends on how long the documents are compared with a row. The offline corpus holds
# whole source files, many of them thousands of tokens long:

# %%
offline_folder = data.prepare("offline", tok, max_bytes=int(OFFLINE_MB * 1e6))
lengths = data.Split(offline_folder, "train").doc_len
sample = lengths[:2000].tolist()
print(f"{len(lengths):,} documents, median {np.median(lengths):.0f} tokens, "
      f"{(lengths > 1025).mean():.0%} longer than 1,025")
for row_len in (129, 513, 2049):
    rows = pack_best_fit(sample, row_len)
    used = sum(t for row in rows for _, t in row)
    print(f"rows of {row_len:>5}: crop fraction {1 - used / sum(sample):.2f}")

# %% [markdown]
# Most of the tokens of a code corpus sit in long files, and best fit keeps only their
# first row's worth. Cutting documents into short pieces before tokenizing (what this
# course did at first) avoids the crop, but then no row ever holds a long stretch of one
# document, and the model never learns long context.
#
# The library keeps both: after tokenization a document of `n` tokens becomes **pieces**
# of at most `row_len = T + 1` tokens, starting every `T` tokens (consecutive pieces
# overlap by one token, so every token is a target exactly once). A short document is one
# piece that starts with BOS; a long one becomes full rows of uninterrupted text plus a
# remainder. Rows are then packed best fit from a buffer of pieces, and when no piece fits
# the space left, the shortest one is **split**: its head fills the row and its tail goes
# back to the buffer. Nothing is cropped and nothing is padded.
#
# The piece boundaries, from scratch:

# %%
def pieces(n, row_len):
    """(start, end) token ranges of a document of n tokens, each at most row_len long."""
    stride = row_len - 1
    spans, start = [(0, min(n, row_len))], stride
    while start < n - 1:  # a piece needs two tokens to hold one target
        spans.append((start, min(n, start + row_len)))
        start += stride
    return spans


for n in (5, 11, 40, 3000):
    assert pieces(n, 11) == data.packing.piece_spans(n, 11)
print("pieces of a 40-token document in rows of 11:", pieces(40, 11))

# %% [markdown]
# The loader reports what it did: `cropped` (always 0 now), `padded`, and the share of
# tokens that see at least 1,024 earlier tokens of their own document (the long-context
# share, at `T = 2048`). Compare two designs on the same documents (the third, random
# windows, crops nothing and gave a 43% long-context share on the GPU machine's corpus:
# docs/QUALITY.md):

# %%
packer = data.packing.BestFitPacker(lengths, 2049, seed=SEED)
for _ in range(presets.choose(PRESET, smoke=50, laptop=300, full=2000)):
    packer.plan()
print(f"pieces:          cropped 0.00, padded {packer.padded / (packer.rows * 2049):.3f}, "
      f"long-context share {packer.long_context / packer.tokens:.2f}")
whole = pack_best_fit(sample, 2049)
kept = [t for row in whole for _, t in row]
print(f"best fit + crop: cropped {1 - sum(kept) / sum(sample):.2f}, padded 0.000, "
      f"long-context share {sum(max(0, t - 1024) for t in kept) / sum(kept):.2f}")

# %% [markdown]
# ### In what order do pieces reach the buffer?
#
# One more choice hides in "a buffer of pieces": what goes in next. The obvious answer,
# the next document with all of its pieces, is a trap. Best fit takes a full-row piece
# first, so a 200,000-token file puts ~100 full rows into the buffer at once and they come
# out one after another: several consecutive batches are mostly one file. Each step then
# sees few documents, the training loss drops (the rows of one file resemble each other)
# and the model generalizes worse. On issue #12's d6 benchmark this cost 0.1 bits per
# byte: nanochat's own recipe scored 0.657 on random windows and 0.756 on rows packed
# that way. The library feeds the buffer *pieces*, in one random permutation of all the
# pieces of the corpus, so a long file's rows are spread over the whole epoch, as random
# windows are. Count the documents in each group of rows, both ways:

# %%
def documents_per_group(feed_whole_documents, lengths, row_len, rows=256, groups=4):
    """Distinct documents in each group of ``rows`` rows of a best-fit stream."""
    rng = np.random.default_rng(SEED)
    if feed_whole_documents:  # every piece of a document, one document after another
        order = [(d, s, e) for d in rng.permutation(len(lengths))
                 for s, e in pieces(int(lengths[d]), row_len)]
    else:  # every piece of the corpus, in one permutation
        every = [(d, s, e) for d in range(len(lengths)) for s, e in pieces(int(lengths[d]), row_len)]
        order = [every[i] for i in rng.permutation(len(every))]
    buffer, counts, feed = [], [], iter(order)
    for _ in range(groups):
        docs = set()
        for _ in range(rows):
            space = row_len
            while space > 0:
                while len(buffer) < 1000 and (item := next(feed, None)) is not None:
                    buffer.append(item)
                fits = [p for p in buffer if p[2] - p[1] <= space]
                if not fits:
                    break  # (the library splits a piece here; enough for counting)
                d, s, e = max(fits, key=lambda p: p[2] - p[1])  # best fit: the longest
                buffer.remove((d, s, e))
                docs.add(d)
                space -= e - s
        counts.append(len(docs))
    return counts


group_rows = presets.choose(PRESET, smoke=32, laptop=256, full=256)
counts = {}
for whole_docs in (True, False):
    counts[whole_docs] = documents_per_group(whole_docs, lengths, 1025, rows=group_rows)
    print("documents fed whole" if whole_docs else "pieces shuffled   ",
          "-> distinct documents per", group_rows, "rows:", counts[whole_docs])
library = data.packing.BestFitPacker(lengths, 1025, seed=SEED)
library_counts = [len({d for _ in range(group_rows) for d, _, _ in library.plan()})
                  for _ in range(4)]
print("the library       -> distinct documents per", group_rows, "rows:", library_counts)
assert min(library_counts) > max(counts[True]), "the library should mix documents like shuffled pieces"

# %% [markdown]
# Fed document by document, a group of rows holds few documents whenever a long file is
# passing through; shuffled pieces give nearly one document per row. The library's
# `BestFitPacker` does the second, and keeps only the buffer and a cursor in its state.
#
# One side effect to know about: best fit always takes a full-row piece first, so pieces
# shorter than a row (short files, and the last piece of a long one) wait in the buffer
# while full pieces keep arriving, so they come out later than their share of the epoch.
# The lag is small at `T = 1024` on an offline corpus of 79M GPT-2 tokens (87% of the
# short files' tokens are used by 90% of the epoch) and larger with short rows and small
# corpora; a run that stops well before the end of an epoch sees a little fewer short
# files than the corpus holds.
#
# Here is a picture of the rows the packer plans: each color is one document. A row
# starts at the start of a piece: a document's BOS, or a piece boundary inside a long
# document (then it is often one color all the way, a whole row of context). A piece
# later in the row can be the tail of a long document, with no BOS in front of it, so
# the BOS tokens alone do not tell where documents change; the packer's plan does.

# %%
picture = data.packing.BestFitPacker(lengths, SEQ_LEN + 1, seed=SEED)
owner = np.full((BATCH, SEQ_LEN + 1), -1)  # the document of each position, -1: padding
for r in range(BATCH):
    at = 0
    for d, s, e in picture.plan():  # (document, start, end) of each piece in the row
        owner[r, at:at + e - s] = d
        at += e - s
plt.figure(figsize=(9, 0.4 * BATCH + 1))
plt.imshow(np.ma.masked_less(owner, 0) % 20, cmap="tab20", aspect="auto",
           interpolation="nearest")
plt.xlabel("position in the row")
plt.ylabel("row")
plt.title("a packed batch: one color per document")
plt.show()
# The loader, `data.make_loader`, memory-maps the shards and packs rows the same way.
loader = data.make_loader(offline_folder, "train", batch_size=BATCH, seq_len=SEQ_LEN,
                          seed=SEED)
x, y = next(loader)
stats = loader.stats()
assert stats["cropped"] == 0
print("loader stats:", stats)
print(f"{(x[:, 0] == tok.bos_id).float().mean():.0%} of this batch's rows start at a "
      "document's BOS; row 0 begins:", repr(tok.decode(x[0, :40])))

# %% [markdown]
# ## Do packed documents see each other?
#
# Yes. The model's attention is causal over the whole row: a token of the second document
# in a row can attend to every token of the first one. Nothing forbids it; the BOS token
# at each document start is the signal, and the model learns that what comes before a BOS
# says little about what follows. The alternative is a **block-diagonal document mask**:
# token `i` may attend to token `j` only if `j <= i` *and* both belong to the same
# document. From the BOS positions it is two lines:

# %%
row = torch.tensor([tok.bos_id, 11, 12, 13, tok.bos_id, 21, 22, tok.bos_id, 31, 32])
doc = torch.cumsum((row == tok.bos_id).long(), dim=0)  # document number of each position
causal = torch.tril(torch.ones(len(row), len(row), dtype=torch.bool))
document_mask = causal & (doc[:, None] == doc[None, :])
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, m, title in zip(axes, (causal, document_mask), ("causal (what the model uses)",
                                                        "block-diagonal document mask")):
    ax.imshow(m, cmap="Greys", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key position")
axes[0].set_ylabel("query position")
plt.tight_layout()
plt.show()
print(f"causal: {int(causal.sum())} query-key pairs, document mask: {int(document_mask.sum())}")

# %% [markdown]
# The library's GPT uses the plain causal mask (as nanochat and nanoGPT do), so a packed
# document's predictions depend on what precedes it in the row. Check it on a small model:
# the logits of a document alone differ from the same document packed after another one.

# %%
torch.manual_seed(SEED)
small = GPT(GPTConfig(sequence_len=32, vocab_size=tok.vocab_size, n_layer=2, n_head=2,
                      n_kv_head=2, n_embd=64))
with torch.no_grad():  # give the zero-initialized output projections some weight
    for blk in small.blocks:
        blk.attn.c_proj.weight.normal_(std=0.02)
        blk.mlp.c_proj.weight.normal_(std=0.02)
    doc_a = [tok.bos_id] + tok.encode("The cat sat on the mat.")
    doc_b = [tok.bos_id] + tok.encode("def add(a, b):")
    alone = small(torch.tensor([doc_b]))[0]
    packed = small(torch.tensor([doc_a + doc_b]))[0, len(doc_a):]
print(f"max |logits alone - logits packed| = {(alone - packed).abs().max():.3f} "
      "(0 would mean the documents do not see each other)")
assert (alone - packed).abs().max() > 1e-3

# %% [markdown]
# Why not mask? A document mask changes the attention pattern of every batch, which costs
# speed (a FlexAttention block mask built per batch), and with BOS as a separator the
# gain in pretraining is expected to be small (not measured here); long documents, which
# carry the long context,
# fill whole rows on their own anyway. RoPE positions keep counting across a row too: the
# model sees relative positions only, so that is harmless.

# %% [markdown]
# ## Mixing datasets
#
# A run often mixes sources: mostly web text with some code, or chat data with a little
# pretraining text. A mixture loader draws the source of every row at random with the
# given weights (from a seeded stream, so it is reproducible and resumable). From scratch,
# that is one call to `rng.choice`:

# %%
weights = [0.8, 0.2]
draws = np.random.default_rng(SEED).choice(2, size=2000, p=weights)
print("from scratch: fraction of rows from source 0 =", (draws == 0).mean())

# %% [markdown]
# The library's mixture loader, and the empirical proportions of its rows:

# %%
mixed = data.make_loader({shakespeare: weights[0], offline_folder: weights[1]},
                         batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED)
counts = Counter()
for _ in range(presets.choose(PRESET, smoke=25, laptop=100, full=200)):
    next(mixed)
    counts.update(mixed.last_sources)
total = sum(counts.values())
print({("shakespeare", "offline")[i]: round(n / total, 3) for i, n in sorted(counts.items())})
assert abs(counts[0] / total - weights[0]) < 0.15

# %% [markdown]
# ## SFT batches: learn only the answers
#
# For chat fine-tuning the model should learn to *answer*, not to imitate the user. The
# chat template renders a conversation into ids and a **loss mask**: 1 on the assistant's
# tokens (and its closing `<|im_end|>`), 0 elsewhere. The target of position `t` is token
# `t + 1`, so it counts when the mask of token `t + 1` is 1; every other target becomes
# `-1`, which the loss ignores.
#
# **Exercise.** Write `sft_targets(ids, mask)`: a row of `T + 1` ids and its mask give the
# `T` targets.

# %%
def sft_targets(ids, mask):
    """Row of T+1 ids and its 0/1 loss mask -> (T,) targets with -1 where there is no loss."""
    raise NotImplementedError("exercise: next token where its mask is 1, else -1")


# %%
sft_targets = exercises.check("07_data_pipeline.sft_targets", sft_targets)

# %% [markdown]
# The chat sample comes from the data mirror (`task_mixture` offline: identity
# conversations, GSM8K train, MMLU dev). Without the mirror, the cell falls back to two
# conversations written here, prepared as your own chat data (a `.jsonl` file).

# %%
if paths.find_raw("chat/identity_conversations.jsonl"):
    chat = data.prepare("task_mixture", tok)
else:
    sample = paths.cache_dir("lesson07") / "chat_sample" / "chat.jsonl"
    sample.parent.mkdir(parents=True, exist_ok=True)
    convs = [[{"role": "user", "content": "What is a shard?"},
              {"role": "assistant", "content": "A file of token ids behind a small header."}],
             [{"role": "user", "content": "Why memory-map it?"},
              {"role": "assistant", "content": "So only the rows we use are read from disk."}]] * 40
    sample.write_text("".join(json.dumps(c) + "\n" for c in convs))
    chat = data.prepare(sample.parent, tok, val_fraction=0.2)
sft = data.make_loader(chat, "train", batch_size=BATCH, seq_len=SEQ_LEN * 2, seed=SEED,
                       mode="sft")
x, y = next(sft)
print("SFT stats:", sft.stats())

# %% [markdown]
# Apply your `sft_targets` to the first conversation stored in the prepared split (its ids
# and its mask), and print it with the learned tokens in [brackets]:

# %%
split = data.Split(chat, "train")
length = int(split.doc_len[0])
ids = torch.from_numpy(split.tokens[0][:length].astype(np.int64))
mask = torch.from_numpy(split.masks[0][:length].astype(np.int64))
targets = sft_targets(ids, mask)
shown = [f"[{tok.decode([int(t)])}]" if t >= 0 else tok.decode([int(i)])
         for i, t in zip(ids[1:], targets)]
print("".join(shown[:160]))

# %% [markdown]
# The loader builds every SFT row the same way: wherever a target is not `-1` it is the
# next input token, and only a minority of positions carry loss.

# %%
learned = y[:, :-1] != -1
assert ((y[:, :-1] == x[:, 1:]) | ~learned).all()
print(f"{(y != -1).float().mean():.1%} of the targets in this batch are learned")

# %% [markdown]
# ## Resuming and many GPUs
#
# A checkpoint stores the loader's position, a small JSON-safe dictionary. Loading it gives
# exactly the batch an uninterrupted run would have seen next:

# %%
a = data.make_loader(shakespeare, "train", batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED)
for _ in range(3):
    next(a)
state = json.loads(json.dumps(a.state_dict()))
expected = next(a)
b = data.make_loader(shakespeare, "train", batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED)
b.load_state_dict(state)
got = next(b)
torch.testing.assert_close(got[0], expected[0])
print("resumed batch identical; state keys:", sorted(state), "| buffer of",
      len(state["stream"]["buffer"]), "pieces")

# %% [markdown]
# With several GPUs, every rank plans the same global stream of rows and keeps only its
# own: rank `r` of `w` takes rows `r*B ... (r+1)*B - 1` of each global batch. Ranks never
# share a row, and two ranks together see exactly what one process with twice the batch
# sees:

# %%
one = data.make_loader(shakespeare, batch_size=2 * BATCH, seq_len=SEQ_LEN, seed=SEED)
ranks = [data.make_loader(shakespeare, batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED, rank=r,
                          world_size=2) for r in range(2)]
x1, _ = next(one)
parts = [next(r)[0] for r in ranks]
torch.testing.assert_close(torch.cat(parts), x1)
print("rank 0 rows + rank 1 rows == the single-process batch")

# %% [markdown]
# ## How fast is it?
#
# A single H100 training the d12 model consumes about 0.5 million tokens per second. The
# loader's work per batch is a few hundred small copies out of memory-mapped files, so it
# should be far faster than that even on a laptop CPU:

# %%
fast = data.make_loader(offline_folder, batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED)
next(fast)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < TIMING_SECONDS:
    n += next(fast)[0].numel()
rate = n / (time.perf_counter() - start)
print(f"{rate / 1e6:.1f}M tokens/s at batch {BATCH} x {SEQ_LEN} "
      f"({rate / 5e5:.0f}x what one H100 needs at d12); cropped "
      f"{fast.stats()['cropped']}, padded {fast.stats()['pad_fraction']:.3f}")

# %% [markdown]
# The other loader, `packing="windows"`, tiles the token stream into windows of `T + 1`
# tokens and serves them in a shuffled order (like the random starts at the top of this
# lesson, without repeats). It drops almost nothing (each window's first token is never a
# target), but most rows start in the middle of a document, and a window's long context
# is often the end of one file followed by the start of another.

# %%
windows = data.make_loader(offline_folder, batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED,
                           packing="windows")
x, _ = next(windows)
xb, _ = next(data.make_loader(offline_folder, batch_size=BATCH, seq_len=SEQ_LEN, seed=SEED))
for name, rows in (("bos", xb), ("windows", x)):
    print(f"{name:>7}: {(rows[:, 0] == tok.bos_id).float().mean():.0%} of rows start at a "
          "document's BOS")

# %% [markdown]
# The trainer takes either: `--packing bos` (the default) or `--packing windows`
# (pretraining and mid-training; validation always scores the same packed rows, so the two
# runs' bits per byte compare). Which one trains the better model at equal compute is a
# measurement, not a matter of taste, and it has not been made yet: `bench/bench_quality.py`
# has the jobs `project_d6_windows_s0` and `nanochat_d6_packed_s0`, each recipe fed the
# other's rows. What to expect: packed rows give more tokens a long same-document past;
# windows see every file in proportion to its length, short ones included.

# %% [markdown]
# ## What next
#
# - `python -m nanogpt_course.data prepare NAME` prepares any dataset from the command line
#   (`fineweb_edu`, `openwebtext`, `tinyshakespeare`, `task_mixture`, `offline`, or a folder
#   of your own `.txt`/`.jsonl` files); `python -m nanogpt_course.data list` shows what is
#   prepared.
# - `lessons/08_scaling_laws`: how many tokens a model of a given size should see.
# - `lessons/09_pretrain`: these loaders feeding a real training run.
