"""BPE training: the readable reference trainer and rustbpe agree merge for merge; the
from-scratch encoder agrees with tiktoken; corpus cutting is safe; the CLI works."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_course.tokenizer import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    Tokenizer,
    TokenizerError,
    bpe,
    split,
)
from nanogpt_course.tokenizer.__main__ import main as cli
from nanogpt_course.tokenizer.fast import cut_pieces, iter_texts, train_fast

PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}
EMBEDDED = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
    "And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end\n"
)
# small alphabets make frequent ties, which is what the tie-breaking test needs
corpus_text = st.text(alphabet=st.sampled_from(list("ab c\n\t'1é🙂.")), max_size=120)


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> str:
    path = shared_data / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"real-data test: {path} is missing")
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- building blocks
def _naive_pairs(ids):
    return {p: sum(1 for q in zip(ids, ids[1:]) if q == p) for p in set(zip(ids, ids[1:]))}


@settings(database=None)
@given(st.lists(st.integers(0, 4), max_size=30))
def test_count_pairs_matches_naive(ids):
    assert bpe.count_pairs(ids) == _naive_pairs(ids)


@settings(database=None)
@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_merge_replaces_left_to_right(ids, a, b):
    out = bpe.merge(ids, (a, b), 99)
    # undoing the merge gives the input back, and no (a, b) is left unless produced by overlap
    undone = [x for i in out for x in ((a, b) if i == 99 else (i,))]
    assert undone == ids
    assert len(out) == len(ids) - out.count(99)
    assert bpe.merge([5, 5, 5], (5, 5), 9) == [9, 5]


def test_tie_breaking_picks_smallest_pair():
    # every pair occurs once: the first merge must be the smallest pair, (97, 98) = "ab"
    assert bpe.learn_merges(["abcd"], 1) == [(97, 98)]
    assert bpe.learn_merges(["dcba"], 1) == [(98, 97)]
    # frequency beats order: "cd" twice wins over "ab" once
    assert bpe.learn_merges(["ab", "cd", "cd"], 1) == [(99, 100)]


def test_vocab_size_too_small_is_a_clear_error():
    for train in (bpe.train_reference, train_fast):
        with pytest.raises(TokenizerError, match="at least 259"):
            train([EMBEDDED], 258)
    with pytest.raises(TokenizerError, match="at least 257"):
        bpe.train_reference([EMBEDDED], 256, special_tokens=["<|bos|>"])


# ---------------------------------------------------------------------------- trainer agreement
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_reference_and_fast_agree_on_shakespeare(shakespeare, pattern):
    sample = [shakespeare[:30_000], shakespeare[500_000:510_000]]
    ref = bpe.train_reference(sample, 259 + 200, pattern=PATTERNS[pattern])
    fast = train_fast(sample, 259 + 200, pattern=PATTERNS[pattern])
    assert ref.ranks == fast.ranks and ref.identity == fast.identity
    assert ref.vocab_size == 259 + 200


def test_reference_and_fast_agree_on_embedded_text():
    ref = bpe.train_reference([EMBEDDED] * 3, 259 + 120)
    fast = train_fast([EMBEDDED] * 3, 259 + 120)
    assert ref.ranks == fast.ranks


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(corpus_text, min_size=1, max_size=6), st.integers(0, 40),
       st.sampled_from(sorted(PATTERNS)))
def test_reference_and_fast_agree_on_random_corpora(texts, n_merges, pattern):
    ref = bpe.train_reference(texts, 259 + n_merges, pattern=PATTERNS[pattern])
    fast = train_fast(texts, 259 + n_merges, pattern=PATTERNS[pattern])
    assert ref.ranks == fast.ranks


def test_training_stops_when_no_pair_is_left():
    # documented: asking for more merges than the data supports gives a smaller vocabulary
    ref = bpe.train_reference(["aaaa"], 1000)
    fast = train_fast(["aaaa"], 1000)
    assert ref.ranks == fast.ranks == [bytes([b]) for b in range(256)] + [b"aa", b"aaaa"]
    assert ref.vocab_size == 256 + 2 + 3


def test_duplicate_spellings_are_dropped_consistently():
    # (a, bc) and (ab, c) both spell "abc"; the second spelling keeps the first id
    ranks = bpe.ranks_from_merges([(98, 99), (97, 98), (97, 256), (257, 99)])
    assert ranks[256:] == [b"bc", b"ab", b"abc"]


# ---------------------------------------------------------------------------- encoder
@pytest.fixture(scope="module")
def small_tok():
    return train_fast([EMBEDDED * 4, "abcabc aab ab bc " * 20], 259 + 150)


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list(EMBEDDED + "zé🙂\r")), max_size=80) | st.text())
def test_from_scratch_encoder_equals_tiktoken(small_tok, text):
    ranks = {t: i for i, t in enumerate(small_tok.ranks)}
    assert bpe.encode_ordinary(text, ranks, small_tok.pattern) == small_tok.encode(text)


def test_exercise_encode_and_decode(small_tok):
    ranks = {t: i for i, t in enumerate(small_tok.ranks)}
    vocab = dict(enumerate(small_tok.ranks))
    word = "question"
    ids = bpe.encode(word, ranks)
    assert bpe.decode(ids, vocab) == word
    assert ids == small_tok.encode(word)  # one chunk: no splitting needed
    assert bpe.decode([0xF0, 0x9F], vocab) == "\ufffd"


# ---------------------------------------------------------------------------- corpus cutting
@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list("ab \n\t\r.'1")), max_size=300),
       st.integers(1, 40), st.sampled_from(sorted(PATTERNS)))
def test_cut_pieces_never_changes_chunks(text, piece_chars, pattern):
    pieces = list(cut_pieces(text, piece_chars))
    assert "".join(pieces) == text
    assert [c for p in pieces for c in split(p, PATTERNS[pattern])] == split(text, PATTERNS[pattern])


def test_iter_texts_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.md").write_text("first file\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\nnot json\n")
    (tmp_path / "d.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "e.bin").write_text("ignored suffix")
    assert list(iter_texts(tmp_path)) == ["first file\n", "second file\n", "from jsonl"]
    with pytest.raises(FileNotFoundError):
        list(iter_texts(tmp_path / "missing"))


# ---------------------------------------------------------------------------- CLI
def test_cli_train_and_compare(tmp_path, capsys, shared_data):
    data = tmp_path / "data.txt"
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    data.write_text(text)
    assert cli(["train", "--data", str(data), "--vocab-size", "600",
                "--out", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "vocab size:  600" in out and "bytes/token" in out and "time:" in out
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.vocab_size == 600 and tok.bos == "<|bos|>"
    assert cli(["compare", "--tokenizer", str(tmp_path / "tok"), "--text", str(data)]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and tok.identity in out and "tokens of GPT-2" in out


def test_cli_reference_trainer_and_errors(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(EMBEDDED)
    assert cli(["train", "--data", str(data), "--vocab-size", "300", "--trainer", "reference",
                "--out", str(tmp_path / "ref")]) == 0
    assert cli(["train", "--data", str(data), "--vocab-size", "300",
                "--out", str(tmp_path / "fast")]) == 0
    assert Tokenizer.load(tmp_path / "ref") == Tokenizer.load(tmp_path / "fast")
    assert cli(["train", "--data", str(data), "--vocab-size", "100", "--out", str(tmp_path)]) == 1
    assert "too small" in capsys.readouterr().err
    assert cli(["compare", "--tokenizer", str(tmp_path / "none"), "--text", str(data)]) == 1
