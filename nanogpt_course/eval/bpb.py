"""Validation bits per byte: the tokenizer-independent loss.

Bits per byte (bpb) = total cross-entropy in bits / total UTF-8 bytes of the predicted
tokens. Unlike the loss per token it does not depend on the tokenizer, so runs with
different vocabularies compare. Targets that are ignored (-1) or special tokens (0 bytes)
are left out of both sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable, token_bytes: torch.Tensor, *, runtime=None,
                 max_batches: int | None = None) -> float:
    """Bits per byte of ``model`` on ``(inputs, targets)`` batches ((B, T) int64 each).

    With a ``runtime`` (see :mod:`.runtime`) the sums are reduced over ranks, so every rank
    returns the same number. ``token_bytes``: (vocab_size,) bytes of each id, 0 for specials.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.float64, device=device)
    autocast = runtime.autocast() if runtime is not None else torch.autocast(
        device.type, enabled=False)
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        with autocast:
            losses = model(x, y, reduction="none")  # (B, T), 0 where y == -1
        valid = y >= 0
        counted = torch.where(valid, token_bytes[y.clamp(min=0)], 0)
        keep = counted > 0
        nats += losses.double()[keep].sum()
        nbytes += counted.double().sum()
    if was_training:
        model.train()
    total_nats, total_bytes = (runtime.all_reduce_sum([nats.item(), nbytes.item()])
                               if runtime is not None else (nats.item(), nbytes.item()))
    if total_bytes == 0:
        return float("nan")
    return total_nats / (math.log(2) * total_bytes)
