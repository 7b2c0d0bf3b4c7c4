"""Checkers for lessons/12_chat: nucleus filtering, the distribution a sampler draws from,
and fitting a conversation into the context window."""

from __future__ import annotations

import torch

from ..chat.session import fit_context as _fit_context
from ..engine import top_k_filter
from ..engine import top_p_filter as _top_p_filter
from . import Case, exercise


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Reference: keep the smallest set of most likely tokens whose probability reaches
    ``p`` (at least the top one); the rest become -inf. (..., V) -> (..., V)."""
    return _top_p_filter(logits, p)


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """Reference: the probabilities the sampler draws from: logits / temperature, then top-k,
    then top-p, then softmax. (V,) -> (V,); temperature 0 = all mass on the argmax."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    scaled = logits.float() / temperature
    if top_k is not None:
        scaled = top_k_filter(scaled, top_k)
    if top_p is not None and top_p < 1.0:
        scaled = _top_p_filter(scaled, top_p)
    return scaled.softmax(-1)


def fit_context(tokenizer, messages: list[dict], context: int,
                max_tokens: int) -> tuple[list[int], int]:
    """Reference: ``nanogpt_course.chat.fit_context`` (drop the oldest turns, keep the
    system message, leave ``min(max_tokens, context // 2)`` tokens for the reply)."""
    return _fit_context(tokenizer, messages, context, max_tokens)


def _compare_filtered(got, expected) -> float:
    """Max difference of the kept logits; inf when a different set of tokens is kept."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return float("inf")
    kept_got, kept_exp = torch.isfinite(got), torch.isfinite(expected)
    if not torch.equal(kept_got, kept_exp):
        return float("inf")
    return float((got[kept_got].double() - expected[kept_exp].double()).abs().max())


def _logits() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    peaked = torch.randn(50, generator=g)
    peaked[7] = 8.0
    return {"flat (50)": torch.randn(50, generator=g) * 0.3, "peaked (50)": peaked,
            "batch 3x20": torch.randn(3, 20, generator=g) * 2}


def _top_p_cases() -> list[Case]:
    cases = []
    for name, logits in _logits().items():
        for p in (0.1, 0.5, 0.9, 1.0):
            cases.append(Case(f"{name}, p={p}", (logits, p)))
    return cases


def _distribution_cases() -> list[Case]:
    logits = _logits()
    flat, peaked = logits["flat (50)"], logits["peaked (50)"]
    return [Case("T=1", (flat, 1.0)), Case("T=0.5", (flat, 0.5)), Case("T=2", (peaked, 2.0)),
            Case("T=0 (greedy)", (flat, 0.0)), Case("T=1, top-k 5", (flat, 1.0, 5)),
            Case("T=0.7, top-p 0.5", (flat, 0.7, None, 0.5)),
            Case("T=1.5, top-k 10, top-p 0.8", (peaked, 1.5, 10, 0.8))]


def _fit_cases() -> list[Case]:
    from ..tokenizer import Tokenizer

    tok = Tokenizer.gpt2()
    system = {"role": "system", "content": "You are brief."}
    turns = []
    for k in range(6):
        turns += [{"role": "user", "content": f"Tell me fact number {k}."},
                  {"role": "assistant", "content": f"Fact {k}: water is wet, {k} times over."}]
    last = {"role": "user", "content": "And one more?"}
    return [Case("everything fits", (tok, [system] + turns[:2] + [last], 512, 64)),
            Case("drop old turns", (tok, turns + [last], 128, 32)),
            Case("keep the system message", (tok, [system] + turns + [last], 96, 32)),
            Case("reply budget is capped at half", (tok, turns + [last], 200, 1000)),
            # exactly full: prompt + reply budget == context still fits (nothing dropped)
            Case("exactly full", (tok, [system] + turns[:2] + [last],
                                  len(tok.render_for_completion([system] + turns[:2] + [last]))
                                  + 32, 32))]


exercise("12_chat.top_p_filter", top_p_filter, _top_p_cases, tol=0.0, compare=_compare_filtered,
         hint="sort descending, softmax, cumulative sum; drop a token when the mass of the "
              "tokens strictly before it already reaches p; scatter the mask back")
exercise("12_chat.sampling_distribution", sampling_distribution, _distribution_cases, tol=1e-6,
         hint="divide by the temperature first, then top-k, then top-p, then softmax; "
              "temperature 0 is a one-hot on the argmax")
exercise("12_chat.fit_context", fit_context, _fit_cases, tol=0.0,
         hint="render with tokenizer.render_for_completion; while len(ids) + reserve > context, "
              "pop the oldest non-system message (and a following assistant message with it)")
