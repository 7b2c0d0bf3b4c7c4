"""Batch streams for the trainer.

The trainer asks a *loaders* object for three things:

- ``train(run, runtime)``: an endless iterator of ``(inputs, targets)`` (B, T) int64 for this
  rank, with ``state_dict()`` (JSON-able, the same on every rank: a *global* position) and
  ``load_state_dict(state)`` for exact resume, also on another number of ranks;
- ``val(run, runtime)``: a fresh iterator over validation batches (the same every time);
- ``val_batches(run, runtime)``: how many validation batches one evaluation takes on
  each rank;
- optionally ``epoch_tokens``: tokens in one pass over the training split (fine-tuning
  runs default to one pass).

:class:`DatasetLoaders` serves datasets through ``nanogpt_course.data`` (prepared on first
use, on rank 0 while the others wait); :class:`MemoryLoaders` serves random windows of an
in-memory token tensor (lessons, tests).

Both number micro-batches *globally*: micro-batch ``g`` of the run is the same rows however
many ranks share the work, and rank ``r`` of ``W`` takes ``g = i·W + r``. So a step of 4
micro-batches is the same data on 1 rank with accumulation 4 and on 2 ranks with 2.

Validation scores a fixed set of rows whatever the number of ranks: the first
:func:`val_row_count` global rows of the validation stream (``--eval-tokens / seq_len``,
default 10 micro-batches of one rank). The ranks split them; rows past the set in the last
batch are padding (targets -1), so 1 GPU and 8 GPUs score exactly the same tokens.
"""

from __future__ import annotations

import torch

from .config import ConfigError

DEFAULT_VAL_BATCHES = 10


def val_row_count(run) -> int:
    """Validation rows (global, independent of the world size): ``--eval-tokens`` worth, or
    by default ``DEFAULT_VAL_BATCHES`` micro-batches of one rank."""
    cfg = run.cfg
    if cfg.eval_tokens is None:
        return DEFAULT_VAL_BATCHES * cfg.device_batch_size
    return max(1, cfg.eval_tokens // cfg.seq_len)


def val_batch_count(run, runtime) -> int:
    """Validation batches per rank: enough for :func:`val_row_count` rows over all ranks."""
    per_batch = run.cfg.device_batch_size * runtime.world_size
    return -(-val_row_count(run) // per_batch)


# ---------------------------------------------------------------------------- in memory
class TokenBatches:
    """Random windows of a 1-D token tensor: micro-batch ``g`` takes ``batch_size`` windows
    of ``seq_len + 1`` tokens at offsets drawn from a generator seeded with ``(seed, g)``
    (or consecutive windows with ``sequential=True``, for validation). ``max_rows``: global
    rows ``>= max_rows`` are padding (targets -1), a fixed validation set on any world size."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, sequential: bool = False,
                 max_rows: int | None = None):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if tokens.numel() < seq_len + 2:
            raise ValueError(f"{tokens.numel()} tokens cannot fill a window of {seq_len + 1}")
        self.tokens = tokens.long()
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.sequential, self.max_rows = sequential, max_rows
        self.local = 0  # micro-batches this rank has taken

    def batch(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global micro-batch ``g``: inputs and targets (B, T), targets shifted by one."""
        B, T = self.batch_size, self.seq_len
        span = self.tokens.numel() - T - 1
        if self.sequential:
            starts = (torch.arange(B) + g * B) * T % (span + 1)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + g)
            starts = torch.randint(0, span + 1, (B,), generator=gen)
        rows = torch.stack([self.tokens[s:s + T + 1] for s in starts.tolist()])
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        if self.max_rows is not None:
            y[torch.arange(B) + g * B >= self.max_rows] = -1
        return x, y

    def __iter__(self):
        return self

    def __next__(self):
        x, y = self.batch(self.local * self.world_size + self.rank)
        self.local += 1
        return x, y

    def state_dict(self) -> dict:
        return {"consumed": self.local * self.world_size}  # global micro-batches taken

    def load_state_dict(self, state: dict) -> None:
        consumed = int(state.get("consumed", 0))
        if consumed % self.world_size:
            raise ValueError(f"cannot resume after {consumed} micro-batches on "
                             f"{self.world_size} ranks")
        self.local = consumed // self.world_size


class MemoryLoaders:
    """Loaders over in-memory 1-D token tensors (``val_tokens`` defaults to the train ones)."""

    def __init__(self, train_tokens: torch.Tensor, val_tokens: torch.Tensor | None = None):
        self.train_tokens = train_tokens
        self.val_tokens = train_tokens if val_tokens is None else val_tokens
        self.epoch_tokens = int(train_tokens.numel())

    def train(self, run, runtime) -> TokenBatches:
        cfg = run.cfg
        return TokenBatches(self.train_tokens, cfg.device_batch_size, cfg.seq_len,
                            rank=runtime.rank, world_size=runtime.world_size, seed=cfg.seed)

    def val(self, run, runtime) -> TokenBatches:
        cfg = run.cfg
        return TokenBatches(self.val_tokens, cfg.device_batch_size, cfg.seq_len,
                            rank=runtime.rank, world_size=runtime.world_size, sequential=True,
                            max_rows=val_row_count(run))

    def val_batches(self, run, runtime) -> int:
        return val_batch_count(run, runtime)


# ---------------------------------------------------------------------------- datasets
def parse_data_spec(spec: str) -> list[tuple[str, float]]:
    """``"offline"`` -> [("offline", 1.0)]; ``"offline:0.8,tinyshakespeare:0.2"`` -> a
    mixture (weights need not sum to 1)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise ConfigError("--data is empty: give a dataset name or a path")
    out = []
    for part in parts:
        name, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep and head:
            try:
                name, weight = head, float(tail)
            except ValueError:
                name, weight = part, 1.0  # a path with a colon
        if weight <= 0 and len(parts) > 1:
            raise ConfigError(f"--data {spec}: mixture weights must be > 0, got {part}")
        out.append((name, weight))
    return out


class DatasetLoaders:
    """Batch streams over prepared datasets (``--data``), for one run.

    Pretraining and mid-training learn every token (mid-training packs whole conversations
    like text, as nanochat does); ``sft`` learns only the assistant's tokens (loss masks).
    """

    def __init__(self, cfg, tokenizer, runtime):
        from .. import data

        self.parts = parse_data_spec(cfg.data)
        self.mode = "sft" if cfg.mode == "sft" else "pretrain"
        folders = self._prepare(data, tokenizer, runtime)
        self.prepared = folders[0] if len(folders) == 1 else {
            str(f): w for f, (_, w) in zip(folders, self.parts)}
        try:
            splits = [data.Split(f, "train", verify=False) for f in folders]
            probe = data.make_loader(self.prepared, "train", batch_size=1, seq_len=cfg.seq_len,
                                     mode=self.mode, verify=False)
            del probe
        except ValueError as err:
            raise ConfigError(f"--data {cfg.data}: {err}") from err
        self.epoch_tokens = sum(s.num_tokens for s in splits)

    def _prepare(self, data, tokenizer, runtime) -> list:
        """Rank 0 prepares (tokenizes) what is missing; the others wait, then open it."""
        folders, error = [], None
        if runtime.is_main:
            try:
                folders = [str(data.prepare(name, tokenizer)) for name, _ in self.parts]
            except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
                error = f"--data: {err.args[0] if isinstance(err, KeyError) else err}"
        folders, error = runtime.broadcast_object((folders, error))
        if error is not None:
            raise ConfigError(error)
        return folders

    def _loader(self, run, runtime, split: str, seed: int, **kw):
        from .. import data

        cfg = run.cfg
        return data.make_loader(self.prepared, split, batch_size=cfg.device_batch_size,
                                seq_len=cfg.seq_len, rank=runtime.rank,
                                world_size=runtime.world_size, seed=seed, mode=self.mode,
                                device=runtime.device, verify=False, **kw)

    def train(self, run, runtime):
        return self._loader(run, runtime, "train", run.cfg.seed, packing=run.cfg.packing)

    def val(self, run, runtime):
        """The first :func:`val_row_count` global rows of the validation split (seed 0, at
        most one pass): every evaluation, on any number of ranks, scores the same tokens."""
        return self._loader(run, runtime, "val", 0, epochs=1, max_rows=val_row_count(run))

    def val_batches(self, run, runtime) -> int:
        return val_batch_count(run, runtime)
