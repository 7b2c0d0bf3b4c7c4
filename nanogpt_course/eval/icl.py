"""In-context evaluation: turning a language model into a multiple-choice scorer.

The DCLM "core" protocol, as karpathy/nanochat runs it, for the three task types of the
CORE bundle (the records are MosaicML llm-foundry's ``jsonl`` formats):

- ``multiple_choice`` ``{"query", "choices", "gold"}``: one prompt per choice,
  ``query + delimiter + choice``. The prompts share a prefix (the query); the *answer span*
  is every token after the longest prefix common to all choices' token sequences. The
  choice whose span has the lowest mean cross-entropy wins.
- ``schema`` ``{"context_options", "continuation", "gold"}`` (Winograd): one prompt per
  context, ``context + delimiter + continuation``. Here the prompts share a *suffix*; the
  answer span is the longest suffix common to all prompts' token sequences (the
  continuation's tokens, plus the delimiter's when they tokenize identically), and the
  context under which that span is most likely (lowest mean loss) wins.
- ``language_modeling`` ``{"context", "continuation"}``: the model must reproduce the
  continuation exactly under greedy decoding: every argmax prediction over the span equals
  the next token. The context is stripped of surrounding whitespace, and the prompt without
  the continuation is stripped too, so its tokens are a clean prefix of the full prompt.

Few-shot examples come first, each rendered with its gold answer and followed by a blank
line (``"\\n\\n"``). They are drawn with ``random.Random(1234 + index)`` from the task's
other examples (never the example itself). Every sequence starts with BOS; one longer than
the model's context keeps its *last* ``sequence_len`` tokens (left truncation).

Exact ties (e.g. the duplicated choices llm-foundry uses to pad ARC questions to four)
share the credit: a tie of k choices that includes the gold answer scores 1/k, the expected
accuracy of breaking the tie at random, so a tie never favours the first choice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
FEWSHOT_SEED = 1234


# ---------------------------------------------------------------------------- rendering
def fewshot_indices(index: int, n_examples: int, shots: int) -> list[int]:
    """Indices of the ``shots`` in-context examples for example ``index`` (never itself)."""
    if shots <= 0:
        return []
    pool = [i for i in range(n_examples) if i != index]
    return random.Random(FEWSHOT_SEED + index).sample(pool, min(shots, len(pool)))


def render_mc(item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """One prompt per choice: shots ``query + delim + gold choice + "\\n\\n"``, then the item."""
    shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
    return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """One prompt per context option, each followed by the shared continuation."""
    shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n"
                    for ex in fewshot)
    return [f"{shots}{context}{delimiter}{item['continuation']}"
            for context in item["context_options"]]


def render_lm(item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> tuple[str, str]:
    """``(prompt without the continuation, stripped; prompt with it)``."""
    shots = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n"
                    for ex in fewshot)
    stem = f"{shots}{item['context'].strip()}{delimiter}"
    return stem.strip(), stem + item["continuation"]


def render(kind: str, item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """The prompts of one example (a list of strings) for task type ``kind``."""
    if kind == "multiple_choice":
        return render_mc(item, delimiter, fewshot)
    if kind == "schema":
        return render_schema(item, delimiter, fewshot)
    if kind == "language_modeling":
        return list(render_lm(item, delimiter, fewshot))
    raise ValueError(f"unknown task type {kind!r}; expected one of {TASK_TYPES}")


# ---------------------------------------------------------------------------- answer spans
def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def common_suffix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(1, n + 1):
        if any(s[-i] != seqs[0][-i] for s in seqs):
            return i - 1
    return n


@dataclass
class Row:
    """One sequence to score: ``tokens[start:end]`` is the answer span (start >= 1)."""

    tokens: list[int]
    start: int
    end: int
    example: int  # position of the example in the task's (shuffled, cut) list
    choice: int  # choice index (0 for language modelling)


def spans(kind: str, seqs: list[list[int]]) -> list[tuple[int, int]]:
    """``(start, end)`` of the answer span of each token sequence (BOS included)."""
    if kind == "multiple_choice":
        # A choice that is a prefix of another would leave an empty span: keep >= 1 token.
        start = min(common_prefix(seqs), min(len(s) for s in seqs) - 1)
        return [(start, len(s)) for s in seqs]
    if kind == "schema":
        suffix = max(1, min(common_suffix(seqs), min(len(s) for s in seqs) - 1))
        return [(len(s) - suffix, len(s)) for s in seqs]
    if kind == "language_modeling":
        without, with_ = seqs
        # The stripped prompt is normally a token prefix of the full one; when a tokenizer
        # merges across the boundary, score from where the two first differ.
        start = min(len(without), common_prefix([without, with_]), len(with_) - 1)
        return [(start, len(with_))]
    raise ValueError(f"unknown task type {kind!r}")


def truncate_left(tokens: list[int], start: int, end: int, limit: int) -> tuple[list[int], int, int]:
    """Keep the last ``limit`` tokens; shift the span (its start stays >= 1)."""
    if len(tokens) <= limit:
        return tokens, start, end
    crop = len(tokens) - limit
    return tokens[crop:], max(1, start - crop), end - crop


def example_rows(kind: str, item: dict, index: int, data: Sequence[dict], shots: int,
                 delimiter: str, encode: Callable[[str], list[int]], bos: int,
                 limit: int) -> list[Row]:
    """Render, tokenize (BOS first), find the spans and truncate: the rows of one example."""
    fewshot = [data[i] for i in fewshot_indices(index, len(data), shots)]
    prompts = render(kind, item, delimiter, fewshot)
    seqs = [[bos] + encode(p) for p in prompts]
    found = spans(kind, seqs)
    if kind == "language_modeling":
        seqs = seqs[1:]
    rows = []
    for c, (seq, (s, e)) in enumerate(zip(seqs, found)):
        seq, s, e = truncate_left(seq, s, e, limit)
        rows.append(Row(seq, s, e, index, c))
    return rows


# ---------------------------------------------------------------------------- scoring
def _bucket(width: int, device: torch.device, limit: int | None) -> int:
    """On a GPU, pad batch widths up to a multiple of 128 (never past the context): a few
    distinct shapes instead of hundreds keeps attention kernels and caches reused."""
    if device.type != "cuda":
        return width
    padded = -(-width // 128) * 128
    return min(padded, limit) if limit else padded


@torch.no_grad()
def score_rows(model, rows: list[Row], *, pad: int, autocast=None,
               max_tokens: int = 16384) -> list[tuple[float, bool]]:
    """``(mean loss over the span, greedy match of the whole span)`` for every row.

    Rows are run in micro-batches of at most ``max_tokens`` padded tokens (right padding
    with ``pad``: causal attention never looks right). With a GPT (``model.hidden`` and
    ``model.head``), logits are computed only at the span positions, so a batch never
    materializes (B, T, vocab) logits. Other models are called as ``model(idx) -> logits``.
    """
    import contextlib

    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    out: list[tuple[float, bool]] = [(float("nan"), False)] * len(rows)
    i = 0
    limit = getattr(getattr(model, "config", None), "sequence_len", None)
    while i < len(order):
        width = _bucket(len(rows[order[i]].tokens), device, limit)
        n = max(1, min(len(order) - i, max_tokens // max(width, 1)))
        batch = [rows[j] for j in order[i:i + n]]
        idx = torch.full((len(batch), width), pad, dtype=torch.long)
        for b, r in enumerate(batch):
            idx[b, :len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
        idx = idx.to(device)
        # positions p predict token p + 1: the span [s, e) is predicted from [s-1, e-1)
        b_ix = torch.cat([torch.full((r.end - r.start,), b, dtype=torch.long)
                          for b, r in enumerate(batch)])
        p_ix = torch.cat([torch.arange(r.start - 1, r.end - 1) for r in batch])
        b_ix, p_ix = b_ix.to(device), p_ix.to(device)
        targets = idx[b_ix, p_ix + 1]
        with autocast:
            if hasattr(model, "hidden") and hasattr(model, "head"):
                logits = model.head(model.hidden(idx)[b_ix, p_ix])
            else:
                logits = model(idx)[b_ix, p_ix]
        logits = logits.float()
        losses = F.cross_entropy(logits, targets, reduction="none")
        hits = (logits.argmax(dim=-1) == targets)
        lengths = [r.end - r.start for r in batch]
        for b, (loss, hit) in enumerate(zip(losses.split(lengths), hits.split(lengths))):
            out[order[i + b]] = (loss.double().mean().item(), bool(hit.all().item()))
        i += n
    return out


def example_credit(kind: str, scores: list[tuple[float, bool]], gold: int | None) -> float:
    """Credit of one example in [0, 1] from its rows' scores.

    Language modelling: 1 when the greedy prediction matched the whole span. Multiple
    choice / schema: the lowest mean loss wins; a k-way exact tie with gold in it gets 1/k.
    """
    if kind == "language_modeling":
        return 1.0 if scores[0][1] else 0.0
    losses = [s[0] for s in scores]
    best = min(losses)
    tied = [c for c, v in enumerate(losses) if v == best]
    return 1.0 / len(tied) if gold in tied else 0.0
