"""Deciding what goes in each row: BOS-aligned best-fit packing and random windows.

Both planners produce one *global* stream of row plans that depends only on the data, the
row length and the seed: never on the rank or the number of ranks. Loaders on every rank
compute the same plans and each materializes only its own rows, so ranks never share a
row, the whole state is a few integers (plus the packing buffer), and resuming with a
different number of GPUs continues the same stream.

**Best-fit packing.** A row of ``row_len = seq_len + 1`` tokens is filled from a buffer of
whole documents (each starts with BOS): repeatedly take the *longest document that still
fits*; when none fits, either crop the shortest one to fill the row (pretraining: the cut
tail is dropped and counted as *cropped*) or pad the rest of the row (SFT: conversations
are never cut unless one alone is longer than a row). Every row therefore starts at a
document start, and no token is lost except the reported crop.

**Random windows.** The classic nanoGPT loader: the token stream cut into non-overlapping
windows of ``row_len`` at a random offset, visited in a random order each epoch.
"""

from __future__ import annotations

from bisect import bisect_right, insort

import numpy as np


def choose(keys: list[tuple[int, int]], remaining: int) -> int | None:
    """Index in sorted ``keys = [(length, doc), ...]`` of the longest doc that fits, or None."""
    i = bisect_right(keys, (remaining, float("inf"))) - 1
    return i if i >= 0 else None


def best_fit_rows(lengths, row_len: int, *, crop: bool = True) -> list[list[tuple[int, int]]]:
    """Pack documents ``0..n-1`` (all in the buffer at once) into rows of ``row_len`` tokens.

    Returns the rows, each a list of ``(doc, tokens_taken)``. With ``crop=True`` a row that
    no remaining document fits is completed by cropping the shortest one (its tail is
    dropped); with ``crop=False`` the row is left short (padded later). A document longer
    than a whole row is cropped either way. The readable reference for the lesson; the
    loaders use :class:`BestFitPacker`, which applies the same rule to a streaming buffer.
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


class BestFitPacker:
    """Streaming best-fit over a shuffled document order; ``plan()`` returns one row.

    ``doc_len``: int array [n_docs]. The document order of epoch ``e`` is a permutation
    seeded by ``(seed, e)``. ``epochs``: stop after this many passes (None = forever).
    """

    def __init__(self, doc_len: np.ndarray, row_len: int, *, seed: int = 0,
                 buffer_size: int = 1000, crop: bool = True, epochs: int | None = None):
        if len(doc_len) == 0:
            raise ValueError("no documents to pack")
        self.doc_len = np.asarray(doc_len, dtype=np.int64)
        self.row_len, self.seed, self.crop, self.epochs = row_len, seed, crop, epochs
        # never more than one epoch in the buffer, or a small dataset would hold several
        # copies of the same document at once
        self.buffer_size = max(1, min(buffer_size, len(self.doc_len)))
        self._order_epoch, self._order = -1, None
        self.load_state_dict({"epoch": 0, "cursor": 0, "buffer": [], "rows": 0,
                              "tokens": 0, "cropped": 0, "padded": 0})

    def _order_for(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.doc_len))
            self._order_epoch = epoch
        return self._order

    def _refill(self) -> None:
        while len(self.keys) < self.buffer_size:
            if self.cursor == len(self.doc_len):
                if self.epochs is not None and self.epoch + 1 >= self.epochs:
                    return
                self.epoch, self.cursor = self.epoch + 1, 0
            doc = int(self._order_for(self.epoch)[self.cursor])
            self.cursor += 1
            insort(self.keys, (int(self.doc_len[doc]), doc))

    def plan(self) -> list[tuple[int, int]] | None:
        """The next row as ``[(doc, tokens_taken), ...]``; None once ``epochs`` are used up."""
        row, remaining = [], self.row_len
        while remaining > 0:
            self._refill()
            if not self.keys:
                break
            i = choose(self.keys, remaining)
            if i is None:
                if row and not self.crop:
                    break
                i = 0
            length, doc = self.keys.pop(i)
            take = min(length, remaining)
            row.append((doc, take))
            remaining -= take
            self.cropped += length - take
        if not row:
            return None
        self.rows += 1
        self.tokens += self.row_len - remaining
        self.padded += remaining
        return row

    @property
    def progress(self) -> float:
        """Epochs consumed so far (documents drawn / documents per epoch)."""
        return self.epoch + self.cursor / len(self.doc_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "buffer": [d for _, d in self.keys],
                "rows": self.rows, "tokens": self.tokens, "cropped": self.cropped,
                "padded": self.padded}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.keys = sorted((int(self.doc_len[d]), int(d)) for d in state["buffer"])
        self.rows, self.tokens = int(state["rows"]), int(state["tokens"])
        self.cropped, self.padded = int(state["cropped"]), int(state["padded"])


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
