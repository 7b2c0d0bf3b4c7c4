"""Byte-level BPE from scratch: the readable reference trainer and encoder (lesson 01).

Training, in words:

1. cut every text into chunks with a split pattern (see :mod:`.patterns`) and count how
   often each distinct chunk occurs (BPE never merges across chunks, so a chunk that occurs
   a million times is processed once, with weight one million);
2. write each chunk as its UTF-8 bytes: ids 0..255;
3. count every adjacent pair of ids, weighted by chunk frequency (overlapping pairs count:
   ``a a a`` holds the pair ``(a, a)`` twice);
4. the most frequent pair becomes a new token with the next id (256, 257, ...); **ties go to
   the smallest pair** ``(a, b)`` in numeric order, so training is deterministic and equal
   to rustbpe's;
5. replace the pair everywhere (left to right, non-overlapping), and repeat from 3 until
   enough tokens exist or no pair is left.

Encoding follows tiktoken exactly, so this code and the library agree id for id: a chunk
that is itself a token becomes that token; otherwise start from single bytes and repeatedly
join the adjacent pair whose concatenation has the *lowest* id (the earliest-learned token),
leftmost first on a tie, until no adjacent pair forms a token.

This is O(merges x corpus): fine for a lesson or a test; use :mod:`.fast` for real corpora.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from .core import TRAINED_SPECIALS, Tokenizer, TokenizerError
from .patterns import DEFAULT_PATTERN, split

Pair = tuple[int, int]


# ------------------------------------------------------------------ the lesson's building blocks
def count_pairs(ids: Sequence[int]) -> dict[Pair, int]:
    """How often each adjacent pair occurs: ``[1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1}``."""
    counts: dict[Pair, int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` by ``new_id``, scanning left to right:
    ``merge([1, 1, 1], (1, 1), 9) -> [9, 1]``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """BPE on the bytes of ``text`` (no splitting): start from single bytes, join the adjacent
    pair whose concatenation has the lowest id (leftmost on a tie), repeat."""
    return _bpe([bytes([b]) for b in text.encode("utf-8")], ranks)


def decode(ids: Sequence[int], vocab: dict[int, bytes]) -> str:
    """Ids -> text: join each id's bytes, then UTF-8 decode (invalid bytes -> U+FFFD)."""
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def _bpe(parts: list[bytes], ranks: dict[bytes, int]) -> list[int]:
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best_rank is None:  # no adjacent pair forms a token: done
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return [ranks[p] for p in parts]


# ------------------------------------------------------------------ encoder with pre-tokenization
def encode_chunk(chunk: bytes, ranks: dict[bytes, int]) -> list[int]:
    """One chunk -> ids, as tiktoken does it: a whole-chunk token wins outright."""
    if chunk in ranks:
        return [ranks[chunk]]
    return _bpe([chunk[i:i + 1] for i in range(len(chunk))], ranks)


def encode_ordinary(text: str, ranks: dict[bytes, int], pattern: str = DEFAULT_PATTERN) -> list[int]:
    """Text -> ids with regex pre-tokenization; equals ``Tokenizer.encode`` for the same
    ranks and pattern (tested against tiktoken with GPT-2's ranks)."""
    return [i for chunk in split(text, pattern) for i in encode_chunk(chunk.encode("utf-8"), ranks)]


# ------------------------------------------------------------------ training
def n_merges_for(vocab_size: int, n_specials: int) -> int:
    """Merges needed for ``vocab_size`` ids: ``vocab_size - 256 - n_specials`` (>= 0)."""
    if not isinstance(vocab_size, int) or vocab_size < 256 + n_specials:
        raise TokenizerError(
            f"vocab_size={vocab_size!r} is too small: a byte-level tokenizer needs the 256 byte "
            f"tokens plus {n_specials} special tokens, so at least {256 + n_specials} "
            f"(typical: 32768)")
    return vocab_size - 256 - n_specials


def chunk_counts(texts: Iterable[str], pattern: str = DEFAULT_PATTERN) -> Counter:
    """Distinct chunks of all ``texts`` and how often each occurs."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(split(text, pattern))
    return counts


def learn_merges(texts: Iterable[str], n_merges: int, *, pattern: str = DEFAULT_PATTERN,
                 verbose: bool = False) -> list[Pair]:
    """The merge loop. Returns the learned pairs in order; pair ``k`` made token ``256 + k``.
    Stops early when no pair is left (every chunk is a single token)."""
    counts = chunk_counts(texts, pattern)
    words = [list(chunk.encode("utf-8")) for chunk in counts]  # ids of each distinct chunk
    freqs = list(counts.values())
    merges: list[Pair] = []
    for step in range(n_merges):
        pair_counts: Counter = Counter()
        for ids, freq in zip(words, freqs):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += freq
        if not pair_counts:
            break
        # most frequent first; on a tie the smallest (a, b) wins, like rustbpe
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        new_id = 256 + step
        words = [merge(ids, best, new_id) if len(ids) > 1 else ids for ids in words]
        merges.append(best)
        if verbose and (step + 1) % max(1, n_merges // 10) == 0:
            print(f"merge {step + 1}/{n_merges}: {best} -> {new_id} ({pair_counts[best]} times)")
    return merges


def ranks_from_merges(merges: Sequence[Pair]) -> list[bytes]:
    """Byte string of each id: the 256 bytes, then each merge's concatenation.

    Rarely two merges spell the same bytes (``(ab, c)`` and ``(a, bc)`` both make ``abc``
    when the chunks around them differ); tiktoken needs one id per byte string, so a repeat
    is dropped and later ids shift down by one. rustbpe's output goes through the same
    :func:`dedupe_ranks`, so both trainers still agree.
    """
    spelled = [bytes([b]) for b in range(256)]
    for a, b in merges:
        spelled.append(spelled[a] + spelled[b])
    return dedupe_ranks(spelled)


def dedupe_ranks(tokens: Sequence[bytes]) -> list[bytes]:
    """Keep the first id of each byte string (see :func:`ranks_from_merges`)."""
    seen: set[bytes] = set()
    out = []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def train_reference(texts: Iterable[str], vocab_size: int, *, pattern: str = DEFAULT_PATTERN,
                    special_tokens: Sequence[str] = TRAINED_SPECIALS,
                    verbose: bool = False) -> Tokenizer:
    """Train a tokenizer with the readable merge loop. ``vocab_size`` counts the special
    tokens (``<|bos|>``, ``<|im_start|>``, ``<|im_end|>`` by default), which get the last ids."""
    n_merges = n_merges_for(vocab_size, len(special_tokens))
    merges = learn_merges(texts, n_merges, pattern=pattern, verbose=verbose)
    return Tokenizer.from_ranks(ranks_from_merges(merges), pattern, special_tokens)
