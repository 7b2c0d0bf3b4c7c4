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

    With a ``runtime`` (see :mod:`nanogpt_course.train.runtime`) the sums are reduced over
    ranks, so every rank returns the same number. ``token_bytes``: (vocab_size,) bytes of
    each id, 0 for specials. The sums stay on the device: the host waits once, at the end,
    not after every batch. Which tokens are scored is the caller's choice; the trainer's
    validation stream is a fixed set of rows whatever the number of ranks
    (:func:`nanogpt_course.train.data.val_row_count`).
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
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            losses = model(x, y, reduction="none")  # (B, T), 0 where y == -1
        counted = torch.where(y >= 0, token_bytes[y.clamp(min=0)], 0)  # (B, T) bytes
        # masks, not boolean indexing: indexing would wait for the GPU on every batch
        nats += torch.where(counted > 0, losses.double(), 0.0).sum()
        nbytes += counted.double().sum()
    if was_training:
        model.train()
    total_nats, total_bytes = (runtime.all_reduce_sum([nats.item(), nbytes.item()])
                               if runtime is not None else (nats.item(), nbytes.item()))
    if total_bytes == 0:
        return float("nan")
    return total_nats / (math.log(2) * total_bytes)
