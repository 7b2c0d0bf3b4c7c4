"""Tokenizer: byte-level BPE from scratch, a fast trainer, GPT-2 compatibility, ChatML.

- :class:`Tokenizer` — encode/decode with tiktoken, special tokens, chat rendering,
  ``token_bytes`` for bits per byte, ``save``/``load`` as plain JSON.
- :meth:`Tokenizer.gpt2` — GPT-2's BPE + ``<|im_start|>``/``<|im_end|>`` (the default).
- :func:`train_reference` — the readable pure-Python trainer (lesson 01).
- :func:`train_fast` — the rustbpe trainer for real corpora (same merges).
"""

from .core import (
    BOS,
    IM_END,
    IM_START,
    Tokenizer,
    TokenizerError,
    TokenizerFileError,
)
from .patterns import GPT2_PATTERN, GPT4_PATTERN, split

__all__ = [
    "BOS",
    "IM_END",
    "IM_START",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "Tokenizer",
    "TokenizerError",
    "TokenizerFileError",
    "split",
]
