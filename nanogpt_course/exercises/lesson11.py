"""Checkers for lessons/11_midtraining: the chat template with its loss mask, and bits per
byte on the assistant tokens only."""

from __future__ import annotations

import math

import torch

from . import Case, exercise


def render_with_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Reference: ``tokenizer.render_chat(messages)``: ``<|bos|>`` then, per message,
    ``<|im_start|>role\\n`` + content + ``<|im_end|>`` + ``\\n``; the mask is 1 on the
    content and ``<|im_end|>`` of assistant messages, 0 elsewhere. Two lists of length N."""
    return tokenizer.render_chat(messages)


def assistant_bits_per_byte(losses: torch.Tensor, targets: torch.Tensor,
                            token_bytes: torch.Tensor) -> float:
    """Reference: losses (B, T) in nats, targets (B, T) with -1 where not learned,
    token_bytes (V,) -> total nats / ln 2 / total UTF-8 bytes of the counted targets; a
    target counts when it is >= 0 and has at least one byte (specials have 0)."""
    counted = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)
    nats = torch.where(counted > 0, losses.double(), 0.0).sum()
    nbytes = counted.double().sum()
    return float(nats / (math.log(2) * nbytes)) if nbytes > 0 else float("nan")


def _render_cases() -> list[Case]:
    from ..tokenizer import Tokenizer

    tok = Tokenizer.gpt2()
    hello = [{"role": "user", "content": "Hello!"},
             {"role": "assistant", "content": "Hi! How can I help?"}]
    maths = [{"role": "system", "content": "Answer briefly."},
             {"role": "user", "content": "What is 2 plus 3?"},
             {"role": "assistant", "content": "5"},
             {"role": "user", "content": "And times 4?"},
             {"role": "assistant", "content": "2 plus 3 is 5, and 5 times 4 is 20.\n#### 20"}]
    return [Case("one exchange", (tok, hello)),
            Case("system + two exchanges", (tok, maths)),
            Case("user message only", (tok, hello[:1])),
            Case("unicode and an empty reply", (tok, [{"role": "user", "content": "café ☕?"},
                                                      {"role": "assistant", "content": ""}]))]


def _bpb_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    token_bytes = torch.randint(1, 5, (40,), generator=g)
    token_bytes[[0, 1]] = 0  # two special tokens
    losses = torch.rand(3, 8, generator=g) * 4
    targets = torch.randint(0, 40, (3, 8), generator=g)
    masked = targets.clone()
    masked[:, :3] = -1
    with_specials = masked.clone()
    with_specials[0, 5] = 0
    with_specials[2, 7] = 1
    return [Case("every target counts", (losses, targets, token_bytes)),
            Case("the first 3 positions masked", (losses, masked, token_bytes)),
            Case("masked + special targets", (losses, with_specials, token_bytes)),
            Case("one row", (losses[:1], masked[:1], token_bytes))]


exercise("11_midtraining.render_with_mask", render_with_mask, _render_cases, tol=0,
         hint="start with [bos] / [0]; for each message: header = [im_start] + "
              "encode(role + '\\n'), body = encode(content) + [im_end], then encode('\\n'); "
              "the mask is 1 on the body of assistant messages only")
exercise("11_midtraining.assistant_bits_per_byte", assistant_bits_per_byte, _bpb_cases,
         tol=1e-6,  # float32 sums are fine (the lesson's own check uses rtol 1e-6)
         hint="bytes = token_bytes[targets.clamp(min=0)] where targets >= 0, else 0; sum the "
              "losses where bytes > 0; divide by ln(2) and by the total bytes")
