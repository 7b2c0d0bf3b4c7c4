"""The dataset registry: where each dataset's raw text comes from, read as documents.

A *source* turns raw files (or a Hugging Face stream) into :class:`Document` records, each
already assigned to ``train`` or ``val``. Two kinds exist: ``text`` documents (pretraining)
and ``chat`` documents (a list of ``{"role", "content"}`` messages, for mid-training and
SFT). Every source is deterministic: the same raw input gives the same documents in the
same order, which is what lets preparation resume half-way.

Documents are never cut by characters: a file (or a JSONL record, or a parquet row) is one
document however long it is; the loaders continue long documents over several rows after
tokenization (:mod:`.packing`), so long context is learned and no token is dropped. The
train/validation split is per file (per record for JSONL and parquet); a source that is a
single text file (tiny Shakespeare, one book) is split into a head (train) and one
contiguous tail (val), cut at a paragraph break, so validation never interleaves with
training text.

Registered names (``python -m nanogpt_course.data prepare NAME``):

- ``fineweb_edu``: FineWeb-Edu ``sample-10BT`` (the default pretraining set): its parquet
  files downloaded from the Hub, local parquet files, or a ``datasets`` stream.
- ``openwebtext``: OpenWebText (legacy): local parquet/jsonl files or a ``datasets`` stream.
- ``tinyshakespeare``: karpathy's 1 MB file, from the data mirror or downloaded.
- ``task_mixture``: chat data. Online: SmolTalk + MMLU auxiliary_train + GSM8K train; offline
  (from the data mirror): the identity chat sample, GSM8K train and MMLU dev. Never a test
  split: those are what the evaluations score.
- ``text``: your own files (a folder, a glob, or one file of .txt/.md/.jsonl).
- ``offline``: Python's and the installed packages' own text (see :mod:`.offline`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .. import paths
from . import hub, offline
from .documents import (  # noqa: F401  (re-exported: the registry's vocabulary)
    KINDS,
    Document,
    Resolved,
    Source,
    check_messages,
    file_fingerprint,
    hash_split,
    prepare_command,
    split_tail,
)
from .tasks import TaskMixture


def _missing(what: str, name: str, looked: str, extra: str = "") -> paths.MissingDataError:
    return paths.MissingDataError(
        f"{what} not found ({looked}). To fix: run `{prepare_command(name)}` on a machine "
        f"that can reach the internet{extra}, or put the files under $NANOGPT_COURSE_DATA.")


# ---------------------------------------------------------------------------- sources
class TinyShakespeare(Source):
    name = "tinyshakespeare"
    description = "karpathy's tiny Shakespeare (1 MB); one document, the last 10% is val"
    URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    RAW = "tinyshakespeare/input.txt"

    def resolve(self, *, download: bool = True, val_fraction: float = 0.1, **options) -> Resolved:
        _no_options(self.name, options)
        path = paths.find_raw(self.RAW)
        if path is None:
            if not download:
                raise _missing("tiny Shakespeare", self.name, f"{self.RAW} in the data mirror "
                               f"and the cache")
            from .download import download as fetch

            path = fetch(self.URL, paths.cache_dir("raw", "tinyshakespeare") / "input.txt",
                         sha256=self.SHA256)

        def documents() -> Iterator[Document]:
            head, tail = split_tail(path.read_text(encoding="utf-8"), val_fraction)
            yield Document("input.txt", "train", head)
            if tail:
                yield Document("input.txt#tail", "val", tail)

        fingerprint = {"files": [file_fingerprint(path)], "val_fraction": val_fraction}
        return Resolved(self.name, "text", documents, fingerprint)


class TextFiles(Source):
    name = "text"
    description = "your own files: a folder, glob or file of .txt/.md (text) or .jsonl"
    SUFFIXES = (".txt", ".md", ".jsonl")

    @classmethod
    def find_files(cls, spec: str | os.PathLike) -> list[Path]:
        """The files a folder, glob pattern or single file names, sorted."""
        spec = str(spec)
        if any(c in spec for c in "*?["):
            found = [Path(p) for p in globlib.glob(os.path.expanduser(spec), recursive=True)]
        elif Path(spec).expanduser().is_dir():
            found = [p for p in Path(spec).expanduser().rglob("*") if p.suffix in cls.SUFFIXES]
        else:
            found = [Path(spec).expanduser()] if Path(spec).expanduser().is_file() else []
        found = sorted(p.resolve() for p in found if p.is_file() and p.suffix in cls.SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no .txt, .md or .jsonl files at {spec!r}: give a folder, "
                                    f"a glob such as 'notes/**/*.txt', or a file")
        return found

    @staticmethod
    def _jsonl_kind(path: Path) -> str:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    chat = isinstance(record, list) or (isinstance(record, dict)
                                                        and "messages" in record)
                    return "chat" if chat else "text"
        return "text"

    def resolve(self, *, download: bool = True, path: str | None = None,
                val_fraction: float = 0.05, **options) -> Resolved:
        _no_options(self.name, options)
        if path is None:
            raise ValueError("the text dataset needs a path: prepare('notes/', tok) or "
                             "`python -m nanogpt_course.data prepare notes/`")
        files = self.find_files(path)
        kinds = {self._jsonl_kind(f) if f.suffix == ".jsonl" else "text" for f in files}
        if len(kinds) > 1:
            raise ValueError(f"{path!r} mixes chat conversations and plain text; put them in "
                             f"separate folders (chat data is prepared for SFT)")
        kind = kinds.pop()
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        one_text_file = len(files) == 1 and files[0].suffix != ".jsonl"

        def documents() -> Iterator[Document]:
            for file in files:
                rel = file.relative_to(root).as_posix()
                if file.suffix == ".jsonl":
                    yield from _jsonl_documents(file, rel, kind, val_fraction)
                    continue
                text = file.read_text(encoding="utf-8")
                if one_text_file:  # one book: train on the head, validate on the tail
                    head, tail = split_tail(text, val_fraction)
                    yield Document(rel, "train", head)
                    if tail:
                        yield Document(f"{rel}#tail", "val", tail)
                else:  # one document per file, the split decided per file
                    yield Document(rel, hash_split(rel, val_fraction), text)

        fingerprint = {"files": [file_fingerprint(f) for f in files],
                       "val_fraction": val_fraction, "documents": "whole files"}
        return Resolved(self.name, kind, documents, fingerprint)


def _jsonl_documents(file, rel, kind, val_fraction) -> Iterator[Document]:
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            where = f"{file}:{n + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from err
            key = f"{rel}:{n}"
            split = hash_split(key, val_fraction)
            if kind == "chat":
                yield Document(key, split, messages=check_messages(record, where))
                continue
            if not (isinstance(record, dict) and isinstance(record.get("text"), str)):
                raise ValueError(f"{where}: expected {{\"text\": \"...\"}}")
            yield Document(key, split, record["text"])


class Offline(Source):
    name = "offline"
    description = "Python's and the installed packages' sources, docstrings and docs"

    def resolve(self, *, download: bool = True, max_bytes: int | None = None,
                val_fraction: float = 0.02, **options) -> Resolved:
        _no_options(self.name, options)
        folder = offline.collect(max_bytes=max_bytes, val_fraction=val_fraction)
        manifest = offline.read_manifest(folder)

        def documents() -> Iterator[Document]:
            for record in offline.iter_corpus(folder):  # one document per file, split per file
                yield Document(record["key"], record["split"], record["text"])

        fingerprint = {"corpus": str(folder), "content_sha256": manifest["content_sha256"],
                       "texts_sha256": manifest.get("texts_sha256")
                       or offline.texts_sha256(manifest["entries"]),
                       "files": manifest["files"], "bytes": manifest["bytes"],
                       "max_bytes": max_bytes, "val_fraction": val_fraction,
                       "documents": "whole files"}
        return Resolved(self.name, "text", documents, fingerprint)


class FineWebEdu(Source):
    name = "fineweb_edu"
    description = "FineWeb-Edu sample-10BT (default pretraining set; 14 parquet files, ~30 GB)"
    online = True

    def resolve(self, *, download: bool = True, files: str | list | None = None,
                max_files: int | None = None, stream: bool = False, max_docs: int | None = None,
                val_fraction: float = 0.002, **options) -> Resolved:
        _no_options(self.name, options)
        if stream:
            if not download:
                raise _missing("FineWeb-Edu", self.name, "--stream needs the network")
            dataset = hub.load_hub(hub.FINEWEB_REPO, hub.FINEWEB_CONFIG, "train")
            rows = lambda: iter(dataset)
            return _rows_source(self.name, rows, {"stream": hub.FINEWEB_REPO,
                                                  "config": hub.FINEWEB_CONFIG},
                                max_docs, val_fraction)
        parquet = _local_files(files, "fineweb_edu", (".parquet",))
        if not parquet:
            if not download:
                raise _missing("FineWeb-Edu parquet files", self.name,
                               "fineweb_edu/*.parquet in the data mirror and the cache",
                               " (or use --stream)")
            parquet = hub.download_fineweb(max_files)
        parquet = parquet[:max_files] if max_files else parquet
        return _parquet_source(self.name, parquet, max_docs, val_fraction)


class OpenWebText(Source):
    name = "openwebtext"
    description = "OpenWebText (legacy, ~8M web pages); local parquet/jsonl or a Hub stream"
    online = True

    def resolve(self, *, download: bool = True, files: str | list | None = None,
                max_docs: int | None = None, val_fraction: float = 0.0005, **options) -> Resolved:
        _no_options(self.name, options)
        local = _local_files(files, "openwebtext", (".parquet", ".jsonl", ".json"))
        if local:
            rows = lambda: hub.local_rows(local)
            described = {"files": [file_fingerprint(p) for p in local]}
        elif download:
            dataset = hub.load_hub(hub.OPENWEBTEXT_REPO, None, "train")  # fails now if offline
            rows = lambda: iter(dataset)
            described = {"stream": hub.OPENWEBTEXT_REPO}
        else:
            raise _missing("OpenWebText", self.name, "openwebtext/ in the data mirror and "
                           "the cache")
        return _rows_source(self.name, rows, described, max_docs, val_fraction)


def _local_files(files, raw_name: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Explicit files (a list, folder or glob), else ``<raw_name>/`` in the mirror or cache."""
    if files is None:
        folder = paths.find_raw(raw_name)
        if folder is None:
            return []
        files = str(folder)
    if isinstance(files, (str, os.PathLike)):
        spec = str(files)
        if Path(spec).is_dir():
            found = [p for p in Path(spec).rglob("*") if p.suffix in suffixes]
        else:
            found = [Path(p) for p in globlib.glob(spec, recursive=True)]
    else:
        found = [Path(p) for p in files]
    return sorted(p for p in found if p.is_file() and p.suffix in suffixes)


def _text_key(row: dict, fallback: str) -> str:
    return str(row.get("id") or fallback)


def _rows_source(name, rows: Callable[[], Iterable[dict]], described: dict,
                 max_docs: int | None, val_fraction: float) -> Resolved:
    """Documents from rows with a ``text`` field (and an optional ``id``)."""

    def documents() -> Iterator[Document]:
        for n, row in enumerate(rows()):
            if max_docs is not None and n >= max_docs:
                return
            text = row.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{name}: row {n} has no 'text' string (columns: {list(row)})")
            key = _text_key(row, hashlib.sha1(text.encode()).hexdigest())
            yield Document(key, hash_split(key, val_fraction), text)

    fingerprint = dict(described, max_docs=max_docs, val_fraction=val_fraction)
    return Resolved(name, "text", documents, fingerprint)


def _parquet_source(name, files: list[Path], max_docs, val_fraction) -> Resolved:
    described = {"files": [file_fingerprint(p, hash_limit=0) for p in files]}
    return _rows_source(name, lambda: hub.parquet_rows(files, ("text", "id")), described,
                        max_docs, val_fraction)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"dataset {name!r} does not take option(s) {sorted(options)}")


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source to the registry (its ``name`` becomes a valid dataset name)."""
    SOURCES[source.name] = source
    return source


def get(name: str) -> Source:
    """A registered source by name; unknown names list the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(SOURCES))}, "
                       f"or give a path to a folder of .txt/.jsonl files") from None


for _source in (FineWebEdu(), OpenWebText(), TinyShakespeare(), TextFiles(), Offline()):
    register(_source)

register(TaskMixture())
