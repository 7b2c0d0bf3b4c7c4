"""Checkers for lessons/01_tokenizer: pair counts, merge, encode, decode."""

from __future__ import annotations

from ..tokenizer import bpe
from . import Case, exercise

_TEXT = "the cat sat on the mat; the hat is flat. Ünïcödé: ünïcödé! 🙂🙂"


def _ids(text: str = _TEXT) -> list[int]:
    return list(text.encode("utf-8"))


def _tiny_vocab(n_merges: int = 20) -> list[bytes]:
    """Byte strings of ids 0..255+n_merges, learned on ``_TEXT`` without splitting."""
    ids, spelled = _ids(), [bytes([b]) for b in range(256)]
    for step in range(n_merges):
        counts = bpe.count_pairs(ids)
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))
        ids = bpe.merge(ids, (a, b), 256 + step)
        spelled.append(spelled[a] + spelled[b])
    return spelled


def _ranks() -> dict[bytes, int]:
    return {t: i for i, t in enumerate(_tiny_vocab())}


def _vocab() -> dict[int, bytes]:
    return dict(enumerate(_tiny_vocab()))


def _pair_cases() -> list[Case]:
    return [
        Case("empty", ([],)),
        Case("one id", ([7],)),
        Case("[1, 2, 1, 2]", ([1, 2, 1, 2],)),
        Case("overlap [5, 5, 5]", ([5, 5, 5],)),
        Case("sentence bytes", (_ids(),)),
    ]


def _merge_cases() -> list[Case]:
    return [
        Case("[1, 2, 3, 1, 2]", ([1, 2, 3, 1, 2], (1, 2), 256)),
        Case("no match", ([1, 2, 3], (3, 1), 256)),
        Case("overlap [5, 5, 5]", ([5, 5, 5], (5, 5), 300)),
        Case("[5, 5, 5, 5]", ([5, 5, 5, 5], (5, 5), 300)),
        Case("pair at the end", ([9, 1, 2], (1, 2), 256)),
        Case("sentence, ' t'", (_ids(), (32, 116), 256)),
    ]


def _encode_cases() -> list[Case]:
    ranks = _ranks()
    return [
        Case("empty", ("", ranks)),
        Case("'the cat'", ("the cat", ranks)),
        Case("unseen text", ("xyz qqq", ranks)),
        Case("whole sentence", (_TEXT, ranks)),
        Case("emoji", ("🙂 the mat", ranks)),
    ]


def _decode_cases() -> list[Case]:
    vocab = _vocab()
    whole = bpe.encode(_TEXT, {t: i for i, t in vocab.items()})
    return [
        Case("empty", ([], vocab)),
        Case("bytes of 'hi'", ([104, 105], vocab)),
        Case("merged ids", (whole, vocab)),
        Case("half an emoji", ([240, 159], vocab)),
    ]


exercise("01_tokenizer.count_pairs", bpe.count_pairs, _pair_cases,
         hint="zip(ids, ids[1:]) walks the adjacent pairs; overlapping pairs each count")
exercise("01_tokenizer.merge", bpe.merge, _merge_cases,
         hint="scan left to right; after replacing a pair, skip both of its ids")
exercise("01_tokenizer.encode", bpe.encode, _encode_cases,
         hint="start from single bytes; each round join the adjacent pair whose bytes have "
              "the lowest id in ranks (leftmost on a tie); stop when no pair is in ranks")
exercise("01_tokenizer.decode", bpe.decode, _decode_cases,
         hint="b''.join(vocab[i] for i in ids).decode('utf-8', errors='replace')")
