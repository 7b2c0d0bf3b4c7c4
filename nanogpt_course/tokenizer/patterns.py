"""Pre-tokenization split patterns: the regexes that cut text into chunks before BPE.

BPE never merges across a chunk boundary, so the pattern decides what a token can be: with
these patterns a token never glues a word to the punctuation after it, and never holds a
whole number or a run of code indentation plus the next word.

- ``GPT2_PATTERN``: GPT-2's (tiktoken's ``r50k`` string, equivalent to the 2019 release but
  faster). Used by :meth:`Tokenizer.gpt2` so ids match GPT-2 exactly.
- ``GPT4_PATTERN``: GPT-4's ``cl100k`` pattern, the default for tokenizers we train. Chosen
  over GPT-2's because (1) contractions match case-insensitively (``DON'T`` splits like
  ``don't``); (2) numbers split into groups of at most three digits, so a 32k vocabulary is
  not spent on thousands of numbers; (3) newlines are kept apart from other whitespace and a
  word may carry one leading non-letter (``(x``, ``.py``), which suits the code and docs of
  the ``offline`` corpus; (4) rustbpe, our fast trainer, uses it by default.
"""

from __future__ import annotations

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

DEFAULT_PATTERN = GPT4_PATTERN

_compiled: dict[str, regex.Pattern] = {}


def split(text: str, pattern: str = DEFAULT_PATTERN) -> list[str]:
    """Cut ``text`` into the chunks BPE works on: ``split("Hello world!")`` ->
    ``["Hello", " world", "!"]``. The chunks concatenate back to ``text``."""
    if pattern not in _compiled:
        _compiled[pattern] = regex.compile(pattern)
    return _compiled[pattern].findall(text)
