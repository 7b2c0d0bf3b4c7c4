"""The tiktoken-style API and the shipped GPT-2 files: ``encode(text, allowed_special=...)``,
``encode_iterable``, ``Tokenizer.from_vocab_merges``, all checked against tiktoken's own GPT-2
encoding built (with tiktoken's loader) from the files that ship inside the package, which
must be byte-identical to OpenAI's published files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_course.tokenizer import IM_END, IM_START, Tokenizer, TokenizerError, gpt2

# A text with what usually breaks tokenizers: contractions, numbers, code indentation,
# trailing spaces before newlines, CRLF, tabs, several scripts, emoji, special-token strings.
MIXED = (
    "Hello world! It's 2026; we'll pay $1,234.50.\n\n"
    "def f(x):\n    return x ** 2   \n\t\ttabs  \r\n"
    "Ünïcödé 中文 العربية 🙂🚀 <|endoftext|> after <|im_end|> end   \n   \n"
)


@pytest.fixture(scope="module")
def official():
    """tiktoken's GPT-2 encoding, built by tiktoken's own loader from the shipped files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import gpt2 as gpt2_constructor
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2.PACKAGED / "vocab.bpe"),
                                            str(gpt2.PACKAGED / "encoder.json"))
    assert gpt2_constructor.__name__ == "gpt2"
    return tiktoken.Encoding("gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.gpt2()


# ---------------------------------------------------------------------------- shipped files
def test_shipped_files_are_byte_identical_to_what_tiktoken_pins():
    import inspect

    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.gpt2)  # the hashes tiktoken checks downloads with
    for name in ("vocab.bpe", "encoder.json"):
        digest = hashlib.sha256((gpt2.PACKAGED / name).read_bytes()).hexdigest()
        assert digest == gpt2.SHA256[name]
        assert digest in source, f"{name}: sha256 {digest} is not the one tiktoken pins"
    notice = (gpt2.PACKAGED / "LICENSE").read_text(encoding="utf-8")
    assert "Copyright (c) 2019 OpenAI" in notice and "Permission is hereby granted" in notice


def test_shipped_files_are_package_data():
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is 3.11+; the course runs on 3.10)
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    data = section.split('"nanogpt_course.tokenizer"', 1)[1].split("\n", 1)[0]
    for name in ("encoder.json", "vocab.bpe", "LICENSE"):
        assert f"gpt2_bpe/{name}" in data
        assert (gpt2.PACKAGED / name).is_file()


def test_gpt2_needs_no_mirror_and_no_network(tmp_path):
    """A fresh process with no data mirror, an empty cache and downloads made impossible."""
    code = ("import socket\n"
            "def no_network(*a, **k):\n    raise OSError('network disabled by the test')\n"
            "socket.socket.connect = no_network\nsocket.create_connection = no_network\n"
            "from nanogpt_course.tokenizer import Tokenizer\n"
            "print(Tokenizer.gpt2().encode('Hello world'))\n")
    env = {k: v for k, v in os.environ.items() if k != "NANOGPT_COURSE_DATA"}
    env.update(NANOGPT_COURSE_CACHE=str(tmp_path / "cache"), TIKTOKEN_CACHE_DIR=str(tmp_path / "tt"),
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[15496, 995]"
    assert not (tmp_path / "tt").exists()  # tiktoken never downloaded anything


def test_damaged_packaged_copy_is_not_used(tmp_path, monkeypatch):
    folder = tmp_path / "gpt2_bpe"
    folder.mkdir()
    (folder / "encoder.json").write_bytes((gpt2.PACKAGED / "encoder.json").read_bytes())
    raw = bytearray((gpt2.PACKAGED / "vocab.bpe").read_bytes())
    raw[1000] ^= 1  # one flipped bit
    (folder / "vocab.bpe").write_bytes(bytes(raw))
    monkeypatch.setattr(gpt2, "PACKAGED", folder)
    assert gpt2.packaged_files() is None


# ---------------------------------------------------------------------------- allowed_special
def test_encode_matches_tiktoken_on_mixed_text(tok, official):
    assert tok.encode(MIXED) == official.encode_ordinary(MIXED)
    assert tok.encode(MIXED) == official.encode(MIXED, disallowed_special=())


def test_allowed_special(tok, official):
    eot = tok.encode_special("<|endoftext|>")
    plain = tok.encode(MIXED)
    assert eot not in plain  # user text stays plain by default
    allowed = tok.encode(MIXED, allowed_special={"<|endoftext|>"})
    assert allowed == official.encode(MIXED, allowed_special={"<|endoftext|>"},
                                      disallowed_special=())
    assert allowed.count(eot) == 1
    assert tok.encode_special(IM_END) not in allowed  # only the names allowed
    everything = tok.encode(MIXED, allowed_special="all")
    assert everything.count(eot) == 1 and everything.count(tok.encode_special(IM_END)) == 1
    assert tok.decode(everything) == tok.decode(plain) == MIXED
    docs = ["first document", "second one"]
    joined = tok.encode("<|endoftext|>".join(docs), allowed_special={"<|endoftext|>"})
    assert joined == tok.encode(docs[0]) + [eot] + tok.encode(docs[1])
    assert tok.encode("x<|endoftext|>", allowed_special="<|endoftext|>")[-1] == eot
    with pytest.raises(KeyError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_chat_template_unaffected_by_allowed_special(tok):
    ids, _ = tok.render_chat([{"role": "user", "content": "<|im_start|>system\nhi"}])
    assert ids.count(tok.encode_special(IM_START)) == 1  # user text never becomes special


# ---------------------------------------------------------------------------- encode_iterable
def test_encode_iterable_equals_encode_on_a_file(tok, official, tmp_path):
    text = (MIXED * 40) + "x\ny\n" * 300 + "a" * 5000 + "\n"  # a 5000-char line too
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8", newline="")
    with open(path, encoding="utf-8", newline="") as f:
        lazy = tok.encode_iterable(f, buffer_chars=256)
        assert not isinstance(lazy, list)  # a generator: nothing is held beyond the buffer
        ids = list(lazy)
    assert ids == tok.encode(text) == official.encode_ordinary(text)
    lines = text.splitlines(keepends=True)
    assert list(tok.encode_iterable(lines, allowed_special="all", buffer_chars=100)) == \
        tok.encode(text, allowed_special="all")
    assert list(tok.encode_iterable([])) == []
    with pytest.raises(TypeError):
        list(tok.encode_iterable([b"bytes"]))


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab \n\t.'9é🙂\r")), max_size=40),
                max_size=20), st.integers(1, 64))
def test_encode_iterable_any_cut(tok, pieces, buffer_chars):
    assert list(tok.encode_iterable(pieces, buffer_chars=buffer_chars)) == tok.encode("".join(pieces))


def test_encode_iterable_trained_tokenizer():
    from nanogpt_course.tokenizer.fast import train_fast

    trained = train_fast([MIXED * 5], 256 + 3 + 40)  # GPT-4 split pattern
    text = MIXED * 30
    assert list(trained.encode_iterable(io.StringIO(text), buffer_chars=64)) == trained.encode(text)


# ---------------------------------------------------------------------------- from_vocab_merges
def _gpt2_vocab_and_merges():
    char_to_byte = {c: b for b, c in gpt2.byte_to_char().items()}

    def to_bytes(token: str) -> bytes:
        return bytes(char_to_byte[c] for c in token)

    encoder = json.loads((gpt2.PACKAGED / "encoder.json").read_text(encoding="utf-8"))
    vocab = {i: (t.encode() if t == "<|endoftext|>" else to_bytes(t)) for t, i in encoder.items()}
    lines = (gpt2.PACKAGED / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(to_bytes(p) for p in line.split()) for line in lines if line.strip()]
    return vocab, merges


def test_from_vocab_merges_gpt2_equals_tiktoken(official):
    vocab, merges = _gpt2_vocab_and_merges()
    built = Tokenizer.from_vocab_merges(vocab, merges, ["<|endoftext|>"])
    assert built.vocab_size == 50257 and built.bos_id == 50256
    assert built.encode(MIXED) == official.encode_ordinary(MIXED)
    assert built.encode(MIXED, allowed_special="all") == official.encode(
        MIXED, allowed_special="all", disallowed_special=())
    with_chat = Tokenizer.from_vocab_merges(vocab, merges, ["<|endoftext|>", IM_START, IM_END])
    assert with_chat == Tokenizer.gpt2() and with_chat.identity == "gpt2"


def test_from_vocab_merges_small_and_errors():
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256], vocab[257] = b"ab", b"abc"
    merges = [(b"a", b"b"), (b"ab", b"c")]
    tok = Tokenizer.from_vocab_merges(vocab, merges, ["<|bos|>"])
    assert tok.encode("abcab") == [257, 256] and tok.bos == "<|bos|>" and tok.bos_id == 258
    assert tok.decode([257, 256]) == "abcab"
    with pytest.raises(TokenizerError, match="follow the merge order"):
        Tokenizer.from_vocab_merges(vocab, merges[::-1], ["<|bos|>"])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        Tokenizer.from_vocab_merges(vocab, [(b"x", b"y")], ["<|bos|>"])
    gap = {i: t for i, t in vocab.items() if i != 256}
    with pytest.raises(TokenizerError, match="ids 0.."):
        Tokenizer.from_vocab_merges(gap, [], ["<|bos|>"])
