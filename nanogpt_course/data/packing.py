"""Deciding what goes in each row: whole documents packed best-fit, long ones continued.

Both planners produce one *global* stream of row plans that depends only on the data, the
row length and the seed: never on the rank or the number of ranks. Loaders on every rank
compute the same plans and each materializes only its own rows, so ranks never share a
row, the whole state is a few integers (plus the packing buffer), and resuming with a
different number of GPUs continues the same stream.

**Document packing** (``packing="bos"``, the default). Documents are never cut by
characters before tokenization (see :mod:`.sources`); here, after tokenization, a document
of ``n`` tokens becomes *pieces* of at most ``row_len = seq_len + 1`` tokens starting at
``0, seq_len, 2·seq_len, ...`` (consecutive pieces overlap by one token, so every token
after the document's BOS is a target exactly once). A short document is one piece that
starts with BOS; a long one is a run of full-row pieces, each a row of ``seq_len`` tokens
of uninterrupted context, plus its remainder. Rows are then filled best-fit from a
buffer of pieces drawn in a seeded random order over all pieces of the corpus (a long
document's pieces end up spread over the epoch): repeatedly take the *longest piece that
still fits* (ties broken by a seeded hash). When no piece fits the space left:

- pretraining (``split=True``): the shortest piece is split: its head fills the row, its
  tail goes back to the buffer as a new piece. Nothing is dropped and nothing is padded.
- SFT (``split=False``): the row is padded (conversations are kept whole when they fit a
  row; a longer one is continued over rows like a long document).

A piece that does not start its document carries no loss on its first token (that token
was already the last target of the previous piece). The packer counts tokens placed,
padded, cropped (always 0 now), splits, and tokens that see at least ``context`` (1,024)
earlier tokens of their own document in the row: the long-context share.

Why this design (measured on the offline corpus, docs/QUALITY.md): the old pipeline cut
documents into <= 2,000-character pieces (a median of ~800 tokens on code), so almost no
token saw long context; best-fit over whole documents that *crops* instead drops the tails
of long documents (most of the tokens of a code corpus); random windows keep everything
but start most rows mid-document. Pieces keep every token and give long documents full
rows of context. The buffer is fed pieces in a random order over the whole corpus (not
document by document), so consecutive rows and batches mix many documents.

Packed documents share a row and, with plain causal attention (what the model does), a
token *can* attend to the documents before it in the row. BOS tells the model a new
document starts, and it learns to ignore what came before; a block-diagonal document mask
would forbid it outright (lesson 07 shows both).

**Random windows** (``packing="windows"``). The classic nanoGPT loader: the token stream
cut into non-overlapping windows of ``row_len`` at a random offset, visited in a random
order each epoch.
"""

from __future__ import annotations

from bisect import bisect_right, insort

import numpy as np

CONTEXT = 1024  # the "long context" threshold of the statistics


def choose(keys: list[tuple], remaining: int) -> int | None:
    """Index in sorted ``keys = [(length, ...), ...]`` of the longest that fits, or None."""
    i = bisect_right(keys, (remaining, float("inf"))) - 1
    return i if i >= 0 else None


def best_fit_rows(lengths, row_len: int, *, crop: bool = True) -> list[list[tuple[int, int]]]:
    """The classic BOS best-fit (nanochat's loader): whole documents, tails cropped.

    Returns the rows, each a list of ``(doc, tokens_taken)``. With ``crop=True`` a row that
    no remaining document fits is completed by cropping the shortest one (its tail is
    dropped); with ``crop=False`` the row is left short (padded later). A document longer
    than a whole row is cropped either way. A readable reference for lesson 07: the
    loaders use :class:`BestFitPacker`, which keeps the tails (see the module docstring).
    """
    keys = sorted((int(n), d) for d, n in enumerate(lengths))
    rows = []
    while keys:
        row, remaining = [], row_len
        while remaining > 0 and keys:
            i = choose(keys, remaining)
            if i is None:
                if row and not crop:
                    break
                i = 0  # the shortest document: the least is cut away
            length, doc = keys.pop(i)
            take = min(length, remaining)
            row.append((doc, take))
            remaining -= take
        rows.append(row)
    return rows


def piece_spans(n: int, row_len: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of a document of ``n`` tokens cut into row-length pieces.

    Pieces start every ``row_len - 1`` tokens and overlap by one, so with
    ``targets = row[1:]`` each token after the first is a target exactly once.
    """
    stride = max(1, row_len - 1)
    spans = [(0, min(n, row_len))]
    start = stride
    while start < n - 1:
        spans.append((start, min(n, start + row_len)))
        start += stride
    return spans


def piece_counts(doc_len: np.ndarray, row_len: int) -> np.ndarray:
    """Number of :func:`piece_spans` of each document: int64 [n_docs], at least 1 each."""
    stride = max(1, row_len - 1)
    n = np.asarray(doc_len, dtype=np.int64)
    return np.maximum(1, -(-(n - 1) // stride))  # ceil((n - 1) / stride)


def tiebreak(seed: int, doc: int, start: int) -> int:
    """A seeded pseudo-random key that orders pieces of equal length (not the epoch: a
    piece keeps its key across a resume)."""
    x = (seed * 0x9E3779B1 + doc * 0x85EBCA77 + start * 0xC2B2AE3D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    return x ^ (x >> 12)


def pack_rows(lengths, row_len: int, *, seed: int = 0,
              split: bool = True) -> list[list[tuple[int, int, int]]]:
    """The packing rule with every document in the buffer at once (the readable reference).

    Returns rows of ``(doc, start, end)`` token ranges. :class:`BestFitPacker` applies the
    same rule to a streaming buffer and gives the same rows when the buffer holds all.
    """
    keys = sorted((e - s, tiebreak(seed, d, s), d, s, e)
                  for d, n in enumerate(lengths) for s, e in piece_spans(int(n), row_len))
    rows = []
    while keys:
        row, remaining = [], row_len
        while remaining > 0 and keys:
            i = choose(keys, remaining)
            if i is None:  # nothing fits: split the shortest piece, or pad (SFT)
                if not split or remaining < 2:
                    break
                _, _, d, s, e = keys.pop(0)
                row.append((d, s, s + remaining))
                s = s + remaining - 1
                insort(keys, (e - s, tiebreak(seed, d, s), d, s, e))
                break
            _, _, d, s, e = keys.pop(i)
            row.append((d, s, e))
            remaining -= e - s
        rows.append(row)
    return rows


class BestFitPacker:
    """Streaming document packing (see the module docstring); ``plan()`` returns one row.

    ``doc_len``: int array [n_docs]. The buffer is fed *pieces*, not documents: epoch
    ``e`` visits every piece of every document in one permutation seeded by ``(seed, e)``,
    so the pieces of a long document are spread over the whole epoch, as random windows
    are. (Feeding a document's pieces together let one long file fill the buffer and
    then a run of consecutive batches: on issue #12's d6 benchmark that stream cost 0.1
    bits per byte against random windows, with a lower training loss.) A new epoch starts
    once the buffer is empty, so a piece is never in the buffer twice. ``buffer_size``:
    pieces kept to choose from. ``split``: fill rows completely by splitting a piece
    (pretraining) or pad them (SFT). ``epochs``: stop after this many passes (None =
    forever). ``context``: the long-context threshold of the statistics.
    """

    def __init__(self, doc_len: np.ndarray, row_len: int, *, seed: int = 0,
                 buffer_size: int = 1000, split: bool = True, epochs: int | None = None,
                 context: int = CONTEXT):
        if len(doc_len) == 0:
            raise ValueError("no documents to pack")
        if row_len < 2:
            raise ValueError(f"row_len must be >= 2 (seq_len >= 1), got {row_len}")
        self.doc_len = np.asarray(doc_len, dtype=np.int64)
        self.row_len, self.seed, self.split, self.epochs = row_len, seed, split, epochs
        self.buffer_size, self.context = max(1, buffer_size), context
        # piece i of the corpus is piece i - first[d] of document d = searchsorted(first, i)
        self._first = np.concatenate([[0], np.cumsum(piece_counts(self.doc_len, row_len))])
        self.num_pieces = int(self._first[-1])
        self._order_epoch, self._order = -1, None
        self.load_state_dict({"order": "pieces", "epoch": 0, "cursor": 0, "buffer": [], "rows": 0,
                              "tokens": 0, "padded": 0, "splits": 0, "long_context": 0})

    def _order_for(self, epoch: int) -> np.ndarray:
        """The piece order of ``epoch``: a permutation of ``range(num_pieces)``."""
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_pieces)
            self._order_epoch = epoch
        return self._order

    def _piece(self, index: int) -> tuple[int, int, int]:
        """Corpus piece ``index`` as ``(doc, start, end)`` (see :func:`piece_spans`)."""
        doc = int(np.searchsorted(self._first, index, side="right") - 1)
        stride = max(1, self.row_len - 1)
        start = (index - int(self._first[doc])) * stride
        return doc, start, min(int(self.doc_len[doc]), start + self.row_len)

    def _insert(self, doc: int, start: int, end: int) -> None:
        insort(self.keys, (end - start, tiebreak(self.seed, doc, start), doc, start, end))

    def _refill(self) -> None:
        while len(self.keys) < self.buffer_size:
            if self.cursor == self.num_pieces:
                if self.keys or (self.epochs is not None and self.epoch + 1 >= self.epochs):
                    return  # drain this epoch's pieces before starting the next one
                self.epoch, self.cursor = self.epoch + 1, 0
            self._insert(*self._piece(int(self._order_for(self.epoch)[self.cursor])))
            self.cursor += 1

    def plan(self) -> list[tuple[int, int, int]] | None:
        """The next row as ``[(doc, start, end), ...]``; None once ``epochs`` are used up."""
        row, remaining = [], self.row_len
        while remaining > 0:
            self._refill()
            if not self.keys:
                break
            i = choose(self.keys, remaining)
            if i is None:
                if not self.split or remaining < 2 or not row:
                    break
                _, _, d, s, e = self.keys.pop(0)
                row.append((d, s, s + remaining))
                self._insert(d, s + remaining - 1, e)
                self.splits += 1
                remaining = 0
                break
            _, _, d, s, e = self.keys.pop(i)
            row.append((d, s, e))
            remaining -= e - s
        if not row:
            return None
        self.rows += 1
        self.tokens += self.row_len - remaining
        self.padded += remaining
        # a piece that starts at document offset s gives its token j a context of s+j
        # tokens of its own document only when s == 0; a continuation sees j (its row)
        self.long_context += sum(max(0, e - s - self.context) for _, s, e in row)
        return row

    @property
    def progress(self) -> float:
        """Epochs consumed so far (pieces drawn / pieces per epoch)."""
        return self.epoch + self.cursor / self.num_pieces

    def state_dict(self) -> dict:
        return {"order": "pieces", "epoch": self.epoch, "cursor": self.cursor,
                "buffer": [[d, s, e] for _, _, d, s, e in self.keys],
                "rows": self.rows, "tokens": self.tokens, "padded": self.padded,
                "splits": self.splits, "long_context": self.long_context}

    def load_state_dict(self, state: dict) -> None:
        if state["buffer"] and not isinstance(state["buffer"][0], (list, tuple)):
            raise ValueError("this loader position was saved by the old packer (whole "
                             "documents, cropped tails); it cannot continue with the new one: "
                             "start the data stream afresh (train from the weights with "
                             "--checkpoint instead of --resume)")
        if state.get("order") != "pieces":
            raise ValueError("this loader position was saved by the packer that drew whole "
                             "documents (before issue #12's fix); the new one draws pieces "
                             "in another order and cannot continue it exactly: start the "
                             "data stream afresh (train from the weights with --checkpoint "
                             "instead of --resume)")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.keys = []
        for d, s, e in state["buffer"]:
            self._insert(int(d), int(s), int(e))
        self.rows, self.tokens = int(state["rows"]), int(state["tokens"])
        self.padded = int(state["padded"])
        self.splits = int(state.get("splits", 0))
        self.long_context = int(state.get("long_context", 0))

    # the old packer's counter: nothing is cropped any more
    cropped = 0


class WindowSampler:
    """Non-overlapping windows of ``row_len`` tokens, shuffled per epoch.

    ``shard_sizes``: tokens in each shard (windows never cross a shard boundary). Each epoch
    draws one offset in ``[0, row_len)`` so the window edges move between epochs.
    ``plan()`` returns ``(shard, start)``.
    """

    def __init__(self, shard_sizes, row_len: int, *, seed: int = 0, epochs: int | None = None):
        self.sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.row_len, self.seed, self.epochs = row_len, seed, epochs
        self._epoch_cache = None
        if int((self.sizes // row_len).sum()) == 0:
            raise ValueError(f"no shard holds {row_len} tokens (seq_len + 1): use a shorter "
                             f"seq_len or more data")
        self.load_state_dict({"epoch": 0, "cursor": 0, "rows": 0})

    def _layout(self, epoch: int):
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.row_len))
            counts = np.maximum((self.sizes - offset) // self.row_len, 0)
            if counts.sum() == 0:  # every shard too short for this offset
                offset, counts = 0, self.sizes // self.row_len
            first = np.concatenate([[0], np.cumsum(counts)])
            self._epoch_cache = (epoch, offset, first, rng.permutation(int(first[-1])))
        return self._epoch_cache[1:]

    def plan(self) -> tuple[int, int] | None:
        offset, first, order = self._layout(self.epoch)
        if self.cursor == len(order):
            if self.epochs is not None and self.epoch + 1 >= self.epochs:
                return None
            self.epoch, self.cursor = self.epoch + 1, 0
            offset, first, order = self._layout(self.epoch)
        window = int(order[self.cursor])
        self.cursor += 1
        self.rows += 1
        shard = int(np.searchsorted(first, window, side="right") - 1)
        return shard, offset + (window - int(first[shard])) * self.row_len

    @property
    def progress(self) -> float:
        return self.epoch + self.cursor / max(1, len(self._layout(self.epoch)[2]))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.rows = (int(state[k]) for k in ("epoch", "cursor", "rows"))
