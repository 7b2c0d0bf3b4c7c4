"""What the trainer measures besides the training loss: validation bits per byte, text
samples, and the hooks for the evaluation module (CORE, ChatCORE).

Bits per byte (bpb) = total cross-entropy in bits ÷ total UTF-8 bytes of the predicted
tokens. Unlike the loss per token it does not depend on the tokenizer, so runs with
different vocabularies compare. Targets that are ignored (-1) or special tokens (0 bytes)
are left out of both sums.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Iterable

import torch

BASE_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
    "The most important thing to remember is",
)
CHAT_PROMPTS = ("Hello! Who are you?", "What is 12 plus 30?")


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


def sample_texts(model, tokenizer, *, kind: str = "base", max_new_tokens: int = 24,
                 prompts: Iterable[str] | None = None) -> list[str]:
    """Greedy continuations of a few prompts (greedy: uses no RNG, so sampling during a run
    never changes what an uninterrupted run would do next)."""
    from ..engine import generate

    was_training = model.training
    model.eval()
    out = []
    limit = model.config.sequence_len
    for prompt in prompts or (CHAT_PROMPTS if kind == "chat" else BASE_PROMPTS):
        if kind == "chat":
            ids = tokenizer.render_for_completion([{"role": "user", "content": prompt}])
            stop = [tokenizer.encode_special("<|im_end|>")]
        else:
            ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
            stop = [tokenizer.bos_id]
        ids = ids[-max(1, limit - 1):]
        new = list(generate(model, ids, max_new_tokens, temperature=0.0, stop=stop))
        new = [t for t in new if t not in stop]
        out.append(f"{prompt!r} -> {tokenizer.decode(new)!r}")
    if was_training:
        model.train()
    return out


def eval_hook(name: str):
    """The evaluation module's ``evaluate_<name>`` function, or None when it does not exist
    yet (then the trainer says so once and carries on: it never invents a score)."""
    if importlib.util.find_spec("nanogpt_course.eval") is None:
        return None
    module = importlib.import_module("nanogpt_course.eval")
    return getattr(module, f"evaluate_{name}", None)


def run_eval_hook(name: str, model, tokenizer, *, runtime, log, announced: set) -> dict:
    """Run CORE (``name="core"``) or ChatCORE (``"chatcore"``) when available.

    Calls ``nanogpt_course.eval.evaluate_<name>(model, tokenizer, device=...)`` on every
    rank; a float result or a dict's ``<name>`` / ``<name>_metric`` entry is logged. When
    the function does not exist, says so once per run (``announced`` remembers).
    """
    fn = eval_hook(name)
    label = {"core": "CORE", "chatcore": "ChatCORE"}[name]
    if fn is None:
        if name not in announced:
            announced.add(name)
            log(f"{label} evaluation arrives with the evaluation issue "
                f"(nanogpt_course.eval.evaluate_{name} not found); skipping --{name}-every")
        return {}
    was_training = model.training
    model.eval()
    try:
        result = fn(model, tokenizer, device=runtime.device)
    finally:
        if was_training:
            model.train()
    if isinstance(result, (int, float)):
        return {name: float(result)}
    if isinstance(result, dict):
        for key in (name, f"{name}_metric", "score"):
            if isinstance(result.get(key), (int, float)):
                return {name: float(result[key])}
    return {}
