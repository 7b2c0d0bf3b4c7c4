"""Worked solutions for lessons/12_chat."""

import torch


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most likely tokens until their probability reaches p.
    logits: (..., V) -> (..., V) with the dropped tokens at -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = before >= p  # the top token has before = 0, so it is always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """The probabilities a sampler draws the next token from. logits: (V,) -> (V,)."""
    if temperature == 0:  # greedy: all the mass on the most likely token
        probs = torch.zeros_like(logits)
        probs[logits.argmax()] = 1.0
        return probs
    scaled = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        scaled = top_p_filter(scaled, top_p)
    return scaled.softmax(-1)


def fit_context(tokenizer, messages: list[dict], context: int,
                max_tokens: int) -> tuple[list[int], int]:
    """Drop the oldest turns (never the system message nor the newest message) until the
    rendered prompt leaves min(max_tokens, context // 2) tokens for the reply."""
    reserve = min(max_tokens, context // 2)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = list(messages[len(system):])
    dropped = 0
    ids = tokenizer.render_for_completion(system + rest)
    while len(ids) + reserve > context:
        if len(rest) <= 1:
            raise ValueError("the newest message alone does not fit the context")
        rest.pop(0)
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] == "assistant":  # never start mid-turn
            rest.pop(0)
            dropped += 1
        ids = tokenizer.render_for_completion(system + rest)
    return ids, dropped
