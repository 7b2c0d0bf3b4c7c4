"""ChatML rendering: conversations -> token ids and a loss mask.

Each message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` where ``<|im_start|>``
and ``<|im_end|>`` are special tokens and the role is plain text. A conversation starts
with BOS. The model learns only to *answer*: the loss mask is 1 on an assistant message's
content tokens and its closing ``<|im_end|>`` (so it learns to stop), 0 on everything else
(BOS, headers, user and system text, the newline after ``<|im_end|>``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .core import IM_END, IM_START

ROLES = ("system", "user", "assistant")


def _check(messages) -> list[dict]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {k} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {k} has role {m['role']!r}; roles are {ROLES}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {k} content must be a str, "
                            f"got {type(m['content']).__name__}")
    return list(messages)


def render_chat(tok, messages, *, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """Conversation -> ``(ids, loss_mask)``, two lists of equal length; mask values are 0/1.

    ``max_tokens`` truncates both lists (long conversations in a fixed context).
    """
    start, end = tok.encode_special(IM_START), tok.encode_special(IM_END)
    newline = tok.encode("\n")
    ids, mask = [tok.bos_id], [0]
    for m in _check(messages):
        learn = 1 if m["role"] == "assistant" else 0
        header = [start] + tok.encode(m["role"] + "\n")
        body = tok.encode(m["content"]) + [end]
        ids += header + body + newline
        mask += [0] * len(header) + [learn] * len(body) + [0] * len(newline)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_for_completion(tok, messages) -> list[int]:
    """All of ``messages`` then ``<|im_start|>assistant\\n``: the prompt from which a chat
    model generates its answer (stop at ``<|im_end|>``)."""
    ids, _ = render_chat(tok, messages)
    return ids + [tok.encode_special(IM_START)] + tok.encode("assistant\n")
