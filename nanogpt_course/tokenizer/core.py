"""The course's tokenizer: byte-level BPE ranks + a split pattern + special tokens,
encoded by tiktoken (fast, multi-threaded) and saved as one plain JSON file.

A token id is a *rank*: ids ``0 .. n_ranks-1`` are byte strings (merged in rank order), and
the special tokens (``<|bos|>`` or ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) come
right after them. Special tokens are only produced by :meth:`Tokenizer.encode_special`,
the chat renderers, or ``encode(text, allowed_special=...)`` on text you trust (tiktoken's
convention); by default user text stays plain: ``encode("<|im_end|>")`` is ordinary text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path

import tiktoken

FORMAT = "nanogpt_course.tokenizer"
VERSION = 1
FILE_NAME = "tokenizer.json"
BOS = "<|bos|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_SPECIALS = (IM_START, IM_END)
TRAINED_SPECIALS = (BOS, IM_START, IM_END)  # ids right after the merges, BOS first
# sha256 of GPT-2's ranks + pattern + specials (<|endoftext|>, <|im_start|>, <|im_end|>):
# a tokenizer with exactly this content is named "gpt2" wherever it was loaded from.
GPT2_CONTENT_SHA256 = "5a9efc78143caf3fbcd3dd7fca5c623d7e59cc456485d4ba348dcc79aef21a7b"


class TokenizerError(ValueError):
    """A tokenizer cannot be built as asked (bad vocabulary size, bad special tokens, ...)."""


class TokenizerFileError(TokenizerError):
    """A saved tokenizer file is corrupt, truncated, or not a tokenizer file at all."""


def content_sha256(ranks: Sequence[bytes], pattern: str, special_tokens: dict[str, int],
                   bos: str) -> str:
    """Hash of everything that decides the ids: same hash <=> same tokenizer."""
    h = hashlib.sha256()
    h.update(json.dumps({"pattern": pattern, "bos": bos,
                         "special_tokens": sorted(special_tokens.items(), key=lambda kv: kv[1])},
                        sort_keys=True).encode())
    for token in ranks:  # length-prefixed so b"ab"+b"c" and b"a"+b"bc" differ
        h.update(len(token).to_bytes(4, "little"))
        h.update(token)
    return h.hexdigest()


def _last_safe_cut(text: str) -> int | None:
    """Index just after the last newline of ``text`` that has a non-space character on both
    sides (``x\ny``): split patterns never let a chunk cross it. None if there is none."""
    end = len(text) - 1
    while True:
        i = text.rfind("\n", 0, end)
        if i <= 0:
            return None
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        end = i


class Tokenizer:
    """Byte-level BPE tokenizer.

    ``ranks``: byte string of each non-special id, in id order (id ``i`` is ``ranks[i]``; the
    first 256 cover every single byte). ``special_tokens``: name -> id, ids continuing right
    after the ranks. ``bos``: the name of the special token that starts every document.
    """

    def __init__(self, ranks: Sequence[bytes], pattern: str, special_tokens: dict[str, int],
                 *, bos: str, name: str = "bpe"):
        self._ranks = [bytes(t) for t in ranks]
        self.pattern = pattern
        self._special = dict(special_tokens)
        self.bos = bos
        self.name = name
        self._check()
        self._enc = tiktoken.Encoding(
            name=name,
            pat_str=pattern,
            mergeable_ranks={t: i for i, t in enumerate(self._ranks)},
            special_tokens=self._special,
            explicit_n_vocab=self.vocab_size,
        )
        self._id_to_special = {i: s for s, i in self._special.items()}

    def _check(self) -> None:
        n = len(self._ranks)
        singles = {t for t in self._ranks if len(t) == 1}
        if len(singles) != 256:
            raise TokenizerError(f"the ranks must contain all 256 single bytes, found {len(singles)}")
        if len(set(self._ranks)) != n:
            raise TokenizerError("the ranks contain the same byte string twice")
        ids = sorted(self._special.values())
        if ids != list(range(n, n + len(ids))):
            raise TokenizerError(
                f"special token ids must follow the {n} ranks contiguously "
                f"({n}..{n + len(ids) - 1}), got {ids}")
        if self.bos not in self._special:
            raise TokenizerError(f"BOS {self.bos!r} is not among the special tokens "
                                 f"{list(self._special)}")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's 50257-token BPE plus ``<|im_start|>`` (50257) and ``<|im_end|>`` (50258);
        BOS is ``<|endoftext|>`` (50256). Built offline from OpenAI's ``vocab.bpe`` and
        ``encoder.json``, which ship inside the package (sha256-checked), so no network and
        no data mirror are needed. Cached: every call returns the same object."""
        from .gpt2 import gpt2_tokenizer

        return gpt2_tokenizer()

    @classmethod
    def from_ranks(cls, ranks: Sequence[bytes], pattern: str,
                   specials: Sequence[str] = TRAINED_SPECIALS, *, name: str = "bpe") -> Tokenizer:
        """A trained tokenizer: ``ranks`` as learned, then ``specials`` numbered after them;
        the first special is BOS (``<|bos|>`` by default)."""
        if not specials:
            raise TokenizerError("a tokenizer needs at least one special token (its BOS)")
        if len(set(specials)) != len(specials):
            raise TokenizerError(f"special tokens repeat: {list(specials)}")
        ids = {s: len(ranks) + k for k, s in enumerate(specials)}
        return cls(ranks, pattern, ids, bos=specials[0], name=name)

    @classmethod
    def from_vocab_merges(cls, vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]],
                          special_tokens: Sequence[str] = (), *, pattern: str | None = None,
                          bos: str | None = None, name: str = "bpe") -> Tokenizer:
        """A tokenizer from an explicit vocabulary (id -> bytes) and merge list (pairs of
        byte strings, in the order they were learned), the form BPE trainers usually emit.

        The ids must be laid out as this library (and tiktoken) needs them: the byte-string
        tokens take ids ``0 .. n-1`` and merge ``k`` produces a token whose id grows with
        ``k`` (that is what makes "merge the lowest-id pair first" equal "apply the merges in
        order"); ``special_tokens`` either already sit in ``vocab`` right after them or are
        appended. ``pattern`` defaults to GPT-2's split pattern, ``bos`` to the first special
        token (``<|endoftext|>`` is added when there is none). Raises :class:`TokenizerError`
        when the vocabulary and the merges disagree."""
        from .patterns import GPT2_PATTERN

        vocab = {int(i): bytes(t) for i, t in vocab.items()}
        specials = list(dict.fromkeys(special_tokens)) or ["<|endoftext|>"]
        by_bytes = {t: i for i, t in vocab.items()}
        special_ids = {s: by_bytes[s.encode()] for s in specials if s.encode() in by_bytes}
        n = len(vocab) - len(special_ids)
        taken = set(special_ids.values())
        if sorted(i for i in vocab if i not in taken) != list(range(n)):
            raise TokenizerError(
                f"the vocabulary's byte-string tokens must have ids 0..{n - 1} with the special "
                f"tokens after them; renumber it (special ids found: {special_ids})")
        last = -1
        for k, (a, b) in enumerate(merges):
            merged = by_bytes.get(bytes(a) + bytes(b))
            if merged is None or bytes(a) not in by_bytes or bytes(b) not in by_bytes:
                raise TokenizerError(f"merge {k} ({bytes(a)!r}, {bytes(b)!r}): its parts or its "
                                     f"result are not in the vocabulary")
            if merged <= last:
                raise TokenizerError(f"merge {k} ({bytes(a)!r}, {bytes(b)!r}) -> id {merged} "
                                     f"does not come after the previous merge's id {last}: "
                                     f"ids must follow the merge order")
            last = merged
        ranks = [vocab[i] for i in range(n)]
        ids, next_id = {}, n
        for s in specials:  # keep the vocabulary's ids; append the missing ones in order
            if s in special_ids:
                ids[s] = special_ids[s]
        for s in specials:
            if s not in ids:
                while next_id in ids.values():
                    next_id += 1
                ids[s] = next_id
                next_id += 1
        return cls(ranks, pattern or GPT2_PATTERN, ids, bos=bos or specials[0], name=name)

    @classmethod
    def from_spec(cls, spec: str | os.PathLike | Tokenizer) -> Tokenizer:
        """``"gpt2"`` -> :meth:`gpt2`; a folder or ``tokenizer.json`` path -> :meth:`load`
        (what ``--tokenizer gpt2|PATH`` accepts). A Tokenizer is returned unchanged."""
        if isinstance(spec, Tokenizer):
            return spec
        if str(spec) == "gpt2":
            return cls.gpt2()
        return cls.load(spec)

    # ---------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids: ranks plus special tokens (the model's embedding rows needed)."""
        return len(self._ranks) + len(self._special)

    @property
    def n_ranks(self) -> int:
        """Number of byte-string tokens (256 single bytes + merges)."""
        return len(self._ranks)

    @property
    def bos_id(self) -> int:
        return self._special[self.bos]

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token name -> id (a copy)."""
        return dict(self._special)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying ``tiktoken.Encoding`` (for power use; prefer the methods here)."""
        return self._enc

    @property
    def ranks(self) -> list[bytes]:
        """Byte string of each non-special id (a copy): ``ranks[i]`` is what id ``i`` means."""
        return list(self._ranks)

    @cached_property
    def sha256(self) -> str:
        return content_sha256(self._ranks, self.pattern, self._special, self.bos)

    @cached_property
    def identity(self) -> str:
        """Short stable name for cache folders: ``"gpt2"`` or ``"bpe-32768-1a2b3c4d"``."""
        if self.sha256 == GPT2_CONTENT_SHA256:
            return "gpt2"
        return f"bpe-{self.vocab_size}-{self.sha256[:8]}"

    @cached_property
    def token_bytes(self):
        """``torch.int32`` tensor ``[vocab_size]``: UTF-8 byte length of each id, 0 for special
        tokens. Bits per byte = sum of losses / ln 2 / sum of ``token_bytes[targets]``."""
        import torch

        lengths = [len(t) for t in self._ranks] + [0] * len(self._special)
        return torch.tensor(lengths, dtype=torch.int32)

    # ---------------------------------------------------------------- encode / decode
    def _allowed(self, allowed_special) -> set[str]:
        if allowed_special == "all":
            return set(self._special)
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        allowed = set(allowed_special or ())
        unknown = allowed - set(self._special)
        if unknown:
            raise KeyError(f"allowed_special names {sorted(unknown)}, which are not special "
                           f"tokens of this tokenizer ({list(self._special)})")
        return allowed

    def encode(self, text: str, *, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Text -> ids. By default special-token strings in ``text`` are ordinary text (user
        text can never inject ``<|im_end|>``). ``allowed_special`` (a set of names, or
        ``"all"``) turns those names into their special ids, for text you trust, e.g.
        documents joined with ``<|endoftext|>``; other special names stay plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._enc.encode_ordinary(text)
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_iterable(self, texts: Iterable[str], *, allowed_special: Iterable[str] | str = (),
                        buffer_chars: int = 1 << 16) -> Iterator[int]:
        """Ids of the concatenation of ``texts`` (e.g. an open file, line by line), yielded
        lazily: memory stays at about ``buffer_chars`` characters however long the input.

        Gives exactly ``encode("".join(texts))``: text is encoded in pieces cut only right
        after a newline between two non-space characters (``x\ny``), a point no chunk of
        the GPT-2 or GPT-4 split pattern crosses (see :func:`.fast.cut_pieces`)."""
        allowed = self._allowed(allowed_special)
        buffer: list[str] = []
        size = 0
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode_iterable expects str items, got {type(text).__name__}")
            buffer.append(text)
            size += len(text)
            if size < buffer_chars:
                continue
            joined = "".join(buffer)
            cut = _last_safe_cut(joined)
            if cut is None:  # no safe point yet (one huge line): keep reading
                buffer, size = [joined], len(joined)
                continue
            yield from self.encode(joined[:cut], allowed_special=allowed)
            rest = joined[cut:]
            buffer, size = [rest], len(rest)
        tail = "".join(buffer)
        if tail:
            yield from self.encode(tail, allowed_special=allowed)

    def encode_batch(self, texts: Iterable[str], num_threads: int = 8) -> list[list[int]]:
        """Encode many texts on ``num_threads`` threads (tiktoken releases the GIL)."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch expects str items, got {type(t).__name__}")
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_special(self, name: str) -> int:
        """Id of a special token: ``encode_special("<|im_start|>")``."""
        try:
            return self._special[name]
        except KeyError:
            raise KeyError(f"no special token {name!r}; this tokenizer has "
                           f"{list(self._special)}") from None

    def _ids(self, ids) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        ids = [ids] if isinstance(ids, int) else ids
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return ids

    def decode_bytes(self, ids) -> bytes:
        """Ids -> raw bytes (special tokens as their names). Accepts lists, tensors, arrays."""
        return self._enc.decode_bytes(self._ids(ids))

    def decode(self, ids) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (a partial character at the end of a
        slice) become U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_bytes(self, i: int) -> bytes:
        """The bytes of one id (a special token's name for specials)."""
        return self._id_to_special[i].encode() if i in self._id_to_special else self._ranks[i]

    # ---------------------------------------------------------------- chat
    def render_chat(self, messages, *, max_tokens: int | None = None):
        """ChatML conversation -> ``(ids, loss_mask)``; see :func:`.chat.render_chat`."""
        from .chat import render_chat

        return render_chat(self, messages, max_tokens=max_tokens)

    def render_for_completion(self, messages) -> list[int]:
        """Conversation + ``<|im_start|>assistant\\n``: the prompt a chat model answers."""
        from .chat import render_for_completion

        return render_for_completion(self, messages)

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """Plain-JSON form (what :meth:`save` writes)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "pattern": self.pattern,
            "bos": self.bos,
            "special_tokens": self._special,
            "sha256": self.sha256,
            "ranks": [base64.b64encode(t).decode("ascii") for t in self._ranks],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "tokenizer data") -> Tokenizer:
        """Inverse of :meth:`to_dict`; checks the format and the checksum."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TokenizerFileError(f"{source} is not a nanogpt_course tokenizer "
                                     f"(missing \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise TokenizerFileError(f"{source} has version {data.get('version')!r}; this "
                                     f"library reads version {VERSION}")
        try:
            ranks = [base64.b64decode(t, validate=True) for t in data["ranks"]]
            pattern, bos = str(data["pattern"]), str(data["bos"])
            specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
            expected = data["sha256"]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TokenizerFileError(f"{source} is corrupt ({type(err).__name__}: {err})") from err
        actual = content_sha256(ranks, pattern, specials, bos)
        if actual != expected:
            raise TokenizerFileError(f"{source} is corrupt: its checksum {expected!r} does not "
                                     f"match its content ({actual!r}); retrain or re-save it")
        return cls(ranks, pattern, specials, bos=bos, name=str(data.get("name", "bpe")))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>/tokenizer.json`` (a folder is created; temp-then-rename)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / FILE_NAME
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer saved by :meth:`save`: its folder or its ``tokenizer.json``.
        Plain JSON only: loading never executes code from the file."""
        path = Path(path)
        file = path / FILE_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer at {path} (expected a folder holding {FILE_NAME}, or that file). "
                f"Train one with: python -m nanogpt_course.tokenizer train --data FILE "
                f"--vocab-size 32768 --out DIR, or use --tokenizer gpt2")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerFileError(f"{file} is corrupt: not valid JSON ({err})") from err
        return cls.from_dict(data, source=str(file))

    # ---------------------------------------------------------------- misc
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.sha256 == other.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.identity!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos!r}, specials={list(self._special)})")
