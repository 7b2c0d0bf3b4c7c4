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
        # merge order matters here (a greedy longest match or a leftmost-first rule fails)
        Case("lowest rank first: 'abc'", ("abc", _bytes_plus({b"bc": 256, b"ab": 257}))),
        Case("left to right: 'aaa'", ("aaa", _bytes_plus({b"aa": 256}))),
    ]


def _bytes_plus(merges: dict[bytes, int]) -> dict[bytes, int]:
    """The 256 single bytes plus ``merges`` (a hand-made vocabulary)."""
    return {bytes([b]): b for b in range(256)} | merges


def _decode_cases() -> list[Case]:
    vocab = _vocab()
    whole = bpe.encode(_TEXT, {t: i for i, t in vocab.items()})
    return [
        Case("empty", ([], vocab)),
        Case("bytes of 'hi'", ([104, 105], vocab)),
        Case("merged ids", (whole, vocab)),
        Case("half an emoji", ([240, 159], vocab)),
    ]


exercise("01_tokenizer.count_pairs", bpe.count_pairs, _pair_cases, hints=(
    "every id except the last forms a pair with the id right after it; count each pair "
    "once per position, so overlapping pairs in a run like 5 5 5 each count",
    "walk the positions 0 .. len(ids) - 2 and add 1 to the count of the tuple made of the id "
    "there and the next one; a dict with .get(pair, 0) keeps the counts",
    "zip(ids, ids[1:]) yields exactly those adjacent tuples",
))
exercise("01_tokenizer.merge", bpe.merge, _merge_cases, hints=(
    "scan from left to right, building a new list; where the pair starts, write the new id",
    "after writing the new id, jump past *both* ids of the pair, so 5 5 5 with the pair "
    "(5, 5) becomes new 5, not new new; elsewhere copy one id and move on by one",
    "use an index i and a while loop: check i + 1 < len(ids) before looking at ids[i + 1]",
))
exercise("01_tokenizer.encode", bpe.encode, _encode_cases, hints=(
    "start from the text's UTF-8 bytes as ids; merges learned earlier have lower ids and "
    "must be applied first",
    "each round, look at every adjacent pair whose joined bytes are a token in ranks and "
    "join the one with the lowest id (the leftmost one on a tie); stop when no pair is a token",
    "keep a list of byte strings; the candidate for position i is ranks.get(parts[i] + "
    "parts[i + 1]); replace parts[i:i + 2] by the joined bytes; finally map each part "
    "through ranks",
))
exercise("01_tokenizer.decode", bpe.decode, _decode_cases, hints=(
    "an id stands for a byte string: concatenate the bytes of all ids first, then turn the "
    "bytes into text once: one character may be split across two tokens",
    "bytes that are not valid UTF-8 (half an emoji) must not raise: ask the decoder to "
    "replace them with U+FFFD",
    "look each id up in vocab, join with b''.join, and decode with errors='replace'",
))
