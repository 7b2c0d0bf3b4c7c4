"""One conversation with one model: what the CLI, the web server and the widget share.

A :class:`ChatModel` is a loaded model + tokenizer + what kind it is:

- a **chat** model (meta ``kind == "chat"``) is prompted with the ChatML template
  (``tokenizer.render_for_completion``) and its reply ends at ``<|im_end|>``;
- a **base** model has no roles: the user's text is a prompt it simply continues
  (``BOS + text``), and a reply ends at the next BOS (a document boundary) or after
  ``max_tokens``.

:func:`fit_context` keeps a conversation inside the model's context window by dropping the
oldest turns (a system message is kept); :class:`Conversation` holds the turns of one chat
and streams replies through :func:`nanogpt_course.engine.stream_text`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..tokenizer.chat import ROLES

__all__ = ["Sampling", "ChatModel", "Conversation", "PromptTooLong", "fit_context",
           "load_chat_model", "check_messages"]


class PromptTooLong(ValueError):
    """The newest message alone does not fit the model's context."""


@dataclass
class Sampling:
    """Sampling settings of one reply (temperature 0 = greedy)."""

    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    max_tokens: int = 256
    seed: int | None = None

    def check(self) -> Sampling:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
            raise ValueError(f"top-k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if int(self.max_tokens) != self.max_tokens or self.max_tokens < 1:
            raise ValueError(f"max-tokens must be a positive integer, got {self.max_tokens}")
        return self


@dataclass
class ChatModel:
    """A model ready to chat: ``model`` (a GPT in eval mode), ``tokenizer``, ``kind``."""

    model: object
    tokenizer: object
    kind: str = "base"
    name: str = "model"
    meta: dict = field(default_factory=dict)

    @property
    def context(self) -> int:
        return int(self.model.config.sequence_len)

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    def stop_ids(self) -> list[int]:
        """Tokens that end a reply: ``<|im_end|>`` for chat models, BOS for both."""
        stops = [self.tokenizer.bos_id]
        if self.is_chat:
            stops.append(self.tokenizer.encode_special("<|im_end|>"))
        return stops

    def info(self) -> dict:
        """What the web page and the CLI banner show about the model."""
        cfg = self.model.config
        device = next(self.model.parameters()).device
        return {"name": self.name, "kind": self.kind, "depth": cfg.n_layer,
                "width": cfg.n_embd, "parameters": self.model.num_params(),
                "context": cfg.sequence_len, "vocab_size": cfg.vocab_size,
                "tokenizer": getattr(self.tokenizer, "identity", str(self.tokenizer)),
                "step": self.meta.get("step"), "device": str(device)}

    def prompt_ids(self, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
        """Token ids to generate from, and how many old messages were dropped to fit.

        Chat models: the rendered conversation + ``<|im_start|>assistant\\n``. Base models:
        BOS + the last user message (a base model has no memory of turns), cut to its end
        when it is longer than the context.
        """
        if self.is_chat:
            return fit_context(self.tokenizer, messages, self.context, max_tokens)
        text = messages[-1]["content"] if messages else ""
        ids = self.tokenizer.encode(text)
        room = self.context - min(max_tokens, self.context // 2) - 1
        dropped = 0
        if len(ids) > room:  # a base model continues the *end* of what it was given
            ids, dropped = ids[-room:], 1
        return [self.tokenizer.bos_id] + ids, dropped

    def stream(self, ids: list[int], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces of one reply to the prompt ``ids``; stops early when ``cancel`` is set."""
        from ..engine import stream_text

        pieces = stream_text(self.model, self.tokenizer, ids, sampling.max_tokens,
                             temperature=sampling.temperature, top_k=sampling.top_k,
                             top_p=sampling.top_p, seed=sampling.seed, stop=self.stop_ids())
        try:
            for piece in pieces:
                if cancel is not None and cancel.is_set():
                    return
                yield piece
        finally:
            pieces.close()


def load_chat_model(source, *, device=None, tokenizer=None, kind: str = "base") -> ChatModel:
    """A :class:`ChatModel` from a checkpoint path (step or run folder), a loaded
    :class:`~nanogpt_course.checkpoint.Checkpoint`, a ChatModel (returned as is), or a GPT
    in memory with its ``tokenizer`` (``kind`` says whether it was chat-trained)."""
    import torch

    from .. import checkpoint as ck

    if isinstance(source, ChatModel):
        return source
    if isinstance(source, torch.nn.Module):
        if tokenizer is None:
            raise TypeError("a model in memory needs its tokenizer: pass tokenizer=...")
        if kind not in ("base", "chat"):
            raise ValueError(f"kind must be 'base' or 'chat', got {kind!r}")
        return ChatModel(source.eval(), tokenizer, kind, name=f"{type(source).__name__} "
                         "(in memory)")
    if isinstance(source, (str, Path)):
        source = ck.load(source, device=device)
    if isinstance(source, ck.Checkpoint):
        return ChatModel(source.model, source.tokenizer, source.kind,
                         name=_name(source.path), meta=source.meta)
    raise TypeError("expected a checkpoint path, a loaded Checkpoint or a ChatModel, "
                    f"got {type(source).__name__}")


def _name(path: Path) -> str:
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.name.startswith("step_") else path.name


def check_messages(messages) -> list[dict]:
    """Validate a conversation sent by a client: a non-empty list of
    ``{"role", "content"}`` dicts with known roles, ending with a user message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m \
                or "content" not in m:
            raise ValueError(f"message {k} must be an object with exactly 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {k} has role {m['role']!r}; roles are "
                             f"{', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {k}: 'content' must be a string")
        if m["role"] == "system" and k != 0:
            raise ValueError(f"message {k}: a system message may only come first")
    if messages[-1]["role"] != "user":
        raise ValueError("the last message must have role 'user' (the model answers it)")
    return messages


def fit_context(tokenizer, messages: list[dict], context: int,
                max_tokens: int) -> tuple[list[int], int]:
    """Render ``messages`` for completion within ``context`` tokens.

    Keeps room for ``min(max_tokens, context // 2)`` reply tokens; drops the oldest
    non-system messages one at a time until the prompt fits (the newest message is never
    dropped). Returns ``(ids, dropped)``; raises :class:`PromptTooLong` when even the newest
    message (with the system message) does not fit.
    """
    reserve = min(max_tokens, context // 2)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = list(messages[len(system):])
    dropped = 0
    while True:
        ids = tokenizer.render_for_completion(system + rest)
        if len(ids) + reserve <= context:
            return ids, dropped
        if len(rest) <= 1:
            raise PromptTooLong(
                f"the message is {len(ids)} tokens with the template, more than the model's "
                f"context of {context} minus {reserve} tokens kept for the reply: shorten it")
        rest.pop(0)
        # never start on an assistant turn: drop its question and answer together
        while len(rest) > 1 and rest[0]["role"] == "assistant":
            rest.pop(0)
            dropped += 1
        dropped += 1


class Conversation:
    """The turns of one chat with one :class:`ChatModel`.

    ``reply(text)`` appends the user's message, streams the answer's text pieces and,
    once the stream ends (or is cancelled), appends what was said as the assistant's turn.
    For a base model each message is continued on its own (nothing is remembered).
    """

    def __init__(self, chat_model: ChatModel, *, system: str | None = None,
                 sampling: Sampling | None = None):
        self.chat_model = chat_model
        self.system = system
        self.sampling = (sampling or Sampling()).check()
        self.messages: list[dict] = []
        self.notices: list[str] = []  # e.g. "dropped 2 old messages to fit the context"
        self.clear()

    def clear(self) -> None:
        """Start a new conversation (keeps the system message)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def turns(self) -> list[dict]:
        """The user and assistant messages so far."""
        return [m for m in self.messages if m["role"] != "system"]

    def reply(self, text: str, *, cancel: threading.Event | None = None,
              **overrides) -> Iterator[str]:
        """Stream the answer to ``text``; ``overrides`` change sampling for this reply."""
        sampling = Sampling(**{**self.sampling.__dict__, **overrides}).check()
        model = self.chat_model
        self.messages.append({"role": "user", "content": text})
        try:
            ids, dropped = model.prompt_ids(self.messages, sampling.max_tokens)
        except PromptTooLong:
            self.messages.pop()
            raise
        self.notices = []
        if dropped and model.is_chat:
            self._forget(dropped)
            self.notices.append(f"dropped the {dropped} oldest message(s) to fit the "
                                f"{model.context}-token context")
        elif dropped:
            self.notices.append(f"kept only the last {len(ids) - 1} tokens of the prompt "
                                f"(context {model.context})")
        pieces: list[str] = []
        try:
            for piece in model.stream(ids, sampling, cancel):
                pieces.append(piece)
                yield piece
        finally:
            answer = "".join(pieces)
            if model.is_chat:
                self.messages.append({"role": "assistant", "content": answer})
            else:
                self.messages = self.messages[:-1]  # a base model keeps no history

    def _forget(self, dropped: int) -> None:
        start = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        del self.messages[start:start + dropped]
