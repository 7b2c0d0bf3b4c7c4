"""Checkers for lessons/07_data_pipeline: random windows, best-fit packing, SFT targets."""

from __future__ import annotations

import torch

from ..data.bytetok import ByteTokenizer
from ..data.packing import best_fit_rows
from . import Case, exercise


def random_windows(tokens, starts, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: windows of ``seq_len + 1`` tokens at ``starts``, split into
    inputs (B, seq_len) and targets (B, seq_len) shifted by one; both int64."""
    index = torch.as_tensor(starts, dtype=torch.long)[:, None] + torch.arange(seq_len + 1)
    rows = torch.as_tensor(tokens)[index].long()
    return rows[:, :-1], rows[:, 1:]


def pack_best_fit(lengths: list[int], row_len: int) -> list[list[tuple[int, int]]]:
    """Reference: the classic best-fit packing with cropping that ``data.packing`` keeps as
    ``best_fit_rows`` (the loaders now split long documents into pieces instead)."""
    return best_fit_rows(lengths, row_len, crop=True)


def sft_targets(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference: a row of T+1 ids and its 0/1 loss mask -> targets (T,) int64, the next
    token where the mask of that next token is 1, else -1."""
    ids, mask = torch.as_tensor(ids).long(), torch.as_tensor(mask).bool()
    return torch.where(mask[1:], ids[1:], torch.full_like(ids[1:], -1))


def _window_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    random_tokens = torch.randint(0, 50257, (500,), generator=g, dtype=torch.int32)
    return [
        Case("arange, 3 windows", (torch.arange(100), [0, 10, 50], 8)),
        Case("one window at the end", (torch.arange(20), [11], 8)),
        Case("int32 tokens, batch 4", (random_tokens, [3, 100, 250, 489], 10)),
        Case("seq_len 1", (torch.arange(10) * 7, [0, 1, 2], 1)),
    ]


def _pack_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    random_lengths = torch.randint(1, 60, (40,), generator=g).tolist()
    return [
        Case("[3, 7, 5, 1] into 10", ([3, 7, 5, 1], 10)),
        Case("crop the shortest", ([8, 5, 9], 10)),
        Case("a doc longer than a row", ([25, 4, 3], 10)),
        Case("all fit exactly", ([5, 5, 5, 5], 10)),
        Case("40 random docs into 64", (random_lengths, 64)),
    ]


def _sft_cases() -> list[Case]:
    tok = ByteTokenizer()
    conv = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6!"}]
    ids, mask = tok.render_chat(conv)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    return [
        Case("two-turn chat", (ids, mask)),
        Case("first 9 tokens (no assistant yet)", (ids[:9], mask[:9])),
        Case("all ones", (torch.arange(6), torch.ones(6, dtype=torch.long))),
        Case("padding at the end", (torch.tensor([256, 5, 6, 256, 256]), torch.tensor([0, 1, 1, 0, 0]))),
    ]


exercise("07_data_pipeline.random_windows", random_windows, _window_cases,
         tol=0, hint="index = starts[:, None] + arange(seq_len + 1); inputs drop the last "
                     "column, targets drop the first")
exercise("07_data_pipeline.pack_best_fit", pack_best_fit, _pack_cases,
         tol=0, hint="keep the documents sorted by (length, index); for each row take the "
                     "longest that fits the space left, and when none fits crop the shortest")
exercise("07_data_pipeline.sft_targets", sft_targets, _sft_cases,
         tol=0, hint="targets are ids[1:]; a target counts when the mask of that *next* token "
                     "is 1: torch.where(mask[1:] == 1, ids[1:], -1)")
