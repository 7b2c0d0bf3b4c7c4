"""Chat with a model: terminal (``python -m nanogpt_course.chat``), web
(``python -m nanogpt_course.chat.server``) and notebook (``chat.widget.ChatUI``).

All three share :mod:`.session` (templates, context fitting, streaming). The shipped small
models live in ``nanogpt_course/models/{base,chat}/`` (each a checkpoint folder);
:func:`default_checkpoint` finds them and every front-end defaults to the chat one.
FastAPI/uvicorn and ipywidgets are imported only by the server and the widget.
"""

from __future__ import annotations

from pathlib import Path

from .session import (
    ChatModel,
    Conversation,
    PromptTooLong,
    Sampling,
    check_messages,
    fit_context,
    load_chat_model,
)

__all__ = ["MODELS_DIR", "default_checkpoint", "lesson_checkpoint", "ChatModel",
           "Conversation", "PromptTooLong", "Sampling", "check_messages", "fit_context",
           "load_chat_model"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # nanogpt_course/models
KINDS = ("base", "chat")


def default_checkpoint(kind: str = "chat") -> Path:
    """Folder of the small model shipped with the course (``"chat"`` or ``"base"``).

    Raises ``FileNotFoundError`` naming the expected path when it is not there (a checkout
    from before the models were committed): pass ``--checkpoint`` with your own run folder.
    """
    from .. import checkpoint as ck

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = MODELS_DIR / kind
    try:
        ck.resolve(path)
    except (FileNotFoundError, ck.CheckpointError) as err:
        why = "" if not path.exists() else f" ({err})"
        raise FileNotFoundError(
            f"the shipped {kind} model is not at {path}{why}; pass --checkpoint with a "
            f"checkpoint of your own (a run folder of python -m nanogpt_course.train)") from err
    return path


def lesson_checkpoint(kind: str = "chat", *, verbose: bool = True) -> Path:
    """The shipped model when present, else the cached tiny model of
    :func:`nanogpt_course.train.tiny.tiny_checkpoint` (built once, in seconds), saying so."""
    try:
        return default_checkpoint(kind)
    except FileNotFoundError:
        from ..train.tiny import tiny_checkpoint

        path = tiny_checkpoint(kind, verbose=verbose)
        if verbose:
            print(f"no shipped {kind} model in {MODELS_DIR / kind}: using the tiny cached "
                  f"{kind} model {path.name} (it babbles; the shipped one talks)")
        return path
