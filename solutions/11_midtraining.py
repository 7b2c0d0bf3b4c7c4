"""Worked solutions for lessons/11_midtraining."""

import math

import torch


def render_with_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """ChatML with a loss mask: 1 on what the assistant says (and its <|im_end|>), else 0."""
    start = tokenizer.encode_special("<|im_start|>")
    end = tokenizer.encode_special("<|im_end|>")
    newline = tokenizer.encode("\n")
    ids, mask = [tokenizer.bos_id], [0]
    for message in messages:
        learned = 1 if message["role"] == "assistant" else 0
        header = [start] + tokenizer.encode(message["role"] + "\n")
        body = tokenizer.encode(message["content"]) + [end]  # the model learns to stop
        ids += header + body + newline
        mask += [0] * len(header) + [learned] * len(body) + [0] * len(newline)
    return ids, mask


def assistant_bits_per_byte(losses: torch.Tensor, targets: torch.Tensor,
                            token_bytes: torch.Tensor) -> float:
    """(B, T) losses in nats and targets (-1 = not learned), (V,) bytes per id -> bits/byte."""
    nbytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)  # (B, T)
    counted = nbytes > 0  # masked targets and special tokens (0 bytes) drop out
    bits = losses.double()[counted].sum() / math.log(2)
    return float(bits / nbytes.sum()) if counted.any() else float("nan")
