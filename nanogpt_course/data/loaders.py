"""Loaders: prepared shards -> ``(inputs, targets)`` batches, resumable and rank-sharded.

``make_loader(prepared, split, batch_size=B, seq_len=T, rank=r, world_size=w, seed=s,
mode=...)`` returns an endless iterator of int64 tensors of shape (B, T). ``targets`` is
``inputs`` shifted left by one, with ``-1`` wherever there is no loss (padding, and in SFT
everything but the assistant's tokens). How it works:

- the shards are memory-mapped: opening is instant and only the rows used are read;
- a planner (:mod:`.packing`) decides the *global* stream of rows from the seed alone;
  batch ``k`` of rank ``r`` is global rows ``(k*w + r)*B ... (k*w + r + 1)*B - 1``, so ranks
  never share a row and ``w`` ranks see exactly what 1 rank with ``w``-step accumulation sees;
- ``state_dict()`` is small, JSON-safe and the same on every rank; ``load_state_dict()``
  makes the next batch identical to the one an uninterrupted run would have produced;
- a mixture (``prepared={"a": 0.7, "b": 0.3}``) picks the source of each global row with
  those probabilities, from a counter-based random stream (state: one integer).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import preparation as prep
from . import shards
from .packing import BestFitPacker, WindowSampler

MODES = ("pretrain", "sft")
PACKINGS = ("bos", "windows")
_MIX_BLOCK = 4096  # mixture choices are drawn in blocks of this many rows


class Split:
    """One split of a prepared folder, memory-mapped, with its document table."""

    def __init__(self, path: str | os.PathLike, split: str = "train", *, verify: bool = True):
        self.path = Path(path)
        self.meta = prep.read_meta(self.path)
        if split not in self.meta["splits"]:
            raise ValueError(f"{self.path}: no split {split!r}; splits are "
                             f"{list(self.meta['splits'])}")
        infos = self.meta["splits"][split]["shards"]
        if not infos or self.meta["splits"][split]["tokens"] == 0:
            raise ValueError(f"{self.path}: the {split!r} split is empty (too few documents "
                             f"for a {split} split); add data or prepare with a larger "
                             f"val fraction")
        self.split, self.bos_id, self.kind = split, int(self.meta["bos_id"]), self.meta["kind"]
        self.tokens = [shards.open_shard(self.path / i["file"], verify=verify) for i in infos]
        self.masks = ([shards.open_shard(self.path / i["mask"], verify=verify) for i in infos]
                      if self.kind == "chat" else None)
        lengths = [shards.read_shard(self.path / i["index"], verify=verify).astype(np.int64)
                   for i in infos]
        for tokens, lens, info in zip(self.tokens, lengths, infos):
            if int(lens.sum()) != len(tokens):
                raise shards.ShardError(f"{self.path / info['index']}: document lengths add up "
                                        f"to {int(lens.sum()):,} but the shard holds "
                                        f"{len(tokens):,} tokens; prepare the dataset again")
        self.doc_len = np.concatenate(lengths)
        self.doc_shard = np.repeat(np.arange(len(lengths), dtype=np.int32),
                                   [len(x) for x in lengths])
        self.doc_start = np.concatenate([np.cumsum(x) - x for x in lengths])

    @property
    def num_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))


class _Stream:
    """A split + a planner: produces row plans and writes planned rows into arrays."""

    def __init__(self, data: Split, row_len: int, *, mode: str, packing: str, seed: int,
                 buffer_size: int, epochs: int | None):
        self.data, self.row_len, self.mode = data, row_len, mode
        if packing == "windows":
            self.planner = WindowSampler([len(t) for t in data.tokens], row_len, seed=seed,
                                         epochs=epochs)
        else:
            self.planner = BestFitPacker(data.doc_len, row_len, seed=seed,
                                         buffer_size=buffer_size, split=(mode == "pretrain"),
                                         epochs=epochs)

    def plan(self):
        return self.planner.plan()

    def fill(self, plan, tokens: np.ndarray, valid: np.ndarray) -> None:
        """Write the planned row into ``tokens`` [row_len] and ``valid`` [row_len] (bool:
        whether this position is a target that carries loss)."""
        d = self.data
        if isinstance(plan, tuple):  # a window: (shard, start)
            shard, start = plan
            tokens[:] = d.tokens[shard][start:start + self.row_len]
            valid[:] = True
            return
        pos = 0
        for doc, first, end in plan:  # tokens first..end-1 of document doc
            shard = int(d.doc_shard[doc])
            start, take = int(d.doc_start[doc]) + first, end - first
            tokens[pos:pos + take] = d.tokens[shard][start:start + take]
            if first == 0 and tokens[pos] != d.bos_id:
                raise shards.ShardError(f"{d.path}: document {doc} does not start with BOS: "
                                        f"the index does not match the tokens; prepare again")
            if self.mode == "sft":
                valid[pos:pos + take] = d.masks[shard][start:start + take]
            else:
                valid[pos:pos + take] = True
            if first > 0:  # a continuation: its first token was the previous piece's target
                valid[pos] = False
            pos += take
        tokens[pos:] = d.bos_id  # padding: any valid id, never a target
        valid[pos:] = False

    def state_dict(self) -> dict:
        return self.planner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.planner.load_state_dict(state)

    def stats(self) -> dict:
        p = self.planner
        out = {"epoch": round(p.progress, 6), "rows": p.rows}
        if isinstance(p, BestFitPacker):
            out.update(tokens=p.tokens, cropped=0, padded=p.padded, splits=p.splits,
                       crop_fraction=0.0,
                       pad_fraction=p.padded / (p.rows * self.row_len) if p.rows else 0.0,
                       long_context_fraction=p.long_context / p.tokens if p.tokens else 0.0)
        return out


class _Mixture:
    """Several streams; each global row comes from stream ``i`` with probability ``w_i``."""

    def __init__(self, streams: list[_Stream], weights, seed: int):
        w = np.asarray(weights, dtype=np.float64)
        if len(w) != len(streams) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be non-negative and not all zero, got "
                             f"{list(weights)}")
        self.streams, self.p, self.seed, self.count = streams, w / w.sum(), seed, 0
        self._block = (-1, None)

    def plan(self):
        block, at = divmod(self.count, _MIX_BLOCK)
        if self._block[0] != block:
            rng = np.random.default_rng([self.seed, 0x6D6978, block])
            self._block = (block, rng.choice(len(self.streams), size=_MIX_BLOCK, p=self.p))
        i = int(self._block[1][at])
        self.count += 1
        row = self.streams[i].plan()
        return None if row is None else (i, row)

    def fill(self, plan, tokens, valid) -> None:
        i, row = plan
        self.streams[i].fill(row, tokens, valid)

    def state_dict(self) -> dict:
        return {"count": self.count, "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        for s, st in zip(self.streams, state["streams"], strict=True):
            s.load_state_dict(st)

    def stats(self) -> dict:
        return {"count": self.count, "weights": self.p.tolist(),
                "streams": [s.stats() for s in self.streams]}


class Loader:
    """Endless iterator of ``(inputs, targets)``; see the module docstring."""

    def __init__(self, stream, *, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, device="cpu", meta: dict | None = None,
                 max_rows: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, "
                             f"{seq_len}")
        self.stream, self.B, self.T = stream, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.meta = meta or {}
        self.max_rows = max_rows  # global rows, then padding, then the end (validation)
        self._pad_id = int(self.meta.get("bos_id", 0))
        self.batches = 0
        self.last_sources: list[int] | None = None  # mixture: the source of each row
        self._tokens = np.empty((batch_size, seq_len + 1), dtype=np.int64)
        self._valid = np.empty((batch_size, seq_len + 1), dtype=bool)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, r = self.B, self.rank
        first = self.batches * B * self.world_size  # global index of this batch's first row
        if self.max_rows is not None and first >= self.max_rows:
            raise StopIteration
        plans = []
        for g in range(first, first + B * self.world_size):  # every rank plans every row
            plan = None if self.max_rows is not None and g >= self.max_rows \
                else self.stream.plan()
            if plan is None and self.max_rows is None:
                raise StopIteration
            plans.append(plan)
        if all(plan is None for plan in plans):
            raise StopIteration
        mine = plans[r * B:(r + 1) * B]
        for b, plan in enumerate(mine):
            if plan is None:  # past the end of a finite (validation) stream: padding
                self._tokens[b] = self._pad_id
                self._valid[b] = False
            else:
                self.stream.fill(plan, self._tokens[b], self._valid[b])
        if isinstance(self.stream, _Mixture):
            self.last_sources = [None if p is None else p[0] for p in mine]
        self.batches += 1
        return self._to_device()

    def _to_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        targets_np = self._tokens[:, 1:].copy()
        targets_np[~self._valid[:, 1:]] = -1
        inputs = torch.from_numpy(self._tokens[:, :-1].copy())
        targets = torch.from_numpy(targets_np)
        if self.device.type == "cuda":
            return self._to_cuda(inputs, targets)
        if self.device.type != "cpu":
            inputs, targets = inputs.to(self.device), targets.to(self.device)
        return inputs, targets

    def _to_cuda(self, inputs: torch.Tensor, targets: torch.Tensor):
        """Copy through two reusable pinned buffers so the transfer is asynchronous; a
        buffer is refilled only after the copy that last read it has finished."""
        if not hasattr(self, "_pinned"):
            self._pinned = [(torch.empty_like(inputs).pin_memory(),
                             torch.empty_like(targets).pin_memory(), torch.cuda.Event())
                            for _ in range(2)]
            self._used = [False, False]
        slot = self.batches % 2
        pinned_x, pinned_y, done = self._pinned[slot]
        if self._used[slot]:
            done.synchronize()
        pinned_x.copy_(inputs)
        pinned_y.copy_(targets)
        x = pinned_x.to(self.device, non_blocking=True)
        y = pinned_y.to(self.device, non_blocking=True)
        done.record()
        self._used[slot] = True
        return x, y

    def state_dict(self) -> dict:
        """JSON-safe position after the last batch (identical on every rank)."""
        return {"version": 1, "batches": self.batches, "rows_per_batch": self.B * self.world_size,
                "seq_len": self.T, "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown loader state version {state.get('version')!r}")
        if state["seq_len"] != self.T:
            raise ValueError(f"loader state was saved with seq_len {state['seq_len']}, this "
                             f"loader uses {self.T}: resume with the same --seq-len")
        self.batches = int(state["batches"])
        self.stream.load_state_dict(state["stream"])

    def stats(self) -> dict:
        """Epochs consumed, rows, and for packed data the crop and padding fractions."""
        return self.stream.stats()


def _sources(prepared) -> tuple[list, list[float]]:
    if isinstance(prepared, dict):
        return list(prepared), [float(w) for w in prepared.values()]
    if isinstance(prepared, (list, tuple)) and prepared and isinstance(prepared[0], (list, tuple)):
        return [p for p, _ in prepared], [float(w) for _, w in prepared]
    return [prepared], [1.0]


def make_loader(prepared, split: str = "train", *, batch_size: int, seq_len: int,
                rank: int = 0, world_size: int = 1, seed: int = 0, mode: str = "pretrain",
                packing: str = "bos", device="cpu", buffer_size: int = 1000,
                epochs: int | None = None, verify: bool = True,
                max_rows: int | None = None) -> Loader:
    """A :class:`Loader` over one prepared folder or a weighted mixture.

    ``prepared``: a prepared folder (from :func:`~.preparation.prepare`), or ``{folder: weight}``
    / ``[(folder, weight), ...]`` for a mixture. ``mode``: ``"pretrain"`` (loss on every
    token) or ``"sft"`` (chat data; loss on assistant tokens only, rows padded instead of
    cropped). ``packing``: ``"bos"`` (whole documents packed best-fit, long ones continued
    over rows; see :mod:`.packing`) or ``"windows"`` (random windows; pretrain only).
    ``epochs``: stop after this many passes (e.g. 1 for a validation sweep); None repeats
    forever. ``verify`` checks shard checksums on open. ``max_rows``: a finite stream of
    this many *global* rows (the same rows whatever ``world_size``); a last batch that is
    not full is padded (targets -1), then iteration stops. With ``epochs`` too, the stream
    also ends (padded) when the data runs out.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if packing == "windows" and mode == "sft":
        raise ValueError("SFT rows must start at a conversation: use packing='bos'")
    folders, weights = _sources(prepared)
    streams = []
    for k, folder in enumerate(folders):
        data = Split(folder, split, verify=verify)
        if mode == "sft" and data.kind != "chat":
            raise ValueError(f"{data.path} holds {data.kind} documents without loss masks; "
                             f"SFT needs chat data (task_mixture, or .jsonl conversations)")
        streams.append(_Stream(data, seq_len + 1, mode=mode, packing=packing,
                               seed=seed + 1000 * k, buffer_size=buffer_size, epochs=epochs))
    tokenizers = {s.data.meta["tokenizer"] for s in streams}
    if len(tokenizers) > 1:
        raise ValueError(f"a mixture must share one tokenizer, got {sorted(tokenizers)}")
    stream = streams[0] if len(streams) == 1 else _Mixture(streams, weights, seed)
    return Loader(stream, batch_size=batch_size, seq_len=seq_len, rank=rank,
                  world_size=world_size, device=device, meta=streams[0].data.meta,
                  max_rows=max_rows)
