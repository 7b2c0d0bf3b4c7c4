"""Fast BPE training for real corpora with rustbpe (Rust, multi-threaded).

rustbpe runs the same algorithm as :func:`.bpe.learn_merges` (weighted chunk counts, most
frequent pair first, ties to the smallest pair) but updates pair counts incrementally with
a heap instead of recounting the corpus after every merge, and splits text on all cores.
Its merges equal the reference trainer's (tested). Threads: rustbpe uses rayon, which reads
``RAYON_NUM_THREADS`` once per process (default: all cores).

Corpus reading (:func:`iter_texts`): a file or a folder of text files (sorted, so training
is deterministic). Large files are cut into pieces of about ``piece_chars`` characters,
only right after a newline that sits between two non-space characters (``x\ny``): neither
split pattern lets a chunk cross such a point, so cutting changes no chunk and no merge.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from .bpe import dedupe_ranks, n_merges_for
from .core import TRAINED_SPECIALS, Tokenizer
from .patterns import DEFAULT_PATTERN

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".jsonl", ".text", ".csv", ".tex", ".html"}


def cut_pieces(text: str, piece_chars: int = 1 << 16) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``piece_chars`` characters at safe points (after a
    newline between two non-space characters). ``"".join(pieces) == text``."""
    start = 0
    while len(text) - start > piece_chars:
        cut = start + piece_chars
        while True:
            cut = text.find("\n", cut)
            if cut < 0 or cut + 1 >= len(text):
                break
            if cut > 0 and not text[cut - 1].isspace() and not text[cut + 1].isspace():
                break
            cut += 1
        if cut < 0 or cut + 1 >= len(text):
            break
        yield text[start:cut + 1]
        start = cut + 1
    if start < len(text):
        yield text[start:]


def _file_texts(path: Path) -> Iterator[str]:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:  # binary file: skip
        return
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".jsonl":  # one JSON object per line with a "text" field
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                yield record["text"]
        return
    yield text


def iter_texts(path: str | os.PathLike, *, piece_chars: int = 1 << 16,
               suffixes: set[str] | None = None) -> Iterator[str]:
    """Texts of a file, or of every text file under a folder (by suffix, sorted), cut into
    pieces. ``.jsonl`` files contribute the ``"text"`` field of each line."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if root.is_file():
        files = [root]
    else:
        keep = TEXT_SUFFIXES if suffixes is None else suffixes
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in keep)
        if not files:
            raise FileNotFoundError(f"no text files ({', '.join(sorted(keep))}) under {root}")
    for file in files:
        for text in _file_texts(file):
            yield from cut_pieces(text, piece_chars)


class _Progress:
    """Wraps a text iterator, counting characters and printing a line every ``every`` MB."""

    def __init__(self, texts: Iterable[str], log: Callable[[str], None] | None, every: int):
        self.texts, self.log, self.every = iter(texts), log, every
        self.chars = self.docs = 0
        self.next_report = every
        self.start = time.perf_counter()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        text = next(self.texts)
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        self.chars += len(text)
        self.docs += 1
        if self.log and self.chars >= self.next_report:
            secs = time.perf_counter() - self.start
            self.log(f"read {self.chars / 1e6:.0f}M chars ({self.docs} pieces) in {secs:.1f}s")
            self.next_report += self.every
        return text


def train_fast(texts: Iterable[str], vocab_size: int, *, pattern: str = DEFAULT_PATTERN,
               special_tokens: Sequence[str] = TRAINED_SPECIALS, buffer_size: int = 8192,
               log: Callable[[str], None] | None = None,
               log_every_chars: int = 20_000_000) -> Tokenizer:
    """Train a BPE tokenizer with rustbpe. ``vocab_size`` counts the special tokens, which
    take the last ids (BOS = the first of ``special_tokens``). ``log`` (e.g. ``print``)
    receives progress lines."""
    import rustbpe

    n_merges = n_merges_for(vocab_size, len(special_tokens))
    stream = _Progress(texts, log, log_every_chars)
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(stream, 256 + n_merges, buffer_size=buffer_size, pattern=pattern)
    if log:
        log(f"learned {trainer.vocab_size - 256} merges from {stream.chars / 1e6:.1f}M chars "
            f"in {time.perf_counter() - stream.start:.1f}s")
    by_rank = sorted(trainer.get_mergeable_ranks(), key=lambda kv: kv[1])
    ranks = dedupe_ranks([bytes(t) for t, _ in by_rank])
    return Tokenizer.from_ranks(ranks, pattern, special_tokens)
