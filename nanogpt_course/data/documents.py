"""What every dataset source produces: documents, already assigned to ``train`` or ``val``.

The vocabulary shared by the registry (:mod:`.sources`) and the chat data (:mod:`.tasks`):
:class:`Document`, :class:`Resolved`, the :class:`Source` base class, and the helpers that
split, fingerprint and check raw records. It imports no source, so both modules can import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KINDS = ("text", "chat")


@dataclass(frozen=True)
class Document:
    """One training document: ``text`` (kind text) or ``messages`` (kind chat)."""

    key: str
    split: str  # "train" | "val"
    text: str | None = None
    messages: list | None = None


@dataclass
class Resolved:
    """A source bound to concrete raw input: what to iterate and how to recognise it."""

    name: str
    kind: str  # "text" | "chat"
    documents: Callable[[], Iterator[Document]]
    fingerprint: dict  # JSON-able description of the raw input (files, sizes, hashes, options)


def prepare_command(name: str) -> str:
    return f"python -m nanogpt_course.data prepare {name}"


# ---------------------------------------------------------------------------- helpers
def hash_split(key: str, val_fraction: float) -> str:
    """``"val"`` for a deterministic pseudo-random ``val_fraction`` of keys, else ``"train"``."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return "val" if value < val_fraction * 2**64 else "train"


def split_tail(text: str, val_fraction: float) -> tuple[str, str]:
    """``(head, tail)`` of one text: the tail is about the last ``val_fraction`` of it,
    starting at the paragraph break (else line break) nearest that point.

    ``head + tail == text``. Used for sources that are a single file, whose validation
    part must be one contiguous stretch, never pieces interleaved with training text.
    """
    if val_fraction <= 0 or not text:
        return text, ""
    target = round(len(text) * (1 - val_fraction))
    for sep in ("\n\n", "\n"):
        before = text.rfind(sep, 0, target)
        after = text.find(sep, target)
        cuts = [c + len(sep) for c in (before, after) if c >= 0 and c + len(sep) < len(text)]
        if cuts:
            cut = min(cuts, key=lambda c: abs(c - target))
            return text[:cut], text[cut:]
    return text[:target], text[target:]


def file_fingerprint(path: Path, *, hash_limit: int = 64 << 20) -> dict:
    """``{"path", "bytes", "sha256"}``; files bigger than ``hash_limit`` record the size only."""
    size = path.stat().st_size
    entry = {"path": str(path), "bytes": size}
    if size <= hash_limit:
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entry


def check_messages(messages, where: str) -> list:
    """Accept a list of messages or ``{"messages": [...]}``; raise naming ``where`` otherwise."""
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise ValueError(f"{where}: expected a conversation: a list of "
                         f"{{'role': ..., 'content': ...}} messages (or {{'messages': [...]}})")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class Source:
    """Base class: a named dataset that can be resolved to concrete raw input."""

    name = ""
    kind = "text"
    description = ""
    online = False  # whether preparing it may need the network

    def resolve(self, *, download: bool = True, **options) -> Resolved:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<source {self.name!r} ({self.kind}): {self.description}>"
